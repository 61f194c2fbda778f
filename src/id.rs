//! Identifiers: validation before an id touches a path, and generation without a shared
//! counter. Generated ids carry a timestamp (readable, sortable) and 64 random bits, so
//! concurrent spawners on many hosts never need to coordinate to stay unique.

use crate::error::{Error, Result};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest id accepted (the pattern allows 1 + 127 characters).
pub const MAX_ID_LEN: usize = 128;

/// Checks `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, which rules out `/`, `..` as a whole
/// component, control characters and the empty string before anything builds a path.
pub fn validate(kind: &str, id: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Invalid(format!("invalid {kind} id {id:?}: {why}")));
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("longer than 128 characters");
    }
    let mut chars = id.chars();
    if let Some(first) = chars.next() {
        if !first.is_ascii_alphanumeric() {
            return bad("must start with a letter or digit");
        }
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "character {c:?} not allowed (use A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

/// 64 bits that differ between processes and between calls: std's `RandomState` is seeded
/// from the OS per process, mixed with time, pid and a per-process counter.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.finish()
}

/// Short, path-safe form of a worker type for ids: `implementation-worker` → `implementation`.
fn type_stem(worker_type: &str) -> String {
    let stem = worker_type.strip_suffix("-worker").unwrap_or(worker_type);
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let cleaned = cleaned.trim_matches('-').to_string();
    if cleaned.is_empty() {
        "w".into()
    } else {
        cleaned
    }
}

/// A new worker id: `worker-<type>-<UTC time>-<16 hex>`. Starts with `worker-` because the
/// runbook globs `worker-*.json`.
pub fn new_worker_id(worker_type: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "worker-{}-{}-{:016x}",
        type_stem(worker_type),
        now.format("%Y%m%dT%H%M%SZ"),
        random_u64()
    )
}

/// A new task id: `task-<UTC time>-<16 hex>`.
pub fn new_task_id(now: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "task-{}-{:016x}",
        now.format("%Y%m%dT%H%M%SZ"),
        random_u64()
    )
}

/// A new event id, unique across processes and hosts without coordination.
///
/// The stamp is written field by field rather than through a strftime pattern, which chrono
/// parses again on every call: an id is made for every event, on every claim.
pub fn new_event_id(now: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let (y, mo, d) = (now.year(), now.month(), now.day());
    let (h, mi, s) = (now.hour(), now.minute(), now.second());
    // A leap second is nanosecond 1_000_000_000 and up; strftime's `%.6f` shows it the same.
    let us = now.nanosecond() / 1000;
    if (0..=9999).contains(&y) {
        format!(
            "evt-{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{us:06}Z-{:016x}",
            random_u64()
        )
    } else {
        format!(
            "evt-{}-{:016x}",
            now.format("%Y%m%dT%H%M%S%.6fZ"),
            random_u64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_carry_the_same_stamp_as_the_strftime_pattern() {
        use chrono::TimeZone;
        let base = chrono::Utc
            .with_ymd_and_hms(2026, 12, 31, 23, 59, 59)
            .unwrap();
        let mut stamps = vec![
            base,
            chrono::Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            chrono::Utc
                .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
                .unwrap(),
        ];
        for k in 0..2000i64 {
            stamps.push(base + chrono::Duration::nanoseconds(k * 7_919_137_123));
        }
        for t in stamps {
            let id = new_event_id(t);
            let want = format!("evt-{}-", t.format("%Y%m%dT%H%M%S%.6fZ"));
            assert!(id.starts_with(&want), "{id} vs {want}");
            assert_eq!(id.len(), want.len() + 16, "{id}");
            validate("event", &id).unwrap();
        }
    }

    #[test]
    fn accepts_runbook_ids() {
        for id in [
            "worker-implementation-001",
            "a",
            "W.1_x-y",
            &"a".repeat(128),
        ] {
            validate("worker", id).unwrap();
        }
    }

    #[test]
    fn rejects_paths_and_controls() {
        for id in [
            "",
            "../x",
            "a/b",
            "..",
            ".hidden",
            "-x",
            "a\nb",
            "a\u{7}",
            "a b",
            &"a".repeat(129),
        ] {
            assert!(validate("worker", id).is_err(), "{id:?} accepted");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let now = chrono::Utc::now();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = new_worker_id("implementation-worker", now);
            validate("worker", &id).unwrap();
            assert!(id.starts_with("worker-implementation-"));
            assert!(seen.insert(id));
        }
        validate("task", &new_task_id(now)).unwrap();
        validate("worker", &new_worker_id("weird type/../", now)).unwrap();
    }
}
