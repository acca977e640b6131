//! Fuzz target: an event route's answer parser. What it accepts is what the JSON says, and every publish it
//! accepts would pass the publish API's own checks.
#![no_main]

use herald::fuzzing::event_answer;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = event_answer(data) else {
        return;
    };
    if data.iter().all(u8::is_ascii_whitespace) {
        assert!(answer.reply.is_empty() && answer.publish.is_empty());
        return;
    }
    let value: Value = serde_json::from_slice(data).expect("an accepted answer is JSON");
    let object = value.as_object().expect("an accepted answer is an object");
    let reply = object.get("reply").and_then(Value::as_array).cloned().unwrap_or_default();
    assert_eq!(answer.reply, reply);
    let publishes = object.get("publish").and_then(Value::as_array).map_or(0, Vec::len);
    assert_eq!(answer.publish.len(), publishes);
    for publish in &answer.publish {
        publish.request.validate().expect("an accepted publish is valid");
    }
    assert!(answer.join.iter().all(|r| r.len() <= 256 && !r.chars().any(char::is_control)));
});
