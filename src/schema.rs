//! JSON Schema validation of everything corral writes. The schemas in `schemas/` are the
//! source of truth (DESIGN.md §3); they are compiled into the binaries so a home never
//! depends on the repository being around, and each validator is built once per process.

use crate::error::{Error, Result};
use serde_json::Value;
use std::sync::OnceLock;

/// The kinds of document corral validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WorkerSpec,
    TokenBudget,
    HeartbeatPolicy,
    WorkerTypes,
    Event,
    Task,
}

impl Kind {
    /// Every kind, for tests and `corral doctor`.
    pub const ALL: [Kind; 6] = [
        Kind::WorkerSpec,
        Kind::TokenBudget,
        Kind::HeartbeatPolicy,
        Kind::WorkerTypes,
        Kind::Event,
        Kind::Task,
    ];

    /// The schema's file name under `schemas/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Kind::WorkerSpec => "worker-spec.schema.json",
            Kind::TokenBudget => "token-budget.schema.json",
            Kind::HeartbeatPolicy => "heartbeat-policy.schema.json",
            Kind::WorkerTypes => "worker-types.schema.json",
            Kind::Event => "event.schema.json",
            Kind::Task => "task.schema.json",
        }
    }

    /// The schema text compiled into the binary.
    pub fn source(self) -> &'static str {
        match self {
            Kind::WorkerSpec => include_str!("../schemas/worker-spec.schema.json"),
            Kind::TokenBudget => include_str!("../schemas/token-budget.schema.json"),
            Kind::HeartbeatPolicy => include_str!("../schemas/heartbeat-policy.schema.json"),
            Kind::WorkerTypes => include_str!("../schemas/worker-types.schema.json"),
            Kind::Event => include_str!("../schemas/event.schema.json"),
            Kind::Task => include_str!("../schemas/task.schema.json"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::WorkerSpec => "worker spec",
            Kind::TokenBudget => "token budget",
            Kind::HeartbeatPolicy => "heartbeat policy",
            Kind::WorkerTypes => "worker types",
            Kind::Event => "event",
            Kind::Task => "task",
        }
    }

    fn slot(self) -> &'static OnceLock<std::result::Result<jsonschema::Validator, String>> {
        static SLOTS: [OnceLock<std::result::Result<jsonschema::Validator, String>>; 6] =
            [const { OnceLock::new() }; 6];
        &SLOTS[self as usize]
    }

    fn validator(self) -> Result<&'static jsonschema::Validator> {
        self.slot()
            .get_or_init(|| {
                let schema: Value = serde_json::from_str(self.source())
                    .map_err(|e| format!("schema {} is not JSON: {e}", self.file_name()))?;
                jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .map_err(|e| format!("schema {} does not compile: {e}", self.file_name()))
            })
            .as_ref()
            .map_err(|e| Error::Internal(e.clone()))
    }
}

/// Validates `value`; the error names the first offending field as a JSON pointer, e.g.
/// `invalid worker spec: /token_budget/allocated: -5 is less than the minimum of 0`.
pub fn validate(kind: Kind, value: &Value) -> Result<()> {
    let validator = kind.validator()?;
    let mut errors = validator.iter_errors(value);
    match errors.next() {
        None => Ok(()),
        Some(first) => {
            let path = first.instance_path().to_string();
            let at = if path.is_empty() {
                "(top level)".to_string()
            } else {
                path
            };
            let more = errors.count();
            let tail = if more > 0 {
                format!(" (and {more} more problems)")
            } else {
                String::new()
            };
            Err(Error::Invalid(format!(
                "invalid {}: {at}: {first}{tail}",
                kind.label()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn all_schemas_compile() {
        for k in Kind::ALL {
            k.validator().unwrap();
        }
    }

    #[test]
    fn names_the_field() {
        let bad = json!({"worker_id": "w1", "worker_type": "t", "status": "running",
                          "token_budget": {"allocated": -5}});
        let msg = validate(Kind::WorkerSpec, &bad).unwrap_err().to_string();
        assert!(msg.contains("/token_budget/allocated"), "{msg}");
        let bad = json!({"worker_id": "w1", "worker_type": "t", "status": "exploded"});
        let msg = validate(Kind::WorkerSpec, &bad).unwrap_err().to_string();
        assert!(msg.contains("/status"), "{msg}");
        let bad = json!({"worker_id": "w1", "worker_type": "t", "status": "pending", "created_at": "last tuesday"});
        assert!(validate(Kind::WorkerSpec, &bad).is_err());
    }

    #[test]
    fn runbook_hand_made_spec_is_valid() {
        let spec = json!({
            "worker_id": "worker-implementation-1763719200",
            "worker_type": "implementation-worker",
            "status": "pending",
            "task_id": "task-001",
            "priority": "high",
            "token_budget": {"allocated": 100000, "used": 0},
            "heartbeat": {"last_seen": null, "health_score": 100},
            "created_at": "2026-11-22T10:15:00Z"
        });
        validate(Kind::WorkerSpec, &spec).unwrap();
    }
}
