//! The fan-out of one kernel to its WebSocket clients, and what is kept for a session whose client
//! went away.
//!
//! * Each attached client has a queue bounded in messages and bytes (the reconnect-buffer limits).
//!   A client that falls that far behind is disconnected; what it had not received yet, and what
//!   arrives until it is gone, is kept and offered to its successor, so nothing is lost or doubled.
//! * When the last client of a kernel goes, its session's undelivered messages, its kernel sockets
//!   (so shell and stdin replies keep arriving) and every later iopub message go into one *offline
//!   buffer*, bounded in count and bytes (the oldest are dropped and counted) and kept for a
//!   configurable time. A client that comes back with the same session id gets it replayed in
//!   order, once; any other client, or the time running out, discards it.
//! * A connection replaced by a newer one with the same session id hands its queued messages and
//!   its sockets over to the newer one ([`Handover`]).
//! * The fan-out is shared: the current incarnation's iopub reader publishes kernel messages
//!   through a [`Feed`] from its own task (no hop through the supervisor), the supervisor its
//!   synthetic statuses and everything else through the [`Hub`], both under one short lock, so
//!   every client sees them in one order. The supervisor ends a feed before it announces the end
//!   of its incarnation; nothing of that incarnation comes after.
//! * Every message held here is charged to an [`Account`] of the gateway's client memory budget:
//!   the client's own (its queue, what it missed after falling behind) or the reconnect buffer's.
//!   A client whose account is evicted leaves no reconnect buffer behind, and an evicted buffer
//!   is dropped.
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jupyter_protocol::sockets::SessionChannels;
use jupyter_protocol::{Channel, ConnectionInfo, Forwarded, Header, IopubItem, Message};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::Account;

/// The user name the gateway puts in the headers of messages it originates.
pub(crate) const GATEWAY_USERNAME: &str = "enterprise-gateway";

/// A client queue holds at least this many messages, even when buffering is disabled.
const MIN_QUEUE_MESSAGES: usize = 1024;
/// A client queue holds at least this many bytes, even when buffering is disabled.
const MIN_QUEUE_BYTES: usize = 1 << 20;

/// What the supervisor tells an attached client.
#[derive(Debug)]
pub(crate) enum ClientNotice {
    /// An iopub message (from the kernel, or a synthetic status), with the verdict that gates
    /// its end when its signature is still being checked.
    Iopub(Forwarded),
    /// The kernel is being restarted: its sockets lead nowhere until `Rebuild`; hold client
    /// messages until then.
    Suspend,
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
    /// The kernel was shut down.
    KernelGone,
    /// The kernel died (its restarts failed, or it could not be restarted); the signal's
    /// [`KickSignal::detail`] says why.
    KernelDied,
    /// The kernel was culled.
    Culled,
    /// The gateway is shutting down.
    GatewayExit,
}

/// A disconnect signal carrying its reason (and, for a replacement, where to hand things over).
#[derive(Debug, Clone, Default)]
pub(crate) struct KickSignal {
    token: CancellationToken,
    reason: Arc<Mutex<Option<Kick>>>,
    successor: Arc<Mutex<Option<oneshot::Sender<Handover>>>>,
    detail: Arc<Mutex<Option<Arc<str>>>>,
}

impl KickSignal {
    /// Disconnects the client (the first reason wins).
    pub(crate) fn kick(&self, why: Kick) {
        let mut reason = self.reason.lock();
        reason.get_or_insert(why);
        self.token.cancel();
    }
    /// Disconnects the client, saying why in a few words (the first reason wins).
    fn kick_with(&self, why: Kick, detail: &Arc<str>) {
        self.detail.lock().get_or_insert_with(|| Arc::clone(detail));
        self.kick(why);
    }
    /// What the kick said beyond its reason, if anything.
    pub(crate) fn detail(&self) -> Option<Arc<str>> {
        self.detail.lock().clone()
    }
    /// Disconnects the client because a newer one took its session; its leftovers go to `to`.
    fn replace(&self, to: oneshot::Sender<Handover>) {
        *self.successor.lock() = Some(to);
        self.kick(Kick::Replaced);
    }
    /// Where this (replaced) client hands its leftovers, if it was replaced.
    pub(crate) fn successor(&self) -> Option<oneshot::Sender<Handover>> {
        self.successor.lock().take()
    }
    /// Resolves once kicked.
    pub(crate) async fn kicked(&self) -> Kick {
        self.token.cancelled().await;
        self.reason().unwrap_or(Kick::KernelGone)
    }
    /// The reason, once kicked.
    pub(crate) fn reason(&self) -> Option<Kick> {
        *self.reason.lock()
    }
}

