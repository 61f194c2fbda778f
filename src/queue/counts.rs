//! Task counts per class, kept as the queue changes, so `stats` never reads every file.
//!
//! `tasks/.counts/<class>` holds one fixed-width line per state (`pending`, `deferred`,
//! `completed`, `failed`, `cancelled`) plus when it was last recounted. Every operation
//! that moves a task between those states adds its delta under an `flock` on that file and
//! rewrites it in place (same length, so a reader never sees it torn). `processing/` is
//! bounded by the number of claimants and is listed instead of counted.
//!
//! **How the counts stay right after crashes.** A move and its count update are two steps;
//! a process killed between them (a window of microseconds) leaves the count off by one.
//! Such drift is repaired by an exact recount ([`recount`], O(tasks)), which runs: when a
//! counter file is missing or unreadable; when maintenance
//! finds evidence of a crash (an unrecorded claim; a task requeued because its claimant died
//! or its lease lapsed recounts that class's pending tasks; a worker that left `active/`
//! other than completed with exit 0 owes every class's pending recount, see
//! [`owe_recount`], an exact one while the finished states hold at most
//! [`EXACT_RECOUNT_MAX_FILES`] files); after a monitor that stopped uncleanly; when a head walk finds a class empty
//! that its count says is not (or the reverse: that class's pending count); a class's
//! pending count every `queue.recount_seconds` (1 h) in maintenance, one class per pass;
//! and on demand with `task-queue stats --exact` or the doctor check. A recount holds the
//! counter lock of every class it counts from before the count to the write, so a count
//! update racing it waits instead of being overwritten; a task held in `.claiming/` (a claim
//! in progress, or one whose claimer died) is counted as pending, as its claimer counts it
//! until the claim is placed in `processing/`.

use super::layout::{self, counts_dir};
use crate::error::{Error, IoContext, Result};
use crate::home::{Home, TaskState};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The counted states, in file order.
pub const COUNTED: [TaskState; 5] = [
    TaskState::Pending,
    TaskState::Deferred,
    TaskState::Completed,
    TaskState::Failed,
    TaskState::Cancelled,
];

/// Counts of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub pending: u64,
    pub deferred: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Unix seconds of the last exact recount (0: never).
    #[serde(skip)]
    pub recounted: u64,
    /// How far below zero each counted state (in [`COUNTED`] order) stands. A move's count
    /// update comes right after the move, so a task enqueued and claimed at once can be
    /// taken off the count before it was put on: the count goes below zero for a moment
    /// and must not be clamped, or the later increment would leave it one too high.
    #[serde(skip)]
    owed: [u64; 5],
    /// The counter file was unreadable and restarted from zero: a recount is due.
    #[serde(skip)]
    pub suspect: bool,
}

impl Counts {
    /// The count of one state (0 for processing, which is not counted here).
    pub fn get(&self, st: TaskState) -> u64 {
        match st {
            TaskState::Pending => self.pending,
            TaskState::Deferred => self.deferred,
            TaskState::Completed => self.completed,
            TaskState::Failed => self.failed,
            TaskState::Cancelled => self.cancelled,
            TaskState::Processing => 0,
        }
    }

    fn slot(&mut self, st: TaskState) -> Option<&mut u64> {
        match st {
            TaskState::Pending => Some(&mut self.pending),
            TaskState::Deferred => Some(&mut self.deferred),
            TaskState::Completed => Some(&mut self.completed),
            TaskState::Failed => Some(&mut self.failed),
            TaskState::Cancelled => Some(&mut self.cancelled),
            TaskState::Processing => None,
        }
    }

    /// The signed count of a counted state (negative while a decrement is ahead).
    fn signed(&self, i: usize, st: TaskState) -> i64 {
        (self.get(st).min(i64::MAX as u64) as i64)
            .saturating_sub(self.owed[i].min(i64::MAX as u64) as i64)
    }

    fn set_signed(&mut self, i: usize, st: TaskState, v: i64) {
        if let Some(slot) = self.slot(st) {
            *slot = v.max(0) as u64;
        }
        self.owed[i] = v.min(0).unsigned_abs();
    }

