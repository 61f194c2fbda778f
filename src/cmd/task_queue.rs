//! `task-queue`: the filesystem-native task queue from the command line (DESIGN.md §8).
//!
//! The queue itself is `crate::queue`; this layer parses flags, prints, and ties the queue
//! to worker lifecycles: a claim by an active worker sets the worker's `task_id` and
//! `status: running` through `lifecycle::heartbeat`, completion sets it `idle` again. That
//! coupling lives here because `queue` sits below `lifecycle` in the layering.
//!
//! `work` is the whole worker loop in one process: claim (sleeping on inotify), run the
//! command with the task on stdin, heartbeat or renew the lease meanwhile, complete or fail.
//! SIGTERM/SIGINT are taken by a `sigwait` thread rather than a handler, so the wait can be
//! woken through the claimer's channel and the child can be told to stop, without polling.

use crate::cli::{self, Format, Global};
use crate::error::{Error, Result};
use crate::home::{Home, TaskState};
use crate::lifecycle::{self, Beat};
use crate::policy::HeartbeatPolicy;
use crate::queue::{self, Caller, Claimer, EnqueueRequest, Task, Wake};
use crate::spec::{Priority, Status};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
Examples:
  ID=$(task-queue enqueue --class llm --priority high --payload '{\"doc\": 7}')
  task-queue claim --worker worker-1 --class resource --class llm --wait 30 > task.json
  task-queue complete \"$ID\" --worker worker-1 --result '{\"ok\": true}'
  task-queue fail \"$ID\" --worker worker-1 --error 'model not loaded'
  task-queue work --worker worker-1 --class llm --idle-exit 300 -- ./process-task.sh
  task-queue list --state processing
  task-queue stats --format json | jq .oldest_pending_seconds

Exit codes: 0 ok, 3 no such task, 5 wrong state or not the claimant, 6 invalid input,
7 nothing to claim (or --wait timed out), 8 no home.";

/// The filesystem-native task queue: enqueue, claim, complete, fail, requeue, list, stats,
/// show, and `work`, the whole worker loop.
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
    /// Add a task; prints its id.
    #[command(
        after_help = "Examples:\n  task-queue enqueue --class llm --payload '{\"prompt\": \"hi\"}'\n  task-queue enqueue --class build --priority critical --id build-42 --payload-file job.json\n  echo '[1,2]' | task-queue enqueue --class cpu --payload-file -"
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
    /// Record a failure: back to pending with attempts+1, or to failed/ after max attempts.
    #[command(
        after_help = "Examples:\n  task-queue fail T --worker worker-1 --error 'timeout talking to the model'\n  task-queue fail T --worker worker-1 --no-retry"
    )]
    Fail(FailArgs),
    /// Put a processing or dead-lettered task back in pending.
    #[command(after_help = "Example:\n  task-queue requeue T --reason 'worker wedged'")]
    Requeue(RequeueArgs),
    /// List tasks.
    #[command(
        after_help = "Examples:\n  task-queue list --state pending --class llm\n  task-queue list --state processing --format json | jq '.[].claimed_by'"
    )]
    List(ListArgs),
    /// Counts by state and class, oldest pending age, processing per worker, stuck tasks.
    Stats(StatsArgs),
    /// Print one task as JSON.
    Show(ShowArgs),
    /// The worker loop: claim, run CMD with the task on stdin, complete or fail, repeat.
    #[command(
        after_help = "Examples:\n  task-queue work --worker worker-1 --class llm -- ./handle.sh\n  task-queue work --worker w --max-tasks 10 --idle-exit 60 -- python3 job.py --fast\n\nCMD runs as argv (no shell) with the task JSON on stdin and CORRAL_TASK_ID,\nCORRAL_TASK_CLASS, CORRAL_WORKER_ID in its environment. Exit 0 completes the task\n(stdout is the result: JSON if it parses, else a string); any other exit fails it.\nSIGTERM: the running CMD gets SIGTERM; if it then exits 0 the task completes,\notherwise it is requeued; then the loop exits 0."
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
    TaskState::parse(s)
        .ok_or_else(|| format!("invalid state {s:?}: use pending, processing, completed or failed"))
}

