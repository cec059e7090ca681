//! The WebSocket bridge of `GET /api/kernels/{id}/channels`.
//!
//! Each connection gets its own shell/control/stdin DEALERs (identity = the client's session id)
//! and receives the kernel's iopub through the kernel's supervisor, which owns the one iopub
//! subscription. Frames are legacy JSON text (plus the legacy binary form when buffers are
//! present) unless the client offers the `v1.kernel.websocket.jupyter.org` subprotocol.
//!
//! After a kernel restart the supervisor tells every connection to rebuild its DEALERs (a zeromq
//! DEALER does not survive its peer restarting); the WebSocket itself stays open, and client
//! messages sent while the kernel restarts are held and sent to the new process.
//!
//! Nothing is lost or doubled when a connection ends: whatever it had not delivered (its queue,
//! a message whose send failed) and its DEALERs go to the connection that replaced it (same
//! `session_id`), or back to the supervisor, which keeps them for a reconnect of that session
//! when this was the kernel's last client (see the `hub` module of the manager).
//!
//! Each connection's queue at the hub and its write queue are charged to the connection's
//! account of the client memory budget. When the account is evicted (the client holds more than
//! its share, or is the largest holder while the budget is used up), the bridge drops what it
//! still had to deliver and closes with 1008 and a reason naming the amount; a client that reads
//! nothing at all never sees that frame, and its connection is dropped after [`CLOSE_GRACE`].
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{
    CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade, close_code,
};
use axum::response::Response;
use futures_util::SinkExt as _;
use jupyter_protocol::sockets::SessionChannels;
use jupyter_protocol::websocket::{V1_SUBPROTOCOL, WsFrame, legacy, v1};
use jupyter_protocol::{Channel, ConnectionInfo, Message};
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};

use crate::Error;
use crate::budget::{Account, MemoryBudget};
use crate::manager::{
    ClientLease, ClientNotice, Handover, KernelManager, Kick, KickSignal, socket_options,
};

/// How long a new connection waits for the connection it replaces to hand over.
const REPLACE_WAIT: Duration = Duration::from_secs(2);
/// Client messages held while the kernel restarts; beyond this the oldest are dropped.
const HELD_WHILE_RESTARTING: usize = 1000;
/// Minimum time without any frame from the client before a pinged connection is closed.
const MIN_PONG_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages already waiting are written behind each other and flushed together, at most this
/// many at a time (one write instead of one per message during an output burst).
const WRITE_BATCH: usize = 64;
/// Read buffer of each WebSocket. tungstenite zero-fills the free part of its read buffer before
/// every read attempt, including the ones that find nothing; with its 128 KiB default that fill
/// was the largest single cost of forwarding a small message, and at 16 KiB it was still 16% of
/// the instructions of an execute round trip (callgrind, bench/README.md). Client requests are
/// small; large client frames still arrive whole (the buffer grows to the frame's length), in
/// reads of this size.
const WS_READ_BUFFER: usize = 4 * 1024;
/// How long the gateway tries to deliver its close frame (behind whatever the socket has not
/// taken yet) before it drops the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// The framing a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No subprotocol: JSON text frames, legacy binary frames when buffers are present.
    Legacy,
    /// `v1.kernel.websocket.jupyter.org`.
    V1,
}

