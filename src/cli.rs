//! What every binary shares: the global flags, logging setup, and `run_main`, the one wrapper
//! that turns a `Result` into the exit codes of DESIGN.md §1 and prints errors as one line
//! (`error: what: why`) plus a hint. Only this wrapper decides how a process exits.
//!
//! Logs: colour codes only when stderr is a terminal and `NO_COLOR` is unset (a journal or a
//! file must not fill with escapes). A daemon also writes `agents/logs/<binary>.log` itself,
//! under exactly that name (so `tail -F` of the documented path works), opened `O_NOFOLLOW`
//! like every log corral writes, and rotated by size (`.1`, `.2`, …).

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

/// True when log lines on stderr may carry colour: stderr is a terminal and `NO_COLOR` is
/// unset or empty (<https://no-color.org>).
pub fn stderr_color() -> bool {
    use std::io::IsTerminal;
    color_allowed(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn color_allowed(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Logs to stderr for humans: warnings by default, `-v` debug, `-q` errors, `RUST_LOG` honoured.
pub fn init_logging(g: &Global) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(g, "warn"))
        .with_timer(tracing_subscriber::fmt::time::ChronoUtc::new(
            TIME_FORMAT.into(),
        ))
        .with_ansi(stderr_color())
        .with_writer(|| OneLine(std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Logs for daemons: stderr as above (at info) plus `agents/logs/<name>.log`, rotated by
/// size ([`RotatingLog`]) and written by a background thread (a slow disk never stalls the
/// daemon). Keep the returned guard alive for the life of the daemon, or buffered lines are
/// lost.
pub fn init_daemon_logging(
    g: &Global,
    home: &Home,
    name: &str,
) -> Result<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let log = RotatingLog::open(
        home.daemon_log_dir().join(format!("{name}.log")),
        LogRotation::from_env()?,
    )?;
    let (writer, guard) = tracing_appender::non_blocking(log);
    let timer = || tracing_subscriber::fmt::time::ChronoUtc::new(TIME_FORMAT.into());
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_timer(timer())
                .with_ansi(stderr_color())
                .with_writer(|| OneLine(std::io::stderr()))
                .with_target(false)
                .with_filter(filter(g, "info")),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_timer(timer())
                .with_ansi(false)
                .with_writer(move || OneLine(writer.clone()))
                .with_target(false)
                .with_filter(filter(g, "info")),
        )
        .try_init();
    Ok(guard)
}

/// Keeps every log event on one line: a newline or carriage return inside an event (a file
/// name, a worker's text, an error from elsewhere) is written as `\n` or `\r`, so nothing a
/// worker controls can start a forged line in a log that operators `grep` and `tail -F`.
/// The formatter hands over each event whole, ending in its one real newline.
pub struct OneLine<W: Write>(pub W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        if !body.iter().any(|&b| b == b'\n' || b == b'\r') {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(b),
            }
        }
        if body.len() < buf.len() {
            out.push(b'\n');
        }
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Size rotation of a daemon log: `CORRAL_LOG_MAX_BYTES` (default 16 MiB, at least 4 KiB)
/// and `CORRAL_LOG_KEEP` rotated files (default 5, 1 to 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    pub max_bytes: u64,
    pub keep: u32,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            max_bytes: 16 * 1024 * 1024,
            keep: 5,
        }
    }
}

impl LogRotation {
    /// The defaults with the environment's overrides, range-checked (exit 6).
    pub fn from_env() -> Result<LogRotation> {
        let mut r = LogRotation::default();
        let num = |k: &str, min: u64, max: u64| -> Result<Option<u64>> {
            match std::env::var(k) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .map(Some)
                    .ok_or_else(|| Error::Invalid(format!("{k}={v}: expected {min} to {max}"))),
                _ => Ok(None),
            }
        };
        if let Some(n) = num("CORRAL_LOG_MAX_BYTES", 4096, 1 << 40)? {
            r.max_bytes = n;
        }
        if let Some(n) = num("CORRAL_LOG_KEEP", 1, 100)? {
            r.keep = n as u32;
        }
        Ok(r)
    }
}

