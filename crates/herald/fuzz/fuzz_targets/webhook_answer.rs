//! Fuzz target: the auth webhook's answer parser, then the gateway's admission rules over what it accepts.
#![no_main]

use herald::fuzzing::{admit, webhook_answer};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// A name a store key can hold, as the gateway requires of every room (`mailbox::store::valid_name`).
fn valid_name(name: &str) -> bool {
    name.len() <= 256 && !name.chars().any(char::is_control)
}

fn strings(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.as_str().expect("accepted rooms are strings").to_owned())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(identity) = webhook_answer(data) else {
        return;
    };

    // What was accepted is what the JSON says: an array of room names, or an object with `rooms` and `user`.
    let value: Value = serde_json::from_slice(data).expect("an accepted answer is JSON");
    match &value {
        Value::Array(rooms) => {
            assert_eq!(identity.rooms, strings(rooms));
            assert_eq!(identity.user, None);
        }
        Value::Object(object) => {
            let rooms = object["rooms"].as_array().expect("rooms is an array");
            assert_eq!(identity.rooms, strings(rooms));
            let user = match object.get("user") {
                None | Some(Value::Null) => None,
                Some(Value::String(user)) => Some(user.clone()).filter(|u| !u.is_empty()),
                Some(Value::Number(user)) => Some(user.to_string()),
                Some(other) => panic!("accepted user {other}"),
            };
            assert_eq!(identity.user, user);
        }
        other => panic!("accepted answer {other}"),
    }

    // A site without rules: the answer's rooms as they are, if every one is a valid name.
    match admit(identity.clone(), None, None) {
        Ok(admitted) => {
            assert!(admitted.rooms.iter().all(|r| valid_name(r)));
            assert_eq!(admitted.rooms, identity.rooms);
            assert_eq!(admitted.user, identity.user);
            assert_eq!(admitted.user_room, None);
        }
        Err(_) => assert!(identity.rooms.iter().any(|r| !valid_name(r))),
    }

    // A crossroads site with user rooms and a public channel.
    if let Ok(admitted) = admit(identity.clone(), Some("user_"), Some("public")) {
        assert!(admitted.rooms.iter().all(|r| valid_name(r)), "{admitted:?}");
        assert!(admitted.rooms.iter().any(|r| r == "public"));
        let user_room = admitted.user_room.as_deref().expect("a user room");
        assert!(user_room.len() > "user_".len() && user_room.starts_with("user_"));
        assert!(admitted.rooms.iter().any(|r| r == user_room));
        let user = admitted.user.as_deref().expect("a user");
        assert!(!user.is_empty());
        if identity.user.is_none() {
            assert_eq!(Some(user), user_room.strip_prefix("user_"));
        }
    }
});
