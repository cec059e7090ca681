//! A kernel's ZeroMQ sockets, as one unit per kernel incarnation.
//!
//! A zeromq DEALER does not recover when its peer restarts on the same port, so after a kernel restart
//! callers drop the whole unit and connect a new one.
use std::time::Duration;

use tokio::sync::mpsc;

use crate::{Channel, ConnectionInfo, Error, Message};

/// Socket settings.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Every connect is bounded by this.
    pub connect_timeout: Duration,
    /// Incoming messages larger than this (all frames together) are dropped with a log line.
    pub max_message_size: usize,
    /// Capacity, in messages, of the buffer the iopub drain task fills.
    pub iopub_capacity: usize,
    /// Capacity, in messages, of the reply buffer of shell/control/stdin.
    pub reply_capacity: usize,
}

impl Default for SocketOptions {
    fn default() -> SocketOptions {
        todo!()
    }
}

/// Sends signed messages on shell, control or stdin. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChannelSender {}

impl ChannelSender {
    /// Signs `msg` with the kernel's key and sends it on `channel` (shell, control or stdin).
    pub async fn send(&self, channel: Channel, msg: Message) -> Result<(), Error> {
        todo!()
    }
}

/// Shell, control and stdin DEALER sockets of one client session; all three use the session id as
/// their ZMQ identity so replies and input requests are routed to this session.
#[derive(Debug)]
pub struct SessionChannels {
    /// Sends requests.
    pub sender: ChannelSender,
    /// Verified replies (shell, control) and input requests (stdin), tagged with their channel.
    pub replies: mpsc::Receiver<(Channel, Message)>,
}

impl SessionChannels {
    /// Connects the three DEALERs for `session_id`.
    pub async fn connect(info: &ConnectionInfo, session_id: &str, opts: &SocketOptions) -> Result<SessionChannels, Error> {
        todo!()
    }
}

/// An iopub SUB (subscribed to all topics) drained by its own task into a bounded buffer, so a slow
/// consumer never makes the kernel's publisher drop messages.
#[derive(Debug)]
pub struct IopubSubscription {
    /// Verified iopub messages in arrival order.
    pub messages: mpsc::Receiver<Message>,
}

impl IopubSubscription {
    /// Connects and starts the drain task; the task ends when `messages` is dropped.
    pub async fn connect(info: &ConnectionInfo, opts: &SocketOptions) -> Result<IopubSubscription, Error> {
        todo!()
    }
}

/// Heartbeat REQ; rebuilt after every timeout as jupyter_client does.
#[derive(Debug)]
pub struct Heartbeat {}

impl Heartbeat {
    /// Prepares a heartbeat for the kernel (connects lazily).
    pub fn new(info: &ConnectionInfo, opts: &SocketOptions) -> Heartbeat {
        todo!()
    }
    /// Sends a ping and waits up to `timeout` for the echo.
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), Error> {
        todo!()
    }
}

/// All of a kernel's sockets as one unit.
#[derive(Debug)]
pub struct KernelSockets {
    /// Shell, control, stdin.
    pub session: SessionChannels,
    /// IOPub.
    pub iopub: IopubSubscription,
    /// Heartbeat.
    pub heartbeat: Heartbeat,
}

impl KernelSockets {
    /// Connects every socket of the kernel for `session_id`.
    pub async fn connect(info: &ConnectionInfo, session_id: &str, opts: &SocketOptions) -> Result<KernelSockets, Error> {
        todo!()
    }
}
