//! The crate's error type.

/// Everything that can go wrong in this crate. Decoding errors never panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame or message is malformed (no delimiter, too few parts, bad hex, bad UTF-8, bad JSON...).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message exceeds the configured size limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The HMAC signature does not match.
    #[error("invalid signature")]
    InvalidSignature,
    /// The signature was seen before (replay).
    #[error("duplicate signature")]
    DuplicateSignature,
    /// `signature_scheme` names a scheme this crate does not implement.
    #[error("unsupported signature scheme {0:?}")]
    UnsupportedScheme(String),
    /// Connection file problems.
    #[error("connection file {path}: {reason}")]
    ConnectionFile {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A socket could not connect within its timeout.
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    /// A request got no reply within its timeout.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The kernel's sockets are closed (kernel gone or connection dropped).
    #[error("channel closed")]
    Closed,
    /// Transport-level failure.
    #[error("transport error: {0}")]
    Transport(String),
    /// I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
