//! The doctor's checks beyond the state directories: configuration, the monitor, who can
//! reach the home, and pending task files.

use super::Finding;
use crate::error::Result;
use crate::home::{Home, StateDir};
use crate::spec::{self, Status};

/// The policy as the monitor loads it (file, then `CORRAL_HEARTBEAT__…`), so doctor refuses
/// exactly what would stop the monitor. One line to change when the monitor's loader moves.
pub fn monitor_policy(home: &Home) -> Result<crate::policy::HeartbeatPolicy> {
    crate::liveness::effective_policy(home, &[])
}

/// Records a hand move: the status becomes what the directory means, the spec stays.
pub fn record_hand_move(home: &Home, id: &str, dir: StateDir) -> Result<String> {
    let _g = spec::lock(home, id)?;
    let Some((now_dir, path)) = spec::locate(home, id) else {
        return Ok("already gone".into());
    };
    if now_dir != dir {
        return Ok(format!("moved on to {}/ meanwhile", now_dir.name()));
    }
    let mut s = spec::read(&path)?;
    let to = Status::Completed;
    if s.status.fits(dir) {
        return Ok(format!("status is {} already", s.status));
    }
    let now = crate::time::now();
    let from = s.status;
    s.set_status(to, &format!("moved to {}/ by hand", dir.name()), now);
    if to == Status::Completed && s.completed_at.is_none() {
        s.completed_at = Some(now);
    }
    s.normalize(now);
    spec::save(home, dir, &s)?;
    Ok(format!("status {from} -> {to}, left in {}/", dir.name()))
}

/// The policy (through the monitor's loader) and the worker types.
pub fn config(home: &Home) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Err(e) = monitor_policy(home) {
        out.push(Finding {
            kind: "invalid_policy",
            path: home.policy_path().display().to_string(),
            detail: format!("heartbeat-monitor would refuse to start: {e}"),
            fixed: None,
        });
    }
    match crate::policy::WorkerTypes::load(home) {
        Err(e) => out.push(Finding {
            kind: "invalid_worker_types",
            path: home.worker_types_path().display().to_string(),
            detail: format!("spawn-worker and restarts would fail: {e}"),
            fixed: None,
        }),
        Ok(types) => {
            for (name, t) in &types.types {
                for w in crate::worker_types::warnings(name, t) {
                    out.push(Finding {
                        kind: "worker_type",
                        path: home.worker_types_path().display().to_string(),
                        detail: w,
                        fixed: None,
                    });
                }
            }
        }
    }
    out
}

/// The layout `corral init` made (DESIGN §2), as every command expects it: a missing state
/// directory made every cleanup or completion fail, a missing types file every spawn, and
/// an event log replaced by a symlink or a directory dropped every event with exit 0, while
/// doctor said ok. `--fix` recreates a missing directory or log (the home's modes), writes
/// a missing config file from the template, and sets aside (in `quarantine/`) what stands
/// where a log must be. The budget file has its own check.
pub fn layout(home: &Home, fix: bool) -> Vec<Finding> {
    let m = crate::perms::modes(home);
    let mut out = Vec::new();
    for (rel, contents) in crate::home::TEMPLATE {
        let path = home.root().join(rel.trim_end_matches('/'));
        let want_dir = rel.ends_with('/');
        let is_log = rel.ends_with(".jsonl");
        if rel.ends_with("token-budget.json") {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path);
        let (kind, detail, fixed) = match meta {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (kind, detail) = if want_dir {
                    ("missing_dir", "a directory of the home's layout is missing")
                } else if is_log {
                    ("missing_file", "a log of the home's layout is missing")
                } else {
                    (
                        "missing_config",
                        "a config file is missing (commands fall back or fail)",
                    )
                };
                let fixed = fix
                    .then(|| {
                        if want_dir {
                            crate::perms::mkdir_all(&path, m).map(|()| "created".to_string())
                        } else {
                            crate::perms::write_file(&path, contents.as_bytes(), m).map(|()| {
                                if is_log {
                                    "created empty"
                                } else {
                                    "written from the template"
                                }
                                .to_string()
                            })
                        }
                    })
                    .and_then(|r| r.map_err(|e| tracing::warn!("{e}")).ok());
                (kind, detail.to_string(), fixed)
            }
            Err(e) => ("unreadable", format!("cannot look at it: {e}"), None),
            Ok(md) if want_dir && !md.is_dir() => (
                "not_a_directory",
                format!(
                    "must be a directory, is a {} (set it aside by hand)",
                    file_kind(&md)
                ),
                None,
            ),
            Ok(md) if !want_dir && !md.file_type().is_file() => {
                let detail = format!(
                    "must be a regular file, is a {}: {}",
                    file_kind(&md),
                    if is_log {
                        "every event written here is lost"
                    } else {
                        "it is refused (never followed)"
                    }
                );
                let fixed = (fix && is_log)
                    .then(|| {
                        crate::store::quarantine(
                            home,
                            &path,
                            "not a regular file where a log must be",
                        )
                        .and_then(|q| {
                            crate::perms::write_file(&path, b"", m).map(|()| {
                                format!("set aside as {}; a new log started", q.display())
                            })
                        })
                    })
                    .and_then(|r| r.map_err(|e| tracing::warn!("{e}")).ok());
                ("not_a_file", detail, fixed)
            }
            Ok(_) => continue,
        };
        out.push(Finding {
            kind,
            path: path.display().to_string(),
            detail,
            fixed,
        });
    }
    out
}

