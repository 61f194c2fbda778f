//! Adding tasks: one at a time (`enqueue`), or many from JSON lines (`enqueue --jsonl`).
//!
//! One task is staged in `.tmp/`, synced, renamed into its bucket and the bucket synced: it
//! appears whole or not at all, and survives a power cut once the call returns. A bulk load
//! does the same per batch of tasks with two `syncfs` calls instead of two syncs per task:
//! every staged file is synced before any of them is renamed into place, so each task is
//! still atomic, and the renames are synced before any id is reported. The syncs and renames
//! of one batch run in a helper thread while the next batch is staged, so a load waits for
//! the disk only when staging is faster than syncing; a batch is handed over once it has
//! [`MIN_BATCH`] tasks and the helper is free (at most [`BATCH`] tasks or `BATCH_BYTES`).
//! One `task_enqueued` is logged per batch.

use super::counts::{self, Delta};
use super::deps::{self, DepState};
use super::ids;
use super::layout::{self, check_real_dir, class_dir, pending_root, state_path};
use super::moves::{self, emit, Durability};
use super::task::{time_ns, Task, DEFAULT_MAX_ATTEMPTS, MAX_TASK_BYTES};
use crate::error::{Error, Result};
use crate::events::{Event, EventType};
use crate::home::{Home, TaskState};
use crate::spec::Priority;
use crate::time::{self, Timestamp};
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;

/// Most tasks in one bulk batch (one pair of syncs, one event).
pub const BATCH: usize = 16_384;

/// Fewest tasks in a bulk batch that ends before [`BATCH`] (or the input) does. A batch is
/// handed to the helper once it has this many and the helper is free: `syncfs` writes out
/// everything dirty on the filesystem, other processes' data included, so what a sync costs
/// has little to do with the batch, and a fixed batch size spent much of a load waiting.
pub const MIN_BATCH: usize = 256;

/// Most bytes of task files staged in one batch.
const BATCH_BYTES: usize = 64 << 20;

/// What to enqueue.
#[derive(Debug, Clone)]
pub struct EnqueueRequest {
    pub class: String,
    pub priority: Priority,
    pub name: Option<String>,
    /// Explicit id (unique across all states, exit 5 on a duplicate); `None` generates one,
    /// unique by construction.
    pub id: Option<String>,
    pub payload: Value,
    pub max_attempts: Option<u32>,
    /// Not claimable before this time.
    pub not_before: Option<Timestamp>,
    /// Claimable only once all of these have completed.
    pub after: Vec<String>,
    /// Seconds `work` lets the command run.
    pub timeout_seconds: Option<f64>,
}

impl EnqueueRequest {
    /// A request with defaults: medium priority, no payload.
    pub fn new(class: &str) -> EnqueueRequest {
        EnqueueRequest {
            class: class.to_string(),
            priority: Priority::Medium,
            name: None,
            id: None,
            payload: Value::Null,
            max_attempts: None,
            not_before: None,
            after: Vec::new(),
            timeout_seconds: None,
        }
    }
}

/// Writes a new task atomically and logs `task_enqueued`.
pub fn enqueue(home: &Home, req: &EnqueueRequest) -> Result<Task> {
    enqueue_with(home, req, true)
}

fn build(req: &EnqueueRequest, now: Timestamp, ns: u64) -> Result<Task> {
    crate::id::validate("class", &req.class)?;
    if let Some(id) = &req.id {
        crate::id::validate("task", id)?;
    }
    if req.max_attempts == Some(0) {
        return Err(Error::Invalid("--max-attempts must be at least 1".into()));
    }
    if let Some(t) = req.timeout_seconds {
        if time::check_secs("timeout", t)? == 0.0 {
            return Err(Error::Invalid("a task timeout must be positive".into()));
        }
    }
    let mut after: Vec<String> = Vec::new();
    for d in &req.after {
        crate::id::validate("task", d)?;
        if req.id.as_deref() == Some(d.as_str()) {
            return Err(Error::Invalid(format!("task {d} cannot run after itself")));
        }
        if !after.contains(d) {
            after.push(d.clone());
        }
    }
    let task_id = req
        .id
        .clone()
        .unwrap_or_else(|| crate::id::new_task_id(now));
    let mut t = Task::new(task_id, req.class.clone(), req.priority, now);
    t.enqueued_ns = ns;
    t.name = req.name.clone();
    t.payload = req.payload.clone();
    t.max_attempts = req.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    t.not_before = req.not_before.filter(|nb| time_ns(*nb) > ns);
    t.after = after;
    t.timeout_seconds = req.timeout_seconds;
    t.history.push(super::task::TaskTransition {
        at: now,
        from: None,
        to: "pending".into(),
        by: None,
        reason: "enqueued".into(),
    });
    Ok(t)
}

