//! Fuzz target: `engineio::Packet::decode_text` in both revisions, and re-encoding what it accepts.
#![no_main]

use herald_protocol::engineio::{Packet, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for version in [Version::V3, Version::V4] {
        let Ok(packet) = Packet::decode_text(text, version) else {
            continue;
        };
        let mut encoded = String::new();
        packet.encode_text(version, &mut encoded);
        let again = Packet::decode_text(&encoded, version);
        assert_eq!(
            again.as_ref(),
            Ok(&packet),
            "{version:?}: {text:?} re-encoded as {encoded:?}"
        );
    }
});
