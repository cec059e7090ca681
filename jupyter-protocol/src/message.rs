//! Messages with their JSON parts kept as raw bytes.
use bytes::Bytes;

use crate::{Error, Header};

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
    pub fn new(header: &Header, content: &impl serde::Serialize) -> Message {
        todo!()
    }
    /// Sets the parent header from another message's raw header.
    pub fn with_parent(self, parent_header: Bytes) -> Message {
        todo!()
    }
    /// Parses the header (the only part the gateway needs to look into).
    pub fn parse_header(&self) -> Result<Header, Error> {
        todo!()
    }
    /// Parses the content into a typed value.
    pub fn parse_content<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        todo!()
    }
    /// Parses the parent header's `msg_id`, if any.
    pub fn parent_msg_id(&self) -> Option<String> {
        todo!()
    }
    /// Total size of all parts in bytes.
    pub fn size(&self) -> usize {
        todo!()
    }
}
