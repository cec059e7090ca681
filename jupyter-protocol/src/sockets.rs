//! A kernel's ZeroMQ sockets, as one unit per kernel incarnation.
//!
//! A zeromq DEALER does not recover when its peer restarts on the same port, so after a kernel restart
//! callers drop the whole unit and connect a new one.
//!
//! Every incoming message is checked before it is handed on: total size against
//! [`SocketOptions::max_message_size`], the `<IDS|MSG>` framing, and the HMAC signature with a
//! replay history shared by the sockets of one unit ([`SessionChannels`] has one history for its
//! three DEALERs, [`IopubSubscription`] its own). Messages that fail are dropped with a log line.
//!
//! Background tasks read the sockets. They end, and release their sockets, once the receiving end
//! of their channel (`replies` or `messages`) is dropped.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use uuid::Uuid;

use crate::transport::{FrameSink, FrameStream, KernelTransport, ZmqTransport};
use crate::verdict::{Forwarded, IopubItem, Verdict};
use crate::wire::{DIGEST_HISTORY_SIZE, DigestHistory, TAG_LEN, check_and_split, decode_signature};
use crate::{Channel, ConnectionInfo, Error, Message, Signer};

/// Socket settings.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Every connect is bounded by this.
    pub connect_timeout: Duration,
    /// Incoming messages larger than this (all frames together) are dropped with a log line.
    pub max_message_size: usize,
    /// Capacity, in messages, of the buffer the iopub drain task fills.
    pub iopub_capacity: usize,
    /// Capacity, in messages, of the reply buffer of shell/control/stdin.
    pub reply_capacity: usize,
    /// Signed iopub messages larger than this (all frames together) are handed on before their
    /// signature is checked, as [`IopubItem::Unverified`], while the MAC runs on a blocking
    /// thread; [`IopubItem::Settled`] follows with the verdict (see [`crate::verdict`]).
    /// `None` (the default): every message is verified before it is handed on.
    pub verify_aside_above: Option<usize>,
}

impl Default for SocketOptions {
    /// Connect timeout 10 s, messages up to 1 GiB, 100 000 buffered iopub messages, 1 024 buffered
    /// replies, every message verified before it is handed on.
    fn default() -> SocketOptions {
        SocketOptions {
            connect_timeout: Duration::from_secs(10),
            max_message_size: 1 << 30,
            iopub_capacity: 100_000,
            reply_capacity: 1024,
            verify_aside_above: None,
        }
    }
}

/// The default transport as a shareable handle.
pub fn default_transport() -> Arc<dyn KernelTransport> {
    Arc::new(ZmqTransport)
}

/// Checks size, framing and signature of incoming messages for one socket unit.
#[derive(Debug)]
struct UnitVerifier {
    signer: Signer,
    history: Mutex<DigestHistory>,
    max_size: usize,
}

impl UnitVerifier {
    fn new(signer: Signer, max_size: usize) -> UnitVerifier {
        UnitVerifier {
            signer,
            history: Mutex::new(DigestHistory::new(DIGEST_HISTORY_SIZE)),
            max_size,
        }
    }

    fn history(&self) -> parking_lot::MutexGuard<'_, DigestHistory> {
        self.history.lock()
    }

    fn decode(&self, frames: Vec<Bytes>) -> Result<Message, Error> {
        match self.prepare(frames)? {
            Prepared::Unsigned(msg) => Ok(msg),
            Prepared::Signed(tag, msg) => {
                // The MAC runs outside the lock, so sockets of one unit verify in parallel.
                self.signer.verify_decoded(&tag, &msg)?;
                self.history().insert_tag(tag)?;
                Ok(msg)
            }
        }
    }

    /// Size, framing and the replay check: everything but the MAC. The hex is decoded once.
    fn prepare(&self, frames: Vec<Bytes>) -> Result<Prepared, Error> {
        let (_identities, signature, msg) = check_and_split(frames, self.max_size)?;
        if !self.signer.is_signed() {
            return Ok(Prepared::Unsigned(msg));
        }
        let tag = decode_signature(&signature)?;
        if self.history().contains_tag(&tag) {
            return Err(Error::DuplicateSignature);
        }
        Ok(Prepared::Signed(tag, msg))
    }
}

/// A message that passed [`UnitVerifier::prepare`].
enum Prepared {
    /// Nothing to check (the key is empty).
    Unsigned(Message),
    /// Its MAC is still to be checked against this tag.
    Signed([u8; TAG_LEN], Message),
}

