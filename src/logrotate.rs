//! `worker.log` rotation by size, without losing a line from a worker that is still
//! writing.
//!
//! A launched worker's stdout and stderr *are* its log file (opened `O_APPEND` by the
//! launch), so the classic rotations fail it: renaming the file leaves the worker writing
//! into the renamed one (the live log never shrinks), and logrotate's `copytruncate` loses
//! whatever the worker writes between the copy and the truncation. Corral instead removes
//! the *beginning* of the live file in place, after copying it:
//!
//! 1. copy the first `C` bytes into `.worker.log.rotating` and fsync it;
//! 2. record `pending: C` in `.worker.log.rotation` (the stream offset state, below);
//! 3. `fallocate(FALLOC_FL_COLLAPSE_RANGE, 0, C)` on the live file: the kernel drops those
//!    bytes and shifts the rest down, under the inode lock, so an `O_APPEND` write lands at
//!    the new end of file exactly as before (the writer's descriptor needs no change);
//! 4. shift `worker.log.N` → `N+1` (dropping those beyond `keep_log_files`) and rename the
//!    copy to `worker.log.1`; record the new `base`.
//!
//! `C` must be a multiple of the filesystem block and less than the file's size, so the
//! cut is the highest block boundary that follows a newline (a few hundred boundaries are
//! tried), else the highest block boundary, where one line then spans `worker.log.1` and
//! `worker.log`. The files are always one byte stream cut in pieces: `cat worker.log.5 …
//! worker.log.1 worker.log` is every byte the worker wrote since the oldest piece kept, each
//! once and in order, and `worker-monitor logs` reads them that way.
//!
//! Nothing is lost on a crash: the copy is durable before the collapse, and a rotation found
//! half-done (`pending` set) is finished or undone by the next one — the live file is
//! compared with the copy to learn whether the collapse happened.
//!
//! Where the filesystem refuses the collapse (tmpfs, NFS, btrfs, …), a log whose worker has
//! left `active/` is rotated by renaming it (its writer is gone, so nothing can be lost), and
//! a running worker's log is left to grow until then ("rotated once it ends"), with a warning.
//!
//! `.worker.log.rotation` holds `base`: the offset, in the worker's whole output, of the live
//! file's first byte. A follower (`worker-monitor logs --follow`) keeps its position in that
//! stream, so a collapse under it neither repeats nor skips a line. Rotation holds an
//! exclusive `flock` on the log directory, readers a shared one while they read, so a reader
//! never sees a rotation half-way; the monitor only ever *tries* the lock, a bounded number
//! of times, on its housekeeping thread (S4).

use crate::error::{Error, Result};
use crate::home::{Home, StateDir};
use crate::policy::HeartbeatPolicy;
use crate::store::{self, ReadError};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Policy key: rotate a worker's log once it is larger than this (bytes; 0: never).
pub const KEY_MAX_BYTES: &str = "max_log_bytes";
/// Policy key: rotated pieces kept (`worker.log.1` … `worker.log.N`).
pub const KEY_KEEP: &str = "keep_log_files";
/// Default size limit: 64 MiB, as the event log.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default pieces kept.
pub const DEFAULT_KEEP: u32 = 5;
/// Smallest limit accepted (a limit must leave room for whole blocks to cut).
pub const MIN_MAX_BYTES: u64 = 64 * 1024;
/// The stream-offset state of a log directory.
pub const STATE_FILE: &str = ".worker.log.rotation";
/// The copy being made by a rotation.
pub const CHUNK_FILE: &str = ".worker.log.rotating";
/// Attempts at the directory lock, 5 ms apart, before a rotation counts as busy.
const WRITE_LOCK_TRIES: u32 = 40;
/// Block boundaries tried (from the highest down) for one that follows a newline.
const CUT_CANDIDATES: u64 = 256;

/// The rotation settings of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPolicy {
    /// `None`: never rotate.
    pub max_bytes: Option<u64>,
    pub keep: u32,
}

