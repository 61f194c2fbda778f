//! `task-queue`: the filesystem-native task queue from the command line (DESIGN.md §8).
//!
//! Flags become options and library calls (`crate::queue`); this layer only prints and ties
//! the queue to worker lifecycles: a claim by an active worker sets the worker's `task_id`
//! and `status: running` through `lifecycle::heartbeat`, completion sets it `idle` again,
//! and the `work` loop beats through a [`queue::work::Liveness`] defined in `work`. That
//! coupling lives here because `queue` sits below `lifecycle` in the layering. Durations are
//! parsed with `time::parse_secs` after clap, so a bad one exits 6 (invalid input), not 2.

use crate::cli::{self, Format, Global};
use crate::error::{Error, Result};
use crate::home::{Home, TaskState};
use crate::lifecycle::{self, Beat};
use crate::policy::HeartbeatPolicy;
use crate::queue::policy::{policy_doc, policy_secs, Retention};
use crate::queue::{self, Caller, Claimer, EnqueueRequest, Task};
use crate::spec::{Priority, Status};
use crate::time;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const EXAMPLES: &str = "\
Examples:
  ID=$(task-queue enqueue --class llm --priority high --payload '{\"doc\": 7}')
  seq 1000 | task-queue enqueue --class cpu --jsonl - > ids.txt
  task-queue enqueue --class report --after \"$ID\" --delay 10m
  task-queue claim --worker worker-1 --class resource --class llm --wait 30 > task.json
  task-queue complete \"$ID\" --worker worker-1 --result '{\"ok\": true}'
  task-queue fail \"$ID\" --worker worker-1 --error 'model not loaded'
  task-queue work --worker worker-1 --class llm --idle-exit 300 --task-timeout 10m -- ./process-task.sh
  task-queue cancel \"$ID\"; task-queue pause llm; task-queue resume llm
  task-queue wait \"$ID\" --timeout 1h && echo done
  task-queue list --state pending --limit 20
  task-queue stats --format json | jq .oldest_pending_seconds
  task-queue purge --completed-older-than 7d --failed-older-than 30d

Exit codes: 0 ok, 3 no such task, 5 wrong state or not the claimant, 6 invalid input,
7 nothing to claim (or a wait timed out), 8 no home, 10 (wait) a task failed or was cancelled.";

