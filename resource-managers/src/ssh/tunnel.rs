//! Kernel ports tunnelled through the SSH connection (`EG_ENABLE_TUNNELING`, reference §12.2).
//!
//! For each kernel port a listener on `127.0.0.1` (a port in the kernel's port range) accepts
//! the gateway's connections and pipes each one through a `direct-tcpip` channel to
//! `127.0.0.1:<remote port>` as the remote host sees it, so kernels bound to the remote loopback
//! are reachable. Communication-port requests open a channel per request
//! ([`send_comm`]): a refused channel means the launcher is gone, as a refused TCP connect does.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use jupyter_protocol::ConnectionInfo;
use kernel_launcher::{CommOutcome, PortRange};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::session::Session;
use crate::Error;

/// Where tunnels lead on the remote side.
pub(crate) const REMOTE_LOOPBACK: &str = "127.0.0.1";

/// Running tunnels; dropping them stops the listeners and every piped connection.
#[derive(Debug)]
pub(crate) struct Tunnels {
    session: Arc<Session>,
    tasks: JoinSet<()>,
}

impl Tunnels {
    /// Tunnels for the five ports of a kernel that `remote` describes as its launcher reported
    /// it; returns them with the connection info the gateway uses (the local listeners'
    /// ports on `127.0.0.1`, the rest as in `remote`).
    pub(crate) fn for_kernel(
        session: Arc<Session>,
        remote: &ConnectionInfo,
        range: PortRange,
    ) -> Result<(Tunnels, ConnectionInfo), Error> {
        let ports = [
            remote.shell_port,
            remote.iopub_port,
            remote.stdin_port,
            remote.control_port,
            remote.hb_port,
        ];
        let (tunnels, local) = Tunnels::open(session, &ports, range)?;
        let mut connection = remote.clone();
        if let [shell, iopub, stdin, control, hb] = local[..] {
            connection.ip = Ipv4Addr::LOCALHOST.to_string();
            connection.shell_port = shell;
            connection.iopub_port = iopub;
            connection.stdin_port = stdin;
            connection.control_port = control;
            connection.hb_port = hb;
        }
        Ok((tunnels, connection))
    }

    /// Starts one local listener per remote port; returns the local ports in the same order.
    fn open(
        session: Arc<Session>,
        remote_ports: &[u16],
        range: PortRange,
    ) -> Result<(Tunnels, Vec<u16>), Error> {
        let mut tasks = JoinSet::new();
        let mut local_ports = Vec::with_capacity(remote_ports.len());
        for &remote in remote_ports {
            let std_listener = range.bind_listener(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
            std_listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(std_listener)?;
            local_ports.push(listener.local_addr()?.port());
            tasks.spawn(serve(listener, Arc::clone(&session), remote));
        }
        Ok((Tunnels { session, tasks }, local_ports))
    }

    /// The connection the tunnels use.
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Stops every listener and piped connection.
    pub(crate) fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn serve(listener: TcpListener, session: Arc<Session>, remote: u16) {
    let mut pipes = JoinSet::new();
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("tunnel accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while pipes.try_join_next().is_some() {}
        let session = Arc::clone(&session);
        pipes.spawn(async move {
            let _ = stream.set_nodelay(true);
            match open_with_retry(&session, remote, peer).await {
                Ok(channel) => {
                    let mut remote_stream = channel.into_stream();
                    if let Err(e) =
                        tokio::io::copy_bidirectional(&mut stream, &mut remote_stream).await
                    {
                        tracing::debug!(remote, "tunnelled connection ended: {e}");
                    }
                }
                Err(e) => tracing::debug!("tunnel to remote port {remote} refused: {e}"),
            }
        });
    }
}

/// Opens the channel for one piped connection. A kernel that has not bound its port yet refuses
/// it; the gateway's ZeroMQ sockets would retry a refused direct connection, so the tunnel keeps
/// the local connection open and retries for a while instead of failing it.
async fn open_with_retry(
    session: &Session,
    remote: u16,
    peer: SocketAddr,
) -> Result<russh::Channel<russh::client::Msg>, super::session::SessionError> {
    let deadline = tokio::time::Instant::now() + OPEN_RETRY_FOR;
    loop {
        match session.open_direct(REMOTE_LOOPBACK, remote, peer).await {
            Ok(channel) => return Ok(channel),
            Err(e) if session.is_closed() || tokio::time::Instant::now() >= deadline => {
                return Err(e);
            }
            Err(_) => tokio::time::sleep(OPEN_RETRY_EVERY).await,
        }
    }
}

/// How long a piped connection waits for the kernel's port to accept.
const OPEN_RETRY_FOR: Duration = Duration::from_secs(30);
const OPEN_RETRY_EVERY: Duration = Duration::from_millis(100);

/// Sends one communication-port request through the SSH connection.
///
/// The channel is opened and written by a task of its own (as [`CommPort::send`] does for a
/// direct port), so a caller that stops waiting cannot cut the request between the open and the
/// write: the launcher would read an empty request, and Toree's listener thread dies on one.
///
/// [`CommPort::send`]: kernel_launcher::CommPort::send
pub(crate) async fn send_comm(
    session: Arc<Session>,
    port: u16,
    request: &serde_json::Value,
    timeout: Duration,
) -> CommOutcome {
    if session.is_closed() {
        return CommOutcome::Unknown("the SSH connection of the tunnel has ended".to_owned());
    }
    let bytes = request.to_string();
    let origin = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let attempt = async move {
        let channel = match session.open_direct(REMOTE_LOOPBACK, port, origin).await {
            Ok(channel) => channel,
            Err(e) => {
                tracing::debug!("communication port {port} through the tunnel: {e}");
                return CommOutcome::Refused;
            }
        };
        let mut stream = channel.into_stream();
        let written = async {
            stream.write_all(bytes.as_bytes()).await?;
            stream.shutdown().await
        };
        match written.await {
            Ok(()) => CommOutcome::Delivered,
            Err(e) => CommOutcome::Unknown(format!("tunnelled port {port}: {e}")),
        }
    };
    let task = tokio::spawn(async move {
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                CommOutcome::Unknown(format!(
                    "tunnelled port {port}: no answer within {timeout:?}"
                ))
            })
    });
    task.await.unwrap_or_else(|e| {
        CommOutcome::Unknown(format!(
            "tunnelled port {port}: the request task failed: {e}"
        ))
    })
}
