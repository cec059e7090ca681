//! ZeroMQ wire framing and HMAC signing: `[identities…, "<IDS|MSG>", signature, header, parent, metadata, content, buffers…]`.
use bytes::Bytes;

use crate::{Error, Message};

/// Supported signature schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// `hmac-sha256`.
    HmacSha256,
}

impl SignatureScheme {
    /// Parses `hmac-sha256`; anything else is [`Error::UnsupportedScheme`].
    pub fn parse(s: &str) -> Result<SignatureScheme, Error> {
        todo!()
    }
}

/// Signs outgoing messages with a kernel's key. An empty key means unsigned (empty signature).
#[derive(Clone, Debug)]
pub struct Signer {}

impl Signer {
    /// A signer for `key` using `scheme`.
    pub fn new(scheme: SignatureScheme, key: &[u8]) -> Signer {
        todo!()
    }
    /// Lower-case hex HMAC over header ‖ parent ‖ metadata ‖ content (buffers excluded); empty when unsigned.
    pub fn sign(&self, msg: &Message) -> String {
        todo!()
    }
    /// Encodes a message into wire frames with the given routing identities.
    pub fn encode(&self, identities: &[Bytes], msg: &Message) -> Vec<Bytes> {
        todo!()
    }
}

/// Verifies incoming frames: constant-time signature check plus a bounded replay history.
#[derive(Debug)]
pub struct Verifier {}

impl Verifier {
    /// A verifier with jupyter_client's history size (65536).
    pub fn new(signer: Signer) -> Verifier {
        todo!()
    }
    /// Splits frames at the delimiter, verifies the signature (unless unsigned) and returns identities and message.
    /// Frames larger in total than `max_size` are rejected.
    pub fn decode(&mut self, frames: Vec<Bytes>, max_size: usize) -> Result<(Vec<Bytes>, Message), Error> {
        todo!()
    }
}

/// Splits frames without verifying (used where signatures are checked elsewhere or not at all).
pub fn split_frames(frames: Vec<Bytes>) -> Result<(Vec<Bytes>, Bytes, Message), Error> {
    todo!()
}
