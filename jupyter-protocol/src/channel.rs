//! The five kernel channels.

/// A kernel channel. `Iopub` and `Heartbeat` are never written to by clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Requests and replies (DEALER ⇄ kernel ROUTER).
    Shell,
    /// Like shell, for interrupt/shutdown/debug (DEALER ⇄ ROUTER).
    Control,
    /// Input requests from the kernel (DEALER ⇄ ROUTER).
    Stdin,
    /// Broadcast output (SUB ⇄ kernel PUB/XPUB).
    Iopub,
    /// Liveness echo (REQ ⇄ REP).
    Heartbeat,
}

impl Channel {
    /// The name used in WebSocket frames: `shell`, `control`, `stdin`, `iopub`, `hb`.
    pub fn as_str(self) -> &'static str {
        todo!()
    }
    /// Parses a WebSocket channel name; `None` for unknown names.
    pub fn from_name(name: &str) -> Option<Channel> {
        todo!()
    }
}