async fn connect_bounded<T>(
    endpoint: &str,
    timeout: Duration,
    connect: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(Error::ConnectTimeout(endpoint.to_owned())),
    }
}

/// Pause after a transport receive error, so a socket that keeps failing cannot spin a core.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(10);

struct SenderInner {
    session_id: String,
    signer: Signer,
    shell: tokio::sync::Mutex<Box<dyn FrameSink>>,
    control: tokio::sync::Mutex<Box<dyn FrameSink>>,
    stdin: tokio::sync::Mutex<Box<dyn FrameSink>>,
}

impl std::fmt::Debug for SenderInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderInner")
            .field("session_id", &self.session_id)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

/// Sends signed messages on shell, control or stdin. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChannelSender {
    inner: Arc<SenderInner>,
}

impl ChannelSender {
    /// Signs `msg` with the kernel's key and sends it on `channel` (shell, control or stdin).
    pub async fn send(&self, channel: Channel, msg: Message) -> Result<(), Error> {
        let sink = match channel {
            Channel::Shell => &self.inner.shell,
            Channel::Control => &self.inner.control,
            Channel::Stdin => &self.inner.stdin,
            Channel::Iopub | Channel::Heartbeat => {
                return Err(Error::Transport(format!(
                    "clients cannot send on the {channel} channel"
                )));
            }
        };
        let frames = self.inner.signer.encode(&[], &msg);
        sink.lock().await.send(frames).await
    }

    /// The session id these sockets use as their ZMQ identity.
    pub fn session_id(&self) -> &str {
        &self.inner.session_id
    }
}

/// Shell, control and stdin DEALER sockets of one client session; all three use the session id as
/// their ZMQ identity so replies and input requests are routed to this session.
#[derive(Debug)]
pub struct SessionChannels {
    /// Sends requests.
    pub sender: ChannelSender,
    /// Verified replies (shell, control) and input requests (stdin), tagged with their channel.
    pub replies: mpsc::Receiver<(Channel, Message)>,
}

impl SessionChannels {
    /// Connects the three DEALERs for `session_id`.
    pub async fn connect(
        info: &ConnectionInfo,
        session_id: &str,
        opts: &SocketOptions,
    ) -> Result<SessionChannels, Error> {
        SessionChannels::connect_with(&ZmqTransport, info, session_id, opts).await
    }

    /// Like [`SessionChannels::connect`], over the given transport.
    ///
    /// The reply buffer applies backpressure: while it is full the reader tasks stop reading.
    pub async fn connect_with(
        transport: &dyn KernelTransport,
        info: &ConnectionInfo,
        session_id: &str,
        opts: &SocketOptions,
    ) -> Result<SessionChannels, Error> {
        let signer = info.signer()?;
        let identity = session_id.as_bytes();
        let dealer = |channel: Channel| {
            let endpoint = info.endpoint(channel);
            async move {
                connect_bounded(
                    &endpoint,
                    opts.connect_timeout,
                    transport.connect_dealer(&endpoint, identity),
                )
                .await
            }
        };
        let (shell, control, stdin) = tokio::try_join!(
            dealer(Channel::Shell),
            dealer(Channel::Control),
            dealer(Channel::Stdin)
        )?;
        let verifier = Arc::new(UnitVerifier::new(signer.clone(), opts.max_message_size));
        let (tx, replies) = mpsc::channel(opts.reply_capacity.max(1));
        for (channel, stream) in [
            (Channel::Shell, shell.1),
            (Channel::Control, control.1),
            (Channel::Stdin, stdin.1),
        ] {
            tokio::spawn(read_replies(channel, stream, verifier.clone(), tx.clone()));
        }
        let sender = ChannelSender {
            inner: Arc::new(SenderInner {
                session_id: session_id.to_owned(),
                signer,
                shell: tokio::sync::Mutex::new(shell.0),
                control: tokio::sync::Mutex::new(control.0),
                stdin: tokio::sync::Mutex::new(stdin.0),
            }),
        };
        Ok(SessionChannels { sender, replies })
    }
}

