//! WebSocket frame codecs as pure functions (no I/O): Jupyter Server's JSON text frames, the legacy
//! binary frame with buffers, and the `v1.kernel.websocket.jupyter.org` binary framing.
//! Converting copies the JSON parts verbatim.
//!
//! Decoders never trust a count in the frame: every count is bounded by the frame length before
//! anything is allocated, and every offset is checked, so hostile frames are errors, not panics
//! or large allocations.
//!
//! Decoding a client frame yields the channel it names, which may be `iopub` or `hb`; clients
//! may not send on those, so the caller drops such messages (see [`Channel::is_client_writable`]).
use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

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

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed(reason.into())
}

/// The JSON message of a legacy frame, with its parts left as raw JSON text.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    header: &'a RawValue,
    #[serde(borrow, default)]
    parent_header: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    content: &'a RawValue,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    buffers: Option<&'a RawValue>,
}

/// Whether raw JSON is an object (it is already known to be valid JSON).
fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

/// `[]`, `{}` (what EG's test client sends) and `null` carry no buffers.
fn is_empty_container(raw: &RawValue) -> bool {
    let text = raw.get();
    if text == "null" {
        return true;
    }
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .or_else(|| text.strip_prefix('{').and_then(|t| t.strip_suffix('}')));
    inner.is_some_and(|t| t.bytes().all(|b| b.is_ascii_whitespace()))
}

/// A part of a legacy message: a slice of `source` (the frame `raw` was parsed from) when there
/// is one, a copy otherwise.
fn raw_part(raw: &RawValue, source: Option<&Bytes>) -> Bytes {
    match source {
        // `raw` borrows from the text parsed out of `source`, so it is a sub-slice of it.
        Some(source) => source.slice_ref(raw.get().as_bytes()),
        None => Bytes::copy_from_slice(raw.get().as_bytes()),
    }
}

fn object_part(raw: Option<&RawValue>, name: &str, source: Option<&Bytes>) -> Result<Bytes, Error> {
    match raw {
        None => Ok(Bytes::from_static(b"{}")),
        Some(raw) if raw.get() == "null" => Ok(Bytes::from_static(b"{}")),
        Some(raw) if is_object(raw) => Ok(raw_part(raw, source)),
        Some(_) => Err(malformed(format!("{name} is not a JSON object"))),
    }
}

/// Parses a legacy JSON message; `binary` says whether buffers come from the binary frame.
/// With `source` (the bytes `json` is a view of), the parts share its memory.
fn decode_envelope(
    json: &str,
    binary: bool,
    source: Option<&Bytes>,
) -> Result<(Channel, Message), Error> {
    let env: Envelope<'_> =
        serde_json::from_str(json).map_err(|err| malformed(format!("message JSON: {err}")))?;
    let channel = match env.channel.as_deref() {
        None => Channel::Shell,
        Some(name) => Channel::from_name(name)
            .ok_or_else(|| malformed(format!("unknown channel {name:?}")))?,
    };
    if let (false, Some(buffers)) = (binary, env.buffers)
        && !is_empty_container(buffers)
    {
        return Err(malformed(
            "buffers in a text frame must be empty; send them in a binary frame",
        ));
    }
    if !is_object(env.header) {
        return Err(malformed("header is not a JSON object"));
    }
    let msg = Message {
        header: raw_part(env.header, source),
        parent_header: object_part(env.parent_header, "parent_header", source)?,
        metadata: object_part(env.metadata, "metadata", source)?,
        content: object_part(Some(env.content), "content", source)?,
        buffers: Vec::new(),
    };
    Ok((channel, msg))
}

/// A JSON part as text; an empty part (never sent by real kernels) is read as `{}`.
fn part_text<'a>(part: &'a Bytes, name: &str) -> Result<&'a str, Error> {
    if part.is_empty() {
        return Ok("{}");
    }
    std::str::from_utf8(part).map_err(|err| malformed(format!("{name} is not UTF-8: {err}")))
}

