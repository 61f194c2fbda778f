//! `corral doctor`: the consistency check of a home. It finds what a crash, a hand edit or a
//! bash script can leave behind (a spec in two directories, a status that disagrees with its
//! directory, bad JSON, symlinks, stale staging files, budget drift, malformed pending
//! tasks), configuration the monitor would refuse (the policy, through the monitor's own
//! loader, and `worker-types.json`), a monitor that is not running while launched workers
//! are active, and anything users outside the home's owner and group can reach (DESIGN §10).
//! With `--fix` it repairs what is safe to repair, saying what it did; what it cannot repair
//! keeps the exit code at 10.
//!
//! A spec with a live status in `completed/` was moved there by hand, as the runbook's
//! manual shutdown does (`jq '.status = "shutting_down"'`, kill, then `mv` into
//! `completed/`): the operator's move is the truth, so `--fix` records it as completed
//! instead of moving it back into `active/`.

use crate::budget::{self, RecalcOptions};
use crate::error::Result;
use crate::events::{self, Event, EventType};
use crate::home::{Home, StateDir};
use crate::spec::{self, Status};
use crate::store::{self, ReadError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

mod checks;
mod containers;

/// Staging files younger than this may belong to a write in progress.
pub const TMP_GRACE: Duration = Duration::from_secs(2);

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub path: String,
    pub detail: String,
    /// What `--fix` did about it, if anything.
    pub fixed: Option<String>,
}

/// Runs every check; with `fix`, repairs what is safe. The state directories are scanned
/// completely before anything is moved, so a repair never makes a spec count twice.
pub fn run(home: &Home, fix: bool) -> Result<Vec<Finding>> {
    // First: the other checks (and their repairs) need the layout.
    let mut out = checks::layout(home, fix);
    let mut seen: BTreeMap<String, Vec<(StateDir, Status)>> = BTreeMap::new();
    let mut launched_active = 0u64;
    let mut refused = Vec::new();
    let mut unrecorded = Vec::new();
    let mut listing = Vec::new();
    for dir in StateDir::ALL {
        let Ok(rd) = std::fs::read_dir(home.specs_dir(dir)) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .collect();
        names.sort();
        listing.push((dir, names));
    }
    let progress =
        crate::progress::Progress::new("corral doctor", listing.iter().map(|(_, n)| n.len()).sum());
    for (dir, names) in listing {
        let d = home.specs_dir(dir);
        for name in names {
            progress.inc();
            let p = d.join(&name);
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            match spec::read_for_scan(&p) {
                Ok(s) if s.worker_id != id => refused.push((
                    "id_mismatch",
                    p,
                    format!("file name says {id}, spec says {}", s.worker_id),
                )),
                Ok(s) => {
                    if dir == StateDir::Active && s.process.as_ref().is_some_and(|p| p.is_local()) {
                        launched_active += 1;
                    }
                    if dir == StateDir::Active && s.process.is_none() && s.launch.is_some() {
                        let proof = crate::process::Proof::new(id, home.alive_lock(id));
                        if let Some(pid) = crate::process::unrecorded_launch(&proof) {
                            unrecorded.push((id.to_string(), pid, p.clone()));
                        }
                    }
                    seen.entry(id.to_string())
                        .or_default()
                        .push((dir, s.status))
                }
                Err(ReadError::Missing) => {}
                Err(ReadError::Refused(why)) => refused.push(("invalid_spec", p, why)),
                Err(ReadError::Io(e)) => return Err(e),
            }
        }
    }
    progress.finish();
    for (kind, p, why) in refused {
        out.push(bad(home, fix, kind, &p, why)?);
    }
    // A launch whose launcher died before recording it: the process runs with the proofs
    // of being this worker, and nothing on record can reach it.
    for (id, pid, p) in unrecorded {
        out.push(Finding {
            kind: "unrecorded_process",
            path: p.display().to_string(),
            detail: format!(
                "pid {pid} holds the liveness lock of {id} and carries its id, but the spec \
                 has no process (its launcher died before recording it)"
            ),
            fixed: fix
                .then(|| crate::stop::recover_launch(home, &id))
                .flatten()
                .map(|_| "recorded in the spec".to_string()),
        });
    }
    for (id, copies) in &seen {
        // The furthest state is the truth: a move renames forward, never back.
        let Some(&(keep, status)) = copies.iter().max_by_key(|(d, _)| rank(*d)) else {
            continue;
        };
        for (d, _) in copies.iter().filter(|(d, _)| *d != keep) {
            let p = home.spec_path(*d, id);
            let mut f = Finding {
                kind: "duplicate_spec",
                path: p.display().to_string(),
                detail: format!("{id} is in both {}/ and {}/", d.name(), keep.name()),
                fixed: None,
            };
            if fix {
                let _g = spec::lock(home, id)?;
                let q = events::quarantine(
                    home,
                    &p,
                    &format!("duplicate of {}", home.spec_path(keep, id).display()),
                )?;
                f.fixed = Some(format!("quarantined as {}", q.display()));
            }
            out.push(f);
        }
        // Only the runbook's manual shutdown (a live status moved into completed/) is taken
        // as the operator's word; any other disagreement is settled by the status, which a
        // transition writes before it moves the file.
        if keep == StateDir::Completed && status.home_dir() == StateDir::Active {
            let p = home.spec_path(keep, id);
            let mut f = Finding {
                kind: "moved_by_hand",
                path: p.display().to_string(),
                detail: format!(
                    "status {status} in {}/: moved there by hand (the directory is kept)",
                    keep.name()
                ),
                fixed: None,
            };
            if fix {
                f.fixed = Some(checks::record_hand_move(home, id, keep)?);
            }
            out.push(f);
        } else if !status.fits(keep) {
            let p = home.spec_path(keep, id);
            let mut f = Finding {
                kind: "status_mismatch",
                path: p.display().to_string(),
                detail: format!(
                    "status {status} in {}/ (belongs in {}/)",
                    keep.name(),
                    status.home_dir().name()
                ),
                fixed: None,
            };
            if fix {
                f.fixed = Some(settle_mismatch(home, id, keep, status)?);
            }
            out.push(f);
        }
    }
    let tmp = home.tmp_dir();
    if let Ok(rd) = std::fs::read_dir(&tmp) {
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() >= TMP_GRACE)
                .unwrap_or(true);
            if !old || p.file_name().is_some_and(|n| n == ".keep") {
                continue;
            }
            let mut f = Finding {
                kind: "leftover_tmp",
                path: p.display().to_string(),
                detail: "staging file of an interrupted write".into(),
                fixed: None,
            };
            if fix {
                std::fs::remove_file(&p).map_err(|e| {
                    crate::error::Error::io(format!("cannot remove {}", p.display()), e)
                })?;
                f.fixed = Some("removed".into());
            }
            out.push(f);
        }
    }
    out.extend(checks::pending_tasks(home, fix)?);
    out.extend(checks::config(home));
    out.extend(checks::monitor(home, launched_active));
    out.extend(checks::exposure(home, fix)?);
    out.extend(checks::queue_modes(home, fix));
    out.extend(containers::orphans(home));
    if let Err(e) = budget::read(home) {
        out.push(Finding {
            kind: "invalid_budget",
            path: home.budget_path().display().to_string(),
            detail: format!(
                "{e} (rebuild it from the specs: corral init --force --total-tokens N)"
            ),
            fixed: None,
        });
        return Ok(out);
    }
    let drift = budget::recalc(
        home,
        &RecalcOptions {
            check_only: !fix,
            ..Default::default()
        },
    )?;
    if drift.any() {
        out.push(Finding {
            kind: "budget_drift",
            path: home.budget_path().display().to_string(),
            detail: format!(
                "file says used {} consumed {}, specs say used {} consumed {}",
                drift.before.used, drift.before.consumed, drift.after.used, drift.after.consumed
            ),
            fixed: fix.then(|| format!("recalculated: available {}", drift.after.available)),
        });
        if fix {
            events::emit(home, budget_event(&drift));
        }
    }
    Ok(out)
}

