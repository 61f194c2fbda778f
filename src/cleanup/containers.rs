//! Leftover containers. A container worker's container is not started with `--rm` (its exit
//! code would be lost), so it stays after the worker's end until cleanup removes it:
//!
//! - a zombie's container, when cleanup archives the zombie (after stopping it);
//! - in every run without `--worker`, the containers labelled for this home whose worker
//!   is archived, whose worker completed and whose container has exited, or whose spec is
//!   gone altogether (nothing else would ever remove them).
//!
//! Only containers named `corral-<worker_id>` and labelled for this home and that worker
//! are removed ([`crate::container::control::remove`] checks the labels again), and only
//! through the engines this home's container types use, so a home without container types
//! never starts an engine. A docker container's output, as the engine kept it, is copied to
//! the worker's `container.log` before it goes (after a SIGKILL of its `docker run` client
//! that is the only full record of it).

use crate::container::{self, control, EngineKind, Target};
use crate::home::{Home, StateDir};
use crate::spec;
use serde::Serialize;

/// What cleanup did (or would do) with one container.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContainerItem {
    pub engine: &'static str,
    pub name: String,
    pub worker_id: Option<String>,
    /// As the engine listed it (`running`, `exited`, …).
    pub state: String,
    /// Why it goes: `no spec`, `archived`, `completed`.
    pub reason: String,
    /// `removed`, `would_remove`, or `failed`.
    pub action: &'static str,
    pub error: Option<String>,
}

/// Why the container of `worker_id` may go, or `None` while it belongs to a live (or
/// still finishing) worker.
fn leftover(home: &Home, worker_id: &str, state: &str) -> Option<&'static str> {
    match spec::locate(home, worker_id) {
        // Looked at twice: a spec renamed between state directories is missed by one look.
        None => spec::locate(home, worker_id).is_none().then_some("no spec"),
        Some((StateDir::Archived, _)) => Some("archived"),
        // A worker may report completion before its process exits: its container goes once
        // it has exited.
        Some((StateDir::Completed, _)) if state != "running" => Some("completed"),
        Some(_) => None,
    }
}

/// Removes (or, in a dry run, lists) the leftover containers of this home.
pub fn sweep(home: &Home, dry_run: bool, engines: &[EngineKind]) -> Vec<ContainerItem> {
    let mut out = Vec::new();
    // Docker first: when both engines reach one Podman store, the container goes through the
    // engine that keeps its log, and Podman then finds it gone.
    let mut engines = engines.to_vec();
    engines.sort_by_key(|k| *k != EngineKind::Docker);
    for kind in engines {
        let engine = container::Engine::new(kind);
        let listed = match engine.list(home.root()) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("cannot list {} containers: {e}", kind.program());
                out.push(ContainerItem {
                    engine: kind.program(),
                    name: String::new(),
                    worker_id: None,
                    state: String::new(),
                    reason: "listing".into(),
                    action: "failed",
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        for l in listed {
            let Some(wid) = l.worker_id.clone() else {
                continue;
            };
            if crate::id::validate("worker", &wid).is_err() {
                continue;
            }
            let Some(reason) = leftover(home, &wid, &l.state) else {
                continue;
            };
            let mut item = ContainerItem {
                engine: kind.program(),
                name: l.name.clone(),
                worker_id: Some(wid.clone()),
                state: l.state.clone(),
                reason: reason.into(),
                action: "would_remove",
                error: None,
            };
            if !dry_run {
                let t = Target {
                    kind,
                    name: l.name.clone(),
                    id: Some(l.id.clone()),
                };
                match control::remove(home.root(), &wid, &t) {
                    Ok(control::Removed::Removed) => item.action = "removed",
                    // Gone meanwhile, or not labelled for this worker: not ours to report.
                    Ok(_) => continue,
                    Err(e) => {
                        item.action = "failed";
                        item.error = Some(e.to_string());
                    }
                }
            }
            out.push(item);
        }
    }
    out
}

/// Removes the container of a worker cleanup just archived; what happened, for its item.
pub fn remove_of(home: &Home, id: &str, t: &Target) -> &'static str {
    match control::remove(home.root(), id, t) {
        Ok(control::Removed::Removed) => "removed",
        Ok(control::Removed::Missing) => "gone",
        Ok(control::Removed::NotOurs) => "not this worker's (kept)",
        Err(e) => {
            tracing::warn!("{id}: cannot remove container {}: {e}", t.reference());
            "removal failed"
        }
    }
}
