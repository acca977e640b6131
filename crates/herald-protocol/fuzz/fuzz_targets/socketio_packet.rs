//! Fuzz target: `socketio::decode`, and re-encoding with `socketio::encode` what it accepts.
#![no_main]
#![allow(clippy::unwrap_used)]

use herald_protocol::socketio::{decode, encode, Header};
use libfuzzer_sys::fuzz_target;

const MAX_ATTACHMENTS: usize = 10;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(packet) = decode(text, MAX_ATTACHMENTS) else {
        return;
    };
    assert!(packet.attachments <= MAX_ATTACHMENTS);
    // A revision-4 CONNECT query is not re-encoded: `encode` knows no query.
    if packet.query.is_some() {
        return;
    }
    let header = Header {
        kind: packet.kind,
        nsp: packet.nsp,
        id: packet.id,
        attachments: packet.attachments,
    };
    let mut out = Vec::new();
    encode(&header, packet.data.as_ref(), &mut out).unwrap();
    let encoded = String::from_utf8(out).unwrap();
    let again = decode(&encoded, MAX_ATTACHMENTS);
    assert_eq!(
        again.as_ref(),
        Ok(&packet),
        "{text:?} re-encoded as {encoded:?}"
    );
});
