//! Only our own processes get signals (DESIGN §6 S2). A recorded identity (pid, start time,
//! boot id) can be read from `/proc` and copied into a forged spec, so before any signal the
//! process must also carry proof of being *that* worker, as `/proc` shows it: its initial
//! environment holds `CORRAL_WORKER_ID=<id>` (set by the launch path), or it has an open
//! descriptor on the worker's liveness lock file (inherited from the launch). The proof is
//! tied to the worker id being acted on, never to anything the spec says.
//!
//! This module also ends what is left of a worker whose leader has exited: its process group
//! (a pgid cannot be reused while it has members, and members carrying the proof show the
//! group is the worker's) and any other process still holding its liveness lock (S1).

use super::{read_stat, signal_checked, Identity, PidFd, ProcessInfo};
use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a process must show to be the worker `worker_id`'s.
#[derive(Debug, Clone)]
pub struct Proof {
    worker_id: String,
    alive_lock: PathBuf,
    env_entry: Vec<u8>,
}

impl Proof {
    /// The proof for `worker_id`, whose liveness lock file is `alive_lock`.
    pub fn new(worker_id: impl Into<String>, alive_lock: impl Into<PathBuf>) -> Proof {
        let worker_id = worker_id.into();
        let env_entry = format!("CORRAL_WORKER_ID={worker_id}").into_bytes();
        Proof {
            worker_id,
            alive_lock: alive_lock.into(),
            env_entry,
        }
    }

    /// The worker this proof is for.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The worker's liveness lock file.
    pub fn alive_lock(&self) -> &Path {
        &self.alive_lock
    }

    /// Device and inode of the lock file, when it exists (never through a symlink).
    fn lock_key(&self) -> Option<(u64, u64)> {
        let m = std::fs::symlink_metadata(&self.alive_lock).ok()?;
        m.is_file().then(|| (m.dev(), m.ino()))
    }

    /// True when `pid` carries the proof: `CORRAL_WORKER_ID=<id>` in its initial
    /// environment, or an open descriptor on the liveness lock file.
    pub fn carried_by(&self, pid: i32) -> bool {
        self.has_env(pid) || self.holds_lock(pid)
    }

    /// `CORRAL_WORKER_ID=<id>` is in the initial environment of `pid`.
    pub fn has_env(&self, pid: i32) -> bool {
        pid > 1 && environ_has(pid, &self.env_entry)
    }

    /// `pid` has the worker's liveness lock file open.
    pub fn holds_lock(&self, pid: i32) -> bool {
        pid > 1 && self.lock_key().is_some_and(|k| holds(pid, k))
    }
}

/// True when `/proc/<pid>/environ` (the environment the process was exec'd with) has the
/// exact entry `entry`.
pub fn environ_has(pid: i32, entry: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|e| e == entry))
        .unwrap_or(false)
}

/// True when one of `pid`'s open descriptors is the file `(dev, ino)`.
fn holds(pid: i32, key: (u64, u64)) -> bool {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    rd.filter_map(|e| e.ok()).any(|e| {
        std::fs::metadata(e.path())
            .map(|m| (m.dev(), m.ino()) == key)
            .unwrap_or(false)
    })
}

/// Live pids of this boot, from `/proc`.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live (not defunct) members of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    if pgid <= 1 {
        return Vec::new();
    }
    all_pids()
        .into_iter()
        .filter(|&p| matches!(read_stat(p), Some(st) if st.pgid == pgid && st.state != 'Z' && st.state != 'X'))
        .collect()
}

/// Live processes with an open descriptor on the lock file `lock` (other than ourselves).
/// Holding a worker's liveness lock is itself the proof of being one of its processes.
pub fn lock_holders(lock: &Path) -> Vec<i32> {
    let Ok(m) = std::fs::symlink_metadata(lock) else {
        return Vec::new();
    };
    let key = (m.dev(), m.ino());
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&p| p != me && holds(p, key))
        .filter(|&p| matches!(read_stat(p), Some(st) if st.state != 'Z' && st.state != 'X'))
        .collect()
}