/// Appends `text` as a JSON string: quoted as it is when nothing in it needs an escape (what
/// message ids and types are), through serde_json otherwise.
fn push_json_str(out: &mut String, text: &str) -> Result<(), Error> {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
        return Ok(());
    }
    let quoted = serde_json::to_string(text).map_err(|err| malformed(format!("header: {err}")))?;
    out.push_str(&quoted);
    Ok(())
}

/// The legacy JSON form as segments: the message's parts (shared, not copied) between pieces of
/// JSON written around them; `with_buffers` adds the `"buffers":[]` key of text frames. Only the
/// header's `msg_id` and `msg_type` are parsed; the parts are checked to be UTF-8 and passed on
/// verbatim.
fn json_segments(channel: Channel, msg: &Message, with_buffers: bool) -> Result<Vec<Bytes>, Error> {
    let fields = msg.header_fields()?;
    let part = |bytes: &Bytes, name: &str| -> Result<Bytes, Error> {
        if bytes.is_empty() {
            return Ok(Bytes::from_static(b"{}"));
        }
        part_text(bytes, name)?;
        Ok(bytes.clone())
    };
    let header = part(&msg.header, "header")?;
    let parent = part(&msg.parent_header, "parent_header")?;
    let metadata = part(&msg.metadata, "metadata")?;
    let content = part(&msg.content, "content")?;
    // The glue between the parts, in one allocation, sliced.
    let mut glue = String::with_capacity(fields.msg_id.len() + fields.msg_type.len() + 120);
    glue.push_str("{\"header\":");
    let first = glue.len();
    glue.push_str(",\"msg_id\":");
    push_json_str(&mut glue, &fields.msg_id)?;
    glue.push_str(",\"msg_type\":");
    push_json_str(&mut glue, &fields.msg_type)?;
    glue.push_str(",\"parent_header\":");
    let second = glue.len();
    glue.push_str(",\"metadata\":");
    let third = glue.len();
    glue.push_str(",\"content\":");
    let fourth = glue.len();
    if with_buffers {
        glue.push_str(",\"buffers\":[]");
    }
    glue.push_str(",\"channel\":\"");
    glue.push_str(channel.as_str());
    glue.push_str("\"}");
    let glue = Bytes::from(glue);
    Ok(vec![
        glue.slice(..first),
        header,
        glue.slice(first..second),
        parent,
        glue.slice(second..third),
        metadata,
        glue.slice(third..fourth),
        content,
        glue.slice(fourth..),
    ])
}

/// A WebSocket payload as a sequence of segments that share the message's memory: writing them
/// one after the other (a vectored write) sends the frame without building it in one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsPayload {
    /// A text frame (legacy JSON) rather than a binary one.
    pub text: bool,
    /// The payload, in order. No segment is empty.
    pub segments: Vec<Bytes>,
}

impl WsPayload {
    fn new(text: bool, mut segments: Vec<Bytes>) -> WsPayload {
        segments.retain(|segment| !segment.is_empty());
        WsPayload { text, segments }
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.segments.iter().map(Bytes::len).sum()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The payload in one buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for segment in &self.segments {
            out.extend_from_slice(segment);
        }
        out
    }
}

/// Legacy (no subprotocol) mode: JSON text frames, or legacy binary frames when buffers are present.
pub mod legacy {
    use super::*;

    /// Decodes a client text frame; a missing `channel` means shell; `buffers` may be absent, `[]` or `{}`.
    pub fn decode_text(text: &str) -> Result<(Channel, Message), Error> {
        decode_envelope(text, false, None)
    }

    /// Like [`decode_text`] for a frame held as bytes: the parts are slices of `text`, not
    /// copies. Text that is not UTF-8 is an error.
    pub fn decode_text_bytes(text: Bytes) -> Result<(Channel, Message), Error> {
        let json = std::str::from_utf8(&text)
            .map_err(|err| malformed(format!("text frame is not UTF-8: {err}")))?;
        decode_envelope(json, false, Some(&text))
    }

