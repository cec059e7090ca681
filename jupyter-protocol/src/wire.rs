//! ZeroMQ wire framing and HMAC signing: `[identities…, "<IDS|MSG>", signature, header, parent, metadata, content, buffers…]`.
//!
//! The signature is the lower-case hex HMAC of the four JSON parts (buffers are not signed). An
//! empty key means messages are unsigned: the signature frame is empty and nothing is checked.
//! Incoming signatures are compared in constant time and remembered in a bounded history so a
//! replayed message is rejected, as `jupyter_client` does.
use std::collections::{HashSet, VecDeque};
use std::fmt;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{Error, Message};

/// The frame separating routing identities from the message.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";

/// How many signatures a [`Verifier`] remembers (jupyter_client's `digest_history_size`).
pub const DIGEST_HISTORY_SIZE: usize = 65536;

/// Length in bytes of an HMAC-SHA256 tag.
pub(crate) const TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Supported signature schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// `hmac-sha256`.
    HmacSha256,
}

impl SignatureScheme {
    /// Parses `hmac-sha256`; anything else is [`Error::UnsupportedScheme`].
    pub fn parse(s: &str) -> Result<SignatureScheme, Error> {
        match s {
            "hmac-sha256" => Ok(SignatureScheme::HmacSha256),
            other => Err(Error::UnsupportedScheme(other.to_owned())),
        }
    }

    /// The connection-file spelling, `hmac-sha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureScheme::HmacSha256 => "hmac-sha256",
        }
    }
}

/// Signs outgoing messages with a kernel's key. An empty key means unsigned (empty signature).
#[derive(Clone)]
pub struct Signer {
    /// The keyed MAC state, cloned for every message; `None` when unsigned.
    mac: Option<HmacSha256>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Signer")
            .field("signed", &self.mac.is_some())
            .finish()
    }
}

impl Signer {
    /// A signer for `key` using `scheme`.
    pub fn new(scheme: SignatureScheme, key: &[u8]) -> Signer {
        let mac = match scheme {
            // HMAC accepts keys of any length, so this never fails for a non-empty key.
            SignatureScheme::HmacSha256 if !key.is_empty() => HmacSha256::new_from_slice(key).ok(),
            SignatureScheme::HmacSha256 => None,
        };
        Signer { mac }
    }

    /// A signer that signs nothing (empty key).
    pub fn unsigned() -> Signer {
        Signer { mac: None }
    }

    /// Whether messages are signed (the key is not empty).
    pub fn is_signed(&self) -> bool {
        self.mac.is_some()
    }

    fn tag(&self, mac: &HmacSha256, msg: &Message) -> HmacSha256 {
        let mut mac = mac.clone();
        mac.update(&msg.header);
        mac.update(&msg.parent_header);
        mac.update(&msg.metadata);
        mac.update(&msg.content);
        mac
    }

    /// Lower-case hex HMAC over header ‖ parent ‖ metadata ‖ content (buffers excluded); empty when unsigned.
    pub fn sign(&self, msg: &Message) -> String {
        String::from_utf8_lossy(&self.sign_frame(msg)).into_owned()
    }

    /// [`Signer::sign`] as the signature frame: the hex written into a fixed buffer and copied
    /// once into the frame (what sending does for every message).
    fn sign_frame(&self, msg: &Message) -> Bytes {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let Some(mac) = &self.mac else {
            return Bytes::new();
        };
        let tag = self.tag(mac, msg).finalize().into_bytes();
        let mut text = [0u8; TAG_LEN * 2];
        for (pair, byte) in text.chunks_exact_mut(2).zip(tag.iter()) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        Bytes::copy_from_slice(&text)
    }

    /// Checks a hex signature in constant time. Always `Ok` when unsigned.
    ///
    /// A signature that is not 64 characters long is [`Error::InvalidSignature`]; one with
    /// characters that are not lower-case hex digits is [`Error::Malformed`].
    pub fn verify(&self, signature: &[u8], msg: &Message) -> Result<(), Error> {
        let Some(mac) = &self.mac else {
            return Ok(());
        };
        let tag = decode_signature(signature)?;
        self.verify_tag(mac, &tag, msg)
    }

