//! Fuzz target: `engineio::decode_payload` (text polling payloads) in both revisions, iterated to the end.
#![no_main]

use herald_protocol::engineio::{decode_payload, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    for version in [Version::V3, Version::V4] {
        let mut count = 0usize;
        let mut errored = false;
        for item in decode_payload(body, version) {
            // The decoder ends after its first error.
            assert!(!errored, "{version:?}: item after an error in {body:?}");
            errored = item.is_err();
            count += 1;
            // Every packet takes at least one byte of the body.
            assert!(count <= body.len() + 1, "{version:?}: runaway on {body:?}");
        }
    }
});
