//! Starting children, in one place: [`command`] is the only door (a clean signal mask and
//! default dispositions in every child, DESIGN §6 S7), [`launch`] starts a detached worker,
//! and [`reap_children`] lets a long-running parent (the monitor) collect the exit status of
//! the workers it started, instead of leaving defunct processes behind.

use super::signals;
use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The one door for every child corral starts (workers, task commands, alert commands):
/// a `Command` for `program` whose child begins with a clean signal mask and default
/// dispositions ([`signals::reset_in_child`]). Callers add arguments, stdio, environment and,
/// for workers, a new session. Nothing else in corral calls `Command::new`.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    // SAFETY: reset_in_child only makes async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(signals::reset_in_child);
    }
    cmd
}

/// How to launch a worker process.
pub struct Launch<'a> {
    /// argv; the program should already be an absolute path (see `lifecycle`).
    pub command: &'a [String],
    /// The worker's log, opened for appending (stdout and stderr both go there).
    pub log: &'a File,
    /// Working directory; `None` keeps the caller's.
    pub cwd: Option<&'a Path>,
    /// Variables set on top of the inherited environment, in order (later wins).
    pub env: Vec<(String, String)>,
    /// Inherited variables that must not reach the worker (another worker's ids).
    pub env_remove: Vec<String>,
    /// Held lock inherited by the worker (kept open in the child, closed in the parent).
    pub alive_lock: Option<&'a File>,
}

/// Starts a detached worker: own session and process group (`setsid`), stdin `/dev/null`,
/// stdout and stderr appended to its log, argv executed directly (never a shell). Of the
/// caller's descriptors only the liveness lock is inherited: a worker that spawns another
/// worker must not pass its own liveness lock on, or the new worker would keep the old one
/// "alive" (S1) and carry false proof of being it (S2).
pub fn launch(l: &Launch<'_>) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let (prog, args) = l
        .command
        .split_first()
        .ok_or_else(|| Error::Invalid("empty worker command".into()))?;
    let log = l
        .log
        .try_clone()
        .map_err(|e| Error::io("cannot dup the worker log", e))?;
    let log2 = l
        .log
        .try_clone()
        .map_err(|e| Error::io("cannot dup the worker log", e))?;
    let mut cmd = command(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    if let Some(dir) = l.cwd {
        cmd.current_dir(dir);
    }
    for k in &l.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &l.env {
        cmd.env(k, v);
    }
    let alive_fd = l.alive_lock.map(|f| f.as_raw_fd());
    match alive_fd {
        Some(fd) => {
            cmd.env("CORRAL_ALIVE_FD", fd.to_string());
        }
        None => {
            cmd.env_remove("CORRAL_ALIVE_FD");
        }
    }
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (setsid, close_range/fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            mark_inherited_cloexec();
            if let Some(fd) = alive_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::Invalid(format!("cannot start worker command {prog:?}: {e}")))?;
    let pid = child.id() as i32;
    // The child is detached: a short-lived launcher leaves it to whoever inherits it; a
    // long-running one collects it with reap_children.
    drop(child);
    Ok(pid)
}

/// Marks every descriptor above stderr close-on-exec, in a forked child. `close_range`
/// (Linux 5.11) does it in one call; older kernels get a bounded loop.
///
/// # Safety
/// Only async-signal-safe calls: meant for a `pre_exec` closure.
unsafe fn mark_inherited_cloexec() {
    // SAFETY: plain syscalls on the child's own descriptor table.
    unsafe {
        let r = libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if r != 0 {
            for fd in 3..65_536 {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// Raises the soft open-file limit towards `wanted` (at most the hard limit): a pool launch
/// holds one liveness lock per worker until the worker has started.
pub fn raise_fd_limit(wanted: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < wanted {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, wanted.min(hard), hard);
        }
    }
}

/// How a child of this process ended, as `waitpid` tells its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildExit {
    pub pid: i32,
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    pub core_dumped: bool,
}

/// Children whose exit status a thread of this process waits for itself (an engine command
/// whose output and status it needs): [`reap_children`] leaves them alone.
static CLAIMED: std::sync::Mutex<std::collections::BTreeSet<i32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A child started with [`spawn_claimed`]; the reaper may take it again once this is dropped
/// (after the owner has waited for it).
pub struct Claim(i32);

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut c) = CLAIMED.lock() {
            c.remove(&self.0);
        }
    }
}

/// Spawns `cmd` as a child its caller waits for itself: a long-running parent's
/// [`reap_children`] (the monitor's, on SIGCHLD) does not take its exit status away. The
/// claim is made before the child can be seen by the reaper, and lasts while the returned
/// [`Claim`] lives.
pub fn spawn_claimed(
    cmd: &mut std::process::Command,
) -> std::io::Result<(std::process::Child, Claim)> {
    let mut claimed = CLAIMED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    claimed.insert(pid);
    Ok((child, Claim(pid)))
}

