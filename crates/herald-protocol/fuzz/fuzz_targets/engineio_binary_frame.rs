//! Fuzz target: `engineio::Packet::decode_binary_frame` in both revisions.
#![no_main]

use bytes::Bytes;
use herald_protocol::engineio::{Packet, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    for version in [Version::V3, Version::V4] {
        if let Ok(Packet::Binary(raw)) = Packet::decode_binary_frame(frame.clone(), version) {
            // A frame decodes to its bytes, less the v3 type byte.
            let prefix = match version {
                Version::V3 => 1,
                Version::V4 => 0,
            };
            assert_eq!(&raw[..], &data[prefix..]);
        }
    }
});
