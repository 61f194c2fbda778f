//! Adopting a spec that was written straight into `active/`, as the runbook's "Manual Worker
//! Spec Creation" does with a heredoc, followed by `validate-and-write-worker-spec.sh
//! $WORKER_ID.json`. `spawn-worker --from-spec` cannot take that file (it would be a second
//! copy of an existing id), so adoption works in place: under the worker's lock the spec is
//! validated, completed with its type's defaults (allocation, priority, timeout), stamped
//! with `adopted_at`, and its allocation is reserved in the budget.
//!
//! A `process` block in the hand-written spec is dropped (with its `pid`), as
//! `spawn-worker --from-spec` drops one (DESIGN S2): only corral's own launch path records a
//! process, because the monitor and `stop-worker` send signals to it; a file anyone wrote
//! must not be able to point them at an arbitrary pid. [`Adopted::dropped`] says what went,
//! so the command can warn.
//!
//! The reservation happens exactly once. A spec that carries `adopted_at`, or any `history`
//! (corral writes history on every spawn and write, so its budget was reserved then), is
//! already accounted for: adopting it again changes nothing and succeeds, as an operator
//! re-running a runbook step expects.

use crate::budget;
use crate::error::{Error, Result};
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::policy::{WorkerType, WorkerTypes};
use crate::spec::{self, Priority, Transition, WorkerSpec};
use crate::store;
use crate::time::{self, Timestamp};
use serde::Serialize;
use serde_json::Value;

/// The field that marks an adopted spec.
pub const ADOPTED_AT: &str = "adopted_at";

/// What an adoption did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Adopted {
    pub worker_id: String,
    /// Tokens reserved now (0 when it was accounted for already).
    pub reserved: u64,
    /// True when the spec was accounted for before (nothing was changed).
    pub already: bool,
    /// Fields filled from the worker type's defaults.
    pub filled: Vec<String>,
    /// Fields of the input that were dropped (`process`, `pid`): only corral's launch
    /// records a process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
}

/// Fills what a hand-made spec left out from its worker type, as a spawn of that type
/// would have set it: the allocation, the priority, the timeout. `given` is the spec as
/// written (to tell a field left out from one set to its default). Returns the fields filled.
pub(crate) fn fill_from_type(
    s: &mut WorkerSpec,
    given: &serde_json::Map<String, Value>,
    t: &WorkerType,
) -> Vec<String> {
    let mut filled = Vec::new();
    let allocated_given = given
        .get("token_budget")
        .and_then(|b| b.get("allocated"))
        .is_some_and(|a| !a.is_null());
    if !allocated_given {
        if let Some(tokens) = t.tokens {
            s.token_budget.allocated = tokens;
            filled.push("token_budget.allocated".to_string());
        }
    }
    if !given.contains_key("priority") {
        s.priority = t.priority.unwrap_or(Priority::Medium);
        filled.push("priority".into());
    }
    if s.resources.timeout_minutes.is_none() && t.timeout_minutes.is_some() {
        s.resources.timeout_minutes = t.timeout_minutes;
        filled.push("resources.timeout_minutes".into());
    }
    filled
}