fn check_size(bytes: &[u8]) -> Result<()> {
    if bytes.len() > MAX_TASK_BYTES {
        return Err(Error::Invalid(format!(
            "task too large: {} bytes (limit {MAX_TASK_BYTES})",
            bytes.len()
        )));
    }
    Ok(())
}

/// Refuses a class directory (or `pending/` itself) that is a symlink.
fn check_class_dir(home: &Home, class: &str) -> Result<()> {
    check_real_dir(&pending_root(home))?;
    check_real_dir(&class_dir(home, class))?;
    Ok(())
}

/// Takes an explicit id: exit 5 when any task has it.
fn reserve_id(home: &Home, id: &str, hint: Option<&PathBuf>, sync: bool) -> Result<()> {
    if !ids::initialised(home) {
        // A home from before the id index: index its pending explicit ids once.
        super::ids_backfill(home)?;
    }
    let taken = |st: &str| Error::Conflict(format!("task {id} already exists (in {st}/)"));
    if !ids::reserve(home, id, hint.map(PathBuf::as_path), sync)? {
        let where_ = moves::locate(home, id)?
            .map(|(st, _)| st.name())
            .unwrap_or("the id index");
        return Err(taken(where_));
    }
    let found = if ids::looks_generated(id) {
        moves::locate(home, id)?.map(|(st, _)| st)
    } else {
        moves::FILED
            .into_iter()
            .find(|st| state_path(home, *st, id).exists())
    };
    if let Some(st) = found {
        ids::release(home, id);
        return Err(taken(st.name()));
    }
    Ok(())
}

fn enqueued_event(task: &Task) -> Event {
    let mut ev = super::task_event(
        EventType::TaskEnqueued,
        task,
        format!("{} enqueued in {}", task.task_id, task.class),
    );
    if let Some(nb) = task.not_before {
        ev = ev.with("not_before", time::format(&nb));
    }
    if !task.after.is_empty() {
        ev = ev
            .with("after", task.after.clone())
            .with("deferred", task.state == TaskState::Deferred);
    }
    ev
}

/// [`enqueue`] with the event optional, for callers that log a summary instead.
pub fn enqueue_with(home: &Home, req: &EnqueueRequest, log_event: bool) -> Result<Task> {
    let now = time::now();
    let mut task = build(req, now, time_ns(now))?;
    let bytes = task.to_bytes()?;
    check_size(&bytes)?;
    check_class_dir(home, &task.class)?;
    counts::ensure_initialised(home)?;
    let dest = layout::pending_path(home, &task);
    if let Some(id) = &req.id {
        reserve_id(home, id, Some(&dest), true)?;
    }
    let res = place(home, &mut task, bytes, dest, log_event);
    if res.is_err() {
        if let Some(id) = &req.id {
            ids::release(home, id);
        }
    }
    res.map(|_| task)
}

