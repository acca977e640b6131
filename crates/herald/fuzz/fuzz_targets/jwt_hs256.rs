//! Fuzz target: a client's JWT through an HS256 site's verification (header screening, signature, `exp`, claims
//! to identity). The first byte picks how the rest becomes a token:
//! - 0: the rest is the token;
//! - 1: the rest is `header JSON \0 claims JSON` (or only the claims, under `{"alg":"HS256"}`), encoded and signed
//!   with the site's secret, so the fuzzer reaches the claims;
//! - 2: the same, signed with another secret: never accepted.
#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald::fuzzing::Hs256Site;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

const SECRET: &str = "the site's fuzzing secret";
const OTHER_SECRET: &str = "someone else's secret";
/// herald's clock leeway on `exp`, in seconds.
const LEEWAY_SECS: f64 = 60.0;

static SITE: LazyLock<Hs256Site> = LazyLock::new(|| Hs256Site::new(SECRET).unwrap());

fn sign(header: &[u8], claims: &[u8], secret: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(secret.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

/// The header fields checked here.
#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// The claims checked here. Typed like herald's, not as a `serde_json::Value`: the fields nobody reads are skipped
/// unchecked (their UTF-8, their numbers' range), as `jsonwebtoken` and herald skip them.
#[derive(Deserialize)]
struct Claims {
    exp: Value,
    #[serde(default)]
    sub: Value,
    #[serde(default)]
    rooms: Value,
}

fn part<T: DeserializeOwned>(token: &str, index: usize) -> T {
    let text = token.split('.').nth(index).unwrap();
    let json = URL_SAFE_NO_PAD.decode(text).unwrap();
    serde_json::from_slice(&json).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = match mode % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(token) => token.to_owned(),
            Err(_) => return,
        },
        mode => {
            let (header, claims) = match rest.iter().position(|&b| b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (&br#"{"alg":"HS256"}"#[..], rest),
            };
            let secret = if mode == 1 { SECRET } else { OTHER_SECRET };
            sign(header, claims, secret)
        }
    };
    let result = SITE
        .verify(&token)
        .expect("a secret verifies without waiting");
    let Ok(identity) = result else {
        return;
    };
    assert_ne!(
        mode % 3,
        2,
        "a token signed with another secret was accepted: {token}"
    );

    // An accepted token says HS256, has not expired, and its identity is its claims.
    let header: Header = part(&token, 0);
    assert_eq!(header.alg, "HS256");
    let claims: Claims = part(&token, 1);
    let now = jsonwebtoken::get_current_timestamp() as f64;
    let exp = claims.exp.as_f64().expect("exp is a number");
    assert!(exp + LEEWAY_SECS >= now, "expired at {exp}");
    let rooms: Vec<String> = match claims.rooms {
        Value::Null => Vec::new(),
        rooms => serde_json::from_value(rooms).expect("rooms are strings"),
    };
    assert_eq!(identity.rooms, rooms);
    let sub = claims.sub.as_str().filter(|s| !s.is_empty());
    assert_eq!(identity.user.as_deref(), sub);
});
