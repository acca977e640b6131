//! Cache hints for the loops that walk many connections: fetch what a later step will read while this one runs.
//!
//! A broadcast visits each recipient's socket and session once, in hash order, and the sessions of ten
//! thousand subscribers do not stay in cache between two broadcasts: every visit began with a miss, and a
//! profile of the unpaced fan-out had a fifth of herald's CPU on that one load. A prefetch starts the load a few
//! recipients ahead, so it has arrived by the time the loop reads it.

/// The size of a cache line on the machines herald runs on (x86-64, and the 64-byte lines of most arm64).
const LINE: usize = 64;

/// Starts loading every cache line of `value` into the cache, without waiting for it.
#[inline]
pub(crate) fn prefetch<T>(value: &T) {
    let start = (value as *const T).cast::<u8>();
    let mut offset = 0;
    while offset < std::mem::size_of::<T>() {
        line(start.wrapping_add(offset));
        offset += LINE;
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
fn line(address: *const u8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: PREFETCHT0 is a hint: it reads nothing into the program and never faults, whatever the address
    // (here one inside a live value). SSE, which it needs, is part of every x86-64.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast::<i8>()) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn line(_address: *const u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_leaves_the_value_as_it_was() {
        let values: Vec<[u64; 40]> = (0..4).map(|i| [i; 40]).collect();
        for value in &values {
            prefetch(value);
        }
        prefetch(&());
        assert_eq!(values[3], [3; 40]);
    }
}