/// Messages queued for a client and not yet taken, counted so the queue stays bounded.
#[derive(Debug, Default)]
struct Gauge {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

/// A client's queue (the receiving side).
#[derive(Debug)]
pub(crate) struct ClientQueue {
    rx: mpsc::UnboundedReceiver<ClientNotice>,
    gauge: Arc<Gauge>,
    /// Charged with the queued messages.
    account: Option<Account>,
}

impl Drop for ClientQueue {
    fn drop(&mut self) {
        // What is still queued is freed with the channel: return it to the budget. Closing first
        // makes later sends fail, and a failed send uncounts itself.
        self.rx.close();
        while let Ok(notice) = self.rx.try_recv() {
            self.taken(&notice);
        }
    }
}

impl ClientQueue {
    fn taken(&self, notice: &ClientNotice) {
        if let ClientNotice::Iopub(msg) = notice {
            self.gauge.messages.fetch_sub(1, Ordering::Relaxed);
            self.gauge.bytes.fetch_sub(msg.size(), Ordering::Relaxed);
            if let Some(account) = &self.account {
                account.release(msg.size());
            }
        }
    }
    /// The next notice; `None` once the supervisor dropped this client.
    pub(crate) async fn recv(&mut self) -> Option<ClientNotice> {
        let notice = self.rx.recv().await?;
        self.taken(&notice);
        Some(notice)
    }
    /// Moves the queue out, leaving a closed, empty one.
    pub(crate) fn take(&mut self) -> ClientQueue {
        let (_, rx) = mpsc::unbounded_channel();
        std::mem::replace(
            self,
            ClientQueue {
                rx,
                gauge: Arc::new(Gauge::default()),
                account: None,
            },
        )
    }
    /// The next notice if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<ClientNotice> {
        let notice = self.rx.try_recv().ok()?;
        self.taken(&notice);
        Some(notice)
    }
}

/// What a departing connection leaves behind: messages it did not deliver (oldest first), its
/// kernel sockets, and the rest of its queue.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    /// Undelivered messages, oldest first.
    pub(crate) messages: VecDeque<(Channel, Forwarded)>,
    /// The connection's kernel sockets (identity = its session id), if it had live ones.
    pub(crate) channels: Option<SessionChannels>,
    /// Its queue: drained after the supervisor stopped filling it, so nothing is missed.
    pub(crate) queue: Option<ClientQueue>,
}

impl Handover {
    /// Everything undelivered in order, and the sockets if they are still current (a restart
    /// notice in the queue means they point at a process that is gone).
    pub(crate) fn into_parts(
        mut self,
    ) -> (VecDeque<(Channel, Forwarded)>, Option<SessionChannels>) {
        if let Some(mut queue) = self.queue.take() {
            while let Some(notice) = queue.try_recv() {
                match notice {
                    // One whose verdict failed is delivered nowhere.
                    ClientNotice::Iopub(msg) if msg.failed() => {}
                    ClientNotice::Iopub(msg) => self.messages.push_back((Channel::Iopub, msg)),
                    ClientNotice::Suspend | ClientNotice::Rebuild(_) => self.channels = None,
                }
            }
        }
        (self.messages, self.channels)
    }
}

/// What a client gets when it attaches.
#[derive(Debug)]
pub(crate) struct Attached {
    /// Its id at the supervisor.
    pub(crate) client_id: u64,
    /// Its queue.
    pub(crate) queue: ClientQueue,
    /// Disconnect signal.
    pub(crate) kick: KickSignal,
    /// The leftovers of the connection this one replaces, when it replaces one.
    pub(crate) replaced: Option<oneshot::Receiver<Handover>>,
    /// Kept messages of this session, sent after the replaced connection's leftovers and before
    /// anything from the queue.
    pub(crate) replay: VecDeque<(Channel, Forwarded)>,
    /// Kernel sockets kept for this session, if any.
    pub(crate) channels: Option<SessionChannels>,
    /// The kernel's current connection info.
    pub(crate) connection: ConnectionInfo,
}

/// Bounds of queues and the offline buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BufferLimits {
    /// Messages kept.
    pub(crate) max_messages: usize,
    /// Bytes kept.
    pub(crate) max_bytes: usize,
    /// How long an offline buffer waits for its session to come back.
    pub(crate) ttl: Duration,
}

impl BufferLimits {
    fn buffering(&self) -> bool {
        self.max_messages > 0 && self.max_bytes > 0 && !self.ttl.is_zero()
    }
}

/// A bounded FIFO of messages that drops (and counts) the oldest when full; what it holds is
/// charged to its account.
#[derive(Debug, Default)]
pub(crate) struct Spill {
    messages: VecDeque<(Channel, Forwarded)>,
    bytes: usize,
    dropped: usize,
    account: Option<Account>,
}

impl Drop for Spill {
    fn drop(&mut self) {
        if let Some(account) = &self.account {
            account.release(self.bytes);
        }
    }
}

impl Spill {
    /// An empty spill charged to `account`.
    fn charged_to(account: Account) -> Spill {
        Spill {
            messages: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            account: Some(account),
        }
    }