/// The launched process of a worker whose spec has no `process` yet, found by its proof: a
/// holder of the liveness lock that also carries `CORRAL_WORKER_ID=<id>`. Only corral's
/// launch path makes such a process (it hands the lock to the child it starts with that
/// environment), so this is the record a SIGKILL of the launcher, between the launch and
/// the write of the record, cut short. The group leader is preferred (the launch makes the
/// child lead its own group); `None` when no holder carries both proofs.
pub fn unrecorded_launch(proof: &Proof) -> Option<i32> {
    let holders: Vec<i32> = lock_holders(proof.alive_lock())
        .into_iter()
        .filter(|&p| proof.has_env(p))
        .collect();
    holders
        .iter()
        .copied()
        .find(|&p| read_stat(p).is_some_and(|st| st.pgid == p))
        .or_else(|| holders.first().copied())
}

/// Tries to take the worker's liveness lock without blocking. `Ok(true)` means nobody holds
/// it: every process that inherited it is gone (DESIGN.md §6 signal 0). The lock is released
/// again at once. Opened read-write, as an exclusive flock needs on NFS, and never through
/// a symlink; a missing file is free.
pub fn alive_lock_free(path: &Path) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io(format!("cannot lock {}", path.display()), e))
        }
    }
}

/// Signals group `pgid` if it is a real group other than ours and at least one live member
/// carries `proof`. Returns the members seen and whether the signal went out.
fn signal_group(
    pgid: i32,
    proof: &Proof,
    sig: nix::sys::signal::Signal,
) -> Result<(Vec<i32>, bool)> {
    let members = group_members(pgid);
    if pgid <= 1 || pgid == nix::unistd::getpgrp().as_raw() {
        return Ok((members, false));
    }
    if !members.iter().any(|&p| proof.carried_by(p)) {
        return Ok((members, false));
    }
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig) {
        Ok(()) => Ok((members, true)),
        Err(nix::errno::Errno::ESRCH) => Ok((members, false)),
        Err(e) => Err(Error::io(format!("cannot signal group {pgid}"), e.into())),
    }
}

