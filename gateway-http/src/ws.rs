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
//!
//! The upgrade is done here ([`ChannelsUpgrade`]) rather than by axum, so the connection owns
//! its socket: tungstenite reads the client's frames and answers its pings and closes, and the
//! outgoing frames are written from the kernel message's own parts ([`crate::ws_out`]).
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::ws::close_code;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use jupyter_protocol::sockets::SessionChannels;
use jupyter_protocol::websocket::{V1_SUBPROTOCOL, WsPayload, legacy, v1};
use jupyter_protocol::{Channel, ConnectionInfo, Forwarded, Message};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::Error;
use crate::budget::{Account, MemoryBudget};
use crate::manager::{ClientLease, ClientNotice, Handover, KernelManager, Kick, socket_options};
use crate::ws_out::{ControlIo, FrameWriter, Outbox};

/// The upgraded connection.
type Io = TokioIo<hyper::upgrade::Upgraded>;

/// How long a new connection waits for the connection it replaces to hand over.
const REPLACE_WAIT: Duration = Duration::from_secs(2);
/// Client messages held while the kernel restarts; beyond this the oldest are dropped.
const HELD_WHILE_RESTARTING: usize = 1000;
/// Minimum time without any frame from the client before a pinged connection is closed.
const MIN_PONG_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages already waiting are written behind each other and flushed together, at most this
/// many at a time (one write instead of one per message during an output burst).
const WRITE_BATCH: usize = 64;
/// No further kernel message is taken while this much is queued for the socket (one message
/// may take it past that: a large one is never split across this bound).
const WRITE_HIGH: usize = 256 * 1024;
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

