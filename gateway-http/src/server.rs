//! The serve loop: accept, TCP_NODELAY, optional TLS, HTTP/1.1 (and h2c) with upgrades for
//! WebSockets, graceful shutdown; and the connection half of the hardened edge (the request half
//! is [`crate::api`]'s edge middleware).
//!
//! Per connection, against [`HttpLimits`]:
//! * beyond `max_connections` open connections in all, or beyond the process's open-file limit
//!   less `fd_reserve` (so that the gateway keeps descriptors for its kernels, its store and the
//!   connections it already has), a new connection gets a minimal 503 and is closed; while more
//!   than [`MAX_REFUSING`] refusals are still being written, further connections are closed at
//!   accept without an answer;
//! * a client address holding `max_connections_per_client` connections gets a minimal 503 on
//!   any further one, which is then closed;
//! * hyper's read buffer is bounded by `max_head_bytes`: hyper answers a longer head 431 (with
//!   an empty body) and closes. An overlong URI is one way to a long head, so it gets 431 too:
//!   hyper's own 414 is only for a URI over 64 KiB, so only a limit above that can give it.
//!   The buffer cannot go below 8 KiB; the middleware enforces smaller limits;
//! * a request head must be complete within `header_timeout` of the accept (a TLS handshake
//!   included) or of the previous response: `EdgeIo` keeps that deadline below hyper (hyper's own timer only closes, and does
//!   not run while hyper-util waits for a connection's first bytes), answers a partial head 408
//!   and closes, and closes a connection that sent nothing;
//! * each raw HTTP/1 head is followed by a `HeadScanner`, whose count of framing fields goes
//!   with the request (see [`crate::api`]'s edge middleware);
//! * each connection has an account of the client memory budget (`client_memory_budget`,
//!   `client_memory_share`; see the `budget` module): its write queue is charged to it, and a
//!   WebSocket on the connection charges its queue at the kernel's hub to it too.
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tower::ServiceExt as _;

use crate::api::edge::{HeadFraming, HeadScanner};
use crate::auth::ConnectionInfo;
use crate::budget::{Account, MemoryBudget};
use crate::config::HttpLimits;
use crate::io::{QUEUE_LIMIT, QueuedWriter};
use crate::{Error, KernelManager};

/// How long a client may take to finish the TLS handshake when there is no head deadline.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Refused connections being answered at once; beyond this, new ones are closed at accept.
/// These are part of the `fd_reserve`.
const MAX_REFUSING: usize = 64;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The smallest read buffer hyper accepts (its `max_buf_size` panics below it).
const HYPER_MIN_BUF: usize = 8192;

/// How long the gateway spends answering a connection it refuses (408 after a stalled head, 503
/// beyond the connection cap): writing the answer, and reading what the client still sends so
/// that closing does not reset the connection before the client read the answer.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);

/// What a refused connection's client may still send while its answer goes out.
const REFUSAL_DRAIN_LIMIT: usize = 64 * 1024;

