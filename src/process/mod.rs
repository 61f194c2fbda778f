//! Processes as the kernel sees them. A pid alone names nothing durable (pids are reused), so
//! corral identifies a worker process by (host, boot id, pid, start time in clock ticks) read
//! from `/proc`, and checks that identity before any signal. An identity can be copied into
//! a forged spec, so a signal also needs proof that the process is that worker's (`proof`,
//! DESIGN §6 S2). Signals go to the process group the worker leads (it is started with
//! `setsid`), never to pid ≤ 1 or to our own group. Children start through one door
//! (`launch::command`) with a clean signal state.

mod launch;
mod proof;
pub mod signals;

pub use launch::{
    command, launch, raise_fd_limit, reap_children, resolve_program, spawn_claimed, ChildExit,
    Claim, Launch,
};
pub use proof::{
    alive_lock_free, all_pids, environ_has, group_members, lock_holders, stop_group, terminate,
    terminate_pid, unrecorded_launch, GroupStop, Proof,
};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::Duration;

/// Where and which process a worker is: enough to tell it apart from a later process that
/// got the same pid, and to know whether its pid means anything on this machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ProcessInfo {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub boot_id: String,
    pub pid: i32,
    #[serde(default)]
    pub pgid: Option<i32>,
    #[serde(default)]
    pub start_time_ticks: Option<u64>,
    /// The worker's parent, only when one was named (`spawn-worker --parent-pid`): the
    /// monitor stops a worker whose recorded parent is gone (orphaned).
    #[serde(default)]
    pub parent_pid: Option<i32>,
    /// The parent's start time, so a reused parent pid is not taken for the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_start_time_ticks: Option<u64>,
    #[serde(default = "default_mode")]
    pub execution_mode: String,
    /// The argv that ran, program resolved to an absolute path.
    #[serde(default)]
    pub command: Vec<String>,
    /// The working directory it ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The container this process is the init of (execution mode `container`): the engine
    /// tracks, stops and reports it, `pid` is the host pid of its init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerInfo>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Which container a container worker runs in, as its launch recorded it. The name is
/// `corral-<worker_id>`; the id (from the engine's `--cidfile`) names that one container
/// even after a later one took the name, as a start time does for a pid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ContainerInfo {
    /// `podman` or `docker`.
    pub engine: String,
    pub name: String,
    /// The full container id; absent when the launch never saw the container created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub image: String,
    /// The `ENGINE run` client corral started (it holds the liveness lock; it is not the
    /// worker, and its death does not end the container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_pid: Option<i32>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_mode() -> String {
    "direct".into()
}

/// This machine's name for host checks: `$CORRAL_HOST` (so tests can pose as two hosts on one
/// home) or the kernel's hostname.
pub fn host_name() -> String {
    if let Ok(h) = std::env::var("CORRAL_HOST") {
        if !h.is_empty() {
            return h;
        }
    }
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    })
    .clone()
}

/// The kernel's boot id: a pid from another boot means nothing now.
pub fn boot_id() -> String {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
    .clone()
}

/// Fields of `/proc/<pid>/stat` corral uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub utime: u64,
    pub stime: u64,
    pub start_time_ticks: u64,
    pub rss_pages: u64,
}

/// Parses a `/proc/<pid>/stat` line. The command name is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let close = line.rfind(')')?;
    let rest: Vec<&str> = line.get(close + 2..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N-3].
    let f = |n: usize| rest.get(n - 3).copied();
    Some(Stat {
        state: f(3)?.chars().next()?,
        ppid: f(4)?.parse().ok()?,
        pgid: f(5)?.parse().ok()?,
        utime: f(14)?.parse().ok()?,
        stime: f(15)?.parse().ok()?,
        start_time_ticks: f(22)?.parse().ok()?,
        rss_pages: f(24)?.parse().ok()?,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub fn read_stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Page size and clock ticks per second, for CPU and RSS figures.
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(4096)
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(100)
}

/// What an identity check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The recorded process is alive (possibly a zombie not yet reaped: see `Stat::state`).
    Alive,
    /// Gone, or its pid now belongs to another process.
    Gone,
    /// Another host or boot: its pid means nothing here, judge it by heartbeat alone.
    Foreign,
}

impl ProcessInfo {
    /// Records the identity of a running local process. No parent is recorded: orphaning
    /// is explicit (the launcher, spawn-worker, exits at once and is no parent to judge by).
    pub fn capture(pid: i32, command: Vec<String>) -> Result<ProcessInfo> {
        let stat = read_stat(pid).ok_or_else(|| Error::NotFound(format!("no process {pid}")))?;
        Ok(ProcessInfo {
            host: host_name(),
            boot_id: boot_id(),
            pid,
            pgid: Some(stat.pgid),
            start_time_ticks: Some(stat.start_time_ticks),
            parent_pid: None,
            parent_start_time_ticks: None,
            execution_mode: default_mode(),
            command,
            cwd: None,
            container: None,
            extra: Default::default(),
        })
    }

    /// True for the init of a container worker (stopped and judged through its engine).
    pub fn is_container(&self) -> bool {
        self.container.is_some()
    }

    /// True when this process ran on this host and this boot, so its pid can be checked.
    pub fn is_local(&self) -> bool {
        self.host == host_name() && (self.boot_id.is_empty() || self.boot_id == boot_id())
    }

