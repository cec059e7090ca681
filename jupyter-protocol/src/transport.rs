//! The socket layer behind a small trait, so an encrypted transport (CurveZMQ, JEP 145) can be added
//! later without touching callers. [`ZmqTransport`] implements it with the pure-Rust `zeromq` crate.
//!
//! A transport only moves multipart messages (`Vec<Bytes>`, one entry per ZeroMQ frame). Signing,
//! verification, timeouts and buffering live above it, in [`crate::sockets`]. Implementations do
//! not bound their own connects: callers wrap them in `tokio::time::timeout`, and dropping a
//! connect future must abandon it.
use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::Error;

/// The sending half of a connected socket.
#[async_trait]
pub trait FrameSink: Send + fmt::Debug {
    /// Queues one multipart message. `Ok` means it entered the local send path, not that the peer
    /// received it.
    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), Error>;
}

/// The receiving half of a connected socket.
#[async_trait]
pub trait FrameStream: Send + fmt::Debug {
    /// Waits for the next multipart message. Must be cancel-safe: dropping the future loses
    /// nothing.
    async fn recv(&mut self) -> Result<Vec<Bytes>, Error>;
}

/// A request socket: one request, then one reply.
#[async_trait]
pub trait RequestSocket: Send + fmt::Debug {
    /// Sends a request and waits for its reply. If the future is dropped before the reply arrives
    /// the socket is unusable; drop it and connect a new one.
    async fn request(&mut self, frames: Vec<Bytes>) -> Result<Vec<Bytes>, Error>;
}

/// A way to reach a kernel's sockets.
#[async_trait]
pub trait KernelTransport: Send + Sync + fmt::Debug {
    /// Connects a DEALER with the given routing identity (shell, control, stdin).
    async fn connect_dealer(
        &self,
        endpoint: &str,
        identity: &[u8],
    ) -> Result<(Box<dyn FrameSink>, Box<dyn FrameStream>), Error>;

    /// Connects a SUB subscribed to every topic (iopub).
    async fn connect_sub(&self, endpoint: &str) -> Result<Box<dyn FrameStream>, Error>;

    /// Connects a REQ (heartbeat).
    async fn connect_req(&self, endpoint: &str) -> Result<Box<dyn RequestSocket>, Error>;
}

/// [`KernelTransport`] over the pure-Rust `zeromq` crate, with the NULL security mechanism.
///
/// The crate sets `TCP_NODELAY` on every TCP connection it makes, and its own connect loop retries
/// refused connections until the caller's timeout expires.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZmqTransport;

fn transport_err(err: zeromq::ZmqError) -> Error {
    Error::Transport(err.to_string())
}

fn socket_options() -> zeromq::SocketOptions {
    let mut options = zeromq::SocketOptions::default();
    // Callers bound connects with tokio timers, which tests can pause.
    options.no_connect_timeout();
    options
}

/// Waits until a `tcp://host:port` endpoint accepts TCP connections, probing every 10 ms.
///
/// The `zeromq` crate retries a refused connect with exponential backoff (up to seconds between
/// attempts), so a socket connected while its kernel is still starting would notice the kernel
/// late; a cheap probe first makes the real connect succeed on its first attempt. The caller's
/// timeout bounds the wait. Other transports return at once.
async fn wait_until_listening(endpoint: &str) {
    let Some(addr) = endpoint.strip_prefix("tcp://") else {
        return;
    };
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn to_zmq(frames: Vec<Bytes>) -> Result<ZmqMessage, Error> {
    ZmqMessage::try_from(frames)
        .map_err(|_| Error::Transport("cannot send an empty message".into()))
}

#[async_trait]
impl KernelTransport for ZmqTransport {
    async fn connect_dealer(
        &self,
        endpoint: &str,
        identity: &[u8],
    ) -> Result<(Box<dyn FrameSink>, Box<dyn FrameStream>), Error> {
        let mut options = socket_options();
        let identity = zeromq::util::PeerIdentity::try_from(identity).map_err(transport_err)?;
        options.peer_identity(identity);
        let mut socket = zeromq::DealerSocket::with_options(options);
        wait_until_listening(endpoint).await;
        socket.connect(endpoint).await.map_err(transport_err)?;
        let (send, recv) = socket.split();
        Ok((Box::new(DealerSink(send)), Box::new(DealerStream(recv))))
    }

    async fn connect_sub(&self, endpoint: &str) -> Result<Box<dyn FrameStream>, Error> {
        let mut socket = zeromq::SubSocket::with_options(socket_options());
        wait_until_listening(endpoint).await;
        socket.connect(endpoint).await.map_err(transport_err)?;
        socket.subscribe("").await.map_err(transport_err)?;
        Ok(Box::new(SubStream(socket)))
    }

    async fn connect_req(&self, endpoint: &str) -> Result<Box<dyn RequestSocket>, Error> {
        let mut socket = zeromq::ReqSocket::with_options(socket_options());
        wait_until_listening(endpoint).await;
        socket.connect(endpoint).await.map_err(transport_err)?;
        Ok(Box::new(ReqRequest(socket)))
    }
}

struct DealerSink(zeromq::DealerSendHalf);
struct DealerStream(zeromq::DealerRecvHalf);
struct SubStream(zeromq::SubSocket);
struct ReqRequest(zeromq::ReqSocket);

macro_rules! opaque_debug {
    ($($name:ident),*) => {$(
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    )*};
}
opaque_debug!(DealerSink, DealerStream, SubStream, ReqRequest);

#[async_trait]
impl FrameSink for DealerSink {
    async fn send(&mut self, frames: Vec<Bytes>) -> Result<(), Error> {
        self.0.send(to_zmq(frames)?).await.map_err(transport_err)
    }
}

#[async_trait]
impl FrameStream for DealerStream {
    async fn recv(&mut self) -> Result<Vec<Bytes>, Error> {
        self.0
            .recv()
            .await
            .map(ZmqMessage::into_vec)
            .map_err(transport_err)
    }
}

#[async_trait]
impl FrameStream for SubStream {
    async fn recv(&mut self) -> Result<Vec<Bytes>, Error> {
        self.0
            .recv()
            .await
            .map(ZmqMessage::into_vec)
            .map_err(transport_err)
    }
}

#[async_trait]
impl RequestSocket for ReqRequest {
    async fn request(&mut self, frames: Vec<Bytes>) -> Result<Vec<Bytes>, Error> {
        self.0.send(to_zmq(frames)?).await.map_err(transport_err)?;
        self.0
            .recv()
            .await
            .map(ZmqMessage::into_vec)
            .map_err(transport_err)
    }
}
