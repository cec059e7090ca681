//! The `enterprise-gateway` binary: configuration in, `serve` called, errors out.
//!
//! Configuration is layered (CLI > environment > config file > defaults, see `options`) and
//! validated once (`settings`); everything else lives in the library crates.
//! `enterprise-gateway token add|list|revoke` manages the per-user token file (`token_cmd`).

mod auth;
mod backends;
mod docker;
mod egconfig;
mod kubernetes;
mod listen;
mod memory;
mod optdef;
mod options;
mod plugins;
mod profiles;
mod settings;
mod store;
mod token_cmd;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use gateway_http::KernelManager;

/// Exit code for configuration errors (sysexits' EX_USAGE).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    if std::env::args_os().nth(1).is_some_and(|a| a == "token") {
        return token_cmd::main(std::env::args_os().skip(1), &env);
    }
    let raw = match options::parse(std::env::args_os(), &env) {
        Ok(raw) => raw,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return usage_error(clap_message(&e)),
    };
    if let Some(text) = raw.output() {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    // One crypto provider for every TLS user in the process, installed before anything builds a config.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let values = match options::Values::read(&raw) {
        Ok(values) => values,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    // Logging first, so what authenticators log while loading their files is not lost; what
    // reading the configuration found is logged as soon as logging is up.
    let filter = match values.log_level.filter() {
        Ok(filter) => filter,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    init_logging(filter, values.log_format);
    if !raw.unsupported().is_empty() {
        tracing::warn!(
            "ignoring settings this gateway does not support: {}",
            raw.unsupported().join("; ")
        );
    }
    let settings = match settings::build(&values, &env) {
        Ok(s) => s,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("enterprise-gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-file limit to the hard one, as servers commonly do: the gateway caps its
/// connections at the soft limit less `--fd_reserve`, and a default soft limit of 1024 would
/// leave room for few.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open-file limit"),
    }
}

/// A configuration error, in the one form every such error has, and EX_USAGE.
fn usage_error(message: String) -> ExitCode {
    eprintln!("enterprise-gateway: error: {message}");
    ExitCode::from(EX_USAGE)
}

/// clap's message without its own `error: ` prefix (its usage kept), an unknown option with
/// the nearest real one.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.trim_end();
    let text = text.strip_prefix("error: ").unwrap_or(text);
    let unknown = e
        .get(clap::error::ContextKind::InvalidArg)
        .map(|arg| arg.to_string());
    match unknown.as_deref().and_then(options::nearest_flag) {
        Some(near) => match text.split_once('\n') {
            Some((first, rest)) => format!("{first} (did you mean {near}?)\n{rest}"),
            None => format!("{text} (did you mean {near}?)"),
        },
        None => text.to_owned(),
    }
}

/// The log subscriber: the `--log_level` filter, then one output layer on stderr: text,
/// coloured only when stderr is a terminal, or (`--log_format=json`) one JSON object per line
/// whose event fields (`kernel_id`, `user`, ...) sit at the top level beside `timestamp`,
/// `level`, `target` and `message`.
fn init_logging(filter: tracing_subscriber::EnvFilter, format: optdef::LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let registry = tracing_subscriber::registry().with(filter);
    if format == optdef::LogFormat::Json {
        let json = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr);
        registry.with(json).init();
    } else {
        let text = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
        registry.with(text).init();
    }
}

async fn run(settings: settings::Settings) -> anyhow::Result<()> {
    let listener = listen::bind(&settings.ip, settings.port, settings.port_retries).await?;
    let addr = listener.local_addr().context("listener has no address")?;
    for dir in [&settings.local.runtime_dir, &settings.local.log_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }

    warn_about_impersonation(&settings.gateway);
    tokio::spawn(memory::return_freed_memory());
    if settings.metrics_enabled {
        gateway_http::metrics::install().context("cannot record metrics")?;
        tokio::spawn(gateway_http::metrics::upkeep());
    }
    let registry = backends::registry(&settings).await;
    let scheme = if settings.gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let config = Arc::new(settings.gateway);
    if config.auth.is_enabled() {
        tokio::spawn(listen::reload_on_hangup(config.auth.clone()));
    }
    let manager = store::manager(config, registry, settings.store.as_ref()).await?;
    manager.set_profiles(settings.profiles);
    if let Some(path) = settings.profiles_file {
        tokio::spawn(listen::reload_profiles_on_hangup(
            Arc::clone(&manager),
            path,
        ));
    }
    if let Some(port) = settings.metrics_port {
        let metrics = listen::bind(&settings.ip, port, 0).await?;
        tracing::info!(
            "metrics are served at http://{}/metrics",
            metrics.local_addr()?
        );
        tokio::spawn(gateway_http::metrics::serve(metrics, Arc::clone(&manager)));
    }
    warn_about_kernelspecs(&manager);

    tracing::info!(
        "Jupyter Enterprise Gateway (Rust) {} is available at {scheme}://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    gateway_http::serve(listener, manager, listen::shutdown_signal())
        .await
        .context("server failed")
}

/// No kernelspec, or a default kernel that is not there, is said at start rather than found out
/// by the first client.
fn warn_about_kernelspecs(manager: &KernelManager) {
    let config = manager.config();
    let specs = manager.kernelspecs();
    let looked_in = || {
        config
            .kernelspec_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if specs.specs.is_empty() {
        let allowed = if config.allowed_kernelspecs.is_empty() {
            String::new()
        } else {
            format!(
                " (only {} allowed by --allowed_kernelspecs)",
                config.allowed_kernelspecs.join(", ")
            )
        };
        tracing::warn!(
            "no kernelspecs found{allowed}; looked in {}; set JUPYTER_PATH or --kernelspec_dirs",
            looked_in()
        );
    } else if !specs.specs.contains_key(&config.default_kernel_name) {
        tracing::warn!(
            "the default kernel {:?} (--default_kernel_name) is not among the kernelspecs found \
             ({}), so it is not advertised and start requests without a kernel name fail",
            config.default_kernel_name,
            specs.specs.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
}

/// EG's start-up warnings about impersonation.
fn warn_about_impersonation(config: &gateway_http::GatewayConfig) {
    if !config.impersonation_enabled {
        return;
    }
    if !config.unauthorized_users.contains(&config.gateway_user) {
        tracing::warn!(
            "impersonation is enabled and the gateway's user {:?} is not in unauthorized_users",
            config.gateway_user
        );
    }
    if !nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "impersonation is enabled but the gateway does not run as root: local kernels can only run as its own user"
        );
    }
}
