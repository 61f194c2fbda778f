//! corral: file-system coordination for fleets of worker processes.
//!
//! Everything lives in plain files under one home directory so that shell runbooks, `jq`
//! and `tail -F` can read it; this library makes every change to those files atomic, locked,
//! validated and logged. Modules are layered, each importing only those above it in this
//! list: `error` → `id`, `time`, `schema`, `process` → `home` → `store` → `spec`, `events`,
//! `policy` → `budget`, `queue`, `logrotate` → `lifecycle`, `view` → `doctor`, `stop`, `cleanup` → `liveness` → `cli`, `cmd`.
//! (`shutdown` re-exports `stop` and `cleanup` for older callers.)

pub mod adopt;
pub mod budget;
pub mod cleanup;
pub mod cli;
pub mod cmd;
pub mod container;
pub mod doctor;
pub mod error;
pub mod events;
pub mod home;
pub mod id;
pub mod lifecycle;
pub mod liveness;
pub mod logrotate;
pub mod lookup;
pub mod netfs;
pub mod perms;
pub mod policy;
pub mod pool;
pub mod process;
pub mod progress;
pub mod queue;
pub mod retention;
pub mod schema;
pub mod setup;
pub mod shutdown;
pub mod spec;
pub mod status;
pub mod stop;
pub mod store;
pub mod time;
pub mod view;
pub mod worker_types;

pub use error::{Error, Result};
pub use home::{Home, StateDir};
pub use spec::{Status, WorkerSpec};
