//! Stage two of the configuration: raw option text validated, once, into the immutable
//! [`GatewayConfig`] and the few settings only the binary needs (where to listen, logging,
//! the local backend's directories). Nothing downstream re-validates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use gateway_http::GatewayConfig;
use gateway_http::config::{Cors, Culling, HttpLimits};
use kernel_launcher::PortRange;
use kernel_launcher::env::EnvPolicy;
use kernel_launcher::response::ListenerOptions;
use resource_managers::local::LocalConfig;
use resource_managers::ssh::SshOptions;
use resource_managers::ssh::balance::LoadBalancing;
use resource_managers::ssh::session::{HostKeys, Secret, SshAuth};

use crate::options::RawOptions;

/// Everything the binary needs to run.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The gateway's configuration.
    pub(crate) gateway: GatewayConfig,
    /// The local backend's settings.
    pub(crate) local: LocalConfig,
    /// Address to listen on.
    pub(crate) ip: String,
    /// First port to try.
    pub(crate) port: u16,
    /// Further ports to try.
    pub(crate) port_retries: u16,
    /// Where the launcher callback listener binds, and how it behaves.
    pub(crate) response_bind: std::net::SocketAddr,
    /// Callback listener options.
    pub(crate) response_options: ListenerOptions,
    /// Hosts for distributed kernelspecs.
    pub(crate) remote_hosts: Vec<String>,
    /// Communication-port connect timeout.
    pub(crate) comm_timeout: Duration,
    /// SSH backend settings.
    pub(crate) ssh: SshOptions,
    /// YARN backend settings (the response listener is added at start-up).
    pub(crate) yarn: YarnSettings,
    /// Record metrics (install the Prometheus recorder).
    pub(crate) metrics_enabled: bool,
    /// A separate, unauthenticated port for `/metrics`.
    pub(crate) metrics_port: Option<u16>,
    /// The profiles file, re-read on SIGHUP.
    pub(crate) profiles_file: Option<std::path::PathBuf>,
    /// Kernel profiles and pool sizes read from it.
    pub(crate) profiles: gateway_http::profiles::ProfileSet,
    /// The kernel store, unless `--store=none`.
    pub(crate) store: Option<StoreSettings>,
}

/// Where kernels are recorded, and this gateway's lease on them.
#[derive(Debug, Clone)]
pub(crate) struct StoreSettings {
    /// A SQLite path or a `postgres://` URL (may hold a password: never logged).
    pub(crate) location: String,
    /// This gateway's name in leases.
    pub(crate) gateway_id: String,
    /// How long a lease holds unrenewed.
    pub(crate) lease_ttl: Duration,
    /// CA certificates (PEM) a PostgreSQL server's certificate is checked against: TLS only.
    pub(crate) ca_file: Option<PathBuf>,
}

/// What the YARN backend needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct YarnSettings {
    pub(crate) endpoint: Option<String>,
    pub(crate) alt_endpoint: Option<String>,
    pub(crate) conf_dir: Option<PathBuf>,
    pub(crate) kerberos: bool,
    pub(crate) ca_bundle: Option<PathBuf>,
}

/// A typed reader over raw options; every error names the option.
pub(crate) struct Reader<'a> {
    raw: &'a RawOptions,
}

impl Reader<'_> {
    pub(crate) fn text(&self, name: &str) -> Option<String> {
        let v = self.raw.get(name).trim();
        (!v.is_empty()).then(|| v.to_owned())
    }

    pub(crate) fn bool(&self, name: &str) -> anyhow::Result<bool> {
        match self.raw.get(name).trim().to_ascii_lowercase().as_str() {
            "" | "false" | "0" | "no" | "off" | "n" | "f" => Ok(false),
            "true" | "1" | "yes" | "on" | "y" | "t" => Ok(true),
            other => Err(anyhow!("--{name}: {other:?} is not a boolean")),
        }
    }

    pub(crate) fn number<T: std::str::FromStr>(&self, name: &str) -> anyhow::Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.text(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|e| anyhow!("--{name}: {v:?} is not a valid number: {e}")),
        }
    }

    pub(crate) fn secs(&self, name: &str) -> anyhow::Result<Duration> {
        let secs = self.number::<f64>(name)?.unwrap_or(0.0);
        if !secs.is_finite() || secs < 0.0 {
            bail!("--{name}: must be a non-negative number of seconds");
        }
        Duration::try_from_secs_f64(secs)
            .map_err(|_| anyhow!("--{name}: {secs} seconds is too long"))
    }

    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        split_list(self.raw.get(name))
    }
}