    /// Checks an already decoded tag (see [`decode_signature`]). Always `Ok` when unsigned.
    pub(crate) fn verify_decoded(&self, tag: &[u8; TAG_LEN], msg: &Message) -> Result<(), Error> {
        match &self.mac {
            Some(mac) => self.verify_tag(mac, tag, msg),
            None => Ok(()),
        }
    }

    fn verify_tag(
        &self,
        mac: &HmacSha256,
        tag: &[u8; TAG_LEN],
        msg: &Message,
    ) -> Result<(), Error> {
        self.tag(mac, msg)
            .verify_slice(tag)
            .map_err(|_| Error::InvalidSignature)
    }

    /// Encodes a message into wire frames with the given routing identities.
    pub fn encode(&self, identities: &[Bytes], msg: &Message) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(identities.len() + 6 + msg.buffers.len());
        frames.extend(identities.iter().cloned());
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(self.sign_frame(msg));
        frames.push(msg.header.clone());
        frames.push(msg.parent_header.clone());
        frames.push(msg.metadata.clone());
        frames.push(msg.content.clone());
        frames.extend(msg.buffers.iter().cloned());
        frames
    }
}

/// The 32-byte tag a 64-character lower-case hex signature spells.
pub(crate) fn decode_signature(signature: &[u8]) -> Result<[u8; TAG_LEN], Error> {
    if signature.len() != TAG_LEN * 2 {
        return Err(Error::InvalidSignature);
    }
    // jupyter_client compares the lower-case hex digest as a string, so an upper-case
    // signature is refused there; refusing it here too keeps one spelling per tag.
    fn nibble(c: u8) -> Result<u8, Error> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(Error::Malformed(format!(
                "signature is not lower-case hex (found byte 0x{c:02x})"
            ))),
        }
    }
    let mut tag = [0u8; TAG_LEN];
    for (byte, pair) in tag.iter_mut().zip(signature.chunks_exact(2)) {
        if let [hi, lo] = *pair {
            *byte = (nibble(hi)? << 4) | nibble(lo)?;
        }
    }
    Ok(tag)
}

/// A 32-byte tag as a set key, hashed by its first eight bytes: tags are HMAC outputs (and only
/// verified ones are remembered), so those bytes are already uniformly spread, and a keyed
/// SipHash over all 32 would only cost time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TagKey([u8; TAG_LEN]);

impl std::hash::Hash for TagKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(self.0.get(..8).unwrap_or(&[0; 8]));
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// The hasher of [`TagKey`]s: the key's one `u64` is the hash.
#[derive(Debug, Default)]
struct TagHasher(u64);

impl std::hash::Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached through `write_u64`'s default if a caller hashed something else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TagSet = HashSet<TagKey, std::hash::BuildHasherDefault<TagHasher>>;

/// The bounded set of signatures already seen. When full, the oldest tenth is forgotten
/// (jupyter_client forgets a random tenth; forgetting the oldest keeps recent replays detectable).
#[derive(Debug)]
pub struct DigestHistory {
    seen: TagSet,
    order: VecDeque<[u8; TAG_LEN]>,
    capacity: usize,
}

