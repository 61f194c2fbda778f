//! `worker-monitor logs ID`: a worker's `worker.log` (stdout and stderr of its process,
//! rotated files first), optionally only the part written for one task, optionally followed
//! as it grows.
//!
//! The work loop (`task-queue work`) frames each task's output in the worker log with
//! marker lines, the contract between the two:
//!
//! ```text
//! --- corral task <task_id> start <rfc3339> …
//! …what the task's command wrote…
//! --- corral task <task_id> end <rfc3339> exit=<code> …
//! ```
//!
//! The log is rotated by size (`logrotate`): the pieces `worker.log.N` … `worker.log.1`,
//! `worker.log` are one byte stream cut at block boundaries, so they are read as one (a line
//! cut in two by a rotation is printed whole), under a shared lock on the log directory so
//! no rotation happens half-way through a read. `--follow` keeps its place as an offset in
//! that stream: when the beginning of the live file is cut off into `worker.log.1` under it,
//! it neither repeats nor skips a line, and what it had not read yet is read from the piece.
//!
//! `--task` prints from a task's start marker to its end marker, both included (every run,
//! if the task ran more than once on this worker). `--follow` keeps reading what is appended
//! (waking on inotify, polling once a second where inotify cannot see), starts over when the
//! file is replaced or truncated by hand, and stops by itself when the followed task ends or, without
//! `--task`, when the worker has left `active/` and nothing more is written: the way
//! `pueue follow` ends with its task. What reaches a terminal is escaped (a worker's output
//! cannot move the operator's cursor or rewrite their screen); into a pipe or a file the bytes
//! pass through unchanged.

use crate::error::{Error, Result};
use crate::home::{Home, StateDir};
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The prefix of a task marker line.
pub const MARKER: &str = "--- corral task ";

/// A task marker: `(task id, true for start / false for end)`.
pub fn marker(line: &[u8]) -> Option<(&str, bool)> {
    let rest = line.strip_prefix(MARKER.as_bytes())?;
    let text = std::str::from_utf8(rest).ok()?;
    let mut parts = text.split_whitespace();
    let id = parts.next()?;
    match parts.next()? {
        "start" => Some((id, true)),
        "end" => Some((id, false)),
        _ => None,
    }
}

/// What to print.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only the output of this task (a full id: resolve prefixes with [`task_ids`] first).
    pub task: Option<String>,
    /// Only the last N lines (of the selection).
    pub lines: Option<usize>,
    /// Keep printing what is appended.
    pub follow: bool,
    /// Escape control characters (stdout is a terminal).
    pub escape: bool,
}

/// The worker's log files, oldest first: `worker.log.N` … `worker.log.1`, `worker.log`.
pub fn log_files(home: &Home, id: &str) -> Vec<PathBuf> {
    let current = home.worker_log(id);
    let mut out: Vec<PathBuf> = crate::logrotate::pieces(&home.worker_log_dir(id))
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if current.exists() {
        out.push(current);
    }
    out
}

fn open(path: &Path) -> Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