/// Puts a built task where its dependencies say: pending, deferred, or straight to failed.
fn place(
    home: &Home,
    task: &mut Task,
    bytes: Vec<u8>,
    dest: PathBuf,
    log_event: bool,
) -> Result<()> {
    let dep = if task.after.is_empty() {
        DepState::Ready
    } else {
        deps::check(home, &task.after, true)?
    };
    if let DepState::Missing(d) = &dep {
        return Err(Error::NotFound(format!(
            "no such task: {d} (named by --after)"
        )));
    }
    match dep {
        DepState::Ready | DepState::Missing(_) => {
            let tmp = moves::stage(home, &bytes, Durability::Durable)?;
            moves::rename_into_pending(home, &tmp, &dest, Durability::Durable).inspect_err(
                |_| {
                    let _ = std::fs::remove_file(&tmp);
                },
            )?;
            counts::add(home, &task.class, &Delta::add(TaskState::Pending, 1));
            if log_event {
                emit(home, enqueued_event(task));
            }
            tracing::debug!("enqueued {} in {}", task.task_id, task.class);
        }
        DepState::Waiting => {
            task.state = TaskState::Deferred;
            if let Some(h) = task.history.last_mut() {
                h.to = "deferred".into();
                h.reason = format!("enqueued after {}", task.after.join(", "));
            }
            let bytes = task.to_bytes()?;
            deps::add_markers(home, task)?;
            place_new(home, TaskState::Deferred, task, &bytes)?;
            if log_event {
                emit(home, enqueued_event(task));
            }
            // A dependency may have finished between the check and the markers.
            deps::settle(home, &task.task_id)?;
        }
        DepState::Dead(why) => {
            let now = time::now();
            task.set_error(why.clone(), super::task::MAX_ERROR_BYTES);
            task.failed_at = Some(now);
            task.transition(TaskState::Failed, None, &why, now);
            let bytes = task.to_bytes()?;
            place_new(home, TaskState::Failed, task, &bytes)?;
            if log_event {
                emit(home, enqueued_event(task));
            }
            emit(home, super::dead_lettered_event(task, &why));
        }
    }
    Ok(())
}

/// Writes a new task straight into `state`'s directory (not pending: deferred or failed),
/// durably, and counts it.
fn place_new(home: &Home, state: TaskState, task: &Task, bytes: &[u8]) -> Result<()> {
    let dir = layout::ensure_state_dir(home, state)?;
    let path = state_path(home, state, &task.task_id);
    let tmp = moves::stage(home, bytes, Durability::Durable)?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("cannot rename into {}", path.display()), e)
    })?;
    moves::sync_dir(&dir)?;
    counts::add(home, &task.class, &Delta::add(state, 1));
    Ok(())
}

/// Defaults for the lines of a bulk load (`enqueue --jsonl` flags).
#[derive(Debug, Clone)]
pub struct BulkOptions {
    pub class: String,
    pub priority: Priority,
    pub max_attempts: Option<u32>,
    pub not_before: Option<Timestamp>,
    pub timeout_seconds: Option<f64>,
}

/// What a bulk load did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BulkSummary {
    pub enqueued: u64,
    pub batches: u64,
    /// Enqueued tasks whose ids `out` could not take (its reader was gone).
    pub unreported: u64,
}

const OBJECT_KEYS: [&str; 8] = [
    "payload",
    "priority",
    "id",
    "name",
    "max_attempts",
    "not_before",
    "after",
    "timeout_seconds",
];

/// Reads one line of a bulk load into a request: an object with a `payload` key and only
/// the keys of [`OBJECT_KEYS`] is a task description; any other JSON value is a payload.
pub fn parse_line(line: &str, opts: &BulkOptions) -> Result<EnqueueRequest> {
    let v: Value =
        serde_json::from_str(line).map_err(|e| Error::Invalid(format!("not valid JSON: {e}")))?;
    let mut req = EnqueueRequest::new(&opts.class);
    req.priority = opts.priority;
    req.max_attempts = opts.max_attempts;
    req.not_before = opts.not_before;
    req.timeout_seconds = opts.timeout_seconds;
    let described = v.as_object().is_some_and(|o| {
        o.contains_key("payload") && o.keys().all(|k| OBJECT_KEYS.contains(&k.as_str()))
    });
    if !described {
        req.payload = v;
        return Ok(req);
    }
    let Value::Object(mut o) = v else {
        return Err(Error::Internal("object expected".into()));
    };
    let bad = |k: &str, want: &str| Error::Invalid(format!("\"{k}\" must be {want}"));
    req.payload = o.remove("payload").unwrap_or(Value::Null);
    if let Some(p) = o.remove("priority") {
        req.priority = match &p {
            Value::String(s) => Priority::parse(s),
            Value::Number(n) => n
                .as_u64()
                .filter(|r| *r <= 3)
                .map(|r| layout::priority_of_rank(r as u8)),
            _ => None,
        }
        .ok_or_else(|| bad("priority", "critical, high, medium, low or 0-3"))?;
    }
    if let Some(v) = o.remove("id") {
        req.id = Some(v.as_str().ok_or_else(|| bad("id", "a string"))?.to_string());
    }
    if let Some(v) = o.remove("name") {
        req.name = v.as_str().map(str::to_string);
    }
    if let Some(v) = o.remove("max_attempts") {
        let n = v
            .as_u64()
            .filter(|n| *n >= 1 && *n <= u64::from(u32::MAX))
            .ok_or_else(|| bad("max_attempts", "an integer of at least 1"))?;
        req.max_attempts = Some(n as u32);
    }
    if let Some(v) = o.remove("not_before") {
        let s = v
            .as_str()
            .ok_or_else(|| bad("not_before", "an RFC 3339 time"))?;
        req.not_before = Some(time::parse(s)?);
    }
    if let Some(v) = o.remove("after") {
        req.after = match v {
            Value::String(s) => vec![s],
            Value::Array(a) => a
                .into_iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("after", "a task id or a list of task ids"))?,
            _ => return Err(bad("after", "a task id or a list of task ids")),
        };
    }
    if let Some(v) = o.remove("timeout_seconds") {
        let s = v
            .as_f64()
            .ok_or_else(|| bad("timeout_seconds", "a number of seconds"))?;
        req.timeout_seconds = Some(time::check_secs("timeout_seconds", s)?);
    }
    Ok(req)
}