impl LogPolicy {
    /// Reads `max_log_bytes` and `keep_log_files` (the schema bounds them; a value below
    /// [`MIN_MAX_BYTES`] counts as that).
    pub fn of(p: &HeartbeatPolicy) -> LogPolicy {
        let max = p
            .extra
            .get(KEY_MAX_BYTES)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(DEFAULT_MAX_BYTES);
        let keep = p
            .extra
            .get(KEY_KEEP)
            .and_then(serde_json::Value::as_u64)
            .map_or(DEFAULT_KEEP, |k| k.clamp(1, 1000) as u32);
        LogPolicy {
            max_bytes: (max > 0).then_some(max.max(MIN_MAX_BYTES)),
            keep,
        }
    }
}

/// The stream state of one log directory (see the module docs).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamState {
    /// Offset in the worker's whole output of the live file's first byte.
    pub base: u64,
    /// A rotation of this many bytes was under way (a crash left it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
}

/// Reads the state of a log directory. Without one (never rotated by corral, or pieces
/// made by hand or another tool), the pieces present come before the live file.
pub fn stream_state(dir: &Path) -> StreamState {
    let read = match store::read_json(&dir.join(STATE_FILE)) {
        Ok(v) => serde_json::from_value(v).ok(),
        Err(ReadError::Missing) | Err(_) => None,
    };
    read.unwrap_or_else(|| StreamState {
        base: pieces(dir)
            .iter()
            .map(|(_, p)| std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum(),
        pending: None,
    })
}

fn save_state(home: &Home, dir: &Path, st: &StreamState) -> Result<()> {
    let v = serde_json::to_value(st).map_err(|e| Error::Internal(e.to_string()))?;
    store::atomic_write(home, &dir.join(STATE_FILE), &store::to_pretty(&v)?)
}

/// A `flock` on a log directory: exclusive while rotating, shared while reading.
pub struct DirLock {
    _dir: File,
}

fn open_dir(dir: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
}

/// Waits for a shared lock on `dir` (a rotation holds it for one copy); `None` when the
/// directory does not exist.
pub fn read_lock(dir: &Path) -> Result<Option<DirLock>> {
    match open_dir(dir) {
        Ok(f) => {
            f.lock_shared()
                .map_err(|e| Error::io(format!("cannot lock {}", dir.display()), e))?;
            Ok(Some(DirLock { _dir: f }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot open {}", dir.display()), e)),
    }
}

/// Tries for the exclusive lock a few times: a follower takes the shared one for every
/// batch it reads, so a busy log is usually free again within milliseconds. Bounded, so a
/// reader that holds it forever costs the rotation of that one log, nothing else.
fn try_write_lock(dir: &Path) -> Result<Option<DirLock>> {
    let f = match open_dir(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot open {}", dir.display()), e)),
    };
    for attempt in 0..WRITE_LOCK_TRIES {
        match f.try_lock() {
            Ok(()) => return Ok(Some(DirLock { _dir: f })),
            Err(std::fs::TryLockError::WouldBlock) if attempt + 1 < WRITE_LOCK_TRIES => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}", dir.display()), e))
            }
        }
    }
    Ok(None)
}

/// What one rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotated {
    /// Below the limit (or no log).
    NotNeeded,
    /// This many bytes were cut off the running log into `worker.log.1`.
    Collapsed(u64),
    /// The whole log (its writer gone) was renamed to `worker.log.1`.
    Renamed(u64),
    /// The filesystem cannot cut a running log: rotated once the worker ends.
    Deferred,
    /// A reader or another rotation holds the directory: next time.
    Busy,
}

fn open_live(path: &Path) -> Result<Option<File>> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => {
            let m = f
                .metadata()
                .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
            if !m.is_file() {
                return Err(Error::Invalid(format!(
                    "refusing log {}: not a regular file",
                    path.display()
                )));
            }
            Ok(Some(f))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(Error::Invalid(format!(
            "refusing log {}: it is a symlink",
            path.display()
        ))),
        Err(e) => Err(Error::io(format!("cannot open {}", path.display()), e)),
    }
}

fn byte_at(f: &File, at: u64) -> Option<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8];
    (f.read_at(&mut b, at).ok()? == 1).then_some(b[0])
}

/// The cut: the highest block boundary below `size` that follows a newline, else the
/// highest one (0 when the file is not larger than one block).
pub fn pick_cut(f: &File, size: u64, block: u64) -> u64 {
    let block = block.max(512);
    let high = (size.saturating_sub(1) / block) * block;
    let mut c = high;
    for _ in 0..CUT_CANDIDATES {
        if c == 0 {
            break;
        }
        if byte_at(f, c - 1) == Some(b'\n') {
            return c;
        }
        c -= block;
    }
    high
}

