//! Where tasks live, and the names that make the claim order visible (DESIGN.md §8).
//!
//! A pending task is `pending/<class>/<P>-<T1>/<T2>/<T3>/<P>-<ns:020>-<id>.json`: the file
//! name is DESIGN's `<prio>-<enqueued_ns>-<task_id>.json`, and the three directories above
//! it are slices of that same name — `<P>-<T1>` the priority and the first 8 of the 20
//! digits (≈17 minutes), `<T2>` the next 3 (seconds), `<T3>` the next 2 (10 ms). So every
//! path sorts exactly like its file name, a directory never holds more than 1,000
//! subdirectories, and the head of a class is found by reading four small directories
//! instead of every name: the cost of a claim does not grow with the queue (the scale rule).
//! This is CERN's Directory::Queue idea (time-named intermediate directories), with the
//! time split so that no level grows with the queue's length, and a leaf holds only what
//! arrives in 10 ms (200 tasks at 20,000 enqueues per second; a new leaf directory at most
//! every 10 ms, which keeps `mkdir` off most enqueues).
//!
//! The claim order, all classes: `find tasks/pending -name '*.json' -printf '%f\n' | sort`;
//! one class: `find tasks/pending/llm -name '*.json' | sort`. Homes written by the flat
//! layout (`pending/<class>/<name>.json`) keep working: such files are read, claimed and
//! listed in the same order, and everything new is written bucketed.
//!
//! Empty bucket directories are removed by whoever finds them empty (a claimer, a pruning
//! walk) once they have been empty for a few seconds; an enqueue that loses its directory
//! to such a removal creates it again.

use super::task::{ns_time, Task};
use crate::error::{Error, Result};
use crate::home::{Home, Modes, TaskState};
use crate::spec::Priority;
use crate::store::{self, ReadError};
use std::path::{Path, PathBuf};

/// Marker of a paused class (`task-queue pause`), in the class directory.
pub const PAUSED_MARKER: &str = ".paused";

/// Marker of a reported starvation episode, in the class directory.
pub const STARVED_MARKER: &str = ".starved";

/// `<prio>-<ns:020>-<id>.json`.
pub fn pending_name(priority: Priority, ns: u64, id: &str) -> String {
    format!("{}-{ns:020}-{id}.json", priority.rank())
}

/// The parts of a pending file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingName<'a> {
    pub prio: u8,
    pub ns: u64,
    pub task_id: &'a str,
}

/// Parses `<prio>-<ns:020>-<id>.json` (the form corral writes); anything else is not a task.
pub fn parse_pending_name(name: &str) -> Option<PendingName<'_>> {
    let p = parse_lenient(name)?;
    (name.as_bytes().get(22) == Some(&b'-')).then_some(p)
}

/// Like [`parse_pending_name`] but accepting 1 to 20 digits, as files written by hand into a
/// flat class directory may have. Such a name sorts by its normalised form ([`sort_key`]).
pub fn parse_lenient(name: &str) -> Option<PendingName<'_>> {
    let stem = name.strip_suffix(".json")?;
    let b = stem.as_bytes();
    if b.len() < 5 || b[1] != b'-' || !(b'0'..=b'3').contains(&b[0]) {
        return None;
    }
    let rest = &stem[2..];
    let dash = rest.find('-')?;
    let digits = &rest[..dash];
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let task_id = &rest[dash + 1..];
    crate::id::validate("task", task_id).ok()?;
    Some(PendingName {
        prio: b[0] - b'0',
        ns: digits.parse().ok()?,
        task_id,
    })
}

/// The name a pending file sorts by: itself when corral wrote it, the 20-digit form of a
/// hand-written one.
pub fn sort_key(name: &str) -> Option<String> {
    let p = parse_lenient(name)?;
    Some(format!("{}-{:020}-{}.json", p.prio, p.ns, p.task_id))
}

/// The priority of a rank in a name (0 critical … 3 low).
pub fn priority_of_rank(rank: u8) -> Priority {
    match rank {
        0 => Priority::Critical,
        1 => Priority::High,
        2 => Priority::Medium,
        _ => Priority::Low,
    }
}

/// The three bucket directories of a task name: `<P>-<T1>`, `<T2>`, `<T3>`.
pub fn bucket_of(prio: u8, ns: u64) -> [String; 3] {
    let d = format!("{ns:020}");
    [
        format!("{prio}-{}", &d[..8]),
        d[8..11].to_string(),
        d[11..13].to_string(),
    ]
}

