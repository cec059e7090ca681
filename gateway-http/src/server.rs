//! The serve loop: accept, TCP_NODELAY, optional TLS, HTTP/1.1 (and h2c) with upgrades for
//! WebSockets, graceful shutdown.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tower::ServiceExt as _;

use crate::KernelManager;
use crate::auth::ConnectionInfo;
use crate::io::{QUEUE_LIMIT, QueuedWriter};

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves [`crate::api::router`] on `listener` until `shutdown` resolves: plain HTTP, or HTTPS when
/// the configuration has TLS settings. Then it stops accepting, lets open requests finish (up to
/// `shutdown_wait_time`), and shuts the kernels down through [`KernelManager::shutdown_all`].
pub async fn serve(
    listener: TcpListener,
    manager: Arc<KernelManager>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = Arc::clone(manager.config());
    let service = crate::api::router(Arc::clone(&manager));
    let tls = config.tls.clone().map(TlsAcceptor::from);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Without this, small request/reply exchanges wait on Nagle + delayed ACK (~40 ms).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let (builder, service, tls, stop) =
            (builder.clone(), service.clone(), tls.clone(), stop.clone());
        connections.spawn(async move {
            let mut info = ConnectionInfo {
                peer,
                client_certificate: None,
            };
            match tls {
                None => serve_connection(&builder, stream, service, info, &stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            info.client_certificate = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|leaf| Arc::new(leaf.clone().into_owned()));
                            serve_connection(&builder, stream, service, info, &stop).await
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracing::info!("shutting down: no longer accepting connections");
    drop(listener);
    stop.cancel();
    connections.close();
    if tokio::time::timeout(config.shutdown_wait_time, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the shutdown wait"
        );
    }
    manager.shutdown_all().await;
    Ok(())
}

/// One connection until it ends, or until shutdown asks it to finish its current request.
/// Every request on it carries `info` in its extensions.
async fn serve_connection<S>(
    builder: &auto::Builder<TokioExecutor>,
    stream: S,
    router: axum::Router,
    info: ConnectionInfo,
    stop: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router.map_request(
        move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(info.clone());
            request
        },
    ));
    // The queue sits outermost, so WebSocket writes on the upgraded connection go through it.
    let stream = QueuedWriter::new(stream, QUEUE_LIMIT);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}
