//! The `open` packet's JSON body that starts every Engine.IO session.

use serde::Serialize;

/// What the server tells a new client in its `open` packet.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake<'a> {
    pub sid: &'a str,
    pub upgrades: &'a [&'a str],
    /// Milliseconds between heartbeats.
    pub ping_interval: u64,
    /// Milliseconds a heartbeat may take before the session is dead.
    pub ping_timeout: u64,
    /// Largest payload in bytes the server accepts (Engine.IO v4 only; v3 clients ignore it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_payload: Option<u64>,
}

impl Handshake<'_> {
    /// The complete `open` text packet: `0{"sid":...}`.
    pub fn to_packet(&self) -> String {
        let mut out = Vec::with_capacity(128);
        out.push(b'0');
        // Serializing a struct of strings and integers to JSON cannot fail, and its output is UTF-8.
        let _ = serde_json::to_writer(&mut out, self);
        String::from_utf8(out).unwrap_or_default()
    }
}