/// Rotated pieces present: `(n, path)` for `worker.log.n`, highest first.
pub fn pieces(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e
                        .file_name()
                        .to_str()?
                        .strip_prefix("worker.log.")?
                        .parse()
                        .ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|p| std::cmp::Reverse(p.0));
    out
}

/// Frees `worker.log.1`: `n` → `n+1` for `n < keep`, the rest removed.
fn shift(dir: &Path, keep: u32) -> Result<()> {
    let all = pieces(dir);
    if !all.iter().any(|(n, _)| *n == 1) {
        return Ok(());
    }
    for (n, p) in all {
        let res = if n >= keep {
            std::fs::remove_file(&p)
        } else {
            std::fs::rename(&p, dir.join(format!("worker.log.{}", n + 1)))
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot rotate {}", p.display()), e)),
        }
    }
    Ok(())
}

/// Copies the first `len` bytes of `src` into a new `dst`, durably.
fn copy_head(src: &mut File, dst: &Path, len: u64) -> Result<()> {
    let _ = std::fs::remove_file(dst);
    let mut out = store::open_log(dst)?;
    src.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("cannot read the log", e))?;
    let n = std::io::copy(&mut src.by_ref().take(len), &mut out)
        .map_err(|e| Error::io(format!("cannot copy into {}", dst.display()), e))?;
    if n != len {
        return Err(Error::Internal(format!(
            "copied {n} of {len} bytes into {}",
            dst.display()
        )));
    }
    out.sync_all()
        .map_err(|e| Error::io(format!("cannot fsync {}", dst.display()), e))
}

/// True when the live file no longer starts with the `len` bytes of `chunk`: the collapse
/// of a rotation found half-done had happened.
fn collapsed_since(live: &mut File, chunk: &Path, len: u64) -> Result<bool> {
    if live.metadata().map(|m| m.len()).unwrap_or(0) < len {
        return Ok(true);
    }
    let mut c = File::open(chunk).map_err(|e| Error::io("cannot read the rotation copy", e))?;
    live.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("cannot read the log", e))?;
    let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut left = len;
    while left > 0 {
        let n = left.min(a.len() as u64) as usize;
        live.read_exact(&mut a[..n])
            .and_then(|_| c.read_exact(&mut b[..n]))
            .map_err(|e| Error::io("cannot compare the rotation copy", e))?;
        if a[..n] != b[..n] {
            return Ok(true);
        }
        left -= n as u64;
    }
    Ok(false)
}

/// Finishes or undoes a rotation a crash interrupted (see the module docs).
fn recover(home: &Home, dir: &Path, keep: u32, live: Option<&mut File>) -> Result<StreamState> {
    let mut st = stream_state(dir);
    let chunk = dir.join(CHUNK_FILE);
    let Some(cut) = st.pending else {
        let _ = std::fs::remove_file(&chunk);
        return Ok(st);
    };
    if chunk.exists() {
        let done = match live {
            Some(l) => collapsed_since(l, &chunk, cut)?,
            None => true,
        };
        if done {
            shift(dir, keep)?;
            std::fs::rename(&chunk, dir.join("worker.log.1"))
                .map_err(|e| Error::io("cannot finish an interrupted rotation", e))?;
            store::fsync_dir(dir)?;
            st.base = st.base.saturating_add(cut);
        } else {
            let _ = std::fs::remove_file(&chunk);
        }
    } else {
        // The copy was already renamed into place: only the state was not written.
        st.base = st.base.saturating_add(cut);
    }
    st.pending = None;
    save_state(home, dir, &st)?;
    Ok(st)
}

