//! WebSocket frame codecs as pure functions (no I/O): Jupyter Server's JSON text frames, the legacy
//! binary frame with buffers, and the `v1.kernel.websocket.jupyter.org` binary framing.
//! Converting copies the JSON parts verbatim.
use crate::{Channel, Error, Message};

/// The subprotocol name of the v1 framing.
pub const V1_SUBPROTOCOL: &str = "v1.kernel.websocket.jupyter.org";

/// A WebSocket payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// Legacy (no subprotocol) mode: JSON text frames, or legacy binary frames when buffers are present.
pub mod legacy {
    use super::*;
    /// Decodes a client text frame; a missing `channel` means shell; `buffers` may be absent, `[]` or `{}`.
    pub fn decode_text(text: &str) -> Result<(Channel, Message), Error> {
        todo!()
    }
    /// Decodes a client binary frame (u32 BE count + offsets, JSON part, buffers).
    pub fn decode_binary(frame: &[u8]) -> Result<(Channel, Message), Error> {
        todo!()
    }
    /// Encodes a kernel message for a client: text without buffers, binary with.
    /// The text form is `{"header","msg_id","msg_type","parent_header","metadata","content","buffers":[],"channel"}`.
    pub fn encode(channel: Channel, msg: &Message) -> Result<WsFrame, Error> {
        todo!()
    }
}

/// `v1.kernel.websocket.jupyter.org`: u64 LE offsets table, channel, then the parts.
pub mod v1 {
    use super::*;
    /// Decodes a binary frame; counts are bounded by the frame length before anything is allocated.
    pub fn decode(frame: &[u8]) -> Result<(Channel, Message), Error> {
        todo!()
    }
    /// Encodes a message.
    pub fn encode(channel: Channel, msg: &Message) -> Vec<u8> {
        todo!()
    }
}
