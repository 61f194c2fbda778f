//! The monitor's own sense of time (S8). If the monitor is paused together with its workers
//! (a VM pause, a laptop suspend, SIGSTOP), every heartbeat looks ancient when it wakes up,
//! although nobody could beat meanwhile. The event loop notices that it lost time (it slept
//! far longer than it asked to, a pass took far too long, or the wall clock jumped past the
//! monotonic one) and then re-arms heartbeat deadlines from the resume instead of declaring
//! the fleet dead. Measurements are passed in, so the rule is unit-tested without sleeping.

use std::time::Instant;

/// Marks taken around one turn of the event loop.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub mono: Instant,
    pub wall_ms: i64,
}

impl Mark {
    /// Now, on both clocks.
    pub fn now() -> Mark {
        Mark {
            mono: Instant::now(),
            wall_ms: crate::time::now().timestamp_millis(),
        }
    }
}

/// Milliseconds the monitor was not watching: how much longer a wait took than asked, or
/// how far the wall clock ran ahead of the monotonic one (a suspend stops the latter).
pub fn lost_ms(asked_ms: i64, before: Mark, after: Mark) -> i64 {
    let mono = after
        .mono
        .saturating_duration_since(before.mono)
        .as_millis() as i64;
    let wall = after.wall_ms.saturating_sub(before.wall_ms);
    let overslept = mono.saturating_sub(asked_ms.max(0));
    let jumped = wall.saturating_sub(mono);
    overslept.max(jumped).max(0)
}

/// Notices pauses of the monitor.
#[derive(Debug, Clone)]
pub struct PauseDetector {
    /// A gap at least this long is a pause (the policy's `warning_seconds`).
    pub threshold_ms: i64,
    /// The start of the current pass (after the wait returned).
    pass_started: Option<Mark>,
}

impl PauseDetector {
    /// A detector for gaps of `threshold_seconds` or more.
    pub fn new(threshold_seconds: f64) -> PauseDetector {
        PauseDetector {
            threshold_ms: (threshold_seconds * 1000.0) as i64,
            pass_started: None,
        }
    }

    /// After a wait that asked for `asked_ms`: the pause, in ms, if this wait or the pass
    /// before it lost more than the threshold. Starts timing the next pass.
    pub fn after_wait(&mut self, asked_ms: i64, before: Mark, after: Mark) -> Option<i64> {
        let pass = self.pass_started.map_or(0, |s| lost_ms(0, s, before));
        self.pass_started = Some(after);
        let lost = lost_ms(asked_ms, before, after).max(pass);
        (lost >= self.threshold_ms).then_some(lost)
    }

    /// Within a pass, before a destructive verdict: the pause, if this pass has been
    /// running (that is, stopped) longer than the threshold. Restarts the pass timer.
    pub fn within_pass(&mut self, now: Mark) -> Option<i64> {
        let started = self.pass_started?;
        let lost = lost_ms(0, started, now);
        if lost >= self.threshold_ms {
            self.pass_started = Some(now);
            Some(lost)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, mono_ms: u64, wall_ms: i64) -> Mark {
        Mark {
            mono: base + Duration::from_millis(mono_ms),
            wall_ms,
        }
    }

    #[test]
    fn a_wait_that_overslept_is_a_pause() {
        let b = Instant::now();
        let mut d = PauseDetector::new(60.0);
        // Asked for 1 s, woke after 1.2 s: scheduling noise.
        assert_eq!(d.after_wait(1000, at(b, 0, 0), at(b, 1200, 1200)), None);
        // Asked for 1 s, woke after 91 s: SIGSTOP or a VM pause.
        assert_eq!(
            d.after_wait(1000, at(b, 1200, 1200), at(b, 92_200, 92_200)),
            Some(90_000)
        );
        // An event that woke us early is no pause.
        assert_eq!(
            d.after_wait(60_000, at(b, 92_200, 92_200), at(b, 92_300, 92_300)),
            None
        );
    }

    #[test]
    fn a_suspend_shows_as_the_wall_clock_jumping() {
        let b = Instant::now();
        let mut d = PauseDetector::new(60.0);
        // The monotonic clock stood still for 2 hours of wall time.
        assert_eq!(
            d.after_wait(1000, at(b, 0, 0), at(b, 500, 7_200_500)),
            Some(7_200_000)
        );
    }

    #[test]
    fn a_pass_that_took_too_long_counts() {
        let b = Instant::now();
        let mut d = PauseDetector::new(10.0);
        assert_eq!(d.after_wait(100, at(b, 0, 0), at(b, 100, 100)), None);
        assert_eq!(d.within_pass(at(b, 5_000, 5_000)), None);
        assert_eq!(d.within_pass(at(b, 20_100, 20_100)), Some(20_000));
        // Measured from the detection on, so it is reported once.
        assert_eq!(d.within_pass(at(b, 20_200, 20_200)), None);
        // The next wait also sees the long pass before it.
        let mut d = PauseDetector::new(10.0);
        d.after_wait(100, at(b, 0, 0), at(b, 100, 100));
        assert_eq!(
            d.after_wait(100, at(b, 30_100, 30_100), at(b, 30_150, 30_150)),
            Some(30_000)
        );
    }
}