/// The filesystem-native task queue: enqueue (one or bulk), claim, complete, fail, requeue,
/// cancel, pause/resume, wait, list, stats, show, purge, and `work`, the whole worker loop.
///
/// Tasks are files under <home>/coordination/tasks/; a claim is one rename(2), so exactly
/// one claimer wins, with no lock files per task.
#[derive(Debug, Parser)]
#[command(name = "task-queue", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add a task (prints its id), or many from JSON lines (one id per line).
    #[command(
        after_help = "Examples:\n  task-queue enqueue --class llm --payload '{\"prompt\": \"hi\"}'\n  task-queue enqueue --class build --priority critical --id build-42 --payload-file job.json\n  echo '[1,2]' | task-queue enqueue --class cpu --payload-file -\n  task-queue enqueue --class mail --delay 10m --after build-42\n  task-queue enqueue --class cpu --jsonl jobs.jsonl   # a payload per line, or\n      {\"payload\": …, \"priority\": \"high\", \"id\": …, \"name\": …, \"max_attempts\": 2,\n       \"not_before\": \"2026-11-22T10:00:00Z\", \"after\": [\"a\", \"b\"], \"timeout_seconds\": 60}\n\nA bad line exits 6 naming its line number; the tasks before it are kept (and printed)."
    )]
    Enqueue(EnqueueArgs),
    /// Claim the next task (priority, then FIFO; classes in the order given); prints it as JSON.
    #[command(
        after_help = "Examples:\n  task-queue claim --worker worker-1\n  task-queue claim --worker worker-1 --class resource --class llm --wait 60\n  task-queue claim --worker cron-job --lease 120 --format jsonl\n\nExit 7 when there is nothing to claim or --wait timed out."
    )]
    Claim(ClaimArgs),
    /// Mark a claimed task done (only its claimant, or --force).
    #[command(
        after_help = "Example:\n  task-queue complete task-20261122T101500Z-… --worker worker-1 --result '{\"pages\": 12}'"
    )]
    Complete(CompleteArgs),
    /// Record a failure: back to pending with attempts+1 (after the class's retry backoff),
    /// or to failed/ after max attempts.
    #[command(
        after_help = "Examples:\n  task-queue fail T --worker worker-1 --error 'timeout talking to the model'\n  task-queue fail T --worker worker-1 --no-retry"
    )]
    Fail(FailArgs),
    /// Put a processing, failed (dead-lettered) or cancelled task back in pending.
    #[command(after_help = "Example:\n  task-queue requeue T --reason 'worker wedged'")]
    Requeue(RequeueArgs),
    /// Cancel tasks: pending or deferred ones at once; a processing one is stopped by its
    /// work loop and then cancelled.
    #[command(after_help = "Example:\n  task-queue cancel T1 T2 --reason 'superseded'")]
    Cancel(CancelArgs),
    /// Stop claimers from taking tasks of a class (enqueues still land).
    Pause(PauseArgs),
    /// Let claimers take tasks of a paused class again.
    Resume(ResumeArgs),
    /// Block until tasks are done; the exit code says how they ended.
    #[command(
        after_help = "Exit codes: 0 every task completed; 10 at least one failed (dead-lettered) or\nwas cancelled; 7 --timeout passed first; 3 an id names no task.\nPrints one line per task: <task_id> <state>.\n\nExample:\n  task-queue wait \"$A\" \"$B\" --timeout 30m"
    )]
    Wait(WaitArgs),
    /// List tasks, oldest first (pending in claim order), streaming.
    #[command(
        after_help = "Examples:\n  task-queue list --state pending --class llm --limit 20\n  task-queue list --state processing --format json | jq '.[].claimed_by'"
    )]
    List(ListArgs),
    /// Counts by state and class, oldest pending age, processing per worker, stuck tasks.
    Stats(StatsArgs),
    /// Print one task as JSON.
    Show(ShowArgs),
    /// Remove finished tasks older than an age (retention).
    #[command(
        after_help = "Example:\n  task-queue purge --completed-older-than 7d --failed-older-than 30d\n\nThe monitor does the same on its own when the policy's queue.purge sets ages."
    )]
    Purge(PurgeArgs),
    /// The worker loop: claim, run CMD with the task on stdin, complete or fail, repeat.
    #[command(
        after_help = "Examples:\n  task-queue work --worker worker-1 --class llm -- ./handle.sh\n  task-queue work --worker w --max-tasks 10 --idle-exit 60 --task-timeout 5m -- python3 job.py\n\nCMD runs as argv (no shell), in its own process group, with the task JSON on stdin and\nCORRAL_TASK_ID, CORRAL_TASK_CLASS, CORRAL_WORKER_ID in its environment. Exit 0 completes\nthe task (stdout is the result: JSON if it parses, else a string); any other exit fails\nit. A task's timeout_seconds (or --task-timeout) stops a command that runs too long; a\ncancelled task's command is stopped (SIGTERM, then SIGKILL after --kill-grace), as is\nthe command of a task taken from the loop (requeued, lease lapsed): nothing is recorded.\nCMD dies with the loop (parent-death SIGKILL); a task run before is only run again once\nno process here still carries its CORRAL_TASK_ID.\nSIGTERM: the running CMD gets SIGTERM; if it then exits 0 the task completes,\notherwise it is requeued; then the loop exits 0. A CMD that cannot start is refused\nbefore any claim (exit 6); one that stops being startable gives its task back and ends\nthe loop. CMD's stderr is framed per task by\n`--- corral task <id> start <time>` and `--- corral task <id> end <time> exit=<c> outcome=<o>`."
    )]
    Work(WorkArgs),
}

