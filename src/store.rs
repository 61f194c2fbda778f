//! The durability protocol of DESIGN.md §4 in one place: atomic writes (stage in `.tmp/`,
//! fsync, rename, fsync the directory), sidecar `flock` locks (never on a data file, whose
//! inode a rename replaces), guarded reads (no symlinks, regular files only, size-capped)
//! and state moves by `rename(2)`.
//!
//! Two rules of DESIGN §6 live here because every writer passes through: a lock wait is
//! bounded (`CORRAL_LOCK_TIMEOUT`, S4: flock has no timeout, so it is `try_lock` with a short
//! backoff), and nothing is written that a reader would refuse (S9: over
//! [`MAX_FILE_BYTES`]). What corral creates is not readable by others: modes follow the
//! directory it is created in ([`crate::home::modes_in`]), so a private home stays 0700/0600 and a
//! group-shared one (setgid, group-writable) 2770/0660 (§10).

use crate::error::{Error, IoContext, Result};
use crate::home::{create_dir_all, modes_in, Home, PRIVATE};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest spec, task or config file corral reads (DESIGN.md §10), and so the largest it
/// writes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Narrows the permissions of a file corral just opened or created to `mode` when they are
/// wider (an old 0644 lock file) or lack the group bits a shared home needs. Only the
/// owner can change them; for anyone else this is a no-op.
fn fix_mode(file: &File, meta: &std::fs::Metadata, path: &Path, mode: u32) -> Result<()> {
    if meta.mode() & 0o7777 != mode && meta.uid() == rustix::process::geteuid().as_raw() {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .ctx("set permissions of", path)?;
    }
    Ok(())
}

/// Appends one line (ending in `\n`) to a log opened with [`open_log`] whose size is `size`,
/// in one `write`. When the log does not end in a newline (a writer cut short by a full
/// disk, or a line written by hand), a newline goes first: the torn line stays torn, but
/// this one is not glued onto it and lost with it (DESIGN §7, one object per line).
pub fn append_line(f: &mut File, size: u64, line: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    let torn = size > 0 && matches!(f.read_at(&mut last, size - 1), Ok(1) if last[0] != b'\n');
    if torn {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.push(b'\n');
        buf.extend_from_slice(line);
        f.write_all(&buf)
    } else {
        f.write_all(line)
    }
}

/// Opens a log for appending, the way every log corral writes is opened (DESIGN §10): the
/// file and its directory are never followed through a symlink (`O_NOFOLLOW` on both, the
/// file opened relative to the directory), a non-regular file is refused, and a new file
/// gets the home's mode. Missing directories are created.
pub fn open_log(path: &Path) -> Result<File> {
    use rustix::fs::{Mode, OFlags};
    let dir = path
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{}: no directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: no file name", path.display())))?;
    let refused = |why: &str| Error::Invalid(format!("refusing log {}: {why}", path.display()));
    let open_dir = || {
        rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )
    };
    // On the hot path (every event append) the directory exists: create only when missing.
    let dirfd = match open_dir() {
        Err(rustix::io::Errno::NOENT) => {
            create_dir_all(dir)?;
            open_dir()
        }
        other => other,
    }
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            refused("its directory is a symlink or not a directory")
        }
        e => Error::io(format!("cannot open {}", dir.display()), e.into()),
    })?;
    let dmode = rustix::fs::fstat(&dirfd)
        .map_err(|e| Error::io(format!("cannot stat {}", dir.display()), e.into()))?
        .st_mode;
    let mode = if dmode & 0o2000 != 0 && dmode & 0o020 != 0 {
        crate::home::SHARED.file
    } else {
        PRIVATE.file
    };
    let fd = rustix::fs::openat(
        &dirfd,
        name,
        // Read too: an appender looks at the last byte, to start on a line of its own
        // after a torn tail (see `append_line`).
        OFlags::RDWR
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NONBLOCK,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => refused("it is a symlink"),
        // A FIFO without a reader (O_NONBLOCK keeps the open from hanging).
        rustix::io::Errno::NXIO => refused("not a regular file"),
        e => Error::io(format!("cannot open {}", path.display()), e.into()),
    })?;
    let file = File::from(fd);
    let meta = file.metadata().ctx("stat", path)?;
    if !meta.is_file() {
        return Err(refused("not a regular file"));
    }
    fix_mode(&file, &meta, path, mode)?;
    Ok(file)
}