    /// Appends, dropping the oldest beyond the limits.
    pub(crate) fn push(
        &mut self,
        item: (Channel, Forwarded),
        max_messages: usize,
        max_bytes: usize,
    ) {
        let before = self.bytes;
        self.bytes += item.1.size();
        self.messages.push_back(item);
        while self.messages.len() > max_messages || self.bytes > max_bytes {
            let Some((_, old)) = self.messages.pop_front() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(old.size());
            self.dropped += 1;
        }
        if let Some(account) = &self.account {
            if self.bytes >= before {
                account.charge(self.bytes - before);
            } else {
                account.release(before - self.bytes);
            }
        }
    }
    /// Drops the messages whose verdict failed (not counted as dropped for lack of room).
    fn drop_failed(&mut self) {
        let before = self.bytes;
        self.messages.retain(|(_, msg)| !msg.failed());
        self.bytes = self.messages.iter().map(|(_, msg)| msg.size()).sum();
        if let Some(account) = &self.account {
            account.release(before.saturating_sub(self.bytes));
        }
    }
    /// The messages, oldest first; no longer charged.
    fn into_messages(mut self) -> VecDeque<(Channel, Forwarded)> {
        std::mem::take(&mut self.messages)
    }
    /// Messages held.
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }
    /// Messages dropped so far.
    pub(crate) fn dropped(&self) -> usize {
        self.dropped
    }
}

#[derive(Debug)]
struct Slot {
    session_id: String,
    tx: mpsc::UnboundedSender<ClientNotice>,
    gauge: Arc<Gauge>,
    kick: KickSignal,
    /// Set once the client fell too far behind: what it misses until it is gone.
    overflow: Option<Spill>,
    /// What the gateway holds for this client is charged here.
    account: Account,
}

#[derive(Debug)]
struct OfflineBuffer {
    session_id: String,
    /// The buffer's byte bound: `buffer_max_bytes`, or the client share when that is smaller.
    max_bytes: usize,
    spill: Spill,
    expires: Instant,
}

/// What the iopub reader of the current incarnation (through its [`Feed`]) and the supervisor
/// (through the [`Hub`]) share: the clients' queues and the offline buffer's messages. Locked
/// only for a publish or one change of the set of clients, never across an await.
#[derive(Debug)]
struct Fanout {
    kernel_id: String,
    clients: BTreeMap<u64, Slot>,
    limits: BufferLimits,
    buffer: Option<OfflineBuffer>,
    /// Counter for the ids of synthetic messages (`<session>_<n>`, as EG).
    synthetic: u64,
    /// The feed whose messages are taken; `None` between incarnations.
    feed: Option<u64>,
}

/// Clients of one kernel, as the supervisor sees them. The fan-out itself is shared with the
/// current incarnation's iopub reader ([`Hub::start_feed`]).
#[derive(Debug)]
pub(crate) struct Hub {
    fanout: Arc<Mutex<Fanout>>,
    next_id: u64,
    /// Feeds started so far (the id of the next one).
    feeds: u64,
    /// The kernel sockets kept with the offline buffer for its session; only the supervisor
    /// reads them, so they live outside the lock.
    kept: Option<SessionChannels>,
}

/// The current incarnation's way into the fan-out: its iopub reader publishes through it from
/// its own task, without waking the supervisor. A feed the supervisor ended publishes nothing.
#[derive(Debug, Clone)]
pub(crate) struct Feed {
    fanout: Arc<Mutex<Fanout>>,
    id: u64,
}

impl Feed {
    /// Takes `item` as [`Hub::publish_item`] does if this feed is still the hub's current one
    /// (`take` runs with the hub locked, so it sees messages in publishing order).
    pub(crate) fn publish(&self, item: IopubItem, take: impl FnOnce(&Message) -> bool) {
        let mut fanout = self.fanout.lock();
        if fanout.feed != Some(self.id) {
            return;
        }
        fanout.take_item(item, take);
    }
}

impl Hub {
    /// An empty hub.
    pub(crate) fn new(kernel_id: String, limits: BufferLimits) -> Hub {
        Hub {
            fanout: Arc::new(Mutex::new(Fanout {
                kernel_id,
                clients: BTreeMap::new(),
                limits,
                buffer: None,
                synthetic: 0,
                feed: None,
            })),
            next_id: 0,
            feeds: 0,
            kept: None,
        }
    }

    /// Attached clients.
    pub(crate) fn connections(&self) -> usize {
        self.fanout.lock().clients.len()
    }

    /// A feed for a new incarnation; the one before it (if any) publishes nothing from now on.
    pub(crate) fn start_feed(&mut self) -> Feed {
        self.feeds += 1;
        self.fanout.lock().feed = Some(self.feeds);
        Feed {
            fanout: Arc::clone(&self.fanout),
            id: self.feeds,
        }
    }

    /// Ends the current feed: once this returns, nothing of the incarnation it served reaches
    /// a client (a message its reader is handing over right now goes before anything the
    /// supervisor publishes after this).
    pub(crate) fn end_feed(&mut self) {
        self.fanout.lock().feed = None;
    }

    /// Registers a client, whose messages are charged to `account`. A client with the same
    /// session id is replaced at once (its leftovers are handed over); a buffer kept for this
    /// session is handed over, any other is discarded.
    pub(crate) fn attach(
        &mut self,
        session_id: &str,
        connection: ConnectionInfo,
        account: Account,
    ) -> Attached {
        self.next_id += 1;
        let kept = self.kept.take();
        let (mut attached, resumed) =
            self.fanout
                .lock()
                .attach(self.next_id, session_id, connection, account);
        if resumed {
            attached.channels = kept;
        }
        attached
    }

    /// Unregisters a client with what it left behind (nothing to do if it was replaced). When it
    /// was the last one, its leftovers start the offline buffer of its session.
    pub(crate) fn detach(&mut self, client_id: u64, handover: Option<Handover>) {
        let started = self.fanout.lock().detach(client_id, handover);
        if let Some(channels) = started {
            self.kept = channels;
        }
    }

