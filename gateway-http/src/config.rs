//! The gateway's validated, immutable configuration. `gateway-bin` builds it from CLI > env > file;
//! nothing downstream re-validates or reads the process environment.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kernel_launcher::PortRange;
use kernel_launcher::env::EnvPolicy;

use crate::auth::Authenticators;

/// CORS header values, sent verbatim when set.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// `Access-Control-Allow-Origin` (also drives the origin check; `*` disables it).
    pub allow_origin: Option<String>,
    /// `Access-Control-Allow-Credentials`, sent as given.
    pub allow_credentials: Option<String>,
    /// `Access-Control-Allow-Headers`.
    pub allow_headers: Option<String>,
    /// `Access-Control-Allow-Methods`.
    pub allow_methods: Option<String>,
    /// `Access-Control-Expose-Headers`.
    pub expose_headers: Option<String>,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<String>,
}

/// Culling settings (EG's `cull_*`, plus a separate busy timeout).
#[derive(Debug, Clone)]
pub struct Culling {
    /// Idle time after which a kernel is culled; zero disables culling.
    pub idle_timeout: Duration,
    /// How often the culler looks.
    pub interval: Duration,
    /// Cull kernels with open connections too.
    pub cull_connected: bool,
    /// Cull busy kernels too.
    pub cull_busy: bool,
    /// A busy kernel is culled after this long without activity, when `cull_busy` is set (zero = idle_timeout).
    pub busy_timeout: Duration,
}

/// How long a kernel that died waits before each automatic relaunch: the first relaunch after
/// a crash comes at once, the next after `initial`, each further one after twice the previous
/// wait, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBackoff {
    /// The wait before the second relaunch of a series.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RestartBackoff {
    fn default() -> RestartBackoff {
        RestartBackoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl RestartBackoff {
    /// The wait before relaunch `attempt` (1-based) of a series.
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let doublings = attempt.saturating_sub(2).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Bounds at the HTTP edge. Every limit refuses with its own status and a clear body, before the
/// request reaches a handler.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request head (request line plus headers); more is answered 431.
    pub max_head_bytes: usize,
    /// Largest request body; a larger declared `Content-Length` is answered 413 before the body
    /// is read, a chunked body that grows past it likewise.
    pub max_body_bytes: usize,
    /// Time from a connection's accept (or its previous response) to a complete request head;
    /// past it the client gets 408 and the connection is closed.
    pub header_timeout: Duration,
    /// Longest pause while a request body is arriving; past it the client gets 408 and the
    /// connection is closed.
    pub body_timeout: Duration,
    /// Most connections open at once from one client address (0 = no limit); more are answered
    /// 503 and closed.
    pub max_connections_per_client: usize,
    /// Most connections open at once in all (0 = no limit besides the file descriptors); more are
    /// answered 503 and closed, and beyond a few hundred refusals in flight closed at accept.
    pub max_connections: usize,
    /// File descriptors kept free for everything but client connections (kernel sockets and
    /// processes, log files, the store, the launcher callbacks): connections are also capped at
    /// the process's open-file limit (`RLIMIT_NOFILE`, read at start) minus this.
    pub fd_reserve: usize,
    /// Bytes the gateway may hold for all clients together (queues, reconnect buffers, write
    /// queues; 0 = no gateway-wide bound); past it the largest holders are disconnected.
    pub client_memory_budget: usize,
    /// Bytes the gateway may hold for one client (0 = no bound); a client past it is
    /// disconnected (close code 1008) and what was queued for it is dropped.
    pub client_memory_share: usize,
    /// Longest `session_id` a channels WebSocket may name (400 at the handshake).
    pub max_session_id_len: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_head_bytes: 32 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections_per_client: 512,
            max_connections: 10_000,
            fd_reserve: 256,
            client_memory_budget: 512 << 20,
            client_memory_share: 64 << 20,
            max_session_id_len: 256,
        }
    }
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MetricsAccess {
    /// On the API port, to callers with the admin role (everyone when authentication is off).
    #[default]
    Admin,
    /// Somewhere else (the binary's `--metrics_port`, served by [`crate::metrics`]'s own router
    /// without authentication); the API port answers `/metrics` with 404.
    Elsewhere,
}

