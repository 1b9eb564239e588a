//! Giving memory back to the system after a burst of allocation that is over (a large
//! configuration parsed, a warm-up pass): glibc keeps freed memory in its arenas, so a 100,000
//! entry TOML document would otherwise stay in the resident set for good.

/// Returns the free memory of every malloc arena to the system.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; 0 keeps no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}