    /// One fixed-width line per value (written on every claim, so into one buffer).
    fn render(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut s = String::with_capacity(31 * (COUNTED.len() + 2));
        for (i, st) in COUNTED.into_iter().enumerate() {
            let _ = writeln!(s, "{:<10}{:>20}", st.name(), self.signed(i, st));
        }
        let _ = writeln!(s, "{:<10}{:>20}", "recounted", self.recounted);
        let _ = writeln!(s, "{:<10}{:>20}", "suspect", u8::from(self.suspect));
        s.into_bytes()
    }

    fn parse(bytes: &[u8]) -> Option<Counts> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut c = Counts::default();
        let mut seen = 0;
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) else {
                return None;
            };
            let v: i64 = v.parse().ok()?;
            match k {
                "recounted" => c.recounted = v.max(0) as u64,
                "suspect" => c.suspect = v != 0,
                _ => {
                    let st = TaskState::parse(k)?;
                    let i = COUNTED.iter().position(|s| *s == st)?;
                    c.set_signed(i, st, v);
                }
            }
            seen += 1;
        }
        (seen == COUNTED.len() + 2).then_some(c)
    }
}

/// A change of counts: state → delta.
#[derive(Debug, Clone, Default)]
pub struct Delta(pub Vec<(TaskState, i64)>);

impl Delta {
    /// One task leaves `from` (if counted) and enters `to` (if counted).
    pub fn moved(from: Option<TaskState>, to: Option<TaskState>) -> Delta {
        let mut d = Vec::new();
        if let Some(f) = from {
            d.push((f, -1));
        }
        if let Some(t) = to {
            d.push((t, 1));
        }
        Delta(d)
    }

    /// `n` tasks entered `st`.
    pub fn add(st: TaskState, n: i64) -> Delta {
        Delta(vec![(st, n)])
    }
}

fn path(home: &Home, class: &str) -> std::path::PathBuf {
    counts_dir(home).join(class)
}

fn open(home: &Home, class: &str) -> Result<File> {
    let p = path(home, class);
    let modes = crate::perms::modes(home);
    let o = || {
        use std::os::unix::fs::OpenOptionsExt;
        crate::perms::create(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW),
            &p,
            modes,
        )
    };
    match o() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::perms::mkdir_all(&counts_dir(home), modes)?;
            o().ctx("open", &p)
        }
        Err(e) => Err(Error::io(format!("cannot open {}", p.display()), e)),
    }
}

fn read_file(f: &File) -> Option<Counts> {
    let mut buf = [0u8; 512];
    let n = f.read_at(&mut buf, 0).ok()?;
    if n == 0 {
        // Just created: a class nobody counted yet starts at zero, exactly.
        return Some(Counts {
            recounted: now_secs(),
            ..Counts::default()
        });
    }
    Counts::parse(&buf[..n])
}

/// Marker written by the first [`recount`]: from then on a class without a counter file has
/// no tasks. A home from before counts existed has none, and is recounted once.
const INITIALISED: &str = ".initialised";

/// Whether the counter files can be trusted to cover every class (see [`INITIALISED`]).
/// Marker: a worker ended uncleanly since the last pending recount, maybe between a task's
/// move and its count update.
const RECOUNT_OWED: &str = ".recount-owed";

/// Notes that the pending counts may be off (a worker was killed, failed or stopped, maybe
/// mid-move): the next maintenance pass recounts every class's pending names. One `open`,
/// no sync: a lost marker only delays the repair to the periodic recount.
pub fn owe_recount(home: &Home) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = crate::perms::create(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW),
        &counts_dir(home).join(RECOUNT_OWED),
        crate::perms::modes(home),
    );
}

/// Takes the marker left by [`owe_recount`]: true when a recount is owed. Removed before the
/// recount, so an end noted while it runs owes the next one.
pub fn take_owed_recount(home: &Home) -> bool {
    std::fs::remove_file(counts_dir(home).join(RECOUNT_OWED)).is_ok()
}

pub fn initialised(home: &Home) -> bool {
    counts_dir(home).join(INITIALISED).exists()
}

/// Makes the counts trustworthy before the first count update of a home: a home with no
/// task yet is marked at once (one look at each state directory), any other is recounted
/// (once: a home from before counts were kept).
pub fn ensure_initialised(home: &Home) -> Result<()> {
    if initialised(home) {
        return Ok(());
    }
    let has_entries = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .map(|mut rd| {
                rd.any(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.')))
            })
            .unwrap_or(false)
    };
    let pending_root = layout::pending_root(home);
    let empty = !layout::classes(home)?
        .iter()
        .any(|c| has_entries(&pending_root.join(c)))
        && ![
            TaskState::Processing,
            TaskState::Completed,
            TaskState::Failed,
            TaskState::Deferred,
            TaskState::Cancelled,
        ]
        .iter()
        .any(|st| has_entries(&home.tasks_dir(*st)));
    if empty {
        mark_initialised(home)?;
        return Ok(());
    }
    recount(home).map(|_| ())
}

