//! Every limit herald enforces on clients and publishers, and how often each fired since the process started:
//! the refusals an operator needs to see to tell an attack from a limit set too low. `GET /limits` shows them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A limit that can refuse or close something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `header_read_timeout_ms`: a request head (or the first byte of one) came too slowly.
    HeaderReadTimeout,
    /// `idle_timeout_ms`: an HTTP connection moved no byte for too long.
    IdleTimeout,
    /// `max_http_connections`: an accept had to wait for a connection to close.
    HttpConnections,
    /// `max_header_bytes`: a request head was too large.
    HeaderBytes,
    /// `max_handshake_bytes`: a handshake's query and cookie were too large.
    HandshakeBytes,
    /// `max_connections`: no session could be opened.
    Sessions,
    /// `max_auth_attempts`: a session asked for one CONNECT decision too many.
    AuthAttempts,
    /// `max_concurrent_auth`: no auth slot came free in time.
    ConcurrentAuth,
    /// `max_devices_per_user`: a user's new device was refused.
    DevicesPerUser,
    /// `store_timeout_ms`: the mailbox store did not answer a publish in time.
    StoreTimeout,
    /// `outbox_frames` / `outbox_bytes`: a client did not read fast enough.
    Outbox,
    /// `max_payload_bytes`: a client sent too large a message or POST.
    Payload,
    /// `client_events_per_sec`: a client emitted faster than its budget.
    ClientEventRate,
    /// `client_events_in_flight`: a client had too many events waiting for their route.
    ClientEventsInFlight,
    /// `max_client_event_bytes`: a client emitted too large an event.
    ClientEventBytes,
    /// `max_retained` / `max_retained_bytes`: a site's retained state was full.
    Retained,
    /// `connects_per_ip_per_sec`: a client address opened new sessions too fast.
    ConnectRate,
    /// `publishes_per_key_per_sec`: an API key published too fast.
    PublishRate,
}

const ALL: [Limit; 18] = [
    Limit::HeaderReadTimeout,
    Limit::IdleTimeout,
    Limit::HttpConnections,
    Limit::HeaderBytes,
    Limit::HandshakeBytes,
    Limit::Sessions,
    Limit::AuthAttempts,
    Limit::ConcurrentAuth,
    Limit::DevicesPerUser,
    Limit::StoreTimeout,
    Limit::Outbox,
    Limit::Payload,
    Limit::ClientEventRate,
    Limit::ClientEventsInFlight,
    Limit::ClientEventBytes,
    Limit::Retained,
    Limit::ConnectRate,
    Limit::PublishRate,
];

static COUNTS: [AtomicU64; ALL.len()] = [const { AtomicU64::new(0) }; ALL.len()];

impl Limit {
    /// Every limit, in the order of its slot.
    pub const ALL: [Limit; ALL.len()] = ALL;

    /// The setting's name, as the config file spells it.
    pub fn name(self) -> &'static str {
        match self {
            Limit::HeaderReadTimeout => "header_read_timeout_ms",
            Limit::IdleTimeout => "idle_timeout_ms",
            Limit::HttpConnections => "max_http_connections",
            Limit::HeaderBytes => "max_header_bytes",
            Limit::HandshakeBytes => "max_handshake_bytes",
            Limit::Sessions => "max_connections",
            Limit::AuthAttempts => "max_auth_attempts",
            Limit::ConcurrentAuth => "max_concurrent_auth",
            Limit::DevicesPerUser => "max_devices_per_user",
            Limit::StoreTimeout => "store_timeout_ms",
            Limit::Outbox => "outbox_frames",
            Limit::Payload => "max_payload_bytes",
            Limit::ClientEventRate => "client_events_per_sec",
            Limit::ClientEventsInFlight => "client_events_in_flight",
            Limit::ClientEventBytes => "max_client_event_bytes",
            Limit::Retained => "max_retained",
            Limit::ConnectRate => "connects_per_ip_per_sec",
            Limit::PublishRate => "publishes_per_key_per_sec",
        }
    }

    /// Counts one firing.
    pub fn hit(self) {
        COUNTS[self as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How often this limit fired.
    pub fn count(self) -> u64 {
        COUNTS[self as usize].load(Ordering::Relaxed)
    }
}

/// Every limit's count, by setting name, as a JSON object.
pub fn snapshot() -> serde_json::Value {
    ALL.iter()
        .map(|l| (l.name().to_string(), serde_json::Value::from(l.count())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_has_its_own_slot() {
        for (i, limit) in ALL.iter().enumerate() {
            assert_eq!(*limit as usize, i, "{}", limit.name());
        }
        let before = Limit::DevicesPerUser.count();
        Limit::DevicesPerUser.hit();
        assert_eq!(Limit::DevicesPerUser.count(), before + 1);
        assert!(snapshot()["max_devices_per_user"].as_u64().is_some());
    }
}