/// Waits until group `pgid` has no live member, up to `deadline`; true when it is empty.
fn wait_group_empty(pgid: i32, deadline: Instant) -> bool {
    loop {
        if group_members(pgid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What [`stop_group`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStop {
    /// Live members found when it began.
    pub members: Vec<i32>,
    /// Members without the proof (they are in the worker's group, so they were signalled
    /// with it; listed for the record).
    pub unproven: Vec<i32>,
    /// SIGTERM went to the group.
    pub signalled: bool,
    /// Members outlived the grace period and SIGKILL went to the group.
    pub killed: bool,
}

/// Stops what is left of a worker's process group after its leader exited: SIGTERM to the
/// pgid, up to `grace` for the group to empty, then SIGKILL. Nothing is signalled unless a
/// live member carries `proof` (then the group is the worker's: a pgid cannot be reused
/// while it has members), and never our own group.
pub fn stop_group(pgid: i32, proof: &Proof, grace: Duration) -> Result<GroupStop> {
    use nix::sys::signal::Signal;
    let (members, signalled) = signal_group(pgid, proof, Signal::SIGTERM)?;
    let mut out = GroupStop {
        unproven: members
            .iter()
            .copied()
            .filter(|&p| !proof.carried_by(p))
            .collect(),
        members,
        signalled,
        killed: false,
    };
    if !signalled {
        return Ok(out);
    }
    if !wait_group_empty(pgid, Instant::now() + grace) {
        out.killed = signal_group(pgid, proof, Signal::SIGKILL)?.1;
        wait_group_empty(pgid, Instant::now() + Duration::from_secs(5));
    }
    Ok(out)
}

/// Sends SIGTERM to the worker's process group, waits up to `grace` for the leader and the
/// rest of the group to end, then SIGKILLs the group: the graceful stop of DESIGN.md §6.
/// Nothing is signalled unless the recorded process is alive, is the one recorded and
/// carries `proof` (the pidfd is opened before the check, so a pid reused in between
/// cannot be hit). Returns `(signalled, killed)`.
pub fn terminate(info: &ProcessInfo, proof: &Proof, grace: Duration) -> Result<(bool, bool)> {
    use nix::sys::signal::Signal;
    if !info.is_local() {
        return Ok((false, false));
    }
    let Some(fd) = PidFd::open(info.pid)? else {
        return Ok((false, false));
    };
    if !info.is_ours(proof) || !signal_checked(info.pid, info.pgid, Signal::SIGTERM)? {
        return Ok((false, false));
    }
    let deadline = Instant::now() + grace;
    let leads = info.pgid == Some(info.pid);
    let leader_gone = fd.wait_exit(grace)?;
    let group_gone = !leads || wait_group_empty(info.pid, deadline);
    if leader_gone && group_gone {
        return Ok((true, false));
    }
    let killed = if !leader_gone && info.check() == Identity::Alive {
        signal_checked(info.pid, info.pgid, Signal::SIGKILL)?
    } else {
        signal_group(info.pid, proof, Signal::SIGKILL)?.1
    };
    fd.wait_exit(Duration::from_secs(5))?;
    if leads {
        wait_group_empty(info.pid, Instant::now() + Duration::from_secs(5));
    }
    Ok((true, killed))
}

/// Ends one process that carries `proof` (a lock holder outside the worker's group): SIGTERM,
/// up to `grace`, SIGKILL. Returns `(signalled, killed)`.
pub fn terminate_pid(pid: i32, proof: &Proof, grace: Duration) -> Result<(bool, bool)> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if pid <= 1 || pid == std::process::id() as i32 {
        return Ok((false, false));
    }
    let Some(fd) = PidFd::open(pid)? else {
        return Ok((false, false));
    };
    if !proof.carried_by(pid) {
        return Ok((false, false));
    }
    match kill(Pid::from_raw(pid), Signal::SIGTERM) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => return Ok((false, false)),
        Err(e) => return Err(Error::io(format!("cannot signal {pid}"), e.into())),
    }
    if fd.wait_exit(grace)? {
        return Ok((true, false));
    }
    let killed = kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok();
    fd.wait_exit(Duration::from_secs(5))?;
    Ok((true, killed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn(env: Option<(&str, &str)>, lock: Option<&File>) -> std::process::Child {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let mut c = super::super::command("sleep");
        c.arg("30");
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let fd = lock.map(|f| f.as_raw_fd());
        // SAFETY: setsid and fcntl only, between fork and exec.
        unsafe {
            c.pre_exec(move || {
                libc::setsid();
                if let Some(fd) = fd {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                }
                Ok(())
            });
        }
        c.spawn().unwrap()
    }

    #[test]
    fn proof_is_the_worker_id_in_the_environment_or_its_lock_held_open() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("w1.lock");
        let lock = File::create(&lock_path).unwrap();
        let mut by_env = spawn(Some(("CORRAL_WORKER_ID", "w1")), None);
        let mut by_fd = spawn(None, Some(&lock));
        let mut other = spawn(Some(("CORRAL_WORKER_ID", "w10")), None);
        let w1 = Proof::new("w1", &lock_path);
        let w2 = Proof::new("w2", dir.path().join("w2.lock"));
        assert!(w1.carried_by(by_env.id() as i32));
        assert!(w1.carried_by(by_fd.id() as i32));
        assert!(!w1.carried_by(other.id() as i32), "a prefix is not the id");
        assert!(!w2.carried_by(by_env.id() as i32));
        assert!(!w2.carried_by(by_fd.id() as i32));
        assert_eq!(lock_holders(&lock_path), vec![by_fd.id() as i32]);
        let info = ProcessInfo::capture(other.id() as i32, vec![]).unwrap();
        assert!(
            !info.is_ours(&w1),
            "a live identity without proof is not ours"
        );
        assert_eq!(
            terminate(&info, &w1, Duration::ZERO).unwrap(),
            (false, false)
        );
        assert!(other.try_wait().unwrap().is_none(), "never signalled");
        for c in [&mut by_env, &mut by_fd, &mut other] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    #[test]
    fn a_group_is_stopped_only_with_proof() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn(Some(("CORRAL_WORKER_ID", "w1")), None);
        let pgid = child.id() as i32;
        assert!(wait_for(|| group_members(pgid) == vec![pgid]));
        let stranger = Proof::new("w2", dir.path().join("w2.lock"));
        let r = stop_group(pgid, &stranger, Duration::from_secs(1)).unwrap();
        assert!(!r.signalled && child.try_wait().unwrap().is_none());
        let own = Proof::new("w1", dir.path().join("w1.lock"));
        let r = stop_group(pgid, &own, Duration::from_secs(5)).unwrap();
        assert!(r.signalled && !r.killed, "{r:?}");
        let st = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGTERM)
        );
    }

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}
