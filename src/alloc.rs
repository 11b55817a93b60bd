//! The allocator's one setting. A training step frees and re-allocates the same activation- and
//! gradient-sized buffers every step; mimalloc by default hands freed memory back to the kernel
//! after 10 ms, so each step page-faults (and zeroes) it all again: a third of a CPU GRPO step's
//! time went to the kernel's page clearing (perf, 2026-12-04). Kept for 10 s instead, the
//! memory is reused across steps and still returned once the process goes quiet.

/// mimalloc's `mi_option_purge_delay` (milliseconds before freed memory is returned): the 16th
/// entry of `mi_option_e` in both the v2 and v3 headers libmimalloc-sys bundles.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const KEEP_MS: std::os::raw::c_long = 10_000;

/// Keep freed memory for reuse for [`KEEP_MS`]; idempotent, effective only where mimalloc is
/// the global allocator (the binary and the test harness).
pub fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sets an integer option of the allocator; any value is valid for it.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, KEEP_MS) }
    });
}

#[cfg(test)]
mod tests {
    /// The option number is the one the bundled mimalloc reads as the purge delay.
    #[test]
    fn the_purge_delay_option_takes_the_value() {
        super::keep_freed_memory();
        // SAFETY: reads an integer option of the allocator.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(v, super::KEEP_MS);
    }
}
