//! The old home of stop and cleanup, which are two concerns: see [`crate::stop`] (graceful
//! stop, `stop_group`) and [`crate::cleanup`] (zombie cleanup). Kept as re-exports so callers
//! written against `shutdown::` (the monitor) build unchanged; new code uses the two modules.

pub use crate::cleanup::*;
pub use crate::stop::*;
