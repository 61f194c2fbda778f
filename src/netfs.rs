//! A home shared by several hosts over a network filesystem (NFSv4.1 first): the few things
//! that differ from a local disk, in one place, so `store`, `spec`, `budget`, the queue and
//! the monitor handle them the same way.
//!
//! What differs, as measured on a real NFSv4.1 server (`scripts/nfs`):
//! - **inotify sees only local changes.** Another host's enqueue or heartbeat raises no
//!   event here, so waits and the monitor also poll ([`poll_interval`]).
//! - **Stale names.** After another host renames a file over a name, this client may keep
//!   the old name→file mapping until its attribute cache expires (up to 30-60 s): the
//!   `open` succeeds on the cached entry and the first `fstat`/`read` fails with `ESTALE`.
//!   Retrying at once fails again (the cached entry is still used); opening the parent
//!   directory first makes the client revalidate the directory and drop the stale entry.
//!   When the server still holds the replaced file open, the read even succeeds with the
//!   old content (seen once in CI); that file's link count is 0, which `store`'s guarded
//!   read reports as `ESTALE` too.
//!   So [`retry_estale`] revalidates the parent and retries: measured, 2 × 300 locked
//!   read-modify-writes from two mounts lost 0 updates with it (one revalidation always
//!   sufficed), against 154 of 300 without it and 115 of 300 with plain retries.
//!   The same cache keeps *negative* entries: a spec another host just moved into `zombie/`
//!   is "not found" there until the directory is revalidated ([`revalidate_dir`]).
//! - **A lock can be held by a dead host** until the server's lease expires (90 s by default),
//!   so a lock wait that times out says so ([`lock_timeout_message`]).

use crate::error::Error;
use std::io;
use std::path::Path;
use std::time::Duration;

/// The name of a network filesystem type (statfs `f_type`) on which inotify cannot see
/// changes made by other machines; `None` for local filesystems.
pub fn network_fs_name(magic: i64) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "nfs",
        0x517B => "smb",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x5346_414F => "afs",
        0x7375_7245 => "coda",
        0x564C => "ncp",
        0x00C3_6400 => "ceph",
        0x0102_1997 => "9p",
        0x0BD0_0BD0 => "lustre",
        0x4750_4653 => "gpfs",
        0x7461_636F => "ocfs2",
        0x0116_1970 => "gfs2",
        _ => return None,
    })
}

/// The network filesystem `path` is on, if any (one `statfs`). A path that cannot be
/// examined counts as local: callers then rely on inotify, as on any local disk.
pub fn network_fs(path: &Path) -> Option<&'static str> {
    let st = nix::sys::statfs::statfs(path).ok()?;
    network_fs_name(st.filesystem_type().0 as i64)
}

/// Default seconds between polls on a network filesystem (the monitor uses the same).
pub const DEFAULT_POLL_SECONDS: f64 = 2.0;

/// The environment variable that overrides [`DEFAULT_POLL_SECONDS`] for CLI waits
/// (`task-queue claim --wait`, `work`), in the duration vocabulary of [`crate::time`].
pub const POLL_ENV: &str = "CORRAL_POLL_INTERVAL";

/// How often a wait on `dir` must also poll: `Some` on a network filesystem (inotify alone
/// would never see another host's change), `None` on a local one. `CORRAL_POLL_INTERVAL`
/// overrides the default; an invalid value is ignored with a warning (a wait must not fail
/// on it), and the result is at least 50 ms.
pub fn poll_interval(dir: &Path) -> Option<Duration> {
    network_fs(dir)?;
    Some(poll_interval_from(std::env::var(POLL_ENV).ok().as_deref()))
}

/// [`poll_interval`]'s choice for a given value of `CORRAL_POLL_INTERVAL`.
pub fn poll_interval_from(env: Option<&str>) -> Duration {
    let secs = match env.map(crate::time::parse_secs) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            tracing::warn!("ignoring {POLL_ENV}: {e}");
            DEFAULT_POLL_SECONDS
        }
        None => DEFAULT_POLL_SECONDS,
    };
    crate::time::duration(secs.max(0.05))
}