struct Staged {
    task: Task,
    tmp: PathBuf,
    dest: PathBuf,
    len: usize,
}

/// What the helper did with a batch: its first `durable` tasks are in place, counted and
/// synced, to be reported; `err` says why the rest were not (a task renamed but not known
/// to be on disk is in place and counted, not reported).
struct Placed {
    batch: Vec<Staged>,
    durable: usize,
    err: Option<Error>,
}

/// Puts one staged batch in place: a sync (every staged file's data on disk before any of
/// them is renamed into place), the renames in input order, the count, and a sync (the
/// renames on disk before any id is reported). On an error the rest of the batch is
/// removed and its ids released.
fn place_batch(home: &Home, class: &str, batch: Vec<Staged>) -> Placed {
    let tmp_dir = home.tmp_dir();
    let mut placed = 0usize;
    let mut err = moves::sync_fs(&tmp_dir).err();
    if err.is_none() {
        for s in &batch {
            if let Err(e) = moves::rename_into_pending(home, &s.tmp, &s.dest, Durability::Atomic) {
                err = Some(e);
                break;
            }
            placed += 1;
        }
    }
    let mut durable = placed;
    if placed > 0 {
        counts::add(home, class, &Delta::add(TaskState::Pending, placed as i64));
        if let Err(e) = moves::sync_fs(&tmp_dir) {
            err = Some(e);
            durable = 0;
        }
    }
    abandon(home, &batch[placed..]);
    Placed {
        batch,
        durable,
        err,
    }
}

/// Removes staged files that will not be placed and releases their ids. A file already
/// renamed into place is not in `.tmp/` any more, so removing its staged name is a no-op.
fn abandon(home: &Home, staged: &[Staged]) {
    for s in staged {
        let _ = std::fs::remove_file(&s.tmp);
        ids::release(home, &s.task.task_id);
    }
}

/// The main thread's side of a bulk load: the batch being staged, whether the helper has
/// one, and what has been reported.
struct Loader<'a, O> {
    home: &'a Home,
    class: &'a str,
    out: O,
    staged: Vec<Staged>,
    bytes: usize,
    to_helper: std::sync::mpsc::Sender<Vec<Staged>>,
    from_helper: std::sync::mpsc::Receiver<Placed>,
    in_flight: bool,
    sum: BulkSummary,
    /// Tasks placed after `out` found its reader gone (stdout closed, `| head -1`): the
    /// load goes on, since only a bad line stops it, and says so at the end.
    unreported: u64,
}

