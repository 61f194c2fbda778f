//! The liveness monitor behind `heartbeat-monitor` (DESIGN.md §6). Being built: see the issue
//! tracker.
