//! Legacy JSON text frames: decoding never panics; decoded messages re-encode.
#![no_main]
use jupyter_protocol::websocket::legacy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok((channel, msg)) = legacy::decode_text(text)
    {
        let _ = legacy::encode(channel, &msg);
    }
});
