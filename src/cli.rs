//! What every binary shares: the global flags, logging setup, and `run_main`, the one wrapper
//! that turns a `Result` into the exit codes of DESIGN.md §1 and prints errors as one line
//! (`error: what: why`) plus a hint. Only this wrapper decides how a process exits.

use crate::error::{Error, Result};
use crate::home::Home;
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Output format for commands that print data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document.
    Json,
    /// One JSON object per line.
    Jsonl,
}

/// Flags every binary accepts, before or after a subcommand.
#[derive(Debug, Clone, Args, Default)]
pub struct Global {
    /// The corral home (default: $CORRAL_HOME, then $COMMIT_RELAY_HOME).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// More log output on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl Global {
    /// Resolves and checks the home (exit 8 when missing).
    pub fn home(&self) -> Result<Home> {
        Home::resolve(self.home.as_deref())
    }
}

fn filter(g: &Global, default: &str) -> tracing_subscriber::EnvFilter {
    let level = if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => default,
            1 => "debug",
            _ => "trace",
        }
    };
    if g.verbose == 0 && !g.quiet {
        if let Ok(f) = tracing_subscriber::EnvFilter::try_from_default_env() {
            return f;
        }
    }
    tracing_subscriber::EnvFilter::new(level)
}

const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// Logs to stderr for humans: warnings by default, `-v` debug, `-q` errors, `RUST_LOG` honoured.
pub fn init_logging(g: &Global) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(g, "warn"))
        .with_timer(tracing_subscriber::fmt::time::ChronoUtc::new(
            TIME_FORMAT.into(),
        ))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Logs for daemons: stderr as above (at info) plus `agents/logs/<name>.log`, rolled daily.
/// Keep the returned guard alive for the life of the daemon, or buffered lines are lost.
pub fn init_daemon_logging(
    g: &Global,
    home: &Home,
    name: &str,
) -> Result<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let dir = home.daemon_log_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let appender = tracing_appender::rolling::daily(&dir, format!("{name}.log"));
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let timer = || tracing_subscriber::fmt::time::ChronoUtc::new(TIME_FORMAT.into());
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_timer(timer())
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_filter(filter(g, "info")),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_timer(timer())
                .with_ansi(false)
                .with_writer(writer)
                .with_target(false)
                .with_filter(filter(g, "info")),
        )
        .try_init();
    Ok(guard)
}

/// Runs a command body and maps its outcome to an exit code. A closed stdout (`| head`) is
/// success, as in ripgrep.
pub fn run_main(name: &str, body: impl FnOnce() -> Result<()>) -> ExitCode {
    crate::events::set_source(name);
    let result = body();
    let flushed = std::io::stdout().flush();
    match result {
        Ok(()) => match flushed {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("error: cannot write output: {e}");
                ExitCode::from(1)
            }
            _ => ExitCode::SUCCESS,
        },
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            if !matches!(e, Error::CheckFailed(_)) || !e.to_string().is_empty() {
                eprintln!("error: {e}");
            }
            if let Some(h) = e.hint() {
                eprintln!("{h}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Parses argv with clap, mapping clap's own errors to exit 2 (and `--help`/`--version` to 0).
pub fn parse<T: clap::Parser>() -> std::result::Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        let code = if e.use_stderr() { 2 } else { 0 };
        let _ = e.print();
        ExitCode::from(code)
    })
}

/// Writes a line to stdout, turning a closed pipe into an error `run_main` treats as success.
pub fn out(line: impl std::fmt::Display) -> Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{line}").map_err(|e| Error::io("cannot write to stdout", e))
}

/// Prints a JSON value (pretty) to stdout.
pub fn out_json(v: &serde_json::Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    out(s)
}

/// Prints a JSON value on one line (jsonl).
pub fn out_jsonl(v: &serde_json::Value) -> Result<()> {
    out(v.to_string())
}

/// Renders rows as aligned columns with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    for r in rows {
        out.push(line(r.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}
