//! ZeroMQ wire frames: splitting and verification never panic. The input is cut into frames at
//! every 0xFF byte.
#![no_main]
use bytes::Bytes;
use jupyter_protocol::wire::split_frames;
use jupyter_protocol::{SignatureScheme, Signer, Verifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frames: Vec<Bytes> = data
        .split(|b| *b == 0xff)
        .map(Bytes::copy_from_slice)
        .collect();
    let _ = split_frames(frames.clone());
    let signed = Signer::new(SignatureScheme::HmacSha256, b"fuzz-key");
    let _ = Verifier::new(signed).decode(frames.clone(), 1 << 20);
    let _ = Verifier::new(Signer::unsigned()).decode(frames, 1 << 20);
});