    /// Checks that the pid still names the recorded process (start time equal). A process
    /// that has exited but is not yet reaped counts as gone.
    pub fn check(&self) -> Identity {
        if !self.is_local() {
            return Identity::Foreign;
        }
        match read_stat(self.pid) {
            Some(st) if st.state == 'Z' || st.state == 'X' => Identity::Gone,
            Some(st) => match self.start_time_ticks {
                Some(t) if t == st.start_time_ticks => Identity::Alive,
                // No recorded start time (a hand-made spec): the pid alone cannot be trusted.
                None => Identity::Gone,
                Some(_) => Identity::Gone,
            },
            None => Identity::Gone,
        }
    }

    /// True when the recorded process is alive, is the one recorded (start time, boot id)
    /// AND carries the worker's proof as `/proc` shows it (DESIGN §6 S2): only then may it
    /// be signalled.
    pub fn is_ours(&self, proof: &Proof) -> bool {
        self.check() == Identity::Alive && proof.carried_by(self.pid)
    }

    /// Sends `sig` to the worker's process group (or the pid when it leads none), but only
    /// after the identity and proof checks pass. Returns whether anything was signalled.
    pub fn signal(&self, proof: &Proof, sig: nix::sys::signal::Signal) -> Result<bool> {
        if !self.is_ours(proof) {
            return Ok(false);
        }
        signal_checked(self.pid, self.pgid, sig)
    }
}

/// Signals a verified process: its group when it leads one that is not ours, else the pid.
pub(crate) fn signal_checked(
    pid: i32,
    pgid: Option<i32>,
    sig: nix::sys::signal::Signal,
) -> Result<bool> {
    use nix::sys::signal::{kill, killpg};
    use nix::unistd::{getpgrp, Pid};
    if pid <= 1 {
        return Ok(false);
    }
    let own_group = getpgrp().as_raw();
    let res = match pgid {
        Some(g) if g == pid && g > 1 && g != own_group => killpg(Pid::from_raw(g), sig),
        _ => kill(Pid::from_raw(pid), sig),
    };
    match res {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(Error::io(format!("cannot signal process {pid}"), e.into())),
    }
}

/// A pidfd: becomes readable when the process exits. Opened *before* the identity is
/// verified, so a pid reused between the check and the open cannot be adopted.
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd for `pid`; `None` when the process is gone.
    pub fn open(pid: i32) -> Result<Option<PidFd>> {
        let Some(p) = rustix::process::Pid::from_raw(pid) else {
            return Ok(None);
        };
        match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Ok(Some(PidFd(fd))),
            Err(rustix::io::Errno::SRCH) => Ok(None),
            Err(e) => Err(Error::io(format!("pidfd_open({pid})"), e.into())),
        }
    }

    /// Opens a pidfd and then verifies the identity, in that order.
    pub fn open_verified(info: &ProcessInfo) -> Result<Option<PidFd>> {
        if !info.is_local() {
            return Ok(None);
        }
        let fd = PidFd::open(info.pid)?;
        if fd.is_some() && info.check() == Identity::Alive {
            Ok(fd)
        } else {
            Ok(None)
        }
    }

    /// Waits up to `timeout` for the process to exit; true when it has.
    pub fn wait_exit(&self, timeout: Duration) -> Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(n) => return Ok(n > 0),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::io("poll(pidfd)", e.into())),
            }
        }
    }

    /// The raw descriptor, for an event loop.
    pub fn raw(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// Lets an event loop (the monitor's epoll set) register the pidfd without unsafe code.
impl std::os::fd::AsFd for PidFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// CPU seconds and RSS of a local process, for resource sampling.
pub fn usage(pid: i32) -> Option<(f64, f64)> {
    let st = read_stat(pid)?;
    let cpu = (st.utime + st.stime) as f64 / ticks_per_second() as f64;
    let rss_mb = (st.rss_pages * page_size()) as f64 / (1024.0 * 1024.0);
    Some((cpu, rss_mb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "4242 (my (weird) prog) S 4100 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123456 1000000 250 18446744073709551615";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 4100);
        assert_eq!(st.pgid, 4242);
        assert_eq!(st.utime, 7);
        assert_eq!(st.stime, 3);
        assert_eq!(st.start_time_ticks, 123456);
        assert_eq!(st.rss_pages, 250);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_identity_checks_out_and_reuse_is_detected() {
        let me = ProcessInfo::capture(std::process::id() as i32, vec![]).unwrap();
        assert_eq!(me.check(), Identity::Alive);
        let mut reused = me.clone();
        reused.start_time_ticks = Some(me.start_time_ticks.unwrap_or(0) + 1);
        assert_eq!(reused.check(), Identity::Gone);
        let mut foreign = me.clone();
        foreign.host = "elsewhere.invalid".into();
        assert_eq!(foreign.check(), Identity::Foreign);
        // A reused pid is never signalled.
        let proof = Proof::new("w-test", "/nonexistent/w-test.lock");
        assert!(!reused
            .signal(&proof, nix::sys::signal::Signal::SIGTERM)
            .unwrap());
    }

    #[test]
    fn pidfd_fires_on_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let fd = PidFd::open(child.id() as i32).unwrap().unwrap();
        assert!(!fd.wait_exit(Duration::from_millis(10)).unwrap());
        assert!(fd.wait_exit(Duration::from_secs(5)).unwrap());
        child.wait().unwrap();
    }
}
