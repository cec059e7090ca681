//! Message headers.
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

/// The protocol version this crate speaks in the headers it writes.
pub const PROTOCOL_VERSION: &str = "5.3";

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
        Header {
            msg_id: uuid::Uuid::new_v4().to_string(),
            msg_type: msg_type.to_owned(),
            session: session.to_owned(),
            username: username.to_owned(),
            date: now_iso8601(),
            version: PROTOCOL_VERSION.to_owned(),
        }
    }
}

const ISO8601_MICROS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always six fractional digits).
pub fn now_iso8601() -> String {
    format_iso8601(OffsetDateTime::now_utc())
}

/// Formats a UTC instant the way [`now_iso8601`] does.
pub fn format_iso8601(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    // Formatting only fails for years outside 0..=9999, which `now` never produces; fall back to
    // the RFC 3339 rendering rather than panicking.
    utc.format(ISO8601_MICROS).unwrap_or_else(|_| {
        utc.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_has_microseconds_and_z() {
        let at = time::macros::datetime!(2024-05-01 12:00:00.1234567 UTC);
        assert_eq!(format_iso8601(at), "2024-05-01T12:00:00.123456Z");
        let now = now_iso8601();
        assert_eq!(now.len(), "2024-05-01T12:00:00.123456Z".len(), "{now}");
        assert!(now.ends_with('Z'));
    }

    #[test]
    fn new_header_fields() {
        let a = Header::new("kernel_info_request", "sess", "me");
        let b = Header::new("kernel_info_request", "sess", "me");
        assert_ne!(a.msg_id, b.msg_id);
        assert_eq!(a.version, "5.3");
        assert_eq!(a.session, "sess");
        assert_eq!(a.username, "me");
    }

    #[test]
    fn parses_minimal_header() {
        let h: Header =
            serde_json::from_str(r#"{"msg_id":"1","msg_type":"status","session":"s","extra":1}"#)
                .expect("header");
        assert_eq!(h.msg_type, "status");
        assert_eq!(h.date, "");
    }
}