fn split_list(text: &str) -> Vec<String> {
    let trimmed = text.trim().trim_start_matches('[').trim_end_matches(']');
    trimmed
        .split(',')
        .map(|s| s.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Validates raw options into settings. `env` is the gateway's process environment.
pub(crate) fn build(raw: &RawOptions, env: &BTreeMap<String, String>) -> anyhow::Result<Settings> {
    let r = Reader { raw };
    let ip = r.text("ip").unwrap_or_else(|| "127.0.0.1".to_owned());
    ip.parse::<std::net::IpAddr>()
        .map_err(|_| anyhow!("--ip: {ip:?} is not an IP address"))?;
    let port = r.number::<u16>("port")?.unwrap_or(8888);
    let port_retries = r.number::<u16>("port_retries")?.unwrap_or(0);

    let home = env.get("HOME").map(PathBuf::from);
    let data_dir = env
        .get("JUPYTER_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".local/share/jupyter")))
        .unwrap_or_else(|| PathBuf::from("/tmp/jupyter"));
    let runtime_dir = r
        .text("runtime_dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("runtime"));
    let log_dir = r
        .text("kernel_log_dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| runtime_dir.clone());

    let path_dirs: Vec<PathBuf> = env
        .get("PATH")
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    let kernelspec_dirs = kernel_launcher::kernelspec::search_path(
        env.get("JUPYTER_PATH").map(String::as_str),
        home.as_deref(),
        &python_prefixes(env, &path_dirs),
        &r.list("kernelspec_dirs")
            .into_iter()
            .map(PathBuf::from)
            .collect::<Vec<_>>(),
    );

    let port_range =
        PortRange::parse(raw.get("port_range")).map_err(|e| anyhow!("--port_range: {e}"))?;

    let max_kernels_per_user = r.number::<i64>("max_kernels_per_user")?.unwrap_or(-1);
    let max_kernels_per_user =
        (max_kernels_per_user >= 0).then(|| usize::try_from(max_kernels_per_user).unwrap_or(0));

    let mut cull_interval = r.secs("cull_interval")?;
    if cull_interval.is_zero() {
        tracing::warn!("cull_interval must be positive; using 300 seconds");
        cull_interval = Duration::from_secs(300);
    }

    let base_url = normalise_base_url(raw.get("base_url"));
    let (auth, client_certificate_optional) = crate::auth::build(&r)?;
    let tls = tls(&r, client_certificate_optional)?;
    let defaults = HttpLimits::default();
    let limits = HttpLimits {
        max_head_bytes: r
            .number::<usize>("max_header_bytes")?
            .unwrap_or(defaults.max_head_bytes),
        max_body_bytes: r
            .number::<usize>("max_body_bytes")?
            .unwrap_or(defaults.max_body_bytes),
        header_timeout: r.secs("header_timeout")?,
        body_timeout: r.secs("body_timeout")?,
        max_connections_per_client: r
            .number::<usize>("max_connections_per_client")?
            .unwrap_or(defaults.max_connections_per_client),
        max_connections: r
            .number::<usize>("max_connections")?
            .unwrap_or(defaults.max_connections),
        fd_reserve: r
            .number::<usize>("fd_reserve")?
            .unwrap_or(defaults.fd_reserve),
        client_memory_budget: r
            .number::<usize>("client_memory_budget")?
            .unwrap_or(defaults.client_memory_budget),
        client_memory_share: r
            .number::<usize>("client_memory_share")?
            .unwrap_or(defaults.client_memory_share),
        ..defaults
    };
    if limits.header_timeout.is_zero() || limits.body_timeout.is_zero() {
        bail!("--header_timeout and --body_timeout must be positive");
    }

    let gateway = GatewayConfig {
        base_url,
        auth,
        limits,
        cors: Cors {
            allow_origin: r.text("allow_origin"),
            allow_credentials: r.text("allow_credentials"),
            allow_headers: r.text("allow_headers"),
            allow_methods: r.text("allow_methods"),
            expose_headers: r.text("expose_headers"),
            max_age: r.text("max_age"),
        },
        list_kernels: r.bool("list_kernels")?,
        max_kernels: r.number::<usize>("max_kernels")?,
        max_kernels_per_user,
        default_kernel_name: r
            .text("default_kernel_name")
            .unwrap_or_else(|| "python3".to_owned()),
        allowed_kernelspecs: r.list("allowed_kernelspecs"),
        authorized_users: r.list("authorized_users"),
        unauthorized_users: r.list("unauthorized_users"),
        env_policy: EnvPolicy {
            client_envs: r.list("client_envs"),
            inherited_envs: r.list("inherited_envs"),
            max_total_bytes: r
                .number::<usize>("max_env_bytes")?
                .unwrap_or(kernel_launcher::env::DEFAULT_MAX_ENV_BYTES),
        },
        gateway_env: env.clone(),
        gateway_user: gateway_user(env),
        impersonation_enabled: r.bool("impersonation_enabled")?,
        port_range,
        kernelspec_dirs,
        root_dir: env
            .get("PWD")
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/")),
        launch_timeout: r.secs("launch_timeout")?,
        max_launch_timeout: r.secs("max_launch_timeout")?,
        kernel_info_timeout: r.secs("kernel_info_timeout")?,
        shutdown_wait_time: r.secs("shutdown_wait_time")?,
        restart_limit: r.number::<u32>("restart_limit")?.unwrap_or(5),
        restart_backoff: gateway_http::config::RestartBackoff {
            initial: r.secs("restart_backoff_initial")?,
            max: r.secs("restart_backoff_max")?,
        },
        culling: Culling {
            idle_timeout: r.secs("cull_idle_timeout")?,
            interval: cull_interval,
            cull_connected: r.bool("cull_connected")?,
            cull_busy: r.bool("cull_busy")?,
            busy_timeout: r.secs("cull_busy_timeout")?,
        },
        ws_ping_interval: r.secs("ws_ping_interval")?,
        ws_max_message_size: r
            .number::<usize>("ws_max_message_size")?
            .unwrap_or(100 << 20),
        buffer_max_messages: r.number::<usize>("buffer_max_messages")?.unwrap_or(10_000),
        buffer_max_bytes: r.number::<usize>("buffer_max_bytes")?.unwrap_or(64 << 20),
        buffer_ttl: r.secs("buffer_ttl")?,
        shutdown_kernels_on_exit: r.bool("shutdown_kernels_on_exit")?,
        tls,
        metrics_access: if r.number::<u16>("metrics_port")?.is_some() {
            gateway_http::config::MetricsAccess::Elsewhere
        } else {
            gateway_http::config::MetricsAccess::Admin
        },
        readiness: gateway_http::config::Readiness::default(),
    };
    if gateway.max_launch_timeout < gateway.launch_timeout {
        bail!("--max_launch_timeout must not be below --launch_timeout");
    }

    let response_ip = match r.text("response_ip") {
        Some(ip) => Some(
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| anyhow!("--response_ip: {ip:?} is not an IP address"))?,
        ),
        None => None,
    };
    let bind_ip = if r.bool("response_addr_any")? {
        std::net::IpAddr::from([0, 0, 0, 0])
    } else {
        response_ip.unwrap_or_else(kernel_launcher::net::primary_local_ip)
    };
    let response_bind =
        std::net::SocketAddr::new(bind_ip, r.number::<u16>("response_port")?.unwrap_or(8877));
    let response_options = ListenerOptions {
        advertise_ip: response_ip,
        port_retries: r.number::<u16>("response_port_retries")?.unwrap_or(10),
        ..ListenerOptions::default()
    };
    let load_balancing = match raw.get("load_balancing_algorithm").trim() {
        "" => LoadBalancing::RoundRobin,
        other => other
            .parse::<LoadBalancing>()
            .map_err(|e| anyhow!("--load_balancing_algorithm: {e}"))?,
    };
    let ssh = SshOptions {
        port: r.number::<u16>("ssh_port")?.unwrap_or(22),
        remote_user: r.text("remote_user"),
        impersonation: r.bool("impersonation_enabled")?,
        auth: SshAuth {
            key_file: r.text("ssh_key_file").map(PathBuf::from),
            key_passphrase: None,
            agent_socket: env.get("SSH_AUTH_SOCK").map(PathBuf::from),
            password: r.text("remote_pwd").map(Secret::new),
        },
        host_keys: HostKeys {
            known_hosts: r
                .text("ssh_known_hosts")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".ssh/known_hosts"))),
            accept_unknown: r.bool("ssh_accept_unknown_hosts")?,
        },
        load_balancing,
        tunneling: r.bool("enable_tunneling")?,
        ssh_to_local_hosts: r.bool("ssh_local_hosts")?,
        ..SshOptions::default()
    };
    let yarn = YarnSettings {
        endpoint: r.text("yarn_endpoint"),
        alt_endpoint: r.text("alt_yarn_endpoint"),
        conf_dir: r.text("hadoop_conf_dir").map(PathBuf::from),
        kerberos: r.bool("yarn_endpoint_security_enabled")?,
        ca_bundle: r.text("yarn_cert_bundle").map(PathBuf::from),
    };
    let comm_timeout = r.secs("socket_timeout")?.max(Duration::from_millis(100));

    let store = store_settings(&r, &data_dir, port)?;
    let profiles_file = r.text("profiles_file").map(std::path::PathBuf::from);
    let profiles = match &profiles_file {
        Some(path) => crate::profiles::load(path, &gateway.env_policy)?,
        None => Default::default(),
    };
    Ok(Settings {
        store,
        ssh,
        yarn,
        response_bind,
        response_options,
        remote_hosts: r.list("remote_hosts"),
        comm_timeout,
        local: LocalConfig {
            runtime_dir,
            log_dir,
            ip: "127.0.0.1".to_owned(),
            search_path: path_dirs,
        },
        gateway,
        ip,
        port,
        port_retries,
        metrics_enabled: r.bool("metrics_enabled")?,
        metrics_port: r.number::<u16>("metrics_port")?,
        profiles,
        profiles_file,
    })
}

fn tls(
    r: &Reader<'_>,
    client_certificate_optional: bool,
) -> anyhow::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
    let cert = r.text("certfile");
    let key = r.text("keyfile");
    let ca = r.text("client_ca");
    match (cert, key) {
        (None, None) if ca.is_none() => Ok(None),
        (Some(cert), Some(key)) => {
            let config = gateway_http::tls::server_config(
                Path::new(&cert),
                Path::new(&key),
                ca.as_deref().map(Path::new),
                client_certificate_optional,
            )
            .with_context(|| "TLS configuration failed")?;
            Ok(Some(config))
        }
        _ => bail!("TLS needs both --certfile and --keyfile"),
    }
}

