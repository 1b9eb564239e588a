//! What the milter process (and the load generator itself) spent: CPU time from
//! `/proc/PID/stat` (all threads, including ones that have exited), memory from
//! `/proc/PID/status`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// CPU seconds (user + system) of a process, all its threads included.
pub fn process_cpu(pid: u32) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| std::io::Error::other("unexpected /proc/PID/stat format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let ticks = |i: usize| -> std::io::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64)
            .ok_or_else(|| std::io::Error::other("unexpected /proc/PID/stat format"))
    };
    let per_second = clock_ticks_per_second();
    Ok((ticks(11)? + ticks(12)?) / per_second)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds this process (the load generator) has used.
pub fn own_cpu() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A `VmXXX:` value of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident memory of a process over a run: the kernel's high-water mark (VmHWM),
/// reset at the start through `/proc/PID/clear_refs` when permitted, and VmRSS sampled every
/// 10 ms as a floor (and the only figure when the reset is not permitted).
pub struct PeakRss {
    pid: u32,
    hwm_was_reset: bool,
    sampled_max: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    pub fn start(pid: u32) -> Self {
        let hwm_was_reset = std::fs::write(clear_refs(pid), "5").is_ok();
        let sampled_max = Arc::new(AtomicU64::new(status_kib(pid, "VmRSS:").unwrap_or(0)));
        let max = sampled_max.clone();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                match status_kib(pid, "VmRSS:") {
                    Some(kib) => {
                        max.fetch_max(kib, Ordering::Relaxed);
                    }
                    None => return,
                }
            }
        });
        PeakRss {
            pid,
            hwm_was_reset,
            sampled_max,
            sampler,
        }
    }

    /// `(peak KiB, how it was measured)`.
    pub fn finish(self) -> (u64, &'static str) {
        self.sampler.abort();
        let sampled = self.sampled_max.load(Ordering::Relaxed);
        match (self.hwm_was_reset, status_kib(self.pid, "VmHWM:")) {
            (true, Some(hwm)) => (hwm.max(sampled), "VmHWM"),
            _ => (sampled, "VmRSS sampled every 10 ms"),
        }
    }
}

fn clear_refs(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/clear_refs"))
}
