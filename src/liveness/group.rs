//! A worker's processes, as `/proc` shows them: the whole process group it leads, not just
//! the leader whose pid the spec records (S1). Used to stop a group whose leader exited while
//! children still hold the liveness lock, and to sample CPU and RSS of the whole group.
//!
//! Only processes that carry proof of being that worker are signalled (S2): an open
//! descriptor on its liveness lock, or `CORRAL_WORKER_ID=<id>` in their environment; the
//! proof and the group stop are the ones `stop-worker` and `cleanup-zombies` use
//! ([`crate::process::Proof`], [`crate::stop::stop_group`]). For sampling, members are
//! found with one scan of `/proc` ([`ProcTable`]), shared by every worker of a round.

use crate::home::Home;
use crate::process::{self, Identity, ProcessInfo, Proof, Stat};
use std::time::Duration;

/// One process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub stat: Stat,
}

impl Proc {
    /// Not exited (a zombie waiting to be reaped holds nothing and runs nothing).
    pub fn live(&self) -> bool {
        self.stat.state != 'Z' && self.stat.state != 'X'
    }
}

/// Every process of this machine at one moment.
#[derive(Debug, Clone, Default)]
pub struct ProcTable {
    pub procs: Vec<Proc>,
}

impl ProcTable {
    /// Reads `/proc/*/stat` once.
    pub fn scan() -> ProcTable {
        let mut procs = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.filter_map(|e| e.ok()) {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                    continue;
                };
                if let Some(stat) = process::read_stat(pid) {
                    procs.push(Proc { pid, stat });
                }
            }
        }
        ProcTable { procs }
    }

    /// Live members of process group `pgid`.
    pub fn group(&self, pgid: i32) -> impl Iterator<Item = &Proc> {
        self.procs
            .iter()
            .filter(move |p| p.stat.pgid == pgid && p.live())
    }
}

/// True when nobody holds the worker's liveness lock (or it has none): every process that
/// inherited it is gone.
pub fn lock_free(home: &Home, id: &str) -> bool {
    process::alive_lock_free(&home.alive_lock(id)).unwrap_or(false)
}

/// True when the worker has a liveness lock file at all.
pub fn has_lock(home: &Home, id: &str) -> bool {
    home.alive_lock(id).exists()
}

/// True while any process of the worker lives: its liveness lock is held (when it has a
/// lock file), else its recorded leader is alive and carries proof of being that worker.
pub fn alive(home: &Home, id: &str, process: Option<&ProcessInfo>) -> bool {
    if let Some(p) = process.filter(|p| p.is_container() && p.is_local()) {
        return container_alive(home, id, p);
    }
    if has_lock(home, id) {
        return !lock_free(home, id);
    }
    match process {
        Some(p) if p.check() == Identity::Alive => proof(home, id).carried_by(p.pid),
        _ => false,
    }
}

/// A container worker lives while its init does (its namespace ends with it) or, when the
/// recorded process is not the init (a container seen only after it exited), while the
/// engine says its container is live. An engine that cannot be asked leaves the liveness
/// lock to tell (S1: never gone too early).
fn container_alive(home: &Home, id: &str, p: &ProcessInfo) -> bool {
    use crate::container::{control, Found, Target};
    if p.check() == Identity::Alive {
        return true;
    }
    let Some(t) = Target::of_process(p) else {
        return false;
    };
    match control::find(&t.engine(), home.root(), id, &t) {
        Ok(Found::Ours(st)) => st.is_live(),
        Ok(_) => false,
        Err(e) => {
            tracing::warn!("{id}: cannot ask the engine about its container: {e}");
            has_lock(home, id) && !lock_free(home, id)
        }
    }
}

/// What stopping a worker's processes did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupStop {
    /// Processes signalled (SIGTERM round).
    pub signalled: usize,
    /// SIGKILL was needed.
    pub killed: bool,
    /// Every process of the worker is gone now.
    pub gone: bool,
}

