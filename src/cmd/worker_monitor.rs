//! `worker-monitor`: the operator's dashboards over a home — the worker list (default), a
//! live `--watch` view, the event log (`events`, with `--follow` across rotation), the fleet
//! `summary`, queue `progress`, a worker's `logs`, and the `prometheus` textfile. All of it
//! is read from the files; the library does the work in `crate::view`. When no heartbeat
//! monitor watches the home, the views say so on stderr (or the top line of `--watch`):
//! without one, statuses and health scores are only what the workers last wrote.

use crate::cli::{self, Format, Global};
use crate::error::{Error, Result};
use crate::home::{Home, StateDir};
use crate::time;
use crate::view::{self, eventlog, summary, term, workers};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Dashboards: list and filter workers, watch them live, read and follow the event log and
/// worker logs, summarise the fleet, export Prometheus metrics.
///
/// With no subcommand, lists workers (`active/` unless --status or --state-dir says
/// otherwise). Everything is read from the home's files, so it works with no daemon running
/// (a warning then says the data may be stale). Ids are shown short; every command accepts a
/// unique prefix of an id.
#[derive(Debug, Parser)]
#[command(
    name = "worker-monitor",
    version,
    after_help = "Examples:\n  worker-monitor                              # active workers\n  worker-monitor --status running --type implementation-worker\n  worker-monitor --sort health --format json | jq '.[0]'\n  worker-monitor --top-tokens 10\n  worker-monitor --state-dir all --session build-42\n  worker-monitor --watch --interval 2\n  worker-monitor events --since 1h --type worker_failed\n  worker-monitor events --follow --worker worker-implementation-1\n  worker-monitor summary --format json\n  worker-monitor progress\n  worker-monitor logs implementation-7f3a --follow\n  worker-monitor logs 7f3a --task task-aaaa\n  worker-monitor prometheus --output /var/lib/node_exporter/textfile/corral.prom"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(flatten)]
    pub list: ListArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; none means `list`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List workers (the default).
    List(ListArgs),
    /// Print the event log (rotated files first), optionally following it.
    #[command(
        after_help = "Examples:\n  worker-monitor events --since 1h\n  worker-monitor events --type zombie_detected --type worker_failed --format jsonl\n  worker-monitor events --follow --session build-42"
    )]
    Events(EventsArgs),
    /// The fleet dashboards as one report: recent lifecycle events, failures, sessions,
    /// active workers, lifecycles, jobs per worker, queue, budget, restarts, breakers.
    #[command(
        after_help = "Examples:\n  worker-monitor summary\n  worker-monitor summary --since 30m --failures-since 7d --limit 50 --format json"
    )]
    Summary(SummaryArgs),
    /// Queue progress and what each worker is processing.
    Progress(ProgressArgs),
    /// A worker's log (stdout and stderr of its process); one task's part with --task.
    #[command(
        after_help = "The work loop (task-queue work) frames each task's output with marker lines:\n  --- corral task <id> start <time> …\n  --- corral task <id> end <time> exit=<code> …\n--task prints from start to end (both included). --follow stops by itself when the task ends or the worker has left active/.\n\nExamples:\n  worker-monitor logs implementation-7f3a9c01\n  worker-monitor logs 7f3a -n 50 --follow\n  worker-monitor logs 7f3a --task aaaabbbb"
    )]
    Logs(LogsArgs),
    /// Prometheus text exposition (stdout, or written atomically with --output).
    #[command(
        after_help = "Examples:\n  worker-monitor prometheus\n  worker-monitor prometheus --output /var/lib/node_exporter/textfile/corral.prom"
    )]
    Prometheus(PromArgs),
}

/// Where to look for specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateDirArg {
    Active,
    Completed,
    Zombie,
    Archived,
    All,
}

/// Flags of the worker list (and of `--watch`).
#[derive(Debug, Args, Default)]
pub struct ListArgs {
    /// Only workers with this status (repeatable, or comma-separated).
    #[arg(long, value_name = "S", value_delimiter = ',')]
    pub status: Vec<String>,
    /// Only workers of this type (repeatable, or comma-separated).
    #[arg(long = "type", value_name = "T", value_delimiter = ',')]
    pub worker_type: Vec<String>,
    /// Only workers of this session (repeatable).
    #[arg(long, value_name = "S")]
    pub session: Vec<String>,
    /// State directory to read (default: where the --status values live, else active).
    #[arg(long, value_enum, value_name = "DIR")]
    pub state_dir: Option<StateDirArg>,
    /// Order of the rows.
    #[arg(long, value_enum, default_value = "id")]
    pub sort: Option<workers::SortKey>,
    /// Only the N workers using the largest share of their allocation.
    #[arg(long, value_name = "N", conflicts_with = "sort")]
    pub top_tokens: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Live dashboard, redrawn on changes (q or Ctrl-C quits).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: full refresh at least every S seconds.
    #[arg(long, value_name = "S", default_value_t = 2.0, requires = "watch")]
    pub interval: f64,
}

