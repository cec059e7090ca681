//! Large iopub messages forwarded while their signature is still being checked.
//!
//! Checking the HMAC of a 50 MB message takes tens of milliseconds. An [`IopubSubscription`]
//! configured with [`SocketOptions::verify_aside_above`] hands such a message on at once as
//! [`IopubItem::Unverified`], computes its MAC on a blocking thread, and then sends
//! [`IopubItem::Settled`] with the same message. A forwarder may start sending the message
//! meanwhile, but must hold its end until the [`Verdict`] passed, and must act on nothing in it
//! (state tracking, activity) before the `Settled` item says so.
//!
//! [`IopubSubscription`]: crate::sockets::IopubSubscription
//! [`SocketOptions::verify_aside_above`]: crate::SocketOptions::verify_aside_above
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::Message;

/// A threshold for [`crate::SocketOptions::verify_aside_above`]: above 2 MiB a message is at
/// least two WebSocket fragments, and its MAC takes over a millisecond, far more than the hop
/// to a blocking thread.
pub const VERIFY_ASIDE_ABOVE: usize = 2 << 20;

const PENDING: u8 = 0;
const PASSED: u8 = 1;
const FAILED: u8 = 2;

#[derive(Debug, Default)]
struct Shared {
    state: AtomicU8,
    wakers: Mutex<Vec<Waker>>,
}

/// The outcome of a signature check running beside the forwarding of its message. Cheap to
/// clone; every clone sees the same outcome.
#[derive(Debug, Clone)]
pub struct Verdict {
    shared: Arc<Shared>,
}

/// Gives a [`Verdict`] its outcome. Dropped without one, the verdict fails.
#[derive(Debug)]
pub struct VerdictSender {
    shared: Arc<Shared>,
    sent: bool,
}

impl Verdict {
    /// A pending verdict and the sender that settles it.
    pub fn pending() -> (VerdictSender, Verdict) {
        let shared = Arc::new(Shared::default());
        (
            VerdictSender {
                shared: Arc::clone(&shared),
                sent: false,
            },
            Verdict { shared },
        )
    }

    /// `Some(true)` when the signature was good, `Some(false)` when it was not (or the check
    /// was abandoned), `None` while it runs.
    pub fn outcome(&self) -> Option<bool> {
        match self.shared.state.load(Ordering::Acquire) {
            PENDING => None,
            state => Some(state == PASSED),
        }
    }

    /// Whether the verdict is in and says the message must not be delivered.
    pub fn failed(&self) -> bool {
        self.outcome() == Some(false)
    }

    /// The outcome, registering `cx` to be woken when it arrives while it is pending.
    pub fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<bool> {
        if let Some(outcome) = self.outcome() {
            return Poll::Ready(outcome);
        }
        let mut wakers = self.shared.wakers.lock();
        // Checked again under the lock: the sender sets the state before it takes the wakers.
        if let Some(outcome) = self.outcome() {
            return Poll::Ready(outcome);
        }
        wakers.retain(|waker| !waker.will_wake(cx.waker()));
        wakers.push(cx.waker().clone());
        Poll::Pending
    }

    /// Waits for the outcome.
    pub async fn settled(&self) -> bool {
        poll_fn(|cx| self.poll_outcome(cx)).await
    }
}

impl VerdictSender {
    /// Settles the verdict and wakes everyone waiting for it.
    pub fn send(mut self, passed: bool) {
        self.settle(passed);
    }