/// Upgrades a request to the kernel's channels WebSocket. The HTTP layer calls this after its
/// token and origin checks. Unknown kernels are refused before the upgrade (404). What the
/// connection holds is not bounded by a memory budget (see [`crate::serve`] for that).
pub async fn upgrade(
    manager: Arc<KernelManager>,
    kernel_id: String,
    session_id: Option<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, Error> {
    upgrade_charged(manager, kernel_id, session_id, ws, None).await
}

/// [`upgrade`], charging what the connection holds to `account` (the connection's account of
/// the server's client memory budget, when it was served by [`crate::serve`]).
pub(crate) async fn upgrade_charged(
    manager: Arc<KernelManager>,
    kernel_id: String,
    session_id: Option<String>,
    ws: WebSocketUpgrade,
    account: Option<Account>,
) -> Result<Response, Error> {
    let account = account.unwrap_or_else(|| MemoryBudget::unbounded().open());
    manager.find(&kernel_id).await?;
    let max = manager.config().ws_max_message_size;
    let ws = ws
        .read_buffer_size(WS_READ_BUFFER)
        .protocols([V1_SUBPROTOCOL])
        .max_message_size(max)
        .max_frame_size(max);
    let mode = if ws.selected_protocol().is_some() {
        Mode::V1
    } else {
        Mode::Legacy
    };
    let session_id = match session_id.filter(|s| !s.is_empty()) {
        Some(session_id) => session_id,
        None => {
            tracing::info!(%kernel_id, "no session id specified; using a random one");
            uuid::Uuid::new_v4().to_string()
        }
    };
    let failed_kernel = kernel_id.clone();
    Ok(ws
        .on_failed_upgrade(move |err| {
            tracing::warn!(kernel_id = %failed_kernel, error = %err, "WebSocket upgrade failed");
        })
        .on_upgrade(move |socket| serve(manager, kernel_id, session_id, mode, account, socket)))
}

/// Runs one connection until either side goes away.
async fn serve(
    manager: Arc<KernelManager>,
    kernel_id: String,
    session_id: String,
    mode: Mode,
    account: Account,
    mut socket: WebSocket,
) {
    let mut lease = match manager
        .attach(&kernel_id, &session_id, account.clone())
        .await
    {
        Ok(lease) => lease,
        Err(err) => {
            tracing::info!(%kernel_id, error = %err, "WebSocket for a kernel that is gone");
            close(
                &mut socket,
                close_code::AWAY,
                Cow::Borrowed("kernel is gone"),
            )
            .await;
            return;
        }
    };
    tracing::debug!(%kernel_id, %session_id, ?mode, "WebSocket connected");
    let mut bridge = Bridge {
        manager,
        kernel_id,
        session_id,
        mode,
        channels: lease.attached.channels.take(),
        kick: lease.attached.kick.clone(),
        pending: std::mem::take(&mut lease.attached.replay),
        held: VecDeque::new(),
        traffic: crate::metrics::Traffic::open(),
        account,
    };
    let mut stop = bridge.serve(&mut socket, &mut lease).await;
    if bridge.account.is_evicted() {
        // Dropped first, before the close frame waits behind the write queue. (An eviction
        // usually ends a send or flush that the client did not take, which stops silently.)
        bridge.pending.clear();
        drop(lease.attached.queue.take());
        stop = Stop::Close(
            close_code::POLICY,
            close_reason(bridge.account.close_reason()),
        );
    }
    // What this connection did not deliver goes to its successor (when replaced) or back to the
    // supervisor, which keeps it for a reconnect when this was the last client; before the close
    // frame, which may take a while to leave.
    let handover = bridge.leftovers();
    lease.finish(handover);
    if let Stop::Close(code, reason) = stop {
        close(&mut socket, code, reason).await;
    }
    tracing::debug!(kernel_id = %bridge.kernel_id, session_id = %bridge.session_id, "WebSocket closed");
}

/// A connection's state.
struct Bridge {
    manager: Arc<KernelManager>,
    kernel_id: String,
    session_id: String,
    mode: Mode,
    channels: Option<SessionChannels>,
    /// This connection's disconnect signal (also ends a send the client does not take).
    kick: KickSignal,
    /// Messages to deliver before anything else (a predecessor's leftovers, the replay), and
    /// any message whose send failed.
    pending: VecDeque<(Channel, Message)>,
    /// Client messages held while the kernel restarts, sent once the sockets are rebuilt.
    held: VecDeque<(Channel, Message)>,
    /// This connection's message and byte counters.
    traffic: crate::metrics::Traffic,
    /// Its part of the client memory budget.
    account: Account,
}

/// Why the loop stopped, and what to tell the client.
enum Stop {
    /// The client closed or the socket failed: nothing more to send.
    Silent,
    /// Close with this code and reason.
    Close(u16, Cow<'static, str>),
}

impl Stop {
    fn close(code: u16, reason: &'static str) -> Stop {
        Stop::Close(code, Cow::Borrowed(reason))
    }
}

/// The close frame's reason text is at most 123 bytes.
const CLOSE_REASON_MAX: usize = 123;

/// `text` cut to fit a close frame, at a character boundary.
fn close_reason(mut text: String) -> Cow<'static, str> {
    if text.len() > CLOSE_REASON_MAX {
        let mut end = CLOSE_REASON_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    Cow::Owned(text)
}

/// What to tell a client the gateway disconnected for `why`.
fn kicked(why: Option<Kick>, detail: Option<Arc<str>>) -> Stop {
    match why {
        Some(Kick::Replaced) => Stop::close(close_code::NORMAL, "replaced by a newer connection"),
        Some(Kick::TooSlow) => Stop::close(close_code::POLICY, "client too slow"),
        Some(Kick::KernelDied) => match detail {
            Some(detail) => Stop::Close(
                close_code::AWAY,
                close_reason(format!("kernel died: {detail}")),
            ),
            None => Stop::close(close_code::AWAY, "kernel died"),
        },
        Some(Kick::KernelGone) | None => Stop::close(close_code::NORMAL, "kernel shut down"),
        Some(Kick::Culled) => Stop::close(close_code::NORMAL, "kernel culled"),
        Some(Kick::GatewayExit) => Stop::close(close_code::AWAY, "gateway shutting down"),
    }
}

/// The next reply of the connection's session, pending forever when there is none.
async fn next_reply(channels: &mut Option<SessionChannels>) -> Option<(Channel, Message)> {
    match channels.as_mut() {
        Some(channels) => channels.replies.recv().await,
        None => std::future::pending().await,
    }
}

impl Bridge {
    /// This connection's undelivered messages and sockets (its queue is added by the lease).
    fn leftovers(&mut self) -> Handover {
        Handover {
            messages: std::mem::take(&mut self.pending),
            channels: self.channels.take(),
            queue: None,
        }
    }

    /// Takes over from a replaced connection: its undelivered messages come first, and its
    /// sockets are reused (same identity, and replies still in flight are not lost).
    async fn take_over(&mut self, from: oneshot::Receiver<Handover>) {
        match timeout(REPLACE_WAIT, from).await {
            Ok(Ok(handover)) => {
                let (mut messages, channels) = handover.into_parts();
                messages.append(&mut self.pending);
                self.pending = messages;
                if self.channels.is_none() {
                    self.channels = channels;
                }
            }
            Ok(Err(_)) => {
                tracing::debug!(kernel_id = %self.kernel_id, session_id = %self.session_id,
                    "the replaced connection left nothing behind");
            }
            Err(_) => {
                tracing::warn!(kernel_id = %self.kernel_id, session_id = %self.session_id,
                    "replaced connection did not hand over in time");
            }
        }
    }

    /// Sends the pending messages in order; false when the socket failed (the rest stay pending).
    async fn flush_pending(&mut self, socket: &mut WebSocket) -> bool {
        while let Some((channel, msg)) = self.pending.pop_front() {
            if !self.send(socket, channel, &msg).await {
                self.pending.push_front((channel, msg));
                return false;
            }
        }
        self.flush(socket).await
    }

    async fn serve(&mut self, socket: &mut WebSocket, lease: &mut ClientLease) -> Stop {
        if let Some(from) = lease.attached.replaced.take() {
            self.take_over(from).await;
        }
        if self.channels.is_none() {
            let connection = lease.attached.connection.clone();
            if let Err(stop) = self.connect(&connection).await {
                return stop;
            }
        }
        if !self.flush_pending(socket).await {
            return Stop::Silent;
        }
        let config = Arc::clone(self.manager.config());
        let ping_every = config.ws_ping_interval;
        let pong_timeout = (ping_every * 3).max(MIN_PONG_TIMEOUT);
        let mut ping = interval(if ping_every.is_zero() {
            Duration::from_secs(3600)
        } else {
            ping_every
        });
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        let mut last_seen = Instant::now();
        let cancel = self.manager.cancelled().clone();
        let kick = lease.attached.kick.clone();
        loop {
            tokio::select! {
                incoming = socket.recv() => {
                    let Some(Ok(frame)) = incoming else {
                        return Stop::Silent;
                    };
                    last_seen = Instant::now();
                    if let Some(stop) = self.on_client_frame(frame).await {
                        return stop;
                    }
                }
                reply = next_reply(&mut self.channels) => match reply {
                    Some((channel, msg)) => {
                        if !self.send(socket, channel, &msg).await || !self.flush(socket).await {
                            self.pending.push_back((channel, msg));
                            return Stop::Silent;
                        }
                    }
                    None => {
                        tracing::debug!(kernel_id = %self.kernel_id, "session sockets closed; waiting for a rebuild");
                        self.channels = None;
                    }
                },
                notice = lease.attached.queue.recv() => match notice {
                    Some(notice) => {
                        if let Some(stop) = self.on_notice(socket, notice).await {
                            return stop;
                        }
                        for _ in 1..WRITE_BATCH {
                            let Some(next) = lease.attached.queue.try_recv() else {
                                break;
                            };
                            if let Some(stop) = self.on_notice(socket, next).await {
                                return stop;
                            }
                        }
                        if !self.flush(socket).await {
                            return Stop::Silent;
                        }
                    }
                    // The supervisor dropped this client: it was kicked just before.
                    None => return kicked(kick.reason(), kick.detail()),
                },
                () = self.account.evicted() => {
                    return Stop::Close(close_code::POLICY, close_reason(self.account.close_reason()));
                }
                why = kick.kicked() => {
                    if matches!(why, Kick::KernelGone | Kick::KernelDied | Kick::Culled | Kick::GatewayExit) {
                        // Deliver what was queued before the kick (e.g. the final `dead` status).
                        while let Some(notice) = lease.attached.queue.try_recv() {
                            if let Some(stop) = self.on_notice(socket, notice).await {
                                return stop;
                            }
                        }
                        if !self.flush(socket).await {
                            return Stop::Silent;
                        }
                    }
                    return kicked(Some(why), kick.detail());
                }
                _ = ping.tick(), if !ping_every.is_zero() => {
                    if last_seen.elapsed() > pong_timeout {
                        tracing::info!(kernel_id = %self.kernel_id, session_id = %self.session_id, "WebSocket client stopped answering pings");
                        return Stop::close(close_code::AWAY, "ping timeout");
                    }
                    if socket.send(WsMessage::Ping(bytes::Bytes::new())).await.is_err() {
                        return Stop::Silent;
                    }
                }
                () = cancel.cancelled() => return Stop::close(close_code::AWAY, "gateway shutting down"),
            }
        }
    }

    /// Connects this session's shell/control/stdin sockets.
    async fn connect(&mut self, connection: &ConnectionInfo) -> Result<(), Stop> {
        self.channels = None;
        let config = self.manager.config();
        let opts = socket_options(config.kernel_info_timeout);
        match SessionChannels::connect(connection, &self.session_id, &opts).await {
            Ok(channels) => {
                for (channel, msg) in self.held.drain(..) {
                    self.account.release(msg.size());
                    if let Err(err) = channels.sender.send(channel, msg).await {
                        tracing::warn!(kernel_id = %self.kernel_id, error = %err, "cannot forward a held client message to the kernel");
                    }
                }
                self.channels = Some(channels);
                Ok(())
            }
            Err(err) => {
                tracing::warn!(kernel_id = %self.kernel_id, error = %err, "cannot connect to the kernel");
                Err(Stop::close(
                    close_code::ERROR,
                    "cannot connect to the kernel",
                ))
            }
        }
    }

    async fn on_notice(&mut self, socket: &mut WebSocket, notice: ClientNotice) -> Option<Stop> {
        match notice {
            ClientNotice::Iopub(msg) => {
                if !self.send(socket, Channel::Iopub, &msg).await {
                    self.pending.push_back((Channel::Iopub, msg));
                    return Some(Stop::Silent);
                }
            }
            ClientNotice::Suspend => {
                tracing::debug!(kernel_id = %self.kernel_id, session_id = %self.session_id, "kernel restarting; holding client messages");
                self.channels = None;
            }
            ClientNotice::Rebuild(connection) => {
                tracing::debug!(kernel_id = %self.kernel_id, session_id = %self.session_id, "rebuilding sockets after a restart");
                if let Err(stop) = self.connect(&connection).await {
                    return Some(stop);
                }
            }
        }
        None
    }

    /// Handles a client frame; `Some` ends the connection.
    async fn on_client_frame(&mut self, frame: WsMessage) -> Option<Stop> {
        let decoded = match (&frame, self.mode) {
            // The parts are slices of the frame's bytes, not copies.
            (WsMessage::Text(text), _) => match legacy::decode_text_bytes(text.clone().into()) {
                Ok(decoded) => decoded,
                Err(err) => {
                    tracing::warn!(kernel_id = %self.kernel_id, error = %err, "ignoring a malformed text frame");
                    return None;
                }
            },
            (WsMessage::Binary(data), mode) => {
                let decoded = match mode {
                    Mode::Legacy => legacy::decode_binary(data),
                    Mode::V1 => v1::decode_bytes(data.clone()),
                };
                match decoded {
                    Ok(decoded) => decoded,
                    Err(err) => {
                        tracing::warn!(kernel_id = %self.kernel_id, error = %err, "closing on a malformed binary frame");
                        return Some(Stop::close(
                            close_code::UNSUPPORTED,
                            "malformed binary frame",
                        ));
                    }
                }
            }
            (WsMessage::Close(_), _) => return Some(Stop::Silent),
            (WsMessage::Ping(_) | WsMessage::Pong(_), _) => return None,
        };
        let (channel, msg) = decoded;
        self.traffic.to_kernel(frame_len(&frame));
        if !matches!(channel, Channel::Shell | Channel::Control | Channel::Stdin) {
            tracing::info!(kernel_id = %self.kernel_id, channel = channel.as_str(), "dropping a client message for a channel clients cannot write");
            return None;
        }
        let Some(channels) = &self.channels else {
            if self.held.len() >= HELD_WHILE_RESTARTING {
                tracing::warn!(kernel_id = %self.kernel_id, "too many client messages while the kernel restarts; dropping the oldest");
                if let Some((_, old)) = self.held.pop_front() {
                    self.account.release(old.size());
                }
            }
            // Held messages count against the client's share like what is queued for it.
            self.account.charge(msg.size());
            self.held.push_back((channel, msg));
            return None;
        };
        if let Err(err) = channels.sender.send(channel, msg).await {
            tracing::warn!(kernel_id = %self.kernel_id, error = %err, "cannot forward a client message to the kernel");
        }
        None
    }

    /// Writes a kernel message to the socket in the negotiated framing, without flushing (see
    /// [`Bridge::flush`]); false when the socket is gone.
    async fn send(&self, socket: &mut WebSocket, channel: Channel, msg: &Message) -> bool {
        let frame = match self.mode {
            Mode::V1 => WsMessage::Binary(v1::encode(channel, msg).into()),
            Mode::Legacy => match legacy::encode(channel, msg) {
                Ok(WsFrame::Text(text)) => WsMessage::Text(text.into()),
                Ok(WsFrame::Binary(data)) => WsMessage::Binary(data.into()),
                Err(err) => {
                    tracing::warn!(kernel_id = %self.kernel_id, error = %err, "dropping a kernel message that cannot be encoded");
                    return true;
                }
            },
        };
        self.traffic.to_client(frame_len(&frame));
        // A client that stops reading must not hold this task forever: its queue overflows, the
        // supervisor kicks it, and the pending send is abandoned.
        // The send is polled first, so a healthy client still gets what is sent after a kick
        // (e.g. the final `dead` status).
        tokio::select! {
            biased;
            sent = socket.feed(frame) => sent.is_ok(),
            _ = self.kick.kicked() => false,
            () = self.account.evicted() => false,
            () = self.manager.cancelled().cancelled() => false,
        }
    }

    /// Pushes what [`Bridge::send`] wrote out to the client; false when the socket is gone.
    async fn flush(&self, socket: &mut WebSocket) -> bool {
        tokio::select! {
            biased;
            flushed = socket.flush() => flushed.is_ok(),
            _ = self.kick.kicked() => false,
            () = self.account.evicted() => false,
            () = self.manager.cancelled().cancelled() => false,
        }
    }
}

/// The payload length of a data frame (zero for control frames).
fn frame_len(frame: &WsMessage) -> usize {
    match frame {
        WsMessage::Text(text) => text.len(),
        WsMessage::Binary(data) => data.len(),
        _ => 0,
    }
}

/// Sends a close frame and waits for the client's reply, reading (and dropping) what it still
/// sends, so that closing does not reset the connection before the client read everything (a
/// pong in flight would). Gives up after [`CLOSE_GRACE`]: a client that reads nothing never
/// takes the frame.
async fn close(socket: &mut WebSocket, code: u16, reason: Cow<'static, str>) {
    let frame = CloseFrame {
        code,
        reason: reason.as_ref().into(),
    };
    // The peer may already be gone, or not reading; nothing to do about it then.
    let _ = timeout(CLOSE_GRACE, async {
        if socket.send(WsMessage::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = socket.recv().await {}
        }
    })
    .await;
}
