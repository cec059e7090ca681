//! Throughput of signing, verification and the frame codecs for 1 KiB and 1 MiB messages.
//!
//! `cargo bench -p jupyter-protocol`
use bytes::Bytes;
use divan::Bencher;
use divan::counter::BytesCount;
use jupyter_protocol::websocket::{WsFrame, legacy, v1};
use jupyter_protocol::wire::DIGEST_HISTORY_SIZE;
use jupyter_protocol::{Channel, Header, Message, SignatureScheme, Signer, Verifier};

fn main() {
    divan::main();
}

const SIZES: &[usize] = &[1 << 10, 1 << 20];

/// A stream message whose content is about `size` bytes of JSON.
fn message(size: usize) -> Message {
    let header = Header::new("stream", "bench-session", "bench");
    let text = "x".repeat(size.saturating_sub(40));
    Message::new(
        &header,
        &serde_json::json!({"name": "stdout", "text": text}),
    )
}

fn signer() -> Signer {
    Signer::new(
        SignatureScheme::HmacSha256,
        b"0123456789abcdef0123456789abcdef",
    )
}

#[divan::bench(args = SIZES)]
fn sign(bencher: Bencher<'_, '_>, size: usize) {
    let msg = message(size);
    let signer = signer();
    bencher
        .counter(BytesCount::new(msg.size()))
        .bench(|| signer.sign(divan::black_box(&msg)));
}

#[divan::bench(args = SIZES)]
fn sign_and_verify(bencher: Bencher<'_, '_>, size: usize) {
    let msg = message(size);
    let signer = signer();
    bencher.counter(BytesCount::new(msg.size())).bench(|| {
        let signature = signer.sign(&msg);
        signer.verify(signature.as_bytes(), divan::black_box(&msg))
    });
}

#[divan::bench(args = SIZES)]
fn wire_encode(bencher: Bencher<'_, '_>, size: usize) {
    let msg = message(size);
    let signer = signer();
    let ids = [Bytes::from_static(b"session")];
    bencher
        .counter(BytesCount::new(msg.size()))
        .bench(|| signer.encode(&ids, divan::black_box(&msg)));
}

#[divan::bench(args = SIZES)]
fn wire_decode_verified(bencher: Bencher<'_, '_>, size: usize) {
    let signer = signer();
    // Distinct messages, so the replay history does not reject repeats.
    let frames: Vec<Vec<Bytes>> = (0..64)
        .map(|_| signer.encode(&[], &message(size)))
        .collect();
    let mut next = 0usize;
    let mut verifier = Verifier::with_history(signer.clone(), DIGEST_HISTORY_SIZE);
    bencher
        .counter(BytesCount::new(message(size).size()))
        .bench_local(|| {
            next = (next + 1) % frames.len();
            if next == 0 {
                verifier = Verifier::with_history(signer.clone(), DIGEST_HISTORY_SIZE);
            }
            verifier.decode(frames[next].clone(), usize::MAX)
        });
}

#[divan::bench(args = SIZES)]
fn legacy_text_encode(bencher: Bencher<'_, '_>, size: usize) {
    let msg = message(size);
    bencher
        .counter(BytesCount::new(msg.size()))
        .bench(|| legacy::encode(Channel::Iopub, divan::black_box(&msg)));
}

#[divan::bench(args = SIZES)]
fn legacy_text_decode(bencher: Bencher<'_, '_>, size: usize) {
    let msg = message(size);
    let Ok(WsFrame::Text(text)) = legacy::encode(Channel::Shell, &msg) else {
        panic!("text frame expected");
    };
    bencher
        .counter(BytesCount::new(text.len()))
        .bench(|| legacy::decode_text(divan::black_box(&text)));
}

#[divan::bench(args = SIZES)]
fn v1_encode(bencher: Bencher<'_, '_>, size: usize) {
    let msg = message(size);
    bencher
        .counter(BytesCount::new(msg.size()))
        .bench(|| v1::encode(Channel::Iopub, divan::black_box(&msg)));
}

#[divan::bench(args = SIZES)]
fn v1_decode(bencher: Bencher<'_, '_>, size: usize) {
    let frame = v1::encode(Channel::Shell, &message(size));
    bencher
        .counter(BytesCount::new(frame.len()))
        .bench(|| v1::decode(divan::black_box(&frame)));
}
