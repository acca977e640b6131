//! When a caller of the `events` scenario sends (`Schedule`) and what it saw (`Tally`). A caller is a socket.io
//! client emitting with an ack (`emitter.rs`) or a plain HTTP client calling the backend (`direct.rs`); both
//! send `{"s": seq, "t": µs}` as the first argument, which the backend echoes as the first argument of the
//! reply, so an answer carries its own send time and which call it answers.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::stats::{micros_histogram, now_us};

/// When one caller sends. Every caller of a phase shares the warm-up and the end; paced callers are spread
/// over one interval so that their sends do not come in bursts.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// The caller's first send.
    pub first: Instant,
    /// Answers to sends stamped before this (`now_us` clock) are warm-up: not counted.
    pub measure_from_us: u64,
    /// No send at or after this.
    pub end: Instant,
    /// Time between one caller's sends; `None` sends as soon as fewer than `window` wait for an answer.
    pub interval: Option<Duration>,
    /// Sends a caller may have waiting for an answer.
    pub window: usize,
    /// How long after `end` a caller waits for its last answers.
    pub drain: Duration,
}

/// The times of one phase, common to all its callers.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub start: Instant,
    pub measure_from: Instant,
    pub measure_from_us: u64,
    pub end: Instant,
}

impl Phase {
    /// A phase starting `lead` from now (time for every caller's task to start), measured after `warmup`, for
    /// `secs`.
    pub fn new(lead: Duration, warmup: Duration, secs: Duration) -> Self {
        let (now, now_us) = (Instant::now(), now_us());
        let start = now + lead;
        let measure_from = start + warmup;
        Phase {
            start,
            measure_from,
            measure_from_us: now_us + (measure_from - now).as_micros() as u64,
            end: measure_from + secs,
        }
    }

    /// The schedule of caller `i` of `callers`, sending `rate` events per second over all of them (0: unpaced).
    pub fn schedule(
        &self,
        i: usize,
        callers: usize,
        rate: f64,
        window: usize,
        drain: Duration,
    ) -> Schedule {
        let interval = (rate > 0.0).then(|| Duration::from_secs_f64(callers.max(1) as f64 / rate));
        let offset = interval.map_or(Duration::ZERO, |iv| {
            iv.mul_f64(i as f64 / callers.max(1) as f64)
        });
        Schedule {
            first: self.start + offset,
            measure_from_us: self.measure_from_us,
            end: self.end,
            interval,
            window: window.max(1),
            drain,
        }
    }
}

/// What callers saw: counts and the latency of the answers that were measured.
pub struct Tally {
    /// Every send, warm-up included.
    pub sent: u64,
    /// Answers that echoed their call, to sends after the warm-up.
    pub measured: u64,
    /// Answers that were `{"error": ...}`, or failed calls.
    pub errors: u64,
    /// Answers that did not echo the call they answer.
    pub mismatched: u64,
    /// Sends still without an answer when the caller stopped.
    pub unanswered: u64,
    /// Callers whose connection ended before they stopped.
    pub disconnected: u64,
    pub first_error: Option<String>,
    pub latency: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            sent: 0,
            measured: 0,
            errors: 0,
            mismatched: 0,
            unanswered: 0,
            disconnected: 0,
            first_error: None,
            latency: micros_histogram(),
        }
    }
}

impl Tally {
    /// An answer to call `id`: `first` is the first argument of the reply (the echoed `{"s", "t"}`).
    pub fn answer(&mut self, id: Option<u64>, first: Option<&Value>, measure_from_us: u64) {
        let Some(first) = first else {
            return self.error("an answer without arguments".into());
        };
        if let Some(reason) = first.get("error") {
            return self.error(reason.to_string());
        }
        let (seq, stamp) = (first["s"].as_u64(), first["t"].as_u64());
        match (seq, stamp) {
            (Some(seq), Some(stamp)) if Some(seq) == id => {
                if stamp >= measure_from_us {
                    self.measured += 1;
                    self.latency
                        .saturating_record(now_us().saturating_sub(stamp).max(1));
                }
            }
            _ => self.mismatched += 1,
        }
    }

    /// A socket.io ack's text after `43<namespace>,`: the ack id, then the JSON array of its arguments.
    pub fn ack(&mut self, text: &str, measure_from_us: u64) {
        let split = text.find('[').unwrap_or(text.len());
        let id = text[..split].parse().ok();
        let args: Option<Vec<Value>> = serde_json::from_str(&text[split..]).ok();
        self.answer(
            id,
            args.as_deref().and_then(<[Value]>::first),
            measure_from_us,
        );
    }

    pub fn error(&mut self, reason: String) {
        self.errors += 1;
        self.first_error.get_or_insert(reason);
    }

    /// Adds another caller's tally to this one.
    pub fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.measured += other.measured;
        self.errors += other.errors;
        self.mismatched += other.mismatched;
        self.unanswered += other.unanswered;
        self.disconnected += other.disconnected;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        // Both come from `micros_histogram`, so their bounds match and adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_checked_against_their_call() {
        let mut tally = Tally::default();
        tally.ack("7[{\"s\":7,\"t\":0}]", 0);
        tally.ack("8[{\"s\":7,\"t\":0}]", 0);
        tally.ack("9[{\"error\":\"the backend answered 500\"}]", 0);
        tally.ack("10[]", 0);
        assert_eq!(tally.measured, 1);
        assert_eq!(tally.mismatched, 1);
        assert_eq!(tally.errors, 2);
        assert_eq!(
            tally.first_error.as_deref(),
            Some("\"the backend answered 500\"")
        );
    }

    #[test]
    fn warm_up_answers_are_not_measured() {
        let mut tally = Tally::default();
        tally.ack("1[{\"s\":1,\"t\":5}]", 10);
        assert_eq!((tally.measured, tally.mismatched, tally.errors), (0, 0, 0));
    }

    #[test]
    fn paced_callers_are_spread_over_one_interval() {
        let phase = Phase::new(Duration::ZERO, Duration::ZERO, Duration::from_secs(1));
        let first = phase.schedule(0, 4, 400.0, 1, Duration::ZERO);
        let third = phase.schedule(2, 4, 400.0, 1, Duration::ZERO);
        assert_eq!(first.interval, Some(Duration::from_millis(10)));
        assert_eq!(third.first - first.first, Duration::from_millis(5));
        assert!(phase
            .schedule(0, 4, 0.0, 1, Duration::ZERO)
            .interval
            .is_none());
    }
}
