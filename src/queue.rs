//! The filesystem-native task queue (DESIGN.md §8). Being built: see the issue tracker.

use crate::error::Result;
use crate::home::Home;
use crate::policy::HeartbeatPolicy;
use crate::time::Timestamp;

/// What one maintenance pass of the monitor did to the queue.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Maintenance {
    /// Tasks put back in pending because their claimant is gone or their lease ran out.
    pub requeued: u64,
    /// `task_stuck` events written in this pass.
    pub stuck: u64,
    /// `task_starved` events written in this pass.
    pub starved: u64,
    /// One line for the monitor's log: `workers 3/3, queue 123 (llm:123), processing 2, stuck 2`.
    pub summary: String,
}

/// One maintenance pass: requeue, stuck and starvation detection, summary line.
pub fn maintain(_home: &Home, _policy: &HeartbeatPolicy, _now: Timestamp) -> Result<Maintenance> {
    Ok(Maintenance::default())
}
