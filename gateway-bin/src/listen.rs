//! The HTTP listener (with EG's port retries) and the signals that stop the gateway.

use anyhow::Context;

/// Binds `port`, or one of the next `retries` ports when it is busy (as EG does).
pub(crate) async fn bind(
    ip: &str,
    port: u16,
    retries: u16,
) -> anyhow::Result<tokio::net::TcpListener> {
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

/// Resolves on SIGTERM or SIGINT. SIGHUP never stops the gateway (EG ignores it; here it
/// reloads the authenticators' files, see [`reload_on_hangup`]).
pub(crate) async fn shutdown_signal() {
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
            _ = hup.recv() => {}
        }
    }
    tracing::info!("shutting down");
}

/// On every SIGHUP, re-reads the files the authenticators loaded (the token file); a file that
/// fails to load is logged and its authenticator keeps what it had.
pub(crate) async fn reload_on_hangup(auth: gateway_http::auth::Authenticators) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::error!(
                "cannot listen for SIGHUP ({e}); authenticator files reload only when they change"
            );
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the authenticators' files");
        let auth = auth.clone();
        match tokio::task::spawn_blocking(move || auth.reload()).await {
            Ok(errors) => {
                for error in errors {
                    tracing::error!("reload failed, the previous state stays in force: {error}");
                }
            }
            Err(e) => tracing::error!("the reload task failed: {e}"),
        }
    }
}

/// On every SIGHUP, re-reads the profiles file and puts its profiles and pool sizes in force;
/// running kernels keep what they were started with. A file that does not validate is logged
/// and the profiles in force stay.
pub(crate) async fn reload_profiles_on_hangup(
    manager: std::sync::Arc<gateway_http::KernelManager>,
    path: std::path::PathBuf,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP ({e}); profiles will not be reloaded");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let policy = manager.config().env_policy.clone();
        let file = path.clone();
        match tokio::task::spawn_blocking(move || crate::profiles::load(&file, &policy)).await {
            Ok(Ok(set)) => {
                tracing::info!(
                    profiles = set.profiles.len(),
                    pools = set.pools.len(),
                    "SIGHUP: kernel profiles reloaded"
                );
                manager.set_profiles(set);
            }
            Ok(Err(error)) => {
                tracing::error!(
                    "profiles reload failed, the previous profiles stay in force: {error:#}"
                );
            }
            Err(e) => tracing::error!("the profiles reload task failed: {e}"),
        }
    }
}
