//! Fuzz target: the JWKS document parser, for every algorithm a site may configure. The first byte picks the
//! algorithm, the rest is the document.
#![no_main]

use herald::config::JWT_ALGORITHMS;
use herald::fuzzing::{jwks, AlgorithmFamily};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// A JWKS document's list, read as herald reads it: the other fields skipped unchecked (their UTF-8, their
/// numbers' range), so not as a `serde_json::Value`.
#[derive(Deserialize)]
struct KeySet {
    keys: Vec<IgnoredAny>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let algorithm = JWT_ALGORITHMS[usize::from(pick) % JWT_ALGORITHMS.len()];
    let Ok(keys) = jwks(body, algorithm) else {
        return;
    };
    // Only keys of the site's family load: never an HMAC key, whatever the set holds.
    let family = match &algorithm[..2] {
        "RS" | "PS" => Some(AlgorithmFamily::Rsa),
        "ES" => Some(AlgorithmFamily::Ec),
        _ => None,
    };
    for (kid, key_family) in &keys {
        assert_eq!(Some(*key_family), family, "{algorithm} loaded {kid:?}");
    }
    // No more keys than the set lists.
    let listed = serde_json::from_slice::<KeySet>(body).unwrap().keys.len();
    assert!(keys.len() <= listed, "{} keys from {listed}", keys.len());
});