/// Stops every process of worker `id` that carries proof, through the one group stop of
/// [`crate::stop::stop_group`] (SIGTERM to its group, `grace`, SIGKILL; then any process
/// that left the group but still holds its liveness lock). Blocking: the daemon runs it in
/// a helper thread.
pub fn stop(home: &Home, id: &str, process: Option<&ProcessInfo>, grace: Duration) -> GroupStop {
    use crate::stop::ProcessOutcome;
    let outcome = match crate::stop::stop_group(home, id, process, grace) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!("{id}: cannot stop its processes: {e}");
            None
        }
    };
    GroupStop {
        signalled: usize::from(outcome.is_some_and(|o| o.signalled())),
        killed: matches!(
            outcome,
            Some(ProcessOutcome::Killed) | Some(ProcessOutcome::GroupKilled)
        ),
        gone: !alive(home, id, process),
    }
}

/// The proof that a process is one of worker `id`'s (S2).
fn proof(home: &Home, id: &str) -> Proof {
    Proof::new(id, home.alive_lock(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::StateDir;
    use std::time::Instant;

    /// Launches `sh -c SCRIPT` the way corral launches a worker: own session, the liveness
    /// lock inherited, CORRAL_WORKER_ID set. Returns the recorded process.
    fn launch(home: &Home, id: &str, script: &str) -> ProcessInfo {
        let lock = crate::store::lock(&home.alive_lock(id)).unwrap();
        let cmd = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        let log = crate::store::open_log(&home.worker_log(id)).unwrap();
        let pid = process::launch(&process::Launch {
            command: &cmd,
            log: &log,
            env: vec![("CORRAL_WORKER_ID".into(), id.into())],
            alive_lock: Some(lock.file()),
            cwd: None,
            env_remove: Vec::new(),
        })
        .unwrap();
        lock.hand_off();
        ProcessInfo::capture(pid, cmd).unwrap()
    }

    fn wait_for(f: impl Fn() -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_group_whose_leader_exited_is_found_and_stopped() {
        let (_dir, home) = crate::home::test_home();
        std::fs::create_dir_all(home.specs_dir(StateDir::Active)).unwrap();
        let info = launch(&home, "w1", "sleep 120 & exit 3");
        let pid = info.pid;
        // The leader exits; its child keeps the lock.
        assert!(wait_for(
            || process::read_stat(pid).is_none_or(|s| s.state == 'Z')
        ));
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        assert!(!lock_free(&home, "w1"), "the child holds the lock");
        assert!(alive(&home, "w1", Some(&info)));
        let table = ProcTable::scan();
        let members: Vec<i32> = table.group(pid).map(|p| p.pid).collect();
        assert_eq!(members.len(), 1, "{members:?}");
        assert!(proof(&home, "w1").carried_by(members[0]));
        assert!(!proof(&home, "w2").carried_by(members[0]));
        let st = stop(&home, "w1", Some(&info), Duration::from_secs(5));
        assert!(st.signalled == 1 && st.gone && !st.killed, "{st:?}");
        assert!(lock_free(&home, "w1"));
        let again = stop(&home, "w1", Some(&info), Duration::from_secs(5));
        assert!(
            again.gone && again.signalled == 0,
            "nothing left: {again:?}"
        );
    }

    #[test]
    fn processes_without_proof_are_never_signalled() {
        let (_dir, home) = crate::home::test_home();
        // A process of ours in its own group, with neither the lock nor the env entry.
        let mut other = process::command("setsid")
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        let opid = other.id() as i32;
        assert!(wait_for(|| std::fs::read_to_string(format!(
            "/proc/{opid}/comm"
        ))
        .is_ok_and(|c| c.trim() == "sleep")));
        let info = ProcessInfo::capture(opid, vec![]).unwrap();
        let st = stop(&home, "w-forged", Some(&info), Duration::from_millis(100));
        assert_eq!(st.signalled, 0, "{st:?}");
        assert!(process::read_stat(opid).is_some_and(|s| s.state != 'Z'));
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn a_term_ignoring_group_is_killed_after_grace() {
        let (_dir, home) = crate::home::test_home();
        let info = launch(&home, "w3", "trap '' TERM; sleep 120 & wait");
        let pid = info.pid;
        assert!(wait_for(|| ProcTable::scan().group(pid).count() == 2));
        let st = stop(&home, "w3", Some(&info), Duration::from_millis(300));
        assert!(st.killed && st.gone, "{st:?}");
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
}
