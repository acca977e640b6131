//! The heartbeat rule of each revision, as a small state machine both transports drive. v4: the server pings
//! every `pingInterval` and expects a pong within `pingTimeout`. v3: the client pings; the server answers and
//! expects the next ping within `pingInterval + pingTimeout`.

use std::time::Duration;

use herald_protocol::engineio::Version;
use tokio::time::Instant;

/// What the heartbeat owner must do when the deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    SendPing,
    TimedOut,
}

#[derive(Debug)]
pub(crate) struct Heartbeat {
    version: Version,
    interval: Duration,
    timeout: Duration,
    deadline: Instant,
    awaiting_pong: bool,
}

impl Heartbeat {
    pub(crate) fn new(version: Version, interval: Duration, timeout: Duration) -> Self {
        Self::starting_at(Instant::now(), version, interval, timeout)
    }

    /// A heartbeat whose first period began at `start` (the handshake), so deadlines match the client's.
    pub(crate) fn starting_at(
        start: Instant,
        version: Version,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        let mut hb = Heartbeat {
            version,
            interval,
            timeout,
            deadline: start,
            awaiting_pong: false,
        };
        hb.deadline = start + hb.period();
        hb
    }

    fn period(&self) -> Duration {
        match self.version {
            Version::V4 => self.interval,
            Version::V3 => self.interval + self.timeout,
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When the heartbeat now awaited from the peer is due, if one is.
    pub(crate) fn awaited(&self) -> Option<std::time::Instant> {
        match self.version {
            Version::V4 if !self.awaiting_pong => None,
            _ => Some(self.deadline.into_std()),
        }
    }

    /// The deadline passed: ping now (v4), or the peer is gone.
    pub(crate) fn fire(&mut self) -> Due {
        match self.version {
            Version::V4 if !self.awaiting_pong => {
                self.awaiting_pong = true;
                // From the moment the ping was due, not from when this task ran, so timers do not drift.
                self.deadline += self.timeout;
                Due::SendPing
            }
            _ => Due::TimedOut,
        }
    }

    /// The peer answered (v4 pong) or pinged (v3).
    pub(crate) fn on_peer_heartbeat(&mut self) {
        self.awaiting_pong = false;
        self.reset();
    }

    fn reset(&mut self) {
        self.deadline = Instant::now() + self.period();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn v4_pings_then_times_out_without_pong() {
        let mut hb = Heartbeat::new(
            Version::V4,
            Duration::from_millis(300),
            Duration::from_millis(200),
        );
        assert_eq!(hb.deadline() - Instant::now(), Duration::from_millis(300));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(hb.fire(), Due::SendPing);
        assert_eq!(hb.deadline() - Instant::now(), Duration::from_millis(200));
        assert_eq!(hb.fire(), Due::TimedOut);
        hb.on_peer_heartbeat();
        assert_eq!(hb.fire(), Due::SendPing);
    }

    #[tokio::test(start_paused = true)]
    async fn v3_waits_for_client_pings() {
        let mut hb = Heartbeat::new(
            Version::V3,
            Duration::from_millis(300),
            Duration::from_millis(200),
        );
        assert_eq!(hb.deadline() - Instant::now(), Duration::from_millis(500));
        assert_eq!(hb.fire(), Due::TimedOut);
    }
}