/// The network filesystem `path` is on, if any: a lock there may be held by another host,
/// which a timeout message must say.
pub fn network_fs(path: &Path) -> Option<&'static str> {
    crate::netfs::network_fs(path)
}

/// Default bound on a lock wait (seconds), overridden by `CORRAL_LOCK_TIMEOUT`.
pub const DEFAULT_LOCK_TIMEOUT_SECS: f64 = 10.0;

/// How long a CLI lock wait may last: `CORRAL_LOCK_TIMEOUT` in the duration vocabulary of
/// [`crate::time::parse_secs`] (default 10 s). A bad value is invalid input (exit 6).
pub fn lock_timeout() -> Result<Duration> {
    match std::env::var("CORRAL_LOCK_TIMEOUT") {
        Ok(v) if !v.trim().is_empty() => crate::time::parse_secs(&v)
            .map(crate::time::duration)
            .map_err(|e| Error::Invalid(format!("CORRAL_LOCK_TIMEOUT: {e}"))),
        _ => Ok(crate::time::duration(DEFAULT_LOCK_TIMEOUT_SECS)),
    }
}

/// An exclusive `flock` held until dropped. The kernel releases it if the process dies, so
/// a lock file left behind blocks nobody.
///
/// Dropping it unlocks explicitly before closing: a lock belongs to the open file, and a
/// child that another thread is starting holds a copy of every descriptor of the process
/// between its fork and its exec, so a close alone could leave the lock held for that
/// moment (seen as a worker found busy right after its lock was dropped). A lock meant to
/// outlive the guard in a child that inherited it is given away with [`LockGuard::hand_off`].
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
    /// False once handed off: dropping then only closes this process's copy.
    unlock_on_drop: bool,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.unlock_on_drop {
            let _ = self.file.unlock();
        }
    }
}

impl LockGuard {
    fn new(file: File, path: &Path) -> LockGuard {
        LockGuard {
            file,
            path: path.to_path_buf(),
            unlock_on_drop: true,
        }
    }

    /// Closes this process's copy without unlocking: the lock stays with the processes that
    /// inherited the open file (a launched worker keeps its liveness lock this way).
    pub fn hand_off(mut self) {
        self.unlock_on_drop = false;
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open lock file (to hand to a child process that must keep holding it).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Opens (creating) a lock file read-write, as an exclusive flock needs on NFS, never
/// through a symlink, with the home's mode.
fn open_lock_file(path: &Path) -> Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mode = modes_in(dir).file;
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
    };
    let file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dir_all(dir)?;
            open().ctx("open lock", path)?
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::Invalid(format!(
                "refusing lock {}: it is a symlink",
                path.display()
            )))
        }
        Err(e) => return Err(Error::io(format!("cannot open lock {}", path.display()), e)),
    };
    let meta = file.metadata().ctx("stat", path)?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "refusing lock {}: not a regular file",
            path.display()
        )));
    }
    fix_mode(&file, &meta, path, mode)?;
    Ok(file)
}

/// Takes an exclusive lock, waiting at most [`lock_timeout`] (DESIGN §6 S4). A wait that
/// times out is exit 5 naming the lock file.
pub fn lock(path: &Path) -> Result<LockGuard> {
    lock_within(path, lock_timeout()?)
}

