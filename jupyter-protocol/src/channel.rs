//! The five kernel channels.
use std::fmt;

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
    /// Every channel, in connection-file order.
    pub const ALL: [Channel; 5] = [
        Channel::Shell,
        Channel::Iopub,
        Channel::Stdin,
        Channel::Control,
        Channel::Heartbeat,
    ];

    /// The name used in WebSocket frames: `shell`, `control`, `stdin`, `iopub`, `hb`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Shell => "shell",
            Channel::Control => "control",
            Channel::Stdin => "stdin",
            Channel::Iopub => "iopub",
            Channel::Heartbeat => "hb",
        }
    }

    /// Parses a WebSocket channel name; `None` for unknown names.
    pub fn from_name(name: &str) -> Option<Channel> {
        match name {
            "shell" => Some(Channel::Shell),
            "control" => Some(Channel::Control),
            "stdin" => Some(Channel::Stdin),
            "iopub" => Some(Channel::Iopub),
            "hb" => Some(Channel::Heartbeat),
            _ => None,
        }
    }

    /// Whether a client may send on this channel (shell, control, stdin).
    pub fn is_client_writable(self) -> bool {
        matches!(self, Channel::Shell | Channel::Control | Channel::Stdin)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for channel in Channel::ALL {
            assert_eq!(Channel::from_name(channel.as_str()), Some(channel));
        }
        assert_eq!(Channel::from_name("heartbeat"), None);
        assert_eq!(Channel::from_name("Shell"), None);
    }
}