fn apply(f: &File, delta: &Delta) -> Result<()> {
    f.lock()
        .map_err(|e| Error::io("cannot lock a counter file", e))?;
    let res = apply_locked(f, delta);
    let _ = f.unlock();
    res
}

fn apply_locked(f: &File, delta: &Delta) -> Result<()> {
    // An unreadable file starts from zero and is marked for a recount.
    let mut c = read_file(f).unwrap_or(Counts {
        suspect: true,
        ..Counts::default()
    });
    for (st, d) in &delta.0 {
        if let Some(i) = COUNTED.iter().position(|s| s == st) {
            let v = c.signed(i, *st).saturating_add(*d);
            c.set_signed(i, *st, v);
        }
    }
    f.write_all_at(&c.render(), 0)
        .map_err(|e| Error::io("cannot write a counter file", e))
}

/// Adds `delta` to `class`'s counts. A failure is logged, never returned: the move it
/// counts has happened, and a recount repairs the count.
pub fn add(home: &Home, class: &str, delta: &Delta) {
    if delta.0.is_empty() {
        return;
    }
    if let Err(e) = open(home, class).and_then(|f| apply(&f, delta)) {
        tracing::warn!("cannot update the counts of class {class}: {e}");
    }
}

/// Open counter files of one process (the claimer and the work loop count every claim).
#[derive(Default)]
pub struct Counter {
    files: HashMap<String, File>,
}

impl Counter {
    /// Like [`add`], keeping the file open for the next update.
    pub fn add(&mut self, home: &Home, class: &str, delta: &Delta) {
        if !self.files.contains_key(class) {
            match open(home, class) {
                Ok(f) => {
                    self.files.insert(class.to_string(), f);
                }
                Err(e) => {
                    tracing::warn!("cannot update the counts of class {class}: {e}");
                    return;
                }
            }
        }
        if let Some(f) = self.files.get(class) {
            if let Err(e) = apply(f, delta) {
                tracing::warn!("cannot update the counts of class {class}: {e}");
                self.files.remove(class);
            }
        }
    }
}

/// The counts of every class that has a counter file; `None` for a class whose file is
/// unreadable.
pub fn read_all(home: &Home) -> Result<BTreeMap<String, Option<Counts>>> {
    let mut out = BTreeMap::new();
    for name in layout::list_names(&counts_dir(home))? {
        if crate::id::validate("class", &name).is_err() {
            continue;
        }
        let c = std::fs::File::open(path(home, &name))
            .ok()
            .and_then(|f| read_file(&f));
        out.insert(name, c);
    }
    Ok(out)
}

/// Counts every task, exactly: pending names by walking the bucket trees, the other states
/// by reading each file's class. O(tasks); see the module comment for when it runs.
pub fn count_exact(home: &Home) -> Result<BTreeMap<String, Counts>> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    for class in layout::classes(home)? {
        let n = super::walk::count_pending(home, &class)?;
        out.entry(class).or_default().pending = n;
    }
    // A task being claimed (or left by a claimer that died) in `.claiming/` is still pending
    // for the counts: a claim takes it off only once it is in processing/.
    let held = layout::claiming_dir(home);
    for name in layout::list_names(&held)? {
        if !name.ends_with(".json") {
            continue;
        }
        if let Ok(v) = crate::store::read_json(&held.join(&name)) {
            if let Some(c) = v
                .get("class")
                .and_then(serde_json::Value::as_str)
                .filter(|c| crate::id::validate("class", c).is_ok())
            {
                out.entry(c.to_string()).or_default().pending += 1;
            }
        }
    }
    for st in COUNTED.into_iter().filter(|s| *s != TaskState::Pending) {
        let dir = home.tasks_dir(st);
        for name in layout::list_names(&dir)? {
            if !name.ends_with(".json") {
                continue;
            }
            let class = match crate::store::read_json(&dir.join(&name)) {
                Ok(v) => v
                    .get("class")
                    .and_then(serde_json::Value::as_str)
                    .filter(|c| crate::id::validate("class", c).is_ok())
                    .unwrap_or("default")
                    .to_string(),
                Err(crate::store::ReadError::Missing) => continue,
                Err(_) => "default".to_string(),
            };
            if let Some(slot) = out.entry(class).or_default().slot(st) {
                *slot += 1;
            }
        }
    }
    Ok(out)
}

