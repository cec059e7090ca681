//! Stage one of the configuration: raw option values, layered CLI > environment > file.
//!
//! Every option is declared once in [`OPTIONS`]; that table generates the command line (with
//! Enterprise Gateway's `--EnterpriseGatewayApp.<name>=<value>` spellings as aliases), `--help`,
//! the environment variables read, and the keys accepted in a config file. Values stay strings
//! here; [`crate::settings`] turns them into a validated `GatewayConfig` exactly once.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use gateway_http::GatewayConfig;
use gateway_http::auth::mtls::UserField;
use gateway_http::auth::{SharedToken, jupyterhub, jwt};
use gateway_http::config::{Culling, HttpLimits, RestartBackoff};
use kernel_launcher::PortRange;
use resource_managers::ssh::LoadBalancing;

pub(crate) use crate::optdef::OptionDef;
use crate::optdef::{LogFormat, LogLevel};

const APP: &[&str] = &["EnterpriseGatewayApp"];
const KM: &[&str] = &[
    "RemoteMappingKernelManager",
    "MappingKernelManager",
    "AsyncMappingKernelManager",
];
const KSM: &[&str] = &["KernelSpecManager", "EnterpriseGatewayApp"];
const APP_KM: &[&str] = &[
    "EnterpriseGatewayApp",
    "RemoteMappingKernelManager",
    "MappingKernelManager",
    "AsyncMappingKernelManager",
];

#[rustfmt::skip]
/// `EG_*`/`KG_*` variables and config keys of Enterprise Gateway that this gateway knowingly
/// does not use, each with why; anything set from here is named in the one start-up warning.
pub(crate) const UNSUPPORTED: &[(&[&str], &str)] = &[
    (
        &["EG_CONDUCTOR_ENDPOINT"],
        "for Conductor kernels, which this gateway does not run yet",
    ),
    (
        &["EG_KERNEL_EXECUTOR_IMAGE"],
        "for Spark-on-Kubernetes executors, which this gateway's Kubernetes backend does not start",
    ),
    (
        &["EG_POD_TEMPLATE_DIR"],
        "the pod template is the kernelspec's own (gateway_provisioners' kernel-pod.yaml.j2 beside its launcher)",
    ),
    (
        &["EG_KUBERNETES_LOG_LEVEL"],
        "use a --log_level filter instead, e.g. info,resource_managers::kubernetes=debug",
    ),
    (
        &["EG_DOCKER_MODE"],
        "a Docker kernel's mode comes from its kernelspec's class (DockerProcessProxy or DockerSwarmProcessProxy)",
    ),
    (
        &["EG_DOCKER_LOG_LEVEL"],
        "use a --log_level filter instead, e.g. info,resource_managers::docker=debug",
    ),
    (
        &[
            "EG_KERNEL_SESSION_PERSISTENCE", "EG_PERSISTENCE_ROOT", "EG_AVAILABILITY_MODE",
            "EG_WEBHOOK_URL", "EG_WEBHOOK_USERNAME", "EG_WEBHOOK_PASSWORD",
        ],
        "kernel session persistence and high availability are not supported",
    ),
    (
        &["EG_SSH_LOG_LEVEL", "EG_YARN_LOG_LEVEL"],
        "use a --log_level filter instead, e.g. info,resource_managers::ssh=debug",
    ),
    (
        &["EG_REMOTE_GSS_SSH", "EG_YARN_MUTUAL_AUTHENTICATION"],
        "Kerberos is not supported",
    ),
    (
        &["EG_AUTHORIZER_CLASS", "EG_AUTH_TYPE"],
        "Python classes cannot be loaded; see --authenticators",
    ),
    (
        &["EG_AUTHORIZED_ORIGIN"],
        "not supported; client certificates are checked with --client_ca and --mtls_user_field",
    ),
    (
        &[
            "EG_DYNAMIC_CONFIG_INTERVAL", "EG_KERNELSPEC_CACHE_ENABLED", "EG_ZMQ_IO_THREADS",
            "EG_ZMQ_MAX_SOCKETS", "EG_MIN_PORT_RANGE_SIZE", "EG_MAX_PORT_RANGE_RETRIES",
            "EG_POLL_INTERVAL", "EG_MAX_POLL_ATTEMPTS", "EG_RESTART_STATUS_POLL_INTERVAL",
            "EG_YARN_SHUTDOWN_WAIT_TIME", "EG_PROHIBITED_LOCAL_IPS", "EG_SENSITIVE_ENV_KEYS",
            "EG_REDACTION_MASK",
        ],
        "not configurable in this gateway",
    ),
    (
        &["EG_ALTERNATE_SIGINT"],
        "read from a kernelspec's env, not from the gateway's environment",
    ),
    (
        &["EG_RESPONSE_ADDRESS", "EG_PUBLIC_KEY"],
        "set by the gateway for the kernels it launches, not read from its own environment",
    ),
];