/// Flags of `events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events (survives rotation) until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only events since a duration ago (30m, 1h, 7d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only events of this type (repeatable, or comma-separated).
    #[arg(long = "type", value_name = "T", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events of this worker.
    #[arg(long, value_name = "ID")]
    pub worker: Option<String>,
    /// Only events of this session.
    #[arg(long, value_name = "S")]
    pub session: Option<String>,
    /// table, json (an array; with --follow one object per line) or jsonl (the log's lines).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Flags of `summary`.
#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// Window of "recent lifecycle events".
    #[arg(long, value_name = "WHEN", default_value = "1h")]
    pub since: String,
    /// Window of "failures".
    #[arg(long, value_name = "WHEN", default_value = "1d")]
    pub failures_since: String,
    /// Longest list in any section.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Flags of `progress`.
#[derive(Debug, Args)]
pub struct ProgressArgs {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Flags of `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The worker (id or unique prefix; workers whose spec is gone are found by their logs).
    pub worker: String,
    /// Keep printing what is appended until the worker (or the --task) ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the output of this task (id or unique prefix).
    #[arg(long, value_name = "TASK")]
    pub task: Option<String>,
    /// Only the last N lines.
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<usize>,
}

/// Flags of `prometheus`.
#[derive(Debug, Args)]
pub struct PromArgs {
    /// Write atomically to FILE instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Entry point of the `worker-monitor` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("worker-monitor", || run(cli))
}

impl ListArgs {
    /// True when any list flag was given (clap fills in the defaults otherwise).
    fn given(&self) -> bool {
        !self.status.is_empty()
            || !self.worker_type.is_empty()
            || !self.session.is_empty()
            || self.state_dir.is_some()
            || self.top_tokens.is_some()
            || self.watch
            || self.format != Format::Table
            || self.sort != Some(workers::SortKey::Id)
    }
}

fn run(cli: Cli) -> Result<()> {
    // The global flags (--home, -v, -q) go anywhere; the list's own flags only without a
    // subcommand, so `worker-monitor --format json events` is refused, not half-obeyed.
    if cli.command.is_some() && cli.list.given() {
        return Err(Error::Usage(
            "list flags (--status, --type, --format, --watch, ...) go after the subcommand, or with no subcommand for the list".into(),
        ));
    }
    let home = cli.global.home()?;
    let quiet = cli.global.quiet;
    match cli.command {
        None => list(&home, cli.list, quiet),
        Some(Command::List(a)) => list(&home, a, quiet),
        Some(Command::Logs(a)) => logs(&home, a),
        Some(Command::Events(a)) => events(&home, a),
        Some(Command::Summary(a)) => summary_cmd(&home, a),
        Some(Command::Progress(a)) => progress(&home, a),
        Some(Command::Prometheus(a)) => match a.output {
            Some(p) => view::write_prometheus(&home, &p),
            None => stdout_write(view::prometheus_text(&home)?.as_bytes()),
        },
    }
}

fn stdout_write(bytes: &[u8]) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(bytes)
        .and_then(|_| o.flush())
        .map_err(|e| Error::io("cannot write to stdout", e))
}

fn logs(home: &Home, a: LogsArgs) -> Result<()> {
    let id = crate::lookup::resolve_worker_or_log(home, &a.worker)?;
    let task = match &a.task {
        None => None,
        Some(t) => {
            let ids = view::logs::task_ids(home, &id)?;
            match crate::lookup::resolve_among(crate::lookup::IdKind::Task, t, ids) {
                Ok(full) => Some(full),
                // Not in the log yet: with --follow, wait for it to start here.
                Err(Error::NotFound(_)) if a.follow => {
                    Some(crate::lookup::resolve_task(home, t).unwrap_or_else(|_| t.clone()))
                }
                Err(Error::NotFound(_)) => {
                    return Err(Error::NotFound(format!(
                        "task {t} has no output in the log of {id}"
                    )))
                }
                Err(e) => return Err(e),
            }
        }
    };
    let opts = view::logs::Options {
        task,
        lines: a.lines,
        follow: a.follow,
        escape: term::is_tty(libc::STDOUT_FILENO),
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    view::logs::print(home, &id, &opts, &mut out)
}

fn list(home: &Home, a: ListArgs, quiet: bool) -> Result<()> {
    let filter = workers::Filter {
        statuses: a.status.clone(),
        types: a.worker_type.clone(),
        sessions: a.session.clone(),
    };
    for s in &a.status {
        if crate::spec::Status::parse(s).is_none() {
            return Err(Error::Usage(format!(
                "unknown status {s:?}: use pending, running, idle, shutting_down, completed, failed or zombie"
            )));
        }
    }
    let sort = if a.top_tokens.is_some() {
        workers::SortKey::Tokens
    } else {
        a.sort.unwrap_or(workers::SortKey::Id)
    };
    if a.watch {
        let interval = Duration::try_from_secs_f64(a.interval)
            .map_err(|_| Error::Usage(format!("invalid --interval {}", a.interval)))?;
        return view::watch::run(
            home,
            view::watch::Options {
                interval,
                filter,
                sort,
                colour: term::use_colour(),
            },
        );
    }
    let dirs = match a.state_dir {
        None => workers::default_dirs(&a.status),
        Some(StateDirArg::All) => StateDir::ALL.to_vec(),
        Some(StateDirArg::Active) => vec![StateDir::Active],
        Some(StateDirArg::Completed) => vec![StateDir::Completed],
        Some(StateDirArg::Zombie) => vec![StateDir::Zombie],
        Some(StateDirArg::Archived) => vec![StateDir::Archived],
    };
    let now = time::now();
    let loaded = workers::load(home, &dirs, now)?;
    for (p, why) in &loaded.unreadable {
        tracing::warn!("skipping {}: {why}", p.display());
    }
    let mut rows: Vec<_> = loaded
        .rows
        .into_iter()
        .filter(|r| filter.matches(r))
        .collect();
    workers::sort(&mut rows, sort, now);
    if let Some(n) = a.top_tokens {
        rows.truncate(n);
    }
    if !quiet && rows.iter().any(crate::status::needs_watching) {
        if let Some(b) = crate::status::stale_warning(home) {
            eprintln!("{b}");
        }
    }
    match a.format {
        Format::Table => {
            let width = if term::is_tty(libc::STDOUT_FILENO) {
                term::size().map(|s| s.0)
            } else {
                None
            };
            let mut t = workers::table(&rows, width, term::use_colour());
            t.push('\n');
            stdout_write(t.as_bytes())
        }
        Format::Json | Format::Jsonl => write_rows(&rows, a.format == Format::Json),
    }
}

/// Serialises straight into a buffered stdout: no intermediate JSON tree for 100k rows.
fn write_rows<T: serde::Serialize>(rows: &[T], array: bool) -> Result<()> {
    let err = |e: std::io::Error| Error::io("cannot write to stdout", e);
    let ser = |e: serde_json::Error| match e.io_error_kind() {
        Some(k) => Error::io("cannot write to stdout", std::io::Error::from(k)),
        None => Error::Internal(format!("serialise: {e}")),
    };
    let mut o = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if array {
        o.write_all(b"[").map_err(err)?;
    }
    for (i, r) in rows.iter().enumerate() {
        if array {
            o.write_all(if i == 0 { b"\n  " } else { b",\n  " })
                .map_err(err)?;
        }
        serde_json::to_writer(&mut o, r).map_err(ser)?;
        if !array {
            o.write_all(b"\n").map_err(err)?;
        }
    }
    if array {
        o.write_all(if rows.is_empty() { b"]\n" } else { b"\n]\n" })
            .map_err(err)?;
    }
    o.flush().map_err(err)
}

fn events(home: &Home, a: EventsArgs) -> Result<()> {
    let now = time::now();
    let worker = match &a.worker {
        Some(w) => Some(
            crate::lookup::resolve_worker_or_log(home, w).or_else(|e| match e {
                // A worker that left no spec or log may still have events.
                Error::NotFound(_) => Ok(w.clone()),
                e => Err(e),
            })?,
        ),
        None => None,
    };
    let filter = eventlog::EventFilter {
        since: a
            .since
            .as_deref()
            .map(|s| time::parse_since(s, now))
            .transpose()?,
        types: a.types.clone(),
        worker,
        session: a.session.clone(),
    };
    let err = |e: std::io::Error| Error::io("cannot write to stdout", e);
    let mut o = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let as_array = a.format == Format::Json && !a.follow;
    let first = std::cell::Cell::new(true);
    let unparsable = std::cell::Cell::new(0u64);
    let emit = |line: &[u8], o: &mut std::io::BufWriter<std::io::StdoutLock<'_>>| -> Result<()> {
        let Some(e) = eventlog::LightEvent::parse(line) else {
            unparsable.set(unparsable.get() + 1);
            return Ok(());
        };
        if !filter.matches(&e) {
            return Ok(());
        }
        match a.format {
            Format::Table => {
                o.write_all(term::escape_line(&eventlog::table_line(&e)).as_bytes())
                    .map_err(err)?;
                o.write_all(b"\n").map_err(err)
            }
            Format::Json if as_array => {
                o.write_all(if first.replace(false) {
                    b"[\n  "
                } else {
                    b",\n  "
                })
                .map_err(err)?;
                o.write_all(line).map_err(err)
            }
            _ => {
                o.write_all(line).map_err(err)?;
                o.write_all(b"\n").map_err(err)
            }
        }
    };
    let mut follower = eventlog::read_all(home, &mut |l| emit(l, &mut o))?;
    if as_array {
        o.write_all(if first.get() { b"[]\n" } else { b"\n]\n" })
            .map_err(err)?;
    }
    o.flush().map_err(err)?;
    if unparsable.get() > 0 {
        tracing::warn!(
            "{} line(s) of the event log are not JSON events",
            unparsable.get()
        );
    }
    if !a.follow {
        return Ok(());
    }
    follow(home, &mut follower, &mut |l| {
        emit(l, &mut o)?;
        o.flush().map_err(err)
    })
}

/// Waits on inotify for the log's directory (polling once a second as a fallback, e.g. on
/// NFS) and passes new lines until stdout closes or the process is interrupted.
fn follow(
    home: &Home,
    follower: &mut eventlog::Follower,
    f: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    use notify::Watcher;
    let (tx, rx) = std::sync::mpsc::channel();
    // Opens and reads (ours included) are not changes: only the rest wakes the loop.
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if !matches!(&ev, Ok(e) if e.kind.is_access()) {
            let _ = tx.send(ev);
        }
    })
    .ok();
    let dir = home.coordination();
    if let Some(w) = watcher.as_mut() {
        if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!("cannot watch {}: {e}; polling", dir.display());
        }
    }
    loop {
        let _ = rx.recv_timeout(Duration::from_secs(1));
        while rx.try_recv().is_ok() {}
        follower.poll(f)?;
    }
}

fn summary_cmd(home: &Home, a: SummaryArgs) -> Result<()> {
    let now = time::now();
    let opts = summary::Options {
        recent_since: time::parse_since(&a.since, now)?,
        failures_since: time::parse_since(&a.failures_since, now)?,
        limit: a.limit,
    };
    let s = summary::build(home, opts, now)?;
    match a.format {
        Format::Table => cli::out(term::escape(&summary::render_text(&s))),
        Format::Json => cli::out_json(&to_value(&s)?),
        Format::Jsonl => cli::out_jsonl(&to_value(&s)?),
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(format!("serialise: {e}")))
}

fn progress(home: &Home, a: ProgressArgs) -> Result<()> {
    let now = time::now();
    let q = summary::queue_progress(home)?;
    let processing = view::tasks::tasks_in(home, crate::home::TaskState::Processing)?;
    let loaded = workers::load(home, &[StateDir::Active], now)?;
    let mut by_type: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in &loaded.rows {
        *by_type.entry(r.worker_type.as_str()).or_default() += 1;
    }
    let types: std::collections::HashMap<&str, &str> = loaded
        .rows
        .iter()
        .map(|r| (r.worker_id.as_str(), r.worker_type.as_str()))
        .collect();
    let current: Vec<serde_json::Value> = processing
        .iter()
        .map(|t| {
            serde_json::json!({
                "worker_id": t.claimed_by,
                "worker_type": t.claimed_by.as_deref().and_then(|w| types.get(w)),
                "task_id": t.task_id,
                "class": t.class,
                "elapsed_seconds": t.claimed_at.map(|c| view::secs_between(c, now)),
            })
        })
        .collect();
    match a.format {
        Format::Table => {
            let short = crate::lookup::short_ids(
                processing
                    .iter()
                    .flat_map(|t| [Some(t.task_id.as_str()), t.claimed_by.as_deref()])
                    .flatten(),
            );
            let show = |id: &str| short.get(id).cloned().unwrap_or_else(|| id.to_string());
            // One line per item, each escaped whole: a class or claimant read from a task
            // file can neither drive the terminal nor start a line of its own.
            let mut lines = vec![q.line()];
            let parts: Vec<String> = by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
            if !parts.is_empty() {
                lines.push(format!("  Workers: {}", parts.join(", ")));
            }
            for t in &processing {
                lines.push(format!(
                    "  └─ Worker {}: Processing {} task {} ({} elapsed)",
                    t.claimed_by
                        .as_deref()
                        .map(show)
                        .unwrap_or_else(|| "?".into()),
                    t.class,
                    show(&t.task_id),
                    t.claimed_at
                        .map(|c| format!("{:.1}s", view::secs_between(c, now)))
                        .unwrap_or_else(|| "?".into())
                ));
            }
            let lines: Vec<_> = lines.iter().map(|l| term::escape_line(l)).collect();
            cli::out(lines.join("\n"))
        }
        _ => {
            let v = serde_json::json!({
                "queue": to_value(&q)?,
                "workers_by_type": by_type,
                "processing": current,
            });
            if a.format == Format::Json {
                cli::out_json(&v)
            } else {
                cli::out_jsonl(&v)
            }
        }
    }
}
