//! `worker-monitor` (being built: see the issue tracker).

use crate::cli::{self, Global};
use clap::Parser;
use std::process::ExitCode;

/// worker-monitor (not built yet).
#[derive(Debug, Parser)]
#[command(name = "worker-monitor", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
}

/// Entry point of the `worker-monitor` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("worker-monitor", || {
        Err(crate::Error::Internal(
            "worker-monitor is not built yet".into(),
        ))
    })
}