// Every option the gateway understands, one line each (see `declare_options!` for the form);
// a line's type is its field's type in `Values`, and says how its text is converted.
crate::optdef::declare_options! {
    // Server.
    ip: IpAddr = "127.0.0.1", "ADDR", ["EG_IP", "KG_IP"], APP, "Address to listen on";
    port: u16 = "8888", "PORT", ["EG_PORT", "KG_PORT"], APP, "Port to listen on";
    port_retries: u16 = "50", "N", ["EG_PORT_RETRIES", "KG_PORT_RETRIES"], APP, "Other ports to try when the port is busy (0 = only --port)";
    base_url: String = { GatewayConfig::default().base_url }, "PATH", ["EG_BASE_URL", "KG_BASE_URL"], APP, "URL prefix of every route";
    auth_token: Option<String> = "", "TOKEN", ["EG_AUTH_TOKEN", "KG_AUTH_TOKEN"], APP, "Require this token (header `Authorization: token <t>` or `?token=`)";
    certfile: Option<PathBuf> = "", "FILE", ["EG_CERTFILE", "KG_CERTFILE"], APP, "TLS certificate chain (PEM); enables HTTPS";
    keyfile: Option<PathBuf> = "", "FILE", ["EG_KEYFILE", "KG_KEYFILE"], APP, "TLS private key (PEM)";
    client_ca: Option<PathBuf> = "", "FILE", ["EG_CLIENT_CA", "KG_CLIENT_CA"], APP, "Require client certificates signed by this CA (mutual TLS)";
    ssl_version: Option<String> = "", "N", ["EG_SSL_VERSION", "KG_SSL_VERSION"], APP, "Accepted for compatibility; TLS 1.2 and 1.3 are always offered";
    allow_origin: Option<String> = "", "ORIGIN", ["EG_ALLOW_ORIGIN", "KG_ALLOW_ORIGIN"], APP, "Access-Control-Allow-Origin; `*` disables the origin check";
    allow_credentials: Option<String> = "", "VALUE", ["EG_ALLOW_CREDENTIALS", "KG_ALLOW_CREDENTIALS"], APP, "Access-Control-Allow-Credentials";
    allow_headers: Option<String> = "", "VALUE", ["EG_ALLOW_HEADERS", "KG_ALLOW_HEADERS"], APP, "Access-Control-Allow-Headers";
    allow_methods: Option<String> = "", "VALUE", ["EG_ALLOW_METHODS", "KG_ALLOW_METHODS"], APP, "Access-Control-Allow-Methods";
    expose_headers: Option<String> = "", "VALUE", ["EG_EXPOSE_HEADERS", "KG_EXPOSE_HEADERS"], APP, "Access-Control-Expose-Headers";
    max_age: Option<String> = "", "VALUE", ["EG_MAX_AGE", "KG_MAX_AGE"], APP, "Access-Control-Max-Age";
    trust_xheaders: bool = "false", "BOOL", ["EG_TRUST_XHEADERS", "KG_TRUST_XHEADERS"], APP, "Accepted for compatibility";
    // Identity: who may use the API (see the README's "Users and authentication").
    authenticators: Vec<String> = "", "LIST", ["EG_AUTHENTICATORS"], &[], "Authenticators tried in this order: token, token_file, jwt, jupyterhub, mtls (default: every configured one, in the order mtls, token, token_file, jwt, jupyterhub; none = everyone trusted, as EG without a token)";
    auth_token_user: String = { SharedToken::DEFAULT_USER }, "USER", ["EG_AUTH_TOKEN_USER"], &[], "The identity the shared auth_token authenticates";
    auth_token_roles: Vec<String> = "admin,impersonate", "LIST", ["EG_AUTH_TOKEN_ROLES"], &[], "Roles of the shared auth_token's identity (admin: sees every kernel; impersonate: may send any KERNEL_USERNAME); the default keeps EG's behaviour";
    token_file: Option<String> = "", "FILE", ["EG_TOKEN_FILE"], &[], "Per-user tokens (TOML or JSON, hashes only; written by `enterprise-gateway token`), reloaded on change and on SIGHUP";
    oidc_issuer: Option<String> = "", "URL", ["EG_OIDC_ISSUER"], &[], "Accept bearer JWTs from this OIDC issuer (keys from its discovery document unless --oidc_jwks_url)";
    oidc_jwks_url: Option<String> = "", "URL", ["EG_OIDC_JWKS_URL"], &[], "The issuer's JWKS (default: jwks_uri of <issuer>/.well-known/openid-configuration)";
    oidc_audience: Vec<String> = "", "LIST", ["EG_OIDC_AUDIENCE"], &[], "Accepted `aud` values (required with --oidc_issuer)";
    oidc_user_claim: String = { jwt::DEFAULT_USER_CLAIM }, "CLAIM", ["EG_OIDC_USER_CLAIM"], &[], "The JWT claim that names the user";
    oidc_groups_claim: String = { jwt::DEFAULT_GROUPS_CLAIM }, "CLAIM", ["EG_OIDC_GROUPS_CLAIM"], &[], "The JWT claim that lists the user's groups";
    oidc_leeway: Duration = { jwt::JwtSettings::new(String::new(), Vec::new()).leeway }, "SECS", ["EG_OIDC_LEEWAY"], &[], "Clock skew allowed when checking exp and nbf";
    oidc_jwks_refresh_interval: Duration = { jwt::DEFAULT_REFRESH_INTERVAL }, "SECS", ["EG_OIDC_JWKS_REFRESH_INTERVAL"], &[], "Least time between two fetches of the issuer's keys caused by tokens naming an unknown kid (the first one always happens)";
    jupyterhub_api_url: Option<String> = "", "URL", ["EG_JUPYTERHUB_API_URL"], &[], "Accept JupyterHub API tokens, checked at <url>/user (e.g. http://hub:8081/hub/api)";
    jupyterhub_cache_ttl: Duration = { jupyterhub::DEFAULT_CACHE_TTL }, "SECS", ["EG_JUPYTERHUB_CACHE_TTL"], &[], "How long a JupyterHub token's answer is reused (a revoked token works this long at most)";
    mtls_user_field: UserField = "cn", "FIELD", ["EG_MTLS_USER_FIELD"], &[], "Which part of a client certificate names the user: cn, email, dns or uri (SANs); needs --client_ca";
    admin_users: Vec<String> = "", "LIST", ["EG_ADMIN_USERS"], &[], "Users with the admin role (see and manage every kernel)";
    admin_groups: Vec<String> = "", "LIST", ["EG_ADMIN_GROUPS"], &[], "Groups whose members have the admin role";
    // The HTTP edge.
    max_header_bytes: usize = { HttpLimits::default().max_head_bytes }, "BYTES", ["EG_MAX_HEADER_BYTES"], &[], "Largest request line plus headers (431 beyond)";
    max_body_bytes: usize = { HttpLimits::default().max_body_bytes }, "BYTES", ["EG_MAX_BODY_BYTES"], &[], "Largest request body (413 beyond, from Content-Length before reading)";
    header_timeout: Duration = { HttpLimits::default().header_timeout }, "SECS", ["EG_HEADER_TIMEOUT"], &[], "Time allowed for a complete request head (408 and close beyond)";
    body_timeout: Duration = { HttpLimits::default().body_timeout }, "SECS", ["EG_BODY_TIMEOUT"], &[], "Longest pause while a request body arrives (408 and close beyond)";
    max_connections_per_client: usize = { HttpLimits::default().max_connections_per_client }, "N", ["EG_MAX_CONNECTIONS_PER_CLIENT"], &[], "Most open connections from one client address (503 beyond; 0 = no limit)";
    max_connections: usize = { HttpLimits::default().max_connections }, "N", ["EG_MAX_CONNECTIONS"], &[], "Most open connections in all (503 beyond; 0 = no limit); also capped at the open-file limit less fd_reserve";
    fd_reserve: usize = { HttpLimits::default().fd_reserve }, "N", ["EG_FD_RESERVE"], &[], "File descriptors kept free of client connections for kernels, logs, the store and refusals";
    client_memory_budget: usize = { HttpLimits::default().client_memory_budget }, "BYTES", ["EG_CLIENT_MEMORY_BUDGET"], &[], "Bytes held for all clients together (queues, reconnect buffers, write queues); past it the largest holders are disconnected (0 = no limit)";
    client_memory_share: usize = { HttpLimits::default().client_memory_share }, "BYTES", ["EG_CLIENT_MEMORY_SHARE"], &[], "Bytes held for one client; past it the client is disconnected with close code 1008 and its queue dropped (0 = no limit)";
    max_env_bytes: usize = { kernel_launcher::env::DEFAULT_MAX_ENV_BYTES }, "BYTES", ["EG_MAX_ENV_BYTES"], &[], "Largest `env` object of a start request, names plus values (400 beyond)";
    ws_ping_interval: Duration = { GatewayConfig::default().ws_ping_interval }, "SECS", ["EG_WS_PING_INTERVAL_SECS"], APP, "WebSocket ping interval (0 disables)";
    log_level: LogLevel = "info", "LEVEL", ["EG_LOG_LEVEL"], &["Application"], "Log level: error, warn, info, debug, trace (or a tracing filter)";
    log_format: LogFormat = "text", "FORMAT", ["EG_LOG_FORMAT"], &[], "Log lines as text (for people) or json (one object per line, kernel_id and user as fields)";
    metrics_enabled: bool = "true", "BOOL", ["EG_METRICS_ENABLED"], &[], "Record Prometheus metrics and serve /metrics (false: nothing is recorded)";
    metrics_port: Option<u16> = "", "PORT", ["EG_METRICS_PORT"], &[], "Serve /metrics without authentication on this port of --ip (default: on the API port, to admins only)";
    // Kernels and policy.
    list_kernels: bool = { GatewayConfig::default().list_kernels }, "BOOL", ["EG_LIST_KERNELS", "KG_LIST_KERNELS"], APP, "Allow GET /api/kernels and /api/sessions; each caller sees only their own kernels, admins all (EG defaults to false, when its list showed everyone's)";
    max_kernels: Option<usize> = { GatewayConfig::default().max_kernels }, "N", ["EG_MAX_KERNELS", "KG_MAX_KERNELS"], APP, "Most kernels at once, starts in progress included";
    max_kernels_per_user: i64 = "-1", "N", ["EG_MAX_KERNELS_PER_USER"], APP, "Most kernels per KERNEL_USERNAME (-1 = no limit)";
    default_kernel_name: String = { GatewayConfig::default().default_kernel_name }, "NAME", ["EG_DEFAULT_KERNEL_NAME", "KG_DEFAULT_KERNEL_NAME"], APP_KM, "Kernelspec used when a request names none";
    allowed_kernelspecs: Vec<String> = "", "LIST", ["EG_ALLOWED_KERNELS", "EG_KERNEL_WHITELIST", "EG_ALLOWED_KERNELSPECS"], KSM, "Only these kernelspecs are listed and started (comma list; also `--KernelSpecManager.whitelist`, `allowed_kernels`)", aliases ["whitelist", "allowed_kernels"];
    kernelspec_dirs: Vec<String> = "", "LIST", ["EG_KERNELSPEC_DIRS"], &[], "Extra kernelspec directories searched after the Jupyter path (comma list of .../kernels dirs)";
    authorized_users: Vec<String> = "", "LIST", ["EG_AUTHORIZED_USERS", "GP_AUTHORIZED_USERS"], APP, "Users allowed to start kernels (empty = all not refused)";
    unauthorized_users: Vec<String> = { GatewayConfig::default().unauthorized_users }, "LIST", ["EG_UNAUTHORIZED_USERS", "GP_UNAUTHORIZED_USERS"], APP, "Users refused";
    impersonation_enabled: bool = { GatewayConfig::default().impersonation_enabled }, "BOOL", ["EG_IMPERSONATION_ENABLED", "GP_IMPERSONATION_ENABLED"], APP, "Run kernels as KERNEL_USERNAME where the backend supports it";
    client_envs: Vec<String> = "", "LIST", ["EG_CLIENT_ENVS", "EG_ENV_WHITELIST"], APP, "Request env variables passed to kernels besides KERNEL_* (`*` = all)", aliases ["env_whitelist"];
    inherited_envs: Vec<String> = "", "LIST", ["EG_INHERITED_ENVS", "EG_ENV_PROCESS_WHITELIST"], APP, "Gateway env variables passed to kernels", aliases ["env_process_whitelist"];
    kernel_headers: Vec<String> = "", "LIST", ["EG_KERNEL_HEADERS"], APP, "Accepted for compatibility";
    port_range: PortRange = { GatewayConfig::default().port_range }, "LO..HI", ["EG_PORT_RANGE", "GP_PORT_RANGE"], APP, "Kernel ports come from this range (0..0 = any)";
    launch_timeout: Duration = { GatewayConfig::default().launch_timeout }, "SECS", ["EG_KERNEL_LAUNCH_TIMEOUT", "GP_LAUNCH_TIMEOUT"], &[], "Default kernel launch deadline";
    max_launch_timeout: Duration = { GatewayConfig::default().max_launch_timeout }, "SECS", ["EG_MAX_KERNEL_LAUNCH_TIMEOUT"], &[], "Upper bound on a request's KERNEL_LAUNCH_TIMEOUT";
    kernel_info_timeout: Duration = { GatewayConfig::default().kernel_info_timeout }, "SECS", ["EG_KERNEL_INFO_TIMEOUT"], KM, "Wait for kernel_info before a WebSocket opens";
    shutdown_wait_time: Duration = { GatewayConfig::default().shutdown_wait_time }, "SECS", ["EG_SHUTDOWN_WAIT_TIME"], &["KernelManager", "RemoteKernelManager"], "Graceful shutdown wait before a kernel is terminated";
    restart_limit: u32 = { GatewayConfig::default().restart_limit }, "N", ["EG_RESTART_LIMIT"], &["KernelRestarter"], "Consecutive automatic restarts before a kernel is declared dead (0 = never restart)";
    restart_backoff_initial: Duration = { RestartBackoff::default().initial }, "SECS", ["EG_RESTART_BACKOFF_INITIAL"], &[], "Wait before the second automatic relaunch of a series (the first is at once), doubling for each further one";
    restart_backoff_max: Duration = { RestartBackoff::default().max }, "SECS", ["EG_RESTART_BACKOFF_MAX"], &[], "Longest wait between automatic relaunches";
    cull_idle_timeout: Duration = { Culling::default().idle_timeout }, "SECS", ["EG_CULL_IDLE_TIMEOUT"], KM, "Shut down kernels idle this long (0 = never)";
    cull_interval: Duration = { Culling::default().interval }, "SECS", ["EG_CULL_INTERVAL"], KM, "How often idle kernels are looked for";
    cull_connected: bool = { Culling::default().cull_connected }, "BOOL", ["EG_CULL_CONNECTED"], KM, "Cull kernels with open connections too";
    cull_busy: bool = { Culling::default().cull_busy }, "BOOL", ["EG_CULL_BUSY"], KM, "Cull busy kernels too";
    cull_busy_timeout: Duration = { Culling::default().busy_timeout }, "SECS", ["EG_CULL_BUSY_TIMEOUT"], KM, "With cull_busy: busy kernels are culled after this long (0 = cull_idle_timeout)";
    buffer_max_messages: usize = { GatewayConfig::default().buffer_max_messages }, "N", ["EG_BUFFER_MAX_MESSAGES"], &[], "Messages kept for a disconnected client";
    buffer_max_bytes: usize = { GatewayConfig::default().buffer_max_bytes }, "BYTES", ["EG_BUFFER_MAX_BYTES"], &[], "Bytes kept for a disconnected client";
    buffer_ttl: Duration = { GatewayConfig::default().buffer_ttl }, "SECS", ["EG_BUFFER_TTL"], &[], "How long a disconnected client's messages are kept";
    ws_max_message_size: usize = { GatewayConfig::default().ws_max_message_size }, "BYTES", ["EG_WS_MAX_MESSAGE_SIZE"], &[], "Largest WebSocket message accepted";
    shutdown_kernels_on_exit: bool = { GatewayConfig::default().shutdown_kernels_on_exit }, "BOOL", ["EG_SHUTDOWN_KERNELS_ON_EXIT"], &[], "Shut kernels down when the gateway stops (false: leave them running for the next gateway on the same store)";
    store: Option<String> = "", "LOCATION", ["EG_KERNEL_STORE"], &[], "Where kernels are recorded so they outlive the gateway: a SQLite file (default <JUPYTER_DATA_DIR>/kernels.sqlite), a postgres:// URL shared by several gateways, or none";
    store_ca_file: Option<PathBuf> = "", "FILE", ["EG_KERNEL_STORE_CA_FILE"], &[], "CA certificates (PEM) for a postgres:// store: the connection is then TLS only, the server's certificate checked against them";
    gateway_id: Option<String> = "", "NAME", ["EG_GATEWAY_ID"], &[], "This gateway's name in the store's leases (default <hostname>:<port>); a gateway restarted under the same name takes its kernels back at once";
    lease_ttl: Duration = "30", "SECS", ["EG_LEASE_TTL"], &[], "How long a gateway's lease on its kernels holds unrenewed: the bound on how soon another gateway takes over a dead gateway's kernels";
    // Remote kernels (launchers call back; EG's DistributedProcessProxy).
    profiles_file: Option<PathBuf> = "", "PATH", ["EG_PROFILES_FILE"], &[], "TOML file of kernel profiles ([[profiles]]) and warm pools ([[pools]]); re-read on SIGHUP";
    plugins_file: Option<PathBuf> = "", "PATH", ["EG_PLUGINS_FILE"], &[], "TOML file of external resource-manager plugins ([[plugins]] with argv, cwd, env), each asked hello at start (docs/plugin-protocol.md)";
    remote_hosts: Vec<String> = "localhost", "LIST", ["EG_REMOTE_HOSTS", "GP_REMOTE_HOSTS"], APP, "Hosts for distributed (ssh) kernelspecs; a kernelspec's config.remote_hosts replaces them";
    load_balancing_algorithm: LoadBalancing = "round-robin", "NAME", ["EG_LOAD_BALANCING_ALGORITHM", "GP_LOAD_BALANCING_ALGORITHM"], APP, "How a remote host is chosen: round-robin or least-connection";
    response_ip: Option<IpAddr> = "", "ADDR", ["EG_RESPONSE_IP", "GP_RESPONSE_IP"], &[], "Address launchers call back to (default: this machine's primary address)";
    response_port: u16 = "8877", "PORT", ["EG_RESPONSE_PORT", "GP_RESPONSE_PORT"], &[], "Port of the launcher callback listener";
    response_port_retries: u16 = "10", "N", ["EG_RESPONSE_PORT_RETRIES", "GP_RESPONSE_PORT_RETRIES"], &[], "Further callback ports to try when the port is busy";
    response_addr_any: bool = "false", "BOOL", ["EG_RESPONSE_ADDR_ANY", "GP_RESPONSE_ADDR_ANY"], &[], "Bind the callback listener on all interfaces";
    socket_timeout: Duration = "1", "SECS", ["EG_SOCKET_TIMEOUT", "GP_SOCKET_TIMEOUT"], &[], "Connect timeout of a remote kernel's communication port (at least 0.1)";
    ssh_port: u16 = "22", "PORT", ["EG_SSH_PORT", "GP_SSH_PORT"], &[], "SSH port of the remote hosts";
    remote_user: Option<String> = "", "USER", ["EG_REMOTE_USER", "GP_REMOTE_USER"], &[], "SSH user on the remote hosts (default: the gateway's user; KERNEL_USERNAME with impersonation)";
    remote_pwd: Option<String> = "", "PASSWORD", ["EG_REMOTE_PWD", "GP_REMOTE_PWD"], &[], "SSH password (prefer the environment variable; never logged, never passed to kernels)";
    ssh_key_file: Option<PathBuf> = "", "FILE", ["EG_SSH_KEY_FILE"], &[], "SSH private key (default: the agent at SSH_AUTH_SOCK, then ~/.ssh/id_ed25519, id_rsa)";
    ssh_known_hosts: Option<PathBuf> = "", "FILE", ["EG_SSH_KNOWN_HOSTS"], &[], "known_hosts file that remote host keys are checked against (default ~/.ssh/known_hosts)";
    ssh_accept_unknown_hosts: bool = "false", "BOOL", ["EG_SSH_ACCEPT_UNKNOWN_HOSTS"], &[], "Accept hosts missing from known_hosts (a changed key is always refused)";
    enable_tunneling: bool = "false", "BOOL", ["EG_ENABLE_TUNNELING", "GP_ENABLE_TUNNELING"], &[], "Tunnel remote kernels' ports through the SSH connection";
    ssh_local_hosts: bool = "false", "BOOL", ["EG_SSH_LOCAL_HOSTS"], &[], "Reach hosts that are this machine over SSH too, instead of launching them directly (for testing against a separate sshd)";
    // YARN (EG's YarnClusterProcessProxy).
    yarn_endpoint: Option<String> = "", "URL", ["EG_YARN_ENDPOINT", "GP_YARN_ENDPOINT"], APP, "YARN ResourceManager, e.g. http://rm:8088/ws/v1/cluster (default: from yarn-site.xml)";
    alt_yarn_endpoint: Option<String> = "", "URL", ["EG_ALT_YARN_ENDPOINT", "GP_ALT_YARN_ENDPOINT"], APP, "Second ResourceManager of an HA pair";
    yarn_endpoint_security_enabled: bool = "false", "BOOL", ["EG_YARN_ENDPOINT_SECURITY_ENABLED", "GP_YARN_ENDPOINT_SECURITY_ENABLED"], APP, "Kerberos/SPNEGO to the ResourceManager (not supported yet: refused with a clear error)";
    yarn_cert_bundle: Option<PathBuf> = "", "FILE", ["EG_YARN_CERT_BUNDLE"], &[], "CA bundle (PEM) trusted for an HTTPS ResourceManager";
    hadoop_conf_dir: Option<PathBuf> = "", "DIR", ["YARN_CONF_DIR", "HADOOP_CONF_DIR"], &[], "Directory of yarn-site.xml, for ResourceManager addresses";
    runtime_dir: Option<PathBuf> = "", "DIR", ["JUPYTER_RUNTIME_DIR"], &[], "Where connection files go (default ~/.local/share/jupyter/runtime)";
    kernel_log_dir: Option<PathBuf> = "", "DIR", ["EG_KERNEL_LOG_DIR", "GP_KERNEL_LOG_DIR"], &[], "Where per-kernel logs go (default: the runtime dir)";
}

