//! Claiming: one `rename(2)` (`RENAME_NOREPLACE`) out of a pending bucket. The kernel lets
//! exactly one claimer win; the others get `ENOENT` (a lost race, logged at debug and
//! counted per claim) and try the next task.
//!
//! Claimers do not stampede: a claimer that lost a race recently starts at a random place
//! among the next few tasks of the same priority instead of the head, so concurrent
//! claimers spread over the order; a claimer with no competition takes tasks in exact
//! order.
//!
//! **The claim record is written into the task's own inode.** The winner renames the task
//! to `tasks/.claiming/<task_id>.json`, a place no reader looks, writes the record
//! (`claimed_by`, `claimed_at`, `attempts`, lease) over the file's content there and renames
//! it to `processing/<task_id>.json`. A reader therefore only ever sees a whole file (DESIGN
//! §4), and `processing/<id>.json` carries `claimed_by` as before, but a claim makes no new
//! inode: allocating and freeing one (a staged copy renamed over the old file) cost about ten
//! times what the renames do on ext4. The record is one `pwrite` of at most a page (shorter
//! content padded with spaces, never cut), which a SIGKILL cannot split; a larger task gets
//! a new file as before. The task's stripe lock is held from before the first
//! rename until the second, so `locate` and maintenance, which take or wait for it, never
//! mistake a claim in progress for a leftover; one found in `.claiming/` with the lock free
//! belongs to a claimer that died, and maintenance moves it to processing/, where the rule
//! for unrecorded claims (or for its recorded, dead claimant) requeues it.
//!
//! Nothing of a claim is synced: after a power cut a lost record only means the task is
//! requeued, which at-least-once delivery allows (DESIGN §8), so the claim itself costs no
//! fsync (`CORRAL_QUEUE_CLAIM_SYNC=1` syncs it). A claim whose record cannot be written (a
//! full disk, a refused size) is put back at once, with its old content.

use super::counts::{Counter, Delta};
use super::index::{Head, Index};
use super::layout::{self, state_path};
use super::moves::{self, emit, Durability, Stripes};
use super::task::{time_ns, Task};
use super::task_event;
use super::turn::{Turn, TurnWait};
use super::watch::{FsEvent, Waker, Watcher, Woken};
use crate::error::{Error, IoContext, Result};
use crate::events::EventType;
use crate::home::{Home, TaskState};
use crate::store::ReadError;
use crate::time;
use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// How many tasks of a leaf a contended claimer spreads over.
const SPREAD: usize = 16;

/// How many leaf directories (10 ms of enqueues each) ahead it may start.
const SPREAD_LEAVES: usize = 8;

/// Claims after a lost race during which a claimer keeps spreading.
const CONTENDED_FOR: u32 = 32;

/// Totals since a claimer was created (for the log and the benchmark).
#[derive(Debug, Default, Clone, Copy)]
pub struct ClaimStats {
    /// Renames that found the task already gone.
    pub lost_races: u64,
    /// Tasks claimed.
    pub claims: u64,
    /// Times a wait on the queue was woken by inotify (an arrival, or any other change in
    /// a watched directory).
    pub wakeups: u64,
    /// Times this claimer got the turn to sleep on the queue (see `turn`).
    pub turns: u64,
}

enum Take {
    Won(Box<Task>),
    Lost,
    Skip,
}

/// Claims tasks for one claimant, keeping what it learnt between claims.
///
/// Classes are tried in preference order (one group per `--class`); with no class given,
/// all classes form one group ordered by priority then age across classes. With a watch
/// ([`Claimer::watch`]) the view of the queue is kept current by inotify and a claim reads
/// no directory; without one, each claim reads the few directories along each head.
pub struct Claimer {
    home: Home,
    worker: String,
    explicit: bool,
    index: Index,
    watcher: Option<Watcher>,
    events: Vec<FsEvent>,
    lease_seconds: f64,
    poll: Option<Duration>,
    contended: u32,
    stripes: Stripes,
    counter: Counter,
    seen_classes: HashSet<String>,
    /// `pending/` was listed after its watch started (classes made before are known).
    listed_root: bool,
    /// The next time a delayed task becomes due, from the last look.
    next_due: Option<u64>,
    /// The turn to sleep on the queue, once this claimer has waited (see `turn`).
    turn: Option<Turn>,
    /// Whether idle claimers take turns (default yes).
    take_turns: bool,
    /// Totals since creation.
    pub stats: ClaimStats,
}

