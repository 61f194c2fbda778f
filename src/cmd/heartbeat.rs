//! `heartbeat`: the worker side of liveness. Reports status, tokens and progress; ends the
//! worker with `--complete` / `--fail`; `--loop --pid P` beats on behalf of a process.

use crate::cli::{self, Format, Global};
use crate::error::{Error, Result};
use crate::lifecycle::{self, Beat};
use crate::spec::Status;
use clap::Parser;
use std::process::ExitCode;

/// Report a worker's liveness, progress and token use, or end it.
///
/// Exit 5 means the worker is no longer active (stopped, zombie, archived) or is shutting
/// down: the worker should finish and exit.
#[derive(Debug, Parser)]
#[command(
    name = "heartbeat",
    version,
    after_help = "Examples:\n  heartbeat \"$CORRAL_WORKER_ID\" --tokens-add 1200 --progress 40 --message 'tests pass'\n  heartbeat --status idle\n  heartbeat --complete --summary 'PR opened'\n  heartbeat --fail --error 'API quota exhausted'\n  heartbeat \"$ID\" --loop --interval 10 --pid \"$PID\""
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// Worker id or a unique prefix of it (default: $CORRAL_WORKER_ID, set for launched
    /// workers).
    #[arg(env = "CORRAL_WORKER_ID")]
    pub worker_id: String,
    /// running or idle.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<Status>,
    /// Total tokens used so far.
    #[arg(long, value_name = "N", conflicts_with = "tokens_add")]
    pub tokens_used: Option<u64>,
    /// Tokens used since the last report.
    #[arg(long, value_name = "N")]
    pub tokens_add: Option<u64>,
    /// The task the worker is on now.
    #[arg(long)]
    pub task_id: Option<String>,
    /// A short status message.
    #[arg(long)]
    pub message: Option<String>,
    /// Jobs finished since the last report (adds to the spec's `jobs_processed`).
    #[arg(long, value_name = "N")]
    pub jobs_add: Option<u64>,
    /// Progress in percent (0–100).
    #[arg(long, value_name = "PCT")]
    pub progress: Option<f64>,
    /// End the worker successfully (moves it to completed/, releases its budget).
    #[arg(long, conflicts_with_all = ["fail", "run_loop"])]
    pub complete: bool,
    /// Summary recorded with --complete.
    #[arg(long, requires = "complete")]
    pub summary: Option<String>,
    /// End the worker as failed (moves it to zombie/ for cleanup).
    #[arg(long, requires = "error", conflicts_with = "run_loop")]
    pub fail: bool,
    /// Error recorded with --fail.
    #[arg(long, requires = "fail")]
    pub error: Option<String>,
    /// Beat every --interval seconds on behalf of --pid until it exits.
    #[arg(long = "loop", requires = "pid")]
    pub run_loop: bool,
    /// Time between beats with --loop: seconds, or e.g. 500ms, 30s, 1m.
    #[arg(long, default_value = "30", value_name = "S")]
    pub interval: String,
    /// The process to beat for with --loop.
    #[arg(long, value_name = "P")]
    pub pid: Option<i32>,
    /// With --loop, also hold the worker's liveness lock while looping.
    #[arg(long, requires = "run_loop")]
    pub hold_lock: bool,
    /// json prints the updated spec.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

fn parse_status(s: &str) -> std::result::Result<Status, String> {
    match Status::parse(s) {
        Some(st @ (Status::Running | Status::Idle)) => Ok(st),
        _ => Err(format!("invalid status {s:?}: use running or idle")),
    }
}

/// Entry point of the `heartbeat` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("heartbeat", || run(cli))
}

fn run(cli: Cli) -> Result<()> {
    // Checked before anything else, so a bad value is refused even without a home (S5).
    if cli.run_loop {
        crate::time::parse_positive_secs("--interval", &cli.interval)?;
    }
    let home = cli.global.home()?;
    if let Some(p) = cli.progress {
        if !(0.0..=100.0).contains(&p) {
            return Err(Error::Invalid(format!("--progress {p} is outside 0-100")));
        }
    }
    // After the checks of the flags: a bad value is exit 6 whether or not the worker exists.
    let id = &worker_id(&home, &cli.worker_id)?;
    let beat = Beat {
        status: cli.status,
        tokens_used: cli.tokens_used,
        tokens_add: cli.tokens_add,
        task_id: cli.task_id.clone(),
        message: cli.message.clone(),
        progress: cli.progress,
        jobs_add: cli.jobs_add,
    };
    if cli.run_loop {
        let pid = cli
            .pid
            .ok_or_else(|| Error::Usage("--loop needs --pid".into()))?;
        let interval = crate::time::parse_positive_secs("--interval", &cli.interval)?;
        lifecycle::heartbeat_loop(
            &home,
            id,
            pid,
            crate::time::duration(interval),
            cli.hold_lock,
        )?;
        return Ok(());
    }
    let spec = if cli.complete || cli.fail {
        // Record the final figures first, then end the worker.
        let has_update = beat.tokens_used.is_some()
            || beat.tokens_add.is_some()
            || beat.message.is_some()
            || beat.progress.is_some()
            || beat.task_id.is_some();
        if has_update {
            match lifecycle::heartbeat(&home, id, &beat) {
                Ok(_) | Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if cli.complete {
            lifecycle::complete_worker(&home, id, cli.summary.as_deref())?
        } else {
            let err = cli.error.as_deref().unwrap_or("failed");
            lifecycle::fail_worker(&home, id, err, None, None)?
        }
    } else {
        lifecycle::heartbeat(&home, id, &beat)?
    };
    if cli.format != Format::Table {
        cli::out_json(&lifecycle::spec_json(&spec))?;
    }
    Ok(())
}

/// The worker a beat is for: a unique prefix typed by an operator is resolved (exit 5 with
/// the candidates when it is ambiguous, 3 when nothing matches), but the id a launched
/// worker got in `$CORRAL_WORKER_ID` is taken as it is: a worker whose spec is gone must
/// never beat another worker whose id merely begins with its own.
fn worker_id(home: &crate::Home, token: &str) -> Result<String> {
    if std::env::var("CORRAL_WORKER_ID").is_ok_and(|own| own == token) {
        crate::id::validate("worker", token)?;
        return Ok(token.to_string());
    }
    crate::lookup::resolve_worker(home, token)
}
