//! `Secret`: a string that never reaches a log, a debug print or `check-config` output in the clear.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret value (API key, JWT secret). `Debug`, `Display` and `Serialize` show only a mask; the value is read
/// with [`Secret::expose`], and compared with [`Secret::matches`] in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` equals the secret, in time independent of where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq;
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        // Length is not secret-dependent enough to matter for keys of fixed shape, and ct_eq needs equal lengths.
        a.len() == b.len() && bool::from(a.ct_eq(b))
    }

    /// A mask that shows only the last two characters of long secrets: `****ab`.
    pub fn masked(&self) -> String {
        let tail: String = if self.0.chars().count() >= 12 {
            self.0
                .chars()
                .rev()
                .take(2)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect()
        } else {
            String::new()
        };
        format!("****{tail}")
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shown_in_the_clear() {
        let key = Secret::new("k3y-0123456789-xy");
        assert_eq!(format!("{key:?} {key}"), "****xy ****xy");
        assert_eq!(
            serde_json::to_string(&key).expect("serializes"),
            "\"****xy\""
        );
        assert_eq!(Secret::new("short").masked(), "****");
        assert!(key.matches("k3y-0123456789-xy"));
        assert!(!key.matches("k3y-0123456789-xz"));
        assert!(!key.matches("k3y"));
    }
}