    /// Sends an iopub message to every client (or into the offline buffer when none is
    /// attached), whatever the feed.
    #[cfg(test)]
    pub(crate) fn publish(&mut self, msg: Message) {
        self.fanout.lock().publish(Forwarded::from(msg));
    }

    /// Takes one item of the kernel's iopub stream, whatever the feed (the supervisor's own path,
    /// during a launch): a checked message is observed by `take`, which says whether clients get
    /// it, and published; a large one whose signature is still being checked is published at
    /// once, observed only once its verdict passed, and dropped from what is held here when it
    /// failed.
    pub(crate) fn publish_item(&mut self, item: IopubItem, take: impl FnOnce(&Message) -> bool) {
        self.fanout.lock().take_item(item, take);
    }

    /// A synthetic iopub `status` for each client, carrying that client's session (EG §4.6);
    /// `extra` fields are added to the content.
    pub(crate) fn publish_status(
        &mut self,
        state: &str,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) {
        self.fanout.lock().publish_status(state, extra);
    }

    /// Tells every client that the kernel's sockets are about to go away (a restart).
    pub(crate) fn suspend(&mut self) {
        self.fanout.lock().notify(|| ClientNotice::Suspend);
        self.kept = None;
    }

    /// Tells every client to rebuild its kernel sockets; kept sockets point at the old process.
    pub(crate) fn rebuild(&mut self, connection: &ConnectionInfo) {
        self.fanout
            .lock()
            .notify(|| ClientNotice::Rebuild(connection.clone()));
        self.kept = None;
    }

    /// The next reply on the sockets kept for the offline buffer, or the buffer's eviction from
    /// the memory budget; pending when there is no buffer.
    pub(crate) async fn next_kept_reply(&mut self) -> KeptReply {
        let account = {
            let fanout = self.fanout.lock();
            match fanout.buffer.as_ref() {
                Some(buffer) => buffer.spill.account.clone(),
                None => None,
            }
        };
        if account.is_none() && self.kept.is_none() {
            return std::future::pending().await;
        }
        let evicted = async {
            match &account {
                Some(account) => account.evicted().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = evicted => KeptReply::Evicted,
            reply = async {
                match self.kept.as_mut() {
                    Some(channels) => channels.replies.recv().await,
                    None => std::future::pending().await,
                }
            } => KeptReply::Reply(reply),
        }
    }

    /// Stores a reply that arrived on the kept sockets (`None`: they closed), or drops an
    /// evicted buffer.
    pub(crate) fn keep_reply(&mut self, reply: KeptReply) {
        match reply {
            KeptReply::Reply(Some((channel, msg))) => {
                self.fanout.lock().buffer_message((channel, msg.into()));
            }
            KeptReply::Reply(None) => self.kept = None,
            KeptReply::Evicted => {
                self.kept = None;
                let fanout = &mut *self.fanout.lock();
                if let Some(buffer) = fanout.buffer.take() {
                    tracing::warn!(kernel_id = %fanout.kernel_id, session_id = %buffer.session_id,
                        count = buffer.spill.len(),
                        "the client memory budget is used up: dropping a reconnect buffer");
                }
            }
        }
    }

    /// When the offline buffer expires, if there is one.
    pub(crate) fn buffer_expiry(&self) -> Option<Instant> {
        self.fanout.lock().buffer.as_ref().map(|b| b.expires)
    }

    /// Drops an expired offline buffer (and its sockets).
    pub(crate) fn expire_buffer(&mut self, now: Instant) {
        let fanout = &mut *self.fanout.lock();
        if let Some(buffer) = &fanout.buffer
            && buffer.expires <= now
        {
            tracing::info!(kernel_id = %fanout.kernel_id, session_id = %buffer.session_id,
                count = buffer.spill.len(), dropped = buffer.spill.dropped(),
                "discarding an offline buffer nobody came back for");
            fanout.buffer = None;
            self.kept = None;
        }
    }

    /// Disconnects every client and drops the buffer.
    pub(crate) fn close_all(&mut self, why: Kick) {
        let clients = {
            let mut fanout = self.fanout.lock();
            fanout.buffer = None;
            std::mem::take(&mut fanout.clients)
        };
        self.kept = None;
        for slot in clients.into_values() {
            slot.kick.kick(why);
        }
    }

    /// Disconnects every client saying why in a few words, and drops the buffer.
    pub(crate) fn close_all_with(&mut self, why: Kick, detail: &str) {
        let clients = {
            let mut fanout = self.fanout.lock();
            fanout.buffer = None;
            std::mem::take(&mut fanout.clients)
        };
        self.kept = None;
        let detail: Arc<str> = Arc::from(detail);
        for slot in clients.into_values() {
            slot.kick.kick_with(why, &detail);
        }
    }
}

impl Fanout {
    fn queue_limits(&self) -> (usize, usize) {
        (
            self.limits.max_messages.max(MIN_QUEUE_MESSAGES),
            self.limits.max_bytes.max(MIN_QUEUE_BYTES),
        )
    }

