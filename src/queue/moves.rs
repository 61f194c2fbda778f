//! How a task changes place and content, and what each change costs.
//!
//! After a claim, every change of a task holds one of [`LOCK_STRIPES`] striped sidecar locks
//! (`.locks/task-NN.lock`, chosen by a hash of the id) and re-reads the task from where it
//! lives now. A fixed number of lock files means nothing accumulates with the queue.
//!
//! A move out of `processing/` writes the new content in place first and then renames, so a
//! crash in between leaves the task in `processing/` with its new `state`, which maintenance
//! finishes; a task is never in two places. Durability costs two syncs per move: the new
//! content's data before it replaces the old (a reader never sees a torn file, DESIGN §4) and
//! the destination directory after the rename (the move survives a power cut). The source
//! directory is not synced: if that rename is lost, the task is still whole in one place.
//! Rewrites that a power cut may lose without harm (a claim record, a lease renewal) skip
//! both syncs; see [`Durability`].

use super::counts::{self, Delta};
use super::layout::{self, read_task, state_path};
use super::task::Task;
use crate::error::{Error, IoContext, Result};
use crate::events::{self, Event};
use crate::home::{Home, TaskState};
use crate::store::{self, ReadError};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Number of striped task locks. Fixed, so lock files never accumulate with the queue.
pub const LOCK_STRIPES: u64 = 32;

static FSYNC_NS: AtomicU64 = AtomicU64::new(0);
static FSYNCS: AtomicU64 = AtomicU64::new(0);
static EVENT_NS: AtomicU64 = AtomicU64::new(0);
static EVENTS: AtomicU64 = AtomicU64::new(0);

/// Time this process spent in the queue's syncs and event appends (for `work`'s cost split
/// and the benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Costs {
    pub fsyncs: u64,
    pub fsync_ns: u64,
    pub events: u64,
    pub event_ns: u64,
}

/// The totals so far.
pub fn costs() -> Costs {
    Costs {
        fsyncs: FSYNCS.load(Ordering::Relaxed),
        fsync_ns: FSYNC_NS.load(Ordering::Relaxed),
        events: EVENTS.load(Ordering::Relaxed),
        event_ns: EVENT_NS.load(Ordering::Relaxed),
    }
}

fn timed<T>(ns: &AtomicU64, n: &AtomicU64, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    n.fetch_add(1, Ordering::Relaxed);
    r
}

/// `fsync` of a directory, counted. A pending bucket can be removed by a claimer between a
/// rename into it and this sync (the claimer took the task and found the bucket empty);
/// then the nearest directory still there is synced instead: a directory fsync commits the
/// filesystem's journal up to now, so the rename in and the claimer's rename out are
/// durable together.
pub fn sync_dir(dir: &Path) -> Result<()> {
    timed(&FSYNC_NS, &FSYNCS, || {
        let mut cur = dir;
        loop {
            match store::fsync_dir(cur) {
                Err(e) if e.is_not_found_io() => match cur.parent() {
                    Some(up) => cur = up,
                    None => return Err(e),
                },
                other => return other,
            }
        }
    })
}

thread_local! {
    /// Destination directories whose sync the `work` loop defers (see [`defer_moves`]).
    static DEFERRED: std::cell::RefCell<Option<std::collections::BTreeSet<PathBuf>>> =
        const { std::cell::RefCell::new(None) };
}

/// Group commit for the `work` loop: while on, the directory sync that makes a move out of
/// `processing/` durable is collected instead of done, and [`flush_moves`] does each
/// directory once. The new content is still synced before it replaces the claim record,
/// so a reader never sees a torn file; a power cut before the flush can only undo recent
/// moves, which leaves those tasks in `processing/` with their claim or their final state
/// (requeued and run again, or the move finished by maintenance): at-least-once delivery,
/// as a lost claim record is. Per thread.
pub fn defer_moves(on: bool) {
    DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if on {
            d.get_or_insert_with(Default::default);
        } else {
            *d = None;
        }
    });
}

/// Syncs the directories deferred since the last flush; returns how many.
pub fn flush_moves() -> Result<usize> {
    let dirs: Vec<PathBuf> = DEFERRED.with(|d| {
        d.borrow_mut()
            .as_mut()
            .map(|s| std::mem::take(s).into_iter().collect())
            .unwrap_or_default()
    });
    for dir in &dirs {
        sync_dir(dir)?;
    }
    Ok(dirs.len())
}

