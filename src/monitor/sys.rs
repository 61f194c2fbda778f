//! The operating-system facts the monitor depends on, each in one small function: the
//! descriptor limit (one pidfd per local worker), whether the home sits on a network
//! filesystem (inotify sees no remote changes there), total memory (for the memory
//! threshold), CPU and RSS from `/proc`, exit statuses of our own children, and the alert
//! command (argv, never a shell, the event JSON on stdin).

use crate::process;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Descriptors kept free for everything that is not a pidfd (spec files, locks, inotify,
/// epoll, logs, alert pipes).
pub const RESERVED_FDS: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns how many pidfds the monitor
/// may hold; workers beyond that are watched by identity polling instead.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024u64.saturating_sub(RESERVED_FDS);
    };
    let mut limit = soft;
    if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        limit = hard;
    }
    // An "unlimited" hard limit is still bounded by the kernel's nr_open.
    let limit = limit.min(1 << 20);
    limit.saturating_sub(RESERVED_FDS)
}

/// The name of a network filesystem type (statfs `f_type`) on which inotify cannot see
/// changes made by other machines; `None` for local filesystems.
pub fn network_fs_name(magic: i64) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "nfs",
        0x517B => "smb",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x5346_414F => "afs",
        0x7375_7245 => "coda",
        0x564C => "ncp",
        0x00C3_6400 => "ceph",
        0x0102_1997 => "9p",
        0x0BD0_0BD0 => "lustre",
        0x4750_4653 => "gpfs",
        0x7461_636F => "ocfs2",
        0x0116_1970 => "gfs2",
        _ => return None,
    })
}

/// The network filesystem `path` is on, if any.
pub fn network_fs(path: &Path) -> Option<&'static str> {
    let st = nix::sys::statfs::statfs(path).ok()?;
    network_fs_name(st.filesystem_type().0 as i64)
}

/// Total memory in MiB (`MemTotal` of `/proc/meminfo`).
pub fn mem_total_mb() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total_mb(&text)
}

/// Parses `MemTotal:  16318460 kB`.
pub fn parse_mem_total_mb(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn uptime_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// A CPU and RSS reading of one process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub rss_mb: f64,
    pub at: Instant,
}

/// Reads a local process's CPU time and RSS; `None` when it is gone.
pub fn sample(pid: i32) -> Option<Sample> {
    let (cpu_seconds, rss_mb) = process::usage(pid)?;
    Some(Sample {
        cpu_seconds,
        rss_mb,
        at: Instant::now(),
    })
}

/// CPU percent between two samples, or (without an earlier one) over the process's life,
/// as `ps` reports it.
pub fn cpu_percent(prev: Option<&Sample>, cur: &Sample, pid: i32) -> Option<f64> {
    match prev {
        Some(p) => {
            let wall = cur.at.duration_since(p.at).as_secs_f64();
            (wall > 0.05).then(|| ((cur.cpu_seconds - p.cpu_seconds) / wall * 100.0).max(0.0))
        }
        None => {
            let st = process::read_stat(pid)?;
            let started = st.start_time_ticks as f64 / process::ticks_per_second() as f64;
            let life = uptime_seconds()? - started;
            (life > 0.01).then(|| (cur.cpu_seconds / life * 100.0).max(0.0))
        }
    }
}

/// Reaps `pid` if it is our own exited child (a worker this monitor restarted), returning
/// `(exit code, signal)`. For any other process the status is not ours to know.
pub fn reap(pid: i32) -> Option<(Option<i32>, Option<i32>)> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    if pid <= 1 {
        return None;
    }
    match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some((Some(code), None)),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some((None, Some(sig as i32))),
        _ => None,
    }
}

/// Runs the policy's alert command with `payload` (one event as JSON) on stdin, in a
/// background thread so a slow alert never delays detection. The command is argv: nothing
/// from the event reaches a command line. It is killed after `timeout`.
pub fn run_alert(command: &[String], payload: Vec<u8>, timeout: Duration) {
    let Some((prog, args)) = command.split_first() else {
        return;
    };
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot run alert command {prog:?}: {e}");
            return;
        }
    };
    let mut stdin = child.stdin.take();
    let prog = prog.clone();
    let spawned = std::thread::Builder::new()
        .name("alert".into())
        .spawn(move || {
            if let Some(s) = stdin.as_mut() {
                let _ = s.write_all(&payload);
            }
            drop(stdin);
            let deadline = Instant::now() + timeout;
            loop {
                match child.try_wait() {
                    Ok(Some(st)) => {
                        if !st.success() {
                            tracing::warn!("alert command {prog:?} exited with {st}");
                        }
                        return;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        tracing::warn!("alert command {prog:?} timed out; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start alert thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_are_recognised() {
        assert_eq!(network_fs_name(0x6969), Some("nfs"));
        assert_eq!(network_fs_name(0xFF53_4D42), Some("cifs"));
        assert_eq!(network_fs_name(0xEF53), None, "ext4");
        assert_eq!(network_fs_name(0x0102_1994), None, "tmpfs");
    }

    #[test]
    fn meminfo_parses() {
        let t = "MemTotal:       16318460 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total_mb(t), Some(16318460.0 / 1024.0));
        assert_eq!(parse_mem_total_mb("nothing"), None);
        assert!(mem_total_mb().unwrap_or(0.0) > 0.0);
    }

    #[test]
    fn own_process_samples() {
        let me = std::process::id() as i32;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(60) {
            std::hint::black_box(t.elapsed());
        }
        let a = sample(me).unwrap();
        assert!(a.rss_mb > 0.0);
        assert!(cpu_percent(None, &a, me).is_some());
        assert!(raise_nofile_limit() > 0);
    }
}
