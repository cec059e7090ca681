//! The iopub fan-out of one kernel: attached WebSocket clients, each with a bounded queue, and the
//! reconnect buffer kept for a session whose last client went away.
//!
//! A client that cannot keep up is disconnected rather than silently missing messages.
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jupyter_protocol::{ConnectionInfo, Message};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Messages queued per client before it counts as too slow.
pub(crate) const CLIENT_QUEUE: usize = 4096;

/// What the supervisor tells an attached client.
#[derive(Debug)]
pub(crate) enum ClientNotice {
    /// An iopub message (from the kernel, or a synthetic status).
    Iopub(Message),
    /// The kernel restarted: drop the shell/control/stdin sockets and connect new ones here.
    Rebuild(ConnectionInfo),
}

/// Why a client is being disconnected by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// A newer connection with the same session id took over.
    Replaced,
    /// Its queue overflowed.
    TooSlow,
    /// The kernel is gone (shut down, culled, dead).
    KernelGone,
    /// The gateway is shutting down.
    GatewayExit,
}

/// A disconnect signal carrying its reason.
#[derive(Debug, Clone, Default)]
pub(crate) struct KickSignal {
    token: CancellationToken,
    reason: Arc<Mutex<Option<Kick>>>,
}

impl KickSignal {
    /// Disconnects the client (the first reason wins).
    pub(crate) fn kick(&self, why: Kick) {
        let mut reason = self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reason.get_or_insert(why);
        self.token.cancel();
    }
    /// Resolves once kicked.
    pub(crate) async fn kicked(&self) -> Kick {
        self.token.cancelled().await;
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .unwrap_or(Kick::KernelGone)
    }
}

/// What a client gets when it attaches.
#[derive(Debug)]
pub(crate) struct Attached {
    /// Its id at the supervisor.
    pub(crate) client_id: u64,
    /// Its queue.
    pub(crate) notices: mpsc::Receiver<ClientNotice>,
    /// Disconnect signal.
    pub(crate) kick: KickSignal,
    /// Cancel when this client's kernel sockets are closed.
    pub(crate) gone: CancellationToken,
    /// The replaced client's `gone` token: wait for it before connecting with the same identity.
    pub(crate) replaced: Option<CancellationToken>,
    /// Buffered iopub messages of this session, to send before anything from `notices`.
    pub(crate) replay: Vec<Message>,
    /// The kernel's current connection info.
    pub(crate) connection: ConnectionInfo,
}

#[derive(Debug)]
struct Slot {
    session_id: String,
    tx: mpsc::Sender<ClientNotice>,
    kick: KickSignal,
    gone: CancellationToken,
}

/// Reconnect-buffer bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BufferLimits {
    /// Messages kept.
    pub(crate) max_messages: usize,
    /// Bytes kept.
    pub(crate) max_bytes: usize,
    /// How long a buffer waits for its session to come back.
    pub(crate) ttl: Duration,
}

#[derive(Debug)]
struct OfflineBuffer {
    session_id: String,
    messages: VecDeque<Message>,
    bytes: usize,
    dropped: usize,
    expires: Instant,
}

/// Clients of one kernel.
#[derive(Debug)]
pub(crate) struct Hub {
    kernel_id: String,
    clients: BTreeMap<u64, Slot>,
    next_id: u64,
    limits: BufferLimits,
    buffer: Option<OfflineBuffer>,
}

impl Hub {
    /// An empty hub.
    pub(crate) fn new(kernel_id: String, limits: BufferLimits) -> Hub {
        Hub {
            kernel_id,
            clients: BTreeMap::new(),
            next_id: 0,
            limits,
            buffer: None,
        }
    }

    /// Attached clients.
    pub(crate) fn connections(&self) -> usize {
        self.clients.len()
    }

