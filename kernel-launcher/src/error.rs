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
    /// I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