impl<O: FnMut(&Task) -> Result<()>> Loader<'_, O> {
    fn push(&mut self, s: Staged) -> Result<()> {
        self.bytes += s.len;
        self.staged.push(s);
        if self.in_flight {
            if let Ok(p) = self.from_helper.try_recv() {
                self.in_flight = false;
                self.report(p)?;
            }
        }
        let n = self.staged.len();
        if n >= BATCH || self.bytes >= BATCH_BYTES || (n >= MIN_BATCH && !self.in_flight) {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Waits for the helper's batch, if any, and reports it.
    fn wait(&mut self) -> Result<()> {
        if !self.in_flight {
            return Ok(());
        }
        self.in_flight = false;
        match self.from_helper.recv() {
            Ok(p) => self.report(p),
            Err(_) => Err(helper_gone()),
        }
    }

    /// Hands the staged batch to the helper (after the one it has, if any).
    fn hand_over(&mut self) -> Result<()> {
        self.wait()?;
        if self.staged.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.staged);
        self.bytes = 0;
        if let Err(back) = self.to_helper.send(batch) {
            abandon(self.home, &back.0);
            return Err(helper_gone());
        }
        self.in_flight = true;
        Ok(())
    }

    /// Puts everything staged in place and reports it.
    fn finish(&mut self) -> Result<()> {
        self.hand_over()?;
        self.wait()
    }

    /// Logs one event for a placed batch and passes each of its tasks to `out`, in order;
    /// returns the helper's error, if it had one.
    fn report(&mut self, p: Placed) -> Result<()> {
        let done = &p.batch[..p.durable];
        if let (Some(first), Some(last)) = (done.first(), done.last()) {
            let class = self.class;
            moves::emit(
                self.home,
                Event::new(
                    EventType::TaskEnqueued,
                    format!("{} tasks enqueued in {class} (bulk)", done.len()),
                )
                .task(&first.task.task_id)
                .with("class", class)
                .with("count", done.len() as u64)
                .with("first_task_id", first.task.task_id.clone())
                .with("last_task_id", last.task.task_id.clone())
                .with("bulk", true),
            );
            self.sum.batches += 1;
            self.sum.enqueued += done.len() as u64;
        }
        for s in done {
            self.tell(&s.task)?;
        }
        match p.err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<O: FnMut(&Task) -> Result<()>> Loader<'_, O> {
    /// Passes a placed task to `out`. Once `out`'s reader is gone (a closed pipe) the rest
    /// are only counted: the load is not cut short by what reads its ids.
    fn tell(&mut self, t: &Task) -> Result<()> {
        if self.unreported > 0 {
            self.unreported += 1;
            return Ok(());
        }
        match (self.out)(t) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
                self.unreported = 1;
                Ok(())
            }
            other => other,
        }
    }
}

fn helper_gone() -> Error {
    Error::Internal("the bulk load's helper thread stopped".into())
}

impl<O> Drop for Loader<'_, O> {
    /// A load that stops early (a bad line, a failed `out`) leaves no staged files behind.
    fn drop(&mut self) {
        abandon(self.home, &self.staged);
    }
}

