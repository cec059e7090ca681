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

/// Resolves on SIGTERM or SIGINT; SIGHUP is ignored, as EG does.
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
            _ = hup.recv() => tracing::info!("SIGHUP ignored"),
        }
    }
    tracing::info!("shutting down");
}