/// A class whose kept counts differed from the recount: (class, kept, recounted).
pub type Drift = (String, Counts, Counts);

/// Recounts exactly and rewrites every counter file (classes that vanished are set to zero).
/// Returns the new counts and the classes whose kept counts differed.
pub fn recount(home: &Home) -> Result<(BTreeMap<String, Counts>, Vec<Drift>)> {
    // Every class's counter is held while the files are counted and the result written, so
    // a count update of a move cannot land between the count and the write and be lost.
    let mut held: BTreeMap<String, File> = BTreeMap::new();
    let lock_class = |held: &mut BTreeMap<String, File>, class: &str| -> Result<()> {
        if !held.contains_key(class) {
            let f = open(home, class)?;
            f.lock().ctx("lock", &path(home, class))?;
            held.insert(class.to_string(), f);
        }
        Ok(())
    };
    let mut known: Vec<String> = read_all(home)?.into_keys().collect();
    known.extend(layout::classes(home)?);
    known.sort();
    known.dedup();
    for class in &known {
        lock_class(&mut held, class)?;
    }
    let exact = count_exact(home)?;
    let now = crate::time::now().timestamp().max(0) as u64;
    let mut drift = Vec::new();
    let mut classes: Vec<String> = exact.keys().cloned().collect();
    classes.extend(known.iter().cloned());
    classes.sort();
    classes.dedup();
    for class in classes {
        let mut new = exact.get(&class).copied().unwrap_or_default();
        new.recounted = now;
        // A class first seen by the count itself (created meanwhile) is locked now.
        lock_class(&mut held, &class)?;
        let Some(f) = held.get(&class) else {
            continue;
        };
        let readable = read_file(f);
        let before = readable.unwrap_or_default();
        f.write_all_at(&new.render(), 0)
            .ctx("write", &path(home, &class))?;
        let differs = COUNTED.iter().any(|s| before.get(*s) != new.get(*s));
        if differs || readable.is_none() {
            drift.push((class, before, new));
        }
    }
    for f in held.values() {
        let _ = f.unlock();
    }
    let marker = counts_dir(home).join(INITIALISED);
    if !marker.exists() {
        mark_initialised(home)?;
    }
    Ok((exact, drift))
}

/// Writes the [`INITIALISED`] marker (and `.counts/`), with the home's modes.
fn mark_initialised(home: &Home) -> Result<()> {
    let modes = crate::perms::modes(home);
    crate::perms::mkdir_all(&counts_dir(home), modes)?;
    crate::perms::write_file(&counts_dir(home).join(INITIALISED), b"", modes)
}

/// Up to how many files in the counted one-file-per-task states (deferred, completed,
/// failed, cancelled) an owed recount is exact rather than of the pending names only: a
/// process killed between a finishing move and its count update leaves those counts off by
/// one too, and reading 10,000 small files takes a fraction of a second.
pub const EXACT_RECOUNT_MAX_FILES: usize = 10_000;

/// Whether the counted one-file-per-task states hold at most `max` files together: reads
/// at most `max + 1` names, so the answer costs the same at a million.
pub fn filed_at_most(home: &Home, max: usize) -> bool {
    let mut seen = 0usize;
    for st in [
        TaskState::Deferred,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
    ] {
        let Ok(rd) = std::fs::read_dir(home.tasks_dir(st)) else {
            continue;
        };
        for _ in rd {
            seen += 1;
            if seen > max {
                return false;
            }
        }
    }
    true
}

/// Tasks of `class` held in `.claiming/` (a claim in progress, or left by a claimer that
/// died): still pending for the counts, as in [`count_exact`].
fn held_claims(home: &Home, class: &str) -> u64 {
    let held = layout::claiming_dir(home);
    layout::list_names(&held)
        .unwrap_or_default()
        .iter()
        .filter(|n| n.ends_with(".json"))
        .filter_map(|n| crate::store::read_json(&held.join(n)).ok())
        .filter(|v| v.get("class").and_then(serde_json::Value::as_str) == Some(class))
        .count() as u64
}

