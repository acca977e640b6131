//! Fuzz target: `engineio::decode_binary_payload_v3` (v3 binary polling payloads).
#![no_main]

use bytes::Bytes;
use herald_protocol::engineio::decode_binary_payload_v3;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    if let Ok(packets) = decode_binary_payload_v3(&body) {
        // Each packet takes at least a flag byte, a length digit and 0xFF.
        assert!(packets.len() * 3 <= data.len());
    }
});