/// `/`, `/a/b/` forms: a leading and a trailing slash, no duplicates.
fn normalise_base_url(raw: &str) -> String {
    let inner = raw.trim().trim_matches('/');
    if inner.is_empty() {
        "/".to_owned()
    } else {
        format!("/{inner}/")
    }
}

/// The tracing filter for a `--log_level` value: EG's level names and numbers (`DEBUG`, `10`,
/// ...), or a tracing filter whose every directive names a level (`info,resource_managers=debug`).
/// With a plain level, the zeromq crate's own reconnect chatter (every kernel that goes away) is
/// kept to errors; the gateway logs what matters about kernels itself. Anything else is an error,
/// not a silent fall-back to `info`.
pub(crate) fn log_filter(level: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let given = level.trim();
    let plain = |l: &str| match l.to_ascii_lowercase().as_str() {
        "" | "info" | "20" => Some("info"),
        "debug" | "10" => Some("debug"),
        "warn" | "warning" | "30" => Some("warn"),
        "error" | "critical" | "40" | "50" => Some("error"),
        "trace" | "0" => Some("trace"),
        "off" => Some("off"),
        _ => None,
    };
    let filter = match plain(given) {
        Some(level) => format!("{level},zeromq=error"),
        None => {
            let directives_name_levels = given.split(',').all(|d| match d.rsplit_once('=') {
                Some((target, l)) => !target.trim().is_empty() && plain(l.trim()).is_some(),
                None => plain(d.trim()).is_some(),
            });
            if !directives_name_levels {
                bail!(
                    "--log_level: {given:?} is not a log level (error, warn, info, debug, trace, or \
                     EG's 10-50) nor a filter like info,resource_managers=debug"
                );
            }
            given.to_owned()
        }
    };
    tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| anyhow!("--log_level: {given:?} is not a valid filter: {e}"))
}