fn now_secs() -> u64 {
    crate::time::now().timestamp().max(0) as u64
}

/// Recounts one class's pending tasks (names only: cheap when the class is small or empty)
/// and marks the class recounted.
pub fn recount_pending(home: &Home, class: &str) -> Result<u64> {
    // Held while counting, so no count update of a move is overwritten (see [`recount`]).
    let f = open(home, class)?;
    f.lock().ctx("lock", &path(home, class))?;
    let n = match super::walk::count_pending(home, class) {
        Ok(n) => n + held_claims(home, class),
        Err(e) => {
            let _ = f.unlock();
            return Err(e);
        }
    };
    let mut c = read_file(&f).unwrap_or_default();
    c.pending = n;
    c.recounted = now_secs();
    let res = f
        .write_all_at(&c.render(), 0)
        .ctx("write", &path(home, class));
    let _ = f.unlock();
    res.map(|_| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filed_at_most_counts_the_finished_states_together() {
        let (_d, h) = crate::home::test_home();
        assert!(filed_at_most(&h, 0), "no directories yet");
        for (st, n) in [(TaskState::Completed, 2), (TaskState::Failed, 1)] {
            let d = layout::ensure_state_dir(&h, st).unwrap();
            for i in 0..n {
                std::fs::write(d.join(format!("t{i}.json")), "{}").unwrap();
            }
        }
        assert!(filed_at_most(&h, 3));
        assert!(!filed_at_most(&h, 2));
    }

    #[test]
    fn deltas_accumulate_and_a_decrement_ahead_of_its_increment_is_kept() {
        let (_d, h) = crate::home::test_home();
        add(&h, "c", &Delta::add(TaskState::Pending, 3));
        add(
            &h,
            "c",
            &Delta::moved(Some(TaskState::Pending), Some(TaskState::Completed)),
        );
        let mut ctr = Counter::default();
        ctr.add(&h, "c", &Delta::add(TaskState::Failed, 2));
        let all = read_all(&h).unwrap();
        let c = all["c"].unwrap();
        assert_eq!(
            (c.pending, c.completed, c.failed, c.suspect),
            (2, 1, 2, false)
        );
        // A task enqueued and claimed at once: the claim's decrement lands before the
        // enqueue's increment. The count dips below zero and comes back exactly.
        add(&h, "c", &Delta::add(TaskState::Cancelled, -1));
        let c = read_all(&h).unwrap()["c"].unwrap();
        assert_eq!((c.cancelled, c.suspect), (0, false), "shown as 0 meanwhile");
        add(&h, "c", &Delta::add(TaskState::Cancelled, 1));
        assert_eq!(read_all(&h).unwrap()["c"].unwrap().cancelled, 0, "not 1");
        add(&h, "c", &Delta::add(TaskState::Cancelled, 1));
        assert_eq!(read_all(&h).unwrap()["c"].unwrap().cancelled, 1);
        std::fs::write(counts_dir(&h).join("e"), "garbage").unwrap();
        assert!(read_all(&h).unwrap()["e"].is_none());
        add(&h, "e", &Delta::add(TaskState::Pending, 1));
        assert!(read_all(&h).unwrap()["e"].unwrap().suspect);
        assert!(!initialised(&h));
        // Recount: nothing is really there.
        let (exact, drift) = recount(&h).unwrap();
        assert!(exact.is_empty());
        assert!(drift.iter().any(|(k, _, _)| k == "c"));
        let c = read_all(&h).unwrap()["c"].unwrap();
        assert_eq!((c.pending, c.failed, c.suspect), (0, 0, false));
        assert!(c.recounted > 0);
        assert!(initialised(&h));
    }

    #[test]
    fn counts_render_at_a_fixed_length() {
        let a = Counts::default().render();
        let b = Counts {
            pending: i64::MAX as u64,
            suspect: true,
            ..Counts::default()
        }
        .render();
        assert_eq!(a.len(), b.len());
        assert_eq!(Counts::parse(&b).unwrap().pending, i64::MAX as u64);
        let mut c = Counts::default();
        c.set_signed(0, TaskState::Pending, i64::MIN);
        assert_eq!(
            c.render().len(),
            a.len(),
            "the most negative count fits too"
        );
    }
}
