//! The home: one directory holding everything corral knows (DESIGN.md §2). Every path is
//! built here and nowhere else, so a test can point all of corral at a temporary directory
//! and the layout can be read off one file. The permissions of what corral creates are
//! decided here too (DESIGN §10: a home belongs to one user or one group).

use crate::error::{Error, IoContext, Result};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The four places a worker spec can live. Where a spec lives and its status never disagree.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum StateDir {
    Active,
    Completed,
    Zombie,
    Archived,
}

impl StateDir {
    /// All state directories, in lifecycle order.
    pub const ALL: [StateDir; 4] = [
        StateDir::Active,
        StateDir::Completed,
        StateDir::Zombie,
        StateDir::Archived,
    ];

    /// The directory name.
    pub fn name(self) -> &'static str {
        match self {
            StateDir::Active => "active",
            StateDir::Completed => "completed",
            StateDir::Zombie => "zombie",
            StateDir::Archived => "archived",
        }
    }

    /// Parses a directory name.
    pub fn parse(s: &str) -> Option<StateDir> {
        StateDir::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Workers in these directories hold a budget reservation (DESIGN.md §5).
    pub fn is_live(self) -> bool {
        matches!(self, StateDir::Active | StateDir::Zombie)
    }
}

/// The task queue states: the four of DESIGN.md §8, plus `deferred` (waiting for the tasks
/// it runs `--after`) and `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Processing,
    Completed,
    Failed,
    Deferred,
    Cancelled,
}

impl TaskState {
    /// All task states.
    pub const ALL: [TaskState; 6] = [
        TaskState::Pending,
        TaskState::Processing,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Deferred,
        TaskState::Cancelled,
    ];

    /// The directory name.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Processing => "processing",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Deferred => "deferred",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses a state name.
    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// A resolved corral home.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

/// The template `corral init` lays down: (relative path, contents); a path ending in `/` is
/// a directory. A test keeps this list equal to `coordination-template/` in the repository.
pub const TEMPLATE: &[(&str, &str)] = &[
    ("coordination/worker-specs/active/", ""),
    ("coordination/worker-specs/completed/", ""),
    ("coordination/worker-specs/zombie/", ""),
    ("coordination/worker-specs/archived/", ""),
    ("coordination/config/", ""),
    ("coordination/metrics/", ""),
    ("coordination/tasks/pending/", ""),
    ("coordination/tasks/processing/", ""),
    ("coordination/tasks/completed/", ""),
    ("coordination/tasks/failed/", ""),
    ("coordination/tasks/deferred/", ""),
    ("coordination/tasks/cancelled/", ""),
    ("coordination/quarantine/", ""),
    ("coordination/.locks/", ""),
    ("coordination/.tmp/", ""),
    ("agents/logs/workers/", ""),
    (
        "coordination/token-budget.json",
        include_str!("../coordination-template/coordination/token-budget.json"),
    ),
    (
        "coordination/config/heartbeat-policy.json",
        include_str!("../coordination-template/coordination/config/heartbeat-policy.json"),
    ),
    (
        "coordination/config/worker-types.json",
        include_str!("../coordination-template/coordination/config/worker-types.json"),
    ),
    ("coordination/dashboard-events.jsonl", ""),
    ("coordination/metrics/worker-restart-history.jsonl", ""),
];

impl Home {
    /// A home at `root`, not checked (for `init` and tests).
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// Resolves the home: `--home` > `$CORRAL_HOME` > `$COMMIT_RELAY_HOME`, and checks that it
    /// was initialised. Nothing is ever created implicitly.
    pub fn resolve(flag: Option<&Path>) -> Result<Home> {
        let home = Home::locate(flag)?;
        home.check()?;
        Ok(home)
    }

    /// Resolves the home path without checking it.
    pub fn locate(flag: Option<&Path>) -> Result<Home> {
        let from_env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = flag
            .map(Path::to_path_buf)
            .or_else(|| from_env("CORRAL_HOME"))
            .or_else(|| from_env("COMMIT_RELAY_HOME"))
            .ok_or_else(|| {
                Error::NoHome("no coordination home: pass --home or set CORRAL_HOME".into())
            })?;
        Ok(Home::at(root))
    }