    /// Decodes a client binary frame (u32 BE count + offsets, JSON part, buffers).
    pub fn decode_binary(frame: &[u8]) -> Result<(Channel, Message), Error> {
        let parts = split_binary(frame)?;
        let Some((json, buffers)) = parts.split_first() else {
            return Err(malformed("binary frame has no JSON part"));
        };
        let json = std::str::from_utf8(json)
            .map_err(|err| malformed(format!("JSON part is not UTF-8: {err}")))?;
        let (channel, mut msg) = decode_envelope(json, true, None)?;
        msg.buffers = buffers.iter().map(|b| Bytes::copy_from_slice(b)).collect();
        Ok((channel, msg))
    }

    /// Splits a legacy binary frame into its parts (JSON first), checking every offset.
    fn split_binary(frame: &[u8]) -> Result<Vec<&[u8]>, Error> {
        let count_bytes: [u8; 4] = frame
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("binary frame shorter than its count"))?;
        let count = u32::from_be_bytes(count_bytes) as usize;
        // Each part needs a 4-byte offset, so the count is bounded by the frame length.
        let table_end = count
            .checked_add(1)
            .and_then(|n| n.checked_mul(4))
            .filter(|&end| end <= frame.len())
            .ok_or_else(|| malformed(format!("binary frame claims {count} parts")))?;
        if count == 0 {
            return Err(malformed("binary frame has no parts"));
        }
        let mut offsets = Vec::with_capacity(count + 1);
        for chunk in frame.get(4..table_end).unwrap_or_default().chunks_exact(4) {
            let mut word = [0u8; 4];
            word.copy_from_slice(chunk);
            offsets.push(u32::from_be_bytes(word) as usize);
        }
        offsets.push(frame.len());
        let mut parts = Vec::with_capacity(count);
        let mut previous = table_end;
        for pair in offsets.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            if start < previous || end < start {
                return Err(malformed("binary frame offsets out of order"));
            }
            let part = frame
                .get(start..end)
                .ok_or_else(|| malformed("binary frame offset past the end"))?;
            parts.push(part);
            previous = start;
        }
        Ok(parts)
    }

    /// Encodes a kernel message for a client: text without buffers, binary with.
    /// The text form is `{"header","msg_id","msg_type","parent_header","metadata","content","buffers":[],"channel"}`.
    pub fn encode(channel: Channel, msg: &Message) -> Result<WsFrame, Error> {
        let payload = encode_payload(channel, msg)?;
        if payload.text {
            // Every segment is UTF-8 (see `json_segments`).
            return String::from_utf8(payload.to_vec())
                .map(WsFrame::Text)
                .map_err(|err| malformed(format!("message is not UTF-8: {err}")));
        }
        Ok(WsFrame::Binary(payload.to_vec()))
    }

    /// [`encode`] as segments sharing the message's parts (nothing of the parts is copied).
    pub fn encode_payload(channel: Channel, msg: &Message) -> Result<WsPayload, Error> {
        if msg.buffers.is_empty() {
            return json_segments(channel, msg, true)
                .map(|segments| WsPayload::new(true, segments));
        }
        let json = json_segments(channel, msg, false)?;
        let json_len: usize = json.iter().map(Bytes::len).sum();
        let count = 1 + msg.buffers.len();
        let table = 4 * (count + 1);
        let too_big = || malformed("message too large for 32-bit offsets");
        let mut head = Vec::with_capacity(table);
        head.extend_from_slice(&u32::try_from(count).map_err(|_| too_big())?.to_be_bytes());
        let mut offset = table;
        for len in std::iter::once(json_len).chain(msg.buffers.iter().map(Bytes::len)) {
            head.extend_from_slice(&u32::try_from(offset).map_err(|_| too_big())?.to_be_bytes());
            offset += len;
        }
        u32::try_from(offset).map_err(|_| too_big())?;
        let mut segments = Vec::with_capacity(1 + json.len() + msg.buffers.len());
        segments.push(Bytes::from(head));
        segments.extend(json);
        segments.extend(msg.buffers.iter().cloned());
        Ok(WsPayload::new(false, segments))
    }
}