async fn read_replies(
    channel: Channel,
    mut stream: Box<dyn FrameStream>,
    verifier: Arc<UnitVerifier>,
    tx: mpsc::Sender<(Channel, Message)>,
) {
    loop {
        let received = tokio::select! {
            biased;
            () = tx.closed() => return,
            received = stream.recv() => received,
        };
        match received {
            Ok(frames) => match verifier.decode(frames) {
                Ok(msg) => {
                    if tx.send((channel, msg)).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!(%channel, %err, "dropping kernel message"),
            },
            Err(err) => {
                tracing::debug!(%channel, %err, "receive failed");
                tokio::time::sleep(RECV_ERROR_BACKOFF).await;
            }
        }
    }
}

/// An iopub SUB (subscribed to all topics) drained by its own task into a bounded buffer, so a slow
/// consumer never makes the kernel's publisher drop messages.
///
/// The drain task reads the socket as fast as the kernel publishes. If `messages` is full (the
/// consumer is more than [`SocketOptions::iopub_capacity`] messages behind), the newest message is
/// dropped and counted, with a warning in the log, and reading goes on: losing messages here is
/// visible and bounded, while stopping would make the kernel's publisher drop silently.
///
/// [`IopubSubscription::divert`] hands messages to an [`IopubSink`] inside the drain task
/// instead, so a consumer that only fans them out costs no task wake-up of its own per message.
pub struct IopubSubscription {
    /// iopub messages in arrival order (until diverted): verified ones, and with
    /// [`SocketOptions::verify_aside_above`] large ones whose verdict follows.
    pub messages: mpsc::Receiver<IopubItem>,
    dropped: Arc<AtomicU64>,
    outlet: Arc<Outlet>,
}

impl std::fmt::Debug for IopubSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IopubSubscription")
            .field("dropped", &self.dropped())
            .field("diverted", &self.outlet.lock().is_some())
            .finish_non_exhaustive()
    }
}

/// Takes a diverted subscription's items, one at a time in arrival order, inside its drain task.
pub trait IopubSink: Send + 'static {
    /// One item (a verified message, or a large one and later its verdict). Called with the
    /// subscription's outlet locked: it must not block or wait, and must not touch the same
    /// subscription.
    fn deliver(&mut self, item: IopubItem);
}

impl<F: FnMut(IopubItem) + Send + 'static> IopubSink for F {
    fn deliver(&mut self, item: IopubItem) {
        self(item);
    }
}

impl IopubSubscription {
    /// Connects and starts the drain task; the task ends when `messages` is dropped.
    pub async fn connect(
        info: &ConnectionInfo,
        opts: &SocketOptions,
    ) -> Result<IopubSubscription, Error> {
        IopubSubscription::connect_with(&ZmqTransport, info, opts).await
    }

    /// Like [`IopubSubscription::connect`], over the given transport.
    pub async fn connect_with(
        transport: &dyn KernelTransport,
        info: &ConnectionInfo,
        opts: &SocketOptions,
    ) -> Result<IopubSubscription, Error> {
        let signer = info.signer()?;
        let endpoint = info.endpoint(Channel::Iopub);
        let stream = connect_bounded(
            &endpoint,
            opts.connect_timeout,
            transport.connect_sub(&endpoint),
        )
        .await?;
        let verifier = UnitVerifier::new(signer, opts.max_message_size);
        let (tx, messages) = mpsc::channel(opts.iopub_capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let outlet = Arc::new(Mutex::new(None));
        tokio::spawn(drain_iopub(
            stream,
            verifier,
            opts.verify_aside_above,
            tx,
            dropped.clone(),
            Arc::clone(&outlet),
        ));
        Ok(IopubSubscription {
            messages,
            dropped,
            outlet,
        })
    }

    /// From now on the drain task hands every message to `sink` instead of `messages`: first
    /// those still waiting in `messages`, then the rest as they arrive, in order. The subscription
    /// still ends when it is dropped; a second divert replaces the sink.
    pub fn divert(&mut self, mut sink: Box<dyn IopubSink>) {
        let mut outlet = self.outlet.lock();
        // The drain task fills `messages` only with the outlet locked, so nothing can come in
        // between the ones flushed here and the ones the sink gets next.
        while let Ok(msg) = self.messages.try_recv() {
            sink.deliver(msg);
        }
        *outlet = Some(sink);
    }

    /// How many messages the drain task dropped because `messages` was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A shared handle on the drop count, still readable after `messages` was moved elsewhere.
    pub fn drop_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }
}