/// Ids of the tasks that started in the worker's log, in order of first appearance.
pub fn task_ids(home: &Home, id: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut t = Tailer::from_start(home, id)?;
    t.drain(true, &mut |l| {
        if let Some((t, true)) = marker(l) {
            if !out.iter().any(|x| x == t) {
                out.push(t.to_string());
            }
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Which lines pass: everything, or the lines of one task's runs.
struct Selector<'a> {
    task: Option<&'a str>,
    inside: bool,
    /// The task's end marker was seen (and it has not started again since).
    ended: bool,
    started: bool,
}

impl Selector<'_> {
    fn pass(&mut self, line: &[u8]) -> bool {
        let Some(task) = self.task else {
            return true;
        };
        match marker(line) {
            Some((t, true)) if t == task => {
                self.inside = true;
                self.started = true;
                self.ended = false;
                true
            }
            Some((t, false)) if t == task && self.inside => {
                self.inside = false;
                self.ended = true;
                true
            }
            _ => self.inside,
        }
    }
}

fn write_line(out: &mut dyn Write, line: &[u8], escape: bool) -> Result<()> {
    let err = |e| Error::io("cannot write to stdout", e);
    if escape {
        let text = String::from_utf8_lossy(line);
        out.write_all(crate::view::term::escape(&text).as_bytes())
            .map_err(err)
    } else {
        out.write_all(line).map_err(err)
    }
}

/// Prints the log (see the module docs). Exit 3 when the worker has no log (and, with
/// `--follow`, is not active to write one).
pub fn print(home: &Home, id: &str, opts: &Options, out: &mut dyn Write) -> Result<()> {
    let files = log_files(home, id);
    let active = || matches!(crate::spec::locate(home, id), Some((StateDir::Active, _)));
    if files.is_empty() && !(opts.follow && active()) {
        return Err(Error::NotFound(format!(
            "worker {id} has no log ({} does not exist: only workers launched with a command have one)",
            home.worker_log(id).display()
        )));
    }
    let mut sel = Selector {
        task: opts.task.as_deref(),
        inside: false,
        ended: false,
        started: false,
    };
    let mut tail: VecDeque<Vec<u8>> = VecDeque::new();
    let mut tailer = Tailer::from_start(home, id)?;
    // Following, a last line without its newline waits for the rest of it.
    tailer.drain(!opts.follow, &mut |line| {
        if !sel.pass(line) {
            return Ok(true);
        }
        match opts.lines {
            Some(0) => {}
            Some(n) => {
                if tail.len() == n {
                    tail.pop_front();
                }
                tail.push_back(line.to_vec());
            }
            None => write_line(out, line, opts.escape)?,
        }
        Ok(true)
    })?;
    for l in tail.drain(..) {
        write_line(out, &l, opts.escape)?;
    }
    out.flush()
        .map_err(|e| Error::io("cannot write to stdout", e))?;
    if !opts.follow || (opts.task.is_some() && sel.ended) {
        return Ok(());
    }
    follow(home, id, opts, &mut sel, out, tailer)
}

/// Bytes read under the directory lock at a time: the lock is never held while output is
/// written (a reader piped into a pager that waits must not hold rotation off).
const READ_CHUNK: u64 = 1 << 20;

/// A reader of a worker's log as one stream: its place is an offset in the worker's whole
/// output (see `logrotate`), so a rotation under it neither repeats nor skips a line; bytes
/// cut off the live file before it read them are read from the pieces. It holds the shared
/// directory lock only while it reads a chunk, never while its lines are written out.
struct Tailer {
    dir: PathBuf,
    path: PathBuf,
    /// Stream offset of the next byte to read.
    at: u64,
    /// The live file as last seen: its base and inode, to notice one replaced by hand.
    seen: Option<(u64, u64)>,
    partial: Vec<u8>,
}

impl Tailer {
    /// A reader at the oldest byte still kept (the start of the oldest piece).
    fn from_start(home: &Home, id: &str) -> Result<Tailer> {
        let dir = home.worker_log_dir(id);
        let at = {
            let _lock = crate::logrotate::read_lock(&dir)?;
            let kept: u64 = crate::logrotate::pieces(&dir)
                .iter()
                .map(|(_, p)| std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0))
                .sum();
            crate::logrotate::stream_state(&dir)
                .base
                .saturating_sub(kept)
        };
        Ok(Tailer {
            dir,
            path: home.worker_log(id),
            at,
            seen: None,
            partial: Vec::new(),
        })
    }

    /// Passes the complete lines read so far; false when `f` says stop.
    fn lines(&mut self, f: &mut dyn FnMut(&[u8]) -> Result<bool>) -> Result<bool> {
        let mut start = 0;
        let mut go_on = true;
        while let Some(i) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let end = start + i + 1;
            go_on = f(&self.partial[start..end])?;
            start = end;
            if !go_on {
                break;
            }
        }
        self.partial.drain(..start);
        Ok(go_on)
    }

    /// Reads up to `max` bytes of the stream from the pieces, `[at, to)` with `to` the live
    /// file's base. Bytes of a piece already removed (`keep_log_files`) are skipped.
    fn read_pieces(&mut self, to: u64, max: u64) -> Result<u64> {
        let mut end = to;
        let mut ranges = Vec::new();
        for (_, p) in crate::logrotate::pieces(&self.dir).into_iter().rev() {
            let len = std::fs::symlink_metadata(&p).map(|m| m.len()).unwrap_or(0);
            let start = end.saturating_sub(len);
            ranges.push((p, start, end));
            end = start;
            if start <= self.at {
                break;
            }
        }
        // What lies before the oldest piece is gone.
        self.at = self.at.max(end);
        for (p, start, end) in ranges.into_iter().rev() {
            if self.at >= end {
                continue;
            }
            let n = (end - self.at).min(max);
            let mut file = open(&p)?;
            let before = self.partial.len();
            file.seek(SeekFrom::Start(self.at - start))
                .and_then(|_| file.take(n).read_to_end(&mut self.partial))
                .map_err(|e| Error::io(format!("cannot read {}", p.display()), e))?;
            let got = (self.partial.len() - before) as u64;
            self.at += got;
            return Ok(got);
        }
        Ok(0)
    }

    /// Reads the next chunk of the stream (at most [`READ_CHUNK`] bytes) under the shared
    /// directory lock; returns how many bytes it read.
    fn fill(&mut self) -> Result<u64> {
        let _lock = crate::logrotate::read_lock(&self.dir)?;
        let base = crate::logrotate::stream_state(&self.dir).base;
        if self.at < base {
            let n = self.read_pieces(base, READ_CHUNK)?;
            if n > 0 || self.at < base {
                return Ok(n);
            }
        }
        let Ok(mut file) = open(&self.path) else {
            return Ok(0);
        };
        let m = file
            .metadata()
            .map_err(|e| Error::io(format!("cannot stat {}", self.path.display()), e))?;
        // Replaced or truncated by hand (a rotation changes the base): start it over.
        let replaced = self
            .seen
            .is_some_and(|(b, ino)| b == base && ino != m.ino());
        if replaced || m.len() < self.at.saturating_sub(base) {
            self.at = base;
        }
        self.seen = Some((base, m.ino()));
        let before = self.partial.len();
        file.seek(SeekFrom::Start(self.at - base))
            .and_then(|_| file.take(READ_CHUNK).read_to_end(&mut self.partial))
            .map_err(|e| Error::io(format!("cannot read {}", self.path.display()), e))?;
        let got = (self.partial.len() - before) as u64;
        self.at += got;
        Ok(got)
    }

    /// Reads to the current end of the stream, passing each complete line (and, with
    /// `last`, a final line without its newline); false when `f` says stop.
    fn drain(&mut self, last: bool, f: &mut dyn FnMut(&[u8]) -> Result<bool>) -> Result<bool> {
        loop {
            let n = self.fill()?;
            if !self.lines(f)? {
                return Ok(false);
            }
            if n == 0 {
                break;
            }
        }
        if last && !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            return f(&rest);
        }
        Ok(true)
    }

    /// Reads what was appended since, passing complete lines; false when `f` says stop.
    fn poll(&mut self, f: &mut dyn FnMut(&[u8]) -> Result<bool>) -> Result<bool> {
        self.drain(false, f)
    }
}