impl Claimer {
    /// A claimer for `worker` over `classes` (preference order; empty = all classes). The
    /// lease must be a valid duration (`time::check_secs`) and positive: it is refused here,
    /// before any task moves.
    pub fn new(
        home: &Home,
        worker: &str,
        classes: &[String],
        lease_seconds: f64,
    ) -> Result<Claimer> {
        crate::id::validate("worker", worker)?;
        let mut list = Vec::new();
        for c in classes {
            crate::id::validate("class", c)?;
            if !list.contains(c) {
                list.push(c.clone());
            }
        }
        if time::check_secs("--lease", lease_seconds)? <= 0.0 {
            return Err(Error::Invalid("--lease must be positive".into()));
        }
        let explicit = !list.is_empty();
        Ok(Claimer {
            home: home.clone(),
            worker: worker.to_string(),
            explicit,
            index: Index::new(home, &list),
            watcher: None,
            events: Vec::new(),
            lease_seconds,
            poll: None,
            contended: 0,
            stripes: Stripes::default(),
            counter: Counter::default(),
            seen_classes: list.into_iter().collect(),
            listed_root: false,
            next_due: None,
            turn: None,
            take_turns: true,
            stats: ClaimStats::default(),
        })
    }

    /// Whether this claimer, when idle, waits for its turn to sleep on the queue (the
    /// default) or sleeps on it at once, as every idle claimer did before turns (for the
    /// benchmark's before/after).
    pub fn take_turns(&mut self, yes: bool) {
        self.take_turns = yes;
        if !yes {
            self.turn = None;
        }
    }

    /// The claimant's name.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Also re-reads everything every `secs` while waiting (network filesystems, where
    /// inotify sees only this host's changes).
    pub fn poll_every(&mut self, secs: Option<f64>) -> Result<()> {
        self.poll = match secs {
            None => None,
            Some(s) => {
                let s = time::check_secs("--poll-interval", s)?;
                Some(time::duration(s.max(0.05)))
            }
        };
        Ok(())
    }

    /// Starts the inotify watch. Call it *before* the first claim, so no enqueue between a
    /// look and a wait can be missed. Returns a waker that ends a [`Claimer::claim_wait`].
    pub fn watch(&mut self) -> Result<Waker> {
        if let Some(w) = &self.watcher {
            return Ok(w.waker());
        }
        let w = Watcher::new()?;
        self.index.reset(None);
        // `pending/` is watched in any case: a class directory may appear after the wait
        // began (or be removed and made again).
        self.index.watch_root(&w)?;
        let waker = w.waker();
        self.watcher = Some(w);
        Ok(waker)
    }

    /// The watcher, for a caller that polls it together with other descriptors.
    pub fn watcher(&self) -> Option<&Watcher> {
        self.watcher.as_ref()
    }

    fn refresh(&mut self) -> Result<bool> {
        let mut arrived = false;
        if let Some(w) = &mut self.watcher {
            self.events.clear();
            w.drain(&mut self.events)?;
            let (a, new) = self.index.apply(&self.events, self.watcher.as_ref());
            arrived = a;
            for c in new {
                if !self.explicit && self.seen_classes.insert(c.clone()) {
                    self.index.add_class(&c);
                }
            }
        } else {
            self.index.reset(None);
        }
        if !self.explicit && (self.watcher.is_none() || !self.listed_root) {
            self.listed_root = self.watcher.is_some();
            for c in layout::classes(&self.home)? {
                if self.seen_classes.insert(c.clone()) {
                    self.index.add_class(&c);
                }
            }
        }
        Ok(arrived)
    }

