//! `heartbeat-monitor` (being built: see the issue tracker).

use crate::cli::{self, Global};
use clap::Parser;
use std::process::ExitCode;

/// heartbeat-monitor (not built yet).
#[derive(Debug, Parser)]
#[command(name = "heartbeat-monitor", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
}

/// Entry point of the `heartbeat-monitor` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("heartbeat-monitor", || {
        Err(crate::Error::Internal(
            "heartbeat-monitor is not built yet".into(),
        ))
    })
}