/// True for a first-level bucket name `<P>-<8 digits>`.
pub fn is_l1(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 10
        && (b'0'..=b'3').contains(&b[0])
        && b[1] == b'-'
        && b[2..].iter().all(u8::is_ascii_digit)
}

/// True for a name of the bucket level below `depth` (0: under `<P>-<T1>`, 3 digits; 1:
/// under `<T2>`, 2 digits).
pub fn is_sub_bucket(depth: usize, name: &str) -> bool {
    let len = if depth == 0 { 3 } else { 2 };
    name.len() == len && name.bytes().all(|c| c.is_ascii_digit())
}

/// `tasks/pending/`.
pub fn pending_root(home: &Home) -> PathBuf {
    home.tasks_dir(TaskState::Pending)
}

/// `tasks/pending/<class>/`.
pub fn class_dir(home: &Home, class: &str) -> PathBuf {
    pending_root(home).join(class)
}

/// The leaf directory a task with this priority and position goes to.
pub fn leaf_dir(home: &Home, class: &str, prio: u8, ns: u64) -> PathBuf {
    let [a, b, c] = bucket_of(prio, ns);
    class_dir(home, class).join(a).join(b).join(c)
}

/// Where a pending task's file goes.
pub fn pending_path(home: &Home, task: &Task) -> PathBuf {
    leaf_dir(home, &task.class, task.priority.rank(), task.position_ns()).join(task.pending_name())
}

/// `tasks/<state>/<id>.json` for every state but pending.
pub fn state_path(home: &Home, state: TaskState, id: &str) -> PathBuf {
    home.tasks_dir(state).join(format!("{id}.json"))
}

/// `tasks/` itself.
pub fn tasks_root(home: &Home) -> PathBuf {
    home.coordination().join("tasks")
}

/// `tasks/.counts/`: the per-class counters (see `counts`).
pub fn counts_dir(home: &Home) -> PathBuf {
    tasks_root(home).join(".counts")
}

/// `tasks/.claiming/`: where a claimer holds the task it just won while it writes the claim
/// record into it (see `claim`); nothing stays there longer than that unless its claimer
/// died, and maintenance moves such leftovers on.
pub fn claiming_dir(home: &Home) -> PathBuf {
    tasks_root(home).join(".claiming")
}

/// `tasks/.claiming/<id>.json`.
pub fn claiming_path(home: &Home, id: &str) -> PathBuf {
    claiming_dir(home).join(format!("{id}.json"))
}

/// `tasks/.ids/`: one entry per explicitly chosen task id, so `--id` uniqueness is one
/// `O_EXCL` create instead of a search.
pub fn ids_dir(home: &Home) -> PathBuf {
    tasks_root(home).join(".ids")
}

/// `tasks/.deps/<dependency>/`: one empty file per task waiting for `<dependency>`.
pub fn deps_dir(home: &Home) -> PathBuf {
    tasks_root(home).join(".deps")
}

thread_local! {
    static LISTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many directory entries this thread has read through [`list_names`]: the measure of
/// what a claim or a report costs in the layout (the scale rule's tests read it).
pub fn names_read() -> u64 {
    LISTED.with(std::cell::Cell::get)
}

/// Names of the entries of a directory (none when it does not exist). On NFS a bucket
/// another host removed answers with a stale handle rather than "no such directory": a
/// stale open is revalidated and tried again (`netfs::retry_estale`), and a stale read of a
/// directory that did open means it is gone, so a removed bucket reads as empty instead of
/// failing a claim or a `work` loop.
pub fn list_names(dir: &Path) -> Result<Vec<String>> {
    crate::netfs::retry_estale(dir, || list_once(dir))
        .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))
}

/// One listing. Only its `open` can be retried: a read error ends it (below), so entries
/// are never counted twice in [`names_read`].
fn list_once(dir: &Path) -> std::io::Result<Vec<String>> {
    use crate::netfs::MaybeStale;
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd {
        match e {
            Ok(e) => {
                LISTED.with(|c| c.set(c.get() + 1));
                if let Ok(n) = e.file_name().into_string() {
                    out.push(n);
                }
            }
            // The directory went away under us (removed when empty): it had nothing. On NFS
            // the read of a directory removed since it was opened answers with a stale
            // handle: gone all the same (a retry could only meet a newer bucket, which
            // another host may remove again just as fast).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.is_stale() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Names of the class directories under `pending/`, sorted.
pub fn classes(home: &Home) -> Result<Vec<String>> {
    let mut out: Vec<String> = list_names(&pending_root(home))?
        .into_iter()
        .filter(|n| crate::id::validate("class", n).is_ok() && !n.ends_with(".json"))
        .filter(|n| class_dir(home, n).is_dir())
        .collect();
    out.sort();
    Ok(out)
}

/// Refuses a path that is a symlink (the home's directories are real directories, DESIGN
/// §10); `Ok(false)` when it does not exist.
pub fn check_real_dir(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::Invalid(format!(
            "{} is a symlink: refused (queue directories must be real directories)",
            path.display()
        ))),
        Ok(m) if !m.is_dir() => Err(Error::Invalid(format!(
            "{} is not a directory",
            path.display()
        ))),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("cannot stat {}", path.display()), e)),
    }
}

