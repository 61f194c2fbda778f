//! Reading the event log the way `tail -F` would: rotated files oldest first
//! (`dashboard-events.jsonl.N` … `.1`), then the current file, line by line with one reused
//! buffer, so memory stays flat however long the log is. [`Follower`] keeps reading the
//! current file as it grows and, when rotation renames it to `.1` and a new file appears,
//! drains the old inode before switching, so no line is lost or repeated; a file truncated in
//! place (`copytruncate`) is read again from its start.
//!
//! Lines are parsed into [`LightEvent`], which borrows its strings from the line and skips
//! `data` without building it; callers that need `data` parse the line again (rare types).

use crate::error::{Error, IoContext, Result};
use crate::home::Home;
use crate::time::{self, Timestamp};
use serde::Deserialize;
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The fields of an event line the views filter and show, borrowed from the line.
#[derive(Debug, Deserialize)]
pub struct LightEvent<'a> {
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub worker_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub worker_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub task_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub session_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
}

impl LightEvent<'_> {
    /// Parses one line; `None` for a blank or malformed line.
    pub fn parse(line: &[u8]) -> Option<LightEvent<'_>> {
        serde_json::from_slice(line).ok()
    }

    /// The timestamp, parsed (a corral timestamp parses; a hand-written one may not).
    pub fn time(&self) -> Option<Timestamp> {
        time::parse(&self.timestamp).ok()
    }
}

/// The log's files in reading order: rotated ones oldest first, then the current one.
pub fn log_files(home: &Home) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    let mut n = 1;
    while n <= 10_000 {
        let p = home.rotated_events_path(n);
        if !p.exists() {
            break;
        }
        rotated.push(p);
        n += 1;
    }
    rotated.reverse();
    rotated
}

/// Calls `f` with every complete line of `path` (without the newline); a final line without
/// newline is passed too. A missing file is empty.
pub fn for_each_line_in(path: &Path, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
    };
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).ctx("read", path)?;
        if n == 0 {
            return Ok(());
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if !line.is_empty() {
            f(line)?;
        }
    }
}

/// Streams every line of the log, rotated files first, then the current file. Returns the
/// follower positioned at the end of the current file, for `--follow`.
pub fn read_all(home: &Home, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<Follower> {
    for p in log_files(home) {
        for_each_line_in(&p, f)?;
    }
    let mut follower = Follower::new(home.events_path());
    follower.poll(f)?;
    follower.flush_partial(f)?;
    Ok(follower)
}

/// Reads the current log file incrementally and across rotations.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    inode: Option<(u64, u64)>,
    partial: Vec<u8>,
    chunk: Vec<u8>,
}

impl Follower {
    /// A follower that starts at the beginning of `path`.
    pub fn new(path: PathBuf) -> Follower {
        Follower {
            path,
            file: None,
            inode: None,
            partial: Vec::new(),
            chunk: vec![0; 256 * 1024],
        }
    }

    /// A follower that starts at the current end of `path` (lines already there are not
    /// passed), and the last `n` lines before that point, oldest first.
    pub fn from_end(path: PathBuf, n: usize) -> Result<(Follower, Vec<Vec<u8>>)> {
        let mut fo = Follower::new(path);
        fo.open()?;
        let mut last = Vec::new();
        if let Some(file) = fo.file.as_mut() {
            let end = file.seek(SeekFrom::End(0)).ctx("seek", &fo.path)?;
            let start = end.saturating_sub(256 * 1024);
            let mut buf = vec![0; (end - start) as usize];
            file.seek(SeekFrom::Start(start)).ctx("seek", &fo.path)?;
            file.read_exact(&mut buf).ctx("read", &fo.path)?;
            let mut lines: Vec<&[u8]> = buf
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            if start > 0 && !lines.is_empty() {
                lines.remove(0);
            }
            let skip = lines.len().saturating_sub(n);
            last = lines[skip..].iter().map(|l| l.to_vec()).collect();
        }
        Ok((fo, last))
    }