/// Takes an exclusive lock, waiting at most `timeout`. flock has no timeout, so a contended
/// wait is a blocking `flock` on a duplicate of the descriptor in a helper thread, which the
/// caller abandons at the deadline: the kernel wakes waiters when the lock is released, so a
/// busy lock is shared fairly among waiters (a polling waiter loses every time to a holder
/// that takes the lock again at once, as 16 cleanup threads do on the budget lock). An
/// abandoned helper that gets the lock later closes the last descriptor of the abandoned
/// open file, which releases it at once. If many waits are already abandoned (a lock held
/// for good), waiting falls back to polling every few milliseconds.
pub fn lock_within(path: &Path, timeout: Duration) -> Result<LockGuard> {
    let file = open_lock_file(path)?;
    let guard = |file| LockGuard::new(file, path);
    match file.try_lock() {
        Ok(()) => return Ok(guard(file)),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::io(format!("cannot lock {}", path.display()), e))
        }
    }
    let start = Instant::now();
    let timed_out = || Error::LockTimeout {
        path: path.to_path_buf(),
        waited: start.elapsed(),
        network_fs: path.parent().and_then(network_fs),
    };
    if WAITERS.fetch_add(1, Ordering::AcqRel) < MAX_WAITERS {
        if let Ok(dup) = file.try_clone() {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("corral-lock-wait".into())
                .spawn(move || {
                    let r = dup.lock();
                    WAITERS.fetch_sub(1, Ordering::AcqRel);
                    let _ = tx.send(r);
                });
            if spawned.is_ok() {
                return match rx.recv_timeout(timeout) {
                    Ok(Ok(())) => Ok(guard(file)),
                    Ok(Err(e)) => Err(Error::io(format!("cannot lock {}", path.display()), e)),
                    Err(_) => Err(timed_out()),
                };
            }
        }
    }
    WAITERS.fetch_sub(1, Ordering::AcqRel);
    let mut pause = Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(guard(file)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}", path.display()), e))
            }
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(timed_out());
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(4));
    }
}

/// Blocking lock waits in flight (helper threads), abandoned ones included.
static WAITERS: AtomicU64 = AtomicU64::new(0);

/// Beyond this many helper threads, waits poll instead (bounds the threads a daemon could
/// leave blocked on locks that are never released).
const MAX_WAITERS: u64 = 256;

/// Takes an exclusive lock if it is free; `None` when someone else holds it.
pub fn try_lock(path: &Path) -> Result<Option<LockGuard>> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(LockGuard::new(file, path))),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io(format!("cannot lock {}", path.display()), e))
        }
    }
}

/// Opens a directory and fsyncs it, so a rename or create inside it survives a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

fn tmp_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{:x}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        crate::id::random_u64()
    )
}

/// Writes `bytes` to `target` atomically: a reader sees the old or the new content, never a
/// torn file, and after return the new content survives a crash. Content larger than any
/// reader accepts ([`MAX_FILE_BYTES`]) is refused before anything is written (exit 6), so a
/// writer can never leave behind a file that every reader would then refuse (S9).
pub fn atomic_write(home: &Home, target: &Path, bytes: &[u8]) -> Result<()> {
    check_size(target, bytes.len())?;
    let tmp_dir = home.tmp_dir();
    let tmp = tmp_dir.join(tmp_name());
    let mode = modes_in(&tmp_dir).file;
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
    };
    let mut f = match create() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dir_all(&tmp_dir)?;
            create().ctx("create", &tmp)?
        }
        Err(e) => return Err(Error::io(format!("cannot create {}", tmp.display()), e)),
    };
    if mode != PRIVATE.file {
        let meta = f.metadata().ctx("stat", &tmp)?;
        fix_mode(&f, &meta, &tmp, mode)?;
    }
    let res = f
        .write_all(bytes)
        .and_then(|_| f.sync_all())
        .ctx("write", &tmp)
        .and_then(|_| std::fs::rename(&tmp, target).ctx("rename into", target));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = target.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Refuses content over [`MAX_FILE_BYTES`] for `target` (exit 6), before anything moves.
pub fn check_size(target: &Path, len: usize) -> Result<()> {
    if len as u64 > MAX_FILE_BYTES {
        return Err(Error::Invalid(format!(
            "refusing to write {}: {len} bytes is more than the {MAX_FILE_BYTES} bytes every reader accepts",
            target.display()
        )));
    }
    Ok(())
}