    /// One claim attempt over all groups, in preference order. `Ok(None)` when there is
    /// nothing to claim right now.
    pub fn try_claim(&mut self) -> Result<Option<Task>> {
        self.refresh()?;
        let now_ns = time_ns(time::now());
        self.next_due = None;
        let mut lost = 0u64;
        let groups: Vec<Vec<usize>> = if self.explicit {
            (0..self.index.len()).map(|i| vec![i]).collect()
        } else {
            vec![(0..self.index.len()).collect()]
        };
        for group in groups {
            // Bounded: every lost race or skip removes a name from the view.
            for _ in 0..10_000 {
                let Some(head) = self.group_head(&group, now_ns)? else {
                    break;
                };
                // A claimer that lost races lately starts at a random place a little
                // ahead instead of at the head its rivals also see.
                let pick = if self.contended > 0 {
                    self.index
                        .spread_pick(&head, SPREAD_LEAVES, SPREAD, now_ns, self.watcher.as_ref())?
                        .unwrap_or(head)
                } else {
                    head
                };
                let taken = self.take(&pick, lost)?;
                self.index.forget(&pick, &pick.key);
                match taken {
                    Take::Won(task) => {
                        self.contended = self.contended.saturating_sub(1);
                        self.stats.claims += 1;
                        // Busy now: the next arrival is for another idle claimer.
                        if let Some(t) = &mut self.turn {
                            t.release();
                        }
                        self.quarantine_strays();
                        return Ok(Some(*task));
                    }
                    Take::Lost => {
                        lost += 1;
                        self.stats.lost_races += 1;
                        self.contended = CONTENDED_FOR;
                    }
                    Take::Skip => {}
                }
            }
        }
        self.quarantine_strays();
        if tracing::enabled!(tracing::Level::DEBUG) {
            self.log_nothing(lost);
        }
        Ok(None)
    }

    fn group_head(&mut self, group: &[usize], now_ns: u64) -> Result<Option<Head>> {
        let mut best: Option<Head> = None;
        for &ci in group {
            let (h, due) = self.index.class_head(ci, now_ns, self.watcher.as_ref())?;
            if let Some(d) = due {
                self.next_due = Some(self.next_due.map_or(d, |x| x.min(d)));
            }
            if let Some(h) = h {
                if best.as_ref().is_none_or(|b| h.key < b.key) {
                    best = Some(h);
                }
            }
        }
        Ok(best)
    }

    fn quarantine_strays(&mut self) {
        for p in std::mem::take(&mut self.index.strays) {
            if p.is_file() {
                moves::quarantine(
                    &self.home,
                    &p,
                    "not a task file name (<prio>-<ns:020>-<task_id>.json) in a pending bucket",
                );
            }
        }
    }

