//! `task-queue` (being built: see the issue tracker).

use crate::cli::{self, Global};
use clap::Parser;
use std::process::ExitCode;

/// task-queue (not built yet).
#[derive(Debug, Parser)]
#[command(name = "task-queue", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
}

/// Entry point of the `task-queue` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("task-queue", || {
        Err(crate::Error::Internal("task-queue is not built yet".into()))
    })
}