fn parse_secs(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => crate::time::parse_duration(s)
            .map(|d| d.num_milliseconds() as f64 / 1000.0)
            .map_err(|e| e.to_string()),
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
    #[arg(long)]
    pub id: Option<String>,
    /// The payload, as JSON text (exit 6 if it is not JSON).
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload from FILE, or - for stdin.
    #[arg(long, value_name = "FILE|-")]
    pub payload_file: Option<String>,
    /// Attempts before the task is dead-lettered.
    #[arg(long, value_name = "K")]
    pub max_attempts: Option<u32>,
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
    /// Wait up to SECS for a task (inotify, no polling); exit 7 on timeout.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub wait: Option<f64>,
    /// Lease for a claimant that is not a worker (default: stuck_task_seconds).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub lease: Option<f64>,
    /// table and json print the task pretty, jsonl on one line.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

/// `complete` flags.
#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// The task id.
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
    /// The task id.
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
    /// The task id.
    pub task: String,
    /// Why (kept in the task history and the event).
    #[arg(long, default_value = "requeued by operator")]
    pub reason: String,
}

/// `list` flags.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// pending, processing, completed or failed (default: all).
    #[arg(long, value_parser = parse_state)]
    pub state: Option<TaskState>,
    /// Only this class.
    #[arg(long)]
    pub class: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `stats` flags.
#[derive(Debug, Args)]
pub struct StatsArgs {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `show` flags.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The task id.
    pub task: String,
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
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub idle_exit: Option<f64>,
    /// Lease when the worker name is not a worker spec (default: stuck_task_seconds).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub lease: Option<f64>,
    /// Seconds between heartbeats (or lease renewals) while busy or idle.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub heartbeat_interval: f64,
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
            let t = queue::requeue(&home, &a.task, None, &a.reason)?;
            cli::out(t.state.name())
        }
        Command::List(a) => list(&home, a),
        Command::Stats(a) => stats(&home, a),
        Command::Show(a) => cli::out_json(&queue::find(&home, &a.task)?.task.to_value()?),
        Command::Work(a) => work(&home, a),
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

fn enqueue(home: &Home, a: EnqueueArgs) -> Result<()> {
    let payload = json_arg("payload", a.payload.as_deref(), a.payload_file.as_deref())?
        .unwrap_or(Value::Null);
    let req = EnqueueRequest {
        class: a.class,
        priority: a.priority,
        name: a.name,
        id: a.id,
        payload,
        max_attempts: a.max_attempts,
    };
    let t = queue::enqueue(home, &req)?;
    match a.format {
        Format::Table => cli::out(&t.task_id),
        f => print_task(f, &t),
    }
}

/// `--lease`, else the policy's `stuck_task_seconds` (file, then `CORRAL_HEARTBEAT__…`
/// environment). Read as one key rather than through `HeartbeatPolicy::load`: compiling the
/// policy schema costs a one-shot `claim` more than the claim itself, and a policy the
/// monitor refuses is reported by the monitor.
fn lease_or_default(home: &Home, lease: Option<f64>) -> Result<f64> {
    match lease {
        Some(l) if l > 0.0 => Ok(l),
        Some(_) => Err(Error::Invalid("--lease must be positive".into())),
        None => {
            let mut doc = crate::store::read_json(&home.policy_path()).unwrap_or(json!({}));
            crate::policy::apply_env(&mut doc, std::env::vars());
            let secs = doc
                .get("stuck_task_seconds")
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s > 0.0)
                .unwrap_or(HeartbeatPolicy::default().stuck_task_seconds);
            Ok(secs.max(1.0))
        }
    }
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

/// Sets an active worker's status (and task); a failure here never undoes the queue change.
fn beat(home: &Home, worker: &str, status: Status, task_id: Option<&str>) -> Result<()> {
    beat_jobs(home, worker, status, task_id, 0)
}

