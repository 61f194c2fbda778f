//! corral: file-system coordination for fleets of worker processes.
//!
//! Everything lives in plain files under one home directory so that shell runbooks, `jq`
//! and `tail -F` can read it; this library makes every change to those files atomic, locked,
//! validated and logged. Modules are layered, each importing only those above it in this
//! list: `error` → `id`, `time`, `schema`, `process` → `home` → `store` → `spec`, `events`,
//! `policy` → `budget`, `queue` → `lifecycle`, `view` → `doctor`, `shutdown` → `monitor` → `cli`, `cmd`.

pub mod budget;
pub mod cli;
pub mod cmd;
pub mod doctor;
pub mod error;
pub mod events;
pub mod home;
pub mod id;
pub mod lifecycle;
pub mod monitor;
pub mod policy;
pub mod process;
pub mod progress;
pub mod queue;
pub mod schema;
pub mod shutdown;
pub mod spec;
pub mod store;
pub mod time;
pub mod view;

pub use error::{Error, Result};
pub use home::{Home, StateDir};
pub use spec::{Status, WorkerSpec};
