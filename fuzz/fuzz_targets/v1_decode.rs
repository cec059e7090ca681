//! `v1.kernel.websocket.jupyter.org` frames: decoding never panics, and what decodes re-encodes
//! to a frame that decodes to the same message.
#![no_main]
use jupyter_protocol::websocket::v1;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((channel, msg)) = v1::decode(data) {
        let again = v1::encode(channel, &msg);
        assert_eq!(v1::decode(&again).ok(), Some((channel, msg)));
    }
});