/// Like [`beat`], also counting `jobs` finished tasks into the spec's `jobs_processed`.
fn beat_jobs(
    home: &Home,
    worker: &str,
    status: Status,
    task_id: Option<&str>,
    jobs: u64,
) -> Result<()> {
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
        if let Err(e) = beat(home, worker, status, task_id) {
            tracing::warn!("cannot set worker {worker} {status}: {e}");
        }
    }
}

fn claim(home: &Home, a: ClaimArgs) -> Result<()> {
    refuse_dead_worker(home, &a.worker)?;
    let lease = lease_or_default(home, a.lease)?;
    let mut c = Claimer::new(home, &a.worker, &a.classes, lease)?;
    let task = match a.wait {
        Some(secs) => {
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            c.claim_wait(Some(deadline))?
        }
        None => c.try_claim()?,
    };
    let Some(task) = task else {
        return Err(Error::NothingToDo(format!(
            "no task to claim{}{}",
            if a.classes.is_empty() {
                String::new()
            } else {
                format!(" in {}", a.classes.join(", "))
            },
            a.wait.map(|s| format!(" within {s}s")).unwrap_or_default()
        )));
    };
    beat_if_worker(home, &a.worker, Status::Running, Some(&task.task_id));
    print_task(a.format, &task)
}

fn caller(worker: Option<String>, force: bool) -> Caller {
    Caller { worker, force }
}

fn complete(home: &Home, a: CompleteArgs) -> Result<()> {
    let result = json_arg("result", a.result.as_deref(), a.result_file.as_deref())?;
    let t = queue::complete(home, &a.task, &caller(a.worker, a.force), result)?;
    if let Some(w) = &t.claimed_by {
        beat_if_worker(home, w, Status::Idle, None);
    }
    match a.format {
        Format::Table => cli::out(t.state.name()),
        f => print_task(f, &t),
    }
}

