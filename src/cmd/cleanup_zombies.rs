//! `cleanup-zombies` (being built: see the issue tracker).

use crate::cli::{self, Global};
use clap::Parser;
use std::process::ExitCode;

/// cleanup-zombies (not built yet).
#[derive(Debug, Parser)]
#[command(name = "cleanup-zombies", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
}

/// Entry point of the `cleanup-zombies` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("cleanup-zombies", || {
        Err(crate::Error::Internal(
            "cleanup-zombies is not built yet".into(),
        ))
    })
}
