//! Property tests: round trips of every framing, tamper detection, and decoders that never panic.
use bytes::Bytes;
use jupyter_protocol::websocket::{WsFrame, legacy, v1};
use jupyter_protocol::wire::split_frames;
use jupyter_protocol::{Channel, Error, Message, SignatureScheme, Signer, Verifier};
use proptest::prelude::*;
use serde_json::{Value, json};

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// Messages with arbitrary parts (the wire and v1 framings do not care about JSON).
fn raw_message() -> impl Strategy<Value = Message> {
    (
        any::<String>(),
        bytes(64),
        bytes(64),
        bytes(256),
        proptest::collection::vec(bytes(64), 0..4),
    )
        .prop_map(
            |(header, parent_header, metadata, content, buffers)| Message {
                header: Bytes::from(header),
                parent_header,
                metadata,
                content,
                buffers,
            },
        )
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = (Value, bool)> {
    (
        proptest::collection::btree_map(any::<String>(), json_value(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(m, pretty)| (Value::Object(m.into_iter().collect()), pretty))
}

fn render((value, pretty): (Value, bool)) -> Bytes {
    let text = if pretty {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    };
    Bytes::from(text.expect("JSON values serialise"))
}

/// Messages whose parts are JSON objects, as Jupyter Server frames require.
fn json_message(buffers: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Message> {
    (
        any::<String>(),
        any::<String>(),
        json_object(),
        json_object(),
        json_object(),
        any::<bool>(),
        proptest::collection::vec(bytes(64), buffers),
    )
        .prop_map(
            |(msg_id, msg_type, parent, metadata, content, pretty, buffers)| Message {
                header: render((
                    json!({"msg_id": msg_id, "msg_type": msg_type, "session": "s", "username": "u",
                       "date": "2024-01-01T00:00:00.000000Z", "version": "5.3"}),
                    pretty,
                )),
                parent_header: render(parent),
                metadata: render(metadata),
                content: render(content),
                buffers,
            },
        )
}

fn channel() -> impl Strategy<Value = Channel> {
    proptest::sample::select(Channel::ALL.to_vec())
}

fn signer(key: &[u8]) -> Signer {
    Signer::new(SignatureScheme::HmacSha256, key)
}

proptest! {
    #[test]
    fn wire_round_trip(
        msg in raw_message(),
        ids in proptest::collection::vec(bytes(16).prop_filter("not the delimiter", |b| &b[..] != b"<IDS|MSG>"), 0..3),
        key in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let frames = signer(&key).encode(&ids, &msg);
        let (got_ids, got) = Verifier::new(signer(&key)).decode(frames.clone(), usize::MAX).map_err(fail)?;
        prop_assert_eq!(got_ids, ids.clone());
        prop_assert_eq!(&got, &msg);
        let (split_ids, signature, split) = split_frames(frames).map_err(fail)?;
        prop_assert_eq!(split_ids, ids);
        prop_assert_eq!(signature.len(), if key.is_empty() { 0 } else { 64 });
        prop_assert_eq!(split, msg);
    }

    #[test]
    fn any_flipped_byte_in_a_signed_part_fails(
        msg in raw_message(),
        part in 0usize..5,
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let key = b"key";
        let mut frames = signer(key).encode(&[], &msg);
        // frames[1] is the signature, frames[2..6] the signed parts.
        let target = &frames[1 + part];
        prop_assume!(!target.is_empty());
        let mut tampered = target.to_vec();
        let i = position.index(tampered.len());
        tampered[i] ^= flip;
        frames[1 + part] = Bytes::from(tampered);
        let result = Verifier::new(signer(key)).decode(frames, usize::MAX);
        prop_assert!(
            matches!(result, Err(Error::InvalidSignature | Error::Malformed(_))),
            "tampering went unnoticed: {:?}", result
        );
    }

    #[test]
    fn legacy_text_round_trip(msg in json_message(0..=0), channel in channel()) {
        let WsFrame::Text(text) = legacy::encode(channel, &msg).map_err(fail)? else {
            return Err(TestCaseError::fail("expected a text frame"));
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&value["channel"], channel.as_str());
        prop_assert_eq!(legacy::decode_text(&text).map_err(fail)?, (channel, msg));
    }

    #[test]
    fn legacy_binary_round_trip(msg in json_message(1..=4), channel in channel()) {
        let WsFrame::Binary(frame) = legacy::encode(channel, &msg).map_err(fail)? else {
            return Err(TestCaseError::fail("expected a binary frame"));
        };
        prop_assert_eq!(legacy::decode_binary(&frame).map_err(fail)?, (channel, msg));
    }

    #[test]
    fn v1_round_trip(msg in raw_message(), channel in channel()) {
        let frame = v1::encode(channel, &msg);
        prop_assert_eq!(v1::decode(&frame).map_err(fail)?, (channel, msg.clone()));
        prop_assert_eq!(v1::decode_bytes(Bytes::from(frame)).map_err(fail)?, (channel, msg));
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = v1::decode(&data);
        let _ = legacy::decode_binary(&data);
        let _ = legacy::decode_text(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn random_frames_never_panic(frames in proptest::collection::vec(bytes(80), 0..10), delim in any::<prop::sample::Index>()) {
        let mut frames = frames;
        if !frames.is_empty() {
            let i = delim.index(frames.len());
            frames[i] = Bytes::from_static(b"<IDS|MSG>");
        }
        let _ = split_frames(frames.clone());
        let _ = Verifier::new(signer(b"k")).decode(frames.clone(), 1 << 20);
        let _ = Verifier::new(signer(b"")).decode(frames, 1 << 20);
    }

    #[test]
    fn mutated_frames_never_panic(
        msg in raw_message(),
        json in json_message(0..=2),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mutate = |mut frame: Vec<u8>| {
            for (at, value) in &edits {
                let i = at.index(frame.len());
                frame[i] = *value;
            }
            frame.truncate(cut.index(frame.len() + 1));
            frame
        };
        let _ = v1::decode(&mutate(v1::encode(Channel::Shell, &msg)));
        match legacy::encode(Channel::Shell, &json).map_err(fail)? {
            WsFrame::Binary(frame) => { let _ = legacy::decode_binary(&mutate(frame)); }
            WsFrame::Text(text) => {
                let _ = legacy::decode_text(&String::from_utf8_lossy(&mutate(text.into_bytes())));
            }
        }
    }
}

fn fail(err: Error) -> TestCaseError {
    TestCaseError::fail(err.to_string())
}