fn parse_priority(s: &str) -> std::result::Result<Priority, String> {
    match s {
        "0" => Ok(Priority::Critical),
        "1" => Ok(Priority::High),
        "2" => Ok(Priority::Medium),
        "3" => Ok(Priority::Low),
        _ => Priority::parse(s).ok_or_else(|| {
            format!("invalid priority {s:?}: use critical, high, medium, low (or 0-3)")
        }),
    }
}

fn parse_state(s: &str) -> std::result::Result<TaskState, String> {
    TaskState::parse(s).ok_or_else(|| {
        format!("invalid state {s:?}: use pending, processing, completed, failed, deferred or cancelled")
    })
}

/// A duration flag: `5`, `0.5`, `30s`, `15m`, `7d` (exit 6 otherwise, nothing touched).
fn secs(flag: &str, v: &Option<String>) -> Result<Option<f64>> {
    match v {
        None => Ok(None),
        Some(s) => time::parse_secs(s)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("{flag}: {e}"))),
    }
}

/// `enqueue` flags.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Task class (the pending/<class>/ directory); workers choose classes.
    #[arg(long)]
    pub class: String,
    /// critical, high, medium or low (or 0-3).
    #[arg(long, default_value = "medium", value_parser = parse_priority)]
    pub priority: Priority,
    /// A human-readable name shown in lists and events.
    #[arg(long)]
    pub name: Option<String>,
    /// Use this task id (exit 5 if it exists) instead of a generated one.
    #[arg(long, conflicts_with = "jsonl")]
    pub id: Option<String>,
    /// The payload, as JSON text (exit 6 if it is not JSON).
    #[arg(long, conflicts_with_all = ["payload_file", "jsonl"])]
    pub payload: Option<String>,
    /// Read the payload from FILE, or - for stdin.
    #[arg(long, value_name = "FILE|-", conflicts_with = "jsonl")]
    pub payload_file: Option<String>,
    /// Many tasks from FILE (or - for stdin): one JSON payload or task object per line.
    #[arg(long, value_name = "FILE|-")]
    pub jsonl: Option<String>,
    /// Attempts before the task is dead-lettered.
    #[arg(long, value_name = "K")]
    pub max_attempts: Option<u32>,
    /// Not claimable before TIME (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "delay")]
    pub not_before: Option<String>,
    /// Not claimable for this long (e.g. 10m).
    #[arg(long, value_name = "DURATION")]
    pub delay: Option<String>,
    /// Claimable only after these tasks completed (ids or unique prefixes; repeat, or
    /// comma-separate).
    #[arg(
        long,
        value_name = "ID",
        value_delimiter = ',',
        conflicts_with = "jsonl"
    )]
    pub after: Vec<String>,
    /// Seconds `work` lets the command run (e.g. 5m).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// json prints the whole task instead of its id.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `claim` flags.