    /// [`Hub::attach`] with the client's id; also says whether the offline buffer was this
    /// session's (and so its kept sockets go to the client).
    fn attach(
        &mut self,
        client_id: u64,
        session_id: &str,
        connection: ConnectionInfo,
        account: Account,
    ) -> (Attached, bool) {
        let mut replaced = None;
        let mut replay = VecDeque::new();
        let stale: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, slot)| slot.session_id == session_id)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(slot) = self.clients.remove(&id) {
                tracing::info!(kernel_id = %self.kernel_id, session_id, "replacing stale connection");
                let (to, from) = oneshot::channel();
                slot.kick.replace(to);
                replaced = Some(from);
                if let Some(overflow) = slot.overflow {
                    replay.extend(overflow.into_messages());
                }
            }
        }
        let mut resumed = false;
        match self.buffer.take() {
            Some(buffer) if buffer.session_id == session_id => {
                if buffer.spill.dropped() > 0 {
                    tracing::warn!(kernel_id = %self.kernel_id, session_id, dropped = buffer.spill.dropped(),
                        "the offline buffer overflowed; its oldest messages were dropped");
                }
                tracing::info!(kernel_id = %self.kernel_id, session_id, count = buffer.spill.len(), "replaying buffered messages");
                replay.extend(buffer.spill.into_messages());
                resumed = true;
            }
            Some(buffer) => {
                tracing::info!(kernel_id = %self.kernel_id, session_id = %buffer.session_id,
                    count = buffer.spill.len(), "discarding buffered messages of another session");
            }
            None => {}
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let gauge = Arc::new(Gauge::default());
        let kick = KickSignal::default();
        self.clients.insert(
            client_id,
            Slot {
                session_id: session_id.to_owned(),
                tx,
                gauge: Arc::clone(&gauge),
                kick: kick.clone(),
                overflow: None,
                account: account.clone(),
            },
        );
        let attached = Attached {
            client_id,
            queue: ClientQueue {
                rx,
                gauge,
                account: Some(account),
            },
            kick,
            replaced,
            replay,
            channels: None,
            connection,
        };
        (attached, resumed)
    }

    /// [`Hub::detach`]; `Some` when the client was the last one and an offline buffer started,
    /// with the sockets to keep for it.
    fn detach(
        &mut self,
        client_id: u64,
        handover: Option<Handover>,
    ) -> Option<Option<SessionChannels>> {
        let slot = self.clients.remove(&client_id)?;
        // The slot (and its sender) is gone, so the queue can be drained completely now.
        let (messages, channels) = handover.map(Handover::into_parts).unwrap_or_default();
        if !self.clients.is_empty() || !self.limits.buffering() {
            return None;
        }
        if slot.account.is_evicted() {
            tracing::info!(kernel_id = %self.kernel_id, session_id = %slot.session_id,
                "the client was disconnected for holding too much memory; nothing is kept for its return");
            return None;
        }
        if let Some(old) = self.buffer.take() {
            tracing::info!(kernel_id = %self.kernel_id, session_id = %old.session_id,
                count = old.spill.len(), "discarding buffered messages of another session");
        }
        let mut spill = Spill::charged_to(slot.account.sibling());
        let overflow = slot.overflow.map(Spill::into_messages).unwrap_or_default();
        let max_bytes = buffer_bytes(&self.limits, &slot.account);
        for item in messages.into_iter().chain(overflow) {
            spill.push(item, self.limits.max_messages, max_bytes);
        }
        tracing::debug!(kernel_id = %self.kernel_id, session_id = %slot.session_id, "last client gone; buffering its messages");
        self.buffer = Some(OfflineBuffer {
            session_id: slot.session_id,
            max_bytes,
            spill,
            expires: Instant::now() + self.limits.ttl,
        });
        Some(channels)
    }

    /// Sends an iopub message to every client (or into the offline buffer when none is attached).
    fn publish(&mut self, msg: Forwarded) {
        if self.clients.is_empty() {
            self.buffer_message((Channel::Iopub, msg));
            return;
        }
        let (max_messages, max_bytes) = self.queue_limits();
        let last = self.clients.len() - 1;
        let mut msg = Some(msg);
        for (n, slot) in self.clients.values_mut().enumerate() {
            // The last client gets the message itself, the others a copy (of its handles).
            let item = if n == last { msg.take() } else { msg.clone() };
            if let Some(item) = item {
                deliver(&self.kernel_id, slot, item, max_messages, max_bytes);
            }
        }
    }

    fn publish_status(&mut self, state: &str, extra: &serde_json::Map<String, serde_json::Value>) {
        let (max_messages, max_bytes) = self.queue_limits();
        let mut content = extra.clone();
        content.insert("execution_state".to_owned(), state.into());
        if self.clients.is_empty() {
            if let Some(session) = self.buffer.as_ref().map(|b| b.session_id.clone()) {
                let msg = self.synthetic_status(&session, &content);
                self.buffer_message((Channel::Iopub, msg.into()));
            }
            return;
        }
        let sessions: Vec<(u64, String)> = self
            .clients
            .iter()
            .map(|(id, slot)| (*id, slot.session_id.clone()))
            .collect();
        for (id, session) in sessions {
            let msg = self.synthetic_status(&session, &content);
            if let Some(slot) = self.clients.get_mut(&id) {
                deliver(&self.kernel_id, slot, msg.into(), max_messages, max_bytes);
            }
        }
    }

    fn synthetic_status(
        &mut self,
        session: &str,
        content: &serde_json::Map<String, serde_json::Value>,
    ) -> Message {
        self.synthetic += 1;
        let mut header = Header::new("status", session, GATEWAY_USERNAME);
        header.msg_id = format!("{session}_{}", self.synthetic);
        Message::new(&header, content)
    }

    /// Puts a notice in every client's queue.
    fn notify(&self, notice: impl Fn() -> ClientNotice) {
        for slot in self.clients.values() {
            // A client that is gone is detached by its lease; nothing to do here.
            let _ = slot.tx.send(notice());
        }
    }

    fn buffer_message(&mut self, item: (Channel, Forwarded)) {
        let Some(buffer) = self.buffer.as_mut() else {
            return;
        };
        let before = buffer.spill.dropped();
        buffer
            .spill
            .push(item, self.limits.max_messages, buffer.max_bytes);
        if before == 0 && buffer.spill.dropped() > 0 {
            tracing::warn!(kernel_id = %self.kernel_id, session_id = %buffer.session_id,
                "offline buffer full; dropping the oldest messages");
        }
    }

    /// Takes one item of the kernel's iopub stream: a checked message is observed (`take`, which
    /// says whether clients get it) and published; a large one whose signature is still being
    /// checked is published at once and observed only when its verdict passed; when that failed
    /// it is dropped from what is held here (a bridge drops it from its queue when it takes it).
    fn take_item(&mut self, item: IopubItem, take: impl FnOnce(&Message) -> bool) {
        match item {
            IopubItem::Verified(msg) => {
                if take(&msg) {
                    self.publish(Forwarded::from(msg));
                }
            }
            IopubItem::Unverified(pending) => self.publish(pending),
            IopubItem::Settled(settled) => {
                if settled.passed() {
                    // Published already, when it came unverified.
                    take(settled.message());
                } else {
                    tracing::warn!(kernel_id = %self.kernel_id, size = settled.size(),
                        "a large iopub message failed its signature check after it was forwarded; clients receiving it are disconnected before its end");
                    self.drop_failed();
                }
            }
        }
    }

    /// Drops the held messages whose verdict failed: from the offline buffer and from what slow
    /// clients missed.
    fn drop_failed(&mut self) {
        if let Some(buffer) = &mut self.buffer {
            buffer.spill.drop_failed();
        }
        for slot in self.clients.values_mut() {
            if let Some(overflow) = &mut slot.overflow {
                overflow.drop_failed();
            }
        }
    }
}

