//! What subscribers saw: deliveries, duplicates, order, latency. Shared by every client task of one run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microseconds since the generator started: the clock stamped into payloads and read back on receipt. One
/// process publishes and receives, so there is no clock skew.
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A histogram of microseconds from 1 µs to 100 s with 3 significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts; failing here is a programming error.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

pub struct Deliveries {
    /// Publishers whose messages reach every subscriber: sequence number `s` came from publisher `s % lanes`,
    /// and order is only defined per publisher.
    lanes: usize,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub disconnects: AtomicU64,
    /// Deliveries whose payload could not be read.
    pub malformed: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Deliveries::new(1)
    }
}

impl Deliveries {
    pub fn new(lanes: usize) -> Self {
        Deliveries {
            lanes: lanes.max(1),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            latency: Mutex::new(micros_histogram()),
        }
    }
}

/// One client's view of the sequence numbers it was sent: the last one seen from each publisher.
#[derive(Default)]
pub struct Order {
    last: Vec<Option<u64>>,
}

impl Deliveries {
    /// Records one delivered payload `{"s":seq,"t":stamp,...`.
    pub fn record(&self, payload: &str, order: &mut Order) {
        let (Some(seq), Some(stamp)) = (
            number_after(payload, "\"s\":"),
            number_after(payload, "\"t\":"),
        ) else {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.received.fetch_add(1, Ordering::Relaxed);
        if order.last.is_empty() {
            order.last = vec![None; self.lanes];
        }
        let last = &mut order.last[(seq % self.lanes as u64) as usize];
        match *last {
            Some(last) if seq == last => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Some(last) if seq < last => {
                self.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            _ => *last = Some(seq),
        }
        let latency = now_us().saturating_sub(stamp).max(1);
        if let Ok(mut histogram) = self.latency.lock() {
            histogram.saturating_record(latency);
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn latency(&self) -> Latency {
        let histogram = match self.latency.lock() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        Latency::of(&histogram)
    }
}

/// Deliveries recorded over several `Deliveries` (one per node of a cluster).
pub fn received_over(all: &[std::sync::Arc<Deliveries>]) -> u64 {
    all.iter().map(|d| d.received()).sum()
}

/// The sum of one counter over several `Deliveries`.
pub fn count_over(
    all: &[std::sync::Arc<Deliveries>],
    counter: impl Fn(&Deliveries) -> &AtomicU64,
) -> u64 {
    all.iter().map(|d| counter(d).load(Ordering::Relaxed)).sum()
}

/// Latency percentiles over several `Deliveries` together.
pub fn latency_over(all: &[std::sync::Arc<Deliveries>]) -> Latency {
    let mut merged = micros_histogram();
    for d in all {
        let histogram = match d.latency.lock() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        // Both have the same bounds, so adding cannot fail.
        let _ = merged.add(&histogram);
    }
    Latency::of(&merged)
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        Latency {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        )
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

/// The unsigned number right after `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sequence_and_stamp() {
        let stats = Deliveries::default();
        let mut order = Order::default();
        stats.record("{\"s\":7,\"t\":1,\"p\":\"xx\"}]", &mut order);
        stats.record("{\"s\":7,\"t\":1,\"p\":\"xx\"}]", &mut order);
        stats.record("{\"s\":3,\"t\":1,\"p\":\"xx\"}]", &mut order);
        stats.record("{\"p\":\"xx\"}]", &mut order);
        assert_eq!(stats.received(), 3);
        assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(stats.out_of_order.load(Ordering::Relaxed), 1);
        assert_eq!(stats.malformed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn order_is_per_publisher() {
        let stats = Deliveries::new(2);
        let mut order = Order::default();
        for seq in [1, 0, 3, 2, 5, 4] {
            stats.record(&format!("{{\"s\":{seq},\"t\":1}}"), &mut order);
        }
        assert_eq!(stats.out_of_order.load(Ordering::Relaxed), 0);
        stats.record("{\"s\":1,\"t\":1}", &mut order);
        assert_eq!(stats.out_of_order.load(Ordering::Relaxed), 1);
    }
}
