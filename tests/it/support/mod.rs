//! Support shared by every integration test: the scene (a temp home and the real binaries)
//! and real processes (monitor, reaper, `/proc` readers, signals).
#![allow(dead_code)]

pub mod containers;
pub mod nfs;
pub mod procs;
pub mod scene;

pub use scene::*;
