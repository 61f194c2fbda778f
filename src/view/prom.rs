//! The Prometheus text exposition (format 0.0.4) of a home, for node_exporter's textfile
//! collector: `worker-monitor prometheus --output /var/lib/node_exporter/corral.prom`, or the
//! monitor's periodic [`super::write_prometheus`].
//!
//! Per-worker series (health, heartbeat age, tokens) are emitted for `active/` workers only,
//! so the label set stays as large as the fleet that is running, not as its history.
//! Archived specs are counted by file name without being read. Event-derived numbers count
//! the events still in the retained log (current plus rotated files), so they can drop when
//! the oldest rotated file is removed: they are exposed as gauges, not counters.

use super::{eventlog, tasks, workers};
use crate::error::{IoContext, Result};
use crate::home::{Home, StateDir};
use crate::store;
use crate::time::Timestamp;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;

/// Event types reported as detections.
const DETECTIONS: &[&str] = &[
    "heartbeat_warning",
    "heartbeat_critical",
    "zombie_detected",
    "threshold_violation",
    "task_stuck",
    "task_starved",
    "spec_quarantined",
    "budget_exceeded",
    "circuit_breaker_tripped",
];

/// Reads one per-worker value from a row (None: no sample).
type RowValue = fn(&workers::WorkerRow) -> Option<f64>;

/// Escapes a label value (backslash, double quote, newline).
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        if value.is_finite() {
            let _ = writeln!(self.0, " {value}");
        } else {
            self.0.push_str(" NaN\n");
        }
    }
}

type Counts = BTreeMap<&'static str, u64>;

/// What was counted of one file: the bytes read, the counts, and the file's first bytes
/// (an inode number can be reused by a new log file after the oldest one is deleted).
#[derive(Default)]
struct Seen {
    offset: u64,
    counts: Counts,
    head: Vec<u8>,
}

/// Per log file (device, inode): bytes already counted and the counts so far. The monitor
/// calls [`super::write_prometheus`] every few seconds; rotated files never change and the
/// current one only grows, so each call reads only what was appended since the last one.
static SEEN: std::sync::Mutex<Option<HashMap<(u64, u64), Seen>>> = std::sync::Mutex::new(None);

/// The detection type of one event line. Lines written by corral start with `{"id":` and
/// have `type` as their third key, so it is found by a byte search instead of a JSON
/// parse; other lines are parsed.
fn detection_of(line: &[u8]) -> Option<&'static str> {
    const KEY: &[u8] = b"\"type\":\"";
    let kind: Option<std::borrow::Cow<'_, str>> = if line.starts_with(b"{\"id\":") {
        line.windows(KEY.len())
            .position(|w| w == KEY)
            .and_then(|i| {
                let rest = &line[i + KEY.len()..];
                rest.iter()
                    .position(|b| *b == b'"')
                    .map(|j| String::from_utf8_lossy(&rest[..j]))
            })
    } else {
        eventlog::LightEvent::parse(line).map(|e| std::borrow::Cow::Owned(e.kind.into_owned()))
    };
    let k = kind?;
    DETECTIONS.iter().find(|d| **d == k).copied()
}

/// Counts one file from where the last call stopped (complete lines only).
fn count_file(
    path: &Path,
    seen: &mut HashMap<(u64, u64), Seen>,
) -> Result<Option<((u64, u64), Counts)>> {
    use std::io::{BufRead, Seek};
    use std::os::unix::fs::MetadataExt;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(crate::Error::io(
                format!("cannot open {}", path.display()),
                e,
            ))
        }
    };
    let meta = file.metadata().ctx("stat", path)?;
    let key = (meta.dev(), meta.ino());
    let mut head = vec![0u8; 64.min(meta.len() as usize)];
    {
        use std::os::unix::fs::FileExt;
        let n = file.read_at(&mut head, 0).ctx("read", path)?;
        head.truncate(n);
    }
    let Seen {
        mut offset,
        mut counts,
        ..
    } = seen
        .remove(&key)
        .filter(|s| s.offset <= meta.len() && head.starts_with(&s.head))
        .unwrap_or_default();
    let mut r = std::io::BufReader::with_capacity(256 * 1024, file);
    r.seek(std::io::SeekFrom::Start(offset)).ctx("seek", path)?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).ctx("read", path)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        offset += n as u64;
        if let Some(d) = detection_of(&buf[..n - 1]) {
            *counts.entry(d).or_default() += 1;
        }
    }
    seen.insert(
        key,
        Seen {
            offset,
            counts: counts.clone(),
            head,
        },
    );
    Ok(Some((key, counts)))
}