fn fail(home: &Home, a: FailArgs) -> Result<()> {
    let claimant = queue::find(home, &a.task)
        .ok()
        .and_then(|f| f.task.claimed_by);
    let f = queue::fail(
        home,
        &a.task,
        &caller(a.worker, a.force),
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

fn age(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        Some(s) => format!("{:.1}d", s / 86_400.0),
    }
}

fn list(home: &Home, a: ListArgs) -> Result<()> {
    if let Some(c) = &a.class {
        crate::id::validate("class", c)?;
    }
    let states: Vec<TaskState> = match a.state {
        Some(s) => vec![s],
        None => TaskState::ALL.to_vec(),
    };
    let mut tasks = Vec::new();
    for s in states {
        tasks.extend(queue::list(home, s, a.class.as_deref())?);
    }
    let now = crate::time::now();
    match a.format {
        Format::Json => cli::out_json(&Value::Array(
            tasks.iter().map(Task::to_value).collect::<Result<_>>()?,
        )),
        Format::Jsonl => {
            for t in &tasks {
                cli::out_jsonl(&t.to_value()?)?;
            }
            Ok(())
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = tasks
                .iter()
                .map(|t| {
                    let since = match t.state {
                        TaskState::Processing => t.claimed_at,
                        TaskState::Completed => t.completed_at,
                        TaskState::Failed => t.failed_at,
                        TaskState::Pending => Some(t.enqueued_at),
                    };
                    vec![
                        t.task_id.clone(),
                        t.state.name().into(),
                        t.class.clone(),
                        t.priority.as_str().into(),
                        format!("{}/{}", t.attempts, t.max_attempts),
                        t.claimed_by.clone().unwrap_or_else(|| "-".into()),
                        age(since.map(|s| (now - s).num_milliseconds() as f64 / 1000.0)),
                        t.name.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            cli::out(cli::table(
                &[
                    "TASK",
                    "STATE",
                    "CLASS",
                    "PRIORITY",
                    "ATTEMPTS",
                    "CLAIMED_BY",
                    "AGE",
                    "NAME",
                ],
                &rows,
            ))
        }
    }
}

fn stats(home: &Home, a: StatsArgs) -> Result<()> {
    let policy = HeartbeatPolicy::load(home)?;
    let s = queue::stats(home, &policy, crate::time::now())?;
    match a.format {
        Format::Json | Format::Jsonl => {
            let v = serde_json::to_value(&s).map_err(|e| Error::Internal(e.to_string()))?;
            if a.format == Format::Json {
                cli::out_json(&v)
            } else {
                cli::out_jsonl(&v)
            }
        }
        Format::Table => {
            let mut rows = Vec::new();
            for (state, by_class) in &s.counts {
                for (class, n) in by_class {
                    let oldest = (state == "pending")
                        .then(|| s.oldest_pending_by_class.get(class).copied())
                        .flatten();
                    rows.push(vec![
                        state.clone(),
                        class.clone(),
                        n.to_string(),
                        age(oldest),
                    ]);
                }
            }
            let mut out = cli::table(&["STATE", "CLASS", "COUNT", "OLDEST"], &rows);
            let totals: Vec<String> = s.totals.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!("\ntotal: {}", totals.join(", ")));
            out.push_str(&format!(
                "\noldest pending: {}",
                age(s.oldest_pending_seconds)
            ));
            let per: Vec<String> = s
                .processing_by_worker
                .iter()
                .map(|(w, n)| format!("{w}:{n}"))
                .collect();
            out.push_str(&format!(
                "\nprocessing per worker: {}",
                if per.is_empty() {
                    "-".into()
                } else {
                    per.join(", ")
                }
            ));
            out.push_str(&format!(
                "\nstuck (processing > {}s): {}",
                s.stuck_task_seconds, s.stuck
            ));
            cli::out(out)
        }
    }
}

// ---------------------------------------------------------------------------------------
// work

static STOP: AtomicBool = AtomicBool::new(false);
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Blocks SIGTERM/SIGINT/SIGHUP in this thread (and so in every thread spawned after) and
/// starts a thread that waits for them: it sets STOP, passes SIGTERM to the running command
/// and wakes the claimer. Must run before any other thread is spawned.
fn block_signals() -> Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block()
        .map_err(|e| Error::io("cannot block signals", e.into()))?;
    Ok(set)
}

fn start_signal_thread(set: nix::sys::signal::SigSet, waker: std::sync::mpsc::Sender<Wake>) {
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            tracing::info!("received {sig:?}: finishing the current task, then exiting");
            STOP.store(true, Ordering::SeqCst);
            let pid = CHILD.load(Ordering::SeqCst);
            if pid > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = waker.send(Wake::Interrupt);
        }
    });
}

/// How a run of the command ended.
struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: Vec<u8>,
    truncated: bool,
}

struct Loop<'a> {
    home: &'a Home,
    a: &'a WorkArgs,
    lease: f64,
    interval: Duration,
    is_worker: bool,
}

