//! `corral init`, `status`, `doctor`, `purge`, `adopt` and `scripts install`: flags in,
//! library call, report out.

use super::InitArgs;
use crate::cli::{self, Format, Global};
use crate::error::{Error, Result};
use crate::home::Home;
use clap::{Args, Subcommand};

fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(format!("serialise: {e}")))
}

fn emit<T: serde::Serialize>(format: Format, v: &T) -> Result<()> {
    match format {
        Format::Jsonl => cli::out_jsonl(&to_value(v)?),
        _ => cli::out_json(&to_value(v)?),
    }
}

/// `corral init`: prints the home's absolute path (the data), notes on stderr.
pub fn init(g: &Global, a: InitArgs) -> Result<()> {
    let home = Home::locate(g.home.as_deref())?;
    let r = crate::setup::init(
        &home,
        &crate::setup::InitOptions {
            total_tokens: a.total_tokens,
            force: a.force,
            reset_config: a.reset_config,
            group: a.group,
            with_scripts: a.with_scripts,
        },
    )?;
    if a.format != Format::Table {
        return emit(a.format, &r);
    }
    if !g.quiet {
        if !r.created {
            eprintln!(
                "kept {} existing file(s); budget recounted from the specs: total {}, used {}, consumed {}, available {}",
                r.kept.len(),
                r.budget.total,
                r.budget.used,
                r.budget.consumed,
                r.budget.available
            );
        }
        for b in &r.backups {
            eprintln!("backup: {}", b.display());
        }
        if !r.scripts.is_empty() {
            eprintln!(
                "installed {} script(s) into {}",
                r.scripts.len(),
                home.root().join("scripts").display()
            );
        }
    }
    cli::out(r.home.display())
}

/// `corral status`: exit 10 when there are problems.
pub fn status(home: &Home, format: Format) -> Result<()> {
    let s = crate::status::gather(home, crate::time::now())?;
    match format {
        Format::Table => cli::out(crate::status::render(&s))?,
        f => emit(f, &s)?,
    }
    if s.problems.is_empty() {
        Ok(())
    } else {
        Err(Error::CheckFailed(String::new()))
    }
}

/// `corral doctor [--fix]`: exit 10 while a problem remains (found without `--fix`, or one
/// `--fix` cannot repair).
pub fn doctor(home: &Home, fix: bool, format: Format) -> Result<()> {
    let findings = crate::doctor::run(home, fix)?;
    match format {
        Format::Table => {
            if findings.is_empty() {
                cli::out("ok: no problems found")?;
            }
            for f in &findings {
                let fixed = f
                    .fixed
                    .as_ref()
                    .map(|x| format!(" -> {x}"))
                    .unwrap_or_default();
                cli::out(crate::view::term::escape_line(&format!(
                    "{}: {}: {}{fixed}",
                    f.kind, f.path, f.detail
                )))?;
            }
        }
        Format::Json => cli::out_json(
            &serde_json::json!({ "problems": findings.len(), "fixed": fix, "findings": findings }),
        )?,
        Format::Jsonl => {
            for f in &findings {
                cli::out_jsonl(&to_value(f)?)?;
            }
        }
    }
    let left = findings.iter().filter(|f| f.fixed.is_none()).count();
    if findings.is_empty() || (fix && left == 0) {
        Ok(())
    } else if fix {
        Err(Error::CheckFailed(format!(
            "{left} problem(s) need a human (see above)"
        )))
    } else {
        Err(Error::CheckFailed(format!(
            "{} problem(s) found (run `corral doctor --fix`)",
            findings.len()
        )))
    }
}

/// Flags of `corral purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Age of archived workers (and orphaned logs) to remove: 30d, 12h, 3600.
    #[arg(long, value_name = "AGE", value_parser = crate::time::parse_secs)]
    pub archived_older_than: f64,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `corral purge`.
pub fn purge(home: &Home, a: PurgeArgs) -> Result<()> {
    let r = crate::retention::purge_archived(
        home,
        a.archived_older_than,
        crate::time::now(),
        a.dry_run,
    )?;
    if a.format != Format::Table {
        return emit(a.format, &r);
    }
    let short = crate::lookup::short_ids(r.purged.iter().map(|p| p.worker_id.as_str()));
    for p in &r.purged {
        cli::out(format!(
            "{} {} ({}, ended {}, {} log bytes)",
            if r.dry_run { "would purge" } else { "purged" },
            short.get(p.worker_id.as_str()).unwrap_or(&p.worker_id),
            p.what,
            p.ended_at
                .map(|t| crate::time::format(&t))
                .unwrap_or_else(|| "?".into()),
            p.log_bytes
        ))?;
    }
    for s in &r.skipped {
        eprintln!("warning: archived/{s}.json is unreadable: left alone (see corral doctor)");
    }
    cli::out(format!(
        "{} worker(s), {} log bytes{}",
        r.purged.len(),
        r.bytes_freed,
        if r.dry_run { " (dry run)" } else { "" }
    ))
}

/// Flags of `corral adopt`.
#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The worker id (or `ID.json`, the spec's file name).
    pub id: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `corral adopt ID`: prints the id; exit 0 also when it was adopted before.
pub fn adopt(home: &Home, a: AdoptArgs) -> Result<()> {
    let id = a.id.strip_suffix(".json").unwrap_or(&a.id);
    let id = std::path::Path::new(id)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(id);
    let id = &crate::lookup::resolve_worker(home, id)?;
    let r = crate::adopt::adopt(home, id, crate::time::now())?;
    if !r.dropped.is_empty() {
        eprintln!(
            "warning: {id}: dropped {} from the spec: only corral's own launch records a process (signals go to it)",
            r.dropped.join(" and ")
        );
    }
    if a.format != Format::Table {
        return emit(a.format, &r);
    }
    if r.already {
        eprintln!("{id}: already accounted for; nothing changed");
    } else {
        eprintln!(
            "{id}: adopted, {} tokens reserved{}",
            r.reserved,
            if r.filled.is_empty() {
                String::new()
            } else {
                format!(" (filled from its type: {})", r.filled.join(", "))
            }
        );
    }
    cli::out(&r.worker_id)
}

/// `corral scripts …`.
#[derive(Debug, Subcommand)]
pub enum ScriptsCommand {
    /// Install (or update) the shell wrappers into <home>/scripts/.
    Install,
}

/// `corral scripts install`: prints each installed path.
pub fn install_scripts(home: &Home) -> Result<()> {
    for p in crate::setup::install_scripts(home)? {
        cli::out(p.display())?;
    }
    Ok(())
}