#[derive(Debug, Args)]
pub struct ClaimArgs {
    /// Who claims (a worker id, or any name: a non-worker holds a lease instead).
    #[arg(long, env = "CORRAL_WORKER_ID")]
    pub worker: String,
    /// Classes in preference order (repeat, or comma-separate); default: all classes.
    #[arg(long = "class", value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Wait up to SECS for a task (inotify); exit 7 on timeout.
    #[arg(long, value_name = "SECS")]
    pub wait: Option<String>,
    /// Lease for a claimant that is not a worker (default: stuck_task_seconds).
    #[arg(long, value_name = "SECS")]
    pub lease: Option<String>,
    /// While waiting, also look every SECS (default 2 s on NFS/CIFS, else never).
    #[arg(long, value_name = "SECS")]
    pub poll_interval: Option<String>,
    /// table and json print the task pretty, jsonl on one line.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

/// `complete` flags.
#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// The task id, or a unique prefix of it.
    pub task: String,
    /// The result, as JSON text.
    #[arg(long, conflicts_with = "result_file")]
    pub result: Option<String>,
    /// Read the result from FILE, or - for stdin.
    #[arg(long, value_name = "FILE|-")]
    pub result_file: Option<String>,
    /// Who is completing (must be the claimant).
    #[arg(long, env = "CORRAL_WORKER_ID")]
    pub worker: Option<String>,
    /// Complete even if you are not the claimant.
    #[arg(long)]
    pub force: bool,
    /// json prints the task.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `fail` flags.
#[derive(Debug, Args)]
pub struct FailArgs {
    /// The task id, or a unique prefix of it.
    pub task: String,
    /// What went wrong (kept in the task and the event).
    #[arg(long)]
    pub error: Option<String>,
    /// Dead-letter at once instead of retrying.
    #[arg(long)]
    pub no_retry: bool,
    /// Who is failing it (must be the claimant).
    #[arg(long, env = "CORRAL_WORKER_ID")]
    pub worker: Option<String>,
    /// Fail even if you are not the claimant.
    #[arg(long)]
    pub force: bool,
    /// json prints the task.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `requeue` flags.
#[derive(Debug, Args)]
pub struct RequeueArgs {
    /// The task id, or a unique prefix of it.
    pub task: String,
    /// Why (kept in the task history and the event).
    #[arg(long, default_value = "requeued by operator")]
    pub reason: String,
}

/// `cancel` flags.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Task ids, or unique prefixes (an ambiguous one cancels nothing: exit 5).
    #[arg(required = true)]
    pub tasks: Vec<String>,
    /// Why (kept in the task history and the event).
    #[arg(long, default_value = "cancelled by operator")]
    pub reason: String,
}

/// `pause` flags.
#[derive(Debug, Args)]
pub struct PauseArgs {
    pub class: String,
    /// Why (kept in the marker and the event).
    #[arg(long, default_value = "paused by operator")]
    pub reason: String,
}

/// `resume` flags.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    pub class: String,
}

/// `wait` flags.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Task ids, or unique prefixes.
    #[arg(required = true)]
    pub tasks: Vec<String>,
    /// Give up after this long (exit 7).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<String>,
    /// Also look every SECS (default 2 s on NFS/CIFS, else never).
    #[arg(long, value_name = "SECS")]
    pub poll_interval: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `list` flags.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// pending, processing, completed, failed, deferred or cancelled (default: all).
    #[arg(long, value_parser = parse_state)]
    pub state: Option<TaskState>,
    /// Only this class.
    #[arg(long)]
    pub class: Option<String>,
    /// At most N tasks.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `stats` flags.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Recount every task first (O(tasks); the kept counts are exact unless a process was
    /// killed mid-move).
    #[arg(long)]
    pub exact: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `show` flags.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The task id, or a unique prefix of it.
    pub task: String,
    /// json (the default: the task file, pretty-printed), jsonl (the same on one line) or
    /// table (one `field: value` line per field, nested values as compact JSON).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

/// `purge` flags.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Remove completed tasks older than this (e.g. 7d).
    #[arg(long, value_name = "AGE")]
    pub completed_older_than: Option<String>,
    /// Remove dead-lettered tasks older than this (e.g. 30d).
    #[arg(long, value_name = "AGE")]
    pub failed_older_than: Option<String>,
    /// Remove cancelled tasks older than this.
    #[arg(long, value_name = "AGE")]
    pub cancelled_older_than: Option<String>,
    /// Only count what would go.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `work` flags.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// The worker this loop runs as (a worker id, or any name).
    #[arg(long, env = "CORRAL_WORKER_ID")]
    pub worker: String,
    /// Classes in preference order (repeat, or comma-separate); default: all classes.
    #[arg(long = "class", value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Exit 0 after N tasks.
    #[arg(long, value_name = "N")]
    pub max_tasks: Option<u64>,
    /// Exit 0 after SECS with nothing to claim.
    #[arg(long, value_name = "SECS")]
    pub idle_exit: Option<String>,
    /// Lease when the worker name is not a worker spec (default: stuck_task_seconds).
    #[arg(long, value_name = "SECS")]
    pub lease: Option<String>,
    /// Seconds between heartbeats (or lease renewals) while busy or idle.
    #[arg(long, value_name = "SECS", default_value = "5")]
    pub heartbeat_interval: String,
    /// Stop a task's command after this long, unless the task sets timeout_seconds.
    #[arg(long, value_name = "SECS")]
    pub task_timeout: Option<String>,
    /// Between SIGTERM and SIGKILL when stopping a command (default: the policy's grace_seconds).
    #[arg(long, value_name = "SECS")]
    pub kill_grace: Option<String>,
    /// Also look for tasks every SECS (default 2 s on NFS/CIFS, else never).
    #[arg(long, value_name = "SECS")]
    pub poll_interval: Option<String>,
    /// The command to run per task (argv, no shell).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Entry point of the `task-queue` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("task-queue", || run(cli))
}