/// Serialises pretty JSON with a trailing newline (specs and config stay readable).
pub fn to_pretty(value: &Value) -> Result<Vec<u8>> {
    let mut out =
        serde_json::to_vec_pretty(value).map_err(|e| Error::Internal(format!("serialise: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// Why a file was refused; the daemon quarantines on these.
#[derive(Debug)]
pub enum ReadError {
    /// No such file (it may have moved on).
    Missing,
    /// The file is refused: symlink, not regular, too large, not JSON.
    Refused(String),
    /// Another I/O error.
    Io(Error),
}

/// Reads a JSON file refusing symlinks (`O_NOFOLLOW`), non-regular files and files over
/// 1 MiB.
pub fn read_json(path: &Path) -> std::result::Result<Value, ReadError> {
    let bytes = read_guarded(path)?;
    serde_json::from_slice(&bytes).map_err(|e| ReadError::Refused(format!("malformed JSON: {e}")))
}

/// Reads a file's bytes under the same guards as [`read_json`].
pub fn read_guarded(path: &Path) -> std::result::Result<Vec<u8>, ReadError> {
    // On NFS a file another host replaced by rename can answer ESTALE until the parent
    // directory is looked up again: retry after revalidating it (one revalidation sufficed
    // in every measured case).
    crate::netfs::retry_estale_if(
        path,
        |e: &ReadError| {
            use crate::netfs::MaybeStale;
            matches!(e, ReadError::Io(err) if err.is_stale())
        },
        || read_guarded_once(path),
    )
}

fn read_guarded_once(path: &Path) -> std::result::Result<Vec<u8>, ReadError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ReadError::Refused("symlink refused".into()))
        }
        Err(e) => {
            return Err(ReadError::Io(Error::io(
                format!("cannot open {}", path.display()),
                e,
            )))
        }
    };
    read_opened(f, path)
}

/// The checks and the read of [`read_guarded`] on a file opened from `path`.
fn read_opened(f: File, path: &Path) -> std::result::Result<Vec<u8>, ReadError> {
    let meta = fresh_stat(&f)
        .map_err(|e| ReadError::Io(Error::io(format!("cannot stat {}", path.display()), e)))?;
    if !meta.is_file {
        return Err(ReadError::Refused("not a regular file".into()));
    }
    if meta.nlink == 0 {
        // Replaced by a rename since the name was looked up: on NFS a cached name can lead
        // to the old file while the server still holds it open, and a read would succeed
        // with old content. Stale: the caller revalidates the directory and reads again.
        return Err(ReadError::Io(Error::io(
            format!("{} was replaced while being opened", path.display()),
            std::io::Error::from_raw_os_error(libc::ESTALE),
        )));
    }
    if meta.len > MAX_FILE_BYTES {
        return Err(ReadError::Refused(format!(
            "file too large ({} bytes, limit {MAX_FILE_BYTES})",
            meta.len
        )));
    }
    let mut buf = Vec::with_capacity(meta.len as usize);
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ReadError::Io(Error::io(format!("cannot read {}", path.display()), e)))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::Refused("file too large".into()));
    }
    Ok(buf)
}

/// What [`read_opened`] checks of an open file.
struct FreshStat {
    is_file: bool,
    nlink: u64,
    len: u64,
}

