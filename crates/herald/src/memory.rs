//! Handing memory the process freed back to the system.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The least time between two trims, process-wide: a trim holds each arena's lock while it walks it, so a
/// webhook whose traffic keeps swinging above its warm connections must not trim every sweep.
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Returns the free pages of the allocator's heaps to the system, unless that was done less than
/// `MIN_INTERVAL` ago. glibc's malloc keeps what a burst freed for later allocations, and gives the system back
/// only the top of a heap: the buffers of a storm's webhook connections, interleaved with the sessions it
/// admitted, would stay in the RSS for good. It walks every arena's free lists under their locks (a few
/// milliseconds on a large heap), so callers use it after a burst, off the async workers, not per request.
pub(crate) fn release_free() {
    /// When the last trim was, in `now_ms`; `u64::MAX` before the first.
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    if due(&LAST, now_ms()) {
        trim();
    }
}

/// Claims the trim at `now` (milliseconds) when the `last` one is `MIN_INTERVAL` old.
fn due(last: &AtomicU64, now: u64) -> bool {
    let before = last.load(Ordering::Relaxed);
    let free = before == u64::MAX || now.saturating_sub(before) >= MIN_INTERVAL.as_millis() as u64;
    free && last
        .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointer and only reorganises the allocator's own free chunks, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators give free pages back themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_are_at_least_the_interval_apart() {
        let interval = MIN_INTERVAL.as_millis() as u64;
        let last = AtomicU64::new(u64::MAX);
        assert!(due(&last, 1_000), "the first is due");
        assert!(!due(&last, 1_000 + interval - 1), "not before the interval");
        assert!(due(&last, 1_000 + interval), "then due again");
        assert!(!due(&last, 1_000 + interval));
    }
}