async fn drain_iopub(
    mut stream: Box<dyn FrameStream>,
    verifier: UnitVerifier,
    aside_above: Option<usize>,
    tx: mpsc::Sender<IopubItem>,
    dropped: Arc<AtomicU64>,
    outlet: Arc<Outlet>,
) {
    let verifier = Arc::new(verifier);
    loop {
        let received = tokio::select! {
            biased;
            () = tx.closed() => return,
            received = stream.recv() => received,
        };
        let frames = match received {
            Ok(frames) => frames,
            Err(err) => {
                tracing::debug!(%err, "iopub receive failed");
                tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                continue;
            }
        };
        let aside = aside_above.is_some_and(|above| {
            frames
                .iter()
                .map(Bytes::len)
                .fold(0usize, usize::saturating_add)
                > above
        });
        if aside {
            if verify_aside(&verifier, frames, &tx, &dropped, &outlet)
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let msg = match verifier.decode(frames) {
            Ok(msg) => msg,
            Err(err) => {
                tracing::warn!(%err, "dropping iopub message");
                continue;
            }
        };
        if hand_on(&outlet, &tx, &dropped, IopubItem::Verified(msg)).is_err() {
            return;
        }
    }
}

/// The diverted sink, or the channel until the subscription is diverted.
type Outlet = Mutex<Option<Box<dyn IopubSink>>>;

/// Hands `item` to the sink when diverted, else into the channel (dropped and counted when it is
/// full). `Err` when the channel's receiver is gone.
fn hand_on(
    outlet: &Outlet,
    tx: &mpsc::Sender<IopubItem>,
    dropped: &AtomicU64,
    item: IopubItem,
) -> Result<(), ()> {
    // Held while the item is handed on, so a divert sees every item once, in order.
    let mut slot = outlet.lock();
    if let Some(sink) = slot.as_mut() {
        sink.deliver(item);
        return Ok(());
    }
    match tx.try_send(item) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => {
            count_drop(dropped);
            Ok(())
        }
        Err(TrySendError::Closed(_)) => Err(()),
    }
}

/// One line for the first drop and then one per thousand.
fn count_drop(dropped: &AtomicU64) {
    let total = dropped.fetch_add(1, Ordering::Relaxed) + 1;
    if total == 1 || total.is_multiple_of(1000) {
        tracing::warn!(
            dropped = total,
            "iopub buffer full; dropping newest messages"
        );
    }
}

/// Hands a large message on before its MAC is checked, checks it on a blocking thread, and then
/// hands on its verdict; the next message is read after that, so the verdict comes right behind
/// its message (reading paused for the MAC before too, when it ran here). `Err` when the
/// receiving end is gone.
async fn verify_aside(
    verifier: &Arc<UnitVerifier>,
    frames: Vec<Bytes>,
    tx: &mpsc::Sender<IopubItem>,
    dropped: &AtomicU64,
    outlet: &Outlet,
) -> Result<(), ()> {
    let (tag, msg) = match verifier.prepare(frames) {
        Ok(Prepared::Signed(tag, msg)) => (tag, msg),
        Ok(Prepared::Unsigned(msg)) => {
            return hand_on(outlet, tx, dropped, IopubItem::Verified(msg));
        }
        Err(err) => {
            tracing::warn!(%err, "dropping iopub message");
            return Ok(());
        }
    };
    let (sender, verdict) = Verdict::pending();
    let item = Forwarded::unverified(msg, verdict);
    // The verdict's place is taken before the message is handed on, so it always follows: a
    // second permit in the channel (a sink takes everything, and a diverted subscription stays
    // diverted).
    let reserved = {
        let mut slot = outlet.lock();
        if let Some(sink) = slot.as_mut() {
            sink.deliver(IopubItem::Unverified(item.clone()));
            None
        } else {
            let mut permits = match tx.try_reserve_many(2) {
                Ok(permits) => permits,
                Err(TrySendError::Full(())) => {
                    count_drop(dropped);
                    return Ok(());
                }
                Err(TrySendError::Closed(())) => return Err(()),
            };
            if let Some(permit) = permits.next() {
                permit.send(IopubItem::Unverified(item.clone()));
            }
            permits.next()
        }
    };
    let check = {
        let verifier = Arc::clone(verifier);
        let msg = item.message().clone();
        tokio::task::spawn_blocking(move || {
            verifier.signer.verify_decoded(&tag, &msg)?;
            verifier.history().insert_tag(tag)
        })
    };
    // Awaited even when the receiving end goes away meanwhile (a restart), so the verdict
    // says what the check found rather than failing for nothing.
    let outcome = check.await;
    let passed = match outcome {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::warn!(%err, size = item.size(), "a large iopub message failed its check; it is withdrawn");
            false
        }
        Err(err) => {
            tracing::warn!(%err, "the check of a large iopub message did not finish; it is withdrawn");
            false
        }
    };
    sender.send(passed);
    // Diverted meanwhile: the message went to the sink with what was in the channel, and so does
    // its verdict (the reserved place is given back).
    let mut slot = outlet.lock();
    if let Some(sink) = slot.as_mut() {
        sink.deliver(IopubItem::Settled(item));
    } else if let Some(permit) = reserved {
        permit.send(IopubItem::Settled(item));
    }
    Ok(())
}

