//! Giving memory back to the system after a burst of allocation that is over (a large
//! configuration parsed, a warm-up pass): glibc keeps freed memory in its arenas, so a 100,000
//! entry TOML document would otherwise stay in the resident set for good.

/// The trim and mmap thresholds the milter fixes: 1 MiB each (glibc starts at 128 KiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const THRESHOLD: libc::c_int = 1024 * 1024;

/// Fixes glibc's trim and mmap thresholds, which glibc otherwise raises by itself each time a
/// large block is freed (up to 32 MiB and 64 MiB). Loading a 100,000-entry table frees many
/// such blocks; after that a thread arena no longer shrinks when its top is freed, and
/// [`release_free_memory`] cannot help, since `malloc_trim` does not shrink a thread arena's
/// top. Measured with 100,000 key files (bench/scale.sh): 64 MiB of anonymous memory resident
/// for 18 MiB in use, 20 MiB with the thresholds fixed. An operator's own `GLIBC_TUNABLES`
/// malloc settings are left to win. Called once, first thing, by the binary.
pub fn limit_retained_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var_os("GLIBC_TUNABLES")
            .is_some_and(|t| t.to_string_lossy().contains("glibc.malloc."));
        if tuned {
            return;
        }
        // SAFETY: mallopt only sets glibc's allocator parameters; it is called before the
        // program has started any thread.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        }
    }
}

/// Returns the free memory of every malloc arena to the system.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; 0 keeps no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}