/// One named check `/readyz` runs; see [`crate::api`]'s health module.
#[async_trait::async_trait]
pub trait ReadinessCheck: Send + Sync + std::fmt::Debug {
    /// A short name, shown in `/readyz` (`callback_listener`, `store`).
    fn name(&self) -> &str;
    /// `Err` with a short, secret-free reason when the component cannot serve.
    async fn check(&self) -> Result<(), String>;
}

/// The readiness checks beyond the gateway's own; shared by clones, so a component created
/// after the configuration (a store, a listener) can still register its check.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<parking_lot::Mutex<Vec<Arc<dyn ReadinessCheck>>>>,
}

impl Readiness {
    /// Adds a check; `/readyz` runs it from then on.
    pub fn register(&self, check: Arc<dyn ReadinessCheck>) {
        self.checks.lock().push(check);
    }

    /// The registered checks, in registration order.
    pub fn checks(&self) -> Vec<Arc<dyn ReadinessCheck>> {
        self.checks.lock().clone()
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Normalised base URL: starts and ends with `/` (default `/`).
    pub base_url: String,
    /// Who may use the API: the authenticators tried on every request and the role grants
    /// (none configured: everyone is trusted, as Enterprise Gateway without `auth_token`).
    pub auth: Authenticators,
    /// Bounds on what a client may send and how slowly (the hardened HTTP edge).
    pub limits: HttpLimits,
    /// The CORS headers sent with every API response (each unset by default, as in EG).
    pub cors: Cors,
    /// Allow `GET /api/kernels` and `GET /api/sessions`. On by default (EG: off): the lists
    /// show a caller only their own kernels, and JupyterLab polls them.
    pub list_kernels: bool,
    /// Total kernel limit (running + starting).
    pub max_kernels: Option<usize>,
    /// Per-user kernel limit.
    pub max_kernels_per_user: Option<usize>,
    /// Kernelspec used when a start request names none.
    pub default_kernel_name: String,
    /// When non-empty, only these kernelspecs are listed, served and started.
    pub allowed_kernelspecs: Vec<String>,
    /// Users allowed to start kernels (empty = everyone not refused).
    pub authorized_users: Vec<String>,
    /// Users refused (default `root`).
    pub unauthorized_users: Vec<String>,
    /// Which request and gateway variables reach kernels.
    pub env_policy: EnvPolicy,
    /// The gateway's own process environment, handed in by the binary.
    pub gateway_env: BTreeMap<String, String>,
    /// The OS user the gateway runs as (KERNEL_USERNAME default).
    pub gateway_user: String,
    /// Exported to kernels as `EG_IMPERSONATION_ENABLED`; local kernels then run as the
    /// `KERNEL_USERNAME` account (the gateway must run as root; see the manager's `identity`).
    pub impersonation_enabled: bool,
    /// The range kernel ports are allocated from (`0..0`: any port the system gives).
    pub port_range: PortRange,
    /// Kernelspec search path (each a `.../kernels` directory).
    pub kernelspec_dirs: Vec<PathBuf>,
    /// Working directory root for `path` in start requests.
    pub root_dir: PathBuf,
    /// Default launch timeout (`EG_KERNEL_LAUNCH_TIMEOUT`, 30 s).
    pub launch_timeout: Duration,
    /// Upper bound on a request's `KERNEL_LAUNCH_TIMEOUT`. The launch timeout is the one deadline
    /// of a start (or restart): launch plus readiness; past it the launch is torn down and the
    /// client gets the real reason.
    pub max_launch_timeout: Duration,
    /// Wait for kernel_info before a WebSocket upgrade, and readiness after start.
    pub kernel_info_timeout: Duration,
    /// Graceful shutdown wait (EG's `shutdown_wait_time`, 5 s).
    pub shutdown_wait_time: Duration,
    /// Consecutive auto-restart limit (5; 0 disables auto-restart).
    pub restart_limit: u32,
    /// Waits between the automatic relaunches of a kernel that keeps dying.
    pub restart_backoff: RestartBackoff,
    /// When idle (or busy) kernels are shut down by the gateway; off by default.
    pub culling: Culling,
    /// Server WebSocket ping interval; zero disables pings.
    pub ws_ping_interval: Duration,
    /// Largest incoming WebSocket message.
    pub ws_max_message_size: usize,
    /// Messages kept for a disconnected client (all channels of its session; the oldest are
    /// dropped and counted). Also bounds each connected client's queue (at least 1024).
    pub buffer_max_messages: usize,
    /// Bytes kept for a disconnected client; also bounds each client's queue (at least 1 MiB).
    pub buffer_max_bytes: usize,
    /// How long a disconnected client's buffer is kept. Any of the three at zero disables
    /// buffering.
    pub buffer_ttl: Duration,
    /// On gateway shutdown, shut kernels down (true) or leave them running.
    pub shutdown_kernels_on_exit: bool,
    /// TLS server settings, when TLS is on.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where `/metrics` is served.
    pub metrics_access: MetricsAccess,
    /// What `/readyz` checks beyond the gateway itself.
    pub readiness: Readiness,
}

impl Default for Culling {
    /// Culling off, as in Enterprise Gateway (`cull_idle_timeout` 0, `cull_interval` 300 s).
    fn default() -> Culling {
        Culling {
            idle_timeout: Duration::ZERO,
            interval: Duration::from_secs(300),
            cull_connected: false,
            cull_busy: false,
            busy_timeout: Duration::ZERO,
        }
    }
}

impl Default for GatewayConfig {
    /// Enterprise Gateway's defaults, the one place they are written: the binary's option table
    /// takes its defaults for these settings from here. Kernelspec directories, the gateway's
    /// environment and user are empty: an embedding program fills them in.
    fn default() -> GatewayConfig {
        GatewayConfig {
            base_url: "/".to_owned(),
            auth: Authenticators::none(),
            limits: HttpLimits::default(),
            cors: Cors::default(),
            list_kernels: true,
            max_kernels: None,
            max_kernels_per_user: None,
            default_kernel_name: "python3".to_owned(),
            allowed_kernelspecs: Vec::new(),
            authorized_users: Vec::new(),
            unauthorized_users: vec!["root".to_owned()],
            env_policy: EnvPolicy::default(),
            gateway_env: BTreeMap::new(),
            gateway_user: String::new(),
            impersonation_enabled: false,
            port_range: PortRange::default(),
            kernelspec_dirs: Vec::new(),
            root_dir: PathBuf::from("/"),
            launch_timeout: Duration::from_secs(30),
            max_launch_timeout: Duration::from_secs(600),
            kernel_info_timeout: Duration::from_secs(60),
            shutdown_wait_time: Duration::from_secs(5),
            restart_limit: 5,
            restart_backoff: RestartBackoff::default(),
            culling: Culling::default(),
            ws_ping_interval: Duration::from_secs(30),
            ws_max_message_size: 100 << 20,
            buffer_max_messages: 10_000,
            buffer_max_bytes: 64 << 20,
            buffer_ttl: Duration::from_secs(600),
            shutdown_kernels_on_exit: true,
            tls: None,
            metrics_access: MetricsAccess::Admin,
            readiness: Readiness::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_waits_double_from_the_second_relaunch_up_to_the_cap() {
        let backoff = RestartBackoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(3),
        };
        let waits: Vec<u128> = (1..=6).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(waits, vec![0, 500, 1000, 2000, 3000, 3000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(3));
    }
}