/// The open file's type, link count and size as the server has them now. On NFS a plain
/// `fstat` may answer from the attribute cache: an open that reused a cached name and open
/// state finds the file another host replaced still linked, and its cached pages are read
/// as current. `AT_STATX_FORCE_SYNC` asks the server (a no-op on local filesystems).
fn fresh_stat(f: &File) -> std::io::Result<FreshStat> {
    use rustix::fs::{AtFlags, StatxFlags};
    match rustix::fs::statx(
        f,
        "",
        AtFlags::EMPTY_PATH | AtFlags::STATX_FORCE_SYNC,
        StatxFlags::TYPE | StatxFlags::NLINK | StatxFlags::SIZE,
    ) {
        Ok(st) => Ok(FreshStat {
            is_file: u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFREG,
            nlink: u64::from(st.stx_nlink),
            len: st.stx_size,
        }),
        // A kernel without statx (before 4.11): the plain fstat.
        Err(rustix::io::Errno::NOSYS) => {
            let m = f.metadata()?;
            Ok(FreshStat {
                is_file: m.is_file(),
                nlink: m.nlink(),
                len: m.len(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

impl ReadError {
    /// Converts to the library error (refusals are invalid input, exit 6).
    pub fn into_error(self, path: &Path) -> Error {
        match self {
            ReadError::Missing => Error::NotFound(format!("{} does not exist", path.display())),
            ReadError::Refused(why) => Error::Invalid(format!("{}: {why}", path.display())),
            ReadError::Io(e) => e,
        }
    }
}

/// Moves a file by `rename(2)` and fsyncs both directories: it is never in two places.
pub fn move_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        Error::io(
            format!("cannot move {} to {}", from.display(), to.display()),
            e,
        )
    })?;
    if let Some(d) = to.parent() {
        fsync_dir(d)?;
    }
    if let (Some(a), Some(b)) = (from.parent(), to.parent()) {
        if a != b {
            fsync_dir(a)?;
        }
    }
    Ok(())
}

/// Moves a bad file into `quarantine/` (name prefixed with the time so repeats never
/// collide) and writes a `.reason` beside it. Returns the quarantined path.
pub fn quarantine(home: &Home, path: &Path, reason: &str) -> Result<PathBuf> {
    let qdir = home.quarantine_dir();
    create_dir_all(&qdir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("unnamed");
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let dest = qdir.join(format!("{stamp}-{name}"));
    move_file(path, &dest)?;
    let reason_path = qdir.join(format!("{stamp}-{name}.reason"));
    let text = format!(
        "{}\nfrom: {}\nat: {}\n",
        reason,
        path.display(),
        crate::time::format(&crate::time::now())
    );
    atomic_write(home, &reason_path, text.as_bytes())?;
    Ok(dest)
}

/// Names of `*.json` entries in a directory (not following links), sorted.
pub fn list_json(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot list {}", dir.display()), e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.ctx("list", dir)?;
        if let Some(name) = entry.file_name().to_str() {
            if name.ends_with(".json") {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;

    /// A file replaced by a rename after it was opened (what a stale NFS name leads to) is
    /// never read as if it were current: the read says stale, and `read_guarded` retries.
    #[test]
    fn a_file_replaced_after_its_open_is_stale_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        std::fs::write(&p, b"{\"v\": 1}").unwrap();
        let old = File::open(&p).unwrap();
        let tmp = dir.path().join("x.tmp");
        std::fs::write(&tmp, b"{\"v\": 2}").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        match read_opened(old, &p) {
            Err(ReadError::Io(e)) => {
                use crate::netfs::MaybeStale;
                assert!(e.is_stale(), "{e}");
            }
            other => panic!("read the replaced file: {other:?}"),
        }
        let fresh = File::open(&p).unwrap();
        assert_eq!(read_opened(fresh, &p).unwrap(), b"{\"v\": 2}");
        assert_eq!(read_json(&p).unwrap()["v"], 2);
    }

    fn home() -> (tempfile::TempDir, Home) {
        crate::home::test_home()
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_tmp() {
        let (_d, h) = home();
        let p = h.coordination().join("x.json");
        atomic_write(&h, &p, b"{\"a\":1}").unwrap();
        atomic_write(&h, &p, b"{\"a\":2}").unwrap();
        assert_eq!(read_json(&p).unwrap()["a"], 2);
        assert_eq!(std::fs::read_dir(h.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn guarded_reads_refuse_symlinks_big_and_bad() {
        let (_d, h) = home();
        let real = h.coordination().join("real.json");
        std::fs::write(&real, "{}").unwrap();
        let link = h.coordination().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(read_json(&link), Err(ReadError::Refused(_))));
        let big = h.coordination().join("big.json");
        std::fs::write(&big, vec![b' '; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        assert!(matches!(read_json(&big), Err(ReadError::Refused(_))));
        let torn = h.coordination().join("torn.json");
        std::fs::write(&torn, "{\"a\":").unwrap();
        assert!(matches!(read_json(&torn), Err(ReadError::Refused(_))));
        assert!(matches!(
            read_json(&h.coordination().join("none.json")),
            Err(ReadError::Missing)
        ));
        let dir = h.coordination().join("dir.json");
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(read_json(&dir), Err(ReadError::Refused(_))));
    }

    #[test]
    fn lock_excludes_and_is_released_on_drop() {
        let (_d, h) = home();
        let p = h.worker_lock("w1");
        let g = lock(&p).unwrap();
        assert!(try_lock(&p).unwrap().is_none());
        drop(g);
        assert!(try_lock(&p).unwrap().is_some());
    }

    #[test]
    fn a_held_lock_times_out_naming_the_file_and_lock_files_are_private() {
        use std::os::unix::fs::MetadataExt;
        let (_d, h) = home();
        let p = h.budget_lock();
        let _held = lock(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let t0 = Instant::now();
        let err = lock_within(&p, Duration::from_millis(150)).unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(150));
        assert_eq!(err.exit_code(), 5);
        assert!(err.to_string().contains("budget.lock"), "{err}");
        // An old, world-readable lock file is narrowed when next opened.
        let old = h.locks_dir().join("old.lock");
        std::fs::write(&old, "").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(lock(&old).unwrap());
        assert_eq!(std::fs::metadata(&old).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn contended_waits_are_shared_fairly_and_an_abandoned_wait_leaves_nothing_held() {
        let (_d, h) = home();
        let p = h.budget_lock();
        // A holder that takes the lock again at once, as a loop of cleanups does, must not
        // starve a waiter.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hog = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let g = lock_within(&p, Duration::from_secs(10)).unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                    drop(g);
                }
            })
        };
        for _ in 0..20 {
            drop(lock_within(&p, Duration::from_secs(5)).expect("a fair share"));
        }
        stop.store(true, Ordering::Relaxed);
        hog.join().unwrap();
        // A wait abandoned at its deadline does not keep the lock once the holder lets go.
        let held = lock(&p).unwrap();
        assert!(lock_within(&p, Duration::from_millis(50)).is_err());
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while try_lock(&p).unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the abandoned waiter kept the lock"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn writes_readers_would_refuse_are_refused_before_anything_moves() {
        let (_d, h) = home();
        let p = h.coordination().join("x.json");
        atomic_write(&h, &p, b"{}").unwrap();
        let big = vec![b' '; MAX_FILE_BYTES as usize + 1];
        let err = atomic_write(&h, &p, &big).unwrap_err();
        assert_eq!(err.exit_code(), 6, "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(h.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn logs_never_follow_symlinks() {
        use std::os::unix::fs::MetadataExt;
        let (d, h) = home();
        let outside = d.path().join("outside.txt");
        std::fs::write(&outside, "").unwrap();
        let log = h.worker_log("w1");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, &log).unwrap();
        assert_eq!(open_log(&log).unwrap_err().exit_code(), 6);
        let dir_link = h.worker_log_dir("w2");
        std::os::unix::fs::symlink(d.path(), &dir_link).unwrap();
        let e = open_log(&h.worker_log("w2")).unwrap_err();
        assert_eq!(e.exit_code(), 6, "{e}");
        let fifo = h.worker_log_dir("w3").join("worker.log");
        std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(open_log(&fifo).unwrap_err().exit_code(), 6);
        let ok = open_log(&h.worker_log("w4")).unwrap();
        assert_eq!(ok.metadata().unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&outside).unwrap(), b"");
    }

    #[test]
    fn quarantine_keeps_a_reason() {
        let (_d, h) = home();
        let p = h.specs_dir(crate::home::StateDir::Active).join("bad.json");
        std::fs::write(&p, "nope").unwrap();
        let q = quarantine(&h, &p, "malformed JSON").unwrap();
        assert!(q.exists() && !p.exists());
        let reason = std::fs::read_to_string(format!("{}.reason", q.display())).unwrap();
        assert!(reason.starts_with("malformed JSON"));
    }

    /// A child that inherited the lock's open file (as one being started by another thread
    /// does until its exec) keeps a dropped guard's lock only when it was handed off.
    #[test]
    fn a_dropped_lock_is_free_even_where_a_child_holds_the_open_file_unless_handed_off() {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let inherit = |g: &LockGuard| {
            let fd = g.file().as_raw_fd();
            let mut c = crate::process::command("sleep");
            c.arg("30");
            // SAFETY: fcntl only, between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                    Ok(())
                });
            }
            c.spawn().unwrap()
        };
        let g = lock(&p).unwrap();
        let mut child = inherit(&g);
        drop(g);
        assert!(try_lock(&p).unwrap().is_some(), "dropped: free at once");
        let _ = child.kill();
        let _ = child.wait();

        let g = lock(&p).unwrap();
        let mut child = inherit(&g);
        g.hand_off();
        assert!(
            try_lock(&p).unwrap().is_none(),
            "handed off: the child holds it"
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            try_lock(&p).unwrap().is_some(),
            "free once the child is gone"
        );
    }
}
