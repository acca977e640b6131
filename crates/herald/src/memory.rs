//! Handing memory the process freed back to the system.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The least time between two trims, process-wide: a trim holds each arena's lock while it walks it, so a
/// webhook whose traffic keeps swinging above its warm connections must not trim every sweep.
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// How many trims were asked for: each runtime worker collects its own heap once per trim, when it next parks.
static TRIMS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The trims this thread has collected its heap for.
    static COLLECTED: Cell<u64> = const { Cell::new(0) };
}

/// Returns the free pages of the allocators' heaps to the system, unless that was done less than
/// `MIN_INTERVAL` ago. Both keep what a burst freed for later allocations: glibc's malloc gives the system back
/// only the top of a heap, and mimalloc purges a thread's free pages only when that thread allocates again,
/// which the workers of an idle server hardly do. So the buffers of a storm's webhook connections, interleaved
/// with the sessions it admitted, would stay in the RSS. It walks free lists under their locks (a few
/// milliseconds on a large heap), so callers use it after a burst, off the async workers, not per request;
/// each worker collects its own mimalloc heap when it next parks ([`on_worker_park`]).
pub(crate) fn release_free() {
    /// When the last trim was, in `now_ms`; `u64::MAX` before the first.
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    if due(&LAST, now_ms()) {
        TRIMS.fetch_add(1, Ordering::Relaxed);
        trim();
    }
}

/// For the runtime's `on_thread_park`: a worker about to idle collects its mimalloc heap when a trim was asked
/// for since it last did. mimalloc's heaps are per thread, and only the owner can purge its pages; parking is
/// when the worker has nothing else to do. Otherwise one atomic load.
pub fn on_worker_park() {
    let trims = TRIMS.load(Ordering::Relaxed);
    if COLLECTED.with(|collected| behind(collected, trims)) {
        collect_mimalloc();
    }
}

/// Whether a thread that `collected` for fewer trims than were asked for must collect; records that it does.
fn behind(collected: &Cell<u64>, trims: u64) -> bool {
    let behind = collected.get() != trims;
    collected.set(trims);
    behind
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

fn trim() {
    collect_mimalloc();
    trim_glibc();
}

#[allow(unsafe_code)]
fn collect_mimalloc() {
    // SAFETY: mi_collect takes no pointer; it frees what mimalloc holds free, under its own synchronisation.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// What glibc's malloc still serves: allocations of C code, and all of them where the binary keeps the default
/// allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_glibc() {
    // SAFETY: malloc_trim takes no pointer and only reorganises the allocator's own free chunks, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C allocators give free pages back themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_glibc() {}

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

    #[test]
    fn a_worker_collects_once_per_trim() {
        let collected = Cell::new(0);
        assert!(!behind(&collected, 0), "no trim asked for yet");
        assert!(behind(&collected, 1), "a trim was asked for");
        assert!(!behind(&collected, 1), "and collected for");
        assert!(behind(&collected, 3), "two more, one collect");
        assert!(!behind(&collected, 3));
    }

    #[test]
    fn a_park_collects_this_threads_heap() {
        TRIMS.fetch_add(1, Ordering::Relaxed);
        on_worker_park();
        assert!(
            COLLECTED.with(Cell::get) > 0,
            "the park caught up with the trims"
        );
    }
}
