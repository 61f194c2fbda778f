//! `cleanup-zombies`: terminate (identity-checked), release budget and archive zombie and
//! failed workers; optionally end live workers (`--all --force`) and archive old completed
//! specs. The work is in [`crate::shutdown::cleanup`]; this module parses flags and prints.

use crate::cli::{self, Format, Global};
use crate::cmd::stop_worker::{grace_or_policy, parse_grace};
use crate::error::{Error, Result};
use crate::shutdown::{self, CleanupItem, CleanupOptions, CleanupReport};
use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

/// Clean up zombie and failed workers: terminate any process still alive (only after its
/// identity is verified, so a reused pid is never signalled), release the tokens they hold,
/// and move their specs to archived/. Worker logs are kept.
///
/// Safe to run from cron: runs never overlap (a second run exits 0 saying so), and running
/// it twice does nothing the second time.
#[derive(Debug, Parser)]
#[command(
    name = "cleanup-zombies",
    version,
    after_help = "Examples:\n  cleanup-zombies                                   # every spec in zombie/\n  cleanup-zombies --dry-run                         # show what would be done\n  cleanup-zombies --worker worker-impl-20261122T101500Z-7f3a\n  cleanup-zombies --archive-completed-older-than 7d\n  cleanup-zombies --all --force --grace 10          # also stop every live worker\n  0 * * * * cleanup-zombies --home /srv/corral -q   # crontab"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// Only this worker (repeatable); a live one needs --force.
    #[arg(long = "worker", value_name = "ID")]
    pub workers: Vec<String>,
    /// Every zombie (the default); with --force also every active worker.
    #[arg(long, conflicts_with = "workers")]
    pub all: bool,
    /// Also end live (active) workers: stopped gracefully and moved to completed/.
    #[arg(long)]
    pub force: bool,
    /// Seconds between SIGTERM and SIGKILL (also 500ms, 1m); default: the policy's grace_seconds.
    #[arg(long, value_name = "S", value_parser = parse_grace)]
    pub grace: Option<Duration>,
    /// Print what would be done; write and signal nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also archive completed specs whose completed_at is older than DUR (e.g. 7d, 12h).
    #[arg(long, value_name = "DUR", value_parser = parse_age)]
    pub archive_completed_older_than: Option<chrono::Duration>,
    /// Output format: table, or json (the whole report).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

fn parse_age(s: &str) -> std::result::Result<chrono::Duration, String> {
    crate::time::parse_duration(s).map_err(|e| e.to_string())
}

/// Entry point of the `cleanup-zombies` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("cleanup-zombies", || run(cli))
}

fn run(cli: Cli) -> Result<()> {
    if cli.force && !cli.all && cli.workers.is_empty() {
        return Err(Error::Usage(
            "--force ends live workers: say which with --all or --worker ID".into(),
        ));
    }
    let home = cli.global.home()?;
    let opts = CleanupOptions {
        workers: cli.workers,
        all: cli.all,
        force: cli.force,
        grace: grace_or_policy(cli.grace, &home)?,
        dry_run: cli.dry_run,
        archive_completed_older_than: cli.archive_completed_older_than,
    };
    let report = shutdown::cleanup(&home, &opts)?;
    if let Some(why) = &report.skipped {
        eprintln!("cleanup-zombies: {why}");
    }
    for i in report.workers.iter().chain(&report.archived_completed) {
        if i.code != 0 {
            if let Some(e) = &i.error {
                eprintln!("error: {e}");
            }
        }
    }
    print(cli.format, &report)?;
    match report.exit_code() {
        0 => Ok(()),
        code => {
            let failed = report
                .workers
                .iter()
                .chain(&report.archived_completed)
                .filter(|i| i.code != 0)
                .count();
            let msg = format!("{failed} worker(s) not cleaned up");
            Err(match code {
                3 => Error::NotFound(msg),
                5 => Error::Conflict(msg),
                6 => Error::Invalid(msg),
                _ => Error::Internal(msg),
            })
        }
    }
}

fn row(i: &CleanupItem, dry_run: bool) -> Vec<String> {
    let process = match i.process {
        Some(p) if dry_run && p.signalled() => "alive: would signal",
        Some(p) => p.describe(),
        None => "-",
    };
    vec![
        i.worker_id.clone(),
        i.from.unwrap_or("-").to_string(),
        i.action.to_string(),
        process.to_string(),
        i.tokens_released.to_string(),
    ]
}

fn print(format: Format, report: &CleanupReport) -> Result<()> {
    let value = || serde_json::to_value(report).map_err(|e| Error::Internal(e.to_string()));
    match format {
        Format::Json => cli::out_json(&value()?),
        Format::Jsonl => cli::out_jsonl(&value()?),
        Format::Table => {
            let rows: Vec<Vec<String>> = report
                .workers
                .iter()
                .chain(&report.archived_completed)
                .map(|i| row(i, report.dry_run))
                .collect();
            let mut text = String::new();
            if !rows.is_empty() {
                text.push_str(&cli::table(
                    &["WORKER", "FROM", "ACTION", "PROCESS", "TOKENS_RELEASED"],
                    &rows,
                ));
                text.push('\n');
            }
            for q in &report.quarantined {
                let verb = if report.dry_run {
                    "would quarantine"
                } else {
                    "quarantined"
                };
                text.push_str(&format!("{verb} {}: {}\n", q.path, q.reason));
            }
            let released: u64 = report.workers.iter().map(|i| i.tokens_released).sum();
            if report.skipped.is_none() {
                let done = report
                    .workers
                    .iter()
                    .chain(&report.archived_completed)
                    .filter(|i| i.code == 0 && i.action != "skipped")
                    .count();
                text.push_str(&format!(
                    "{}{done} worker(s), {released} tokens {}",
                    if report.dry_run { "dry run: " } else { "" },
                    if report.dry_run {
                        "would be released"
                    } else {
                        "released"
                    }
                ));
            }
            if text.is_empty() {
                return Ok(());
            }
            cli::out(text.trim_end())
        }
    }
}
