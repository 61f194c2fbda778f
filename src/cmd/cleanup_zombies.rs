//! `cleanup-zombies`: terminate (identity-checked), release budget and archive zombie and
//! failed workers; optionally end live workers (`--all --force`) and archive old completed
//! specs. The work is in [`crate::cleanup::cleanup`]; this module parses flags and prints.

use crate::cleanup::{self, CleanupItem, CleanupOptions, CleanupReport};
use crate::cli::{self, Format, Global};
use crate::cmd::stop_worker::grace_or_policy;
use crate::error::{Error, Result};
use crate::view::term::escape_line;
use clap::Parser;
use std::process::ExitCode;

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
    after_help = "Examples:\n  cleanup-zombies                                   # every spec in zombie/\n  cleanup-zombies --dry-run                         # show what would be done\n  cleanup-zombies --purge-archived-older-than 30d   # also delete old archived specs and logs\n  cleanup-zombies --worker worker-impl-20261122T101500Z-7f3a\n  cleanup-zombies --archive-completed-older-than 7d\n  cleanup-zombies --all --force --grace 10          # also stop every live worker\n  0 * * * * cleanup-zombies --home /srv/corral -q   # crontab"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// Only this worker, by id or unique prefix (repeatable); a live one needs --force.
    #[arg(long = "worker", value_name = "ID")]
    pub workers: Vec<String>,
    /// Every zombie (the default); with --force also every active worker.
    #[arg(long, conflicts_with = "workers")]
    pub all: bool,
    /// Also end live (active) workers: stopped gracefully and moved to completed/.
    #[arg(long)]
    pub force: bool,
    /// Seconds between SIGTERM and SIGKILL (also 500ms, 1m); default: the policy's grace_seconds.
    #[arg(long, value_name = "S")]
    pub grace: Option<String>,
    /// Print what would be done; write and signal nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also archive completed specs whose completed_at is older than DUR (e.g. 7d, 12h).
    #[arg(long, value_name = "DUR")]
    pub archive_completed_older_than: Option<String>,
    /// Also remove archived workers (spec, logs, lock files) that ended more than DUR ago,
    /// and logs left without a spec that old (e.g. 30d). With --dry-run: only list them.
    #[arg(long, value_name = "DUR")]
    pub purge_archived_older_than: Option<String>,
    /// Output format: table, or json (the whole report).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
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
        workers: crate::lookup::resolve_workers(&home, &cli.workers)?,
        all: cli.all,
        force: cli.force,
        grace: grace_or_policy(cli.grace.as_deref(), &home)?,
        dry_run: cli.dry_run,
        archive_completed_older_than: cli
            .archive_completed_older_than
            .as_deref()
            .map(|a| {
                crate::time::parse_duration(a)
                    .map_err(|e| Error::Invalid(format!("--archive-completed-older-than: {e}")))
            })
            .transpose()?,
    };
    let purge_after = purge_age(cli.purge_archived_older_than.as_deref())?;
    let report = cleanup::cleanup(&home, &opts)?;
    if let Some(why) = &report.skipped {
        eprintln!("cleanup-zombies: {why}");
    }
    let purged = purge_archived(&home, purge_after, cli.dry_run)?;
    for i in report.workers.iter().chain(&report.archived_completed) {
        if i.code != 0 {
            if let Some(e) = &i.error {
                eprintln!("error: {e}");
            }
        }
    }
    match &purged {
        Some(p) if cli.format != Format::Table => print_with_purge(cli.format, &report, p)?,
        _ => {
            print(cli.format, &report)?;
            if let Some(p) = &purged {
                print_purged(p)?;
            }
        }
    }
    match report.exit_code() {
        0 => Ok(()),
        code => {
            let failed = report
                .workers
                .iter()
                .chain(&report.archived_completed)
                .filter(|i| i.code != 0)
                .count();
            let containers = report
                .containers
                .iter()
                .filter(|c| c.action == "failed")
                .count();
            let msg = match (failed, containers) {
                (0, n) => format!("{n} container(s) not removed"),
                (f, 0) => format!("{f} worker(s) not cleaned up"),
                (f, n) => format!("{f} worker(s) not cleaned up, {n} container(s) not removed"),
            };
            Err(match code {
                3 => Error::NotFound(msg),
                5 => Error::Conflict(msg),
                6 => Error::Invalid(msg),
                _ => Error::Internal(msg),
            })
        }
    }
}