fn collapse(f: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: a plain syscall on a descriptor we own; no memory is passed.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_COLLAPSE_RANGE, 0, len) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Rotates `agents/logs/workers/<id>/worker.log` when it is over the limit. `writer_gone`
/// says the worker has left `active/`, so a filesystem that cannot cut a running log may
/// rename this one instead. Never blocks: a held directory lock is [`Rotated::Busy`].
pub fn rotate(home: &Home, id: &str, policy: &LogPolicy, writer_gone: bool) -> Result<Rotated> {
    crate::id::validate("worker", id)?;
    let Some(max) = policy.max_bytes else {
        return Ok(Rotated::NotNeeded);
    };
    let dir = home.worker_log_dir(id);
    let Some(_lock) = try_write_lock(&dir)? else {
        return Ok(if dir.exists() {
            Rotated::Busy
        } else {
            Rotated::NotNeeded
        });
    };
    let path = home.worker_log(id);
    let mut live = open_live(&path)?;
    let mut st = recover(home, &dir, policy.keep, live.as_mut())?;
    let Some(mut f) = live else {
        return Ok(Rotated::NotNeeded);
    };
    let meta = f
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
    let size = meta.len();
    if size <= max {
        return Ok(Rotated::NotNeeded);
    }
    let cut = pick_cut(&f, size, meta.blksize());
    let chunk = dir.join(CHUNK_FILE);
    let refused = if cut == 0 {
        true
    } else {
        copy_head(&mut f, &chunk, cut)?;
        st.pending = Some(cut);
        save_state(home, &dir, &st)?;
        match collapse(&f, cut) {
            Ok(()) => false,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::EPERM)
                ) =>
            {
                tracing::debug!("{}: cannot collapse: {e}", path.display());
                true
            }
            Err(e) => return Err(Error::io(format!("cannot rotate {}", path.display()), e)),
        }
    };
    if refused {
        let _ = std::fs::remove_file(&chunk);
        st.pending = None;
        if !writer_gone {
            save_state(home, &dir, &st)?;
            return Ok(Rotated::Deferred);
        }
        shift(&dir, policy.keep)?;
        std::fs::rename(&path, dir.join("worker.log.1"))
            .map_err(|e| Error::io(format!("cannot rotate {}", path.display()), e))?;
        store::fsync_dir(&dir)?;
        st.base = st.base.saturating_add(size);
        save_state(home, &dir, &st)?;
        return Ok(Rotated::Renamed(size));
    }
    f.sync_all()
        .map_err(|e| Error::io(format!("cannot fsync {}", path.display()), e))?;
    shift(&dir, policy.keep)?;
    std::fs::rename(&chunk, dir.join("worker.log.1"))
        .map_err(|e| Error::io(format!("cannot rotate {}", path.display()), e))?;
    store::fsync_dir(&dir)?;
    st.base = st.base.saturating_add(cut);
    st.pending = None;
    save_state(home, &dir, &st)?;
    Ok(Rotated::Collapsed(cut))
}

/// What one pass over every worker log did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassReport {
    pub logs_seen: u64,
    pub rotated: Vec<(String, Rotated)>,
    /// Running workers whose log cannot be cut on this filesystem (warned once each).
    pub deferred: Vec<String>,
    /// Milliseconds spent rotating (copies, cuts, fsyncs), as opposed to looking.
    pub work_ms: i64,
}

