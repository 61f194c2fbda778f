//! The index of explicitly chosen task ids (`enqueue --id`, `id` in `--jsonl`).
//!
//! An id given by the caller must be unique across every state, and a pending task cannot be
//! found by id without walking its class (its name starts with priority and time). So each
//! explicit id gets `tasks/.ids/<id>`, created with `O_EXCL` — the kernel decides a race
//! between two enqueuers of the same id, as it decides a claim — holding the relative path
//! of the task while it is pending (a hint for `show`, `cancel` and dependencies). Generated
//! ids are unique by construction and need no entry. Entries go when the task is purged.

use super::layout::{self, ids_dir};
use crate::error::{Error, IoContext, Result};
use crate::home::Home;
use std::io::Write;
use std::path::{Path, PathBuf};

/// True for an id of the form [`crate::id::new_task_id`] generates.
pub fn looks_generated(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 5 + 16 + 1 + 16
        && id.starts_with("task-")
        && b[13] == b'T'
        && b[20] == b'Z'
        && b[21] == b'-'
        && b[22..].iter().all(u8::is_ascii_hexdigit)
}

fn entry(home: &Home, id: &str) -> PathBuf {
    ids_dir(home).join(id)
}

fn rel(home: &Home, path: &Path) -> String {
    path.strip_prefix(layout::pending_root(home))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Takes `id` for a new task. `Ok(false)` when it is taken. The entry is durable when
/// `sync` is set (a bulk load syncs the whole filesystem once per batch instead).
pub fn reserve(home: &Home, id: &str, pending: Option<&Path>, sync: bool) -> Result<bool> {
    let dir = ids_dir(home);
    let p = entry(home, id);
    let modes = crate::perms::modes(home);
    let open = || {
        use std::os::unix::fs::OpenOptionsExt;
        crate::perms::create(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW),
            &p,
            modes,
        )
    };
    let mut f = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::perms::mkdir_all(&dir, modes)?;
            match open() {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(Error::io(format!("cannot create {}", p.display()), e)),
            }
        }
        Err(e) => return Err(Error::io(format!("cannot create {}", p.display()), e)),
    };
    if let Some(pp) = pending {
        f.write_all(rel(home, pp).as_bytes()).ctx("write", &p)?;
    }
    if sync {
        store_sync(&dir)?;
    }
    Ok(true)
}

fn store_sync(dir: &Path) -> Result<()> {
    crate::store::fsync_dir(dir)
}

/// Gives an id back (an enqueue that failed after reserving it, a purged task).
pub fn release(home: &Home, id: &str) {
    let _ = std::fs::remove_file(entry(home, id));
}

/// Where the task with this explicit id was last put in pending, if it has an entry.
pub fn hint(home: &Home, id: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(entry(home, id)).ok()?;
    let text = text.trim();
    if text.is_empty() || text.contains("..") {
        return None;
    }
    Some(layout::pending_root(home).join(text))
}

/// Records a task's new place in pending (a retry, a requeue), if it has an entry.
pub fn update(home: &Home, id: &str, pending: &Path) {
    let p = entry(home, id);
    if !p.exists() {
        return;
    }
    if let Err(e) = crate::store::atomic_write(home, &p, rel(home, pending).as_bytes()) {
        tracing::debug!("cannot update the id hint of {id}: {e}");
    }
}

/// Marker written once the pending tasks of an older home were indexed.
const INDEXED: &str = ".indexed";

/// Whether the index covers every pending task with an explicit id (a home that has used
/// explicit ids since they were indexed, or that had none before).
pub fn initialised(home: &Home) -> bool {
    ids_dir(home).join(INDEXED).exists()
}

/// Marks the index complete.
pub fn mark_initialised(home: &Home) -> Result<()> {
    let d = ids_dir(home);
    let modes = crate::perms::modes(home);
    crate::perms::mkdir_all(&d, modes)?;
    crate::perms::write_file(&d.join(INDEXED), b"", modes)
}

/// True when an entry exists for `id`.
pub fn exists(home: &Home, id: &str) -> bool {
    entry(home, id).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_exclusive_and_hints_survive() {
        let (_d, h) = crate::home::test_home();
        let p = layout::pending_root(&h).join("c/1-00000000/000/000/x.json");
        assert!(reserve(&h, "job-1", Some(&p), true).unwrap());
        assert!(!reserve(&h, "job-1", None, false).unwrap());
        assert_eq!(hint(&h, "job-1").unwrap(), p);
        release(&h, "job-1");
        assert!(reserve(&h, "job-1", None, false).unwrap());
        assert!(hint(&h, "job-1").is_none());
        assert!(looks_generated(&crate::id::new_task_id(crate::time::now())));
        assert!(!looks_generated("job-1"));
    }
}