/// Errors that can say whether they are an NFS "stale file handle".
pub trait MaybeStale {
    /// True when this is `ESTALE`.
    fn is_stale(&self) -> bool;
}

impl MaybeStale for io::Error {
    fn is_stale(&self) -> bool {
        self.raw_os_error() == Some(libc::ESTALE)
    }
}

impl MaybeStale for Error {
    fn is_stale(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.is_stale())
    }
}

/// How many times [`retry_estale`] runs the operation in all. One revalidation was always
/// enough in the measurements; the rest covers a file replaced again meanwhile.
pub const ESTALE_ATTEMPTS: u32 = 4;

/// Makes the NFS client revalidate `dir`: opening a directory fetches its attributes (close-
/// to-open), and a changed directory drops its cached entries, positive (stale handles) and
/// negative ("no such file" for a file another host has since renamed in). Cheap on a local
/// filesystem (one `open` and `close`).
pub fn revalidate_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map(drop)
}

/// Runs `op` (an open and read of `path`, as a whole) and, when it fails with `ESTALE`,
/// revalidates `path`'s parent directory and runs it again, up to [`ESTALE_ATTEMPTS`] times.
/// Other errors, and success, return at once; on a local filesystem this is just `op()`.
/// The whole open-stat-read sequence must be inside `op`: the stale handle is only noticed
/// after the `open` succeeded.
pub fn retry_estale<T, E: MaybeStale>(
    path: &Path,
    op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    retry_estale_if(path, E::is_stale, op)
}

/// [`retry_estale`] for error types that wrap the I/O error in their own way (for example
/// `store::ReadError`): `stale` says which errors are `ESTALE`.
pub fn retry_estale_if<T, E>(
    path: &Path,
    stale: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut attempt = 1;
    loop {
        match op() {
            Err(e) if attempt < ESTALE_ATTEMPTS && stale(&e) => {
                attempt += 1;
                let dir = path.parent().unwrap_or(Path::new("."));
                tracing::debug!(
                    "stale file handle on {}: revalidating {} (attempt {attempt})",
                    path.display(),
                    dir.display()
                );
                if let Err(e) = revalidate_dir(dir) {
                    tracing::debug!("cannot revalidate {}: {e}", dir.display());
                }
            }
            other => return other,
        }
    }
}

/// The message of a lock wait that timed out (DESIGN §6 S4): it names the lock and, on a
/// network filesystem, says that another host may hold it, and what frees it. `fs` is the
/// filesystem name from [`network_fs`] (`None`: local).
pub fn lock_timeout_message(lock: &Path, waited: Duration, fs: Option<&str>) -> String {
    let secs = waited.as_secs_f64();
    let base = format!(
        "timed out after {secs:.1} s waiting for lock {}",
        lock.display()
    );
    match fs {
        Some(fs) => format!(
            "{base}: the home is on {fs}, so another host may hold it (a host that died \
             holding it keeps it until the server's lease expires, 90 s by default); \
             CORRAL_LOCK_TIMEOUT sets how long to wait"
        ),
        None => format!(
            "{base}: another process holds it (see `fuser -v {}`); CORRAL_LOCK_TIMEOUT sets \
             how long to wait",
            lock.display()
        ),
    }
}