/// Rotates every worker log over the limit: one `stat` per log directory, a rotation only
/// where one is due. `deferred` remembers running workers whose filesystem refused a cut,
/// so they are not copied again on every pass; they are retried once they leave `active/`.
pub fn rotate_all(
    home: &Home,
    policy: &LogPolicy,
    deferred: &mut std::collections::HashSet<String>,
) -> Result<PassReport> {
    let mut report = PassReport::default();
    let Some(max) = policy.max_bytes else {
        return Ok(report);
    };
    let Some(root) = home.worker_log_dir("x").parent().map(PathBuf::from) else {
        return Ok(report);
    };
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(Error::io(format!("cannot list {}", root.display()), e)),
    };
    for e in rd.flatten() {
        let Some(id) = e.file_name().to_str().map(String::from) else {
            continue;
        };
        if crate::id::validate("worker", &id).is_err() {
            continue;
        }
        report.logs_seen += 1;
        let big = std::fs::symlink_metadata(home.worker_log(&id))
            .is_ok_and(|m| m.is_file() && m.len() > max);
        if !big {
            continue;
        }
        let gone = !matches!(crate::spec::locate(home, &id), Some((StateDir::Active, _)));
        if deferred.contains(&id) && !gone {
            continue;
        }
        let t = std::time::Instant::now();
        let res = rotate(home, &id, policy, gone);
        report.work_ms = report
            .work_ms
            .saturating_add(t.elapsed().as_millis().min(i64::MAX as u128) as i64);
        match res {
            Ok(Rotated::Deferred) => {
                tracing::warn!(
                    "{id}: its worker.log is over {max} bytes but this filesystem cannot cut a log that is being written: it is rotated once the worker ends"
                );
                deferred.insert(id.clone());
                report.deferred.push(id);
            }
            Ok(r @ (Rotated::Collapsed(_) | Rotated::Renamed(_))) => {
                deferred.remove(&id);
                report.rotated.push((id, r));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot rotate the log of {id}: {e}"),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn policy(max: u64, keep: u32) -> LogPolicy {
        LogPolicy {
            max_bytes: Some(max),
            keep,
        }
    }

    fn stream(home: &Home, id: &str) -> Vec<u8> {
        let dir = home.worker_log_dir(id);
        let mut out = Vec::new();
        for (_, p) in pieces(&dir) {
            out.extend(std::fs::read(p).unwrap());
        }
        out.extend(std::fs::read(home.worker_log(id)).unwrap_or_default());
        out
    }

    /// Whether this filesystem can collapse a range (tmpfs cannot): the tests of the cut
    /// itself need it, the fallback tests do not.
    fn can_collapse(dir: &Path) -> bool {
        let p = dir.join("probe");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.write_all(&vec![b'x'; 3 * 65536]).unwrap();
        let ok = collapse(&f, 65536).is_ok();
        let _ = std::fs::remove_file(&p);
        ok
    }

    #[test]
    fn policy_keys_and_defaults() {
        let mut p = HeartbeatPolicy::default();
        assert_eq!(
            LogPolicy::of(&p),
            LogPolicy {
                max_bytes: Some(DEFAULT_MAX_BYTES),
                keep: DEFAULT_KEEP
            }
        );
        p.extra.insert(KEY_MAX_BYTES.into(), 0.into());
        assert_eq!(LogPolicy::of(&p).max_bytes, None, "0: never");
        p.extra.insert(KEY_MAX_BYTES.into(), 10.into());
        p.extra.insert(KEY_KEEP.into(), 2.into());
        assert_eq!(
            LogPolicy::of(&p),
            LogPolicy {
                max_bytes: Some(MIN_MAX_BYTES),
                keep: 2
            }
        );
    }

    #[test]
    fn the_cut_prefers_a_block_boundary_after_a_newline() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut text = vec![b'a'; 3 * 4096 + 10];
        text[2 * 4096 - 1] = b'\n';
        std::fs::write(&p, &text).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(pick_cut(&f, text.len() as u64, 4096), 2 * 4096);
        let plain = vec![b'a'; 3 * 4096 + 10];
        std::fs::write(&p, &plain).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(
            pick_cut(&f, plain.len() as u64, 4096),
            3 * 4096,
            "no newline: highest"
        );
        assert_eq!(pick_cut(&f, 4096, 4096), 0, "never the whole file");
    }

    /// Whether `dir` can collapse ranges; where it cannot, a skip outside CI and a failure
    /// under `CI` (CI runs on ext4, where a skip would hide the test).
    fn collapse_or_skip(dir: &std::path::Path) -> bool {
        let can = can_collapse(dir);
        if !can {
            assert!(
                std::env::var_os("CI").is_none(),
                "this filesystem cannot collapse ranges: the test cannot run"
            );
            eprintln!("SKIP: this filesystem cannot collapse ranges");
        }
        can
    }

    #[test]
    fn a_running_log_is_cut_in_place_and_the_stream_is_kept() {
        let (_d, home) = crate::home::test_home();
        let dir = home.worker_log_dir("w1");
        std::fs::create_dir_all(&dir).unwrap();
        if !collapse_or_skip(&dir) {
            return;
        }
        // The writer keeps its O_APPEND descriptor across rotations, as a worker does.
        let mut w = store::open_log(&home.worker_log("w1")).unwrap();
        let mut expected = Vec::new();
        let mut rotations = 0;
        for i in 0..30_000 {
            let line = format!("line {i} of the worker's output\n");
            w.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
            if i % 1000 == 999 {
                match rotate(&home, "w1", &policy(MIN_MAX_BYTES, 1000), false).unwrap() {
                    Rotated::Collapsed(n) => {
                        rotations += 1;
                        assert_eq!(n % 512, 0);
                    }
                    Rotated::NotNeeded => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(rotations >= 5, "{rotations} rotations");
        assert_eq!(stream(&home, "w1"), expected, "every byte once, in order");
        let st = stream_state(&dir);
        let live = std::fs::metadata(home.worker_log("w1")).unwrap().len();
        assert_eq!(st.base + live, expected.len() as u64);
        assert!(st.pending.is_none());
        // Each piece but a rare split one ends with a whole line.
        let whole = pieces(&dir)
            .iter()
            .filter(|(_, p)| std::fs::read(p).unwrap().ends_with(b"\n"))
            .count();
        assert!(whole * 2 > rotations, "{whole} of {rotations}");
        // keep: older pieces go.
        rotate(&home, "w1", &policy(MIN_MAX_BYTES, 2), false).unwrap();
        w.write_all(&vec![b'z'; 2 * MIN_MAX_BYTES as usize])
            .unwrap();
        rotate(&home, "w1", &policy(MIN_MAX_BYTES, 2), false).unwrap();
        assert_eq!(pieces(&dir).iter().map(|p| p.0).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn an_interrupted_rotation_is_finished_or_undone() {
        let (_d, home) = crate::home::test_home();
        let dir = home.worker_log_dir("w1");
        std::fs::create_dir_all(&dir).unwrap();
        if !collapse_or_skip(&dir) {
            return;
        }
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let cut = 65536u64;
        // Crash after the copy and the pending record, before the collapse: undone.
        std::fs::write(home.worker_log("w1"), &text).unwrap();
        std::fs::write(dir.join(CHUNK_FILE), &text[..cut as usize]).unwrap();
        let st = StreamState {
            base: 0,
            pending: Some(cut),
        };
        save_state(&home, &dir, &st).unwrap();
        let big = policy(1 << 30, 5);
        assert_eq!(
            rotate(&home, "w1", &big, false).unwrap(),
            Rotated::NotNeeded
        );
        assert_eq!(stream(&home, "w1"), text);
        assert_eq!(stream_state(&dir), StreamState::default());
        assert!(!dir.join(CHUNK_FILE).exists());
        // Crash after the collapse, before the rename: finished.
        std::fs::write(dir.join(CHUNK_FILE), &text[..cut as usize]).unwrap();
        save_state(&home, &dir, &st).unwrap();
        let f = open_live(&home.worker_log("w1")).unwrap().unwrap();
        collapse(&f, cut).unwrap();
        rotate(&home, "w1", &big, false).unwrap();
        assert_eq!(stream(&home, "w1"), text, "nothing lost, nothing twice");
        assert_eq!(stream_state(&dir).base, cut);
    }

    #[test]
    fn a_log_whose_writer_is_gone_is_renamed_where_it_cannot_be_cut() {
        let (_d, home) = crate::home::test_home();
        let dir = home.worker_log_dir("w1");
        std::fs::create_dir_all(&dir).unwrap();
        // Not a block larger than the limit: the cut would be 0, as on a refusing fs.
        std::fs::write(home.worker_log("w1"), vec![b'x'; 100]).unwrap();
        let tiny = LogPolicy {
            max_bytes: Some(10),
            keep: 3,
        };
        assert_eq!(
            rotate(&home, "w1", &tiny, false).unwrap(),
            Rotated::Deferred
        );
        assert!(home.worker_log("w1").exists());
        assert_eq!(
            rotate(&home, "w1", &tiny, true).unwrap(),
            Rotated::Renamed(100)
        );
        assert!(!home.worker_log("w1").exists());
        assert_eq!(stream_state(&dir).base, 100);
        assert_eq!(stream(&home, "w1"), vec![b'x'; 100]);
    }

    #[test]
    fn a_held_directory_is_busy() {
        let (_d, home) = crate::home::test_home();
        let dir = home.worker_log_dir("w1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(home.worker_log("w1"), vec![b'x'; 200_000]).unwrap();
        let reader = read_lock(&dir).unwrap();
        assert!(reader.is_some());
        assert_eq!(
            rotate(&home, "w1", &policy(MIN_MAX_BYTES, 5), false).unwrap(),
            Rotated::Busy
        );
        drop(reader);
        assert_ne!(
            rotate(&home, "w1", &policy(MIN_MAX_BYTES, 5), true).unwrap(),
            Rotated::Busy
        );
    }
}