fn gateway_user(env: &BTreeMap<String, String>) -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| env.get("USER").cloned())
        .unwrap_or_else(|| "root".to_owned())
}

/// Python environments whose `share/jupyter/kernels` are searched, like Jupyter's `sys.prefix`:
/// an active virtualenv or conda env, then the prefix of the first `python3` on PATH.
fn python_prefixes(env: &BTreeMap<String, String>, path_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(|k| env.get(*k).map(PathBuf::from))
        .collect();
    if let Some(dir) = path_dirs.iter().find(|d| d.join("python3").is_file())
        && let Some(prefix) = dir.parent()
    {
        prefixes.push(prefix.to_path_buf());
    }
    prefixes.dedup();
    prefixes
}

/// `--store`, `--gateway_id`, `--lease_ttl`: the SQLite file in the data directory unless told
/// otherwise; `none` turns persistence off.
fn store_settings(
    r: &Reader<'_>,
    data_dir: &std::path::Path,
    port: u16,
) -> anyhow::Result<Option<StoreSettings>> {
    let location = match r.text("store") {
        Some(text) if text.eq_ignore_ascii_case("none") => return Ok(None),
        Some(text) => text,
        None => data_dir.join("kernels.sqlite").display().to_string(),
    };
    let lease_ttl = r.secs("lease_ttl")?;
    if lease_ttl < Duration::from_secs(1) {
        bail!("--lease_ttl: must be at least 1 second");
    }
    let gateway_id = r.text("gateway_id").unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{host}:{port}")
    });
    let ca_file = r.text("store_ca_file").map(PathBuf::from);
    if ca_file.is_some() && !location.starts_with("postgres") {
        bail!("--store_ca_file: only for a postgres:// store");
    }
    Ok(Some(StoreSettings {
        location,
        gateway_id,
        lease_ttl,
        ca_file,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options;
    use std::ffi::OsString;

    fn settings(cli: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let args = std::iter::once("enterprise-gateway")
            .chain(cli.iter().copied())
            .map(OsString::from);
        let raw = options::parse(args, &env)?;
        build(&raw, &env)
    }

    #[test]
    fn defaults_match_enterprise_gateway() {
        let s = settings(&[], &[("HOME", "/home/x")]).expect("valid");
        assert_eq!(s.port, 8888);
        assert_eq!(s.ip, "127.0.0.1");
        assert_eq!(s.gateway.base_url, "/");
        // On, unlike EG: the list is per caller since kernels have owners.
        assert!(s.gateway.list_kernels);
        assert_eq!(s.gateway.unauthorized_users, vec!["root"]);
        assert_eq!(s.gateway.max_kernels, None);
        assert_eq!(s.gateway.max_kernels_per_user, None);
        assert_eq!(s.gateway.default_kernel_name, "python3");
        assert_eq!(s.gateway.launch_timeout, Duration::from_secs(30));
        assert_eq!(s.gateway.restart_limit, 5);
        assert!(s.gateway.culling.idle_timeout.is_zero());
        assert_eq!(s.gateway.culling.interval, Duration::from_secs(300));
        assert_eq!(
            s.local.runtime_dir,
            PathBuf::from("/home/x/.local/share/jupyter/runtime")
        );
        assert!(s.gateway.tls.is_none());
    }

    #[test]
    fn option_defaults_agree_with_the_library_defaults() {
        let s = settings(&[], &[]).expect("valid");
        let (ours, lib) = (&s.gateway, &GatewayConfig::default());
        assert_eq!(ours.base_url, lib.base_url);
        assert_eq!(ours.list_kernels, lib.list_kernels);
        assert_eq!(ours.max_kernels, lib.max_kernels);
        assert_eq!(ours.max_kernels_per_user, lib.max_kernels_per_user);
        assert_eq!(ours.default_kernel_name, lib.default_kernel_name);
        assert_eq!(ours.unauthorized_users, lib.unauthorized_users);
        assert_eq!(ours.port_range, lib.port_range);
        assert_eq!(ours.launch_timeout, lib.launch_timeout);
        assert_eq!(ours.max_launch_timeout, lib.max_launch_timeout);
        assert_eq!(ours.kernel_info_timeout, lib.kernel_info_timeout);
        assert_eq!(ours.shutdown_wait_time, lib.shutdown_wait_time);
        assert_eq!(ours.restart_limit, lib.restart_limit);
        assert_eq!(ours.restart_backoff, lib.restart_backoff);
        assert_eq!(ours.limits.max_connections, lib.limits.max_connections);
        assert_eq!(ours.limits.fd_reserve, lib.limits.fd_reserve);
        assert_eq!(
            ours.limits.client_memory_budget,
            lib.limits.client_memory_budget
        );
        assert_eq!(
            ours.limits.client_memory_share,
            lib.limits.client_memory_share
        );
        assert_eq!(ours.culling.idle_timeout, lib.culling.idle_timeout);
        assert_eq!(ours.culling.interval, lib.culling.interval);
        assert_eq!(ours.ws_ping_interval, lib.ws_ping_interval);
        assert_eq!(ours.ws_max_message_size, lib.ws_max_message_size);
        assert_eq!(ours.buffer_max_messages, lib.buffer_max_messages);
        assert_eq!(ours.buffer_max_bytes, lib.buffer_max_bytes);
        assert_eq!(ours.buffer_ttl, lib.buffer_ttl);
        assert_eq!(ours.shutdown_kernels_on_exit, lib.shutdown_kernels_on_exit);
    }

    #[test]
    fn log_levels_are_eg_names_numbers_or_filters() {
        for good in [
            "",
            "DEBUG",
            "info",
            "30",
            "Warning",
            "info,resource_managers=debug",
            "off",
        ] {
            assert!(log_filter(good).is_ok(), "{good}");
        }
        for bad in ["verbose", "info,loud", "resource_managers=chatty", "=debug"] {
            let err = log_filter(bad).expect_err(bad).to_string();
            assert!(err.starts_with("--log_level: "), "{err}");
        }
    }

    #[test]
    fn ssh_to_local_hosts_is_off_unless_asked_for() {
        let s = settings(&[], &[]).expect("valid");
        assert_eq!(
            s.ssh.ssh_to_local_hosts,
            SshOptions::default().ssh_to_local_hosts
        );
        assert!(!s.ssh.ssh_to_local_hosts);
        let s = settings(&[], &[("EG_SSH_LOCAL_HOSTS", "true")]).expect("valid");
        assert!(s.ssh.ssh_to_local_hosts);
        let s = settings(
            &["--ssh_local_hosts=false"],
            &[("EG_SSH_LOCAL_HOSTS", "true")],
        )
        .expect("valid");
        assert!(!s.ssh.ssh_to_local_hosts);
    }

    #[test]
    fn values_are_validated() {
        let s = settings(
            &[
                "--base_url=fake/path",
                "--EnterpriseGatewayApp.list_kernels=False",
            ],
            &[
                ("EG_MAX_KERNELS", "3"),
                ("EG_CLIENT_ENVS", "A, B"),
                ("EG_MAX_KERNELS_PER_USER", "2"),
            ],
        )
        .expect("valid");
        assert_eq!(s.gateway.base_url, "/fake/path/");
        assert!(!s.gateway.list_kernels);
        assert_eq!(s.gateway.max_kernels, Some(3));
        assert_eq!(s.gateway.max_kernels_per_user, Some(2));
        assert_eq!(s.gateway.env_policy.client_envs, vec!["A", "B"]);

        for (cli, needle) in [
            (&["--port=99999"][..], "--port"),
            (&["--ip=nowhere"][..], "--ip"),
            (&["--list_kernels=maybe"][..], "--list_kernels"),
            (&["--port_range=10000..10999"][..], "--port_range"),
            (&["--cull_idle_timeout=-1"][..], "--cull_idle_timeout"),
            (&["--certfile=/nonexistent.pem"][..], "--keyfile"),
        ] {
            let err = settings(cli, &[]).expect_err("invalid");
            assert!(format!("{err:#}").contains(needle), "{cli:?}: {err:#}");
        }
    }
}
