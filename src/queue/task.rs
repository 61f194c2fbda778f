//! The task file and the limits that keep it readable (DESIGN.md §6 S9).
//!
//! Everything corral writes it must be able to read back, and reads refuse files over
//! [`store::MAX_FILE_BYTES`]. A task grows after it is enqueued (claims, failures, a result),
//! so every write goes through [`Task::to_bytes`], which caps what can grow — `history`
//! ([`HISTORY_CAP`] entries, each reason at most [`MAX_REASON_BYTES`]), `error`
//! ([`MAX_ERROR_BYTES`]) and `result` ([`MAX_RESULT_BYTES`], replaced by
//! `{"truncated": true, "bytes": N, "head": "…"}` beyond that) — records what it cut in
//! `truncated`, and refuses a file that still would not fit *before* anything is renamed.

use crate::error::{Error, Result};
use crate::home::TaskState;
use crate::schema::{self, Kind};
use crate::spec::Priority;
use crate::store;
use crate::time::{self, serde_ts, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The task format version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Attempts before a failing task is dead-lettered, unless `--max-attempts` says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Largest task file accepted at enqueue (payload included): the rest of the 1 MiB read
/// limit is room for what a task gathers later (claims, history, error, result).
pub const MAX_TASK_BYTES: usize = 900 * 1024;

/// Entries kept in `history` (the oldest are dropped; the event log has the full story).
pub const HISTORY_CAP: usize = 50;

/// Longest `reason` kept in one history entry.
pub const MAX_REASON_BYTES: usize = 512;

/// Longest `error` kept (the start is kept, with a marker saying how long it was).
pub const MAX_ERROR_BYTES: usize = 16 * 1024;

/// Largest `result` kept whole (serialised); a larger one is replaced by its head.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// Longest `head` of a truncated result.
const RESULT_HEAD_BYTES: usize = 16 * 1024;

fn default_version() -> u32 {
    SCHEMA_VERSION
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

fn pending_state() -> TaskState {
    TaskState::Pending
}

/// One state change of a task, kept in its file for the post-mortem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskTransition {
    #[serde(with = "serde_ts")]
    pub at: Timestamp,
    #[serde(default)]
    pub from: Option<String>,
    pub to: String,
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// A task file. Fields other tools add are preserved on rewrite.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    #[serde(default = "default_version")]
    pub schema_version: u32,
    pub task_id: String,
    pub class: String,
    #[serde(default)]
    pub name: Option<String>,
    pub priority: Priority,
    #[serde(default)]
    pub payload: Value,
    #[serde(default = "pending_state")]
    pub state: TaskState,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(with = "serde_ts")]
    pub enqueued_at: Timestamp,
    #[serde(default)]
    pub enqueued_ns: u64,
    /// Not claimable before this time (`--not-before`, `--delay`, retry backoff).
    #[serde(
        default,
        with = "serde_ts::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub not_before: Option<Timestamp>,
    /// Task ids that must complete before this one may run (`--after`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Seconds the `work` loop lets the command run before stopping it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    #[serde(default)]
    pub claimed_by: Option<String>,
    #[serde(default, with = "serde_ts::option")]
    pub claimed_at: Option<Timestamp>,
    #[serde(default)]
    pub lease_seconds: Option<f64>,
    #[serde(default, with = "serde_ts::option")]
    pub lease_expires_at: Option<Timestamp>,
    #[serde(default, with = "serde_ts::option")]
    pub stuck_reported_at: Option<Timestamp>,
    /// Set by `cancel` on a processing task: the `work` loop stops the command.
    #[serde(
        default,
        with = "serde_ts::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub cancel_requested_at: Option<Timestamp>,
    #[serde(default, with = "serde_ts::option")]
    pub completed_at: Option<Timestamp>,
    #[serde(default, with = "serde_ts::option")]
    pub failed_at: Option<Timestamp>,
    #[serde(
        default,
        with = "serde_ts::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub cancelled_at: Option<Timestamp>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    /// What the S9 limits cut: field → original size in bytes (entries, for `history`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub truncated: BTreeMap<String, u64>,
    #[serde(default)]
    pub history: Vec<TaskTransition>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What stands for a result too long to keep: `bytes` of it in all, and the start of
/// `text` (cut to 16 KiB). The work loop builds it while reading a huge stdout; a write of
/// any other long result builds it here.
pub(crate) fn result_marker(text: &str, bytes: u64) -> Value {
    serde_json::json!({
        "truncated": true,
        "bytes": bytes,
        "head": cut(text, RESULT_HEAD_BYTES),
    })
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Task {
    /// A fresh pending task (the caller fills in what the request says).
    pub fn new(task_id: String, class: String, priority: Priority, now: Timestamp) -> Task {
        Task {
            schema_version: SCHEMA_VERSION,
            task_id,
            class,
            name: None,
            priority,
            payload: Value::Null,
            state: TaskState::Pending,
            attempts: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            enqueued_at: now,
            enqueued_ns: time_ns(now),
            not_before: None,
            after: Vec::new(),
            timeout_seconds: None,
            claimed_by: None,
            claimed_at: None,
            lease_seconds: None,
            lease_expires_at: None,
            stuck_reported_at: None,
            cancel_requested_at: None,
            completed_at: None,
            failed_at: None,
            cancelled_at: None,
            result: None,
            error: None,
            truncated: BTreeMap::new(),
            history: Vec::new(),
            extra: Map::new(),
        }
    }

    /// Loads a task document (serde only: every *write* is validated against the schema,
    /// and the claim path should not pay for validating what a write already validated).
    pub fn from_value(value: Value) -> Result<Task> {
        let t: Task = serde_json::from_value(value)
            .map_err(|e| Error::Invalid(format!("invalid task: {e}")))?;
        crate::id::validate("task", &t.task_id)?;
        crate::id::validate("class", &t.class)?;
        Ok(t)
    }

    /// Loads a task from the bytes of its file.
    pub fn from_slice(bytes: &[u8]) -> Result<Task> {
        // Straight into the struct (no intermediate `Value`: a claim reads one per task).
        let t: Task = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => Error::Invalid(format!("invalid task: {e}")),
            _ => Error::Invalid(format!("malformed JSON: {e}")),
        })?;
        crate::id::validate("task", &t.task_id)?;
        crate::id::validate("class", &t.class)?;
        Ok(t)
    }

    /// Serialises and validates against `schemas/task.schema.json`.
    pub fn to_value(&self) -> Result<Value> {
        let v = serde_json::to_value(self)
            .map_err(|e| Error::Internal(format!("serialise task: {e}")))?;
        schema::validate(Kind::Task, &v)?;
        Ok(v)
    }

    /// The bytes of the file: limits applied, validated, and refused (exit 6) when even the
    /// trimmed task would be over what reads accept. Call it before anything moves.
    pub fn to_bytes(&mut self) -> Result<Vec<u8>> {
        self.apply_caps();
        let mut bytes = store::to_pretty(&self.to_value()?)?;
        let limit = store::MAX_FILE_BYTES as usize;
        if bytes.len() > limit {
            // Squeeze what can be squeezed, hardest last.
            self.shrink_result(1024);
            if self.history.len() > 10 {
                self.drop_history(10);
            }
            if let Some(e) = &self.error {
                if e.len() > 1024 {
                    self.set_error(e.clone(), 1024);
                }
            }
            bytes = store::to_pretty(&self.to_value()?)?;
        }
        if bytes.len() > limit {
            return Err(Error::Invalid(format!(
                "task {} would be {} bytes, over the {limit}-byte limit of what corral reads back",
                self.task_id,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    fn apply_caps(&mut self) {
        if self.history.len() > HISTORY_CAP {
            self.drop_history(HISTORY_CAP);
        }
        for h in &mut self.history {
            if h.reason.len() > MAX_REASON_BYTES {
                h.reason = format!("{}…", cut(&h.reason, MAX_REASON_BYTES));
            }
        }
        if let Some(e) = &self.error {
            if e.len() > MAX_ERROR_BYTES {
                self.set_error(e.clone(), MAX_ERROR_BYTES);
            }
        }
        self.shrink_result(MAX_RESULT_BYTES);
    }

    fn drop_history(&mut self, keep: usize) {
        let drop = self.history.len().saturating_sub(keep);
        if drop == 0 {
            return;
        }
        self.history.drain(..drop);
        *self.truncated.entry("history".into()).or_default() += drop as u64;
    }

    /// Sets `error`, keeping its first `max` bytes and a marker with its real length.
    pub fn set_error(&mut self, error: String, max: usize) {
        if error.len() <= max {
            self.error = Some(error);
            return;
        }
        let len = error.len() as u64;
        let orig = self.truncated.get("error").copied().unwrap_or(0).max(len);
        self.truncated.insert("error".into(), orig);
        self.error = Some(format!("{}… [truncated: {len} bytes]", cut(&error, max)));
    }

    /// Replaces a result whose JSON text is over `max` bytes by its head and a marker.
    fn shrink_result(&mut self, max: usize) {
        let Some(r) = &self.result else { return };
        if r.get("truncated") == Some(&Value::Bool(true)) && r.get("head").is_some() {
            // Already a marker (the work loop cuts a huge stdout while reading it): its size
            // goes into the task's record of what was cut, as for a result cut here, and
            // only its head may need to shrink.
            if let Some(n) = r.get("bytes").and_then(Value::as_u64) {
                self.truncated.entry("result".into()).or_insert(n);
            }
            if let Some(h) = r.get("head").and_then(Value::as_str) {
                if h.len() > max {
                    let mut r2 = r.clone();
                    r2["head"] = Value::String(cut(h, max).to_string());
                    self.result = Some(r2);
                }
            }
            return;
        }
        let text = serde_json::to_string(r).unwrap_or_default();
        if text.len() <= max {
            return;
        }
        let len = text.len() as u64;
        self.truncated.insert("result".into(), len);
        self.result = Some(result_marker(cut(&text, max), len));
    }

    /// The file name this task has while pending: claim order is name order.
    pub fn pending_name(&self) -> String {
        super::layout::pending_name(self.priority, self.position_ns(), &self.task_id)
    }

    /// Where the task sorts among pending tasks: its enqueue time, or `not_before` when
    /// that is later (a delayed task, a retry after backoff).
    pub fn position_ns(&self) -> u64 {
        let nb = self.not_before.map(time_ns).unwrap_or(0);
        self.enqueued_ns.max(nb)
    }

    pub(crate) fn transition(
        &mut self,
        to: TaskState,
        by: Option<&str>,
        reason: &str,
        now: Timestamp,
    ) {
        self.history.push(TaskTransition {
            at: now,
            from: Some(self.state.name().to_string()),
            to: to.name().to_string(),
            by: by.map(str::to_string),
            reason: cut(reason, MAX_REASON_BYTES).to_string(),
        });
        if self.history.len() > HISTORY_CAP {
            self.drop_history(HISTORY_CAP);
        }
        self.state = to;
    }

    /// Back to the shape of a pending task (claim fields cleared, attempts kept).
    pub(crate) fn reset_claim(&mut self) {
        self.claimed_by = None;
        self.claimed_at = None;
        self.lease_seconds = None;
        self.lease_expires_at = None;
        self.stuck_reported_at = None;
        self.cancel_requested_at = None;
    }

    /// Seconds since the claim, if claimed.
    pub fn processing_seconds(&self, now: Timestamp) -> Option<f64> {
        self.claimed_at.map(|c| time::secs_between(c, now))
    }

    /// True for a task whose claim was never recorded: the content is still what it was in
    /// pending/ (the claimer died between the rename and the record, or the disk was full).
    pub fn is_unrecorded_claim(&self) -> bool {
        self.state == TaskState::Pending && self.claimed_by.is_none()
    }
}

/// Nanoseconds since the epoch (0 before it).
pub fn time_ns(t: Timestamp) -> u64 {
    t.timestamp_nanos_opt()
        .map(|n| n.max(0) as u64)
        .unwrap_or(u64::MAX)
}

/// The time of a nanosecond count.
pub fn ns_time(ns: u64) -> Timestamp {
    chrono::DateTime::from_timestamp_nanos(ns.min(i64::MAX as u64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task::new(
            "t1".into(),
            "c".into(),
            Priority::Medium,
            time::parse("2026-01-01T00:00:00Z").unwrap(),
        )
    }

    /// A task file is read straight into the struct: what it wrote reads back equal, and a
    /// refusal still says whether the JSON or the task is wrong.
    #[test]
    fn from_slice_reads_back_what_to_bytes_wrote_and_names_what_is_wrong() {
        let mut t = task();
        t.payload = serde_json::json!({"n": [1, 2, 3]});
        let bytes = t.to_bytes().unwrap();
        let back = Task::from_slice(&bytes).unwrap();
        assert_eq!(back.to_value().unwrap(), t.to_value().unwrap());
        let e = Task::from_slice(b"{\"task_id\": ").unwrap_err().to_string();
        assert!(e.contains("malformed JSON"), "{e}");
        let e = Task::from_slice(br#"{"task_id": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid task"), "{e}");
        let mut v = t.to_value().unwrap();
        v["task_id"] = serde_json::json!("../x");
        let e = Task::from_slice(v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
    }

    #[test]
    fn history_error_and_result_are_capped_with_markers() {
        let mut t = task();
        let now = time::now();
        for i in 0..(HISTORY_CAP + 7) {
            t.transition(TaskState::Pending, None, &"x".repeat(2000 + i), now);
        }
        t.set_error("e".repeat(MAX_ERROR_BYTES * 3), MAX_ERROR_BYTES);
        t.result = Some(Value::String("r".repeat(MAX_RESULT_BYTES * 2)));
        let bytes = t.to_bytes().unwrap();
        let back = Task::from_slice(&bytes).unwrap();
        assert_eq!(back.history.len(), HISTORY_CAP);
        assert_eq!(back.truncated["history"], 7);
        assert!(back
            .history
            .iter()
            .all(|h| h.reason.len() <= MAX_REASON_BYTES + 3));
        let e = back.error.unwrap();
        assert!(
            e.len() < MAX_ERROR_BYTES + 100 && e.contains("[truncated: "),
            "{}",
            e.len()
        );
        assert_eq!(back.truncated["error"], (MAX_ERROR_BYTES * 3) as u64);
        let r = back.result.unwrap();
        assert_eq!(r["truncated"], true);
        assert_eq!(r["bytes"], (MAX_RESULT_BYTES * 2 + 2) as u64);
        assert!(bytes.len() < store::MAX_FILE_BYTES as usize);
    }

    #[test]
    fn a_large_payload_squeezes_the_result_and_an_impossible_file_is_refused() {
        let mut t = task();
        t.payload = Value::String("p".repeat(900 * 1024 - 2000));
        t.result = Some(Value::String("r".repeat(200 * 1024)));
        let bytes = t.to_bytes().unwrap();
        assert!(bytes.len() <= store::MAX_FILE_BYTES as usize);
        assert_eq!(
            Task::from_slice(&bytes).unwrap().result.unwrap()["truncated"],
            true
        );
        let mut huge = task();
        huge.payload = Value::String("p".repeat(store::MAX_FILE_BYTES as usize));
        let e = huge.to_bytes().unwrap_err();
        assert_eq!(e.exit_code(), 6, "{e}");
    }

    #[test]
    fn position_is_enqueue_time_or_not_before() {
        let mut t = task();
        assert_eq!(t.position_ns(), t.enqueued_ns);
        t.not_before = Some(time::parse("2025-01-01T00:00:00Z").unwrap());
        assert_eq!(t.position_ns(), t.enqueued_ns);
        let later = time::parse("2026-01-02T00:00:00Z").unwrap();
        t.not_before = Some(later);
        assert_eq!(t.position_ns(), time_ns(later));
    }
}
