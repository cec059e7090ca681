//! The crate's error type.

/// Errors of kernelspec loading, templating, environment validation and port allocation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A kernelspec could not be read or parsed.
    #[error("kernelspec {name}: {reason}")]
    Spec {
        /// The kernelspec name (directory name, lowercased).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A request env value was refused (client's fault → 400). The message never echoes the value.
    #[error("{0}")]
    InvalidEnv(String),
    /// A port range is invalid (EG's messages, §6.4).
    #[error("{0}")]
    PortRange(String),
    /// No free port could be found.
    #[error("{0}")]
    NoFreePort(String),
    /// A launcher payload was refused (garbage, wrong key, missing fields, nobody waiting).
    #[error("{0}")]
    Payload(String),
    /// Key generation or encryption failed.
    #[error("{0}")]
    Crypto(String),
    /// The response listener cannot bind or has stopped.
    #[error("{0}")]
    Listener(String),
    /// A launch for this kernel id is already waiting for its launcher.
    #[error("kernel {0} is already waiting for a launcher response")]
    AlreadyRegistered(String),
    /// I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
