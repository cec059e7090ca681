//! Messages with their JSON parts kept as raw bytes.
use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;

use crate::{Error, Header};

const EMPTY_OBJECT: &[u8] = b"{}";

/// A Jupyter message. The four JSON parts are kept verbatim so forwarding never re-serialises them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Raw JSON of the header.
    pub header: Bytes,
    /// Raw JSON of the parent header (`{}` when none).
    pub parent_header: Bytes,
    /// Raw JSON of the metadata.
    pub metadata: Bytes,
    /// Raw JSON of the content.
    pub content: Bytes,
    /// Binary buffers.
    pub buffers: Vec<Bytes>,
}

impl Message {
    /// Builds a message the caller originates: serialises header and content, `{}` parent and metadata.
    ///
    /// Content that cannot be serialised (a map with non-string keys, say) becomes `{}` with an
    /// error in the log; use [`Message::try_new`] to get the error instead.
    pub fn new(header: &Header, content: &impl serde::Serialize) -> Message {
        Message::try_new(header, content).unwrap_or_else(|err| {
            tracing::error!(msg_type = %header.msg_type, %err, "content is not serialisable; sending {{}}");
            Message::from_parts(header, Bytes::from_static(EMPTY_OBJECT))
        })
    }

    /// Like [`Message::new`], but reports content that cannot be serialised.
    pub fn try_new(header: &Header, content: &impl serde::Serialize) -> Result<Message, Error> {
        let content = serde_json::to_vec(content)
            .map_err(|err| Error::Malformed(format!("content does not serialise: {err}")))?;
        Ok(Message::from_parts(header, Bytes::from(content)))
    }

    fn from_parts(header: &Header, content: Bytes) -> Message {
        // A header of plain strings always serialises.
        let header = serde_json::to_vec(header).unwrap_or_else(|_| EMPTY_OBJECT.to_vec());
        Message {
            header: Bytes::from(header),
            parent_header: Bytes::from_static(EMPTY_OBJECT),
            metadata: Bytes::from_static(EMPTY_OBJECT),
            content,
            buffers: Vec::new(),
        }
    }

    /// Sets the parent header from another message's raw header.
    pub fn with_parent(self, parent_header: Bytes) -> Message {
        Message {
            parent_header,
            ..self
        }
    }

    /// Replaces the raw metadata.
    pub fn with_metadata(self, metadata: Bytes) -> Message {
        Message { metadata, ..self }
    }

    /// Replaces the buffers.
    pub fn with_buffers(self, buffers: Vec<Bytes>) -> Message {
        Message { buffers, ..self }
    }

    /// Parses the header (the only part the gateway needs to look into).
    pub fn parse_header(&self) -> Result<Header, Error> {
        serde_json::from_slice(&self.header)
            .map_err(|err| Error::Malformed(format!("header: {err}")))
    }

    /// Reads only the header's `msg_id` and `msg_type`, borrowed from the raw header (copied only
    /// when they contain JSON escapes): what forwarding needs, without building a [`Header`].
    /// Missing fields are empty.
    pub fn header_fields(&self) -> Result<HeaderFields<'_>, Error> {
        serde_json::from_slice(&self.header)
            .map_err(|err| Error::Malformed(format!("header: {err}")))
    }

    /// The header's `msg_type` (empty when the header does not parse or has none).
    pub fn msg_type(&self) -> Cow<'_, str> {
        self.header_fields()
            .map(|fields| fields.msg_type)
            .unwrap_or_default()
    }

    /// Parses the content into a typed value.
    pub fn parse_content<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.content)
            .map_err(|err| Error::Malformed(format!("content: {err}")))
    }

    /// Parses the parent header's `msg_id`, if any.
    pub fn parent_msg_id(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct ParentId {
            msg_id: Option<String>,
        }
        serde_json::from_slice::<Option<ParentId>>(&self.parent_header)
            .ok()
            .flatten()
            .and_then(|p| p.msg_id)
    }

    /// Total size of all parts in bytes.
    pub fn size(&self) -> usize {
        self.header.len()
            + self.parent_header.len()
            + self.metadata.len()
            + self.content.len()
            + self.buffers.iter().map(Bytes::len).sum::<usize>()
    }
}

/// The two header fields forwarding looks at (see [`Message::header_fields`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct HeaderFields<'a> {
    /// `msg_id`.
    #[serde(borrow, default)]
    pub msg_id: Cow<'a, str>,
    /// `msg_type`.
    #[serde(borrow, default)]
    pub msg_type: Cow<'a, str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_message_has_empty_parent_and_metadata() {
        let header = Header::new("kernel_info_request", "s", "u");
        let msg = Message::new(&header, &serde_json::json!({}));
        assert_eq!(&msg.parent_header[..], b"{}");
        assert_eq!(&msg.metadata[..], b"{}");
        assert_eq!(msg.parse_header().expect("header"), header);
        assert_eq!(msg.parent_msg_id(), None);
        assert_eq!(msg.size(), msg.header.len() + 4 + msg.content.len());
    }

    #[test]
    fn header_fields_are_borrowed_unless_escaped() {
        let header = Header::new("execute_request", "s", "u");
        let msg = Message::new(&header, &serde_json::json!({}));
        let fields = msg.header_fields().expect("fields");
        assert_eq!(fields.msg_id, header.msg_id);
        assert!(matches!(fields.msg_type, Cow::Borrowed("execute_request")));
        assert_eq!(msg.msg_type(), "execute_request");
        let escaped = Message {
            header: Bytes::from_static(br#"{"msg_type":"a\"b","x":[1,{"y":2}]}"#),
            ..msg.clone()
        };
        let fields = escaped.header_fields().expect("fields");
        assert_eq!(fields.msg_type, "a\"b");
        assert_eq!(fields.msg_id, "");
        let broken = Message {
            header: Bytes::from_static(b"{"),
            ..msg
        };
        assert!(broken.header_fields().is_err());
        assert_eq!(broken.msg_type(), "");
    }

    #[test]
    fn parent_msg_id_is_read() {
        let parent = Header::new("execute_request", "s", "u");
        let msg = Message::new(&Header::new("status", "k", "u"), &serde_json::json!({}))
            .with_parent(Message::new(&parent, &()).header);
        assert_eq!(msg.parent_msg_id(), Some(parent.msg_id));
        let odd = msg.with_parent(Bytes::from_static(b"null"));
        assert_eq!(odd.parent_msg_id(), None);
    }

    #[test]
    fn unserialisable_content_is_reported() {
        let mut map = std::collections::HashMap::new();
        map.insert((1, 2), 3);
        let header = Header::new("x", "s", "u");
        assert!(Message::try_new(&header, &map).is_err());
        assert_eq!(&Message::new(&header, &map).content[..], b"{}");
    }
}