    fn open(&mut self) -> Result<()> {
        match File::open(&self.path) {
            Ok(f) => {
                let m = f.metadata().ctx("stat", &self.path)?;
                self.inode = Some((m.dev(), m.ino()));
                self.file = Some(f);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("cannot open {}", self.path.display()), e)),
        }
    }

    fn drain(&mut self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        loop {
            let n = file.read(&mut self.chunk).ctx("read", &self.path)?;
            if n == 0 {
                return Ok(());
            }
            let mut data = &self.chunk[..n];
            while let Some(i) = data.iter().position(|b| *b == b'\n') {
                if self.partial.is_empty() {
                    if i > 0 {
                        f(&data[..i])?;
                    }
                } else {
                    self.partial.extend_from_slice(&data[..i]);
                    let line = std::mem::take(&mut self.partial);
                    f(&line)?;
                }
                data = &data[i + 1..];
            }
            self.partial.extend_from_slice(data);
        }
    }

    /// True when the open file is now shorter than what was read of it: it was truncated in
    /// place (`: > file`, logrotate's `copytruncate`), so the read offset points past its end
    /// and every later line would land before it, unseen.
    fn truncated(&mut self) -> Result<bool> {
        let Some(file) = self.file.as_mut() else {
            return Ok(false);
        };
        let len = file.metadata().ctx("stat", &self.path)?.len();
        let pos = file.stream_position().ctx("seek", &self.path)?;
        Ok(len < pos)
    }

    /// Passes the lines written since the last call; follows a rotation to the new file and
    /// starts over from the beginning of a file truncated in place, as `tail -F` does.
    pub fn poll(&mut self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if self.file.is_none() {
            self.open()?;
        }
        self.drain(f)?;
        if self.truncated()? {
            tracing::debug!(
                "{} was truncated: reading it from the start",
                self.path.display()
            );
            // A line cut by the truncation has lost its end: it is dropped, not glued to the
            // first new line.
            self.partial.clear();
            if let Some(file) = self.file.as_mut() {
                file.seek(SeekFrom::Start(0)).ctx("seek", &self.path)?;
            }
            self.drain(f)?;
        }
        let now = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now.is_some() && now != self.inode {
            // Rotated: whatever reached the old inode before the rename is read first.
            self.drain(f)?;
            self.flush_partial(f)?;
            self.file = None;
            self.inode = None;
            self.open()?;
            self.drain(f)?;
        }
        Ok(())
    }

    /// Passes a last line that has no newline yet (end of a one-shot read).
    pub fn flush_partial(&mut self, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            f(&line)?;
        }
        Ok(())
    }

    /// The directory to watch for changes of the followed file.
    pub fn dir(&self) -> Option<&Path> {
        self.path.parent()
    }
}

/// Which events to show.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub since: Option<Timestamp>,
    pub types: Vec<String>,
    pub worker: Option<String>,
    pub session: Option<String>,
}

impl EventFilter {
    /// True when the event passes every given criterion.
    pub fn matches(&self, e: &LightEvent<'_>) -> bool {
        if !self.types.is_empty() && !self.types.iter().any(|t| *t == e.kind) {
            return false;
        }
        if let Some(w) = &self.worker {
            if e.worker_id.as_deref() != Some(w.as_str()) {
                return false;
            }
        }
        if let Some(s) = &self.session {
            if e.session_id.as_deref() != Some(s.as_str()) {
                return false;
            }
        }
        if let Some(since) = self.since {
            match e.time() {
                Some(t) if t >= since => {}
                _ => return false,
            }
        }
        true
    }
}

/// One event as a table line: time, type, worker, message.
pub fn table_line(e: &LightEvent<'_>) -> String {
    format!(
        "{:<24}  {:<26}  {:<20}  {}",
        e.timestamp,
        e.kind,
        e.worker_id.as_deref().unwrap_or("-"),
        e.message.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_joins_partial_lines_and_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, "a\nb").unwrap();
        let mut fo = Follower::new(path.clone());
        let mut seen: Vec<String> = Vec::new();
        let mut push = |l: &[u8]| {
            seen.push(String::from_utf8_lossy(l).into_owned());
            Ok(())
        };
        fo.poll(&mut push).unwrap();
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"c\nd\n").unwrap();
        fo.poll(&mut push).unwrap();
        std::fs::rename(&path, dir.path().join("log.jsonl.1")).unwrap();
        f.write_all(b"e\n").unwrap();
        std::fs::write(&path, "f\n").unwrap();
        fo.poll(&mut push).unwrap();
        fo.poll(&mut push).unwrap();
        assert_eq!(seen, ["a", "bc", "d", "e", "f"]);
    }

    #[test]
    fn follower_starts_over_after_a_truncation_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, "first-line-that-is-long\nsecond-line-also-long\n").unwrap();
        let mut fo = Follower::new(path.clone());
        let mut seen: Vec<String> = Vec::new();
        let mut push = |l: &[u8]| {
            seen.push(String::from_utf8_lossy(l).into_owned());
            Ok(())
        };
        fo.poll(&mut push).unwrap();
        // Truncated in place (same inode), then written again, shorter than before.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"x\ny\n").unwrap();
        fo.poll(&mut push).unwrap();
        f.write_all(b"z\n").unwrap();
        fo.poll(&mut push).unwrap();
        assert_eq!(
            seen,
            [
                "first-line-that-is-long",
                "second-line-also-long",
                "x",
                "y",
                "z"
            ]
        );
    }

    #[test]
    fn light_events_filter() {
        let line = br#"{"id":"e1","timestamp":"2026-11-22T10:00:00.000Z","type":"worker_failed","source":"x","host":"h","worker_id":"w\"1","worker_type":"t","task_id":null,"session_id":"s","message":"m","data":{"type":"nested"}}"#;
        let e = LightEvent::parse(line).unwrap();
        assert_eq!(e.kind, "worker_failed");
        assert_eq!(e.worker_id.as_deref(), Some("w\"1"));
        let mut f = EventFilter {
            types: vec!["worker_failed".into()],
            session: Some("s".into()),
            since: Some(time::parse("2026-11-22T09:00:00Z").unwrap()),
            ..EventFilter::default()
        };
        assert!(f.matches(&e));
        f.since = Some(time::parse("2026-11-22T11:00:00Z").unwrap());
        assert!(!f.matches(&e));
        assert!(LightEvent::parse(b"not json").is_none());
    }
}