    fn take(&mut self, head: &Head, lost: u64) -> Result<Take> {
        let from = head.path.as_path();
        let Some(parsed) =
            layout::parse_lenient(from.file_name().and_then(|n| n.to_str()).unwrap_or(""))
        else {
            return Ok(Take::Skip);
        };
        let id = parsed.task_id.to_string();
        let class = self.index.class_name(head.class).to_string();
        let hold = layout::claiming_path(&self.home, &id);
        tracing::trace!("attempting claim: {id}");
        // The task's stripe lock is held from before the rename until the task is in
        // processing/, so whoever holds it never finds the task in `.claiming/` unless its
        // claimer died (see the module comment).
        let guard = self.stripes.lock(&self.home, &id)?;
        let mut tries = 0;
        loop {
            match moves::rename_noreplace(from, &hold) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    // Either the task is gone (a lost race) or `.claiming/` is (a new or
                    // tidied home): only the second is worth a `mkdir`.
                    if tries == 0 && std::fs::symlink_metadata(from).is_ok() {
                        tries += 1;
                        make_claiming_dir(&self.home)?;
                        continue;
                    }
                    tracing::debug!("lost race: {id} in {class} (claimed by another worker)");
                    return Ok(Take::Lost);
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    tracing::warn!(
                        "task {id} is already being claimed (a dead claimer's {}?); leaving {} \
                         to maintenance",
                        hold.display(),
                        from.display()
                    );
                    return Ok(Take::Skip);
                }
                Err(e) => {
                    return Err(Error::io(
                        format!(
                            "cannot claim {} (rename to {})",
                            from.display(),
                            hold.display()
                        ),
                        e,
                    ))
                }
            }
        }
        let (file, original) = match open_held(&hold) {
            Ok(x) => x,
            Err(ReadError::Missing) => return Ok(Take::Lost),
            Err(ReadError::Refused(why)) => {
                drop(guard);
                moves::quarantine(&self.home, &hold, &why);
                self.count_out(&class);
                return Ok(Take::Skip);
            }
            Err(ReadError::Io(e)) => {
                let _ = moves::rename_into_pending(&self.home, &hold, from, Durability::Atomic);
                return Err(e);
            }
        };
        let mut task = match Task::from_slice(&original) {
            Ok(t) => t,
            Err(e) => {
                drop(guard);
                moves::quarantine(&self.home, &hold, &e.to_string());
                self.count_out(&class);
                return Ok(Take::Skip);
            }
        };
        if task.task_id != id || task.class != class {
            drop(guard);
            let why = format!(
                "name says task {id} of class {class}, content says task {} of class {}",
                task.task_id, task.class
            );
            moves::quarantine(&self.home, &hold, &why);
            self.count_out(&class);
            return Ok(Take::Skip);
        }
        let to = state_path(&self.home, TaskState::Processing, &id);
        if !task.is_unrecorded_claim() {
            // Not a plain pending task (a crash left a later state in it): processing/ is
            // where maintenance finishes such moves, as it did before claims were held.
            if let Err(e) = moves::rename_noreplace(&hold, &to) {
                tracing::warn!("cannot move {} on: {e}", hold.display());
            }
            return Ok(Take::Skip);
        }
        let now = time::now();
        task.reset_claim();
        task.transition(TaskState::Processing, Some(&self.worker), "claimed", now);
        task.attempts = task.attempts.saturating_add(1);
        task.claimed_by = Some(self.worker.clone());
        task.claimed_at = Some(now);
        task.lease_seconds = Some(self.lease_seconds);
        task.lease_expires_at = Some(time::add_secs(now, self.lease_seconds));
        let sync = claim_sync();
        // In place only when both contents fit in one page: a write of one page is never
        // cut short by a SIGKILL, so a claimer killed here leaves the old content or the new
        // one, never a mix. A larger task gets a new file, as every claim did before.
        let home = self.home.clone();
        let mut in_place = false;
        let written = task.to_bytes().and_then(|bytes| {
            crate::store::check_size(&to, bytes.len())?;
            if bytes.len() <= IN_PLACE_MAX && original.len() <= IN_PLACE_MAX {
                in_place = true;
                rewrite(&file, original.len(), &bytes, sync)
                    .ctx("write the claim record into", &hold)
            } else {
                replace(&home, &hold, &bytes, sync)
            }
        });
        let placed = written.and_then(|()| match moves::rename_noreplace(&hold, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(Error::Conflict(format!(
                "task {id} is already in processing/; leaving {} alone (run `corral doctor`)",
                from.display()
            ))),
            Err(e) => Err(Error::io(format!("cannot rename into {}", to.display()), e)),
        });
        if let Err(e) = placed {
            // Put it back as it was rather than strand it (a full disk, a refused size, a
            // duplicate id in processing/): in the inode it was written into, or (after a
            // new file replaced it) as a new file again.
            let restored = if in_place {
                file.metadata()
                    .and_then(|m| rewrite(&file, m.len() as usize, &original, false))
                    .ctx("restore", &hold)
            } else {
                replace(&self.home, &hold, &original, false)
            };
            let back = restored.and_then(|()| {
                moves::rename_into_pending(&self.home, &hold, from, Durability::Atomic)
            });
            drop(guard);
            return match (back, e) {
                (Ok(()), Error::Invalid(why)) => {
                    moves::quarantine(&self.home, from, &why);
                    Ok(Take::Skip)
                }
                (Ok(()), Error::Conflict(why)) => {
                    tracing::warn!("{why}");
                    Ok(Take::Skip)
                }
                (_, e) => Err(e),
            };
        }
        if sync {
            moves::sync_dir(&self.home.tasks_dir(TaskState::Processing))?;
        }
        drop(guard);
        drop(file);
        self.count_out(&class);
        tracing::debug!(
            "claimed {} task {} ({}) for {} after {lost} lost races",
            task.class,
            task.task_id,
            task.priority.as_str(),
            self.worker
        );
        emit(
            &self.home,
            task_event(
                EventType::TaskClaimed,
                &task,
                format!("{} claimed {}", self.worker, task.task_id),
            )
            .with("lost_races", lost),
        );
        Ok(Take::Won(Box::new(task)))
    }

    fn count_out(&mut self, class: &str) {
        self.counter
            .add(&self.home, class, &Delta::add(TaskState::Pending, -1));
    }

    fn log_nothing(&self, lost: u64) {
        let preferred = if self.explicit {
            format!(
                "[{}]",
                self.index.class_names().collect::<Vec<_>>().join(", ")
            )
        } else {
            "all".to_string()
        };
        if lost > 0 {
            tracing::debug!(
                "claim attempt by {}: {lost} tasks seen in {preferred}, all claimed by others",
                self.worker
            );
            return;
        }
        let summary: Vec<String> = super::counts::read_all(&self.home)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(c, n)| {
                n.filter(|n| n.pending > 0)
                    .map(|n| format!("{c}:{}", n.pending))
            })
            .collect();
        if summary.is_empty() {
            tracing::debug!("claim by {}: queue empty", self.worker);
        } else {
            tracing::debug!(
                "claim by {}: no suitable tasks - queue: [{}], preferred: {preferred}",
                self.worker,
                summary.join(", ")
            );
        }
    }

    /// Claims, sleeping on inotify until a task arrives (or a delayed one falls due),
    /// `deadline` passes (`Ok(None)`), or the waker from [`Claimer::watch`] is used.
    pub fn claim_wait(&mut self, deadline: Option<Instant>) -> Result<Option<Task>> {
        self.watch()?;
        loop {
            if let Some(t) = self.try_claim()? {
                return Ok(Some(t));
            }
            // Not on a network filesystem: there the one on watch would see only its own
            // host's arrivals at once, and the others' only at its next poll.
            if self.take_turns && self.poll.is_none() && self.turn.is_none() {
                let classes: Vec<String> = if self.explicit {
                    self.index.class_names().map(str::to_string).collect()
                } else {
                    Vec::new()
                };
                self.turn = Some(Turn::new(&self.home, &classes)?);
            }
            if let (Some(turn), Some(w)) = (&mut self.turn, &self.watcher) {
                if !turn.held() {
                    let before = turn.taken;
                    let waited = turn.wait(w.fds().1, deadline)?;
                    self.stats.turns += turn.taken - before;
                    match waited {
                        // Look again before sleeping on the queue.
                        TurnWait::Got => continue,
                        TurnWait::Woken => {
                            w.take_wake();
                            return Ok(None);
                        }
                        TurnWait::Deadline => return Ok(None),
                    }
                }
            }
            loop {
                let mut until = deadline;
                if let Some(due) = self.next_due {
                    let wait = due.saturating_sub(time_ns(time::now()));
                    let at = Instant::now() + Duration::from_nanos(wait);
                    until = Some(until.map_or(at, |d| d.min(at)));
                }
                let poll_at = self.poll.map(|p| Instant::now() + p);
                if let Some(p) = poll_at {
                    until = Some(until.map_or(p, |d| d.min(p)));
                }
                let Some(w) = &self.watcher else {
                    return Ok(None);
                };
                let woken: Woken = w.wait(until)?;
                if woken.waker {
                    return Ok(None);
                }
                if woken.fs {
                    self.stats.wakeups += 1;
                    if self.refresh()? {
                        break;
                    }
                    continue;
                }
                // A deadline: the caller's, a due task, or a poll.
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
                if poll_at.is_some() {
                    // Another host's enqueue: make the NFS client drop what it cached of
                    // pending/ (a class dir it remembers as missing) before the walk.
                    let root = layout::pending_root(&self.home);
                    let _ = crate::netfs::revalidate_dir(&root);
                    for c in self.index.class_names() {
                        let _ = crate::netfs::revalidate_dir(&root.join(c));
                    }
                    self.index.reset(self.watcher.as_ref());
                }
                break;
            }
        }
    }
}