/// The `budget_recalculated` event for a drift.
pub fn budget_event(d: &budget::Drift) -> Event {
    Event::new(
        EventType::BudgetRecalculated,
        format!(
            "budget recalculated: used {:+}, consumed {:+}, available {:+}",
            d.used_drift, d.consumed_drift, d.available_drift
        ),
    )
    .with("used_drift", d.used_drift)
    .with("consumed_drift", d.consumed_drift)
    .with("available_drift", d.available_drift)
    .with("used", d.after.used)
    .with("consumed", d.after.consumed)
    .with("available", d.after.available)
    .with("total", d.after.total)
}

fn rank(d: StateDir) -> u8 {
    match d {
        StateDir::Active => 0,
        StateDir::Zombie => 1,
        StateDir::Completed => 2,
        StateDir::Archived => 3,
    }
}

fn bad(
    home: &Home,
    fix: bool,
    kind: &'static str,
    p: &std::path::Path,
    why: String,
) -> Result<Finding> {
    let mut f = Finding {
        kind,
        path: p.display().to_string(),
        detail: why.clone(),
        fixed: None,
    };
    if fix {
        let q = events::quarantine(home, p, &why)?;
        f.fixed = Some(format!("quarantined as {}", q.display()));
    }
    Ok(f)
}

fn settle_mismatch(home: &Home, id: &str, dir: StateDir, status: Status) -> Result<String> {
    let _g = spec::lock(home, id)?;
    let Some((now_dir, _)) = spec::locate(home, id) else {
        return Ok("already gone".into());
    };
    if now_dir != dir {
        return Ok(format!("moved on to {}/ meanwhile", now_dir.name()));
    }
    let to = status.home_dir();
    if spec::locate_in(home, id, to) {
        return Ok(format!("left alone: {}/ holds a copy too", to.name()));
    }
    store::move_file(&home.spec_path(dir, id), &home.spec_path(to, id))?;
    Ok(format!("moved to {}/ to match its status", to.name()))
}