fn follow(
    home: &Home,
    id: &str,
    opts: &Options,
    sel: &mut Selector<'_>,
    out: &mut dyn Write,
    mut tailer: Tailer,
) -> Result<()> {
    use notify::Watcher;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if !matches!(&ev, Ok(e) if e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .ok();
    let dir = home.worker_log_dir(id);
    let mut watching = false;
    loop {
        if !watching {
            if let Some(w) = watcher.as_mut() {
                watching = w.watch(&dir, notify::RecursiveMode::NonRecursive).is_ok();
            }
        }
        let mut done = false;
        let more = tailer.poll(&mut |line| {
            if sel.pass(line) {
                write_line(out, line, opts.escape)?;
            }
            done = opts.task.is_some() && sel.ended;
            Ok(!done)
        })?;
        out.flush()
            .map_err(|e| Error::io("cannot write to stdout", e))?;
        if done || !more {
            return Ok(());
        }
        let gone = !matches!(crate::spec::locate(home, id), Some((StateDir::Active, _)));
        if gone {
            // One last read for what the worker wrote on its way out, then stop.
            tailer.poll(&mut |line| {
                if sel.pass(line) {
                    write_line(out, line, opts.escape)?;
                }
                Ok(true)
            })?;
            if !tailer.partial.is_empty() && sel.pass(&tailer.partial.clone()) {
                let rest = std::mem::take(&mut tailer.partial);
                write_line(out, &rest, opts.escape)?;
            }
            out.flush()
                .map_err(|e| Error::io("cannot write to stdout", e))?;
            return Ok(());
        }
        let _ = rx.recv_timeout(Duration::from_secs(1));
        while rx.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_recognised() {
        assert_eq!(
            marker(b"--- corral task t-1 start 2026-11-22T10:00:00Z\n"),
            Some(("t-1", true))
        );
        assert_eq!(
            marker(b"--- corral task t-1 end 2026-11-22T10:00:01Z exit=0\n"),
            Some(("t-1", false))
        );
        assert_eq!(marker(b"--- corral task t-1 middle\n"), None);
        assert_eq!(marker(b"--- corral task\n"), None);
        assert_eq!(marker(b"hello\n"), None);
    }

    fn log(home: &Home, id: &str, name: &str, text: &str) {
        std::fs::create_dir_all(home.worker_log_dir(id)).unwrap();
        std::fs::write(home.worker_log_dir(id).join(name), text).unwrap();
    }

    fn run(home: &Home, opts: Options) -> String {
        let mut out = Vec::new();
        print(home, "w1", &opts, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_task_is_cut_out_across_rotation() {
        let (_d, home) = crate::home::test_home();
        log(
            &home,
            "w1",
            "worker.log.1",
            "boot\n--- corral task a start T\nA1\n--- corral task a end T exit=0\n--- corral task b start T\nB1\n",
        );
        log(
            &home,
            "w1",
            "worker.log",
            "B2\n--- corral task b end T exit=1\nidle\n--- corral task a start T\nA2\n--- corral task a end T exit=0\n",
        );
        let all = run(&home, Options::default());
        assert!(
            all.starts_with("boot\n") && all.ends_with("exit=0\n"),
            "{all}"
        );
        let b = run(
            &home,
            Options {
                task: Some("b".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            b,
            "--- corral task b start T\nB1\nB2\n--- corral task b end T exit=1\n"
        );
        let a = run(
            &home,
            Options {
                task: Some("a".into()),
                lines: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(
            a, "A2\n--- corral task a end T exit=0\n",
            "last lines of every run"
        );
        assert_eq!(task_ids(&home, "w1").unwrap(), ["a", "b"]);
    }

    #[test]
    fn a_follower_keeps_its_place_across_rotations() {
        use std::io::Write as _;
        let (_d, home) = crate::home::test_home();
        let dir = home.worker_log_dir("w1");
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = crate::store::open_log(&home.worker_log("w1")).unwrap();
        let policy = crate::logrotate::LogPolicy {
            max_bytes: Some(crate::logrotate::MIN_MAX_BYTES),
            keep: 100,
        };
        let mut tailer = Tailer::from_start(&home, "w1").unwrap();
        let (mut written, mut seen) = (Vec::new(), Vec::new());
        let mut rotations = 0;
        for i in 0..40_000 {
            let line = format!("{i:08} some output of the worker\n");
            w.write_all(line.as_bytes()).unwrap();
            written.extend_from_slice(line.as_bytes());
            // The follower reads now and then, rotations happen in between, sometimes
            // twice before it looks again.
            if i % 1500 == 0 {
                tailer
                    .poll(&mut |l| {
                        seen.extend_from_slice(l);
                        Ok(true)
                    })
                    .unwrap();
            }
            if i % 1000 == 999 {
                match crate::logrotate::rotate(&home, "w1", &policy, false).unwrap() {
                    crate::logrotate::Rotated::Collapsed(_) => rotations += 1,
                    crate::logrotate::Rotated::Deferred => {
                        eprintln!("SKIP: this filesystem cannot collapse ranges");
                        return;
                    }
                    _ => {}
                }
            }
        }
        tailer
            .poll(&mut |l| {
                seen.extend_from_slice(l);
                Ok(true)
            })
            .unwrap();
        assert!(rotations >= 5, "{rotations}");
        assert!(
            seen == written,
            "the follower saw every line once, in order"
        );
        let all = run(&home, Options::default());
        assert!(
            all.as_bytes() == written,
            "print reads the pieces as one stream"
        );
    }

    #[test]
    fn control_characters_are_escaped_for_a_terminal_only() {
        let (_d, home) = crate::home::test_home();
        log(&home, "w1", "worker.log", "\x1b[2Jgotcha\r\n");
        let raw = run(&home, Options::default());
        assert_eq!(raw, "\x1b[2Jgotcha\r\n");
        let shown = run(
            &home,
            Options {
                escape: true,
                ..Default::default()
            },
        );
        assert_eq!(shown, "\\x1b[2Jgotcha\\r\n");
    }

    #[test]
    fn no_log_is_not_found() {
        let (_d, home) = crate::home::test_home();
        let mut out = Vec::new();
        let e = print(&home, "w1", &Options::default(), &mut out).unwrap_err();
        assert_eq!(e.exit_code(), 3);
    }
}