/// Makes `tasks/.claiming/` (its parent must exist: no home is made here).
fn make_claiming_dir(home: &Home) -> Result<()> {
    let d = layout::claiming_dir(home);
    match crate::perms::mkdir(&d, crate::perms::modes(home)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("cannot create {}", d.display()), e)),
    }
}

/// Opens a held task for reading and rewriting, with the checks every task read has (no
/// symlink, a regular file, the size limit) and one more: a single link, since the record
/// is written into this very inode.
fn open_held(path: &Path) -> std::result::Result<(File, Vec<u8>), ReadError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let io = |what: &str, e: std::io::Error| {
        ReadError::Io(Error::io(format!("cannot {what} {}", path.display()), e))
    };
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(ReadError::Refused("symlink refused".into()))
        }
        // Opened for writing, a directory fails here rather than at the `fstat` below.
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            return Err(ReadError::Refused(
                "not a regular file (a directory)".into(),
            ))
        }
        Err(e) => return Err(io("open", e)),
    };
    let meta = f.metadata().map_err(|e| io("stat", e))?;
    if !meta.is_file() {
        return Err(ReadError::Refused("not a regular file".into()));
    }
    if meta.nlink() != 1 {
        return Err(ReadError::Refused(format!(
            "{} hard links (a task file has one)",
            meta.nlink()
        )));
    }
    if meta.len() > crate::store::MAX_FILE_BYTES {
        return Err(ReadError::Refused(format!(
            "file too large ({} bytes, limit {})",
            meta.len(),
            crate::store::MAX_FILE_BYTES
        )));
    }
    // Exactly the size the `stat` gave: nobody else writes a task held in `.claiming/`, so
    // there is no end to look for past it (one `read`, not a second one that finds EOF).
    let mut buf = vec![0u8; meta.len() as usize];
    f.read_exact(&mut buf).map_err(|e| io("read", e))?;
    Ok((f, buf))
}

