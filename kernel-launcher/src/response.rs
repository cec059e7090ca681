//! The gateway's response (callback) listener: one TCP listener for every remote launch.
//!
//! A [`ResponseListener`] is bound once at gateway start ([`ResponseListener::bind`]); it
//! generates the gateway's [`KeyPair`]. A backend starting a remote kernel
//! [`registers`](ResponseListener::register) the kernel id, passes
//! [`response_address`](ResponseListener::response_address) and
//! [`public_key_b64`](ResponseListener::public_key_b64) to the launcher through the kernelspec's
//! `argv`, and awaits the returned [`PendingLaunch`]; it resolves with the decrypted
//! [`LauncherResponse`]. Dropping the [`PendingLaunch`] unregisters the kernel id.
//!
//! Each connection is read to its end (at most [`ListenerOptions::max_payload`] bytes within
//! [`ListenerOptions::read_timeout`]) in its own task, decrypted (version 1, else version 0 with
//! the key of each pending launch) and handed to the launch with that kernel id. Anything else —
//! garbage, a kernel id nobody waits for (unknown, already answered, given up), a payload without
//! usable connection info, an oversized or slow sender — is logged and dropped; other launches
//! are not affected.
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, oneshot};

use crate::payload::{self, KeyPair, LauncherResponse};
use crate::{Error, net};

/// EG's default response port (`EG_RESPONSE_PORT`).
pub const DEFAULT_RESPONSE_PORT: u16 = 8877;

/// Settings of a [`ResponseListener`].
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// The IP advertised to launchers (`EG_RESPONSE_IP`); `None` = the bound IP, or the machine's
    /// primary address when bound to all interfaces.
    pub advertise_ip: Option<IpAddr>,
    /// When the requested port is busy, the next `port_retries` ports are tried
    /// (`EG_RESPONSE_PORT_RETRIES`, default 10). Port 0 lets the OS pick.
    pub port_retries: u16,
    /// Largest accepted payload in bytes (a real one is 1–2 KiB).
    pub max_payload: usize,
    /// A sender must deliver its whole payload within this.
    pub read_timeout: Duration,
    /// Connections handled at once; more are closed at once.
    pub max_connections: usize,
    /// Accept EG's legacy version-0 payloads.
    pub accept_v0: bool,
}

impl Default for ListenerOptions {
    fn default() -> ListenerOptions {
        ListenerOptions {
            advertise_ip: None,
            port_retries: 10,
            max_payload: 64 * 1024,
            read_timeout: Duration::from_secs(10),
            max_connections: 512,
            accept_v0: true,
        }
    }
}

/// A launch waiting for its payload.
#[derive(Debug)]
struct Registration {
    token: u64,
    tx: oneshot::Sender<LauncherResponse>,
}

/// How many accepted payloads are remembered to refuse replays.
const REMEMBERED_PAYLOADS: usize = 16 * 1024;

/// Digests of accepted payloads: a launcher encrypts with a fresh AES key every time, so a
/// byte-identical payload is a replay (e.g. of an earlier launch of a restarted kernel).
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<[u8; 32]>,
    set: HashSet<[u8; 32]>,
}