    fn settle(&mut self, passed: bool) {
        if std::mem::replace(&mut self.sent, true) {
            return;
        }
        let state = if passed { PASSED } else { FAILED };
        self.shared.state.store(state, Ordering::Release);
        let wakers = std::mem::take(&mut *self.shared.wakers.lock());
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Drop for VerdictSender {
    fn drop(&mut self) {
        self.settle(false);
    }
}

/// A kernel message on its way to clients: the message and, while its signature is still being
/// checked, the verdict that gates its end.
#[derive(Debug, Clone)]
pub struct Forwarded {
    msg: Message,
    verdict: Option<Verdict>,
}

impl From<Message> for Forwarded {
    /// A message that was verified (or needs no verification).
    fn from(msg: Message) -> Forwarded {
        Forwarded { msg, verdict: None }
    }
}

impl Forwarded {
    /// A message whose signature is being checked.
    pub fn unverified(msg: Message, verdict: Verdict) -> Forwarded {
        Forwarded {
            msg,
            verdict: Some(verdict),
        }
    }

    /// The message, to forward (nothing may act on its content while [`Forwarded::verdict`]
    /// is pending).
    pub fn message(&self) -> &Message {
        &self.msg
    }

    /// The message itself.
    pub fn into_message(self) -> Message {
        self.msg
    }

    /// The verdict to wait for before the message's end goes out; `None` when it was verified
    /// before it was handed on.
    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    /// Whether its verdict is in and failed: such a message is dropped wherever it is held.
    pub fn failed(&self) -> bool {
        self.verdict.as_ref().is_some_and(Verdict::failed)
    }

    /// Whether it may be acted on: verified before it was handed on, or its verdict passed.
    pub fn passed(&self) -> bool {
        self.verdict
            .as_ref()
            .is_none_or(|verdict| verdict.outcome() == Some(true))
    }

    /// Total size of the message's parts.
    pub fn size(&self) -> usize {
        self.msg.size()
    }
}

/// What an iopub subscription hands on.
#[derive(Debug, Clone)]
pub enum IopubItem {
    /// A message whose signature was checked (or that is unsigned): forward it and act on it.
    Verified(Message),
    /// A large message whose signature is being checked: forward it (its verdict gates its
    /// end), act on nothing in it yet. [`IopubItem::Settled`] follows, before any other item.
    Unverified(Forwarded),
    /// The verdict of the [`IopubItem::Unverified`] item just before arrived (the same message,
    /// already forwarded): act on it if it passed; if it failed, drop it wherever it is held.
    Settled(Forwarded),
}

impl IopubItem {
    /// The message when it may be acted on: a verified one, or one whose verdict passed.
    pub fn checked(&self) -> Option<&Message> {
        match self {
            IopubItem::Verified(msg) => Some(msg),
            IopubItem::Settled(settled) if settled.passed() => Some(settled.message()),
            IopubItem::Settled(_) | IopubItem::Unverified(_) => None,
        }
    }

    /// [`IopubItem::checked`], by value.
    pub fn into_checked(self) -> Option<Message> {
        match self {
            IopubItem::Verified(msg) => Some(msg),
            IopubItem::Settled(settled) if settled.passed() => Some(settled.into_message()),
            IopubItem::Settled(_) | IopubItem::Unverified(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_outcome_and_a_dropped_sender_fails() {
        let (sender, verdict) = Verdict::pending();
        let other = verdict.clone();
        assert_eq!(verdict.outcome(), None);
        let waiter = tokio::spawn(async move { other.settled().await });
        tokio::task::yield_now().await;
        sender.send(true);
        assert!(waiter.await.expect("waiter"));
        assert_eq!(verdict.outcome(), Some(true));
        assert!(!verdict.failed());

        let (sender, verdict) = Verdict::pending();
        drop(sender);
        assert!(verdict.failed());
        assert!(!verdict.settled().await);
    }

    #[test]
    fn only_checked_messages_may_be_acted_on() {
        let msg = Message::new(&crate::Header::new("display_data", "s", "u"), &());
        let (sender, verdict) = Verdict::pending();
        let pending = Forwarded::unverified(msg.clone(), verdict);
        assert!(IopubItem::Unverified(pending.clone()).checked().is_none());
        assert!(IopubItem::Settled(pending.clone()).checked().is_none());
        sender.send(false);
        assert!(pending.failed());
        assert!(IopubItem::Settled(pending).into_checked().is_none());
        let (sender, verdict) = Verdict::pending();
        sender.send(true);
        let passed = IopubItem::Settled(Forwarded::unverified(msg.clone(), verdict));
        assert_eq!(passed.checked(), Some(&msg));
        assert_eq!(IopubItem::Verified(msg.clone()).into_checked(), Some(msg));
    }
}
