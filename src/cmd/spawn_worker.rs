//! `spawn-worker`: create worker specs (validated, budget reserved) and optionally launch
//! the worker processes.

use crate::cli::{self, Format, Global};
use crate::error::{Error, Result};
use crate::lifecycle::{self, SpawnRequest};
use crate::spec::Priority;
use clap::Parser;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// Create worker specs, reserve their tokens, and optionally launch the workers.
///
/// Prints the new worker id(s), one per line, so `ID=$(spawn-worker --type T)` works.
/// Exit 4 (and nothing written) when the budget cannot cover the allocation.
#[derive(Debug, Parser)]
#[command(
    name = "spawn-worker",
    version,
    after_help = "Examples:\n  spawn-worker --type implementation-worker --task-id task-001 --priority high\n  spawn-worker --type converter-worker --count 4 --session build-42 -- ./convert.sh\n  spawn-worker --type converter-worker --env MODE=fast --parent-pid $$ -- ./convert.sh\n  spawn-worker --type implementation-worker --reuse --task-id task-002\n  spawn-worker --type converter-container --image localhost/converter:2\n  spawn-worker --from-spec my-worker.json"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// Worker type, configured in config/worker-types.json.
    #[arg(
        long = "type",
        value_name = "TYPE",
        required_unless_present = "from_spec"
    )]
    pub worker_type: Option<String>,
    /// Task the worker is for.
    #[arg(long)]
    pub task_id: Option<String>,
    /// The master (coordinator) the worker reports to.
    #[arg(long)]
    pub master: Option<String>,
    /// critical, high, medium or low (default: the type's, else medium).
    #[arg(long, value_parser = parse_priority)]
    pub priority: Option<Priority>,
    /// Repository the worker works on (owner/repo).
    #[arg(long)]
    pub repo: Option<String>,
    /// Tokens to reserve per worker (default: the type's `tokens`).
    #[arg(long, value_name = "N")]
    pub tokens: Option<u64>,
    /// Run-time limit in minutes (default: the type's `timeout_minutes`; at most 100 years).
    #[arg(long, value_name = "M")]
    pub timeout_minutes: Option<u64>,
    /// Session (build) the workers belong to; a pool gets one generated when omitted.
    #[arg(long, value_name = "S")]
    pub session: Option<String>,
    /// Spawn a pool of N workers (budget reserved all or nothing; at most 10000).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub count: u64,
    /// Use this worker id instead of a generated one.
    #[arg(long, conflicts_with = "reuse")]
    pub id: Option<String>,
    /// Validate and check the budget, write nothing.
    #[arg(long, conflicts_with = "reuse")]
    pub dry_run: bool,
    /// Set KEY=VALUE in the worker's environment (repeatable); recorded in the spec, so a
    /// restart sets it too.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The worker's parent: when process P is gone, the monitor (with --check-orphans)
    /// stops the worker as orphaned. Without it no parent is recorded.
    #[arg(long, value_name = "P")]
    pub parent_pid: Option<i32>,
    /// Image of a container worker type's workers, over the type's `image` (recorded, so a
    /// restart runs the same image).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Output format: table prints ids, json prints the specs.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Validate a hand-made spec (FILE, or - for stdin) and write it.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["count", "id", "reuse"])]
    pub from_spec: Option<String>,
    /// Hand idle, healthy workers of the type to this request (each to one caller only, set
    /// running with --task-id) and spawn only the rest of --count.
    #[arg(long)]
    pub reuse: bool,
    /// Command to launch as the worker (argv, no shell); default: the type's `command`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_priority(s: &str) -> std::result::Result<Priority, String> {
    Priority::parse(s)
        .ok_or_else(|| format!("invalid priority {s:?}: use critical, high, medium or low"))
}

/// Entry point of the `spawn-worker` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("spawn-worker", || run(cli))
}

fn read_source(src: &str) -> Result<serde_json::Value> {
    let bytes = if src == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .take(crate::store::MAX_FILE_BYTES + 1)
            .read_to_end(&mut b)
            .map_err(|e| Error::io("cannot read stdin", e))?;
        if b.len() as u64 > crate::store::MAX_FILE_BYTES {
            return Err(Error::Invalid("spec on stdin is larger than 1 MiB".into()));
        }
        b
    } else {
        let p = PathBuf::from(src);
        crate::store::read_guarded(&p).map_err(|e| e.into_error(&p))?
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("{src}: malformed JSON: {e}")))
}

fn run(cli: Cli) -> Result<()> {
    let home = cli.global.home()?;
    if let Some(src) = &cli.from_spec {
        let value = read_source(src)?;
        let written = if cli.dry_run {
            let mut s = crate::spec::WorkerSpec::from_value(value)?;
            let mut dropped = Vec::new();
            if s.process.take().is_some() {
                dropped.push("process");
                if s.pid.take().is_some() {
                    dropped.push("pid");
                }
            }
            lifecycle::FromSpec { spec: s, dropped }
        } else {
            lifecycle::write_from_spec(&home, value)?
        };
        if !written.dropped.is_empty() {
            eprintln!(
                "warning: {}: dropped {} from the input: only corral's own launch records a process (signals go to it)",
                written.spec.worker_id,
                written.dropped.join(" and ")
            );
        }
        return print(cli.format, &[written.spec]);
    }
    let worker_type = cli
        .worker_type
        .clone()
        .ok_or_else(|| Error::Usage("--type is required".into()))?;
    let count =
        crate::time::check_count("--count", cli.count, u64::from(lifecycle::MAX_COUNT))? as u32;
    let parent = cli.parent_pid.map(lifecycle::Parent::of).transpose()?;
    let mut req = SpawnRequest {
        worker_type,
        task_id: cli.task_id,
        master: cli.master,
        priority: cli.priority,
        repo: cli.repo,
        tokens: cli.tokens,
        timeout_minutes: cli.timeout_minutes,
        session: cli.session,
        count,
        id: cli.id,
        command: (!cli.command.is_empty()).then_some(cli.command),
        dry_run: cli.dry_run,
        restart_of: None,
        env: lifecycle::parse_env_pairs(&cli.env)?,
        cwd: None,
        parent,
        image: cli.image,
        engine: None,
    };
    if !cli.reuse {
        return print(cli.format, &lifecycle::spawn(&home, &req)?);
    }
    let reused = lifecycle::reuse(&home, &req.worker_type, req.task_id.as_deref(), count)?;
    for r in &reused {
        tracing::info!("reusing idle worker {}", r.spec.worker_id);
    }
    let mut specs: Vec<_> = reused.iter().map(|r| r.spec.clone()).collect();
    let rest = count - reused.len() as u32;
    if rest > 0 {
        req.count = rest;
        match lifecycle::spawn(&home, &req) {
            Ok(new) => specs.extend(new),
            Err(e) => {
                lifecycle::unreuse(&home, &reused);
                return Err(e);
            }
        }
    }
    print(cli.format, &specs)
}

fn print(format: Format, specs: &[crate::spec::WorkerSpec]) -> Result<()> {
    match format {
        Format::Table => {
            let mut out = String::with_capacity(specs.len() * 64);
            for s in specs {
                out.push_str(&s.worker_id);
                out.push('\n');
            }
            cli::out(out.trim_end())
        }
        Format::Json => cli::out_json(&serde_json::Value::Array(
            specs.iter().map(lifecycle::spec_json).collect(),
        )),
        Format::Jsonl => {
            for s in specs {
                cli::out_jsonl(&lifecycle::spec_json(s))?;
            }
            Ok(())
        }
    }
}
