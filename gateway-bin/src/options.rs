//! Stage one of the configuration: raw option values, layered CLI > environment > file.
//!
//! Every option is declared once in [`OPTIONS`]; that table generates the command line (with
//! Enterprise Gateway's `--EnterpriseGatewayApp.<name>=<value>` spellings as aliases), `--help`,
//! the environment variables read, and the keys accepted in a config file. Values stay strings
//! here; [`crate::settings`] turns them into a validated `GatewayConfig` exactly once.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};

/// One configurable option.
#[derive(Debug)]
pub(crate) struct OptionDef {
    /// Our name, also the CLI flag (`--<name>`) and the config-file key.
    pub(crate) name: &'static str,
    /// Placeholder in `--help`.
    pub(crate) value: &'static str,
    /// Default, as text (empty = unset).
    pub(crate) default: &'static str,
    /// Environment variables, first match wins (EG's, then legacy KG_ fallbacks).
    pub(crate) env: &'static [&'static str],
    /// traitlets classes whose `--Class.<trait>` spelling is accepted.
    pub(crate) classes: &'static [&'static str],
    /// The trait name in those classes when it differs from `name`.
    pub(crate) trait_name: Option<&'static str>,
    /// One line of help.
    pub(crate) help: &'static str,
}

const APP: &[&str] = &["EnterpriseGatewayApp"];
const KM: &[&str] = &[
    "RemoteMappingKernelManager",
    "MappingKernelManager",
    "AsyncMappingKernelManager",
];

macro_rules! opt {
    ($name:literal, $value:literal, $default:literal, [$($env:literal),*], $classes:expr, $help:literal) => {
        opt!($name, $value, $default, [$($env),*], $classes, None, $help)
    };
    ($name:literal, $value:literal, $default:literal, [$($env:literal),*], $classes:expr, $trait:expr, $help:literal) => {
        OptionDef {
            name: $name,
            value: $value,
            default: $default,
            env: &[$($env),*],
            classes: $classes,
            trait_name: $trait,
            help: $help,
        }
    };
}

