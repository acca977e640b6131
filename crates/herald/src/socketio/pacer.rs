//! Decides, per broadcast, whether its frames go straight to idle sockets (one write each, from the publishing
//! task) or through the outboxes, where the connection tasks coalesce a burst into one write per client.
//!
//! A direct write is the cheapest delivery while the server keeps up; queueing wins once broadcasts come faster
//! than the tasks could write them one by one, since then every write carries several. The pacer counts a
//! namespace's deliveries over short windows and allows direct writes while the last window's rate stays under
//! [`DIRECT_MAX_PER_SEC`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Deliveries per second up to which broadcasts write directly. A direct delivery costs about one `write()`
/// (3.6–5.7 µs on the benchmark machine, BENCHMARKS.md's floor), so this rate keeps direct writes under about
/// two thirds of a core; above it the outboxes coalesce.
pub(crate) const DIRECT_MAX_PER_SEC: u64 = 150_000;

/// The most deliveries one broadcast writes directly: a larger room's rest is queued, so no broadcast holds the
/// room locks, or its worker thread, for more than a few milliseconds of writes.
pub(crate) const DIRECT_MAX_PER_BROADCAST: usize = 1024;

const WINDOW_MS: u64 = 100;

/// Per namespace: deliveries counted over windows of [`WINDOW_MS`].
#[derive(Debug)]
pub(crate) struct Pacer {
    epoch: Instant,
    /// Which window `count` is for.
    window: AtomicU64,
    count: AtomicU64,
    /// Deliveries in the window before.
    previous: AtomicU64,
}

impl Pacer {
    pub(crate) fn new() -> Self {
        Pacer {
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            previous: AtomicU64::new(0),
        }
    }

    /// How many of the next broadcast's deliveries may be written directly (0: queue them all).
    pub(crate) fn direct_budget(&self) -> usize {
        self.budget_at(self.epoch.elapsed().as_millis() as u64)
    }

    fn budget_at(&self, now_ms: u64) -> usize {
        let window = now_ms / WINDOW_MS;
        let seen = self.window.load(Ordering::Relaxed);
        if window != seen
            && self
                .window
                .compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // A window with no broadcast in between counts as quiet.
            let last = if window == seen + 1 {
                self.count.swap(0, Ordering::Relaxed)
            } else {
                self.count.store(0, Ordering::Relaxed);
                0
            };
            self.previous.store(last, Ordering::Relaxed);
        }
        let limit = DIRECT_MAX_PER_SEC * WINDOW_MS / 1000;
        if self.previous.load(Ordering::Relaxed) < limit
            && self.count.load(Ordering::Relaxed) < limit
        {
            DIRECT_MAX_PER_BROADCAST
        } else {
            0
        }
    }

    /// Counts a broadcast's deliveries.
    pub(crate) fn delivered(&self, deliveries: usize) {
        self.count.fetch_add(deliveries as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = (DIRECT_MAX_PER_SEC * WINDOW_MS / 1000) as usize;

    #[test]
    fn a_quiet_namespace_writes_directly_and_a_busy_one_queues() {
        let pacer = Pacer::new();
        assert_eq!(pacer.budget_at(0), DIRECT_MAX_PER_BROADCAST);
        pacer.delivered(LIMIT - 1);
        assert_eq!(pacer.budget_at(50), DIRECT_MAX_PER_BROADCAST);
        pacer.delivered(1);
        assert_eq!(pacer.budget_at(99), 0, "at the rate within the window");
    }

    #[test]
    fn the_window_before_decides_until_a_quiet_one() {
        let pacer = Pacer::new();
        pacer.budget_at(0);
        pacer.delivered(LIMIT);
        assert_eq!(
            pacer.budget_at(150),
            0,
            "the busy window before still counts"
        );
        pacer.delivered(10);
        assert_eq!(
            pacer.budget_at(250),
            DIRECT_MAX_PER_BROADCAST,
            "the window before was quiet"
        );
        pacer.delivered(LIMIT);
        assert_eq!(
            pacer.budget_at(520),
            DIRECT_MAX_PER_BROADCAST,
            "windows with no broadcast count as quiet"
        );
    }
}
