//! The integration tests: one crate (one build, one binary), a module per concern, one
//! shared `support` module. Every test runs the real binaries against a temporary home.

mod support;

mod chaos;
mod containers;
mod dashboards;
mod fleet;
mod foundation;
mod groups;
mod ids;
mod launch;
mod liveness;
mod log_rotation;
mod nfs;
mod once;
mod operator;
mod queue;
mod queue_claims;
mod queue_controls;
mod queue_scale;
mod queue_work;
mod readme;
mod restart;
mod runbook;
mod safety;
mod shutdown;
mod time_trust;
mod wiring;