/// Heartbeat pings; the socket is rebuilt after every failure as jupyter_client does.
///
/// The socket is a DEALER that frames each ping as a REQ would (an empty delimiter, then the
/// payload), under a fresh routing identity per connection. A plain REQ from the `zeromq` crate
/// announces no `Identity` property in its READY command (libzmq's REQ always does, empty or
/// not), and the JeroMQ inside Apache Toree 0.5 then throws a NullPointerException in
/// `Mechanism.peerIdentity` on the first connection and retries it forever ("client sent invalid
/// NULL handshake (duplicate READY)"), which kills the kernel's heartbeat and floods its log. A
/// DEALER with an identity says who it is, and REP and ROUTER heartbeats answer it unchanged.
#[derive(Debug)]
pub struct Heartbeat {
    transport: Arc<dyn KernelTransport>,
    endpoint: String,
    connect_timeout: Duration,
    socket: Option<(Box<dyn FrameSink>, Box<dyn FrameStream>)>,
}

impl Heartbeat {
    /// Prepares a heartbeat for the kernel (connects lazily).
    pub fn new(info: &ConnectionInfo, opts: &SocketOptions) -> Heartbeat {
        Heartbeat::with_transport(default_transport(), info, opts)
    }

    /// Like [`Heartbeat::new`], over the given transport.
    pub fn with_transport(
        transport: Arc<dyn KernelTransport>,
        info: &ConnectionInfo,
        opts: &SocketOptions,
    ) -> Heartbeat {
        Heartbeat {
            transport,
            endpoint: info.endpoint(Channel::Heartbeat),
            connect_timeout: opts.connect_timeout,
            socket: None,
        }
    }

    /// Sends a ping and waits up to `timeout` for the echo.
    ///
    /// The connect (when needed) counts against `timeout` too. After any failure the socket is
    /// dropped, and the next ping connects a fresh one (with a new identity, so a kernel that still
    /// holds the old connection does not take the new one for a duplicate).
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), Error> {
        let result = match tokio::time::timeout(timeout, self.ping_inner()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(format!(
                "heartbeat echo from {}",
                self.endpoint
            ))),
        };
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    async fn ping_inner(&mut self) -> Result<(), Error> {
        let (sink, stream) = match &mut self.socket {
            Some(socket) => socket,
            empty => {
                let identity = format!("heartbeat-{}", Uuid::new_v4().simple());
                let socket = connect_bounded(
                    &self.endpoint,
                    self.connect_timeout,
                    self.transport
                        .connect_dealer(&self.endpoint, identity.as_bytes()),
                )
                .await?;
                empty.insert(socket)
            }
        };
        let ping = Bytes::from_static(b"ping");
        sink.send(vec![Bytes::new(), ping.clone()]).await?;
        let echo = stream.recv().await?;
        if echo != [Bytes::new(), ping] {
            return Err(Error::Malformed(
                "heartbeat echo differs from the ping".into(),
            ));
        }
        Ok(())
    }
}

/// All of a kernel's sockets as one unit.
#[derive(Debug)]
pub struct KernelSockets {
    /// Shell, control, stdin.
    pub session: SessionChannels,
    /// IOPub.
    pub iopub: IopubSubscription,
    /// Heartbeat.
    pub heartbeat: Heartbeat,
}

impl KernelSockets {
    /// Connects every socket of the kernel for `session_id`.
    pub async fn connect(
        info: &ConnectionInfo,
        session_id: &str,
        opts: &SocketOptions,
    ) -> Result<KernelSockets, Error> {
        KernelSockets::connect_with(default_transport(), info, session_id, opts).await
    }

    /// Like [`KernelSockets::connect`], over the given transport.
    pub async fn connect_with(
        transport: Arc<dyn KernelTransport>,
        info: &ConnectionInfo,
        session_id: &str,
        opts: &SocketOptions,
    ) -> Result<KernelSockets, Error> {
        let (session, iopub) = tokio::try_join!(
            SessionChannels::connect_with(transport.as_ref(), info, session_id, opts),
            IopubSubscription::connect_with(transport.as_ref(), info, opts)
        )?;
        let heartbeat = Heartbeat::with_transport(transport, info, opts);
        Ok(KernelSockets {
            session,
            iopub,
            heartbeat,
        })
    }
}
