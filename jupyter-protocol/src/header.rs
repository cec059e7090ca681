//! Message headers.
use serde::{Deserialize, Serialize};

/// A message header. `date` is kept as the string the sender wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Unique message id.
    pub msg_id: String,
    /// Message type, e.g. `execute_request`.
    pub msg_type: String,
    /// Session id of the sender.
    pub session: String,
    /// User name of the sender.
    #[serde(default)]
    pub username: String,
    /// ISO-8601 timestamp, e.g. `2024-05-01T12:00:00.123456Z`.
    #[serde(default)]
    pub date: String,
    /// Protocol version, e.g. `5.3`.
    #[serde(default)]
    pub version: String,
}

impl Header {
    /// A new header for a message originated by `session`, with a fresh msg_id, the current time
    /// (microseconds, `Z`) and version `5.3`.
    pub fn new(msg_type: &str, session: &str, username: &str) -> Header {
        todo!()
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always six fractional digits).
pub fn now_iso8601() -> String {
    todo!()
}
