//! `stop-worker`: graceful shutdown of one, some or all workers (DESIGN.md §6). The work is
//! in [`crate::stop`]; this module parses flags, prints, and picks the exit code.

use crate::cleanup::worst_code;
use crate::cli::{self, Format, Global};
use crate::error::{Error, Result};
use crate::policy::HeartbeatPolicy;
use crate::stop::{self, StopResult, StopSelection};
use clap::Parser;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

/// Stop workers gracefully: mark them shutting_down, SIGTERM their process group, wait the
/// grace period, SIGKILL what is left, move them to completed/ and release their budget.
///
/// Workers are stopped in parallel. With several workers, a failure on one does not stop
/// the others; the exit code is the worst one met (3 unknown id, 5 not active).
#[derive(Debug, Parser)]
#[command(
    name = "stop-worker",
    version,
    after_help = "Examples:\n  stop-worker worker-implementation-20261122T101500Z-7f3a\n  stop-worker --session build-42 --reason \"build finished\"\n  stop-worker --type converter-worker --grace 30\n  stop-worker --all --grace 2 --format json"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// Workers to stop, by id or unique prefix (an ambiguous one stops nothing: exit 5).
    #[arg(value_name = "ID", conflicts_with_all = ["all", "session", "worker_type"])]
    pub ids: Vec<String>,
    /// Stop every active worker.
    #[arg(long)]
    pub all: bool,
    /// Stop the active workers of this session (pool): pool_stopping/pool_stopped events.
    #[arg(long, value_name = "S")]
    pub session: Option<String>,
    /// Stop the active workers of this type.
    #[arg(long = "type", value_name = "T")]
    pub worker_type: Option<String>,
    /// Seconds between SIGTERM and SIGKILL (also 500ms, 1m); default: the policy's grace_seconds.
    #[arg(long, value_name = "S")]
    pub grace: Option<String>,
    /// Why the workers are stopped (recorded in the spec's history and events).
    #[arg(long, value_name = "R", default_value = "stopped by operator")]
    pub reason: String,
    /// Output format: table, or json (what happened per worker).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// The grace period: the flag (seconds, or `500ms`, `30s`, `1m`: the bounded vocabulary of
/// `time::parse_secs`, exit 6 on anything else), else the policy's `grace_seconds`.
pub fn grace_or_policy(flag: Option<&str>, home: &crate::Home) -> Result<Duration> {
    match flag {
        Some(g) => crate::time::parse_secs(g)
            .map(crate::time::duration)
            .map_err(|e| Error::Invalid(format!("--grace: {e}"))),
        None => Ok(crate::time::duration(
            HeartbeatPolicy::load(home)?.grace_seconds,
        )),
    }
}

/// Entry point of the `stop-worker` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("stop-worker", || run(cli))
}

fn run(cli: Cli) -> Result<()> {
    let home = cli.global.home()?;
    let grace = grace_or_policy(cli.grace.as_deref(), &home)?;
    let sel = StopSelection {
        ids: crate::lookup::resolve_workers(&home, &cli.ids)?,
        all: cli.all,
        session: cli.session,
        worker_type: cli.worker_type,
    };
    let results = stop::stop_many(&home, &sel, grace, &cli.reason)?;
    if results.is_empty() {
        eprintln!("stop-worker: no active worker matches; nothing to stop");
    }
    for r in &results {
        if let Err(e) = &r.outcome {
            eprintln!("error: {e}");
        }
    }
    print(cli.format, &results)?;
    let failed: Vec<&Error> = results
        .iter()
        .filter_map(|r| r.outcome.as_ref().err())
        .collect();
    let code = worst_code(failed.iter().map(|e| e.exit_code()));
    if code == 0 {
        return Ok(());
    }
    Err(Error::with_code(
        code,
        format!(
            "{} of {} worker(s) not stopped",
            failed.len(),
            results.len()
        ),
    ))
}

/// The tokens this stop released: none when another stopper had already released them, so
/// summing the column counts each worker once.
fn released(s: &stop::Stopped) -> u64 {
    if s.process == stop::ProcessOutcome::AlreadyStopped {
        0
    } else {
        s.spec.token_budget.allocated
    }
}

fn result_json(r: &StopResult) -> Value {
    match &r.outcome {
        Ok(s) => json!({
            "worker_id": r.worker_id,
            "result": "stopped",
            "previous_status": s.previous_status.as_str(),
            "process": s.process,
            "signal": s.process.signal(),
            "pid": s.spec.pid,
            "tokens_released": released(s),
            "tokens_used": s.spec.token_budget.used,
            "uptime_seconds": crate::lifecycle::uptime_seconds(&s.spec, crate::time::now()),
            "completed_at": s.spec.completed_at.as_ref().map(crate::time::format),
        }),
        Err(e) => json!({
            "worker_id": r.worker_id,
            "result": "error",
            "exit_code": e.exit_code(),
            "error": e.to_string(),
        }),
    }
}

fn print(format: Format, results: &[StopResult]) -> Result<()> {
    match format {
        Format::Json => cli::out_json(&Value::Array(results.iter().map(result_json).collect())),
        Format::Jsonl => {
            for r in results {
                cli::out_jsonl(&result_json(r))?;
            }
            Ok(())
        }
        Format::Table => {
            if results.is_empty() {
                return Ok(());
            }
            let short = crate::lookup::short_ids(results.iter().map(|r| r.worker_id.as_str()));
            let shown = |id: &String| short.get(id.as_str()).unwrap_or(id).clone();
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|r| match &r.outcome {
                    Ok(s) => vec![
                        shown(&r.worker_id),
                        "stopped".into(),
                        s.process.describe().into(),
                        released(s).to_string(),
                    ],
                    Err(e) => vec![
                        shown(&r.worker_id),
                        format!("error (exit {})", e.exit_code()),
                        "-".into(),
                        "0".into(),
                    ],
                })
                .collect();
            cli::out(crate::view::term::table(
                &["WORKER", "RESULT", "PROCESS", "TOKENS_RELEASED"],
                &rows,
            ))
        }
    }
}
