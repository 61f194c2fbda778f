//! The operating-system facts the monitor depends on, each in one small function: the
//! descriptor limit (one pidfd per local worker), whether the home sits on a network
//! filesystem (inotify sees no remote changes there), total memory (for the memory
//! threshold), and the alert command
//! (argv, never a shell, the event JSON on stdin).

use crate::events::{self, Event};
use crate::home::Home;
use crate::policy::HeartbeatPolicy;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Alert commands are killed after this long.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The network filesystem `path` is on, if any (inotify cannot see other hosts' changes
/// there, so the monitor polls).
pub fn network_fs(path: &Path) -> Option<&'static str> {
    crate::netfs::network_fs(path)
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

/// Emits an event and, for the ones that need a human, runs the alert command with it.
pub fn emit_alerting(home: &Home, policy: &HeartbeatPolicy, ev: Event, alert: bool) {
    let line = ev.to_line().ok();
    events::emit(home, ev);
    if alert && !policy.alert_command.is_empty() {
        if let Some(line) = line {
            run_alert(&policy.alert_command, line, ALERT_TIMEOUT);
        }
    }
}

/// Runs the policy's alert command with `payload` (one event as JSON) on stdin, in a
/// background thread so a slow alert never delays detection. The command is argv: nothing
/// from the event reaches a command line. It is killed after `timeout`.
pub fn run_alert(command: &[String], payload: Vec<u8>, timeout: Duration) {
    let Some((prog, args)) = command.split_first() else {
        return;
    };
    let mut cmd = crate::process::command(prog);
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
                    // The daemon's SIGCHLD reaper got it first: it has ended, and its pid
                    // may already belong to someone else, so it is never signalled.
                    Err(_) => return,
                    Ok(None) => {
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
    fn meminfo_parses() {
        let t = "MemTotal:       16318460 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total_mb(t), Some(16318460.0 / 1024.0));
        assert_eq!(parse_mem_total_mb("nothing"), None);
        assert!(mem_total_mb().unwrap_or(0.0) > 0.0);
    }

    #[test]
    fn the_descriptor_limit_leaves_room_for_pidfds() {
        assert!(raise_nofile_limit() > 0);
    }
}