fn run(cli: Cli) -> Result<()> {
    let home = cli.global.home()?;
    match cli.command {
        Command::Enqueue(a) => enqueue(&home, a),
        Command::Claim(a) => claim(&home, a),
        Command::Complete(a) => complete(&home, a),
        Command::Fail(a) => fail(&home, a),
        Command::Requeue(a) => {
            let t = queue::requeue(&home, &task_id(&home, &a.task)?, None, &a.reason)?;
            cli::out(t.state.name())
        }
        Command::Cancel(a) => cancel(&home, a),
        Command::Pause(a) => {
            let changed = queue::pause(&home, &a.class, &a.reason)?;
            cli::out(if changed { "paused" } else { "already paused" })
        }
        Command::Resume(a) => {
            let changed = queue::resume(&home, &a.class)?;
            cli::out(if changed { "resumed" } else { "not paused" })
        }
        Command::Wait(a) => wait(&home, a),
        Command::List(a) => list(&home, a),
        Command::Stats(a) => stats(&home, a),
        Command::Show(a) => show(&home, a),
        Command::Purge(a) => purge(&home, a),
        Command::Work(a) => work(&home, a),
    }
}

/// Cancels each task named. A lone task's error is the command's error; with several, each
/// failure is printed as it happens and the command ends with how many were not cancelled,
/// exiting with the first failure's code.
fn cancel(home: &Home, a: CancelArgs) -> Result<()> {
    let ids = crate::lookup::resolve_tasks(home, &a.tasks)?;
    let mut failed: Vec<Error> = Vec::new();
    for id in &ids {
        match queue::cancel(home, id, &a.reason) {
            Ok(queue::Cancelled::Cancelled) => cli::out(format!("{id} cancelled"))?,
            Ok(queue::Cancelled::Cancelling) => cli::out(format!("{id} cancelling"))?,
            Err(e) if ids.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(e);
            }
        }
    }
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(Error::with_code(
            first.exit_code(),
            format!("{} of {} task(s) not cancelled", failed.len(), ids.len()),
        )),
    }
}

/// Reads JSON from `--x TEXT` or `--x-file F|-`: exit 6 with the parser's reason when it is
/// not JSON.
fn json_arg(what: &str, text: Option<&str>, file: Option<&str>) -> Result<Option<Value>> {
    let bytes = match (text, file) {
        (Some(t), _) => t.as_bytes().to_vec(),
        (None, Some("-")) => {
            let mut b = Vec::new();
            std::io::stdin()
                .take(crate::store::MAX_FILE_BYTES + 1)
                .read_to_end(&mut b)
                .map_err(|e| Error::io("cannot read stdin", e))?;
            b
        }
        (None, Some(f)) => {
            let p = PathBuf::from(f);
            crate::store::read_guarded(&p).map_err(|e| e.into_error(&p))?
        }
        (None, None) => return Ok(None),
    };
    if bytes.len() > queue::MAX_TASK_BYTES {
        return Err(Error::Invalid(format!(
            "{what} too large: {} bytes (limit {})",
            bytes.len(),
            queue::MAX_TASK_BYTES
        )));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Invalid(format!("{what} is not valid JSON: {e}")))
}

fn print_task(format: Format, t: &Task) -> Result<()> {
    let v = t.to_value()?;
    match format {
        Format::Jsonl => cli::out_jsonl(&v),
        _ => cli::out_json(&v),
    }
}

