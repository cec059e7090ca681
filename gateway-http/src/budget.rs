//! One memory budget for everything the gateway holds for its clients.
//!
//! Every byte queued for a client is charged to an [`Account`]: the messages in a WebSocket
//! client's queue at its kernel's hub, what a client that fell behind missed, the reconnect
//! buffer of a session whose client went away, and the bytes waiting in a connection's write
//! queue ([`crate::io::QueuedWriter`]) because the socket did not take them. The charge is made
//! where the bytes are stored and released where they leave, so the count is of bytes actually
//! held (a message fanned out to several clients of one kernel is shared memory but charged to
//! each of them: the count errs high, never low).
//!
//! Two bounds, from [`crate::config::HttpLimits`]:
//! * a share per account (`client_memory_share`): an account holding more is *evicted* at once;
//! * the gateway-wide budget (`client_memory_budget`): while the accounts together hold more, the
//!   largest account not already leaving is evicted, until the rest fit.
//!
//! Eviction is a signal: the owner of the account (the WebSocket bridge, or the hub for a
//! reconnect buffer) drops what it queued and goes away; the bytes return to the budget as they
//! are dropped, and whatever an account still holds when its last handle goes is returned then.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

/// The gateway-wide budget; accounts are opened from it.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    /// Zero: no gateway-wide bound.
    limit: usize,
    /// Zero: no per-account bound.
    share: usize,
    used: AtomicUsize,
    /// Held by evicted accounts (on their way out): the budget does not evict others for them.
    leaving: AtomicUsize,
    accounts: Mutex<HashMap<u64, Weak<Inner>>>,
    next_id: AtomicU64,
}

/// Why an account was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// It held more than its share.
    Share,
    /// The accounts together held more than the budget, and it was the largest.
    Budget,
}

/// One client's (or one reconnect buffer's) part of the budget. Clones share the count.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: u64,
    budget: Arc<MemoryBudget>,
    held: AtomicUsize,
    evicted: CancellationToken,
    /// Set with `evicted`: whether for the budget (true) or the share.
    for_budget: AtomicBool,
    /// What it held when it was evicted.
    held_at_eviction: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes with `share` bytes per account (either zero: unbounded).
    pub(crate) fn new(limit: usize, share: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            share,
            used: AtomicUsize::new(0),
            leaving: AtomicUsize::new(0),
            accounts: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// A budget without bounds (for a router served without [`crate::serve`]).
    pub(crate) fn unbounded() -> Arc<MemoryBudget> {
        MemoryBudget::new(0, 0)
    }

    /// Opens an empty account.
    pub(crate) fn open(self: &Arc<Self>) -> Account {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::new(Inner {
            id,
            budget: Arc::clone(self),
            held: AtomicUsize::new(0),
            evicted: CancellationToken::new(),
            for_budget: AtomicBool::new(false),
            held_at_eviction: AtomicUsize::new(0),
        });
        if self.limit > 0 {
            self.accounts.lock().insert(id, Arc::downgrade(&inner));
        }
        Account { inner }
    }

    /// Bytes held by all accounts.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Over the budget: evicts the largest accounts not already leaving until what the others
    /// hold fits.
    fn relieve(&self) {
        let accounts = self.accounts.lock();
        let mut live: Vec<Arc<Inner>> = accounts.values().filter_map(Weak::upgrade).collect();
        drop(accounts);
        let held = |a: &Arc<Inner>| a.held.load(Ordering::Relaxed);
        let mut staying: usize = live
            .iter()
            .filter(|a| !a.evicted.is_cancelled())
            .map(held)
            .sum();
        live.retain(|a| !a.evicted.is_cancelled());
        live.sort_by_key(|a| std::cmp::Reverse(held(a)));
        for account in live {
            if staying <= self.limit {
                break;
            }
            staying = staying.saturating_sub(held(&account));
            account.evict(Eviction::Budget);
        }
    }
}

impl Inner {
    fn evict(&self, why: Eviction) {
        if self.evicted.is_cancelled() {
            return;
        }
        self.for_budget
            .store(why == Eviction::Budget, Ordering::Relaxed);
        let held = self.held.load(Ordering::Relaxed);
        self.held_at_eviction.store(held, Ordering::Relaxed);
        self.budget.leaving.fetch_add(held, Ordering::Relaxed);
        tracing::warn!(
            held_mib = self.held.load(Ordering::Relaxed) / MIB,
            share_mib = self.budget.share / MIB,
            budget_mib = self.budget.limit / MIB,
            used_mib = self.budget.used() / MIB,
            reason = ?why,
            "a client holds too much memory: disconnecting it and dropping what was queued for it"
        );
        crate::metrics::client_evicted(match why {
            Eviction::Share => "share",
            Eviction::Budget => "budget",
        });
        self.evicted.cancel();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let held = *self.held.get_mut();
        self.budget.used.fetch_sub(held, Ordering::Relaxed);
        if self.evicted.is_cancelled() {
            sub_saturating(&self.budget.leaving, held);
        }
        if self.budget.limit > 0 {
            self.budget.accounts.lock().remove(&self.id);
        }
    }
}