impl Loop<'_> {
    /// Beats (worker) or does nothing (non-worker, idle). `false` when the worker is no
    /// longer active or is shutting down: the loop must end.
    fn keepalive(&self, status: Status, task_id: Option<&str>) -> bool {
        self.keepalive_jobs(status, task_id, 0)
    }

    fn keepalive_jobs(&self, status: Status, task_id: Option<&str>, jobs: u64) -> bool {
        if !self.is_worker {
            return true;
        }
        match beat_jobs(self.home, &self.a.worker, status, task_id, jobs) {
            Ok(()) => {
                tracing::debug!("heartbeat sent - status: {status}");
                true
            }
            Err(Error::Conflict(m)) => {
                tracing::info!("{m}");
                false
            }
            Err(e) => {
                tracing::warn!("heartbeat failed: {e}");
                true
            }
        }
    }

    fn run_task(&self, task: &Task) -> Result<Outcome> {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        use std::process::Stdio;
        let argv = &self.a.command;
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("CORRAL_TASK_ID", &task.task_id)
            .env("CORRAL_TASK_CLASS", &task.class)
            .env("CORRAL_WORKER_ID", &self.a.worker)
            .env("CORRAL_HOME", self.home.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe calls between fork and exec: the child must not
        // inherit the loop's blocked signal mask, or SIGTERM could never reach it.
        unsafe {
            cmd.pre_exec(|| {
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("cannot run {}", argv[0]), e))?;
        let pid = child.id() as i32;
        CHILD.store(pid, Ordering::SeqCst);
        if STOP.load(Ordering::SeqCst) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let input =
            serde_json::to_vec(&task.to_value()?).map_err(|e| Error::Internal(e.to_string()))?;
        let stdin = child.stdin.take();
        let writer = std::thread::spawn(move || {
            if let Some(mut s) = stdin {
                // A command that does not read its stdin is fine: ignore EPIPE.
                let _ = s.write_all(&input);
            }
        });
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut truncated = false;
            if let Some(s) = stdout {
                let limit = queue::MAX_TASK_BYTES as u64 / 2;
                let mut s = s;
                let _ = (&mut s).take(limit).read_to_end(&mut buf);
                // Drain the rest so the command never blocks on a full pipe.
                let mut rest = [0u8; 8192];
                while let Ok(n) = s.read(&mut rest) {
                    if n == 0 {
                        break;
                    }
                    truncated = true;
                }
            }
            (buf, truncated)
        });
        let fd = crate::process::PidFd::open(pid)?;
        if let Some(fd) = &fd {
            while !fd.wait_exit(self.interval)? {
                self.keepalive_busy(task);
            }
        }
        let status = child
            .wait()
            .map_err(|e| Error::io("cannot wait for the command", e))?;
        CHILD.store(0, Ordering::SeqCst);
        let _ = writer.join();
        let (stdout, truncated) = reader.join().unwrap_or_default();
        Ok(Outcome {
            code: status.code(),
            signal: status.signal(),
            stdout,
            truncated,
        })
    }

    fn keepalive_busy(&self, task: &Task) {
        if self.is_worker {
            if !self.keepalive(Status::Running, Some(&task.task_id)) {
                STOP.store(true, Ordering::SeqCst);
            }
        } else if let Err(e) =
            queue::renew_lease(self.home, &task.task_id, &self.a.worker, self.lease)
        {
            tracing::warn!("cannot renew the lease on {}: {e}", task.task_id);
        }
    }

    fn finish(&self, task: &Task, out: Outcome) {
        let me = Caller {
            worker: Some(self.a.worker.clone()),
            force: false,
        };
        let id = &task.task_id;
        let res = if out.code == Some(0) {
            let result = match serde_json::from_slice::<Value>(&out.stdout) {
                Ok(v) if !out.truncated => v,
                _ => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    if out.truncated {
                        json!({"stdout": text, "truncated": true})
                    } else {
                        Value::String(text.to_string())
                    }
                }
            };
            tracing::info!("task {id} completed");
            queue::complete(self.home, id, &me, Some(result)).map(|_| ())
        } else if STOP.load(Ordering::SeqCst) {
            tracing::info!("task {id} interrupted by shutdown: returning it to the queue");
            queue::requeue(
                self.home,
                id,
                Some(&me),
                &format!("worker {} stopped before finishing", self.a.worker),
            )
            .map(|_| ())
        } else {
            let why = match (out.code, out.signal) {
                (Some(c), _) => format!("{} exited with code {c}", self.a.command[0]),
                (None, Some(s)) => format!("{} killed by signal {s}", self.a.command[0]),
                _ => format!("{} ended abnormally", self.a.command[0]),
            };
            tracing::info!("task {id} failed: {why}");
            queue::fail(self.home, id, &me, Some(why), false).map(|_| ())
        };
        if let Err(e) = res {
            // The monitor may have requeued it (lease ran out): someone else has it now.
            tracing::error!("cannot record the outcome of {id}: {e}");
        }
    }
}