/// Creates `dir` and any missing parents below `base` with the modes of the directory
/// `base` is in (see [`make_dirs_with`]; the queue's own paths pass the home's modes).
pub fn make_dirs(base: &Path, dir: &Path, sync: bool) -> Result<bool> {
    make_dirs_with(base, dir, sync, crate::home::modes_in(base))
}

/// Creates `dir` and any missing parents below `base` with the directory mode of `modes`
/// (not the umask's), each checked to be a real directory and, with `sync`, each new one
/// made durable by an fsync of its parent (a bulk load syncs the whole filesystem once per
/// batch instead). Returns whether it made any.
pub fn make_dirs_with(base: &Path, dir: &Path, sync: bool, modes: Modes) -> Result<bool> {
    let rel = dir.strip_prefix(base).map_err(|_| {
        Error::Internal(format!("{} is not under {}", dir.display(), base.display()))
    })?;
    let mut made = false;
    // A claimer may remove a bucket it found empty between our mkdir of it and of its
    // child: start again from the top (bounded).
    'again: for attempt in 0..20 {
        let mut cur = base.to_path_buf();
        for part in rel.components() {
            let parent = cur.clone();
            cur.push(part);
            match crate::perms::mkdir(&cur, modes) {
                Ok(()) => {
                    made = true;
                    if sync {
                        store::fsync_dir(&parent)?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    check_real_dir(&cur)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 19 => {
                    continue 'again;
                }
                Err(e) => return Err(Error::io(format!("cannot create {}", cur.display()), e)),
            }
        }
        break;
    }
    Ok(made)
}

/// How long an empty bucket directory is left alone after it was made (its birth time,
/// or its last change where the filesystem keeps no birth time): an enqueuer creates its
/// directories a level at a time and only then renames its task in, so a young empty
/// directory is probably about to be used.
pub const EMPTY_BUCKET_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What [`retire_bucket`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    /// Removed (or already gone).
    Removed,
    /// Empty but changed less than [`EMPTY_BUCKET_GRACE`] ago: left for this long.
    Young(std::time::Duration),
    /// Not empty after all (an arrival), or not removable.
    Kept,
}

/// Removes an empty bucket directory, unless it is young (see [`EMPTY_BUCKET_GRACE`]) and
/// `used` is false: a directory the caller saw holding entries was fully made, so an empty
/// one is finished with, whatever its age.
pub fn retire_bucket(dir: &Path, used: bool) -> Retired {
    if used {
        return match std::fs::remove_dir(dir) {
            Ok(()) => Retired::Removed,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Retired::Removed,
            Err(_) => Retired::Kept,
        };
    }
    let age = match std::fs::symlink_metadata(dir) {
        Ok(m) => m
            .created()
            .or_else(|_| m.modified())
            .ok()
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .unwrap_or_default(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Retired::Removed,
        Err(_) => return Retired::Kept,
    };
    if age < EMPTY_BUCKET_GRACE {
        return Retired::Young(EMPTY_BUCKET_GRACE - age);
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Retired::Removed,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Retired::Removed,
        Err(_) => Retired::Kept,
    }
}

/// Reads a task file under the guards of `store::read_json`, retrying a read that another
/// host's rename made stale (`ESTALE` on NFS) twice.
pub fn read_task(path: &Path) -> std::result::Result<Task, ReadError> {
    let mut tries = 0;
    loop {
        match store::read_guarded(path) {
            Ok(bytes) => {
                return Task::from_slice(&bytes).map_err(|e| ReadError::Refused(e.to_string()))
            }
            Err(ReadError::Io(Error::Io { source, .. }))
                if source.raw_os_error() == Some(libc::ESTALE) && tries < 2 =>
            {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Age of a file since it got where it is (ctime: a rename updates it), seconds.
pub fn file_age(path: &Path, now: crate::time::Timestamp) -> Option<f64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    let t = chrono::DateTime::from_timestamp(m.ctime(), m.ctime_nsec() as u32)?;
    Some(crate::time::secs_between(t, now).max(0.0))
}

/// The time a pending name says the task became claimable.
pub fn name_time(p: &PendingName<'_>) -> crate::time::Timestamp {
    ns_time(p.ns)
}

/// The network filesystem `path` is on, if any: there inotify sees only this host's changes,
/// so waiting claimers also poll.
pub fn network_fs(path: &Path) -> Option<&'static str> {
    crate::netfs::network_fs(path)
}

/// The default poll interval of waiting claimers: 2 s on a network filesystem, none
/// (inotify only) elsewhere.
pub fn default_poll_interval(home: &Home) -> Option<f64> {
    crate::netfs::poll_interval(&tasks_root(home)).map(|d| d.as_secs_f64())
}

/// Creates a state directory that an older home may lack (`deferred/`, `cancelled/`).
pub fn ensure_state_dir(home: &Home, state: TaskState) -> Result<PathBuf> {
    let d = home.tasks_dir(state);
    if !check_real_dir(&d)? {
        crate::perms::mkdir_all(&d, crate::perms::modes(home))?;
    }
    Ok(d)
}

/// Test help: waits until the directories under `root` are older than the grace (birth
/// times cannot be set back).
#[cfg(test)]
pub(crate) fn age_dirs(root: &Path) {
    let _ = root;
    std::thread::sleep(EMPTY_BUCKET_GRACE + std::time::Duration::from_millis(50));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_claim_order_and_parse_back() {
        let a = pending_name(Priority::Critical, 5, "z");
        let b = pending_name(Priority::High, 1, "a");
        let c = pending_name(Priority::High, 10, "a");
        assert!(a < b && b < c);
        let p = parse_pending_name(&c).unwrap();
        assert_eq!((p.prio, p.ns, p.task_id), (1, 10, "a"));
        for bad in [
            "x.json",
            "4-00000000000000000001-a.json",
            ".starved",
            "1-12-a.json",
            "1-00000000000000000001-../x.json",
        ] {
            assert!(parse_pending_name(bad).is_none(), "{bad}");
        }
        // Hand-written flat names are read leniently and sort by their normal form.
        let p = parse_lenient("2-1700000000000000000-task-4.json").unwrap();
        assert_eq!(
            (p.prio, p.ns, p.task_id),
            (2, 1_700_000_000_000_000_000, "task-4")
        );
        assert_eq!(
            sort_key("2-17-x.json").unwrap(),
            "2-00000000000000000017-x.json"
        );
    }

    #[test]
    fn buckets_are_slices_of_the_name() {
        let ns = 1_764_000_123_456_789_012u64;
        let name = pending_name(Priority::High, ns, "t");
        let [a, b, c] = bucket_of(1, ns);
        assert_eq!(
            (a.as_str(), b.as_str(), c.as_str()),
            ("1-01764000", "123", "45")
        );
        assert!(name.starts_with(&format!("{a}{b}{c}")));
        assert!(is_l1(&a) && is_sub_bucket(0, &b) && is_sub_bucket(1, &c));
        assert!(!is_l1("1-0176400") && !is_l1("x-01764000") && !is_sub_bucket(0, "12a"));
        assert!(!is_sub_bucket(1, "123") && !is_sub_bucket(0, "12"));
        // Path order is name order, across every level.
        let p1 = leaf_dir(&Home::at("/h"), "c", 1, ns).join(&name);
        let later = pending_name(Priority::High, ns + 1_000_000_000, "a");
        let p2 = leaf_dir(&Home::at("/h"), "c", 1, ns + 1_000_000_000).join(&later);
        assert!(p1 < p2 && name < later);
    }

    #[test]
    fn make_dirs_refuses_symlinks() {
        let (_d, h) = crate::home::test_home();
        let root = pending_root(&h);
        let real = h.root().join("elsewhere");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, root.join("c")).unwrap();
        let e = make_dirs(&root, &root.join("c").join("1-00000000"), true).unwrap_err();
        assert_eq!(e.exit_code(), 6, "{e}");
        assert!(make_dirs(&root, &root.join("d").join("x"), true).unwrap());
        assert!(!make_dirs(&root, &root.join("d").join("x"), false).unwrap());
    }
}