fn not_before(a: &EnqueueArgs) -> Result<Option<time::Timestamp>> {
    if let Some(t) = &a.not_before {
        return time::parse(t).map(Some);
    }
    Ok(secs("--delay", &a.delay)?.map(|d| time::add_secs(time::now(), d)))
}

fn enqueue(home: &Home, a: EnqueueArgs) -> Result<()> {
    let nb = not_before(&a)?;
    let timeout = secs("--timeout", &a.timeout)?;
    if let Some(src) = &a.jsonl {
        let opts = queue::BulkOptions {
            class: a.class.clone(),
            priority: a.priority,
            max_attempts: a.max_attempts,
            not_before: nb,
            timeout_seconds: timeout,
        };
        let input: Box<dyn std::io::BufRead> = if src == "-" {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(src)
                .map_err(|e| Error::Invalid(format!("cannot read {src}: {e}")))?;
            Box::new(std::io::BufReader::with_capacity(256 * 1024, f))
        };
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let res = queue::enqueue_bulk(home, input, &opts, |t| {
            warn_if_dead(t);
            match a.format {
                Format::Table => writeln!(out, "{}", t.task_id),
                _ => writeln!(out, "{}", t.to_value()?),
            }
            .map_err(|e| Error::io("cannot write to stdout", e))
        });
        out.flush()
            .map_err(|e| Error::io("cannot write to stdout", e))?;
        return res.map(|_| ());
    }
    let payload = json_arg("payload", a.payload.as_deref(), a.payload_file.as_deref())?
        .unwrap_or(Value::Null);
    let req = EnqueueRequest {
        class: a.class,
        priority: a.priority,
        name: a.name,
        id: a.id,
        payload,
        max_attempts: a.max_attempts,
        not_before: nb,
        after: crate::lookup::resolve_tasks(home, &a.after)?,
        timeout_seconds: timeout,
    };
    let t = queue::enqueue(home, &req)?;
    warn_if_dead(&t);
    match a.format {
        Format::Table => cli::out(&t.task_id),
        f => print_task(f, &t),
    }
}

/// An enqueue after a failed or cancelled task lands in `failed/` at once (exit 0: the task
/// exists and its id is printed); say so on stderr, since the id alone reads like success.
fn warn_if_dead(t: &Task) {
    if t.state == TaskState::Failed {
        eprintln!(
            "warning: task {} was dead-lettered at once: {}",
            t.task_id,
            crate::view::term::escape_line(
                t.error
                    .as_deref()
                    .unwrap_or("a dependency did not complete")
            )
        );
    }
}

/// `--lease`, else the policy's `stuck_task_seconds` (file, then `CORRAL_HEARTBEAT__…`
/// environment). Read as one key rather than through `HeartbeatPolicy::load`: compiling the
/// policy schema costs a one-shot `claim` more than the claim itself, and a policy the
/// monitor refuses is reported by the monitor.
fn lease_or_default(home: &Home, lease: &Option<String>) -> Result<f64> {
    match secs("--lease", lease)? {
        Some(l) if l > 0.0 => Ok(l),
        Some(_) => Err(Error::Invalid("--lease must be positive".into())),
        None => Ok(policy_secs(&policy_doc(home), "stuck_task_seconds")
            .unwrap_or(HeartbeatPolicy::default().stuck_task_seconds)
            .max(1.0)),
    }
}

fn poll_interval(home: &Home, flag: &Option<String>) -> Result<Option<f64>> {
    Ok(match secs("--poll-interval", flag)? {
        Some(s) if s > 0.0 => Some(s),
        Some(_) => None,
        None => queue::layout::default_poll_interval(home),
    })
}

/// A worker that has finished or failed must not take new work.
fn refuse_dead_worker(home: &Home, worker: &str) -> Result<()> {
    if let queue::Claimant::Gone { dir } = queue::claimant_state(home, Some(worker)) {
        return Err(Error::Conflict(format!(
            "worker {worker} is no longer active (spec in {}/): it cannot claim tasks",
            dir.name()
        )));
    }
    Ok(())
}

