//! Stage two of the configuration: raw option text validated, once, into the immutable
//! [`GatewayConfig`] and the few settings only the binary needs (where to listen, logging,
//! the local backend's directories). Nothing downstream re-validates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::net::IpAddr;

use anyhow::{Context, anyhow, bail};
use gateway_http::GatewayConfig;
use gateway_http::config::{Cors, Culling, HttpLimits, MetricsAccess, Readiness, RestartBackoff};
use kernel_launcher::env::EnvPolicy;
use kernel_launcher::response::ListenerOptions;
use resource_managers::local::LocalConfig;
use resource_managers::ssh::SshOptions;
use resource_managers::ssh::{HostKeys, Secret, SshAuth};

use crate::options::Values;

/// Everything the binary needs to run.
#[derive(Debug)]
pub(crate) struct Settings {
    /// What the library needs, validated; handed to the manager as it is.
    pub(crate) gateway: GatewayConfig,
    /// Where local kernels' connection files and logs go, and the PATH their programs are
    /// found on.
    pub(crate) local: LocalConfig,
    /// The API's address (checked to be an IP address).
    pub(crate) ip: String,
    /// The API's port; the first one tried.
    pub(crate) port: u16,
    /// How many following ports are tried when it is busy (0: only `port`).
    pub(crate) port_retries: u16,
    /// Where the launcher callback listener binds, and how it behaves.
    pub(crate) response_bind: std::net::SocketAddr,
    /// What the callback listener advertises to launchers, and its own port retries.
    pub(crate) response_options: ListenerOptions,
    /// Hosts for distributed kernelspecs.
    pub(crate) remote_hosts: Vec<String>,
    /// How long a connect to a remote kernel's communication port may take (at least 0.1 s).
    pub(crate) comm_timeout: Duration,
    /// How the SSH backend reaches hosts: port, user, keys and known hosts, balancing.
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
    /// External resource-manager plugins from `--plugins_file`.
    pub(crate) plugins: Vec<resource_managers::external::PluginCommand>,
    /// The kernel store, unless `--store=none`.
    pub(crate) store: Option<StoreSettings>,
    /// What reading the configuration found worth a warning, for the log once it is set up.
    pub(crate) warnings: Vec<String>,
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

/// Validates the options into settings. `env` is the gateway's process environment.
pub(crate) fn build(o: &Values, env: &BTreeMap<String, String>) -> anyhow::Result<Settings> {
    let mut warnings = Vec::new();
    let home = env.get("HOME").map(PathBuf::from);
    let data_dir = env
        .get("JUPYTER_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".local/share/jupyter")))
        .unwrap_or_else(|| PathBuf::from("/tmp/jupyter"));
    let runtime_dir = o
        .runtime_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("runtime"));
    let log_dir = o
        .kernel_log_dir
        .clone()
        .unwrap_or_else(|| runtime_dir.clone());

    let path_dirs: Vec<PathBuf> = env
        .get("PATH")
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    let kernelspec_dirs = kernel_launcher::kernelspec::search_path(
        env.get("JUPYTER_PATH").map(String::as_str),
        home.as_deref(),
        &python_prefixes(env, &path_dirs),
        &o.kernelspec_dirs
            .iter()
            .map(PathBuf::from)
            .collect::<Vec<_>>(),
    );

    // Negative means no limit, as in EG.
    let max_kernels_per_user = usize::try_from(o.max_kernels_per_user).ok();

    let mut cull_interval = o.cull_interval;
    if cull_interval.is_zero() {
        cull_interval = Culling::default().interval;
        warnings.push(format!(
            "--cull_interval must be positive; using {} seconds",
            cull_interval.as_secs_f64()
        ));
    }

    let (auth, client_certificate_optional) = crate::auth::build(o)?;
    let tls = tls(o, client_certificate_optional)?;
    let limits = HttpLimits {
        max_head_bytes: o.max_header_bytes,
        max_body_bytes: o.max_body_bytes,
        header_timeout: o.header_timeout,
        body_timeout: o.body_timeout,
        max_connections_per_client: o.max_connections_per_client,
        max_connections: o.max_connections,
        fd_reserve: o.fd_reserve,
        client_memory_budget: o.client_memory_budget,
        client_memory_share: o.client_memory_share,
        ..HttpLimits::default()
    };
    if limits.header_timeout.is_zero() || limits.body_timeout.is_zero() {
        bail!("--header_timeout and --body_timeout must be positive");
    }
    // Accepted for compatibility with EG's configurations, and otherwise without effect.
    let _ = (&o.ssl_version, o.trust_xheaders, &o.kernel_headers);

    let gateway = GatewayConfig {
        base_url: normalise_base_url(&o.base_url),
        auth,
        limits,
        cors: Cors {
            allow_origin: o.allow_origin.clone(),
            allow_credentials: o.allow_credentials.clone(),
            allow_headers: o.allow_headers.clone(),
            allow_methods: o.allow_methods.clone(),
            expose_headers: o.expose_headers.clone(),
            max_age: o.max_age.clone(),
        },
        list_kernels: o.list_kernels,
        max_kernels: o.max_kernels,
        max_kernels_per_user,
        default_kernel_name: o.default_kernel_name.clone(),
        allowed_kernelspecs: o.allowed_kernelspecs.clone(),
        authorized_users: o.authorized_users.clone(),
        unauthorized_users: o.unauthorized_users.clone(),
        env_policy: EnvPolicy {
            client_envs: o.client_envs.clone(),
            inherited_envs: o.inherited_envs.clone(),
            max_total_bytes: o.max_env_bytes,
        },
        gateway_env: env.clone(),
        gateway_user: gateway_user(env),
        impersonation_enabled: o.impersonation_enabled,
        port_range: o.port_range,
        kernelspec_dirs,
        root_dir: env
            .get("PWD")
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/")),
        launch_timeout: o.launch_timeout,
        max_launch_timeout: o.max_launch_timeout,
        kernel_info_timeout: o.kernel_info_timeout,
        shutdown_wait_time: o.shutdown_wait_time,
        restart_limit: o.restart_limit,
        restart_backoff: RestartBackoff {
            initial: o.restart_backoff_initial,
            max: o.restart_backoff_max,
        },
        culling: Culling {
            idle_timeout: o.cull_idle_timeout,
            interval: cull_interval,
            cull_connected: o.cull_connected,
            cull_busy: o.cull_busy,
            busy_timeout: o.cull_busy_timeout,
        },
        ws_ping_interval: o.ws_ping_interval,
        ws_max_message_size: o.ws_max_message_size,
        buffer_max_messages: o.buffer_max_messages,
        buffer_max_bytes: o.buffer_max_bytes,
        buffer_ttl: o.buffer_ttl,
        shutdown_kernels_on_exit: o.shutdown_kernels_on_exit,
        tls,
        metrics_access: if o.metrics_port.is_some() {
            MetricsAccess::Elsewhere
        } else {
            MetricsAccess::Admin
        },
        readiness: Readiness::default(),
    };
    if gateway.max_launch_timeout < gateway.launch_timeout {
        bail!("--max_launch_timeout must not be below --launch_timeout");
    }

    let bind_ip = if o.response_addr_any {
        IpAddr::from([0, 0, 0, 0])
    } else {
        o.response_ip
            .unwrap_or_else(kernel_launcher::net::primary_local_ip)
    };
    let response_bind = std::net::SocketAddr::new(bind_ip, o.response_port);
    let response_options = ListenerOptions {
        advertise_ip: o.response_ip,
        port_retries: o.response_port_retries,
        ..ListenerOptions::default()
    };
    let ssh = SshOptions {
        port: o.ssh_port,
        remote_user: o.remote_user.clone(),
        impersonation: o.impersonation_enabled,
        auth: SshAuth {
            key_file: o.ssh_key_file.clone(),
            key_passphrase: None,
            agent_socket: env.get("SSH_AUTH_SOCK").map(PathBuf::from),
            password: o.remote_pwd.clone().map(Secret::new),
        },
        host_keys: HostKeys {
            known_hosts: o
                .ssh_known_hosts
                .clone()
                .or_else(|| home.as_ref().map(|h| h.join(".ssh/known_hosts"))),
            accept_unknown: o.ssh_accept_unknown_hosts,
        },
        load_balancing: o.load_balancing_algorithm,
        tunneling: o.enable_tunneling,
        ssh_to_local_hosts: o.ssh_local_hosts,
        ..SshOptions::default()
    };
    let yarn = YarnSettings {
        endpoint: o.yarn_endpoint.clone(),
        alt_endpoint: o.alt_yarn_endpoint.clone(),
        conf_dir: o.hadoop_conf_dir.clone(),
        kerberos: o.yarn_endpoint_security_enabled,
        ca_bundle: o.yarn_cert_bundle.clone(),
    };
    let comm_timeout = o.socket_timeout.max(Duration::from_millis(100));

    let store = store_settings(o, &data_dir)?;
    let profiles = match &o.profiles_file {
        Some(path) => crate::profiles::load(path, &gateway.env_policy)?,
        None => Default::default(),
    };
    Ok(Settings {
        store,
        ssh,
        yarn,
        response_bind,
        response_options,
        remote_hosts: o.remote_hosts.clone(),
        comm_timeout,
        local: LocalConfig {
            runtime_dir,
            log_dir,
            ip: "127.0.0.1".to_owned(),
            search_path: path_dirs,
        },
        gateway,
        ip: o.ip.to_string(),
        port: o.port,
        port_retries: o.port_retries,
        metrics_enabled: o.metrics_enabled,
        metrics_port: o.metrics_port,
        profiles,
        profiles_file: o.profiles_file.clone(),
        plugins: match &o.plugins_file {
            Some(path) => crate::plugins::load(path)?,
            None => Vec::new(),
        },
        warnings,
    })
}

fn tls(
    o: &Values,
    client_certificate_optional: bool,
) -> anyhow::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
    match (&o.certfile, &o.keyfile) {
        (None, None) if o.client_ca.is_none() => Ok(None),
        (Some(cert), Some(key)) => {
            let config = gateway_http::tls::server_config(
                cert,
                key,
                o.client_ca.as_deref(),
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
fn store_settings(o: &Values, data_dir: &Path) -> anyhow::Result<Option<StoreSettings>> {
    let location = match &o.store {
        Some(text) if text.eq_ignore_ascii_case("none") => return Ok(None),
        Some(text) => text.clone(),
        None => data_dir.join("kernels.sqlite").display().to_string(),
    };
    let lease_ttl = o.lease_ttl;
    if lease_ttl < Duration::from_secs(1) {
        bail!("--lease_ttl: must be at least 1 second");
    }
    let gateway_id = o.gateway_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{host}:{}", o.port)
    });
    let ca_file = o.store_ca_file.clone();
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
        build(&Values::read(&raw)?, &env)
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
    fn warnings_are_collected_for_the_log() {
        let s = settings(&[], &[]).expect("valid");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let s = settings(&["--cull_interval=0"], &[]).expect("valid");
        assert_eq!(s.gateway.culling.interval, Duration::from_secs(300));
        assert_eq!(
            s.warnings,
            vec!["--cull_interval must be positive; using 300 seconds"]
        );
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
