//! The `enterprise-gateway` binary: configuration in, `serve` called, errors out.
//!
//! Configuration is layered (CLI > environment > config file > defaults, see `options`) and
//! validated once (`settings`); everything else lives in the library crates.

mod options;
mod settings;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use gateway_http::KernelManager;
use kernel_launcher::response::ResponseListener;
use resource_managers::Registry;
use resource_managers::local::LocalResourceManager;
use resource_managers::ssh::{SshConfig, SshResourceManager};

/// Exit code for configuration errors (sysexits' EX_USAGE).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let raw = match options::parse(std::env::args_os(), &env) {
        Ok(raw) => raw,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // One crypto provider for every TLS user in the process, installed before anything builds a config.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let settings = match settings::build(&raw, &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("enterprise-gateway: {e:#}");
            return ExitCode::from(EX_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&settings.log_filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
            eprintln!("enterprise-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: settings::Settings) -> anyhow::Result<()> {
    let listener = bind(&settings.ip, settings.port, settings.port_retries).await?;
    let addr = listener.local_addr().context("listener has no address")?;
    for dir in [&settings.local.runtime_dir, &settings.local.log_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }

    let mut registry = Registry::new();
    registry.register(Arc::new(LocalResourceManager::new(settings.local.clone())));
    match ResponseListener::bind(settings.response_bind, settings.response_options.clone()).await {
        Ok(response) => registry.register(Arc::new(SshResourceManager::new(SshConfig {
            remote_hosts: settings.remote_hosts.clone(),
            log_dir: settings.local.log_dir.clone(),
            response,
            search_path: settings.local.search_path.clone(),
            comm_timeout: settings.comm_timeout,
        }))),
        Err(e) => tracing::warn!(
            "launcher callback listener could not bind {}: {e}; distributed kernelspecs are unavailable",
            settings.response_bind
        ),
    }
    let scheme = if settings.gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let config = Arc::new(settings.gateway);
    let manager = KernelManager::new(config, registry);

    tracing::info!(
        "Jupyter Enterprise Gateway (Rust) {} is available at {scheme}://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    gateway_http::serve(listener, manager, shutdown_signal())
        .await
        .context("server failed")
}

/// Binds `port`, or one of the next `retries` ports when it is busy (as EG does).
async fn bind(ip: &str, port: u16, retries: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let mut last_err = None;
    for offset in 0..=retries {
        let Some(candidate) = port.checked_add(offset) else {
            break;
        };
        match tokio::net::TcpListener::bind((ip, candidate)).await {
            Ok(listener) => return Ok(listener),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                tracing::info!("port {candidate} is not available: {e}");
                last_err = Some(e);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {ip}:{candidate}")),
        }
    }
    Err(anyhow::anyhow!(
        "the gateway server could not be started because no available port could be found ({})",
        last_err.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Resolves on SIGTERM or SIGINT; SIGHUP is ignored, as EG does.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the gateway with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => tracing::info!("SIGHUP ignored"),
        }
    }
    tracing::info!("shutting down");
}