/// Sets an active worker's status (and task); `jobs` finished tasks are added to its
/// `jobs_processed`.
fn beat(home: &Home, worker: &str, status: Status, task_id: Option<&str>, jobs: u64) -> Result<()> {
    let b = Beat {
        status: Some(status),
        task_id: task_id.map(str::to_string),
        jobs_add: (jobs > 0).then_some(jobs),
        ..Beat::default()
    };
    lifecycle::heartbeat(home, worker, &b).map(|_| ())
}

fn beat_if_worker(home: &Home, worker: &str, status: Status, task_id: Option<&str>) {
    if queue::is_active_worker(home, worker) {
        if let Err(e) = beat(home, worker, status, task_id, 0) {
            tracing::warn!("cannot set worker {worker} {status}: {e}");
        }
    }
}

fn claim(home: &Home, a: ClaimArgs) -> Result<()> {
    // Every flag is checked before anything moves.
    let wait = secs("--wait", &a.wait)?;
    let lease = lease_or_default(home, &a.lease)?;
    let poll = poll_interval(home, &a.poll_interval)?;
    refuse_dead_worker(home, &a.worker)?;
    let mut c = Claimer::new(home, &a.worker, &a.classes, lease)?;
    let task = match wait {
        Some(secs) => {
            c.poll_every(poll)?;
            let deadline = Instant::now() + time::duration(secs);
            c.claim_wait(Some(deadline))?
        }
        None => c.try_claim()?,
    };
    let Some(task) = task else {
        // A paused class is the first thing to suspect when tasks are there but none comes.
        let paused: Vec<String> = queue::paused(home)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| a.classes.is_empty() || a.classes.contains(c))
            .collect();
        return Err(Error::NothingToDo(format!(
            "no task to claim{}{}{}",
            if a.classes.is_empty() {
                String::new()
            } else {
                format!(" in {}", a.classes.join(", "))
            },
            wait.map(|s| format!(" within {s}s")).unwrap_or_default(),
            if paused.is_empty() {
                String::new()
            } else {
                format!(
                    " (paused: {}; `task-queue resume CLASS` lets claimers take them)",
                    paused.join(", ")
                )
            }
        )));
    };
    beat_if_worker(home, &a.worker, Status::Running, Some(&task.task_id));
    print_task(a.format, &task)
}

fn complete(home: &Home, a: CompleteArgs) -> Result<()> {
    let result = json_arg("result", a.result.as_deref(), a.result_file.as_deref())?;
    let t = queue::complete(
        home,
        &task_id(home, &a.task)?,
        &Caller {
            worker: a.worker,
            force: a.force,
        },
        result,
    )?;
    if let Some(w) = &t.claimed_by {
        beat_if_worker(home, w, Status::Idle, None);
    }
    match a.format {
        Format::Table => cli::out(t.state.name()),
        f => print_task(f, &t),
    }
}

fn fail(home: &Home, a: FailArgs) -> Result<()> {
    let task = task_id(home, &a.task)?;
    let claimant = queue::find(home, &task)
        .ok()
        .and_then(|f| f.task.claimed_by);
    let f = queue::fail(
        home,
        &task,
        &Caller {
            worker: a.worker,
            force: a.force,
        },
        a.error,
        a.no_retry,
    )?;
    if let Some(w) = &claimant {
        beat_if_worker(home, w, Status::Idle, None);
    }
    match a.format {
        Format::Table => cli::out(f.task.state.name()),
        fm => print_task(fm, &f.task),
    }
}