/// What [`Hub::next_kept_reply`] found.
#[derive(Debug)]
pub(crate) enum KeptReply {
    /// A reply on the kept sockets (`None`: they closed).
    Reply(Option<(Channel, Message)>),
    /// The budget took the buffer back.
    Evicted,
}

/// The byte bound of a reconnect buffer: `buffer_max_bytes`, or the client's share when smaller.
fn buffer_bytes(limits: &BufferLimits, account: &Account) -> usize {
    match account.share() {
        0 => limits.max_bytes,
        share => limits.max_bytes.min(share),
    }
}

/// Queues `msg` for one client, or keeps it aside once the client fell too far behind.
fn deliver(
    kernel_id: &str,
    slot: &mut Slot,
    msg: Forwarded,
    max_messages: usize,
    max_bytes: usize,
) {
    if slot.account.is_evicted() {
        // Its bridge is leaving and drops its queue: nothing more is held for it.
        slot.overflow = None;
        return;
    }
    if let Some(overflow) = &mut slot.overflow {
        overflow.push((Channel::Iopub, msg), max_messages, max_bytes);
        return;
    }
    let queued = slot.gauge.messages.load(Ordering::Relaxed);
    let bytes = slot.gauge.bytes.load(Ordering::Relaxed);
    if queued >= max_messages || bytes.saturating_add(msg.size()) > max_bytes {
        tracing::warn!(kernel_id, session_id = %slot.session_id, queued,
            "disconnecting a WebSocket client that cannot keep up; its messages are kept for its return");
        slot.kick.kick(Kick::TooSlow);
        let mut overflow = Spill::charged_to(slot.account.clone());
        overflow.push((Channel::Iopub, msg), max_messages, max_bytes);
        slot.overflow = Some(overflow);
        return;
    }
    let size = msg.size();
    slot.gauge.messages.fetch_add(1, Ordering::Relaxed);
    slot.gauge.bytes.fetch_add(size, Ordering::Relaxed);
    slot.account.charge(size);
    // The receiver may be gone already (the client's lease detaches it then): uncount.
    if slot.tx.send(ClientNotice::Iopub(msg)).is_err() {
        slot.gauge.messages.fetch_sub(1, Ordering::Relaxed);
        slot.gauge.bytes.fetch_sub(size, Ordering::Relaxed);
        slot.account.release(size);
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

    fn msg(n: usize) -> Message {
        Message {
            header: bytes::Bytes::from(format!("{{\"n\":{n}}}")),
            parent_header: bytes::Bytes::from_static(b"{}"),
            metadata: bytes::Bytes::from_static(b"{}"),
            content: bytes::Bytes::from_static(b"{}"),
            buffers: Vec::new(),
        }
    }

    fn account() -> Account {
        crate::budget::MemoryBudget::unbounded().open()
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

    fn iopub(items: &VecDeque<(Channel, Forwarded)>) -> Vec<Message> {
        items.iter().map(|(_, m)| m.message().clone()).collect()
    }

    fn leave(hub: &mut Hub, attached: Attached) {
        let handover = Handover {
            queue: Some(attached.queue),
            ..Handover::default()
        };
        hub.detach(attached.client_id, Some(handover));
    }

    #[tokio::test]
    async fn replay_is_bounded_ordered_and_once() {
        let mut hub = hub(2);
        let first = hub.attach("s", info(), account());
        leave(&mut hub, first);
        for n in 0..3 {
            hub.publish(msg(n));
        }
        let again = hub.attach("s", info(), account());
        assert_eq!(iopub(&again.replay), vec![msg(1), msg(2)]);
        leave(&mut hub, again);
        let third = hub.attach("s", info(), account());
        assert!(third.replay.is_empty());
    }

    #[tokio::test]
    async fn undelivered_queue_goes_first() {
        let mut hub = hub(100);
        let mut first = hub.attach("s", info(), account());
        for n in 0..4 {
            hub.publish(msg(n));
        }
        // The client took one message, then went away while two more were published.
        assert!(
            matches!(first.queue.recv().await, Some(ClientNotice::Iopub(m)) if m.message() == &msg(0))
        );
        hub.publish(msg(4));
        leave(&mut hub, first);
        hub.publish(msg(5));
        let again = hub.attach("s", info(), account());
        assert_eq!(iopub(&again.replay), (1..6).map(msg).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn other_session_discards_and_same_session_replaces() {
        let mut hub = hub(10);
        let a = hub.attach("a", info(), account());
        leave(&mut hub, a);
        hub.publish(msg(1));
        let b = hub.attach("b", info(), account());
        assert!(b.replay.is_empty());
        hub.publish(msg(2));
        let mut b2 = hub.attach("b", info(), account());
        assert_eq!(b.kick.kicked().await, Kick::Replaced);
        let successor = b.kick.successor();
        assert!(successor.is_some() && b2.replaced.is_some());
        // The replaced connection hands its queue over.
        if let Some(to) = successor {
            let _ = to.send(Handover {
                queue: Some(b.queue),
                ..Handover::default()
            });
        }
        let handed = match b2.replaced.take() {
            Some(from) => from.await.map(Handover::into_parts).unwrap_or_default().0,
            None => VecDeque::new(),
        };
        assert_eq!(iopub(&handed), vec![msg(2)]);
        assert_eq!(hub.connections(), 1);
        hub.detach(b.client_id, None);
        assert_eq!(hub.connections(), 1);
    }

    /// The message types a client got, in order, and whether the queue is now empty.
    fn received(queue: &mut ClientQueue) -> Vec<String> {
        let mut types = Vec::new();
        while let Some(notice) = queue.try_recv() {
            if let ClientNotice::Iopub(m) = notice {
                let m = m.message();
                types.push(
                    m.parse_header()
                        .map(|h| h.msg_type)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&m.header).into_owned()),
                );
            }
        }
        types
    }

    #[tokio::test]
    async fn an_ended_feed_publishes_nothing_after_the_supervisors_status() {
        let mut hub = hub(10);
        let mut client = hub.attach("s", info(), account());
        let old = hub.start_feed();
        old.publish(IopubItem::Verified(msg(1)), |_| true);
        // The incarnation ends: its feed first, then the supervisor's status.
        hub.end_feed();
        hub.publish_status("restarting", &serde_json::Map::new());
        // Its reader was still handing over a message: it is dropped, not put after the status.
        let mut asked = false;
        old.publish(IopubItem::Verified(msg(2)), |_| {
            asked = true;
            true
        });
        assert!(!asked, "an ended feed does not even observe its messages");
        // The next incarnation's messages come after.
        let new = hub.start_feed();
        new.publish(IopubItem::Verified(msg(3)), |_| true);
        old.publish(IopubItem::Verified(msg(4)), |_| true);
        assert_eq!(
            received(&mut client.queue),
            vec![r#"{"n":1}"#, "status", r#"{"n":3}"#]
        );
    }

    #[tokio::test]
    async fn a_feed_publishes_only_what_it_is_told_to_take() {
        let mut hub = hub(10);
        let mut client = hub.attach("s", info(), account());
        let feed = hub.start_feed();
        feed.publish(IopubItem::Verified(msg(1)), |_| false);
        feed.publish(IopubItem::Verified(msg(2)), |_| true);
        assert_eq!(received(&mut client.queue), vec![r#"{"n":2}"#]);
    }

    #[tokio::test]
    async fn a_feed_fills_the_offline_buffer_when_nobody_is_attached() {
        let mut hub = hub(10);
        let first = hub.attach("s", info(), account());
        leave(&mut hub, first);
        let feed = hub.start_feed();
        for n in 0..3 {
            feed.publish(IopubItem::Verified(msg(n)), |_| true);
        }
        let again = hub.attach("s", info(), account());
        assert_eq!(iopub(&again.replay), (0..3).map(msg).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn synthetic_status_carries_each_session() {
        let mut hub = hub(10);
        let mut a = hub.attach("sa", info(), account());
        let mut b = hub.attach("sb", info(), account());
        hub.publish_status("restarting", &serde_json::Map::new());
        for (queue, session) in [(&mut a.queue, "sa"), (&mut b.queue, "sb")] {
            let Some(ClientNotice::Iopub(m)) = queue.recv().await else {
                panic!("no status");
            };
            let header = m.message().parse_header().ok();
            assert_eq!(header.as_ref().map(|h| h.session.as_str()), Some(session));
            assert!(header.is_some_and(|h| h.msg_id.starts_with(&format!("{session}_"))));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn buffers_expire() {
        let mut hub = hub(10);
        let first = hub.attach("s", info(), account());
        leave(&mut hub, first);
        hub.publish(msg(1));
        let expiry = hub.buffer_expiry();
        assert_eq!(expiry, Some(Instant::now() + Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(59)).await;
        hub.expire_buffer(Instant::now());
        assert!(hub.buffer_expiry().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        hub.expire_buffer(Instant::now());
        assert!(hub.buffer_expiry().is_none());
        assert!(hub.attach("s", info(), account()).replay.is_empty());
    }

    #[tokio::test]
    async fn slow_client_is_kicked_and_keeps_its_messages() {
        let mut hub = hub(10);
        let slow = hub.attach("slow", info(), account());
        let total = MIN_QUEUE_MESSAGES + 5;
        for n in 0..total {
            hub.publish(msg(n));
        }
        assert_eq!(slow.kick.kicked().await, Kick::TooSlow);
        assert_eq!(hub.connections(), 1);
        leave(&mut hub, slow);
        assert_eq!(hub.connections(), 0);
        // The buffer's own bound (10) applies to what is kept offline: the newest 10.
        let again = hub.attach("slow", info(), account());
        assert_eq!(
            iopub(&again.replay),
            (total - 10..total).map(msg).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn what_a_client_holds_is_charged_and_an_evicted_one_leaves_nothing() {
        let size = msg(0).size();
        let budget = crate::budget::MemoryBudget::new(0, size * 3);
        let mut hub = hub(100);
        let mut client = hub.attach("s", info(), budget.open());
        hub.publish(msg(0));
        hub.publish(msg(1));
        assert_eq!(budget.used(), 2 * size, "two queued messages");
        assert!(client.queue.recv().await.is_some());
        assert_eq!(budget.used(), size, "a taken message is released");
        for n in 2..5 {
            hub.publish(msg(n));
        }
        // Past its share: evicted; nothing more is queued, and no buffer is kept for it.
        assert!(
            hub.fanout
                .lock()
                .clients
                .values()
                .all(|slot| slot.account.is_evicted())
        );
        hub.publish(msg(9));
        leave(&mut hub, client);
        assert!(
            hub.buffer_expiry().is_none(),
            "no reconnect buffer for an evicted client"
        );
        assert_eq!(budget.used(), 0, "everything was returned");
    }

    #[tokio::test]
    async fn a_message_whose_verdict_failed_is_dropped_from_what_is_kept() {
        let budget = crate::budget::MemoryBudget::unbounded();
        let mut hub = hub(100);
        let first = hub.attach("s", info(), budget.open());
        leave(&mut hub, first);
        let (sender, verdict) = jupyter_protocol::Verdict::pending();
        let pending = Forwarded::unverified(msg(2), verdict);
        let observed = std::cell::Cell::new(0);
        let take = |_: &Message| {
            observed.set(observed.get() + 1);
            true
        };
        hub.publish_item(IopubItem::Verified(msg(1)), take);
        hub.publish_item(IopubItem::Unverified(pending.clone()), take);
        hub.publish_item(IopubItem::Verified(msg(3)), take);
        // Still pending: kept, and not observed.
        assert_eq!(observed.get(), 2);
        assert_eq!(budget.used(), 3 * msg(1).size());
        sender.send(false);
        hub.publish_item(IopubItem::Settled(pending), take);
        assert_eq!(observed.get(), 2, "a failed message is never observed");
        assert_eq!(budget.used(), 2 * msg(1).size(), "its bytes are returned");
        let again = hub.attach("s", info(), budget.open());
        assert_eq!(iopub(&again.replay), vec![msg(1), msg(3)]);
    }

    #[tokio::test]
    async fn reconnect_buffers_are_charged_and_bounded_by_the_share() {
        let size = msg(0).size();
        let budget = crate::budget::MemoryBudget::new(0, size * 2);
        let mut hub = hub(100);
        let first = hub.attach("s", info(), budget.open());
        leave(&mut hub, first);
        for n in 0..5 {
            hub.publish(msg(n));
        }
        assert_eq!(
            budget.used(),
            2 * size,
            "the buffer keeps its share, the newest"
        );
        let again = hub.attach("s", info(), budget.open());
        assert_eq!(iopub(&again.replay), vec![msg(3), msg(4)]);
        assert_eq!(budget.used(), 0, "replayed messages leave the budget");
    }
}