/// A daemon's log file, `agents/logs/<binary>.log` under exactly that name, appended to and
/// rotated by size: when a line would take it past `max_bytes`, `.1` … become `.2` …, the
/// file becomes `.1` and a new one is started (as the event log does), so `tail -F` of the
/// documented name follows it. Every open goes through `store::open_log` (`O_NOFOLLOW`,
/// regular files only, the home's mode). When another process rotated the file first, this
/// one just reopens the name.
pub struct RotatingLog {
    path: std::path::PathBuf,
    rotation: LogRotation,
    file: Option<std::fs::File>,
}

impl RotatingLog {
    /// Opens (creating) the log.
    pub fn open(path: std::path::PathBuf, rotation: LogRotation) -> Result<RotatingLog> {
        let file = crate::store::open_log(&path)?;
        Ok(RotatingLog {
            path,
            rotation,
            file: Some(file),
        })
    }

    fn rotated(&self, n: u32) -> std::path::PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        name.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let _ = std::fs::remove_file(self.rotated(self.rotation.keep));
        for n in (1..self.rotation.keep).rev() {
            let from = self.rotated(n);
            if std::fs::symlink_metadata(&from).is_ok() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        match std::fs::rename(&self.path, self.rotated(1)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The open file, reopened when the name no longer points at it (rotated elsewhere).
    fn current(&mut self) -> std::io::Result<&mut std::fs::File> {
        use std::os::unix::fs::MetadataExt;
        let stale = match (&self.file, std::fs::symlink_metadata(&self.path)) {
            (Some(f), Ok(named)) => f
                .metadata()
                .map(|m| (m.dev(), m.ino()) != (named.dev(), named.ino()))
                .unwrap_or(true),
            _ => true,
        };
        if stale {
            self.file = Some(crate::store::open_log(&self.path).map_err(std::io::Error::other)?);
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("log not open"))
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let size = self.current()?.metadata()?.len();
        if size > 0 && size + buf.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        self.current()?.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
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
                eprintln!("error: {}", crate::view::term::escape_line(&e.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_event_stays_on_one_line_whatever_its_text() {
        let write = |events: &[&[u8]]| {
            let mut w = OneLine(Vec::new());
            for e in events {
                w.write_all(e).expect("write");
            }
            String::from_utf8(w.0).expect("utf-8")
        };
        assert_eq!(write(&[b"plain\n", b"next\n"]), "plain\nnext\n");
        assert_eq!(
            write(&[b"WARN bad /a\nFORGED\rx\n"]),
            "WARN bad /a\\nFORGED\\rx\n"
        );
        assert_eq!(write(&[b"no end\nhere"]), "no end\\nhere");
        assert_eq!(write(&[b"\n"]), "\n");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(color_allowed(true, None));
        assert!(color_allowed(true, Some(std::ffi::OsStr::new(""))));
        assert!(!color_allowed(true, Some(std::ffi::OsStr::new("1"))));
        assert!(!color_allowed(false, None));
    }

    #[test]
    fn the_daemon_log_keeps_its_name_rotates_by_size_and_never_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("heartbeat-monitor.log");
        let rotation = LogRotation {
            max_bytes: 4096,
            keep: 3,
        };
        let mut log = RotatingLog::open(path.clone(), rotation).unwrap();
        let line = [b'x'; 1000];
        for _ in 0..20 {
            log.write_all(&line).unwrap();
            log.write_all(b"\n").unwrap();
        }
        log.flush().unwrap();
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) > 0 && size(&path) <= 4096);
        assert!(size(&dir.path().join("logs/heartbeat-monitor.log.1")) > 0);
        assert!(size(&dir.path().join("logs/heartbeat-monitor.log.3")) > 0);
        assert!(!dir.path().join("logs/heartbeat-monitor.log.4").exists());
        // A planted symlink at the log's name is refused, not followed.
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "").unwrap();
        let planted = dir.path().join("logs").join("planted.log");
        std::os::unix::fs::symlink(&outside, &planted).unwrap();
        assert!(RotatingLog::open(planted, rotation).is_err());
        assert_eq!(std::fs::read(&outside).unwrap(), b"");
    }
}
