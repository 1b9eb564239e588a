//! Time as rotation sees it: the wall clock (what the windows and the state file are written
//! in) checked against the monotonic clock (which no administrator or NTP step can move).
//!
//! A wall clock that jumps forward would open windows early: a pending key would sign before
//! its `activate_after`, a retiring key's record would be revoked while messages signed with it
//! are still in transit. So between two looks the wall clock may not advance much more than
//! the monotonic clock did; when it does, every time-based step is held back by the size of
//! the jump (and the hold is written to the state, so a restart keeps it). A clock that went
//! back only makes windows open later, which is safe; it is logged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// How much faster than the monotonic clock the wall clock may run between two looks before
/// it counts as a jump: NTP slews far less than this; a step is usually seconds or more.
pub const JUMP_TOLERANCE: Duration = Duration::from_secs(5);

/// The wall clock in Unix milliseconds.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What one look at the clocks found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skew {
    /// The wall clock ran `by` ahead of the monotonic clock since the last look.
    JumpedForward { by: Duration },
    /// The wall clock is `by` behind a time already seen.
    WentBack { by: Duration },
}

/// The last pair of readings, kept in memory by the rotation task.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClockWatch {
    last: Option<(u64, Instant)>,
}

impl ClockWatch {
    /// Records a reading; says whether the wall clock jumped relative to the last one.
    pub fn observe(&mut self, wall_ms: u64, mono: Instant) -> Option<Skew> {
        let previous = self.last.replace((wall_ms, mono));
        let (last_wall, last_mono) = previous?;
        let mono_ms = u64::try_from(mono.saturating_duration_since(last_mono).as_millis())
            .unwrap_or(u64::MAX);
        if wall_ms < last_wall {
            return Some(Skew::WentBack {
                by: Duration::from_millis(last_wall - wall_ms),
            });
        }
        let wall_advance = wall_ms - last_wall;
        let tolerance = u64::try_from(JUMP_TOLERANCE.as_millis()).unwrap_or(u64::MAX);
        (wall_advance > mono_ms.saturating_add(tolerance)).then(|| Skew::JumpedForward {
            by: Duration::from_millis(wall_advance - mono_ms),
        })
    }
}

/// Whether `period` has passed since `since_ms` at `now_ms`.
pub fn elapsed(since_ms: u64, period: Duration, now_ms: u64) -> bool {
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    now_ms >= since_ms.saturating_add(period_ms)
}

/// `period` in milliseconds (saturating).
pub fn ms(period: Duration) -> u64 {
    u64::try_from(period.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_step_is_seen_and_slewing_is_not() {
        let mut watch = ClockWatch::default();
        let start = Instant::now();
        assert_eq!(watch.observe(1_000_000, start), None);
        tokio::time::advance(Duration::from_secs(60)).await;
        // Slewed: 60.2 s of wall time in 60 s.
        assert_eq!(watch.observe(1_060_200, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(60)).await;
        // Stepped forward a day.
        assert_eq!(
            watch.observe(1_120_200 + 86_400_000, Instant::now()),
            Some(Skew::JumpedForward {
                by: Duration::from_secs(86_400)
            })
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            watch.observe(1_000_000, Instant::now()),
            Some(Skew::WentBack {
                by: Duration::from_millis(1_120_200 + 86_400_000 - 1_000_000)
            })
        );
    }

    #[test]
    fn windows_open_at_their_end_not_before() {
        let hour = Duration::from_secs(3600);
        assert!(!elapsed(1_000, hour, 1_000 + 3_599_999));
        assert!(elapsed(1_000, hour, 1_000 + 3_600_000));
        assert!(!elapsed(u64::MAX - 1, hour, u64::MAX - 1), "no overflow");
    }
}
