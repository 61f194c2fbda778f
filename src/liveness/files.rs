//! What changed in the home: inotify on the four state directories and `config/`, read
//! straight from the kernel into the event loop's epoll set (no watcher thread, no channel).
//!
//! Why raw inotify rather than the `notify` crate here: notify always watches `IN_OPEN` and
//! `IN_MODIFY`, so every read of a spec (the monitor's own, a dashboard's, a beat's
//! read-modify-write) woke a thread that woke the loop; at 10,000 workers that was most of
//! the monitor's CPU. Here only what can change a judgement is watched: a file moved in or
//! out (every atomic write is a rename), closed after writing (non-atomic writers), created
//! (symlinks) or deleted.
//!
//! Batching: under a steady stream of beats the loop takes file events at most every
//! [`BATCH_MS`]: the descriptor is registered one-shot; while events keep coming the loop
//! reads them one window after the last batch, and re-arms the descriptor only after a
//! quiet window. So 333 beats a second cost ~40 wakeups, not 333, and the first event after
//! a quiet spell is taken at once. Process exits (pidfds) and deadlines are never held back.

use crate::error::{Error, Result};
use crate::home::{Home, StateDir};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::collections::{BTreeSet, HashMap};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Shortest time between two batches of file events.
pub const BATCH_MS: i64 = 25;

/// What a watch descriptor watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    State(StateDir),
    Config,
}

/// One batch of changes.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    /// Files touched, by directory and name.
    pub dirty: BTreeSet<(StateDir, String)>,
    /// Something in `config/` changed: reload the policy and types.
    pub config: bool,
    /// The kernel dropped events (queue overflow) or a directory went away: rescan.
    pub rescan: bool,
}

impl Batch {
    /// True when nothing happened.
    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty() && !self.config && !self.rescan
    }

    /// Adds one kernel event.
    pub fn add(&mut self, what: Option<Watched>, flags: ReadFlags, name: Option<&str>) {
        if flags.contains(ReadFlags::QUEUE_OVERFLOW)
            || flags.intersects(ReadFlags::IGNORED | ReadFlags::DELETE_SELF | ReadFlags::UNMOUNT)
        {
            self.rescan = true;
            return;
        }
        match (what, name) {
            (Some(Watched::State(d)), Some(n)) => {
                self.dirty.insert((d, n.to_string()));
            }
            (Some(Watched::Config), _) => self.config = true,
            _ => {}
        }
    }
}

/// The inotify descriptor and the batch being gathered.
pub struct Files {
    fd: OwnedFd,
    watches: HashMap<i32, Watched>,
    pending: Batch,
    /// When the last batch was handed out (ms since the epoch).
    last_batch_ms: i64,
}

/// The events that matter (see the module doc).
fn mask() -> WatchFlags {
    WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::DELETE_SELF
        | WatchFlags::ONLYDIR
}

impl Files {
    /// Watches the state directories and `config/` of `home`, creating them if missing.
    pub fn watch(home: &Home) -> Result<Files> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(|e| Error::io("inotify_init", e.into()))?;
        let mut dirs: Vec<(std::path::PathBuf, Watched)> = StateDir::ALL
            .iter()
            .map(|d| (home.specs_dir(*d), Watched::State(*d)))
            .collect();
        if let Some(c) = home.policy_path().parent() {
            dirs.push((c.to_path_buf(), Watched::Config));
        }
        let mut watches = HashMap::new();
        for (dir, what) in dirs {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            let wd = inotify::add_watch(&fd, &dir, mask())
                .map_err(|e| Error::io(format!("cannot watch {}", dir.display()), e.into()))?;
            watches.insert(wd, what);
        }
        Ok(Files {
            fd,
            watches,
            pending: Batch::default(),
            last_batch_ms: 0,
        })
    }

    /// The descriptor for the epoll set.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads every queued event into the pending batch. Returns true when anything came.
    pub fn read(&mut self) -> Result<bool> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 64 * 1024];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        let mut any = false;
        loop {
            match reader.next() {
                Ok(ev) => {
                    any = true;
                    let what = self.watches.get(&ev.wd()).copied();
                    let name = ev.file_name().and_then(|n| n.to_str().ok());
                    self.pending.add(what, ev.events(), name);
                }
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return Ok(any),
                Err(e) => return Err(Error::io("read inotify", e.into())),
            }
        }
    }

    /// When the pending batch may be taken: at once after a quiet spell, else one batch
    /// window after the previous one.
    pub fn batch_at(&self, now_ms: i64) -> i64 {
        batch_at(self.last_batch_ms, now_ms)
    }

    /// Hands out the pending batch.
    pub fn take(&mut self, now_ms: i64) -> Batch {
        self.last_batch_ms = now_ms;
        std::mem::take(&mut self.pending)
    }

    /// True when events are waiting to be taken.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// When a batch may be taken, given the last one.