impl Seen {
    fn digest(data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data.trim_ascii());
        out.copy_from_slice(digest.as_ref());
        out
    }

    fn contains(&self, digest: &[u8; 32]) -> bool {
        self.set.contains(digest)
    }

    fn insert(&mut self, digest: [u8; 32]) {
        if self.set.insert(digest) {
            self.order.push_back(digest);
        }
        while self.order.len() > REMEMBERED_PAYLOADS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// State shared by the listener handle, its accept task and the pending launches.
#[derive(Debug)]
struct Shared {
    keys: KeyPair,
    options: ListenerOptions,
    pending: Mutex<HashMap<String, Registration>>,
    seen: Mutex<Seen>,
    next_token: AtomicU64,
}

/// The gateway's response listener; see the [module docs](self).
#[derive(Debug)]
pub struct ResponseListener {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    advertised: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for ResponseListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl ResponseListener {
    /// Generates the key pair, binds `addr` (with `SO_REUSEADDR`, trying the next ports when it
    /// is busy) and starts accepting. Must be called inside a tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        options: ListenerOptions,
    ) -> Result<Arc<ResponseListener>, Error> {
        let keys = tokio::task::spawn_blocking(KeyPair::generate)
            .await
            .map_err(|e| Error::Crypto(format!("key generation failed: {e}")))??;
        let listener = bind_with_retries(addr, options.port_retries)?;
        let local_addr = listener.local_addr()?;
        let advertised_ip = match options.advertise_ip {
            Some(ip) => ip,
            None if local_addr.ip().is_unspecified() => net::primary_local_ip(),
            None => local_addr.ip(),
        };
        let advertised = SocketAddr::new(advertised_ip, local_addr.port());
        let shared = Arc::new(Shared {
            keys,
            options,
            pending: Mutex::new(HashMap::new()),
            seen: Mutex::new(Seen::default()),
            next_token: AtomicU64::new(1),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::downgrade(&shared)));
        tracing::info!(%local_addr, %advertised, "response listener ready");
        Ok(Arc::new(ResponseListener {
            shared,
            local_addr,
            advertised,
            accept_task,
        }))
    }

    /// `ip:port` for the launchers' `{response_address}`.
    pub fn response_address(&self) -> String {
        self.advertised.to_string()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The gateway public key for `{public_key}` (base64 DER SubjectPublicKeyInfo).
    pub fn public_key_b64(&self) -> &str {
        self.shared.keys.public_key_b64()
    }

    /// Starts waiting for the payload of `kernel_id`. Fails if that id is already waiting.
    pub fn register(&self, kernel_id: &str) -> Result<PendingLaunch, Error> {
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut pending = self.shared.pending.lock();
        if pending.contains_key(kernel_id) {
            return Err(Error::AlreadyRegistered(kernel_id.to_owned()));
        }
        pending.insert(kernel_id.to_owned(), Registration { token, tx });
        Ok(PendingLaunch {
            kernel_id: kernel_id.to_owned(),
            token,
            rx,
            shared: Arc::downgrade(&self.shared),
        })
    }

    /// How many launches are waiting.
    pub fn pending_count(&self) -> usize {
        self.shared.pending.lock().len()
    }
}

/// One registered launch: a future resolving with its [`LauncherResponse`]. Dropping it
/// unregisters the kernel id (a later payload for it is refused).
#[derive(Debug)]
pub struct PendingLaunch {
    kernel_id: String,
    token: u64,
    rx: oneshot::Receiver<LauncherResponse>,
    shared: Weak<Shared>,
}

impl PendingLaunch {
    /// The kernel id it waits for.
    pub fn kernel_id(&self) -> &str {
        &self.kernel_id
    }
}

impl Future for PendingLaunch {
    type Output = Result<LauncherResponse, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map_err(|_| Error::Listener("the response listener has stopped".to_owned()))
    }
}

impl Drop for PendingLaunch {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut pending = shared.pending.lock();
            if pending
                .get(&self.kernel_id)
                .is_some_and(|r| r.token == self.token)
            {
                pending.remove(&self.kernel_id);
            }
        }
    }
}

