//! `recalc-budget`: recompute the token budget from the specs, report the drift and fix it.

use crate::budget::{self, RecalcOptions};
use crate::cli::{self, Format, Global};
use crate::error::{Error, Result};
use clap::Parser;
use std::process::ExitCode;

/// Recompute `used` (reserved by live workers) and `consumed` (spent by workers finished this
/// period) from the specs, and fix token-budget.json.
///
/// With --check nothing is written and the exit code is 10 when the file has drifted: run it
/// from cron to be told.
#[derive(Debug, Parser)]
#[command(
    name = "recalc-budget",
    version,
    after_help = "Examples:\n  recalc-budget                 # fix drift, print before/after\n  recalc-budget --check         # exit 10 on drift, write nothing\n  recalc-budget --set-total 2000000\n  recalc-budget --reset-period  # start a new accounting period (consumed = 0)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// Report only; exit 10 when the budget has drifted.
    #[arg(long)]
    pub check: bool,
    /// Set the total budget.
    #[arg(long, value_name = "N", conflicts_with = "check")]
    pub set_total: Option<u64>,
    /// Start a new period: only workers finishing from now on count as consumed.
    #[arg(long, conflicts_with = "check")]
    pub reset_period: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Entry point of the `recalc-budget` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("recalc-budget", || run(cli))
}

fn run(cli: Cli) -> Result<()> {
    let home = cli.global.home()?;
    let opts = RecalcOptions {
        check_only: cli.check,
        set_total: cli.set_total,
        reset_period: cli.reset_period,
    };
    let d = budget::recalc(&home, &opts)?;
    if !cli.check {
        crate::events::emit(&home, crate::doctor::budget_event(&d));
    }
    match cli.format {
        Format::Table => {
            let rows = vec![
                vec![
                    "total".into(),
                    d.before.total.to_string(),
                    d.after.total.to_string(),
                    signed(budget::drift(d.after.total, d.before.total)),
                ],
                vec![
                    "used".into(),
                    d.before.used.to_string(),
                    d.after.used.to_string(),
                    signed(d.used_drift),
                ],
                vec![
                    "consumed".into(),
                    d.before.consumed.to_string(),
                    d.after.consumed.to_string(),
                    signed(d.consumed_drift),
                ],
                vec![
                    "available".into(),
                    d.before.available.to_string(),
                    d.after.available.to_string(),
                    signed(d.available_drift),
                ],
            ];
            let head = if cli.check {
                ["", "file", "specs", "drift"]
            } else {
                ["", "before", "after", "drift"]
            };
            cli::out(crate::view::term::table(&head, &rows))?;
            cli::out(format!(
                "live workers {}, finished this period {}, unreadable specs {}",
                d.recount.live_workers, d.recount.finished_workers, d.recount.unreadable_specs
            ))?;
        }
        Format::Json | Format::Jsonl => {
            let v = serde_json::json!({
                "drift": d.any(),
                "checked_only": cli.check,
                "before": d.before, "after": d.after, "recount": d.recount,
                "used_drift": d.used_drift, "consumed_drift": d.consumed_drift, "available_drift": d.available_drift,
            });
            if cli.format == Format::Json {
                cli::out_json(&v)?
            } else {
                cli::out_jsonl(&v)?
            }
        }
    }
    if cli.check && d.any() {
        return Err(Error::CheckFailed(format!(
            "budget drift: used {:+}, consumed {:+} (run recalc-budget to fix)",
            d.used_drift, d.consumed_drift
        )));
    }
    Ok(())
}

fn signed(n: i64) -> String {
    if n == 0 {
        "0".into()
    } else {
        format!("{n:+}")
    }
}
