//! What the queue tests share: the home, the tasks directory, the task files under a pending
//! tree, and the CLI calls every one of them makes.

use super::scene::Scene;
use corral::home::Home;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The library's view of the scene's home.
pub fn home_of(s: &Scene) -> Home {
    Home::at(&s.home)
}

/// `coordination/tasks/`.
pub fn tasks(s: &Scene) -> PathBuf {
    s.coord().join("tasks")
}

/// Task files (`*.json`) anywhere under `dir` (a pending tree, buckets included), sorted.
pub fn json_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| e.into_path())
        .collect();
    v.sort();
    v
}

/// `task-queue enqueue ARGS…`; returns the new task's id.
pub fn enqueue(s: &Scene, args: &[&str]) -> String {
    let mut a = vec!["enqueue"];
    a.extend_from_slice(args);
    s.ok("task-queue", &a).trim().to_string()
}

/// A task's state, as `task-queue show` reports it.
pub fn state_of(s: &Scene, id: &str) -> String {
    let v: Value = serde_json::from_str(&s.ok("task-queue", &["show", id])).expect("show");
    v["state"].as_str().unwrap_or("?").to_string()
}

/// A worker (no process) that can own claimed tasks.
pub fn spawn_worker(s: &Scene) -> String {
    s.ok(
        "spawn-worker",
        &["--type", "implementation-worker", "--tokens", "1000"],
    )
    .trim()
    .to_string()
}