impl DigestHistory {
    /// A history remembering up to `capacity` signatures (at least one).
    pub fn new(capacity: usize) -> DigestHistory {
        let capacity = capacity.max(1);
        DigestHistory {
            seen: TagSet::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Records a signature; [`Error::DuplicateSignature`] if it was seen before.
    pub fn insert(&mut self, signature: &[u8]) -> Result<(), Error> {
        self.insert_tag(decode_signature(signature)?)
    }

    /// Whether a decoded tag was seen (and not yet forgotten).
    pub(crate) fn contains_tag(&self, tag: &[u8; TAG_LEN]) -> bool {
        self.seen.contains(&TagKey(*tag))
    }

    /// [`DigestHistory::insert`] for a decoded tag.
    pub(crate) fn insert_tag(&mut self, tag: [u8; TAG_LEN]) -> Result<(), Error> {
        if self.contains_tag(&tag) {
            return Err(Error::DuplicateSignature);
        }
        if self.order.len() >= self.capacity {
            let cull = (self.capacity / 10).max(1);
            for old in self.order.drain(..cull.min(self.order.len())) {
                self.seen.remove(&TagKey(old));
            }
        }
        self.seen.insert(TagKey(tag));
        self.order.push_back(tag);
        Ok(())
    }

    /// Whether a signature was seen (and not yet forgotten).
    pub fn contains(&self, signature: &[u8]) -> bool {
        decode_signature(signature).is_ok_and(|tag| self.contains_tag(&tag))
    }

    /// Number of remembered signatures.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Verifies incoming frames: constant-time signature check plus a bounded replay history.
#[derive(Debug)]
pub struct Verifier {
    signer: Signer,
    history: DigestHistory,
}

impl Verifier {
    /// A verifier with jupyter_client's history size (65536).
    pub fn new(signer: Signer) -> Verifier {
        Verifier::with_history(signer, DIGEST_HISTORY_SIZE)
    }

    /// A verifier remembering up to `history` signatures.
    pub fn with_history(signer: Signer, history: usize) -> Verifier {
        Verifier {
            signer,
            history: DigestHistory::new(history),
        }
    }

    /// Splits frames at the delimiter, verifies the signature (unless unsigned) and returns identities and message.
    /// Frames larger in total than `max_size` are rejected.
    pub fn decode(
        &mut self,
        frames: Vec<Bytes>,
        max_size: usize,
    ) -> Result<(Vec<Bytes>, Message), Error> {
        let (identities, signature, msg) = check_and_split(frames, max_size)?;
        self.check(&signature, &msg)?;
        Ok((identities, msg))
    }

    /// Checks a signature against a message and records it: replays are
    /// [`Error::DuplicateSignature`], mismatches [`Error::InvalidSignature`].
    pub fn check(&mut self, signature: &[u8], msg: &Message) -> Result<(), Error> {
        let Some(mac) = &self.signer.mac else {
            return Ok(());
        };
        let tag = decode_signature(signature)?;
        if self.history.contains_tag(&tag) {
            return Err(Error::DuplicateSignature);
        }
        self.signer.verify_tag(mac, &tag, msg)?;
        self.history.insert_tag(tag)
    }
}

/// Rejects oversized frame lists, splits them, and checks the header is UTF-8.
pub(crate) fn check_and_split(
    frames: Vec<Bytes>,
    max_size: usize,
) -> Result<(Vec<Bytes>, Bytes, Message), Error> {
    let size = frames
        .iter()
        .map(Bytes::len)
        .fold(0usize, usize::saturating_add);
    if size > max_size {
        return Err(Error::TooLarge {
            size,
            limit: max_size,
        });
    }
    let (identities, signature, msg) = split_frames(frames)?;
    if let Err(err) = std::str::from_utf8(&msg.header) {
        return Err(Error::Malformed(format!("header is not UTF-8: {err}")));
    }
    Ok((identities, signature, msg))
}

/// Splits frames without verifying (used where signatures are checked elsewhere or not at all).
pub fn split_frames(frames: Vec<Bytes>) -> Result<(Vec<Bytes>, Bytes, Message), Error> {
    let Some(delim) = frames.iter().position(|f| f.as_ref() == DELIMITER) else {
        return Err(Error::Malformed("no <IDS|MSG> delimiter".to_owned()));
    };
    let after = frames.len() - delim - 1;
    if after < 5 {
        return Err(Error::Malformed(format!(
            "{after} frames after the delimiter, at least 5 are needed"
        )));
    }
    let mut rest = frames.into_iter();
    let identities: Vec<Bytes> = rest.by_ref().take(delim).collect();
    let mut next = || rest.next().unwrap_or_default();
    let _delimiter = next();
    let signature = next();
    let header = next();
    let parent_header = next();
    let metadata = next();
    let content = next();
    let buffers: Vec<Bytes> = rest.collect();
    Ok((
        identities,
        signature,
        Message {
            header,
            parent_header,
            metadata,
            content,
            buffers,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Header;

    fn sample() -> Message {
        Message::new(
            &Header::new("execute_request", "sess", "me"),
            &serde_json::json!({"code": "1+1"}),
        )
        .with_buffers(vec![Bytes::from_static(b"\x00\x01")])
    }

    fn key() -> Signer {
        Signer::new(SignatureScheme::HmacSha256, b"secret")
    }

    #[test]
    fn known_digest() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog") split over four parts.
        let msg = Message {
            header: Bytes::from_static(b"The quick "),
            parent_header: Bytes::from_static(b"brown fox "),
            metadata: Bytes::from_static(b"jumps over "),
            content: Bytes::from_static(b"the lazy dog"),
            buffers: vec![Bytes::from_static(b"not signed")],
        };
        let signer = Signer::new(SignatureScheme::HmacSha256, b"key");
        assert_eq!(
            signer.sign(&msg),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn round_trip_with_identities() {
        let msg = sample();
        let ids = vec![Bytes::from_static(b"id1"), Bytes::from_static(b"id2")];
        let frames = key().encode(&ids, &msg);
        let mut verifier = Verifier::new(key());
        let (got_ids, got) = verifier.decode(frames.clone(), usize::MAX).expect("decode");
        assert_eq!(got_ids, ids);
        assert_eq!(got, msg);
        // The same frames again are a replay.
        assert!(matches!(
            verifier.decode(frames, usize::MAX),
            Err(Error::DuplicateSignature)
        ));
    }

    #[test]
    fn rejections() {
        let msg = sample();
        let frames = key().encode(&[], &msg);
        let check = |frames: Vec<Bytes>, max: usize| Verifier::new(key()).decode(frames, max);

        let mut wrong_key = Signer::new(SignatureScheme::HmacSha256, b"other").encode(&[], &msg);
        assert!(matches!(
            check(wrong_key.clone(), usize::MAX),
            Err(Error::InvalidSignature)
        ));
        wrong_key[1] = Bytes::from("zz".repeat(32));
        assert!(matches!(
            check(wrong_key.clone(), usize::MAX),
            Err(Error::Malformed(_))
        ));
        wrong_key[1] = Bytes::new();
        assert!(matches!(
            check(wrong_key, usize::MAX),
            Err(Error::InvalidSignature)
        ));

        // The right tag spelled in upper case is refused, as jupyter_client refuses it.
        let mut upper = frames.clone();
        upper[1] = Bytes::from(String::from_utf8_lossy(&frames[1]).to_uppercase());
        assert_ne!(upper[1], frames[1]);
        assert!(matches!(check(upper, usize::MAX), Err(Error::Malformed(_))));

        assert!(matches!(
            check(frames[1..].to_vec(), usize::MAX),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            check(frames[..5].to_vec(), usize::MAX),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            check(frames.clone(), 10),
            Err(Error::TooLarge { limit: 10, .. })
        ));

        let mut bad_utf8 = msg.clone();
        bad_utf8.header = Bytes::from_static(b"\xff\xfe");
        let frames = key().encode(&[], &bad_utf8);
        assert!(matches!(
            check(frames, usize::MAX),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn unsigned_accepts_anything() {
        let msg = sample();
        let frames = Signer::unsigned().encode(&[], &msg);
        assert!(frames[1].is_empty());
        let mut verifier = Verifier::new(Signer::new(SignatureScheme::HmacSha256, b""));
        assert_eq!(
            verifier.decode(frames.clone(), usize::MAX).expect("ok").1,
            msg
        );
        assert!(
            verifier.decode(frames, usize::MAX).is_ok(),
            "no replay check when unsigned"
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut history = DigestHistory::new(20);
        let sig = |i: u8| hex::encode([i; 32]);
        for i in 0..20 {
            history.insert(sig(i).as_bytes()).expect("fresh");
        }
        assert!(matches!(
            history.insert(sig(3).as_bytes()),
            Err(Error::DuplicateSignature)
        ));
        history.insert(sig(200).as_bytes()).expect("fresh");
        // The oldest tenth (two entries) was forgotten.
        assert_eq!(history.len(), 19);
        assert!(!history.contains(sig(0).as_bytes()));
        assert!(!history.contains(sig(1).as_bytes()));
        assert!(history.contains(sig(2).as_bytes()));
    }

    #[test]
    fn unknown_scheme() {
        assert!(matches!(
            SignatureScheme::parse("hmac-md5"),
            Err(Error::UnsupportedScheme(s)) if s == "hmac-md5"
        ));
        assert_eq!(
            SignatureScheme::parse("hmac-sha256").expect("ok").as_str(),
            "hmac-sha256"
        );
    }
}