/// Counts events of the detection types in the retained log (rotated files and the current
/// one), by type.
fn detections(home: &Home) -> Result<Counts> {
    let mut total: Counts = DETECTIONS.iter().map(|d| (*d, 0)).collect();
    let mut guard = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut seen = guard.take().unwrap_or_default();
    let mut live = HashMap::new();
    let mut files = eventlog::log_files(home);
    files.push(home.events_path());
    for p in files {
        if let Some((key, counts)) = count_file(&p, &mut seen)? {
            for (k, v) in &counts {
                *total.entry(k).or_default() += v;
            }
            if let Some(entry) = seen.remove(&key) {
                live.insert(key, entry);
            }
        }
    }
    // Files that were rotated away are forgotten.
    *guard = Some(live);
    Ok(total)
}

/// Renders the exposition text.
pub fn render(home: &Home, now: Timestamp) -> Result<String> {
    let mut o = Out(String::with_capacity(16 * 1024));
    let loaded = workers::load(
        home,
        &[StateDir::Active, StateDir::Completed, StateDir::Zombie],
        now,
    )?;

    o.family(
        "corral_workers",
        "gauge",
        "Worker specs by state directory, status and worker type.",
    );
    let mut by: BTreeMap<(&str, String, String), u64> = BTreeMap::new();
    for r in &loaded.rows {
        *by.entry((r.state_dir.name(), r.status.clone(), r.worker_type.clone()))
            .or_default() += 1;
    }
    for ((dir, status, wt), n) in &by {
        o.sample(
            "corral_workers",
            &[("state_dir", dir), ("status", status), ("worker_type", wt)],
            *n as f64,
        );
    }
    o.family(
        "corral_workers_archived",
        "gauge",
        "Specs in worker-specs/archived (counted, not read).",
    );
    let archived = store::list_json(&home.specs_dir(StateDir::Archived))?.len();
    o.sample("corral_workers_archived", &[], archived as f64);
    o.family(
        "corral_spec_files_unreadable",
        "gauge",
        "Spec files that could not be read or parsed at this scrape.",
    );
    o.sample(
        "corral_spec_files_unreadable",
        &[],
        loaded.unreadable.len() as f64,
    );

    let active: Vec<&workers::WorkerRow> = loaded
        .rows
        .iter()
        .filter(|r| r.state_dir == StateDir::Active)
        .collect();
    o.family(
        "corral_workers_by_health",
        "gauge",
        "Active workers by health band.",
    );
    let mut bands: BTreeMap<&str, u64> = ["healthy", "degraded", "unhealthy", "unresponsive"]
        .iter()
        .map(|b| (*b, 0))
        .collect();
    for r in &active {
        *bands.entry(r.health.as_str()).or_default() += 1;
    }
    for (b, n) in &bands {
        o.sample("corral_workers_by_health", &[("health", b)], *n as f64);
    }
    let per_worker: [(&str, &str, RowValue); 4] = [
        (
            "corral_worker_health_score",
            "Health score 0-100 of an active worker.",
            |r| r.health_score.map(f64::from),
        ),
        (
            "corral_worker_heartbeat_age_seconds",
            "Seconds since an active worker's last heartbeat (absent before the first beat).",
            |r| r.heartbeat_age_seconds,
        ),
        (
            "corral_worker_tokens_used",
            "Tokens used by an active worker.",
            |r| Some(r.tokens_used as f64),
        ),
        (
            "corral_worker_tokens_allocated",
            "Tokens reserved for an active worker.",
            |r| Some(r.tokens_allocated as f64),
        ),
    ];
    for (name, help, get) in per_worker {
        o.family(name, "gauge", help);
        for r in &active {
            if let Some(v) = get(r) {
                o.sample(
                    name,
                    &[("worker_id", &r.worker_id), ("worker_type", &r.worker_type)],
                    v,
                );
            }
        }
    }

    o.family(
        "corral_budget_tokens",
        "gauge",
        "The token budget: total, used (reserved by live workers), consumed, available.",
    );
    match crate::budget::read(home) {
        Ok(b) => {
            for (k, v) in [
                ("total", b.total),
                ("used", b.used),
                ("consumed", b.consumed),
                ("available", b.available),
            ] {
                o.sample("corral_budget_tokens", &[("kind", k)], v as f64);
            }
        }
        Err(e) => tracing::warn!("prometheus: cannot read the token budget: {e}"),
    }

    let q = tasks::counts(home, now)?;
    o.family(
        "corral_queue_tasks",
        "gauge",
        "Tasks in the queue by state and class.",
    );
    for (state, classes) in &q.by_state {
        for (class, n) in classes {
            o.sample(
                "corral_queue_tasks",
                &[("state", state), ("class", class)],
                *n as f64,
            );
        }
    }
    o.family(
        "corral_queue_oldest_pending_seconds",
        "gauge",
        "Age of the oldest pending task by class.",
    );
    for (class, s) in &q.oldest_pending_seconds {
        o.sample(
            "corral_queue_oldest_pending_seconds",
            &[("class", class)],
            *s,
        );
    }

    let mut restarts: BTreeMap<String, u64> = ["success", "failed", "blocked", "abandoned"]
        .iter()
        .map(|r| (r.to_string(), 0))
        .collect();
    eventlog::for_each_line_in(&home.restart_history_path(), &mut |line| {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
            let r = v
                .get("result")
                .and_then(|x| x.as_str())
                .unwrap_or("unknown");
            *restarts.entry(r.to_string()).or_default() += 1;
        }
        Ok(())
    })?;
    o.family(
        "corral_restarts_total",
        "counter",
        "Restart attempts in metrics/worker-restart-history.jsonl by result.",
    );
    for (r, n) in &restarts {
        o.sample("corral_restarts_total", &[("result", r)], *n as f64);
    }

    o.family(
        "corral_detections",
        "gauge",
        "Detection events (zombies, heartbeat warnings, thresholds, stuck tasks...) in the retained event log, by type.",
    );
    for (t, n) in detections(home)? {
        o.sample("corral_detections", &[("type", t)], n as f64);
    }

    o.family(
        "corral_textfile_generated_timestamp_seconds",
        "gauge",
        "When this file was generated (Unix time).",
    );
    o.sample(
        "corral_textfile_generated_timestamp_seconds",
        &[],
        now.timestamp_millis() as f64 / 1000.0,
    );
    Ok(o.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detections_are_counted_incrementally() {
        let (_dir, home) = crate::home::test_home();
        let line = |k: &str| {
            format!("{{\"id\":\"e\",\"timestamp\":\"2026-01-01T00:00:00Z\",\"type\":\"{k}\",\"data\":{{\"type\":\"x\"}}}}\n")
        };
        let log = home.events_path();
        std::fs::write(&log, line("zombie_detected") + &line("worker_spawned")).unwrap();
        assert_eq!(detections(&home).unwrap()["zombie_detected"], 1);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(line("zombie_detected").as_bytes()).unwrap();
        f.write_all(
            b"{\"type\":\"task_stuck\",\"timestamp\":\"2026-01-01T00:00:00Z\"}\n{\"id\":\"partial",
        )
        .unwrap();
        let c = detections(&home).unwrap();
        assert_eq!((c["zombie_detected"], c["task_stuck"]), (2, 1));
        std::fs::rename(&log, home.rotated_events_path(1)).unwrap();
        std::fs::write(&log, line("zombie_detected")).unwrap();
        assert_eq!(detections(&home).unwrap()["zombie_detected"], 3);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut o = Out(String::new());
        o.sample("m", &[("k", "v\"")], 1.5);
        assert_eq!(o.0, "m{k=\"v\\\"\"} 1.5\n");
    }
}
