//! The durability protocol of DESIGN.md §4 in one place: atomic writes (stage in `.tmp/`,
//! fsync, rename, fsync the directory), sidecar `flock` locks (never on a data file, whose
//! inode a rename replaces), guarded reads (no symlinks, regular files only, size-capped)
//! and state moves by `rename(2)`.

use crate::error::{Error, IoContext, Result};
use crate::home::Home;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest spec, task or config file corral reads (DESIGN.md §10).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// An exclusive `flock` held until dropped. The kernel releases it if the process dies, so
/// a lock file left behind blocks nobody.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open lock file (to hand to a child process that must keep holding it).
    pub fn file(&self) -> &File {
        &self.file
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).ctx("create", dir)?;
            }
            open().ctx("open lock", path)
        }
        Err(e) => Err(Error::io(format!("cannot open lock {}", path.display()), e)),
    }
}

/// Takes an exclusive lock, waiting for it.
pub fn lock(path: &Path) -> Result<LockGuard> {
    let file = open_lock_file(path)?;
    file.lock().ctx("lock", path)?;
    Ok(LockGuard {
        file,
        path: path.to_path_buf(),
    })
}

/// Takes an exclusive lock if it is free; `None` when someone else holds it.
pub fn try_lock(path: &Path) -> Result<Option<LockGuard>> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(LockGuard {
            file,
            path: path.to_path_buf(),
        })),
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
/// torn file, and after return the new content survives a crash.
pub fn atomic_write(home: &Home, target: &Path, bytes: &[u8]) -> Result<()> {
    let tmp_dir = home.tmp_dir();
    let tmp = tmp_dir.join(tmp_name());
    let mut f = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&tmp_dir).ctx("create", &tmp_dir)?;
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .ctx("create", &tmp)?
        }
        Err(e) => return Err(Error::io(format!("cannot create {}", tmp.display()), e)),
    };
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
    let meta = f
        .metadata()
        .map_err(|e| ReadError::Io(Error::io(format!("cannot stat {}", path.display()), e)))?;
    if !meta.is_file() {
        return Err(ReadError::Refused("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadError::Refused(format!(
            "file too large ({} bytes, limit {MAX_FILE_BYTES})",
            meta.len()
        )));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ReadError::Io(Error::io(format!("cannot read {}", path.display()), e)))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::Refused("file too large".into()));
    }
    Ok(buf)
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
    std::fs::create_dir_all(&qdir).ctx("create", &qdir)?;
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
    fn quarantine_keeps_a_reason() {
        let (_d, h) = home();
        let p = h.specs_dir(crate::home::StateDir::Active).join("bad.json");
        std::fs::write(&p, "nope").unwrap();
        let q = quarantine(&h, &p, "malformed JSON").unwrap();
        assert!(q.exists() && !p.exists());
        let reason = std::fs::read_to_string(format!("{}.reason", q.display())).unwrap();
        assert!(reason.starts_with("malformed JSON"));
    }
}