/// Whether moves wait for a flush.
pub fn moves_deferred() -> bool {
    DEFERRED.with(|d| d.borrow().as_ref().is_some_and(|s| !s.is_empty()))
}

/// Syncs `dir` now, or records it for [`flush_moves`] under [`defer_moves`].
fn sync_move_dest(dir: &Path) -> Result<()> {
    let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(set) => {
            set.insert(dir.to_path_buf());
            true
        }
        None => false,
    });
    if deferred {
        Ok(())
    } else {
        sync_dir(dir)
    }
}

/// `syncfs` of the filesystem holding `path` (a bulk load's batch), counted.
pub fn sync_fs(path: &Path) -> Result<()> {
    timed(&FSYNC_NS, &FSYNCS, || {
        let f = File::open(path).ctx("open", path)?;
        rustix::fs::syncfs(&f).map_err(|e| Error::io("syncfs", e.into()))
    })
}

/// Appends an event (a failure is logged: the change it reports has happened), counted.
pub fn emit(home: &Home, ev: Event) {
    timed(&EVENT_NS, &EVENTS, || events::emit(home, ev));
}

/// Appends several events under one hold of the log's lock, counted.
pub fn emit_many(home: &Home, evs: &[Event]) {
    timed(&EVENT_NS, &EVENTS, || events::emit_many(home, evs));
}

fn stripe(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % LOCK_STRIPES
}

/// The striped lock guarding post-claim changes of task `id` (FNV-1a of the id).
pub fn task_lock(home: &Home, id: &str) -> Result<store::LockGuard> {
    store::lock(&home.named_lock(&format!("task-{:02}", stripe(id))))
}

/// The stripe lock files of one long-lived claimer, opened once.
#[derive(Default)]
pub struct Stripes {
    files: Vec<Option<File>>,
}

/// A held stripe lock; released on drop.
pub struct StripeGuard<'a>(&'a File);

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Stripes {
    /// Locks the stripe of `id`, opening its file the first time.
    pub fn lock(&mut self, home: &Home, id: &str) -> Result<StripeGuard<'_>> {
        let i = stripe(id) as usize;
        if self.files.len() <= i {
            self.files.resize_with(LOCK_STRIPES as usize, || None);
        }
        if self.files[i].is_none() {
            let g = task_lock(home, id)?;
            let f = g.file().try_clone().ctx("dup", g.path())?;
            drop(g);
            self.files[i] = Some(f);
        }
        let Some(f) = self.files[i].as_ref() else {
            return Err(Error::Internal("stripe lock vanished".into()));
        };
        f.lock()
            .map_err(|e| Error::io("cannot lock a task stripe", e))?;
        Ok(StripeGuard(f))
    }
}

/// How hard a write must try to survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Data synced before the rename and the directory after it.
    Durable,
    /// Atomic for readers, may be lost whole by a power cut (the old content survives).
    Atomic,
}