/// Adopts `active/<id>.json` in place (see the module docs). Exit 3 when there is no such
/// spec, 5 when it is not in `active/`, 6 when it is invalid or its type is unknown, 4 when
/// the budget cannot cover it (nothing is changed then).
pub fn adopt(home: &Home, id: &str, now: Timestamp) -> Result<Adopted> {
    crate::id::validate("worker", id)?;
    let _g = spec::lock(home, id)?;
    let (dir, path) = spec::locate(home, id).ok_or_else(|| {
        Error::NotFound(format!("no such worker: {id} (no {id}.json in active/)"))
    })?;
    if dir != StateDir::Active {
        return Err(Error::Conflict(format!(
            "worker {id} is in {}/, not active/: only a spec waiting in active/ can be adopted",
            dir.name()
        )));
    }
    let raw = store::read_json(&path).map_err(|e| e.into_error(&path))?;
    let obj = raw
        .as_object()
        .ok_or_else(|| Error::Invalid(format!("{}: not a JSON object", path.display())))?;
    let mut s = WorkerSpec::from_value(raw.clone())
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    if s.worker_id != id {
        return Err(Error::Invalid(format!(
            "{}: the file is named {id} but the spec says {}",
            path.display(),
            s.worker_id
        )));
    }
    let accounted = obj.contains_key(ADOPTED_AT)
        || obj
            .get("history")
            .and_then(Value::as_array)
            .is_some_and(|h| !h.is_empty());
    if accounted {
        return Ok(Adopted {
            worker_id: id.to_string(),
            reserved: 0,
            already: true,
            filled: Vec::new(),
            dropped: Vec::new(),
        });
    }
    let types = WorkerTypes::load(home)?;
    let t = types.get(&s.worker_type)?;
    let mut dropped = Vec::new();
    if s.process.take().is_some() {
        dropped.push("process".to_string());
        if s.pid.take().is_some() {
            dropped.push("pid".to_string());
        }
    }
    let filled = fill_from_type(&mut s, obj, t);
    s.normalize(now);
    s.history.push(Transition::new(
        now,
        None,
        s.status.as_str(),
        "adopted: written into active/ by hand",
    ));
    s.extra
        .insert(ADOPTED_AT.into(), Value::String(time::format(&now)));
    let need = s.token_budget.allocated;
    {
        let mut b = budget::lock(home)?;
        b.budget.reserve(need)?;
        // Budget first, as a spawn does: a crash in between over-reserves (one recalc fixes
        // it), never lets the worker run unaccounted.
        b.save()?;
        if let Err(e) = spec::save(home, StateDir::Active, &s) {
            b.budget.release(need, 0);
            b.save()?;
            return Err(e);
        }
    }
    events::emit_many(
        home,
        &[
            Event::new(
                EventType::WorkerSpawned,
                format!("adopted hand-made spec {id} from active/"),
            )
            .worker(&s)
            .with("tokens_allocated", need)
            .with("adopted", true)
            .with("filled", filled.clone())
            .with("dropped", dropped.clone()),
            Event::new(
                EventType::BudgetReserved,
                format!("reserved {need} tokens for adopted worker {id}"),
            )
            .worker(&s)
            .with("tokens", need)
            .with("workers", 1),
        ],
    );
    Ok(Adopted {
        worker_id: id.to_string(),
        reserved: need,
        already: false,
        filled,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heredoc(home: &Home, id: &str, allocated: Option<u64>) {
        let tokens = allocated
            .map(|a| format!(r#""token_budget": {{"allocated": {a}, "used": 0}},"#))
            .unwrap_or_default();
        std::fs::write(
            home.spec_path(StateDir::Active, id),
            format!(
                r#"{{"worker_id": "{id}", "worker_type": "implementation-worker", "status": "pending",
                "task_id": "task-001", "priority": "high", {tokens}
                "heartbeat": {{"last_seen": null, "health_score": 100}},
                "created_at": "2026-11-22T10:15:00Z"}}"#
            ),
        )
        .unwrap();
    }

    #[test]
    fn reserves_once_and_is_idempotent() {
        let (_d, home) = crate::home::test_home();
        let id = "worker-implementation-1763719200";
        heredoc(&home, id, Some(100_000));
        let before = budget::read(&home).unwrap().used;
        let a = adopt(&home, id, time::now()).unwrap();
        assert_eq!((a.reserved, a.already), (100_000, false));
        assert_eq!(budget::read(&home).unwrap().used, before + 100_000);
        let again = adopt(&home, id, time::now()).unwrap();
        assert_eq!((again.reserved, again.already), (0, true));
        assert_eq!(budget::read(&home).unwrap().used, before + 100_000);
        let s = spec::load(&home, id).unwrap().spec;
        assert_eq!(s.schema_version, 1);
        assert_eq!(s.priority, Priority::High, "given fields are kept");
        assert_eq!(s.resources.timeout_minutes, Some(45), "type default filled");
        assert!(s.extra.contains_key(ADOPTED_AT));
        // The books agree with the specs.
        assert!(!budget::recalc(
            &home,
            &budget::RecalcOptions {
                check_only: true,
                ..Default::default()
            }
        )
        .unwrap()
        .any());
    }

    #[test]
    fn a_hand_written_process_block_is_dropped() {
        let (_d, home) = crate::home::test_home();
        let id = "worker-implementation-1763719201";
        heredoc(&home, id, Some(1_000));
        let path = home.spec_path(StateDir::Active, id);
        let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["pid"] = 1.into();
        v["process"] = serde_json::json!({"host": crate::process::host_name(),
            "boot_id": crate::process::boot_id(), "pid": 1, "pgid": 1,
            "start_time_ticks": 1, "execution_mode": "direct", "command": ["init"]});
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let a = adopt(&home, id, time::now()).unwrap();
        assert_eq!(a.dropped, ["process", "pid"]);
        let s = spec::load(&home, id).unwrap().spec;
        assert!(s.process.is_none() && s.pid.is_none(), "{s:?}");
        let again = adopt(&home, id, time::now()).unwrap();
        assert!(again.already && again.dropped.is_empty());
    }

    #[test]
    fn fills_the_allocation_and_refuses_what_does_not_fit() {
        let (_d, home) = crate::home::test_home();
        heredoc(&home, "w-no-tokens", None);
        let a = adopt(&home, "w-no-tokens", time::now()).unwrap();
        assert_eq!(a.reserved, 100_000);
        assert!(a.filled.contains(&"token_budget.allocated".to_string()));
        heredoc(&home, "w-huge", Some(10_000_000));
        let e = adopt(&home, "w-huge", time::now()).unwrap_err();
        assert_eq!(e.exit_code(), 4);
        assert!(
            !spec::load(&home, "w-huge")
                .unwrap()
                .spec
                .extra
                .contains_key(ADOPTED_AT),
            "nothing changed"
        );
        assert_eq!(
            adopt(&home, "w-none", time::now()).unwrap_err().exit_code(),
            3
        );
        std::fs::write(
            home.spec_path(StateDir::Active, "w-bad"),
            "{\"worker_id\": 1}",
        )
        .unwrap();
        assert_eq!(
            adopt(&home, "w-bad", time::now()).unwrap_err().exit_code(),
            6
        );
    }
}