/// Every option the gateway understands, one line each.
#[rustfmt::skip]
pub(crate) const OPTIONS: &[OptionDef] = &[
    // Server.
    opt!("ip", "ADDR", "127.0.0.1", ["EG_IP", "KG_IP"], APP, "Address to listen on"),
    opt!("port", "PORT", "8888", ["EG_PORT", "KG_PORT"], APP, "Port to listen on"),
    opt!("port_retries", "N", "50", ["EG_PORT_RETRIES", "KG_PORT_RETRIES"], APP, "Other ports to try when the port is busy (0 = only --port)"),
    opt!("base_url", "PATH", "/", ["EG_BASE_URL", "KG_BASE_URL"], APP, "URL prefix of every route"),
    opt!("auth_token", "TOKEN", "", ["EG_AUTH_TOKEN", "KG_AUTH_TOKEN"], APP, "Require this token (header `Authorization: token <t>` or `?token=`)"),
    opt!("certfile", "FILE", "", ["EG_CERTFILE", "KG_CERTFILE"], APP, "TLS certificate chain (PEM); enables HTTPS"),
    opt!("keyfile", "FILE", "", ["EG_KEYFILE", "KG_KEYFILE"], APP, "TLS private key (PEM)"),
    opt!("client_ca", "FILE", "", ["EG_CLIENT_CA", "KG_CLIENT_CA"], APP, "Require client certificates signed by this CA (mutual TLS)"),
    opt!("ssl_version", "N", "", ["EG_SSL_VERSION", "KG_SSL_VERSION"], APP, "Accepted for compatibility; TLS 1.2 and 1.3 are always offered"),
    opt!("allow_origin", "ORIGIN", "", ["EG_ALLOW_ORIGIN", "KG_ALLOW_ORIGIN"], APP, "Access-Control-Allow-Origin; `*` disables the origin check"),
    opt!("allow_credentials", "VALUE", "", ["EG_ALLOW_CREDENTIALS", "KG_ALLOW_CREDENTIALS"], APP, "Access-Control-Allow-Credentials"),
    opt!("allow_headers", "VALUE", "", ["EG_ALLOW_HEADERS", "KG_ALLOW_HEADERS"], APP, "Access-Control-Allow-Headers"),
    opt!("allow_methods", "VALUE", "", ["EG_ALLOW_METHODS", "KG_ALLOW_METHODS"], APP, "Access-Control-Allow-Methods"),
    opt!("expose_headers", "VALUE", "", ["EG_EXPOSE_HEADERS", "KG_EXPOSE_HEADERS"], APP, "Access-Control-Expose-Headers"),
    opt!("max_age", "VALUE", "", ["EG_MAX_AGE", "KG_MAX_AGE"], APP, "Access-Control-Max-Age"),
    opt!("trust_xheaders", "BOOL", "false", ["EG_TRUST_XHEADERS", "KG_TRUST_XHEADERS"], APP, "Accepted for compatibility"),
    // Identity: who may use the API (see the README's "Users and authentication").
    opt!("authenticators", "LIST", "", ["EG_AUTHENTICATORS"], &[], "Authenticators tried in this order: token, token_file, jwt, jupyterhub, mtls (default: every configured one, in the order mtls, token, token_file, jwt, jupyterhub; none = everyone trusted, as EG without a token)"),
    opt!("auth_token_user", "USER", "gateway-service", ["EG_AUTH_TOKEN_USER"], &[], "The identity the shared auth_token authenticates"),
    opt!("auth_token_roles", "LIST", "admin,impersonate", ["EG_AUTH_TOKEN_ROLES"], &[], "Roles of the shared auth_token's identity (admin: sees every kernel; impersonate: may send any KERNEL_USERNAME); the default keeps EG's behaviour"),
    opt!("token_file", "FILE", "", ["EG_TOKEN_FILE"], &[], "Per-user tokens (TOML or JSON, hashes only; written by `enterprise-gateway token`), reloaded on change and on SIGHUP"),
    opt!("oidc_issuer", "URL", "", ["EG_OIDC_ISSUER"], &[], "Accept bearer JWTs from this OIDC issuer (keys from its discovery document unless --oidc_jwks_url)"),
    opt!("oidc_jwks_url", "URL", "", ["EG_OIDC_JWKS_URL"], &[], "The issuer's JWKS (default: jwks_uri of <issuer>/.well-known/openid-configuration)"),
    opt!("oidc_audience", "LIST", "", ["EG_OIDC_AUDIENCE"], &[], "Accepted `aud` values (required with --oidc_issuer)"),
    opt!("oidc_user_claim", "CLAIM", "preferred_username", ["EG_OIDC_USER_CLAIM"], &[], "The JWT claim that names the user"),
    opt!("oidc_groups_claim", "CLAIM", "groups", ["EG_OIDC_GROUPS_CLAIM"], &[], "The JWT claim that lists the user's groups"),
    opt!("oidc_leeway", "SECS", "60", ["EG_OIDC_LEEWAY"], &[], "Clock skew allowed when checking exp and nbf"),
    opt!("oidc_jwks_refresh_interval", "SECS", "10", ["EG_OIDC_JWKS_REFRESH_INTERVAL"], &[], "Least time between two fetches of the issuer's keys caused by tokens naming an unknown kid (the first one always happens)"),
    opt!("jupyterhub_api_url", "URL", "", ["EG_JUPYTERHUB_API_URL"], &[], "Accept JupyterHub API tokens, checked at <url>/user (e.g. http://hub:8081/hub/api)"),
    opt!("jupyterhub_cache_ttl", "SECS", "30", ["EG_JUPYTERHUB_CACHE_TTL"], &[], "How long a JupyterHub token's answer is reused (a revoked token works this long at most)"),
    opt!("mtls_user_field", "FIELD", "cn", ["EG_MTLS_USER_FIELD"], &[], "Which part of a client certificate names the user: cn, email, dns or uri (SANs); needs --client_ca"),
    opt!("admin_users", "LIST", "", ["EG_ADMIN_USERS"], &[], "Users with the admin role (see and manage every kernel)"),
    opt!("admin_groups", "LIST", "", ["EG_ADMIN_GROUPS"], &[], "Groups whose members have the admin role"),
    // The HTTP edge.
    opt!("max_header_bytes", "BYTES", "32768", ["EG_MAX_HEADER_BYTES"], &[], "Largest request line plus headers (431 beyond)"),
    opt!("max_body_bytes", "BYTES", "16777216", ["EG_MAX_BODY_BYTES"], &[], "Largest request body (413 beyond, from Content-Length before reading)"),
    opt!("header_timeout", "SECS", "10", ["EG_HEADER_TIMEOUT"], &[], "Time allowed for a complete request head (408 and close beyond)"),
    opt!("body_timeout", "SECS", "10", ["EG_BODY_TIMEOUT"], &[], "Longest pause while a request body arrives (408 and close beyond)"),
    opt!("max_connections_per_client", "N", "512", ["EG_MAX_CONNECTIONS_PER_CLIENT"], &[], "Most open connections from one client address (503 beyond; 0 = no limit)"),
    opt!("max_env_bytes", "BYTES", "262144", ["EG_MAX_ENV_BYTES"], &[], "Largest `env` object of a start request, names plus values (400 beyond)"),
    opt!("ws_ping_interval", "SECS", "30", ["EG_WS_PING_INTERVAL_SECS"], APP, "WebSocket ping interval (0 disables)"),
    opt!("log_level", "LEVEL", "info", ["EG_LOG_LEVEL"], &["Application"], "Log level: error, warn, info, debug, trace (or a tracing filter)"),
    opt!("log_format", "FORMAT", "text", ["EG_LOG_FORMAT"], &[], "Log lines as text (for people) or json (one object per line, kernel_id and user as fields)"),
    opt!("metrics_enabled", "BOOL", "true", ["EG_METRICS_ENABLED"], &[], "Record Prometheus metrics and serve /metrics (false: nothing is recorded)"),
    opt!("metrics_port", "PORT", "", ["EG_METRICS_PORT"], &[], "Serve /metrics without authentication on this port of --ip (default: on the API port, to admins only)"),
    // Kernels and policy.
    opt!("list_kernels", "BOOL", "false", ["EG_LIST_KERNELS", "KG_LIST_KERNELS"], APP, "Allow GET /api/kernels and /api/sessions"),
    opt!("max_kernels", "N", "", ["EG_MAX_KERNELS", "KG_MAX_KERNELS"], APP, "Most kernels at once, starts in progress included"),
    opt!("max_kernels_per_user", "N", "-1", ["EG_MAX_KERNELS_PER_USER"], APP, "Most kernels per KERNEL_USERNAME (-1 = no limit)"),
    opt!("default_kernel_name", "NAME", "", ["EG_DEFAULT_KERNEL_NAME", "KG_DEFAULT_KERNEL_NAME"], APP, "Kernelspec used when a request names none (default python3)"),
    opt!("allowed_kernelspecs", "LIST", "", ["EG_ALLOWED_KERNELSPECS"], &["KernelSpecManager"], None, "Only these kernelspecs are listed and started (comma list)"),
    opt!("kernelspec_dirs", "LIST", "", ["EG_KERNELSPEC_DIRS"], &[], "Extra kernelspec directories searched after the Jupyter path (comma list of .../kernels dirs)"),
    opt!("authorized_users", "LIST", "", ["EG_AUTHORIZED_USERS", "GP_AUTHORIZED_USERS"], APP, "Users allowed to start kernels (empty = all not refused)"),
    opt!("unauthorized_users", "LIST", "root", ["EG_UNAUTHORIZED_USERS", "GP_UNAUTHORIZED_USERS"], APP, "Users refused"),
    opt!("impersonation_enabled", "BOOL", "false", ["EG_IMPERSONATION_ENABLED", "GP_IMPERSONATION_ENABLED"], APP, "Run kernels as KERNEL_USERNAME where the backend supports it"),
    opt!("client_envs", "LIST", "", ["EG_CLIENT_ENVS", "EG_ENV_WHITELIST"], APP, "Request env variables passed to kernels besides KERNEL_* (`*` = all)"),
    opt!("inherited_envs", "LIST", "", ["EG_INHERITED_ENVS", "EG_ENV_PROCESS_WHITELIST"], APP, "Gateway env variables passed to kernels"),
    opt!("kernel_headers", "LIST", "", ["EG_KERNEL_HEADERS"], APP, "Accepted for compatibility"),
    opt!("port_range", "LO..HI", "0..0", ["EG_PORT_RANGE", "GP_PORT_RANGE"], APP, "Kernel ports come from this range (0..0 = any)"),
    opt!("launch_timeout", "SECS", "30", ["EG_KERNEL_LAUNCH_TIMEOUT", "GP_LAUNCH_TIMEOUT"], &[], "Default kernel launch deadline"),
    opt!("max_launch_timeout", "SECS", "600", ["EG_MAX_KERNEL_LAUNCH_TIMEOUT"], &[], "Upper bound on a request's KERNEL_LAUNCH_TIMEOUT"),
    opt!("kernel_info_timeout", "SECS", "60", ["EG_KERNEL_INFO_TIMEOUT"], KM, "Wait for kernel_info before a WebSocket opens"),
    opt!("shutdown_wait_time", "SECS", "5", ["EG_SHUTDOWN_WAIT_TIME"], &["KernelManager", "RemoteKernelManager"], "Graceful shutdown wait before a kernel is terminated"),
    opt!("restart_limit", "N", "5", ["EG_RESTART_LIMIT"], &["KernelRestarter"], "Consecutive automatic restarts before a kernel is declared dead (0 = never restart)"),
    opt!("cull_idle_timeout", "SECS", "0", ["EG_CULL_IDLE_TIMEOUT"], KM, "Shut down kernels idle this long (0 = never)"),
    opt!("cull_interval", "SECS", "300", ["EG_CULL_INTERVAL"], KM, "How often idle kernels are looked for"),
    opt!("cull_connected", "BOOL", "false", ["EG_CULL_CONNECTED"], KM, "Cull kernels with open connections too"),
    opt!("cull_busy", "BOOL", "false", ["EG_CULL_BUSY"], KM, "Cull busy kernels too"),
    opt!("cull_busy_timeout", "SECS", "0", ["EG_CULL_BUSY_TIMEOUT"], KM, "With cull_busy: busy kernels are culled after this long (0 = cull_idle_timeout)"),
    opt!("buffer_max_messages", "N", "10000", ["EG_BUFFER_MAX_MESSAGES"], &[], "Messages kept for a disconnected client"),
    opt!("buffer_max_bytes", "BYTES", "67108864", ["EG_BUFFER_MAX_BYTES"], &[], "Bytes kept for a disconnected client"),
    opt!("buffer_ttl", "SECS", "600", ["EG_BUFFER_TTL"], &[], "How long a disconnected client's messages are kept"),
    opt!("ws_max_message_size", "BYTES", "104857600", ["EG_WS_MAX_MESSAGE_SIZE"], &[], "Largest WebSocket message accepted"),
    opt!("shutdown_kernels_on_exit", "BOOL", "true", ["EG_SHUTDOWN_KERNELS_ON_EXIT"], &[], "Shut kernels down when the gateway stops"),
    // Remote kernels (launchers call back; EG's DistributedProcessProxy).
    opt!("remote_hosts", "LIST", "localhost", ["EG_REMOTE_HOSTS", "GP_REMOTE_HOSTS"], APP, "Hosts for distributed (ssh) kernelspecs; a kernelspec's config.remote_hosts replaces them"),
    opt!("load_balancing_algorithm", "NAME", "round-robin", ["EG_LOAD_BALANCING_ALGORITHM", "GP_LOAD_BALANCING_ALGORITHM"], APP, "How a remote host is chosen: round-robin or least-connection"),
    opt!("response_ip", "ADDR", "", ["EG_RESPONSE_IP", "GP_RESPONSE_IP"], &[], "Address launchers call back to (default: this machine's primary address)"),
    opt!("response_port", "PORT", "8877", ["EG_RESPONSE_PORT", "GP_RESPONSE_PORT"], &[], "Port of the launcher callback listener"),
    opt!("response_port_retries", "N", "10", ["EG_RESPONSE_PORT_RETRIES", "GP_RESPONSE_PORT_RETRIES"], &[], "Further callback ports to try when the port is busy"),
    opt!("response_addr_any", "BOOL", "false", ["EG_RESPONSE_ADDR_ANY", "GP_RESPONSE_ADDR_ANY"], &[], "Bind the callback listener on all interfaces"),
    opt!("socket_timeout", "SECS", "1", ["EG_SOCKET_TIMEOUT", "GP_SOCKET_TIMEOUT"], &[], "Connect timeout of a remote kernel's communication port (at least 0.1)"),
    opt!("ssh_port", "PORT", "22", ["EG_SSH_PORT", "GP_SSH_PORT"], &[], "SSH port of the remote hosts"),
    opt!("remote_user", "USER", "", ["EG_REMOTE_USER", "GP_REMOTE_USER"], &[], "SSH user on the remote hosts (default: the gateway's user; KERNEL_USERNAME with impersonation)"),
    opt!("remote_pwd", "PASSWORD", "", ["EG_REMOTE_PWD", "GP_REMOTE_PWD"], &[], "SSH password (prefer the environment variable; never logged, never passed to kernels)"),
    opt!("ssh_key_file", "FILE", "", ["EG_SSH_KEY_FILE"], &[], "SSH private key (default: the agent at SSH_AUTH_SOCK, then ~/.ssh/id_ed25519, id_rsa)"),
    opt!("ssh_known_hosts", "FILE", "", ["EG_SSH_KNOWN_HOSTS"], &[], "known_hosts file that remote host keys are checked against (default ~/.ssh/known_hosts)"),
    opt!("ssh_accept_unknown_hosts", "BOOL", "false", ["EG_SSH_ACCEPT_UNKNOWN_HOSTS"], &[], "Accept hosts missing from known_hosts (a changed key is always refused)"),
    opt!("enable_tunneling", "BOOL", "false", ["EG_ENABLE_TUNNELING", "GP_ENABLE_TUNNELING"], &[], "Tunnel remote kernels' ports through the SSH connection"),
    opt!("ssh_local_hosts", "BOOL", "false", ["EG_SSH_LOCAL_HOSTS"], &[], "Reach hosts that are this machine over SSH too, instead of launching them directly (for testing against a separate sshd)"),
    // YARN (EG's YarnClusterProcessProxy).
    opt!("yarn_endpoint", "URL", "", ["EG_YARN_ENDPOINT", "GP_YARN_ENDPOINT"], APP, "YARN ResourceManager, e.g. http://rm:8088/ws/v1/cluster (default: from yarn-site.xml)"),
    opt!("alt_yarn_endpoint", "URL", "", ["EG_ALT_YARN_ENDPOINT", "GP_ALT_YARN_ENDPOINT"], APP, "Second ResourceManager of an HA pair"),
    opt!("yarn_endpoint_security_enabled", "BOOL", "false", ["EG_YARN_ENDPOINT_SECURITY_ENABLED", "GP_YARN_ENDPOINT_SECURITY_ENABLED"], APP, "Kerberos/SPNEGO to the ResourceManager (not supported yet: refused with a clear error)"),
    opt!("yarn_cert_bundle", "FILE", "", ["EG_YARN_CERT_BUNDLE"], &[], "CA bundle (PEM) trusted for an HTTPS ResourceManager"),
    opt!("hadoop_conf_dir", "DIR", "", ["YARN_CONF_DIR", "HADOOP_CONF_DIR"], &[], "Directory of yarn-site.xml, for ResourceManager addresses"),
    opt!("runtime_dir", "DIR", "", ["JUPYTER_RUNTIME_DIR"], &[], "Where connection files go (default ~/.local/share/jupyter/runtime)"),
    opt!("kernel_log_dir", "DIR", "", ["EG_KERNEL_LOG_DIR", "GP_KERNEL_LOG_DIR"], &[], "Where per-kernel logs go (default: the runtime dir)"),
];

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
}