/// How often, at most, one client address reaching its connection cap is logged as a warning.
const CAP_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Serves [`crate::api::router`] on `listener` until `shutdown` resolves: plain HTTP, or HTTPS when
/// the configuration has TLS settings. Then it stops accepting, lets open requests finish (up to
/// `shutdown_wait_time`), and shuts the kernels down through [`KernelManager::shutdown_all`].
pub async fn serve(
    listener: TcpListener,
    manager: Arc<KernelManager>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = Arc::clone(manager.config());
    let limits = config.limits.clone();
    let service = crate::api::router(Arc::clone(&manager));
    let tls = config.tls.clone().map(TlsAcceptor::from);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // `EdgeIo` keeps the head deadline: hyper's timer would close without a 408.
        .header_read_timeout(None)
        .max_buf_size(limits.max_head_bytes.max(HYPER_MIN_BUF));
    let limiter = (limits.max_connections_per_client > 0)
        .then(|| Arc::new(ClientLimiter::new(limits.max_connections_per_client)));
    let gate = Arc::new(ConnectionGate::new(connection_cap(&limits)));
    let budget = MemoryBudget::new(limits.client_memory_budget, limits.client_memory_share);
    let refusing = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let accepted = Instant::now();
        // Without this, small request/reply exchanges wait on Nagle + delayed ACK (~40 ms).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let Some(open) = gate.enter() else {
            gate.refused();
            refuse(
                &connections,
                &refusing,
                stream,
                tls.clone(),
                Error::GatewayBusy,
            );
            continue;
        };
        let slot = match &limiter {
            None => None,
            Some(limiter) => match limiter.acquire(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    refuse(
                        &connections,
                        &refusing,
                        stream,
                        tls.clone(),
                        Error::TooManyConnections,
                    );
                    continue;
                }
            },
        };
        let (builder, service, tls, stop, limits) = (
            builder.clone(),
            service.clone(),
            tls.clone(),
            stop.clone(),
            limits.clone(),
        );
        let account = budget.open();
        connections.spawn(async move {
            // Counted until the connection ends, however it ends.
            let _slots = (open, slot);
            let mut info = ConnectionInfo {
                peer,
                client_certificate: None,
            };
            let head_deadline = accepted + limits.header_timeout;
            match tls {
                None => {
                    serve_connection(
                        &builder,
                        stream,
                        service,
                        info,
                        &limits,
                        head_deadline,
                        account,
                        &stop,
                    )
                    .await
                }
                Some(acceptor) => {
                    // The handshake is part of the time allowed from accept to a request head.
                    let handshake_deadline = if limits.header_timeout.is_zero() {
                        accepted + TLS_HANDSHAKE_TIMEOUT
                    } else {
                        head_deadline
                    };
                    match tokio::time::timeout_at(handshake_deadline, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            info.client_certificate = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|leaf| Arc::new(leaf.clone().into_owned()));
                            serve_connection(
                                &builder,
                                stream,
                                service,
                                info,
                                &limits,
                                head_deadline,
                                account,
                                &stop,
                            )
                            .await
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracing::info!("shutting down: no longer accepting connections");
    drop(listener);
    stop.cancel();
    connections.close();
    if tokio::time::timeout(config.shutdown_wait_time, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the shutdown wait"
        );
    }
    manager.shutdown_all().await;
    Ok(())
}

/// One connection until it ends, or until shutdown asks it to finish its current request.
/// Every request on it carries `info` and the connection's budget `account` in its extensions,
/// and the [`HeadFraming`] its raw head had. The first head is due by `head_deadline`.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<S>(
    builder: &auto::Builder<TokioExecutor>,
    stream: S,
    router: axum::Router,
    info: ConnectionInfo,
    limits: &HttpLimits,
    head_deadline: Instant,
    account: Account,
    stop: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(HeadClock::default());
    let peer = info.peer;
    let service = {
        let clock = Arc::clone(&clock);
        let account = account.clone();
        hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            let in_flight = InFlight::begin(&clock);
            request.extensions_mut().insert(info.clone());
            request.extensions_mut().insert(account.clone());
            if let Some(framing) = clock.take_framing() {
                request.extensions_mut().insert(framing);
            }
            let response = router.clone().oneshot(request);
            async move {
                let response = response.await?;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    // The connection is a WebSocket now: no more request heads to wait for.
                    in_flight.clock.upgraded.store(true, Ordering::SeqCst);
                }
                Ok::<_, Infallible>(response.map(|body| ResponseBody {
                    inner: body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    // The queue sits below the edge, so a 408 the edge writes follows what hyper queued, and
    // WebSocket writes on the upgraded connection go through it.
    let queue_limit = match limits.client_memory_share {
        0 => QUEUE_LIMIT,
        share => QUEUE_LIMIT.min(share),
    };
    let stream = EdgeIo::new(
        QueuedWriter::new(stream, queue_limit, Some(account)),
        clock,
        limits.header_timeout,
        head_deadline,
        peer,
    );
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

// === Request heads: the deadline and the raw framing ===

/// What a connection's requests tell its [`EdgeIo`]: whether a request is open (then no head is
/// awaited), when the last one ended, whether the connection was upgraded, and the framing of
/// the last raw head, handed from the reader to the request it belongs to.
#[derive(Debug, Default)]
struct HeadClock {
    /// Requests received and not yet answered in full.
    in_flight: AtomicUsize,
    /// Bumped each time a request ends: the wait for the next head starts anew.
    epoch: AtomicU64,
    /// The connection became a WebSocket (or another protocol).
    upgraded: AtomicBool,
    /// A [`HeadFraming::pack`]ed value, or 0.
    framing: AtomicU32,
}

impl HeadClock {
    /// The current epoch while the connection waits for a request head; `None` while a request
    /// is open or after an upgrade.
    fn awaiting_head(&self) -> Option<u64> {
        if self.upgraded.load(Ordering::SeqCst) || self.in_flight.load(Ordering::SeqCst) != 0 {
            return None;
        }
        Some(self.epoch.load(Ordering::SeqCst))
    }

    fn take_framing(&self) -> Option<HeadFraming> {
        HeadFraming::unpack(self.framing.swap(0, Ordering::SeqCst))
    }
}

/// One open request; dropped with its response body (sent, or abandoned).
#[derive(Debug)]
struct InFlight {
    clock: Arc<HeadClock>,
}

impl InFlight {
    fn begin(clock: &Arc<HeadClock>) -> InFlight {
        clock.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            clock: Arc::clone(clock),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The epoch first: whoever sees no request open also sees the new epoch.
        self.clock.epoch.fetch_add(1, Ordering::SeqCst);
        self.clock.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request open until hyper is done with it.
#[derive(Debug)]
struct ResponseBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where an [`EdgeIo`] is.
#[derive(Debug)]
enum IoState {
    /// Passing bytes through.
    Open,
    /// Writing `response[written..]`, then shutting the stream down.
    Refusing { response: Vec<u8>, written: usize },
    /// Ended by the edge: reads see the end of the stream, writes fail.
    Closed,
}

/// The connection's stream as hyper sees it: bytes pass through unchanged, while it keeps the
/// head deadline (see the module docs) and shows each raw HTTP/1 head to a [`HeadScanner`].
#[derive(Debug)]
struct EdgeIo<S> {
    inner: S,
    clock: Arc<HeadClock>,
    /// Zero: no deadline.
    header_timeout: Duration,
    /// The head deadline; while refusing, the end of the grace period.
    deadline: Pin<Box<Sleep>>,
    /// The epoch `deadline` and `scanner` were set for.
    epoch: u64,
    scanner: HeadScanner,
    state: IoState,
    peer: SocketAddr,
}

impl<S> EdgeIo<S> {
    /// The first head is due by `first_deadline` (the accept plus the header timeout).
    fn new(
        inner: S,
        clock: Arc<HeadClock>,
        header_timeout: Duration,
        first_deadline: Instant,
        peer: SocketAddr,
    ) -> EdgeIo<S> {
        EdgeIo {
            inner,
            clock,
            header_timeout,
            deadline: Box::pin(tokio::time::sleep_until(first_deadline)),
            epoch: 0,
            scanner: HeadScanner::default(),
            state: IoState::Open,
            peer,
        }
    }
}

impl<S: AsyncWrite + Unpin> EdgeIo<S> {
    /// The head deadline passed: a partial HTTP/1 head is answered 408; then the stream ends.
    fn expire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let peer = self.peer;
        if self.scanner.is_partial() {
            tracing::debug!(%peer, timeout = ?self.header_timeout, "request head incomplete: 408");
            let error = Error::RequestTimeout("the request head did not arrive in time".to_owned());
            self.state = IoState::Refusing {
                response: raw_response(&error),
                written: 0,
            };
            self.deadline.as_mut().reset(Instant::now() + REFUSAL_GRACE);
            ready!(self.poll_refusal(cx));
        } else {
            tracing::debug!(%peer, timeout = ?self.header_timeout, "no request: closing the connection");
        }
        self.state = IoState::Closed;
        Poll::Ready(Ok(()))
    }

    /// Writes the refusal and shuts the stream down, within the grace period; `Ready` when done
    /// or given up.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let EdgeIo {
            inner,
            deadline,
            state,
            ..
        } = self;
        let IoState::Refusing { response, written } = state else {
            return Poll::Ready(());
        };
        loop {
            let step = match response.get(*written..) {
                Some(rest) if !rest.is_empty() => {
                    match Pin::new(&mut *inner).poll_write(cx, rest) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Ready(Ok(n)) => {
                            *written += n;
                            continue;
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
                _ => Pin::new(&mut *inner).poll_shutdown(cx),
            };
            return match step {
                Poll::Ready(_) => Poll::Ready(()),
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for EdgeIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            IoState::Open => {}
            IoState::Refusing { .. } => {
                ready!(this.poll_refusal(cx));
                this.state = IoState::Closed;
                return Poll::Ready(Ok(()));
            }
            IoState::Closed => return Poll::Ready(Ok(())),
        }
        let awaiting_head = this.clock.awaiting_head();
        if let Some(epoch) = awaiting_head {
            if epoch != this.epoch {
                this.epoch = epoch;
                this.scanner.reset();
                if !this.header_timeout.is_zero() {
                    this.deadline
                        .as_mut()
                        .reset(Instant::now() + this.header_timeout);
                }
            }
            if !this.header_timeout.is_zero() && this.deadline.as_mut().poll(cx).is_ready() {
                return this.expire(cx);
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        // Only bytes read while no request is open can be a head; the rest is body (or the
        // start of a pipelined head, which then goes unscanned: hyper's own rules apply to it).
        if awaiting_head.is_some() && this.scanner.wants_bytes() {
            let read = buf.filled().get(before..).unwrap_or_default();
            if let Some(framing) = this.scanner.feed(read) {
                this.clock.framing.store(framing.pack(), Ordering::SeqCst);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EdgeIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.state {
            IoState::Open => Pin::new(&mut this.inner).poll_write(cx, buf),
            IoState::Refusing { .. } | IoState::Closed => {
                Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            IoState::Open => Pin::new(&mut this.inner).poll_flush(cx),
            IoState::Refusing { .. } | IoState::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.state {
            IoState::Open => Pin::new(&mut this.inner).poll_shutdown(cx),
            IoState::Refusing { .. } => {
                ready!(this.poll_refusal(cx));
                this.state = IoState::Closed;
                Poll::Ready(Ok(()))
            }
            // Whatever was still queued is given up: the client stopped taking part.
            IoState::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// A complete HTTP/1.1 response for `error`, with EG's JSON body, for when no request reached
/// the router.
fn raw_response(error: &Error) -> Vec<u8> {
    let status = error.status();
    let (reason, message) = error.reason_and_message();
    let body = serde_json::json!({ "reason": reason, "message": message }).to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len(),
    )
    .into_bytes()
}

// === Connections per client address ===

/// Open connections per client address, capped.
#[derive(Debug)]
struct ClientLimiter {
    max: usize,
    /// Only addresses with an open connection: an entry goes when its count reaches zero.
    clients: Mutex<HashMap<IpAddr, ClientCount>>,
}

#[derive(Debug)]
struct ClientCount {
    open: usize,
    /// Connections refused since the last warning.
    refused: u64,
    /// When the last warning about this address was logged.
    warned: Option<Instant>,
}

/// One counted connection of a client address; uncounted on drop.
#[derive(Debug)]
struct ClientSlot {
    limiter: Arc<ClientLimiter>,
    ip: IpAddr,
}

impl ClientLimiter {
    fn new(max: usize) -> ClientLimiter {
        ClientLimiter {
            max,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new connection from `ip`; `None` when the address is at its cap.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        // An IPv4 client of a dual-stack listener is the same client as over IPv4.
        let ip = ip.to_canonical();
        let mut clients = self.clients.lock();
        let count = clients.entry(ip).or_insert(ClientCount {
            open: 0,
            refused: 0,
            warned: None,
        });
        if count.open < self.max {
            count.open += 1;
            return Some(ClientSlot {
                limiter: Arc::clone(self),
                ip,
            });
        }
        count.refused += 1;
        let now = Instant::now();
        if count
            .warned
            .is_none_or(|warned| now.duration_since(warned) >= CAP_WARN_INTERVAL)
        {
            tracing::warn!(
                client = %ip,
                limit = self.max,
                refused = count.refused,
                "client holds as many connections as allowed: refusing more with 503"
            );
            count.warned = Some(now);
            count.refused = 0;
        } else {
            tracing::debug!(client = %ip, limit = self.max, "connection refused: 503");
        }
        None
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.limiter.clients.lock();
        if let Entry::Occupied(mut entry) = clients.entry(self.ip) {
            let count = entry.get_mut();
            count.open = count.open.saturating_sub(1);
            if count.open == 0 {
                entry.remove();
            }
        }
    }
}

// === Connections in all ===

/// The cap on open connections: `max_connections`, and the open-file limit less `fd_reserve`.
fn connection_cap(limits: &HttpLimits) -> usize {
    let files = match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != nix::sys::resource::RLIM_INFINITY => {
            usize::try_from(soft).unwrap_or(usize::MAX)
        }
        Ok(_) => usize::MAX,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit; connections are capped by max_connections only");
            usize::MAX
        }
    };
    cap_for(limits, files)
}

/// The cap on open connections for an open-file limit of `files`.
fn cap_for(limits: &HttpLimits, files: usize) -> usize {
    let configured = match limits.max_connections {
        0 => usize::MAX,
        max => max,
    };
    let by_files = files.saturating_sub(limits.fd_reserve).max(1);
    if by_files < configured {
        tracing::info!(
            open_file_limit = files,
            fd_reserve = limits.fd_reserve,
            max_connections = by_files,
            "connections are capped by the open-file limit (raise it with ulimit -n)"
        );
    }
    configured.min(by_files)
}

/// Open connections in all, capped.
#[derive(Debug)]
struct ConnectionGate {
    max: usize,
    open: AtomicUsize,
    /// Refused since the last warning, and when that was.
    warned: Mutex<(u64, Option<Instant>)>,
}

/// One open connection; uncounted on drop.
#[derive(Debug)]
struct OpenConnection(Arc<ConnectionGate>);

impl ConnectionGate {
    fn new(max: usize) -> ConnectionGate {
        ConnectionGate {
            max,
            open: AtomicUsize::new(0),
            warned: Mutex::new((0, None)),
        }
    }

    /// Counts a new connection; `None` at the cap.
    fn enter(self: &Arc<Self>) -> Option<OpenConnection> {
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| OpenConnection(Arc::clone(self)))
    }

    /// Logs a refusal at the cap (a warning at most every [`CAP_WARN_INTERVAL`]).
    fn refused(&self) {
        let mut warned = self.warned.lock();
        warned.0 += 1;
        let now = Instant::now();
        if warned
            .1
            .is_none_or(|at| now.duration_since(at) >= CAP_WARN_INTERVAL)
        {
            tracing::warn!(
                limit = self.max,
                refused = warned.0,
                "the gateway holds as many connections as allowed: refusing more with 503"
            );
            *warned = (0, Some(now));
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers a refused connection with `error` in its own task, or closes it at once when
/// [`MAX_REFUSING`] refusals are already being answered.
fn refuse(
    connections: &TaskTracker,
    refusing: &Arc<AtomicUsize>,
    stream: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
    error: Error,
) {
    crate::metrics::connection_refused(match error {
        Error::GatewayBusy => "gateway",
        _ => "client",
    });
    if refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::SeqCst);
        drop(stream);
        return;
    }
    let refusing = Arc::clone(refusing);
    connections.spawn(async move {
        refuse_connection(stream, tls, &error).await;
        refusing.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Answers a refused connection with `error` (a 503) and closes it (after a TLS handshake when
/// the listener speaks TLS, so the client can read the answer).
async fn refuse_connection(stream: tokio::net::TcpStream, tls: Option<TlsAcceptor>, error: &Error) {
    let peer = stream.peer_addr().ok();
    let answered = match tls {
        None => answer_and_close(stream, error).await,
        Some(acceptor) => {
            match tokio::time::timeout(REFUSAL_GRACE, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => answer_and_close(stream, error).await,
                Ok(Err(error)) => Err(error),
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            }
        }
    };
    if let Err(error) = answered {
        tracing::debug!(?peer, %error, "refused connection not answered");
    }
}

/// Writes `error` as the whole response, shuts the stream down and reads what the client still
/// sends until it closes, all within [`REFUSAL_GRACE`].
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    error: &Error,
) -> io::Result<()> {
    let response = raw_response(error);
    tokio::time::timeout(REFUSAL_GRACE, async {
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_LIMIT {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_address_and_forgets_closed_ones() {
        let limiter = Arc::new(ClientLimiter::new(2));
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 1].into();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap_or(a);
        let first = limiter.acquire(a);
        let second = limiter.acquire(mapped);
        assert!(first.is_some() && second.is_some());
        assert!(limiter.acquire(a).is_none(), "third connection from a");
        let other = limiter.acquire(b);
        assert!(other.is_some(), "b has its own count");
        drop(first);
        let again = limiter.acquire(a);
        assert!(again.is_some(), "a is below its cap again");
        drop((second, again, other));
        assert!(
            limiter.clients.lock().is_empty(),
            "entries are removed at zero"
        );
    }

    #[test]
    fn the_connection_cap_keeps_the_fd_reserve() {
        let limits = HttpLimits {
            max_connections: 10_000,
            fd_reserve: 256,
            ..HttpLimits::default()
        };
        assert_eq!(cap_for(&limits, 20_000), 10_000);
        assert_eq!(cap_for(&limits, 1024), 768, "a default soft limit of 1024");
        assert_eq!(cap_for(&limits, 100), 1, "never zero");
        let unlimited = HttpLimits {
            max_connections: 0,
            ..limits
        };
        assert_eq!(cap_for(&unlimited, 20_000), 19_744);
        assert_eq!(cap_for(&unlimited, usize::MAX), usize::MAX - 256);
    }

    #[test]
    fn the_gate_counts_open_connections_up_to_its_cap() {
        let gate = Arc::new(ConnectionGate::new(2));
        let (a, b) = (gate.enter(), gate.enter());
        assert!(a.is_some() && b.is_some());
        assert!(gate.enter().is_none());
        drop(a);
        assert!(
            gate.enter().is_some(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn raw_responses_carry_the_json_error() {
        let response =
            String::from_utf8(raw_response(&Error::TooManyConnections)).unwrap_or_default();
        let body = r#"{"message":"too many connections from this address","reason":"Service Unavailable"}"#;
        assert!(
            response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{response}"
        );
        assert!(response.contains("\r\nconnection: close\r\n"), "{response}");
        assert!(
            response.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{response}"
        );
        assert!(response.ends_with(&format!("\r\n\r\n{body}")), "{response}");
    }
}