    /// Errors with exit 8 unless `coordination/` exists.
    pub fn check(&self) -> Result<()> {
        if self.coordination().is_dir() {
            Ok(())
        } else {
            Err(Error::NoHome(format!(
                "{} is not a corral home (no coordination/ directory): run `corral init --home {}`",
                self.root.display(),
                self.root.display()
            )))
        }
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<home>/coordination`.
    pub fn coordination(&self) -> PathBuf {
        self.root.join("coordination")
    }

    /// `worker-specs/<state>/`.
    pub fn specs_dir(&self, dir: StateDir) -> PathBuf {
        self.coordination().join("worker-specs").join(dir.name())
    }

    /// `worker-specs/<state>/<id>.json`; `id` must already be validated.
    pub fn spec_path(&self, dir: StateDir, id: &str) -> PathBuf {
        self.specs_dir(dir).join(format!("{id}.json"))
    }

    /// `token-budget.json`.
    pub fn budget_path(&self) -> PathBuf {
        self.coordination().join("token-budget.json")
    }

    /// `config/heartbeat-policy.json`.
    pub fn policy_path(&self) -> PathBuf {
        self.coordination()
            .join("config")
            .join("heartbeat-policy.json")
    }

    /// `config/worker-types.json`.
    pub fn worker_types_path(&self) -> PathBuf {
        self.coordination().join("config").join("worker-types.json")
    }

    /// `dashboard-events.jsonl`.
    pub fn events_path(&self) -> PathBuf {
        self.coordination().join("dashboard-events.jsonl")
    }

    /// The `n`th rotated event log (`.1` is the newest).
    pub fn rotated_events_path(&self, n: u32) -> PathBuf {
        self.coordination()
            .join(format!("dashboard-events.jsonl.{n}"))
    }

    /// `metrics/`.
    pub fn metrics_dir(&self) -> PathBuf {
        self.coordination().join("metrics")
    }

    /// `metrics/worker-restart-history.jsonl`.
    pub fn restart_history_path(&self) -> PathBuf {
        self.metrics_dir().join("worker-restart-history.jsonl")
    }

    /// `metrics/restart-state.json`: the monitor's pending restarts, circuit breakers and
    /// recent restart times, so a restarted monitor carries on where the last one stopped.
    pub fn restart_state_path(&self) -> PathBuf {
        self.metrics_dir().join("restart-state.json")
    }

    /// `metrics/corral.prom`.
    pub fn prom_path(&self) -> PathBuf {
        self.metrics_dir().join("corral.prom")
    }

    /// `tasks/<state>/`.
    pub fn tasks_dir(&self, state: TaskState) -> PathBuf {
        self.coordination().join("tasks").join(state.name())
    }

    /// `quarantine/`.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.coordination().join("quarantine")
    }

    /// `.locks/`.
    pub fn locks_dir(&self) -> PathBuf {
        self.coordination().join(".locks")
    }

    /// `.tmp/`: staging for atomic writes, on the same filesystem as every target.
    pub fn tmp_dir(&self) -> PathBuf {
        self.coordination().join(".tmp")
    }

    /// `.locks/workers/<id>.lock`: the per-worker sidecar lock.
    pub fn worker_lock(&self, id: &str) -> PathBuf {
        self.locks_dir().join("workers").join(format!("{id}.lock"))
    }

    /// `.locks/alive/<id>.lock`: held by a launched worker for as long as it lives.
    pub fn alive_lock(&self, id: &str) -> PathBuf {
        self.locks_dir().join("alive").join(format!("{id}.lock"))
    }

    /// `.locks/budget.lock`.
    pub fn budget_lock(&self) -> PathBuf {
        self.locks_dir().join("budget.lock")
    }

    /// `.locks/events.lock`.
    pub fn events_lock(&self) -> PathBuf {
        self.locks_dir().join("events.lock")
    }

    /// `.locks/<name>.lock` for singletons (the monitor, cleanup runs).
    pub fn named_lock(&self, name: &str) -> PathBuf {
        self.locks_dir().join(format!("{name}.lock"))
    }

    /// `agents/logs/workers/<id>/`.
    pub fn worker_log_dir(&self, id: &str) -> PathBuf {
        self.root
            .join("agents")
            .join("logs")
            .join("workers")
            .join(id)
    }

    /// `agents/logs/workers/<id>/worker.log`.
    pub fn worker_log(&self, id: &str) -> PathBuf {
        self.worker_log_dir(id).join("worker.log")
    }

    /// `agents/logs/`: daemon logs.
    pub fn daemon_log_dir(&self) -> PathBuf {
        self.root.join("agents").join("logs")
    }

    /// Lays down the template. Existing files are kept unless `force`, which rewrites the
    /// configuration and budget files (never specs, tasks or logs).
    pub fn init(&self, force: bool) -> Result<Vec<PathBuf>> {
        if self.coordination().is_dir() && !force {
            return Err(Error::Conflict(format!(
                "{} is already a corral home (pass --force to rewrite its config and budget)",
                self.root.display()
            )));
        }
        let mut written = Vec::new();
        create_dir_all(&self.root)?;
        for (rel, contents) in TEMPLATE {
            let path = self.root.join(rel.trim_end_matches('/'));
            if rel.ends_with('/') {
                create_dir_all(&path)?;
                continue;
            }
            if let Some(parent) = path.parent() {
                create_dir_all(parent)?;
            }
            let is_log = rel.ends_with(".jsonl");
            if path.exists() && (is_log || !force) {
                continue;
            }
            write_private(&path, contents.as_bytes())?;
            written.push(path);
        }
        Ok(written)
    }
}

/// Permissions for what corral creates (DESIGN §10): the home belongs to one user or one
/// group, never to everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    pub dir: u32,
    pub file: u32,
}

/// A private home: `0700` directories, `0600` files.
pub const PRIVATE: Modes = Modes {
    dir: 0o700,
    file: 0o600,
};

/// A group-shared home (`corral init` in a setgid, group-writable directory): `2770`
/// directories (new ones inherit the group), `0660` files.
pub const SHARED: Modes = Modes {
    dir: 0o2770,
    file: 0o660,
};

/// The modes for something created inside `dir`: shared when `dir` has the setgid bit and
/// group write, private otherwise. Deciding by the directory keeps the rule local (no home
/// needed) and consistent, since subdirectories of a setgid directory inherit the bit.
pub fn modes_in(dir: &Path) -> Modes {
    match std::fs::metadata(dir) {
        Ok(m) if m.mode() & 0o2000 != 0 && m.mode() & 0o020 != 0 => SHARED,
        _ => PRIVATE,
    }
}

/// Creates `path` and any missing parents with the modes of the home (not the umask's).
pub fn create_dir_all(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = parent {
        create_dir_all(p)?;
    }
    let modes = parent.map(modes_in).unwrap_or(PRIVATE);
    match std::fs::DirBuilder::new()
        .mode(modes.dir & 0o777)
        .create(path)
    {
        Ok(()) => {
            if modes == SHARED {
                // The umask strips group bits from mkdir's mode; set them explicitly.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(modes.dir))
                    .ctx("set permissions of", path)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(Error::io(format!("cannot create {}", path.display()), e)),
    }
}

/// Writes a template file with the home's file mode (not the umask's 0644).
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = path.parent().map(modes_in).unwrap_or(PRIVATE).file;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ctx("write", path)?;
    let meta = f.metadata().ctx("stat", path)?;
    if meta.mode() & 0o7777 != mode && meta.uid() == rustix::process::geteuid().as_raw() {
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .ctx("set permissions of", path)?;
    }
    f.write_all(contents).ctx("write", path)
}

/// A fresh, initialised home in a temp dir, for unit tests across the crate (keep the
/// `TempDir` alive as long as the home is used).
#[cfg(test)]
pub(crate) fn test_home() -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = Home::at(dir.path());
    home.init(false).expect("init");
    (dir, home)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_home() {
        let h = Home::at("/h");
        assert_eq!(
            h.spec_path(StateDir::Zombie, "w1"),
            Path::new("/h/coordination/worker-specs/zombie/w1.json")
        );
        assert_eq!(
            h.worker_lock("w1"),
            Path::new("/h/coordination/.locks/workers/w1.lock")
        );
        assert_eq!(
            h.worker_log("w1"),
            Path::new("/h/agents/logs/workers/w1/worker.log")
        );
        assert_eq!(
            h.tasks_dir(TaskState::Pending),
            Path::new("/h/coordination/tasks/pending")
        );
    }

    #[test]
    fn a_default_home_is_private_and_a_setgid_group_home_is_shared() {
        let (dir, home) = test_home();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&home.coordination()), 0o700);
        assert_eq!(mode(&home.locks_dir()), 0o700);
        assert_eq!(mode(&home.budget_path()), 0o600);
        assert_eq!(mode(&home.policy_path()), 0o600);
        assert_eq!(modes_in(&home.coordination()), PRIVATE);
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2770)).unwrap();
        let h2 = Home::at(shared.join("home"));
        h2.init(false).unwrap();
        assert_eq!(mode(&h2.coordination()), 0o2770);
        assert_eq!(mode(&h2.specs_dir(StateDir::Active)), 0o2770);
        assert_eq!(mode(&h2.budget_path()), 0o660);
        assert_eq!(modes_in(&h2.tmp_dir()), SHARED);
    }

    #[test]
    fn state_dir_names_round_trip() {
        for d in StateDir::ALL {
            assert_eq!(StateDir::parse(d.name()), Some(d));
        }
        assert!(StateDir::Zombie.is_live() && !StateDir::Archived.is_live());
    }
}