/// The largest task file a claim rewrites in place: one page.
const IN_PLACE_MAX: usize = 4096;

/// Replaces the content of a held task in place (its data synced when `sync`), with one
/// `pwrite` at offset 0: content shorter than the `len` bytes there now is padded with
/// spaces (JSON allows trailing whitespace), so the file is never cut and no moment shows a
/// mix.
fn rewrite(f: &File, len: usize, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    if bytes.len() < len {
        let mut padded = Vec::with_capacity(len);
        padded.extend_from_slice(bytes);
        padded.resize(len, b' ');
        f.write_all_at(&padded, 0)?;
    } else {
        f.write_all_at(bytes, 0)?;
    }
    if sync {
        f.sync_data()?;
    }
    Ok(())
}

/// Replaces a held task with a new file of `bytes` (staged, renamed over it).
fn replace(home: &Home, hold: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let d = if sync {
        Durability::Durable
    } else {
        Durability::Atomic
    };
    let tmp = moves::stage(home, bytes, d)?;
    std::fs::rename(&tmp, hold).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("cannot rename into {}", hold.display()), e)
    })
}

/// Whether the claim record's data is synced (`CORRAL_QUEUE_CLAIM_SYNC=1`; default no, see
/// the module comment).
fn claim_sync() -> bool {
    static SYNC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SYNC.get_or_init(|| {
        matches!(
            std::env::var("CORRAL_QUEUE_CLAIM_SYNC").as_deref(),
            Ok("1") | Ok("true") | Ok("yes")
        )
    })
}