fn wait(home: &Home, a: WaitArgs) -> Result<()> {
    let timeout = secs("--timeout", &a.timeout)?;
    let poll = poll_interval(home, &a.poll_interval)?;
    let o = queue::wait(
        home,
        &crate::lookup::resolve_tasks(home, &a.tasks)?,
        timeout,
        poll,
    )?;
    match a.format {
        Format::Table => {
            for t in &o.tasks {
                cli::out(format!("{} {}", t.task_id, t.state))?;
            }
        }
        Format::Json => {
            cli::out_json(&serde_json::to_value(&o).map_err(|e| Error::Internal(e.to_string()))?)?
        }
        Format::Jsonl => {
            for t in &o.tasks {
                cli::out_jsonl(
                    &serde_json::to_value(t).map_err(|e| Error::Internal(e.to_string()))?,
                )?;
            }
        }
    }
    if o.timed_out {
        return Err(Error::NothingToDo(format!(
            "timed out waiting for {} task(s)",
            o.tasks
                .iter()
                .filter(|t| {
                    !matches!(
                        t.state.as_str(),
                        "completed" | "failed" | "cancelled" | "gone"
                    )
                })
                .count()
        )));
    }
    let gone = o.gone();
    if !gone.is_empty() {
        return Err(Error::NotFound(format!(
            "no such task any more: {} (purged after it ended; how it ended is unknown)",
            gone.join(", ")
        )));
    }
    if !o.all_completed() {
        let bad: Vec<String> = o
            .tasks
            .iter()
            .filter(|t| t.state != "completed")
            .map(|t| format!("{} {}", t.task_id, t.state))
            .collect();
        return Err(Error::CheckFailed(format!(
            "not every task completed: {}",
            bad.join(", ")
        )));
    }
    Ok(())
}

/// Streams the list (see `view::tasks::TaskListWriter`).
fn list(home: &Home, a: ListArgs) -> Result<()> {
    // Checked before the header (or the JSON array) is written: a refused class prints
    // nothing on stdout.
    if let Some(c) = &a.class {
        crate::id::validate("class", c)?;
    }
    let q = queue::ListQuery {
        state: a.state,
        class: a.class.clone(),
        limit: a.limit,
    };
    let stdout = std::io::stdout();
    let mut w = crate::view::tasks::TaskListWriter::new(
        std::io::BufWriter::new(stdout.lock()),
        a.format,
        time::now(),
    )?;
    let res = queue::list_each(home, &q, |t| w.write(t).map(|_| true));
    w.finish()?;
    res
}

fn stats(home: &Home, a: StatsArgs) -> Result<()> {
    let policy = HeartbeatPolicy::load(home)?;
    let s = queue::stats(home, &policy, time::now(), a.exact)?;
    match a.format {
        Format::Json | Format::Jsonl => {
            let v = serde_json::to_value(&s).map_err(|e| Error::Internal(e.to_string()))?;
            if a.format == Format::Json {
                cli::out_json(&v)
            } else {
                cli::out_jsonl(&v)
            }
        }
        Format::Table => cli::out(crate::view::tasks::stats_table(&s)),
    }
}

fn purge(home: &Home, a: PurgeArgs) -> Result<()> {
    let keep = Retention {
        completed_after_seconds: secs("--completed-older-than", &a.completed_older_than)?,
        failed_after_seconds: secs("--failed-older-than", &a.failed_older_than)?,
        cancelled_after_seconds: secs("--cancelled-older-than", &a.cancelled_older_than)?,
    };
    if !keep.any() {
        return Err(Error::Usage(
            "say what to purge: --completed-older-than, --failed-older-than or --cancelled-older-than".into(),
        ));
    }
    let p = queue::purge(home, &keep, time::now(), None, a.dry_run)?;
    match a.format {
        Format::Table => cli::out(format!(
            "{} {} tasks: {} completed, {} failed, {} cancelled{}",
            if a.dry_run { "would purge" } else { "purged" },
            p.total(),
            p.completed,
            p.failed,
            p.cancelled,
            p.kept_note()
        )),
        _ => cli::out_json(&serde_json::to_value(p).map_err(|e| Error::Internal(e.to_string()))?),
    }
}

/// A task id as typed: the whole id or a unique prefix (`lookup::resolve_task`: exit 5 with
/// the candidates when it is ambiguous, 3 when nothing matches). Worker names given with
/// `--worker` are not resolved: any name may claim (a non-worker holds a lease), so a
/// prefix there would be a different claimant, not a shorthand.
fn task_id(home: &Home, token: &str) -> Result<String> {
    crate::lookup::resolve_task(home, token)
}

mod show;
mod work;
use show::show;
use work::work;