    /// Registers a client; a client with the same session id is replaced at once, and a buffer kept
    /// for this session is handed over (any other buffer is discarded).
    pub(crate) fn attach(&mut self, session_id: &str, connection: ConnectionInfo) -> Attached {
        let mut replaced = None;
        let stale: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, slot)| slot.session_id == session_id)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(slot) = self.clients.remove(&id) {
                tracing::info!(kernel_id = %self.kernel_id, session_id, "replacing stale connection");
                slot.kick.kick(Kick::Replaced);
                replaced = Some(slot.gone);
            }
        }
        let replay = match self.buffer.take() {
            Some(buffer) if buffer.session_id == session_id => {
                if buffer.dropped > 0 {
                    tracing::warn!(kernel_id = %self.kernel_id, session_id, dropped = buffer.dropped,
                        "reconnect buffer overflowed; the oldest messages were dropped");
                }
                tracing::debug!(kernel_id = %self.kernel_id, session_id, count = buffer.messages.len(), "replaying buffered messages");
                Vec::from(buffer.messages)
            }
            Some(buffer) => {
                tracing::info!(kernel_id = %self.kernel_id, session_id = %buffer.session_id,
                    count = buffer.messages.len(), "discarding buffered messages of another session");
                Vec::new()
            }
            None => Vec::new(),
        };
        let (tx, notices) = mpsc::channel(CLIENT_QUEUE);
        let kick = KickSignal::default();
        let gone = CancellationToken::new();
        self.next_id += 1;
        let client_id = self.next_id;
        self.clients.insert(
            client_id,
            Slot {
                session_id: session_id.to_owned(),
                tx,
                kick: kick.clone(),
                gone: gone.clone(),
            },
        );
        Attached {
            client_id,
            notices,
            kick,
            gone,
            replaced,
            replay,
            connection,
        }
    }

    /// Unregisters a client (no-op if it was replaced); the last client leaving starts the reconnect
    /// buffer for its session.
    pub(crate) fn detach(&mut self, client_id: u64) {
        let Some(slot) = self.clients.remove(&client_id) else {
            return;
        };
        let enabled =
            self.limits.max_messages > 0 && self.limits.max_bytes > 0 && !self.limits.ttl.is_zero();
        if self.clients.is_empty() && enabled {
            self.buffer = Some(OfflineBuffer {
                session_id: slot.session_id,
                messages: VecDeque::new(),
                bytes: 0,
                dropped: 0,
                expires: Instant::now() + self.limits.ttl,
            });
        }
    }

    /// Sends an iopub message to every client (or into the reconnect buffer when none is attached).
    pub(crate) fn publish(&mut self, msg: &Message) {
        if self.clients.is_empty() {
            self.buffer_message(msg);
            return;
        }
        self.send_all(|| ClientNotice::Iopub(msg.clone()));
    }

    /// Tells every client to rebuild its kernel sockets.
    pub(crate) fn rebuild(&mut self, connection: &ConnectionInfo) {
        self.send_all(|| ClientNotice::Rebuild(connection.clone()));
    }

    fn send_all(&mut self, notice: impl Fn() -> ClientNotice) {
        let mut slow = Vec::new();
        for (id, slot) in &self.clients {
            if slot.tx.try_send(notice()).is_err() {
                slow.push(*id);
            }
        }
        for id in slow {
            if let Some(slot) = self.clients.remove(&id) {
                tracing::warn!(kernel_id = %self.kernel_id, session_id = %slot.session_id,
                    "disconnecting a WebSocket client that cannot keep up");
                slot.kick.kick(Kick::TooSlow);
            }
        }
    }

    fn buffer_message(&mut self, msg: &Message) {
        let Some(buffer) = self.buffer.as_mut() else {
            return;
        };
        buffer.bytes += msg.size();
        buffer.messages.push_back(msg.clone());
        while buffer.messages.len() > self.limits.max_messages
            || buffer.bytes > self.limits.max_bytes
        {
            let Some(old) = buffer.messages.pop_front() else {
                break;
            };
            buffer.bytes = buffer.bytes.saturating_sub(old.size());
            if buffer.dropped == 0 {
                tracing::warn!(kernel_id = %self.kernel_id, session_id = %buffer.session_id,
                    "reconnect buffer full; dropping the oldest messages");
            }
            buffer.dropped += 1;
        }
    }

    /// When the reconnect buffer expires, if there is one.
    pub(crate) fn buffer_expiry(&self) -> Option<Instant> {
        self.buffer.as_ref().map(|b| b.expires)
    }

    /// Drops an expired reconnect buffer.
    pub(crate) fn expire_buffer(&mut self, now: Instant) {
        if let Some(buffer) = &self.buffer
            && buffer.expires <= now
        {
            tracing::info!(kernel_id = %self.kernel_id, session_id = %buffer.session_id,
                count = buffer.messages.len(), "discarding an expired reconnect buffer");
            self.buffer = None;
        }
    }

    /// Disconnects every client and drops the buffer.
    pub(crate) fn close_all(&mut self, why: Kick) {
        for slot in std::mem::take(&mut self.clients).into_values() {
            slot.kick.kick(why);
        }
        self.buffer = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jupyter_protocol::Transport;

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            transport: Transport::Tcp,
            ip: "127.0.0.1".to_owned(),
            shell_port: 1,
            iopub_port: 2,
            stdin_port: 3,
            control_port: 4,
            hb_port: 5,
            key: String::new(),
            signature_scheme: "hmac-sha256".to_owned(),
            kernel_name: String::new(),
        }
    }

    fn msg(n: u8) -> Message {
        Message {
            header: bytes::Bytes::from(format!("{{\"n\":{n}}}")),
            parent_header: bytes::Bytes::from_static(b"{}"),
            metadata: bytes::Bytes::from_static(b"{}"),
            content: bytes::Bytes::from_static(b"{}"),
            buffers: Vec::new(),
        }
    }

    fn hub(max_messages: usize) -> Hub {
        Hub::new(
            "k".to_owned(),
            BufferLimits {
                max_messages,
                max_bytes: 1 << 20,
                ttl: Duration::from_secs(60),
            },
        )
    }

    #[tokio::test]
    async fn replay_is_bounded_ordered_and_once() {
        let mut hub = hub(2);
        let first = hub.attach("s", info());
        hub.detach(first.client_id);
        for n in 0..3 {
            hub.publish(&msg(n));
        }
        let again = hub.attach("s", info());
        assert_eq!(again.replay, vec![msg(1), msg(2)]);
        hub.detach(again.client_id);
        let third = hub.attach("s", info());
        assert!(third.replay.is_empty());
    }

    #[tokio::test]
    async fn other_session_discards_and_same_session_replaces() {
        let mut hub = hub(10);
        let a = hub.attach("a", info());
        hub.detach(a.client_id);
        hub.publish(&msg(1));
        let b = hub.attach("b", info());
        assert!(b.replay.is_empty());
        let b2 = hub.attach("b", info());
        assert_eq!(b.kick.kicked().await, Kick::Replaced);
        assert!(b2.replaced.is_some());
        assert_eq!(hub.connections(), 1);
        hub.detach(b.client_id);
        assert_eq!(hub.connections(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn buffers_expire() {
        let mut hub = hub(10);
        let first = hub.attach("s", info());
        hub.detach(first.client_id);
        hub.publish(&msg(1));
        let expiry = hub.buffer_expiry();
        assert_eq!(expiry, Some(Instant::now() + Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(59)).await;
        hub.expire_buffer(Instant::now());
        assert!(hub.buffer_expiry().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        hub.expire_buffer(Instant::now());
        assert!(hub.buffer_expiry().is_none());
        assert!(hub.attach("s", info()).replay.is_empty());
    }

    #[tokio::test]
    async fn slow_client_is_kicked() {
        let mut hub = hub(10);
        let slow = hub.attach("slow", info());
        for _ in 0..=CLIENT_QUEUE {
            hub.publish(&msg(0));
        }
        assert_eq!(slow.kick.kicked().await, Kick::TooSlow);
        assert_eq!(hub.connections(), 0);
    }
}
