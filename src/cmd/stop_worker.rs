//! `stop-worker` (being built: see the issue tracker).

use crate::cli::{self, Global};
use clap::Parser;
use std::process::ExitCode;

/// stop-worker (not built yet).
#[derive(Debug, Parser)]
#[command(name = "stop-worker", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
}

/// Entry point of the `stop-worker` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("stop-worker", || {
        Err(crate::Error::Internal(
            "stop-worker is not built yet".into(),
        ))
    })
}