impl Account {
    /// A fresh account of the same budget (for a reconnect buffer left by this client).
    pub(crate) fn sibling(&self) -> Account {
        self.inner.budget.open()
    }

    /// The per-account bound (zero: none).
    pub(crate) fn share(&self) -> usize {
        self.inner.budget.share
    }

    /// Bytes this account holds.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.inner.held.load(Ordering::Relaxed)
    }

    /// Counts `bytes` more held; evicts this account past its share, and the largest ones past
    /// the budget. The bytes are counted either way (they are held until dropped).
    pub(crate) fn charge(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let inner = &self.inner;
        let held = inner.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let used = inner.budget.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if inner.evicted.is_cancelled() {
            inner.budget.leaving.fetch_add(bytes, Ordering::Relaxed);
            return;
        }
        let staying = used.saturating_sub(inner.budget.leaving.load(Ordering::Relaxed));
        if inner.budget.share > 0 && held > inner.budget.share {
            inner.evict(Eviction::Share);
        } else if inner.budget.limit > 0 && staying > inner.budget.limit {
            inner.budget.relieve();
        }
    }

    /// Counts `bytes` fewer held.
    pub(crate) fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let inner = &self.inner;
        // Never below zero, even if a caller releases more than it charged.
        let mut released = 0;
        let _ = inner
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                released = held.min(bytes);
                Some(held - released)
            });
        inner.budget.used.fetch_sub(released, Ordering::Relaxed);
        if inner.evicted.is_cancelled() {
            sub_saturating(&inner.budget.leaving, released);
        }
    }

    /// Whether the account was evicted.
    pub(crate) fn is_evicted(&self) -> bool {
        self.inner.evicted.is_cancelled()
    }

    /// Resolves once the account is evicted.
    pub(crate) async fn evicted(&self) {
        self.inner.evicted.cancelled().await;
    }

    /// Why the client was disconnected, for its WebSocket close frame (at most 123 bytes).
    pub(crate) fn close_reason(&self) -> String {
        let held = self.inner.held_at_eviction.load(Ordering::Relaxed);
        let queued = format!("{:.1}", held as f64 / MIB as f64);
        if self.inner.for_budget.load(Ordering::Relaxed) {
            format!(
                "client too slow: {queued} MiB queued while the gateway's client memory budget is used up"
            )
        } else {
            format!(
                "client too slow: {queued} MiB queued (limit {} MiB)",
                self.inner.budget.share / MIB
            )
        }
    }
}

/// `counter -= n`, stopping at zero (the leaving count is kept without a lock, so an eviction
/// racing a release may make it a little off).
fn sub_saturating(counter: &AtomicUsize, n: usize) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_overrun_evicts_that_account_only() {
        let budget = MemoryBudget::new(100 * MIB, 10 * MIB);
        let (a, b) = (budget.open(), budget.open());
        a.charge(6 * MIB);
        b.charge(6 * MIB);
        assert!(!a.is_evicted() && !b.is_evicted());
        a.charge(5 * MIB);
        assert!(a.is_evicted() && !b.is_evicted());
        assert_eq!(budget.used(), 17 * MIB);
        assert_eq!(
            a.close_reason(),
            "client too slow: 11.0 MiB queued (limit 10 MiB)"
        );
        assert!(a.close_reason().len() <= 123);
        drop(a);
        assert_eq!(
            budget.used(),
            6 * MIB,
            "a dropped account returns what it held"
        );
        b.release(7 * MIB);
        assert_eq!((budget.used(), b.held()), (0, 0), "never below zero");
    }

    #[test]
    fn the_budget_evicts_the_largest_until_the_rest_fit() {
        let budget = MemoryBudget::new(20 * MIB, 15 * MIB);
        let small = budget.open();
        let large = budget.open();
        let middle = budget.open();
        small.charge(2 * MIB);
        large.charge(10 * MIB);
        middle.charge(8 * MIB);
        assert!(!large.is_evicted(), "20 MiB is within the budget");
        small.charge(MIB);
        assert!(large.is_evicted() && !middle.is_evicted() && !small.is_evicted());
        assert!(
            large.close_reason().contains("budget"),
            "{}",
            large.close_reason()
        );
        assert!(large.close_reason().len() <= 123);
        // The evicted account still holds its bytes until it drops them: nobody else goes.
        middle.charge(MIB);
        assert!(!middle.is_evicted() && !small.is_evicted());
        drop(large);
        assert_eq!(budget.used(), 12 * MIB);
    }

    #[test]
    fn an_unbounded_budget_only_counts() {
        let budget = MemoryBudget::unbounded();
        let a = budget.open();
        a.charge(1 << 40);
        assert!(!a.is_evicted());
        a.release(1 << 40);
        assert_eq!(budget.used(), 0);
    }
}