pub fn batch_at(last_batch_ms: i64, now_ms: i64) -> i64 {
    now_ms.max(last_batch_ms.saturating_add(BATCH_MS))
}

/// One version of a file, told apart without reading it: an atomic write makes a new inode
/// (and new times), so an unchanged key means nothing new to read. This keeps the monitor's
/// own writes, and repeated events for one write, from costing a parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileKey {
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl FileKey {
    /// The key of a file's metadata.
    pub fn of(m: &std::fs::Metadata) -> FileKey {
        FileKey {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
        }
    }

    /// The key of the file at `path` now (default when it is gone).
    pub fn at(path: &Path) -> FileKey {
        std::fs::symlink_metadata(path)
            .map(|m| FileKey::of(&m))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_spaced_but_a_quiet_spell_goes_at_once() {
        assert_eq!(batch_at(1_000, 5_000), 5_000, "quiet: no wait");
        assert_eq!(batch_at(1_000, 1_010), 1_000 + BATCH_MS);
    }

    #[test]
    fn events_are_classified() {
        let mut b = Batch::default();
        assert!(b.is_empty());
        b.add(
            Some(Watched::State(StateDir::Active)),
            ReadFlags::MOVED_TO,
            Some("w1.json"),
        );
        b.add(
            Some(Watched::State(StateDir::Active)),
            ReadFlags::MOVED_TO,
            Some("w1.json"),
        );
        b.add(Some(Watched::Config), ReadFlags::CLOSE_WRITE, Some("x"));
        assert_eq!(b.dirty.len(), 1, "one entry per file per batch");
        assert!(b.config && !b.rescan);
        b.add(None, ReadFlags::QUEUE_OVERFLOW, None);
        assert!(b.rescan);
    }

    #[test]
    fn real_inotify_sees_renames_and_not_reads() {
        let (_dir, home) = crate::home::test_home();
        let mut f = Files::watch(&home).unwrap();
        let target = home.spec_path(StateDir::Active, "w1");
        let tmp = home.tmp_dir().join("w1.tmp");
        std::fs::create_dir_all(home.tmp_dir()).unwrap();
        std::fs::write(&tmp, b"{}").unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        let _ = std::fs::read(&target).unwrap();
        assert!(f.read().unwrap());
        let b = f.take(0);
        assert_eq!(
            b.dirty.into_iter().collect::<Vec<_>>(),
            vec![(StateDir::Active, "w1.json".to_string())]
        );
        // Reading the file again produces nothing to do.
        let _ = std::fs::read(&target).unwrap();
        assert!(!f.read().unwrap());
        assert!(!f.has_pending());
        std::fs::write(home.policy_path(), b"{}").unwrap();
        assert!(f.read().unwrap());
        assert!(f.take(0).config);
    }

    #[test]
    fn file_keys_change_with_each_atomic_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"a").unwrap();
        let k1 = FileKey::at(&p);
        assert_eq!(k1, FileKey::at(&p));
        let t = dir.path().join("t");
        std::fs::write(&t, b"a").unwrap();
        std::fs::rename(&t, &p).unwrap();
        assert_ne!(k1, FileKey::at(&p));
        assert_eq!(FileKey::at(&dir.path().join("none")), FileKey::default());
    }
}