fn file_kind(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "file"
    } else {
        "special file"
    }
}

/// A monitor that is not watching while launched workers are active (their exit would go
/// unnoticed and their health would never change).
pub fn monitor(home: &Home, launched_active: u64) -> Vec<Finding> {
    if launched_active == 0 {
        return Vec::new();
    }
    let m = crate::status::monitor_state(home, crate::time::now());
    if m.watching {
        return Vec::new();
    }
    vec![Finding {
        kind: if m.stalled {
            "monitor_stalled"
        } else {
            "monitor_not_running"
        },
        path: home.named_lock("heartbeat-monitor").display().to_string(),
        detail: if m.stalled {
            format!(
                "the heartbeat monitor holds its lock but finished no pass for {:.0}s, with {launched_active} launched worker(s) active",
                m.last_pass_age_seconds.unwrap_or(0.0)
            )
        } else {
            format!(
                "no heartbeat-monitor is running ({}) while {launched_active} launched worker(s) are active: deaths go unnoticed (start heartbeat-monitor)",
                m.evidence
            )
        },
        fixed: None,
    }]
}

/// What users outside the owner and the home's group can reach (DESIGN §10).
pub fn exposure(home: &Home, fix: bool) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    for e in crate::perms::exposed(home)? {
        let mut f = Finding {
            kind: "exposed",
            path: e.path.display().to_string(),
            detail: format!(
                "others can {} it (mode {:04o}): whoever can write a home runs commands as its monitor, and specs, tasks and logs may hold secrets",
                e.others_can.join(", "),
                e.mode
            ),
            fixed: None,
        };
        if fix {
            crate::perms::close(home, &e)?;
            f.fixed = Some(if e.path == home.root() {
                "others' write permission removed".into()
            } else {
                "others' permissions removed".into()
            });
        }
        out.push(f);
    }
    Ok(out)
}

/// The queue's own consistency check (`queue::check`): malformed or misnamed pending
/// files, name/content mismatches, ids in two places, unrecorded claims, drifted counts.
/// One implementation, so the doctor and the queue never disagree about a task file.
pub fn pending_tasks(home: &Home, fix: bool) -> Result<Vec<Finding>> {
    Ok(crate::queue::check(home, fix)?
        .into_iter()
        .map(|f| Finding {
            kind: f.kind,
            path: f.path,
            detail: f.detail,
            fixed: f.fixed,
        })
        .collect())
}

/// Most queue files and directories reported one by one; the rest are summed up in one
/// finding (a home converted by hand can have a million of them).
const MODE_FINDINGS_MAX: usize = 20;

/// Queue directories whose mode is wider or narrower than the home's (DESIGN §10:
/// `0700`/`0600` private, `2770`/`0660` group-shared), files narrower than it, and either in
/// another group than a shared home's: a wide directory exposes tasks, a narrow mode locks
/// the home's other users out of enqueueing and claiming. A file wider than the home's is
/// not reported: the directories above it keep others out, and a task written by hand
/// under the usual umask (0644) is supported. `--fix` sets the home's mode (what the owner
/// of each can).
pub fn queue_modes(home: &Home, fix: bool) -> Vec<Finding> {
    let root = home.coordination().join("tasks");
    let found: Vec<_> = crate::perms::mismatched(home, &root)
        .into_iter()
        .filter(|x| x.is_dir || x.want & !x.mode != 0 || x.gid.is_some())
        .collect();
    let shared = crate::perms::modes(home) == crate::home::SHARED;
    let home_kind = if shared { "group-shared" } else { "private" };
    let mut out = Vec::new();
    let mut fixed = 0usize;
    let mut unfixed = 0usize;
    let total = found.len();
    for (i, x) in found.iter().enumerate() {
        let repaired = if fix {
            match crate::perms::repair(home, x) {
                Ok(()) => {
                    fixed += 1;
                    Some(format!("set to {:04o}", x.want))
                }
                Err(e) => {
                    unfixed += 1;
                    if i < MODE_FINDINGS_MAX {
                        tracing::warn!("cannot repair {}: {e}", x.path.display());
                    }
                    None
                }
            }
        } else {
            None
        };
        if i >= MODE_FINDINGS_MAX {
            continue;
        }
        let what = if x.is_dir { "directory" } else { "file" };
        let mut detail = format!(
            "{what} mode {:04o}, the {home_kind} home's is {:04o}",
            x.mode, x.want
        );
        if let Some(g) = x.gid {
            detail.push_str(&format!(" (group {g} is not the home's)"));
        }
        let mut why = Vec::new();
        if x.is_dir && x.mode & !x.want != 0 {
            why.push("wider than the home's: tasks may hold secrets");
        }
        if x.want & !x.mode != 0 || x.gid.is_some() {
            why.push(
                "narrower than the home's: its users cannot enqueue, claim or move tasks here",
            );
        }
        if !why.is_empty() {
            detail.push_str(": ");
            detail.push_str(&why.join("; "));
        }
        out.push(Finding {
            kind: "queue_mode",
            path: x.path.display().to_string(),
            detail,
            fixed: repaired,
        });
    }
    if total > MODE_FINDINGS_MAX {
        let rest = total - MODE_FINDINGS_MAX;
        out.push(Finding {
            kind: "queue_mode",
            path: root.display().to_string(),
            detail: format!(
                "{rest} more queue files and directories have modes other than the home's"
            ),
            fixed: (fix && unfixed == 0).then(|| format!("{fixed} set to the home's modes in all")),
        });
    }
    out
}