/// Loads tasks from JSON lines. `out` is called with each task once it is in place (in
/// input order); a bad line stops the load with exit 6 naming its line number, after the
/// tasks before it are in place and reported.
pub fn enqueue_bulk(
    home: &Home,
    input: impl BufRead,
    opts: &BulkOptions,
    out: impl FnMut(&Task) -> Result<()>,
) -> Result<BulkSummary> {
    crate::id::validate("class", &opts.class)?;
    check_class_dir(home, &opts.class)?;
    counts::ensure_initialised(home)?;
    let class = opts.class.as_str();
    std::thread::scope(|scope| {
        let (to_helper, batches) = std::sync::mpsc::channel::<Vec<Staged>>();
        let (placed, from_helper) = std::sync::mpsc::channel::<Placed>();
        std::thread::Builder::new()
            .name("corral-bulk".into())
            .spawn_scoped(scope, move || {
                for batch in batches {
                    if placed.send(place_batch(home, class, batch)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("cannot start the bulk load's helper thread", e))?;
        let mut load = Loader {
            home,
            class,
            out,
            staged: Vec::new(),
            bytes: 0,
            to_helper,
            from_helper,
            in_flight: false,
            sum: BulkSummary::default(),
            unreported: 0,
        };
        // What was staged before a bad line is put in place and reported first.
        let bad_line = load_lines(&mut load, input, opts)?;
        load.finish()?;
        if load.unreported > 0 {
            // Never silent: the ids of these tasks were not printed, but they are queued.
            tracing::warn!(
                "output closed: the last {} of {} enqueued task ids were not printed (the tasks are enqueued)",
                load.unreported,
                load.sum.enqueued
            );
        }
        load.sum.unreported = load.unreported;
        match bad_line {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut load.sum)),
        }
    })
}

/// Stages the lines into `load`. `Ok(Some(e))`: a bad line stopped it (what came before is
/// still to be put in place); `Err`: the load itself failed.
fn load_lines<O: FnMut(&Task) -> Result<()>>(
    load: &mut Loader<'_, O>,
    input: impl BufRead,
    opts: &BulkOptions,
) -> Result<Option<Error>> {
    let home = load.home;
    let mut last_ns = 0u64;
    let mut lineno = 0u64;
    let mut input = input;
    let mut buf = Vec::new();
    loop {
        lineno += 1;
        let line = match read_line(&mut input, &mut buf, MAX_TASK_BYTES) {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => return Ok(Some(Error::Invalid(format!("line {lineno}: {e}")))),
        };
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: Error| match e {
            Error::Invalid(m) => Error::Invalid(format!("line {lineno}: {m}")),
            Error::Conflict(m) => Error::Conflict(format!("line {lineno}: {m}")),
            Error::NotFound(m) => Error::NotFound(format!("line {lineno}: {m}")),
            other => other,
        };
        let req = match parse_line(line, opts) {
            Ok(r) => r,
            Err(e) => return Ok(Some(at(e))),
        };
        if !req.after.is_empty() {
            // Dependencies may name earlier lines: put those in place first.
            load.finish()?;
            match enqueue_with(home, &req, true) {
                Ok(t) => {
                    load.sum.enqueued += 1;
                    load.tell(&t)?;
                }
                Err(e) => return Ok(Some(at(e))),
            }
            continue;
        }
        // Strictly increasing times keep the input order within a priority.
        let now = time::now();
        let ns = time_ns(now).max(last_ns + 1);
        last_ns = ns;
        match stage_one(home, &req, now, ns) {
            Ok(s) => load.push(s)?,
            Err(e) => return Ok(Some(at(e))),
        }
    }
    Ok(None)
}

/// Reads one line (without its `\n`) into `buf`, never holding more than `limit` bytes of
/// it: a longer line could not make a task anyway ([`MAX_TASK_BYTES`]), and reading it
/// whole would let one line exhaust memory (DESIGN S5). `Ok(None)` at the end of the input;
/// `Err` says why the line is refused.
fn read_line<'b>(
    input: &mut impl BufRead,
    buf: &'b mut Vec<u8>,
    limit: usize,
) -> std::result::Result<Option<&'b str>, String> {
    use std::io::Read;
    buf.clear();
    // One byte past the limit tells a line of exactly `limit` bytes from a longer one.
    let n = input
        .by_ref()
        .take(limit as u64 + 2)
        .read_until(b'\n', buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > limit {
        return Err(format!(
            "too long: more than {limit} bytes (the task size limit); the rest of the input was not read"
        ));
    }
    std::str::from_utf8(buf)
        .map(Some)
        .map_err(|_| "cannot read: stream did not contain valid UTF-8".to_string())
}

