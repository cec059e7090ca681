//! The gateway's validated, immutable configuration. `gateway-bin` builds it from CLI > env > file;
//! nothing downstream re-validates or reads the process environment.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kernel_launcher::PortRange;
use kernel_launcher::env::EnvPolicy;

/// CORS header values, sent verbatim when set.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// `Access-Control-Allow-Origin` (also drives the origin check; `*` disables it).
    pub allow_origin: Option<String>,
    /// `Access-Control-Allow-Credentials`.
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

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Normalised base URL: starts and ends with `/` (default `/`).
    pub base_url: String,
    /// Token required on API requests when set.
    pub auth_token: Option<String>,
    /// CORS.
    pub cors: Cors,
    /// Allow `GET /api/kernels` and `GET /api/sessions`.
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
    /// Exported to kernels as `EG_IMPERSONATION_ENABLED`.
    pub impersonation_enabled: bool,
    /// Ports for kernels.
    pub port_range: PortRange,
    /// Kernelspec search path (each a `.../kernels` directory).
    pub kernelspec_dirs: Vec<PathBuf>,
    /// Working directory root for `path` in start requests.
    pub root_dir: PathBuf,
    /// Default launch timeout (`EG_KERNEL_LAUNCH_TIMEOUT`, 30 s).
    pub launch_timeout: Duration,
    /// Upper bound on a request's `KERNEL_LAUNCH_TIMEOUT`.
    pub max_launch_timeout: Duration,
    /// Wait for kernel_info before a WebSocket upgrade, and readiness after start.
    pub kernel_info_timeout: Duration,
    /// Graceful shutdown wait (EG's `shutdown_wait_time`, 5 s).
    pub shutdown_wait_time: Duration,
    /// Consecutive auto-restart limit (5; 0 disables auto-restart).
    pub restart_limit: u32,
    /// Culling.
    pub culling: Culling,
    /// Server WebSocket ping interval; zero disables pings.
    pub ws_ping_interval: Duration,
    /// Largest incoming WebSocket message.
    pub ws_max_message_size: usize,
    /// Messages kept for a disconnected client.
    pub buffer_max_messages: usize,
    /// Bytes kept for a disconnected client.
    pub buffer_max_bytes: usize,
    /// How long a disconnected client's buffer is kept.
    pub buffer_ttl: Duration,
    /// On gateway shutdown, shut kernels down (true) or leave them running.
    pub shutdown_kernels_on_exit: bool,
    /// TLS server settings, when TLS is on.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}