/// Stages `bytes` in `.tmp/` (synced when durable) and returns the staged path.
pub fn stage(home: &Home, bytes: &[u8], d: Durability) -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = home.tmp_dir();
    let tmp = dir.join(format!(
        "task-{}-{}-{:08x}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        crate::id::random_u64() as u32
    ));
    // The home's mode, not the umask's: the staged file becomes the task file.
    let modes = crate::perms::modes(home);
    let create = || {
        use std::os::unix::fs::OpenOptionsExt;
        crate::perms::create(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW),
            &tmp,
            modes,
        )
    };
    let mut f = match create() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::perms::mkdir_all(&dir, modes)?;
            create().ctx("create", &tmp)?
        }
        Err(e) => return Err(Error::io(format!("cannot create {}", tmp.display()), e)),
    };
    let res = f.write_all(bytes).ctx("write", &tmp).and_then(|_| {
        if d == Durability::Durable {
            timed(&FSYNC_NS, &FSYNCS, || f.sync_data()).ctx("fsync", &tmp)
        } else {
            Ok(())
        }
    });
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Rewrites a task where it lives now (limits applied, validated, atomic).
pub fn save(home: &Home, path: &Path, task: &mut Task, d: Durability) -> Result<()> {
    let bytes = task.to_bytes()?;
    let tmp = stage(home, &bytes, d)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(
            format!("cannot rename into {}", path.display()),
            e,
        ));
    }
    if d == Durability::Durable {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// `rename` that refuses to replace an existing target: a duplicate id in processing/ is
/// never silently overwritten. Falls back to plain `rename` where the filesystem lacks it.
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                Err(std::io::Error::from_raw_os_error(libc::EEXIST))
            } else {
                std::fs::rename(from, to)
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Renames `from` to a pending `dest`, creating its bucket directories (again, if a claimer
/// removed them as empty meanwhile), then syncs the bucket when `d` says so.
pub fn rename_into_pending(home: &Home, from: &Path, dest: &Path, d: Durability) -> Result<()> {
    let durable = d == Durability::Durable;
    place_pending(home, from, dest, durable)?;
    if durable {
        if let Some(dir) = dest.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// The rename of [`rename_into_pending`]; new bucket directories are synced (into their
/// parents) when `sync_new_dirs`.
fn place_pending(home: &Home, from: &Path, dest: &Path, sync_new_dirs: bool) -> Result<()> {
    let root = layout::pending_root(home);
    let Some(dir) = dest.parent() else {
        return Err(Error::Internal(format!("no parent: {}", dest.display())));
    };
    let mut tries = 0;
    loop {
        match std::fs::rename(from, dest) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 20 && from.exists() => {
                tries += 1;
                if let Some(class) = dir.strip_prefix(&root).ok().and_then(|r| r.iter().next()) {
                    layout::check_real_dir(&root.join(class))?;
                }
                layout::make_dirs_with(&root, dir, sync_new_dirs, crate::perms::modes(home))?;
            }
            Err(e) => {
                return Err(Error::io(
                    format!("cannot move {} to {}", from.display(), dest.display()),
                    e,
                ))
            }
        }
    }
}

/// Writes `task` in processing/ (`from`) and then renames it to its place for `task.state`,
/// adding `delta` to its class's counts. Returns the new path.
pub fn move_out(home: &Home, from: &Path, task: &mut Task, delta: &Delta) -> Result<PathBuf> {
    let bytes = task.to_bytes()?;
    // Data synced before it replaces the old content; the directory sync that makes the
    // whole move durable is the destination's, in `finish_move`.
    let tmp = stage(home, &bytes, Durability::Durable)?;
    if let Err(e) = std::fs::rename(&tmp, from) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(
            format!("cannot rename into {}", from.display()),
            e,
        ));
    }
    finish_move(home, from, task, delta)
}

/// The rename half of [`move_out`]: `from` already holds the new content.
///
/// The count update comes right after the rename, before the directory sync: a process
/// killed between the two leaves a count off by one that only a recount repairs (for the
/// finished states, an exact recount that reads every file), so the window is kept to
/// microseconds instead of the milliseconds a directory sync can take under load.
pub fn finish_move(home: &Home, from: &Path, task: &Task, delta: &Delta) -> Result<PathBuf> {
    let dest = match task.state {
        TaskState::Pending => layout::pending_path(home, task),
        st => {
            layout::ensure_state_dir(home, st)?;
            state_path(home, st, &task.task_id)
        }
    };
    if task.state == TaskState::Pending {
        place_pending(home, from, &dest, true)?;
    } else {
        std::fs::rename(from, &dest).map_err(|e| {
            Error::io(
                format!("cannot move {} to {}", from.display(), dest.display()),
                e,
            )
        })?;
    }
    if !delta.0.is_empty() {
        counts::add(home, &task.class, delta);
    }
    if let Some(d) = dest.parent() {
        sync_move_dest(d)?;
    }
    if task.state == TaskState::Pending {
        super::ids::update(home, &task.task_id, &dest);
    }
    Ok(dest)
}

/// A task read from where it lives now.
#[derive(Debug, Clone)]
pub struct Found {
    pub state: TaskState,
    pub path: PathBuf,
    pub task: Task,
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// The states with one file per id (all but pending).
pub const FILED: [TaskState; 5] = [
    TaskState::Processing,
    TaskState::Completed,
    TaskState::Failed,
    TaskState::Deferred,
    TaskState::Cancelled,
];

/// Where `id` lives: one `stat` per filed state, then (only if none has it) the pending
/// lookup, then `.claiming/` and processing once more, so a concurrent claim cannot hide a
/// task.
///
/// The scan is not atomic: a task can move behind it (claimed, then completed, between two
/// of its `stat`s). A task never vanishes but by purge, so a scan that finds nothing is
/// repeated before the task is called unknown (an unknown id pays the walk of pending/
/// three times). A task a claimer holds in `.claiming/` (for
/// the microseconds it writes its claim record) is looked for again a little later; one
/// still there after that belongs to a claimer that died, and is reported as processing at
/// that path until maintenance moves it on.
pub fn locate(home: &Home, id: &str) -> Result<Option<(TaskState, PathBuf)>> {
    const MISSES: u32 = 3;
    let held = layout::claiming_path(home, id);
    let mut misses = 0;
    for attempt in 0..200 {
        for st in FILED {
            let p = state_path(home, st, id);
            if exists(&p) {
                return Ok(Some((st, p)));
            }
        }
        if let Some(p) = super::walk::find_pending(home, id)? {
            return Ok(Some((TaskState::Pending, p)));
        }
        // `.claiming/` before processing: a claim moves pending → .claiming → processing.
        let claiming = exists(&held);
        let p = state_path(home, TaskState::Processing, id);
        if exists(&p) {
            return Ok(Some((TaskState::Processing, p)));
        }
        if !claiming {
            misses += 1;
            if misses >= MISSES {
                return Ok(None);
            }
            continue;
        }
        if attempt < 199 {
            // No lock is taken here: the caller may hold the task's lock itself.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    Ok(Some((TaskState::Processing, held)))
}

/// Finds and reads a task wherever it lives; exit 3 when there is no such task.
pub fn find(home: &Home, id: &str) -> Result<Found> {
    crate::id::validate("task", id)?;
    for _ in 0..3 {
        let Some((state, path)) = locate(home, id)? else {
            return Err(Error::NotFound(format!("no such task: {id}")));
        };
        match read_task(&path) {
            Ok(task) => return Ok(Found { state, path, task }),
            // It moved between the lookup and the read: look again.
            Err(ReadError::Missing) => continue,
            Err(e) => return Err(e.into_error(&path)),
        }
    }
    Err(Error::Conflict(format!(
        "task {id} keeps moving; try again"
    )))
}

/// Quarantines a bad task file found by a scanner, with its `spec_quarantined` event, and
/// says so in the log; scanning goes on.
pub fn quarantine(home: &Home, path: &Path, why: &str) {
    match events::quarantine(home, path, why) {
        Ok(_) => tracing::warn!("quarantined bad task file {}: {why}", path.display()),
        Err(e) if e.is_not_found_io() => {}
        Err(e) => tracing::error!("cannot quarantine {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task claimed and completed while `locate` scans must never be reported unknown
    /// (`task-queue wait ID` said "no such task" for a task a worker was completing).
    #[test]
    fn a_task_moving_through_every_state_is_always_located() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (_d, h) = crate::home::test_home();
        let id = "task-moving";
        let pending = crate::queue::walk::tests::put(
            &h,
            "c",
            crate::spec::Priority::Medium,
            1_764_000_000_000_000_000,
            id,
        );
        std::fs::create_dir_all(layout::claiming_dir(&h)).unwrap();
        for st in [TaskState::Processing, TaskState::Completed] {
            layout::ensure_state_dir(&h, st).unwrap();
        }
        let path = [
            pending.clone(),
            layout::claiming_path(&h, id),
            state_path(&h, TaskState::Processing, id),
            state_path(&h, TaskState::Completed, id),
        ];
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut at = 0;
                while !stop.load(Ordering::Relaxed) {
                    let next = (at + 1) % path.len();
                    std::fs::rename(&path[at], &path[next]).unwrap();
                    at = next;
                    // Claimed, recorded and completed back to back; then enqueued anew.
                    if at == 0 || at == path.len() - 1 {
                        std::thread::sleep(std::time::Duration::from_micros(100));
                    }
                }
            });
            let mut lost = 0;
            for _ in 0..5_000 {
                if locate(&h, id).unwrap().is_none() {
                    lost += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert_eq!(lost, 0, "located nowhere {lost} times in 5,000");
        });
    }

    #[test]
    fn syncing_a_bucket_a_claimer_removed_syncs_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = dir.path().join("2-01796169").join("987").join("82");
        std::fs::create_dir_all(&bucket).unwrap();
        sync_dir(&bucket).unwrap();
        // Taken and removed as empty between the rename into it and the sync.
        std::fs::remove_dir(&bucket).unwrap();
        std::fs::remove_dir(bucket.parent().unwrap()).unwrap();
        sync_dir(&bucket).unwrap();
    }
}