/// Where an option's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The command line.
    Cli,
    /// An environment variable.
    Env,
    /// The config file.
    File,
    /// The built-in default.
    Default,
}

/// Raw values by option name, after layering.
#[derive(Debug, Default)]
pub(crate) struct RawOptions {
    values: BTreeMap<&'static str, (String, Source)>,
    /// Variables and config keys that were set but are not used, each with why.
    unsupported: Vec<String>,
    /// Text to print instead of serving (`--generate-config`, `--convert-config`).
    output: Option<String>,
}

impl RawOptions {
    /// The value of an option (its default when nothing set it).
    pub(crate) fn get(&self, name: &str) -> &str {
        self.values.get(name).map(|(v, _)| v.as_str()).unwrap_or("")
    }
    /// Where the value came from.
    #[cfg(test)]
    pub(crate) fn source(&self, name: &str) -> Source {
        self.values
            .get(name)
            .map(|(_, s)| *s)
            .unwrap_or(Source::Default)
    }
    /// What was set but will not be used, for the one start-up warning (empty: nothing).
    pub(crate) fn unsupported(&self) -> &[String] {
        &self.unsupported
    }
    /// The text `--generate-config` or `--convert-config` asked for, to print instead of serving.
    pub(crate) fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }
}

/// Read-only access to environment variables, so parsing is testable without touching the
/// process environment.
pub(crate) trait EnvSource {
    /// The value of `key`, if set.
    fn var(&self, key: &str) -> Option<String>;
    /// Every variable name that is set.
    fn names(&self) -> Vec<String>;
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// The option a config-file key names (our name, the trait name, or an older spelling).
fn option_for_key(key: &str) -> Option<&'static OptionDef> {
    OPTIONS.iter().find(|d| d.trait_names().any(|t| t == key))
}