/// A table row; the id in its short form (`--format json` keeps it whole).
fn row(
    i: &CleanupItem,
    dry_run: bool,
    short: &std::collections::HashMap<&str, String>,
) -> Vec<String> {
    let process = match i.process {
        Some(p) if dry_run && p.signalled() => "alive: would signal".to_string(),
        Some(p) => p.describe().to_string(),
        None => "-".to_string(),
    };
    let process = match i.container {
        Some(c) => format!("{process}; container {}", c.replace('_', " ")),
        None => process,
    };
    vec![
        short
            .get(i.worker_id.as_str())
            .unwrap_or(&i.worker_id)
            .clone(),
        i.from.unwrap_or("-").to_string(),
        i.action.to_string(),
        process,
        i.tokens_released.to_string(),
    ]
}

fn print(format: Format, report: &CleanupReport) -> Result<()> {
    let value = || serde_json::to_value(report).map_err(|e| Error::Internal(e.to_string()));
    match format {
        Format::Json => cli::out_json(&value()?),
        Format::Jsonl => cli::out_jsonl(&value()?),
        Format::Table => {
            let items = || report.workers.iter().chain(&report.archived_completed);
            let short = crate::lookup::short_ids(items().map(|i| i.worker_id.as_str()));
            let rows: Vec<Vec<String>> = items().map(|i| row(i, report.dry_run, &short)).collect();
            let mut text = String::new();
            if !rows.is_empty() {
                text.push_str(&crate::view::term::table(
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
                // File names and reasons come from whatever sat in the home: one line each.
                text.push_str(&escape_line(&format!("{verb} {}: {}", q.path, q.reason)));
                text.push('\n');
            }
            for c in &report.containers {
                let what = match c.action {
                    "removed" => "removed container",
                    "would_remove" => "would remove container",
                    _ => "could not remove container",
                };
                text.push_str(&escape_line(&format!(
                    "{what} {} ({}, {}: {}){}",
                    c.name,
                    c.engine,
                    c.state,
                    c.reason,
                    c.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )));
                text.push('\n');
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

/// `--purge-archived-older-than`: the bounded duration vocabulary (exit 6 on anything else),
/// checked before anything is cleaned.
fn purge_age(flag: Option<&str>) -> Result<Option<f64>> {
    flag.map(|a| {
        crate::time::parse_secs(a)
            .map_err(|e| Error::Invalid(format!("--purge-archived-older-than: {e}")))
    })
    .transpose()
}

/// Retention after the cleanup (so the run that archives a worker never also purges it):
/// `retention::purge_archived`, the same function as `corral purge` and the monitor's
/// `purge_archived_after_seconds`.
fn purge_archived(
    home: &crate::Home,
    older_than: Option<f64>,
    dry_run: bool,
) -> Result<Option<crate::retention::PurgeReport>> {
    older_than
        .map(|secs| crate::retention::purge_archived(home, secs, crate::time::now(), dry_run))
        .transpose()
}

/// The purge as a table, after the cleanup's: one line per worker (ids short) and a total.
fn print_purged(p: &crate::retention::PurgeReport) -> Result<()> {
    let short = crate::lookup::short_ids(p.purged.iter().map(|x| x.worker_id.as_str()));
    let verb = if p.dry_run { "would purge" } else { "purged" };
    for x in &p.purged {
        cli::out(format!(
            "{verb} {} ({}, {} log bytes)",
            short.get(x.worker_id.as_str()).unwrap_or(&x.worker_id),
            x.what,
            x.log_bytes
        ))?;
    }
    for s in &p.skipped {
        eprintln!("warning: archived/{s}.json is unreadable: left alone (see corral doctor)");
    }
    cli::out(format!(
        "{verb}: {} archived worker(s), {} log bytes",
        p.purged.len(),
        p.bytes_freed
    ))
}

/// The cleanup report with the purge's under `purge_archived`, as one JSON document.
fn print_with_purge(
    format: Format,
    report: &CleanupReport,
    p: &crate::retention::PurgeReport,
) -> Result<()> {
    let mut v = serde_json::to_value(report).map_err(|e| Error::Internal(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "purge_archived".into(),
            serde_json::to_value(p).map_err(|e| Error::Internal(e.to_string()))?,
        );
    }
    if format == Format::Json {
        cli::out_json(&v)
    } else {
        cli::out_jsonl(&v)
    }
}