/// A request to upgrade to the channels WebSocket (HTTP/1.1, RFC 6455 §4.2.1), taken from the
/// request; [`upgrade`] answers it.
#[derive(Debug)]
pub struct ChannelsUpgrade {
    key: HeaderValue,
    v1: bool,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request is not a WebSocket upgrade (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUpgrade(&'static str);

impl std::fmt::Display for NotUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for NotUpgrade {}

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for ChannelsUpgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != http::Method::GET {
            return Err(NotUpgrade("a WebSocket upgrade must be a GET"));
        }
        if !lists(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotUpgrade("Connection header does not name upgrade"));
        }
        if !lists(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotUpgrade("Upgrade header does not name websocket"));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(NotUpgrade("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(NotUpgrade("Sec-WebSocket-Key is missing"))?;
        let v1 = lists(
            &parts.headers,
            header::SEC_WEBSOCKET_PROTOCOL,
            V1_SUBPROTOCOL,
        );
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(NotUpgrade("the connection cannot be upgraded"))?;
        Ok(ChannelsUpgrade {
            key,
            v1,
            on_upgrade,
        })
    }
}

/// Upgrades a request to the kernel's channels WebSocket. The HTTP layer calls this after its
/// token and origin checks. Unknown kernels are refused before the upgrade (404). What the
/// connection holds is not bounded by a memory budget (see [`crate::serve`] for that).
pub async fn upgrade(
    manager: Arc<KernelManager>,
    kernel_id: String,
    session_id: Option<String>,
    ws: ChannelsUpgrade,
) -> Result<Response, Error> {
    upgrade_charged(manager, kernel_id, session_id, ws, None).await
}

/// [`upgrade`], charging what the connection holds to `account` (the connection's account of
/// the server's client memory budget, when it was served by [`crate::serve`]).
pub(crate) async fn upgrade_charged(
    manager: Arc<KernelManager>,
    kernel_id: String,
    session_id: Option<String>,
    ws: ChannelsUpgrade,
    account: Option<Account>,
) -> Result<Response, Error> {
    let account = account.unwrap_or_else(|| MemoryBudget::unbounded().open());
    manager.find(&kernel_id).await?;
    let max = manager.config().ws_max_message_size;
    // tungstenite only reads here and writes control frames (into the outbox, at once).
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mode = if ws.v1 { Mode::V1 } else { Mode::Legacy };
    let session_id = match session_id.filter(|s| !s.is_empty()) {
        Some(session_id) => session_id,
        None => {
            tracing::info!(%kernel_id, "no session id specified; using a random one");
            uuid::Uuid::new_v4().to_string()
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(ws.key.as_bytes());
    let on_upgrade = ws.on_upgrade;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::warn!(%kernel_id, error = %err, "WebSocket upgrade failed");
                return;
            }
        };
        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
        let outbox = Arc::new(Outbox::default());
        let read = WebSocketStream::from_raw_socket(
            ControlIo::new(read, Arc::clone(&outbox)),
            Role::Server,
            Some(config),
        )
        .await;
        let socket = Socket {
            read,
            write: FrameWriter::new(write, outbox, account.clone()),
        };
        serve(manager, kernel_id, session_id, mode, account, socket).await;
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if mode == Mode::V1 {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, V1_SUBPROTOCOL);
    }
    response
        .body(axum::body::Body::empty())
        .map_err(|err| Error::Internal(format!("upgrade response: {err}")))
}

/// A connection's two halves.
struct Socket {
    /// tungstenite, reading the client's frames.
    read: WebSocketStream<ControlIo<ReadHalf<Io>>>,
    /// Data frames and tungstenite's control frames out.
    write: FrameWriter<WriteHalf<Io>>,
}

/// Runs one connection until either side goes away.
async fn serve(
    manager: Arc<KernelManager>,
    kernel_id: String,
    session_id: String,
    mode: Mode,
    account: Account,
    mut socket: Socket,
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
        pending: std::mem::take(&mut lease.attached.replay),
        unsent: VecDeque::new(),
        unsent_from: 0,
        held: VecDeque::new(),
        traffic: crate::metrics::Traffic::open(),
        account,
    };
    let mut stop = bridge.serve(&mut socket, &mut lease).await;
    if bridge.account.is_evicted() {
        // Dropped first, before the close frame waits behind the write queue. (An eviction
        // usually ends a send or flush that the client did not take, which stops silently.)
        bridge.pending.clear();
        bridge.unsent.clear();
        drop(lease.attached.queue.take());
        socket.write.abandon();
        stop = Stop::Close(
            close_code::POLICY,
            close_reason(bridge.account.close_reason()),
        );
    }
    // The client closed (nothing may follow tungstenite's close reply), the socket failed, or a
    // newer connection took over: messages queued for the socket and not started go with the
    // rest of what was not delivered (a whole message or nothing: one that is partly out when
    // the connection ends goes again).
    if matches!(stop, Stop::Silent | Stop::Replaced) {
        let delivered = socket.write.abandon();
        bridge.take_back_unsent(delivered);
    }
    // What this connection did not deliver goes to its successor (when replaced) or back to the
    // supervisor, which keeps it for a reconnect when this was the last client; before the close
    // frame, which may take a while to leave.
    let handover = bridge.leftovers();
    lease.finish(handover);
    match stop {
        Stop::Close(code, reason) => close(&mut socket, code, reason).await,
        Stop::Replaced => {
            close(
                &mut socket,
                close_code::NORMAL,
                Cow::Borrowed("replaced by a newer connection"),
            )
            .await;
        }
        Stop::Silent => {
            // tungstenite queued its close reply (when the client closed): the frame in the
            // middle of being written, then the outbox, go out.
            let _ = socket.read.flush().await;
            let _ = timeout(CLOSE_GRACE, socket.write.finish()).await;
        }
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
    /// Messages to deliver before anything else (a predecessor's leftovers, the replay), and
    /// any message whose send failed.
    pending: VecDeque<(Channel, Forwarded)>,
    /// The messages queued for the socket that it has not taken whole yet, oldest first (they
    /// share their bytes with what the writer queued). The first is the writer's message number
    /// `unsent_from`.
    unsent: VecDeque<(Channel, Forwarded)>,
    unsent_from: u64,
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
    /// A newer connection with the same session id took over: it gets what is unsent.
    Replaced,
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
        Some(Kick::Replaced) => Stop::Replaced,
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
    /// Forgets the messages the socket has taken whole.
    fn forget_delivered(&mut self, delivered: u64) {
        while self.unsent_from < delivered && self.unsent.pop_front().is_some() {
            self.unsent_from += 1;
        }
    }

    /// Puts the messages the socket will not take (from message number `delivered` on: see
    /// [`FrameWriter::abandon`]) back in front of what is pending.
    fn take_back_unsent(&mut self, delivered: u64) {
        self.forget_delivered(delivered);
        let mut unsent = std::mem::take(&mut self.unsent);
        unsent.append(&mut self.pending);
        self.pending = unsent;
        // A message whose verdict failed is delivered nowhere.
        self.pending.retain(|(_, msg)| !msg.failed());
    }

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

    /// Queues the pending messages in order (the loop writes them).
    fn push_pending(&mut self, socket: &mut Socket) {
        while let Some((channel, msg)) = self.pending.pop_front() {
            self.push(socket, channel, msg);
        }
    }

    async fn serve(&mut self, socket: &mut Socket, lease: &mut ClientLease) -> Stop {
        if let Some(from) = lease.attached.replaced.take() {
            self.take_over(from).await;
        }
        if self.channels.is_none() {
            let connection = lease.attached.connection.clone();
            if let Err(stop) = self.connect(&connection).await {
                return stop;
            }
        }
        self.push_pending(socket);
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
            // Kernel messages are taken only while the socket keeps up; the rest wait in the
            // hub's queue, whose bound tells the supervisor about a client that does not read.
            let room = socket.write.queued() < WRITE_HIGH;
            tokio::select! {
                incoming = socket.read.next() => {
                    let Some(Ok(frame)) = incoming else {
                        return Stop::Silent;
                    };
                    last_seen = Instant::now();
                    if let Some(stop) = self.on_client_frame(frame).await {
                        return stop;
                    }
                }
                written = socket.write.progress() => {
                    if let Some(kept) = socket.write.failed() {
                        // What was queued behind the failed message goes back with the rest of
                        // what was not delivered (for this session's next connection).
                        self.take_back_unsent(kept);
                        tracing::warn!(kernel_id = %self.kernel_id, session_id = %self.session_id,
                            "a kernel message failed its signature check while it was being sent; closing the connection before its end");
                        return Stop::close(close_code::ERROR, "a kernel message failed its signature check");
                    }
                    if written.is_err() {
                        return Stop::Silent;
                    }
                    self.forget_delivered(socket.write.delivered());
                }
                reply = next_reply(&mut self.channels), if room => match reply {
                    Some((channel, msg)) => self.push(socket, channel, msg.into()),
                    None => {
                        tracing::debug!(kernel_id = %self.kernel_id, "session sockets closed; waiting for a rebuild");
                        self.channels = None;
                    }
                },
                notice = lease.attached.queue.recv(), if room => match notice {
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
                    }
                    // The supervisor dropped this client: it was kicked just before.
                    None => return kicked(kick.reason(), kick.detail()),
                },
                () = self.account.evicted() => {
                    return Stop::Close(close_code::POLICY, close_reason(self.account.close_reason()));
                }
                why = kick.kicked() => {
                    if matches!(why, Kick::KernelGone | Kick::KernelDied | Kick::Culled | Kick::GatewayExit) {
                        // Deliver what was queued before the kick (e.g. the final `dead` status),
                        // ahead of the close frame.
                        while let Some(notice) = lease.attached.queue.try_recv() {
                            if let Some(stop) = self.on_notice(socket, notice).await {
                                return stop;
                            }
                        }
                    }
                    return kicked(Some(why), kick.detail());
                }
                _ = ping.tick(), if !ping_every.is_zero() => {
                    if last_seen.elapsed() > pong_timeout {
                        tracing::info!(kernel_id = %self.kernel_id, session_id = %self.session_id, "WebSocket client stopped answering pings");
                        return Stop::close(close_code::AWAY, "ping timeout");
                    }
                    // Into the outbox: it goes out at the next frame boundary.
                    if socket.read.send(WsMessage::Ping(bytes::Bytes::new())).await.is_err() {
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

    async fn on_notice(&mut self, socket: &mut Socket, notice: ClientNotice) -> Option<Stop> {
        match notice {
            ClientNotice::Iopub(msg) => self.push(socket, Channel::Iopub, msg),
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
            (WsMessage::Text(text), _) => {
                match legacy::decode_text_bytes(bytes::Bytes::from(text.clone())) {
                    Ok(decoded) => decoded,
                    Err(err) => {
                        tracing::warn!(kernel_id = %self.kernel_id, error = %err, "ignoring a malformed text frame");
                        return None;
                    }
                }
            }
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
            // tungstenite answered a ping already (into the outbox); raw frames never surface.
            (WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_), _) => return None,
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

    /// Queues a kernel message for the socket in the negotiated framing (the loop writes it). A
    /// message whose signature is still being checked goes out up to its last frame, which waits
    /// for the verdict; one whose verdict failed already is dropped here.
    fn push(&mut self, socket: &mut Socket, channel: Channel, forwarded: Forwarded) {
        if forwarded.failed() {
            return;
        }
        let msg = forwarded.message();
        let payload: WsPayload = match self.mode {
            Mode::V1 => v1::encode_payload(channel, msg),
            Mode::Legacy => match legacy::encode_payload(channel, msg) {
                Ok(payload) => payload,
                Err(err) => {
                    tracing::warn!(kernel_id = %self.kernel_id, error = %err, "dropping a kernel message that cannot be encoded");
                    return;
                }
            },
        };
        self.traffic.to_client(payload.len());
        socket
            .write
            .push_gated(payload, forwarded.verdict().cloned());
        self.unsent.push_back((channel, forwarded));
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

/// Sends a close frame behind what is queued and waits for the client's reply, reading (and
/// dropping) what it still sends, so that closing does not reset the connection before the
/// client read everything (a pong in flight would). Gives up after [`CLOSE_GRACE`]: a client
/// that reads nothing never takes the frame.
async fn close(socket: &mut Socket, code: u16, reason: Cow<'static, str>) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.as_ref().into(),
    };
    // The peer may already be gone, or not reading; nothing to do about it then.
    let _ = timeout(CLOSE_GRACE, async {
        // Every data frame first: nothing may follow the close frame.
        if socket.write.finish().await.is_err() {
            return;
        }
        if socket
            .read
            .send(WsMessage::Close(Some(frame)))
            .await
            .is_err()
        {
            return;
        }
        if socket.write.finish().await.is_err() {
            return;
        }
        while let Some(Ok(_)) = socket.read.next().await {}
    })
    .await;
}