/// `v1.kernel.websocket.jupyter.org`: u64 LE offsets table, channel, then the parts.
///
/// Layout: `n` (u64 LE), then `n` offsets (u64 LE): the start of the channel name, the start of
/// each part, and the end of the last part. The parts are header, parent header, metadata,
/// content, then buffers; there is no signature.
pub mod v1 {
    use super::*;

    /// Decodes a binary frame; counts are bounded by the frame length before anything is allocated.
    pub fn decode(frame: &[u8]) -> Result<(Channel, Message), Error> {
        decode_bytes(Bytes::copy_from_slice(frame))
    }

    /// Like [`decode`], but the parts share `frame`'s memory instead of being copied.
    pub fn decode_bytes(frame: Bytes) -> Result<(Channel, Message), Error> {
        let len = frame.len();
        let count_bytes: [u8; 8] = frame
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("v1 frame shorter than its count"))?;
        let count = u64::from_le_bytes(count_bytes);
        // Each offset takes 8 bytes of the frame: a larger count is a lie.
        let max_count = (len as u64 - 8) / 8;
        if count > max_count {
            return Err(malformed(format!("v1 frame claims {count} offsets")));
        }
        let count = count as usize;
        if count < 6 {
            return Err(malformed(format!(
                "v1 frame has {count} offsets, a message needs at least 6"
            )));
        }
        let table_end = 8 * (count + 1);
        let mut offsets = Vec::with_capacity(count);
        for chunk in frame.get(8..table_end).unwrap_or_default().chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let offset = u64::from_le_bytes(word);
            if offset > len as u64 {
                return Err(malformed("v1 frame offset past the end"));
            }
            offsets.push(offset as usize);
        }
        let mut previous = table_end;
        for &offset in &offsets {
            if offset < previous {
                return Err(malformed("v1 frame offsets out of order"));
            }
            previous = offset;
        }
        let part = |i: usize| -> Bytes {
            match (offsets.get(i), offsets.get(i + 1)) {
                (Some(&start), Some(&end)) => frame.slice(start..end),
                _ => Bytes::new(),
            }
        };
        let channel_name = part(0);
        let channel_name = std::str::from_utf8(&channel_name)
            .map_err(|err| malformed(format!("v1 channel is not UTF-8: {err}")))?;
        let channel = Channel::from_name(channel_name)
            .ok_or_else(|| malformed(format!("unknown channel {channel_name:?}")))?;
        let msg = Message {
            header: part(1),
            parent_header: part(2),
            metadata: part(3),
            content: part(4),
            buffers: (5..count - 1).map(part).collect(),
        };
        Ok((channel, msg))
    }

    /// Encodes a message.
    pub fn encode(channel: Channel, msg: &Message) -> Vec<u8> {
        encode_payload(channel, msg).to_vec()
    }

    /// [`encode`] as segments: the offsets table and channel name in one, then the parts
    /// themselves (shared, not copied).
    pub fn encode_payload(channel: Channel, msg: &Message) -> WsPayload {
        let name = channel.as_str().as_bytes();
        let parts = [&msg.header, &msg.parent_header, &msg.metadata, &msg.content];
        let all = parts.into_iter().chain(msg.buffers.iter());
        let count = 2 + 4 + msg.buffers.len();
        let table = 8 * (count + 1);
        let mut head = Vec::with_capacity(table + name.len());
        head.extend_from_slice(&(count as u64).to_le_bytes());
        let mut offset = table;
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += name.len();
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        for part in all.clone() {
            offset += part.len();
            head.extend_from_slice(&(offset as u64).to_le_bytes());
        }
        head.extend_from_slice(name);
        let mut segments = Vec::with_capacity(1 + 4 + msg.buffers.len());
        segments.push(Bytes::from(head));
        segments.extend(all.cloned());
        WsPayload::new(false, segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(buffers: usize) -> Message {
        Message {
            header: Bytes::from_static(
                br#"{"msg_id": "m1", "msg_type": "execute_request", "session": "s", "username": "u", "date": "2024-01-01T00:00:00.000000Z", "version": "5.3"}"#,
            ),
            parent_header: Bytes::from_static(b"{}"),
            metadata: Bytes::from_static(br#"{"k": [1, 2.50]}"#),
            content: Bytes::from_static(br#"{"code": "print(\"\u00e9\")"}"#),
            buffers: (0..buffers).map(|i| Bytes::from(vec![i as u8; i + 1])).collect(),
        }
    }

    #[test]
    fn text_round_trip_is_verbatim() {
        let msg = sample(0);
        let WsFrame::Text(text) = legacy::encode(Channel::Iopub, &msg).expect("encode") else {
            panic!("expected a text frame");
        };
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["msg_id"], "m1");
        assert_eq!(value["msg_type"], "execute_request");
        assert_eq!(value["buffers"], serde_json::json!([]));
        assert_eq!(value["channel"], "iopub");
        let (channel, back) = legacy::decode_text(&text).expect("decode");
        assert_eq!(channel, Channel::Iopub);
        assert_eq!(back, msg, "parts are copied byte for byte");
        let frame = Bytes::from(text.clone());
        let (channel, shared) = legacy::decode_text_bytes(frame.clone()).expect("decode");
        assert_eq!((channel, &shared), (Channel::Iopub, &msg));
        let inside = frame.as_ptr_range();
        assert!(
            inside.contains(&shared.content.as_ptr()),
            "parts share the frame"
        );
        assert!(legacy::decode_text_bytes(Bytes::from_static(b"\xff")).is_err());
    }

    #[test]
    fn binary_round_trips() {
        for buffers in [1, 3] {
            let msg = sample(buffers);
            let WsFrame::Binary(frame) = legacy::encode(Channel::Shell, &msg).expect("encode")
            else {
                panic!("expected a binary frame");
            };
            assert_eq!(
                legacy::decode_binary(&frame).expect("decode"),
                (Channel::Shell, msg.clone())
            );
            let frame = v1::encode(Channel::Control, &msg);
            assert_eq!(v1::decode(&frame).expect("decode"), (Channel::Control, msg));
        }
    }

    #[test]
    fn payload_segments_share_the_parts() {
        let mut msg = sample(0);
        msg.content = Bytes::from(format!(r#"{{"data": "{}"}}"#, "x".repeat(100_000)));
        let text = legacy::encode_payload(Channel::Iopub, &msg).expect("encode");
        assert!(text.text);
        let content = text
            .segments
            .iter()
            .find(|s| s.len() == msg.content.len())
            .expect("content segment");
        assert_eq!(
            content.as_ptr(),
            msg.content.as_ptr(),
            "the content is not copied"
        );
        let WsFrame::Text(whole) = legacy::encode(Channel::Iopub, &msg).expect("encode") else {
            panic!("expected text");
        };
        assert_eq!(text.to_vec(), whole.into_bytes());
        assert_eq!(text.len(), text.to_vec().len());
        let binary = v1::encode_payload(Channel::Iopub, &msg);
        assert!(!binary.text);
        assert!(
            binary
                .segments
                .iter()
                .any(|s| s.as_ptr() == msg.content.as_ptr())
        );
        assert_eq!(
            v1::decode(&binary.to_vec()).expect("decode"),
            (Channel::Iopub, msg.clone())
        );
        let with_buffers = msg.with_buffers(vec![Bytes::from_static(b"buf")]);
        let framed = legacy::encode_payload(Channel::Iopub, &with_buffers).expect("encode");
        assert!(!framed.text);
        assert!(framed.segments.iter().all(|s| !s.is_empty()));
        assert_eq!(
            legacy::decode_binary(&framed.to_vec()).expect("decode"),
            (Channel::Iopub, with_buffers)
        );
        let bad = Message {
            content: Bytes::from_static(b"{\"a\": \"\xff\"}"),
            ..sample(0)
        };
        assert!(legacy::encode_payload(Channel::Iopub, &bad).is_err());
    }

    #[test]
    fn v1_layout() {
        let msg = Message {
            header: Bytes::from_static(b"H"),
            parent_header: Bytes::from_static(b"P"),
            metadata: Bytes::from_static(b"M"),
            content: Bytes::from_static(b"C"),
            buffers: vec![Bytes::from_static(b"B")],
        };
        let frame = v1::encode(Channel::Shell, &msg);
        let words: Vec<u64> = frame[..64]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        // 7 offsets: channel start, 5 part starts, end.
        assert_eq!(words, vec![7, 64, 69, 70, 71, 72, 73, 74]);
        assert_eq!(&frame[64..], b"shellHPMCB");
    }

    #[track_caller]
    fn check_text(text: &str, expect: Result<Channel, &str>) {
        match (legacy::decode_text(text), expect) {
            (Ok((channel, _)), Ok(want)) => assert_eq!(channel, want),
            (Err(err), Err(want)) => assert!(err.to_string().contains(want), "{err} vs {want}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn text_frames() {
        let base = r#""header":{"msg_id":"1","msg_type":"x","session":"s"},"parent_header":{},"metadata":{},"content":{}"#;
        check_text(&format!("{{{base}}}"), Ok(Channel::Shell));
        check_text(
            &format!(r#"{{{base},"channel":"control"}}"#),
            Ok(Channel::Control),
        );
        check_text(
            &format!(r#"{{{base},"channel":"stdin","buffers":{{}}}}"#),
            Ok(Channel::Stdin),
        );
        check_text(&format!(r#"{{{base},"buffers":[ ]}}"#), Ok(Channel::Shell));
        check_text(&format!(r#"{{{base},"buffers":null}}"#), Ok(Channel::Shell));
        check_text(
            &format!(r#"{{{base},"channel":"hb"}}"#),
            Ok(Channel::Heartbeat),
        );
        check_text(
            &format!(r#"{{{base},"channel":"nope"}}"#),
            Err("unknown channel"),
        );
        check_text(&format!(r#"{{{base},"buffers":["AA=="]}}"#), Err("buffers"));
        check_text(r#"{"header":{},"content":{}}"#, Ok(Channel::Shell));
        check_text(r#"{"header":{}}"#, Err("content"));
        check_text(r#"{"header":[],"content":{}}"#, Err("header is not"));
        check_text(r#"{"header":{},"content":1}"#, Err("content is not"));
        check_text(
            r#"{"header":{},"content":{},"channel":"shell","channel":"shell"}"#,
            Err("duplicate"),
        );
        check_text("[", Err("message JSON"));
    }

    #[test]
    fn hostile_counts_are_rejected_without_allocating() {
        // A 64-byte v1 frame claiming 2^26 offsets, and a 16-byte legacy frame claiming 2^31 parts.
        let mut v1_frame = vec![0u8; 64];
        v1_frame[..8].copy_from_slice(&(1u64 << 26).to_le_bytes());
        assert!(v1::decode(&v1_frame).is_err());
        let mut legacy_frame = vec![0u8; 16];
        legacy_frame[..4].copy_from_slice(&(1u32 << 31).to_be_bytes());
        assert!(legacy::decode_binary(&legacy_frame).is_err());
        assert!(v1::decode(&u64::MAX.to_le_bytes()).is_err());
        assert!(v1::decode(&[]).is_err());
        assert!(legacy::decode_binary(&[0, 0, 0, 0]).is_err());
    }
}