fn bind_with_retries(addr: SocketAddr, retries: u16) -> Result<TcpListener, Error> {
    let attempts = if addr.port() == 0 { 0 } else { retries };
    let mut last = None;
    for offset in 0..=attempts {
        let Some(port) = addr.port().checked_add(offset) else {
            break;
        };
        let candidate = SocketAddr::new(addr.ip(), port);
        let socket = if candidate.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(candidate).and_then(|()| socket.listen(128)) {
            Ok(listener) => return Ok(listener),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::info!(%candidate, "response port busy, trying the next one");
                last = Some(err);
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(Error::Listener(format!(
        "cannot bind the response listener on {addr} or the next {attempts} ports: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

async fn accept_loop(listener: TcpListener, shared: Weak<Shared>) {
    let max = shared
        .upgrade()
        .map(|s| s.options.max_connections)
        .unwrap_or(1);
    let slots = Arc::new(Semaphore::new(max.max(1)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("response listener accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "response listener: too many connections at once, dropping one");
            continue;
        };
        tokio::spawn(async move {
            handle_connection(&shared, stream, peer).await;
            drop(slot);
        });
    }
}

async fn handle_connection(shared: &Shared, mut stream: TcpStream, peer: SocketAddr) {
    let options = &shared.options;
    let limit = u64::try_from(options.max_payload).unwrap_or(u64::MAX);
    let mut data = Vec::new();
    let read = tokio::time::timeout(options.read_timeout, async {
        (&mut stream)
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .await
    })
    .await;
    match read {
        Err(_) => {
            tracing::warn!(%peer, "launcher response refused: not complete within {:?}", options.read_timeout);
            refused();
            return;
        }
        Ok(Err(err)) => {
            tracing::warn!(%peer, "launcher response refused: read failed: {err}");
            refused();
            return;
        }
        Ok(Ok(_)) => {}
    }
    if data.is_empty() {
        // A connection that says nothing is a readiness probe (or a port scan): no payload.
        tracing::trace!(%peer, "response listener: connection closed without a payload");
        return;
    }
    if data.len() > options.max_payload {
        tracing::warn!(%peer, "launcher response refused: larger than {} bytes", options.max_payload);
        refused();
        return;
    }
    match deliver(shared, &data) {
        Ok(()) => metrics::counter!(CALLBACKS_METRIC, "outcome" => "accepted").increment(1),
        Err(err) => {
            tracing::warn!(%peer, "launcher response refused: {err}");
            refused();
        }
    }
}

/// The counter of launcher callbacks (Prometheus, through the `metrics` facade), by `outcome`.
pub const CALLBACKS_METRIC: &str = "eg_launcher_callbacks_total";

fn refused() {
    metrics::counter!(CALLBACKS_METRIC, "outcome" => "refused").increment(1);
}

/// Decrypts a payload and hands it to its pending launch.
fn deliver(shared: &Shared, data: &[u8]) -> Result<(), Error> {
    let digest = Seen::digest(data);
    if shared.seen.lock().contains(&digest) {
        return Err(Error::Payload(
            "replay of a payload that was already accepted".to_owned(),
        ));
    }
    let (object, legacy_id) = match shared.keys.decrypt_v1(data) {
        Ok(object) => (object, None),
        Err(v1_error) => {
            if !shared.options.accept_v0 {
                return Err(v1_error);
            }
            let candidates: Vec<String> = shared.pending.lock().keys().cloned().collect();
            let found = candidates
                .into_iter()
                .find_map(|id| payload::decrypt_v0(data, &id).ok().map(|obj| (obj, id)));
            match found {
                Some((object, id)) => (object, Some(id)),
                None => return Err(v1_error),
            }
        }
    };
    let mut response = LauncherResponse::from_json(object)?;
    let kernel_id = match legacy_id {
        Some(id) => {
            tracing::warn!(kernel_id = %id, "legacy (version 0) launcher response received; update the kernel's launcher");
            response.extra.insert(
                "kernel_id".to_owned(),
                serde_json::Value::String(id.clone()),
            );
            id
        }
        None => response
            .kernel_id()
            .map(str::to_owned)
            .ok_or_else(|| Error::Payload("no kernel_id in the connection info".to_owned()))?,
    };
    let registration = {
        let mut pending = shared.pending.lock();
        let mut seen = shared.seen.lock();
        // Checked again under the lock: two copies may arrive at once.
        if seen.contains(&digest) {
            return Err(Error::Payload(
                "replay of a payload that was already accepted".to_owned(),
            ));
        }
        let registration = pending.remove(&kernel_id);
        if registration.is_some() {
            seen.insert(digest);
        }
        registration
    };
    let Some(registration) = registration else {
        return Err(Error::Payload(format!(
            "kernel {kernel_id} is not waiting for a launcher response (unknown, already answered or given up)"
        )));
    };
    if response.has_curve_keys() {
        tracing::warn!(%kernel_id, "the launcher provisioned CurveZMQ keys; this gateway does not use them and the kernel's transport stays unencrypted");
    }
    tracing::debug!(%kernel_id, "launcher response accepted");
    registration
        .tx
        .send(response)
        .map_err(|_| Error::Payload(format!("kernel {kernel_id} stopped waiting")))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::payload::encrypt_v1;

    const ID: &str = "0f3c7a52-6f1e-4c3e-9a49-1d5b1c0f7d11";

    fn json_for(id: &str) -> String {
        serde_json::json!({
            "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
            "ip": "0.0.0.0", "key": "k", "transport": "tcp", "signature_scheme": "hmac-sha256",
            "kernel_name": "", "pid": 7, "pgid": 7, "comm_port": 9, "kernel_id": id,
        })
        .to_string()
    }

    async fn send(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<()> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(bytes).await?;
        stream.shutdown().await
    }

    async fn listener() -> Result<Arc<ResponseListener>, Error> {
        ResponseListener::bind(
            "127.0.0.1:0"
                .parse()
                .map_err(|_| Error::Listener("addr".into()))?,
            ListenerOptions::default(),
        )
        .await
    }

    #[tokio::test]
    async fn delivers_to_the_registered_kernel_and_only_once() -> Result<(), Error> {
        let listener = listener().await?;
        assert!(listener.response_address().starts_with("127.0.0.1:"));
        let pending = listener.register(ID)?;
        assert!(matches!(
            listener.register(ID),
            Err(Error::AlreadyRegistered(_))
        ));
        let wire = encrypt_v1(listener.public_key_b64(), json_for(ID).as_bytes())?;
        send(listener.local_addr(), &wire).await?;
        let response = tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .map_err(|_| Error::Listener("timeout".into()))??;
        assert_eq!(response.comm_port, Some(9));
        assert_eq!(listener.pending_count(), 0);
        // The id may be registered again (restart), and a replay does not reach it.
        let again = listener.register(ID)?;
        send(listener.local_addr(), &wire).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(listener.pending_count(), 1);
        drop(again);
        assert_eq!(listener.pending_count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_connection_without_a_payload_is_a_probe_that_disturbs_nothing() -> Result<(), Error>
    {
        let listener = listener().await?;
        let pending = listener.register(ID)?;
        // What the gateway's readiness check does: connect and close.
        for _ in 0..3 {
            drop(TcpStream::connect(listener.local_addr()).await?);
        }
        send(listener.local_addr(), b"").await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(listener.pending_count(), 1);
        let wire = encrypt_v1(listener.public_key_b64(), json_for(ID).as_bytes())?;
        send(listener.local_addr(), &wire).await?;
        let response = tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .map_err(|_| Error::Listener("timeout".into()))??;
        assert_eq!(response.comm_port, Some(9));
        Ok(())
    }

    #[tokio::test]
    async fn dropping_an_old_registration_keeps_the_new_one() -> Result<(), Error> {
        let listener = listener().await?;
        let first = listener.register(ID)?;
        // Simulate a consumed first registration, then a second one for the same id.
        listener.shared.pending.lock().remove(ID);
        let _second = listener.register(ID)?;
        drop(first);
        assert_eq!(listener.pending_count(), 1);
        Ok(())
    }
}
