//! Containers labelled for this home that no spec knows: a container worker whose spec was
//! removed or quarantined, or a launch whose spawner died between the engine's `run` and
//! the spec. Nothing tracks them, so doctor names them (`cleanup-zombies` removes them).
//! Only the engines this home's container types use are asked.

use super::Finding;
use crate::container::{self, Engine};
use crate::home::Home;

/// One finding per container of this home that no spec knows, and one per engine that
/// cannot list its containers.
pub fn orphans(home: &Home) -> Vec<Finding> {
    let mut out = Vec::new();
    // Podman and a Docker CLI on Podman's socket list the same containers: one finding each.
    let mut seen = std::collections::BTreeSet::new();
    for kind in container::engines_in_use(home) {
        let listed = match Engine::new(kind).list(home.root()) {
            Ok(l) => l,
            Err(e) => {
                out.push(Finding {
                    kind: "container_engine",
                    path: kind.program().into(),
                    detail: format!(
                        "container worker types use {}, which cannot list containers: {e}",
                        kind.program()
                    ),
                    fixed: None,
                });
                continue;
            }
        };
        let known = |id: &str| {
            crate::id::validate("worker", id).is_ok() && crate::spec::locate(home, id).is_some()
        };
        for l in container::orphans(&listed, known) {
            if !seen.insert(l.id.clone()) {
                continue;
            }
            let what = match &l.worker_id {
                Some(w) => format!("no spec knows worker {w}: cleanup-zombies removes it"),
                None => format!(
                    "it is not named corral-<worker_id>: remove it with `{} rm -f {}`",
                    kind.program(),
                    l.name
                ),
            };
            out.push(Finding {
                kind: "orphan_container",
                path: format!("{}:{}", kind.program(), l.name),
                detail: format!(
                    "container {} ({}, id {}) is labelled {}={} but {what}",
                    l.name,
                    l.state,
                    l.id.get(..12).unwrap_or(&l.id),
                    container::LABEL_HOME,
                    container::home_label(home.root()),
                ),
                fixed: None,
            });
        }
    }
    out
}