/// Read-only access to environment variables, so parsing is testable without touching the
/// process environment.
pub(crate) trait EnvSource {
    /// The value of `key`, if set.
    fn var(&self, key: &str) -> Option<String>;
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

fn command() -> clap::Command {
    let mut cmd = clap::Command::new("enterprise-gateway")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Jupyter Enterprise Gateway, in Rust: runs Jupyter kernels for remote clients")
        .after_help(
            "Every option can also be given as EG's traitlets spelling \
             (--EnterpriseGatewayApp.port=8889), as its environment variable, or as a key in \
             the --config file (TOML, or EG's JSON config). Precedence: CLI > env > file > default.\n\n\
             Per-user tokens for --token_file are managed with `enterprise-gateway token \
             add|list|revoke` (see `enterprise-gateway token --help`).",
        )
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .help("Config file: TOML (keys as the option names) or EG's traitlets JSON"),
        );
    for def in OPTIONS {
        let mut help = def.help.to_owned();
        if !def.default.is_empty() {
            help.push_str(&format!(" [default: {}]", def.default));
        }
        if let Some(var) = def.env.first() {
            help.push_str(&format!(" [env: {var}]"));
        }
        let mut arg = clap::Arg::new(def.name)
            .long(def.name)
            .value_name(def.value)
            .help(help);
        let dashed = def.name.replace('_', "-");
        if dashed != def.name {
            arg = arg.alias(dashed);
        }
        let trait_name = def.trait_name.unwrap_or(def.name);
        for class in def.classes {
            arg = arg.alias(format!("{class}.{trait_name}"));
        }
        if def.name == "allowed_kernelspecs" {
            arg = arg.alias("KernelSpecManager.whitelist");
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
    let file = match matches.get_one::<String>("config") {
        Some(path) => read_file(Path::new(path)).map_err(|e| {
            command().error(clap::error::ErrorKind::ValueValidation, format!("{e:#}"))
        })?,
        None => BTreeMap::new(),
    };
    let mut raw = RawOptions::default();
    for def in OPTIONS {
        let cli = matches.get_one::<String>(def.name).cloned();
        let from_env = def.env.iter().find_map(|k| env.var(k));
        let value = match (cli, from_env, file.get(def.name)) {
            (Some(v), _, _) => (v, Source::Cli),
            (None, Some(v), _) => (v, Source::Env),
            (None, None, Some(v)) => (v.clone(), Source::File),
            (None, None, None) => (def.default.to_owned(), Source::Default),
        };
        raw.values.insert(def.name, value);
    }
    Ok(raw)
}

/// Reads a config file into option name → text value. TOML keys are option names, at the top
/// level or inside tables named after EG's traitlets classes; JSON is EG's traitlets config
/// (`{"EnterpriseGatewayApp": {"port": 8889}}`).
fn read_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let value: serde_json::Value = if is_json {
        serde_json::from_str(&text)
            .with_context(|| format!("config file {} is not valid JSON", path.display()))?
    } else {
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
        serde_json::to_value(table).context("config file could not be converted")?
    };
    let serde_json::Value::Object(top) = value else {
        bail!("config file {} must hold a table", path.display());
    };
    let mut out = BTreeMap::new();
    for (key, value) in top {
        match value {
            serde_json::Value::Object(inner) => {
                for (k, v) in inner {
                    insert_known(&mut out, &k, v, path)?;
                }
            }
            other => insert_known(&mut out, &key, other, path)?,
        }
    }
    Ok(out)
}

fn insert_known(
    out: &mut BTreeMap<String, String>,
    key: &str,
    value: serde_json::Value,
    path: &Path,
) -> anyhow::Result<()> {
    let name = match key {
        "whitelist" => "allowed_kernelspecs",
        other => other,
    };
    if !OPTIONS.iter().any(|d| d.name == name) {
        bail!("config file {}: unknown option {key:?}", path.display());
    }
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
    out.insert(name.to_owned(), text);
    Ok(())
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
        assert!(err.to_string().contains("unknown option \"prot\""), "{err}");
    }

    #[test]
    fn help_names_env_vars_and_defaults() {
        let help = help_text();
        assert!(help.contains("[env: EG_PORT]"));
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