/// The error for a lock wait that timed out (exit 5, a conflict), with the message of
/// [`lock_timeout_message`] for the filesystem the lock is on.
pub fn lock_timeout_error(lock: &Path, waited: Duration) -> Error {
    let fs = lock.parent().and_then(network_fs);
    Error::Conflict(lock_timeout_message(lock, waited, fs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn estale() -> io::Error {
        io::Error::from_raw_os_error(libc::ESTALE)
    }

    #[test]
    fn network_filesystems_are_recognised() {
        assert_eq!(network_fs_name(0x6969), Some("nfs"));
        assert_eq!(network_fs_name(0xFF53_4D42), Some("cifs"));
        assert_eq!(network_fs_name(0x0102_1997), Some("9p"));
        assert_eq!(network_fs_name(0xEF53), None, "ext4");
        assert_eq!(network_fs_name(0x0102_1994), None, "tmpfs");
        let dir = tempfile::tempdir().unwrap();
        // The unit tests run on a local disk (the NFS suite runs in the guest).
        if network_fs(dir.path()).is_none() {
            assert_eq!(poll_interval(dir.path()), None);
        }
        assert_eq!(network_fs(Path::new("/nonexistent/corral")), None);
    }

    #[test]
    fn poll_interval_takes_the_env_within_bounds() {
        assert_eq!(
            poll_interval_from(None),
            Duration::from_secs_f64(DEFAULT_POLL_SECONDS)
        );
        assert_eq!(poll_interval_from(Some("0.5")), Duration::from_millis(500));
        assert_eq!(poll_interval_from(Some("1m")), Duration::from_secs(60));
        assert_eq!(poll_interval_from(Some("0")), Duration::from_millis(50));
        assert_eq!(
            poll_interval_from(Some("soon")),
            Duration::from_secs_f64(DEFAULT_POLL_SECONDS)
        );
        assert_eq!(
            poll_interval_from(Some("-3")),
            Duration::from_secs_f64(DEFAULT_POLL_SECONDS)
        );
    }

    #[test]
    fn estale_is_recognised_through_the_library_error() {
        assert!(estale().is_stale());
        assert!(!io::Error::from_raw_os_error(libc::ENOENT).is_stale());
        assert!(Error::io("read x", estale()).is_stale());
        assert!(!Error::Conflict("x".into()).is_stale());
    }

    #[test]
    fn retry_estale_retries_only_stale_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.json");
        let calls = Cell::new(0);
        let r: io::Result<u32> = retry_estale(&path, || {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(estale())
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.get(), 3);

        calls.set(0);
        let r: io::Result<()> = retry_estale(&path, || {
            calls.set(calls.get() + 1);
            Err(estale())
        });
        assert!(r.unwrap_err().is_stale());
        assert_eq!(calls.get(), ESTALE_ATTEMPTS);

        calls.set(0);
        let r: io::Result<()> = retry_estale(&path, || {
            calls.set(calls.get() + 1);
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(calls.get(), 1, "only ESTALE is retried");
    }

    #[test]
    fn retry_estale_if_sees_through_wrapped_errors() {
        #[derive(Debug)]
        enum Wrapped {
            Io(io::Error),
        }
        let calls = Cell::new(0);
        let r: Result<(), Wrapped> = retry_estale_if(
            Path::new("relative-name"),
            |Wrapped::Io(e)| e.is_stale(),
            || {
                calls.set(calls.get() + 1);
                Err(Wrapped::Io(estale()))
            },
        );
        assert!(r.is_err());
        assert_eq!(calls.get(), ESTALE_ATTEMPTS);
    }

    #[test]
    fn revalidate_dir_needs_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        revalidate_dir(dir.path()).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(revalidate_dir(&file).is_err());
    }

    #[test]
    fn lock_timeout_names_the_lock_and_the_other_host() {
        let lock = Path::new("/h/coordination/.locks/budget.lock");
        let m = lock_timeout_message(lock, Duration::from_secs(10), Some("nfs"));
        assert!(m.contains("/h/coordination/.locks/budget.lock"), "{m}");
        assert!(m.contains("another host may hold it"), "{m}");
        assert!(m.contains("10.0 s"), "{m}");
        let local = lock_timeout_message(lock, Duration::from_secs(2), None);
        assert!(
            local.contains("budget.lock") && !local.contains("host"),
            "{local}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = lock_timeout_error(&dir.path().join("x.lock"), Duration::from_secs(1));
        assert_eq!(e.exit_code(), 5);
    }
}
