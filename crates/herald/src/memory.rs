//! Handing memory the process freed back to the system.

/// Returns the free pages of the allocator's heaps to the system. glibc's malloc keeps what a burst freed for
/// later allocations, and gives the system back only the top of a heap: the buffers of a storm's webhook
/// connections, interleaved with the sessions it admitted, would stay in the RSS for good. It walks every
/// arena's free lists under their locks (a few milliseconds on a large heap), so callers use it after a burst,
/// off the async workers, not per request. Other allocators give free pages back themselves: it does nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn release_free() {
    // SAFETY: malloc_trim takes no pointer and only reorganises the allocator's own free chunks, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free() {}
