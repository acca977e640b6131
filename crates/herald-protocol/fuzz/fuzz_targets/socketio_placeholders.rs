//! Fuzz target: `socketio::check_placeholders` on arbitrary JSON and attachment counts.
#![no_main]

use herald_protocol::socketio::check_placeholders;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte is the attachment count, the rest is the JSON.
    let Some((&attachments, json)) = data.split_first() else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let attachments = usize::from(attachments % 16);
    let _ = check_placeholders(&value, attachments);
});