/// The pids of this process's children (live or defunct), from each thread's
/// `/proc/self/task/<tid>/children`; where the kernel lacks those files, from a scan of
/// `/proc` for processes whose parent is this one.
fn own_children() -> Vec<i32> {
    let mut out = Vec::new();
    let mut have_lists = false;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for t in rd.filter_map(|e| e.ok()) {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                have_lists = true;
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if !have_lists {
        let me = std::process::id() as i32;
        if let Ok(rd) = std::fs::read_dir("/proc") {
            out.extend(
                rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|&p| super::read_stat(p).is_some_and(|st| st.ppid == me)),
            );
        }
    }
    out
}

/// Collects every child of this process that has ended, so a long-running parent leaves no
/// defunct workers behind and learns their exit status. Call it on SIGCHLD. Children
/// started with [`spawn_claimed`] are left to the thread that waits for them; every other
/// child is reaped (`waitpid(pid, WNOHANG)` on each).
pub fn reap_children() -> Vec<ChildExit> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let claimed = CLAIMED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = Vec::new();
    for pid in own_children() {
        if claimed.contains(&pid) {
            continue;
        }
        loop {
            match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => out.push(ChildExit {
                    pid: pid.as_raw(),
                    code: Some(code),
                    signal: None,
                    core_dumped: false,
                }),
                Ok(WaitStatus::Signaled(pid, sig, core)) => out.push(ChildExit {
                    pid: pid.as_raw(),
                    code: None,
                    signal: Some(sig as i32),
                    core_dumped: core,
                }),
                Err(nix::errno::Errno::EINTR) => continue,
                // Still running, stopped or continued; or ECHILD (reaped meanwhile).
                _ => {}
            }
            break;
        }
    }
    out
}

/// True when `p` is a regular file we may execute.
fn executable(p: &Path) -> bool {
    p.is_file() && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// Resolves a command's program to an absolute path: a name with a `/` is taken relative to
/// `cwd`; a bare name is looked up in `path` (the spawner's `PATH`), whose relative entries
/// are also taken relative to `cwd`. Refused (exit 6) when nothing executable is found, so
/// nothing is written for a command that could never start.
pub fn resolve_program(prog: &str, cwd: &Path, path: Option<&std::ffi::OsStr>) -> Result<String> {
    if prog.is_empty() {
        return Err(Error::Invalid("empty worker command".into()));
    }
    let found = if prog.contains('/') {
        let p = cwd.join(prog);
        executable(&p).then_some(p)
    } else {
        path.map(std::env::split_paths)
            .into_iter()
            .flatten()
            .map(|d| cwd.join(d).join(prog))
            .find(|p| executable(p))
    };
    let p = found.ok_or_else(|| {
        Error::Invalid(format!(
            "worker command not found or not executable: {prog:?} (from {})",
            cwd.display()
        ))
    })?;
    let p = std::path::absolute(&p).unwrap_or(p);
    p.into_os_string()
        .into_string()
        .map_err(|p| Error::Invalid(format!("worker command path is not UTF-8: {p:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `reap_children` reaps *any* child, which would steal the children other tests in
    /// this process wait for: the real test runs in a test process of its own.
    #[test]
    fn reaping_collects_exit_codes_and_signals() {
        let exe = std::env::current_exe().unwrap();
        let out = command(exe)
            .args([
                "--exact",
                "process::launch::tests::reap_in_a_process_of_its_own",
                "--ignored",
                "--test-threads=1",
            ])
            .env("CORRAL_REAP_TEST", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn process_state(pid: i32) -> Option<char> {
        super::super::read_stat(pid).map(|s| s.state)
    }

    #[test]
    #[ignore = "run by reaping_collects_exit_codes_and_signals in a process of its own"]
    fn reap_in_a_process_of_its_own() {
        assert!(std::env::var_os("CORRAL_REAP_TEST").is_some());
        let a = command("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let b = command("sleep").arg("30").spawn().unwrap();
        let (pa, pb) = (a.id() as i32, b.id() as i32);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pb), nix::sys::signal::SIGKILL).unwrap();
        drop((a, b));
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while seen.len() < 2 && std::time::Instant::now() < deadline {
            seen.extend(reap_children());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let a = seen.iter().find(|c| c.pid == pa).expect("sh reaped");
        assert_eq!((a.code, a.signal), (Some(7), None));
        let b = seen.iter().find(|c| c.pid == pb).expect("sleep reaped");
        assert_eq!((b.code, b.signal), (None, Some(libc::SIGKILL)));
        assert!(reap_children().is_empty(), "nothing left to reap");
        // A claimed child is its owner's: the reaper leaves its status to the owner's wait.
        let (mut c, claim) = spawn_claimed(command("sh").args(["-c", "exit 5"])).unwrap();
        let pc = c.id() as i32;
        let gone = || process_state(pc) == Some('Z');
        while !gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            reap_children().iter().all(|x| x.pid != pc),
            "a claimed child is not reaped"
        );
        assert_eq!(
            c.wait().unwrap().code(),
            Some(5),
            "its owner gets its status"
        );
        drop(claim);
    }
}