fn command() -> clap::Command {
    let mut cmd = clap::Command::new("enterprise-gateway")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Jupyter Enterprise Gateway, in Rust: runs Jupyter kernels for remote clients")
        .after_help(
            "Every option can also be given as EG's traitlets spelling \
             (--EnterpriseGatewayApp.port=8889), as one of its environment variables, or as a \
             key in the --config file (TOML, EG's JSON config, or EG's Python config of literal \
             assignments). Precedence: CLI > env > file > default.\n\n\
             Per-user tokens for --token_file are managed with `enterprise-gateway token \
             add|list|revoke` (see `enterprise-gateway token --help`).",
        )
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .help(
                    "Config file: TOML (keys as the option names), EG's traitlets JSON, or EG's \
                     jupyter_enterprise_gateway_config.py (literal assignments only)",
                ),
        )
        .arg(
            clap::Arg::new("generate_config")
                .long("generate-config")
                .alias("generate_config")
                .action(clap::ArgAction::SetTrue)
                .help("Print a commented TOML config with every option and its default, and exit"),
        )
        .arg(
            clap::Arg::new("convert_config")
                .long("convert-config")
                .alias("convert_config")
                .value_name("FILE")
                .help("Print EG's JSON or Python config FILE as this gateway's TOML, and exit"),
        );
    for def in OPTIONS {
        let mut help = def.help.to_owned();
        let default = def.default_text();
        if !default.is_empty() {
            help.push_str(&format!(" [default: {default}]"));
        }
        if !def.env.is_empty() {
            help.push_str(&format!(" [env: {}]", def.env.join(", ")));
        }
        let mut arg = clap::Arg::new(def.name)
            .long(def.name)
            .value_name(def.value)
            .help(help);
        let dashed = def.name.replace('_', "-");
        if dashed != def.name {
            arg = arg.alias(dashed);
        }
        for class in def.classes {
            for trait_name in def.trait_names() {
                arg = arg.alias(format!("{class}.{trait_name}"));
            }
        }
        if def.name == "log_level" {
            arg = arg.alias("log-level");
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

/// The `--help` text (for tests and docs).
#[cfg(test)]
pub(crate) fn help_text() -> String {
    command().render_long_help().to_string()
}

/// Parses the command line, the environment and the config file into layered raw values.
pub(crate) fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn EnvSource,
) -> Result<RawOptions, clap::Error> {
    let matches = command().try_get_matches_from(args)?;
    let file_error = |e: anyhow::Error| {
        command().error(clap::error::ErrorKind::ValueValidation, format!("{e:#}"))
    };
    let mut raw = RawOptions::default();
    if matches.get_flag("generate_config") {
        raw.output = Some(generate_config());
        return Ok(raw);
    }
    if let Some(path) = matches.get_one::<String>("convert_config") {
        let file = read_file(Path::new(path)).map_err(file_error)?;
        raw.output = Some(convert_config(Path::new(path), &file));
        return Ok(raw);
    }
    let file = match matches.get_one::<String>("config") {
        Some(path) => read_file(Path::new(path)).map_err(file_error)?,
        None => FileOptions::default(),
    };
    for def in OPTIONS {
        let cli = matches.get_one::<String>(def.name).cloned();
        let from_env = def
            .env
            .iter()
            .find_map(|k| env.var(k).filter(|v| !is_helm_null(def, v)));
        let value = match (cli, from_env, file.values.get(def.name)) {
            (Some(v), _, _) => (v, Source::Cli),
            (None, Some(v), _) => (v, Source::Env),
            (None, None, Some(v)) => (v.clone(), Source::File),
            (None, None, None) => (def.default_text().into_owned(), Source::Default),
        };
        raw.values.insert(def.name, value);
    }
    raw.unsupported = unsupported_env(env);
    raw.unsupported.extend(file.ignored);
    if matches.get_one::<String>("config").is_none() {
        raw.unsupported
            .extend(eg_config_files(env).into_iter().map(|path| {
            format!(
                "{}: Enterprise Gateway reads this file by itself, this gateway only with --config",
                path.display()
            )
        }));
    }
    Ok(raw)
}

/// EG's config files where EG looks for them on its own (the Jupyter config path), which this
/// gateway does not read unless `--config` names one.
fn eg_config_files(env: &dyn EnvSource) -> Vec<std::path::PathBuf> {
    let user_dir = env
        .var("JUPYTER_CONFIG_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| env.var("HOME").map(|h| Path::new(&h).join(".jupyter")));
    let dirs = user_dir.into_iter().chain(
        ["/usr/local/etc/jupyter", "/etc/jupyter"]
            .into_iter()
            .map(std::path::PathBuf::from),
    );
    dirs.flat_map(|dir| {
        ["py", "json"].map(|ext| dir.join(format!("jupyter_enterprise_gateway_config.{ext}")))
    })
    .filter(|path| path.is_file())
    .collect()
}

/// EG's Helm chart renders an unset list as `toJson null`, i.e. the text `null`.
fn is_helm_null(def: &OptionDef, value: &str) -> bool {
    def.value == "LIST" && value.trim() == "null"
}

/// The `EG_*`/`KG_*` variables that are set but mean nothing to this gateway, grouped by why.
fn unsupported_env(env: &dyn EnvSource) -> Vec<String> {
    let known: Vec<&str> = OPTIONS
        .iter()
        .flat_map(|d| d.env.iter().copied())
        .chain(crate::docker::ENV.iter().copied())
        .chain(crate::kubernetes::ENV.iter().copied())
        .collect();
    let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in env.names() {
        if !(name.starts_with("EG_") || name.starts_with("KG_")) || known.contains(&name.as_str()) {
            continue;
        }
        let reason = match UNSUPPORTED
            .iter()
            .find(|(names, _)| names.contains(&name.as_str()))
        {
            Some((_, why)) => (*why).to_owned(),
            None => match nearest(&name, known.iter().copied()) {
                Some(near) => format!("unknown (did you mean {near}?)"),
                None => "unknown".to_owned(),
            },
        };
        by_reason.entry(reason).or_default().push(name);
    }
    by_reason
        .into_iter()
        .map(|(why, names)| format!("{}: {why}", names.join(", ")))
        .collect()
}

/// The candidate closest to `word` by edit distance, when it is close enough to be a typo.
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .map(|c| {
            (
                edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The option flag nearest to an unknown `--flag[=value]` from the command line.
pub(crate) fn nearest_flag(arg: &str) -> Option<String> {
    let name = arg
        .trim_start_matches('-')
        .split('=')
        .next()
        .unwrap_or_default();
    let name = name.replace('-', "_");
    nearest(&name, OPTIONS.iter().map(|d| d.name)).map(|near| format!("--{near}"))
}

/// Edit distance over chars where swapping two neighbours counts as one edit (optimal string
/// alignment), so `prot` is one edit from `port`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// What a config file holds: option name → text value, and the keys it sets that we ignore.
#[derive(Debug, Default)]
struct FileOptions {
    values: BTreeMap<String, String>,
    ignored: Vec<String>,
}

/// The formats a config file can have, by its name.
enum Format {
    Toml,
    Json,
    Python,
}

/// Reads a config file into option name → text value. TOML keys are option names, at the top
/// level or inside tables named after EG's traitlets classes; JSON is EG's traitlets config
/// (`{"EnterpriseGatewayApp": {"port": 8889}}`); `.py` is EG's Python config, literal
/// assignments only ([`crate::egconfig`]). An unknown key in TOML is an error; in EG's formats,
/// which carry many traits this gateway has no use for, it is named in the start-up warning.
fn read_file(path: &Path) -> anyhow::Result<FileOptions> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {shown}"))?;
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Format::Json,
        Some("py") => Format::Python,
        _ => Format::Toml,
    };
    let value: serde_json::Value = match format {
        Format::Json => serde_json::from_str(&text)
            .with_context(|| format!("config file {shown} is not valid JSON"))?,
        Format::Python => {
            serde_json::Value::Object(crate::egconfig::parse(&text).with_context(|| {
                format!(
                    "config file {shown} is Enterprise Gateway's Python config and cannot be read \
                     as it is; keep only literal assignments, or write the TOML by hand \
                     (`enterprise-gateway --generate-config` lists every option), then \
                     `enterprise-gateway --convert-config {shown}` prints it as TOML"
                )
            })?)
        }
        Format::Toml => {
            let table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("config file {shown} is not valid TOML"))?;
            serde_json::to_value(table).context("config file could not be converted")?
        }
    };
    let serde_json::Value::Object(top) = value else {
        bail!("config file {shown} must hold a table");
    };
    let strict = matches!(format, Format::Toml);
    let mut out = FileOptions::default();
    for (key, value) in top {
        match value {
            serde_json::Value::Object(inner) => {
                for (k, v) in inner {
                    insert_known(&mut out, &format!("{key}.{k}"), &k, v, path, strict)?;
                }
            }
            other => insert_known(&mut out, &key, &key, other, path, strict)?,
        }
    }
    Ok(out)
}

fn insert_known(
    out: &mut FileOptions,
    shown_key: &str,
    key: &str,
    value: serde_json::Value,
    path: &Path,
    strict: bool,
) -> anyhow::Result<()> {
    let Some(def) = option_for_key(key) else {
        let names = OPTIONS.iter().map(|d| d.name);
        let hint = nearest(key, names)
            .map(|near| format!(" (did you mean {near:?}?)"))
            .unwrap_or_default();
        if strict {
            bail!(
                "config file {}: unknown option {key:?}{hint}",
                path.display()
            );
        }
        out.ignored.push(format!(
            "{shown_key} in {}: not an option of this gateway{hint}",
            path.display()
        ));
        return Ok(());
    };
    let text = match value {
        serde_json::Value::String(s) => s,
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    out.values.insert(def.name.to_owned(), text);
    Ok(())
}

/// A TOML value for an option's text, typed by its placeholder: booleans and numbers bare,
/// lists as arrays of strings, everything else a string.
fn toml_value(def: &OptionDef, text: &str) -> String {
    let text = text.trim();
    let string = |s: &str| toml::Value::String(s.to_owned()).to_string();
    match def.value {
        "BOOL" => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => "true".to_owned(),
            "false" | "0" | "no" | "off" | "" => "false".to_owned(),
            _ => string(text),
        },
        "N" | "PORT" | "BYTES" | "SECS" if text.parse::<f64>().is_ok_and(f64::is_finite) => {
            text.to_owned()
        }
        "LIST" => {
            let items: Vec<String> = text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(string)
                .collect();
            format!("[{}]", items.join(", "))
        }
        _ => string(text),
    }
}

/// `--generate-config`: every option, commented out at its default, with its help and
/// environment variables. Uncommenting any line gives a valid setting.
fn generate_config() -> String {
    let mut out = String::from(
        "# enterprise-gateway configuration (TOML). Pass it with --config FILE.\n\
         # Every option is listed at its default, commented out; precedence is\n\
         # command line > environment > this file > default.\n",
    );
    for def in OPTIONS {
        out.push_str(&format!("\n# {}\n", def.help));
        if !def.env.is_empty() {
            out.push_str(&format!("# env: {}\n", def.env.join(", ")));
        }
        out.push_str(&format!(
            "# {} = {}\n",
            def.name,
            toml_value(def, &def.default_text())
        ));
    }
    out
}

/// `--convert-config`: the options a config file sets, as this gateway's TOML; what it sets
/// that this gateway ignores is listed in comments at the top.
fn convert_config(path: &Path, file: &FileOptions) -> String {
    let mut out = format!(
        "# Converted from {} by enterprise-gateway --convert-config.\n",
        path.display()
    );
    for ignored in &file.ignored {
        out.push_str(&format!("# not converted: {ignored}\n"));
    }
    for def in OPTIONS {
        if let Some(text) = file.values.get(def.name) {
            out.push_str(&format!("{} = {}\n", def.name, toml_value(def, text)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("enterprise-gateway")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[track_caller]
    fn check(cli: &[&str], env_pairs: &[(&str, &str)], name: &str, want: &str, source: Source) {
        let raw = parse(args(cli), &env(env_pairs)).expect("parses");
        assert_eq!(raw.get(name), want, "value of {name}");
        assert_eq!(raw.source(name), source, "source of {name}");
    }

    #[test]
    fn layering_and_spellings() {
        check(&[], &[], "port", "8888", Source::Default);
        check(&[], &[("EG_PORT", "7")], "port", "7", Source::Env);
        check(&[], &[("KG_PORT", "8")], "port", "8", Source::Env);
        check(
            &[],
            &[("EG_PORT", "7"), ("KG_PORT", "8")],
            "port",
            "7",
            Source::Env,
        );
        check(
            &["--port", "1"],
            &[("EG_PORT", "7")],
            "port",
            "1",
            Source::Cli,
        );
        check(
            &["--EnterpriseGatewayApp.port=9"],
            &[],
            "port",
            "9",
            Source::Cli,
        );
        check(&["--port_retries=0"], &[], "port_retries", "0", Source::Cli);
        check(&["--port-retries=0"], &[], "port_retries", "0", Source::Cli);
        check(
            &["--RemoteMappingKernelManager.cull_idle_timeout=60"],
            &[],
            "cull_idle_timeout",
            "60",
            Source::Cli,
        );
        check(
            &["--KernelSpecManager.whitelist=a,b"],
            &[],
            "allowed_kernelspecs",
            "a,b",
            Source::Cli,
        );
        check(
            &[],
            &[("EG_ENV_WHITELIST", "X")],
            "client_envs",
            "X",
            Source::Env,
        );
        check(
            &["--log-level=debug"],
            &[],
            "log_level",
            "debug",
            Source::Cli,
        );
    }

    #[test]
    fn file_layer_is_below_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml_path = dir.path().join("gw.toml");
        std::fs::write(
            &toml_path,
            "port = 1234\nlist_kernels = true\n[RemoteMappingKernelManager]\ncull_interval = 7\nclient_envs = [\"A\", \"B\"]\n",
        )
        .expect("write");
        let path = toml_path.to_str().expect("utf8");
        check(&["--config", path], &[], "port", "1234", Source::File);
        check(&["--config", path], &[], "cull_interval", "7", Source::File);
        check(&["--config", path], &[], "client_envs", "A,B", Source::File);
        check(
            &["--config", path],
            &[("EG_PORT", "5")],
            "port",
            "5",
            Source::Env,
        );

        let json_path = dir.path().join("jupyter_enterprise_gateway_config.json");
        std::fs::write(
            &json_path,
            r#"{"EnterpriseGatewayApp": {"port": 4321, "unauthorized_users": ["nobody"]}}"#,
        )
        .expect("write");
        let path = json_path.to_str().expect("utf8");
        check(&["--config", path], &[], "port", "4321", Source::File);
        check(
            &["--config", path],
            &[],
            "unauthorized_users",
            "nobody",
            Source::File,
        );
    }

    #[test]
    fn unknown_things_are_refused() {
        assert!(parse(args(&["--no-such-flag=1"]), &env(&[])).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "prot = 1\n").expect("write");
        let err = parse(args(&["--config", p.to_str().expect("utf8")]), &env(&[]))
            .expect_err("unknown key");
        assert!(
            err.to_string()
                .contains("unknown option \"prot\" (did you mean \"port\"?)"),
            "{err}"
        );
    }

    #[test]
    fn eg_image_spellings_are_honoured() {
        // EG's Helm chart: the allowed list as JSON, `null` when unset.
        check(
            &[],
            &[("EG_ALLOWED_KERNELS", r#"["python3","ir"]"#)],
            "allowed_kernelspecs",
            r#"["python3","ir"]"#,
            Source::Env,
        );
        check(
            &[],
            &[("EG_ALLOWED_KERNELS", "null")],
            "allowed_kernelspecs",
            "",
            Source::Default,
        );
        check(
            &[],
            &[("EG_KERNEL_WHITELIST", "'a','b'")],
            "allowed_kernelspecs",
            "'a','b'",
            Source::Env,
        );
        // EG's start-enterprise-gateway.sh.
        for flag in [
            "--KernelSpecManager.whitelist=[a]",
            "--KernelSpecManager.allowed_kernelspecs=[a]",
            "--EnterpriseGatewayApp.allowed_kernels=[a]",
        ] {
            check(&[flag], &[], "allowed_kernelspecs", "[a]", Source::Cli);
        }
        check(
            &["--RemoteMappingKernelManager.default_kernel_name=python_docker"],
            &[],
            "default_kernel_name",
            "python_docker",
            Source::Cli,
        );
        check(
            &["--EnterpriseGatewayApp.env_whitelist=A"],
            &[],
            "client_envs",
            "A",
            Source::Cli,
        );
    }

    #[test]
    fn unsupported_variables_are_named_once_with_why() {
        let raw = parse(
            args(&[]),
            &env(&[
                ("EG_PORT", "1"),
                ("EG_NAMESPACE", "ns"),
                ("EG_CONDUCTOR_ENDPOINT", "http://c"),
                ("EG_KUBERNETES_LOG_LEVEL", "DEBUG"),
                ("EG_PROT", "2"),
                ("EG_SOMETHING_ELSE_ENTIRELY", "3"),
                ("HOME", "/x"),
            ]),
        )
        .expect("parses");
        let notes = raw.unsupported().join("; ");
        assert!(
            notes.contains("EG_CONDUCTOR_ENDPOINT: for Conductor kernels"),
            "{notes}"
        );
        assert!(
            notes.contains("EG_KUBERNETES_LOG_LEVEL: use a --log_level filter"),
            "{notes}"
        );
        assert!(
            !notes.contains("EG_NAMESPACE"),
            "read by the Kubernetes backend: {notes}"
        );
        assert!(
            notes.contains("EG_PROT: unknown (did you mean EG_PORT?)"),
            "{notes}"
        );
        assert!(
            notes.contains("EG_SOMETHING_ELSE_ENTIRELY: unknown"),
            "{notes}"
        );
        assert!(
            !notes.contains("EG_PORT:") && !notes.contains("HOME"),
            "{notes}"
        );
        let raw = parse(args(&[]), &env(&[("EG_PORT", "1")])).expect("parses");
        assert!(raw.unsupported().is_empty());
    }

    #[test]
    fn eg_config_files_warn_about_what_they_set_that_we_ignore() {
        let dir = tempfile::tempdir().expect("tempdir");
        let py = dir.path().join("jupyter_enterprise_gateway_config.py");
        std::fs::write(
            &py,
            "c = get_config()
c.EnterpriseGatewayApp.port = 9001
c.KernelSpecManager.whitelist = ['a', 'b']
c.EnterpriseGatewayApp.kernel_spec_manager_class = 'x.Y'
c.EnterpriseGatewayApp.prot = 1
",
        )
        .expect("write");
        let path = py.to_str().expect("utf8");
        let raw = parse(args(&["--config", path]), &env(&[])).expect("parses");
        assert_eq!(raw.get("port"), "9001");
        assert_eq!(raw.get("allowed_kernelspecs"), "a,b");
        let notes = raw.unsupported().join("; ");
        assert!(
            notes.contains("EnterpriseGatewayApp.kernel_spec_manager_class in "),
            "{notes}"
        );
        assert!(notes.contains("(did you mean \"port\"?)"), "{notes}");

        std::fs::write(
            &py,
            "import os
c.EnterpriseGatewayApp.port = int(os.environ['P'])
",
        )
        .expect("write");
        let err = parse(args(&["--config", path]), &env(&[])).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("Python config"), "{text}");
        assert!(text.contains("line 1: "), "{text}");
        assert!(text.contains("--convert-config"), "{text}");
    }

    #[test]
    fn the_unsupported_list_names_no_option_variable() {
        let known: Vec<&str> = OPTIONS.iter().flat_map(|d| d.env.iter().copied()).collect();
        for (names, why) in UNSUPPORTED {
            for name in *names {
                assert!(
                    !known.contains(name),
                    "{name} is an option's variable, not {why:?}"
                );
            }
        }
    }

    #[test]
    fn eg_config_files_on_the_jupyter_path_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("jupyter_enterprise_gateway_config.py");
        std::fs::write(&file, "c.EnterpriseGatewayApp.port = 1\n").expect("write");
        let jupyter = dir.path().to_str().expect("utf8");
        let raw = parse(args(&[]), &env(&[("JUPYTER_CONFIG_DIR", jupyter)])).expect("parses");
        let notes = raw.unsupported().join("; ");
        assert!(
            notes.contains(&format!("{}: Enterprise Gateway reads", file.display())),
            "{notes}"
        );
        assert_eq!(raw.get("port"), "8888", "not read without --config");
        let path = file.to_str().expect("utf8");
        let raw = parse(
            args(&["--config", path]),
            &env(&[("JUPYTER_CONFIG_DIR", jupyter)]),
        )
        .expect("parses");
        assert!(raw.unsupported().is_empty(), "{:?}", raw.unsupported());
        assert_eq!(raw.get("port"), "1");
    }

    #[test]
    fn converted_and_generated_configs_are_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let py = dir.path().join("eg.py");
        std::fs::write(
            &py,
            "c.EnterpriseGatewayApp.port = 9001
c.EnterpriseGatewayApp.list_kernels = True
c.KernelSpecManager.whitelist = ['a', 'b']
c.EnterpriseGatewayApp.unknown_thing = 1
c.MappingKernelManager.cull_idle_timeout = 60
",
        )
        .expect("write");
        let raw = parse(
            args(&["--convert-config", py.to_str().expect("utf8")]),
            &env(&[]),
        )
        .expect("converts");
        let toml_text = raw.output().expect("output").to_owned();
        assert!(toml_text.contains("port = 9001\n"), "{toml_text}");
        assert!(toml_text.contains("list_kernels = true\n"), "{toml_text}");
        assert!(
            toml_text.contains("allowed_kernelspecs = [\"a\", \"b\"]\n"),
            "{toml_text}"
        );
        assert!(
            toml_text.contains("# not converted: EnterpriseGatewayApp.unknown_thing"),
            "{toml_text}"
        );
        let converted = dir.path().join("converted.toml");
        std::fs::write(&converted, &toml_text).expect("write");
        let raw = parse(
            args(&["--config", converted.to_str().expect("utf8")]),
            &env(&[]),
        )
        .expect("the converted file is accepted");
        assert_eq!(raw.get("port"), "9001");
        assert_eq!(raw.get("cull_idle_timeout"), "60");
        assert_eq!(raw.get("allowed_kernelspecs"), "a,b");

        let generated = parse(args(&["--generate-config"]), &env(&[]))
            .expect("generates")
            .output()
            .expect("output")
            .to_owned();
        for def in OPTIONS {
            assert!(
                generated.contains(&format!("\n# {} = ", def.name)),
                "{}",
                def.name
            );
        }
        // Every line uncommented: still accepted, and every value is the default.
        let uncommented: String = generated
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if OPTIONS
                        .iter()
                        .any(|d| rest.starts_with(&format!("{} = ", d.name))) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let file = dir.path().join("all.toml");
        std::fs::write(&file, uncommented).expect("write");
        let raw = parse(args(&["--config", file.to_str().expect("utf8")]), &env(&[]))
            .expect("the generated file is accepted");
        for def in OPTIONS {
            assert_eq!(raw.source(def.name), Source::File, "{}", def.name);
            let default = def.default_text();
            let want = if def.value == "BOOL" && default.is_empty() {
                "false"
            } else {
                &default
            };
            assert_eq!(raw.get(def.name), want, "{}", def.name);
        }
    }

    #[test]
    fn typos_get_the_nearest_name() {
        assert_eq!(
            nearest("prot", OPTIONS.iter().map(|d| d.name)),
            Some("port")
        );
        assert_eq!(
            nearest("list_kernel", OPTIONS.iter().map(|d| d.name)),
            Some("list_kernels")
        );
        assert_eq!(nearest("zzzzzzzz", OPTIONS.iter().map(|d| d.name)), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(
            nearest_flag("--list_kernel=true").as_deref(),
            Some("--list_kernels")
        );
        assert_eq!(nearest_flag("--prot").as_deref(), Some("--port"));
    }

    #[test]
    fn help_names_env_vars_and_defaults() {
        // clap wraps long help lines when another crate in the build turns its `wrap_help`
        // feature on (a workspace build does), so compare with the white space folded.
        let help = help_text().split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains("[env: EG_PORT, KG_PORT]"));
        assert!(
            help.contains("[env: EG_ALLOWED_KERNELS, EG_KERNEL_WHITELIST, EG_ALLOWED_KERNELSPECS]")
        );
        assert!(help.contains("[default: 8888]"));
        assert!(help.contains("--max_kernels"));
    }

    #[test]
    fn every_option_is_documented_in_the_readme() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md is readable");
        for def in OPTIONS {
            assert!(
                readme.contains(&format!("`--{}`", def.name)),
                "README.md's configuration reference lacks --{}",
                def.name
            );
        }
    }
}
