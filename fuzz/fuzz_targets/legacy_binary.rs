//! Legacy binary WebSocket frames: decoding never panics; decoded messages re-encode.
#![no_main]
use jupyter_protocol::websocket::legacy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((channel, msg)) = legacy::decode_binary(data) {
        let _ = legacy::encode(channel, &msg);
    }
});