fn stage_one(home: &Home, req: &EnqueueRequest, now: Timestamp, ns: u64) -> Result<Staged> {
    let mut task = build(req, now, ns)?;
    let bytes = task.to_bytes()?;
    check_size(&bytes)?;
    let dest = layout::pending_path(home, &task);
    if let Some(id) = &req.id {
        reserve_id(home, id, Some(&dest), false)?;
    }
    match moves::stage(home, &bytes, Durability::Atomic) {
        Ok(tmp) => Ok(Staged {
            task,
            tmp,
            dest,
            len: bytes.len(),
        }),
        Err(e) => {
            if let Some(id) = &req.id {
                ids::release(home, id);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BulkOptions {
        BulkOptions {
            class: "b".into(),
            priority: Priority::Medium,
            max_attempts: None,
            not_before: None,
            timeout_seconds: None,
        }
    }

    #[test]
    fn lines_are_payloads_or_task_descriptions() {
        let r = parse_line(r#"{"doc": 1}"#, &opts()).unwrap();
        assert_eq!(r.payload["doc"], 1);
        let r = parse_line(
            r#"{"payload": [1], "priority": "high", "id": "j1", "max_attempts": 2, "after": "j0"}"#,
            &opts(),
        )
        .unwrap();
        assert_eq!(
            (
                r.payload[0].as_u64(),
                r.priority,
                r.id.as_deref(),
                r.max_attempts
            ),
            (Some(1), Priority::High, Some("j1"), Some(2))
        );
        assert_eq!(r.after, vec!["j0".to_string()]);
        // An unknown key makes the whole object a payload.
        let r = parse_line(r#"{"payload": 1, "x": 2}"#, &opts()).unwrap();
        assert_eq!(r.payload["x"], 2);
        assert!(parse_line("{nope", &opts()).is_err());
        assert!(parse_line(r#"{"payload": 1, "priority": "urgent"}"#, &opts()).is_err());
        assert!(parse_line(r#"{"payload": 1, "max_attempts": 0}"#, &opts()).is_err());
    }

    /// Many batches go through the helper thread while the next ones are staged, with a
    /// dependency line in the middle (which waits for everything before it) and a bad line
    /// near the end: every task before the bad line is in place, printed once and in input
    /// order, counted, and claimed in that order; nothing staged is left behind.
    #[test]
    fn a_load_of_many_batches_keeps_order_across_the_helper() {
        let (_d, h) = crate::home::test_home();
        let n = 6 * MIN_BATCH;
        let mut input = String::new();
        for i in 0..n {
            if i == n / 2 {
                input.push_str("{\"payload\": \"dep\", \"id\": \"mid\", \"after\": \"first\"}\n");
            } else if i == 0 {
                input.push_str("{\"payload\": 0, \"id\": \"first\"}\n");
            } else {
                input.push_str(&format!("{i}\n"));
            }
        }
        input.push_str("{bad\nlast\n");
        let mut got = Vec::new();
        let e = enqueue_bulk(&h, input.as_bytes(), &opts(), |t| {
            got.push(t.task_id.clone());
            Ok(())
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("line {}:", n + 1)),
            "{e}"
        );
        assert_eq!(got.len(), n);
        assert_eq!(got[0], "first");
        assert_eq!(got[n / 2], "mid");
        let unique: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!(unique.len(), n, "each task printed once");
        let walked: Vec<String> = super::super::walk::ClassWalk::new(&h, "b", 0, false)
            .unwrap()
            .map(|e| e.unwrap().task_id)
            .collect();
        let ready: Vec<String> = got.iter().filter(|id| *id != "mid").cloned().collect();
        assert_eq!(walked, ready, "claim order is input order");
        let c = counts::read_all(&h).unwrap()["b"].unwrap();
        assert_eq!((c.pending, c.deferred), (n as u64 - 1, 1));
        assert_eq!(
            layout::list_names(&h.tmp_dir()).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_line_is_read_up_to_the_limit_and_no_further() {
        let mut buf = Vec::new();
        let mut input = "abcd\r\nabcde\nzz".as_bytes();
        assert_eq!(read_line(&mut input, &mut buf, 4).unwrap(), Some("abcd"));
        let e = read_line(&mut input, &mut buf, 4).unwrap_err();
        assert!(e.starts_with("too long: more than 4 bytes"), "{e}");
        assert!(
            buf.len() <= 6,
            "read no further than the limit: {}",
            buf.len()
        );
        let mut input = "abcd".as_bytes();
        assert_eq!(read_line(&mut input, &mut buf, 4).unwrap(), Some("abcd"));
        assert_eq!(read_line(&mut input, &mut buf, 4).unwrap(), None);
        let mut input = &b"\xff\n"[..];
        assert!(read_line(&mut input, &mut buf, 4).is_err());
    }

    #[test]
    fn bulk_keeps_order_and_stops_at_a_bad_line() {
        let (_d, h) = crate::home::test_home();
        let input = "1\n2\n\n{\"payload\": 3, \"id\": \"three\"}\n4\n{bad\n6\n";
        let mut got = Vec::new();
        let e = enqueue_bulk(&h, input.as_bytes(), &opts(), |t| {
            got.push(t.task_id.clone());
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.exit_code(), 6, "{e}");
        assert!(e.to_string().starts_with("line 6:"), "{e}");
        assert_eq!(got.len(), 4);
        assert_eq!(got[2], "three");
        let walked: Vec<String> = super::super::walk::ClassWalk::new(&h, "b", 0, false)
            .unwrap()
            .map(|e| e.unwrap().task_id)
            .collect();
        assert_eq!(walked, got, "claim order is input order");
        assert_eq!(counts::read_all(&h).unwrap()["b"].unwrap().pending, 4);
        // The explicit id is now taken.
        let e = enqueue_bulk(
            &h,
            "{\"payload\": 1, \"id\": \"three\"}\n".as_bytes(),
            &opts(),
            |_| Ok(()),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 5, "{e}");
    }
}