fn work(home: &Home, a: WorkArgs) -> Result<()> {
    let set = block_signals()?;
    STOP.store(false, Ordering::SeqCst);
    refuse_dead_worker(home, &a.worker)?;
    let lease = lease_or_default(home, a.lease)?;
    let mut interval = Duration::from_secs_f64(a.heartbeat_interval.max(0.05));
    if interval.as_secs_f64() > lease / 3.0 {
        interval = Duration::from_secs_f64((lease / 3.0).max(0.05));
    }
    let is_worker = queue::is_active_worker(home, &a.worker);
    let lp = Loop {
        home,
        a: &a,
        lease,
        interval,
        is_worker,
    };
    let mut claimer = Claimer::new(home, &a.worker, &a.classes, lease)?;
    let waker = claimer.watch()?;
    start_signal_thread(set, waker);
    tracing::info!(
        "worker {} starting main loop (classes: {}, {})",
        a.worker,
        if a.classes.is_empty() {
            "all".to_string()
        } else {
            a.classes.join(", ")
        },
        if is_worker {
            "heartbeating its spec"
        } else {
            "not a worker spec: holding leases"
        }
    );
    let mut done = 0u64;
    let mut idle_since = Instant::now();
    let mut alive = lp.keepalive(Status::Idle, None);
    while alive && !STOP.load(Ordering::SeqCst) {
        if a.max_tasks.is_some_and(|m| done >= m) {
            tracing::info!("{done} tasks done (--max-tasks)");
            break;
        }
        let idle_deadline = a.idle_exit.map(|s| idle_since + Duration::from_secs_f64(s));
        let mut deadline = idle_deadline;
        if is_worker {
            let beat_at = Instant::now() + interval;
            deadline = Some(deadline.map_or(beat_at, |d| d.min(beat_at)));
        }
        match claimer.claim_wait(deadline)? {
            Some(task) => {
                tracing::info!(
                    "claimed {} task {} ({})",
                    task.class,
                    task.task_id,
                    task.priority.as_str()
                );
                lp.keepalive(Status::Running, Some(&task.task_id));
                let out = lp.run_task(&task)?;
                lp.finish(&task, out);
                done += 1;
                alive = lp.keepalive_jobs(Status::Idle, None, 1);
                idle_since = Instant::now();
            }
            None => {
                if STOP.load(Ordering::SeqCst) {
                    break;
                }
                if idle_deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::info!(
                        "nothing to claim for {}s (--idle-exit)",
                        a.idle_exit.unwrap_or(0.0)
                    );
                    break;
                }
                alive = lp.keepalive(Status::Idle, None);
            }
        }
    }
    tracing::info!("worker {} shutting down - completed {done} tasks", a.worker);
    if is_worker && alive && !STOP.load(Ordering::SeqCst) {
        complete_if_own_process(home, &a.worker, done);
    }
    Ok(())
}

/// When this loop is the worker's own launched process (`exec task-queue work …`) and it
/// ends by itself (`--idle-exit`, `--max-tasks`), the worker has finished: report completion,
/// so the monitor does not take the exit for a crash and restart it. On SIGTERM the stopper
/// records the stop instead; a loop run by some other process of the worker leaves the
/// worker's fate to that process.
fn complete_if_own_process(home: &Home, worker: &str, done: u64) {
    let own = crate::spec::load(home, worker)
        .ok()
        .and_then(|l| l.spec.process.map(|p| p.pid))
        == Some(std::process::id() as i32);
    if !own {
        return;
    }
    let summary = format!("work loop ended after {done} task(s)");
    match lifecycle::complete_worker(home, worker, Some(&summary)) {
        Ok(_) => tracing::info!("worker {worker} completed: {summary}"),
        Err(Error::Conflict(m)) => tracing::debug!("not completing {worker}: {m}"),
        Err(e) => tracing::warn!("cannot complete worker {worker}: {e}"),
    }
}
