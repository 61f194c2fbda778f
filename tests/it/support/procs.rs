//! Real processes in tests: a running `heartbeat-monitor` that is killed when the test ends
//! (even on panic), a `Reaper` that kills whatever a test started, `/proc` readers, and
//! hand-made specs for processes the test started itself. The one place tests signal.

use super::scene::{wait_until, Scene};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A daemon under test; SIGKILLed on drop if still running.
pub struct Monitor {
    pub child: Child,
    pub log: PathBuf,
}

impl Monitor {
    /// Starts `heartbeat-monitor ARGS` and waits until it has adopted the home.
    pub fn start(s: &Scene, args: &[&str]) -> Monitor {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = s.dir.path().join(format!("monitor-{n}.stderr"));
        let mut c = s.cmd("heartbeat-monitor");
        c.args(args);
        Monitor::spawn(c, log, Duration::from_secs(20), || s.tree())
    }

    /// Runs `cmd` (a `heartbeat-monitor`) with its stderr in `log` and waits up to `wait`
    /// for it to say it is ready; `context` adds to the report when it does not.
    pub fn spawn(
        mut cmd: std::process::Command,
        log: PathBuf,
        wait: Duration,
        context: impl Fn() -> String,
    ) -> Monitor {
        let f = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start heartbeat-monitor");
        let mut m = Monitor { child, log };
        let ready = wait_until(wait, || {
            m.stderr().contains("ready:") || m.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            ready && m.stderr().contains("ready:"),
            "monitor did not start:\n{}\n{}",
            m.stderr(),
            context()
        );
        m
    }

    /// What the daemon logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// True when the daemon holds a pidfd for `pid` (it watches that worker).
    pub fn watches(&self, pid: i32) -> bool {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return false;
        };
        rd.filter_map(|e| e.ok()).any(|e| {
            std::fs::read_to_string(e.path())
                .map(|t| t.lines().any(|l| l.trim() == format!("Pid:\t{pid}").trim()))
                .unwrap_or(false)
        })
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "monitor ignored SIGTERM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with the daemon's log unless it is still running.
    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().expect("wait").is_none(),
            "monitor died:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- monitor log\n{}", self.stderr());
            if let Some(m) = super::panic_message(1500) {
                eprintln!("--- the failure (repeated after the log)\n{m}");
            }
        }
    }
}

/// Sends a signal to a pid (never ≤ 1); a process already gone is no error.
pub fn signal(pid: i32, sig: i32) {
    if pid > 1 {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }
}

/// Sends a signal to a whole process group (never pgid ≤ 1).
pub fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
        }
    }
}

/// Everything a test started, SIGKILLed when the test ends (even on panic): single pids,
/// whole process groups and `Child` handles (which are also reaped). Shared by reference
/// across threads.
#[derive(Default)]
pub struct Reaper {
    pids: Mutex<Vec<i32>>,
    groups: Mutex<Vec<i32>>,
    children: Mutex<Vec<Child>>,
}

impl Reaper {
    /// Kills `pid` at the end of the test.
    pub fn add(&self, pid: i32) {
        self.pids.lock().expect("reaper").push(pid);
    }

    /// Same as [`Reaper::add`], for pids that arrive as `u32`.
    pub fn track(&self, pid: u32) {
        self.add(pid as i32);
    }

    /// Kills the whole process group `pgid` at the end of the test.
    pub fn group(&self, pgid: i32) {
        assert!(pgid > 1, "refusing to track pgid {pgid}");
        self.groups.lock().expect("reaper").push(pgid);
    }

    /// Keeps a child to kill and reap at the end of the test.
    pub fn keep(&self, child: Child) {
        self.children.lock().expect("reaper").push(child);
    }

    /// Spawns a command and tracks its pid.
    pub fn spawn(&self, c: &mut Command) -> Child {
        let child = c.spawn().expect("spawn");
        self.track(child.id());
        child
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for &g in self
            .groups
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
            .iter()
        {
            signal_group(g, libc::SIGKILL);
        }
        for &p in self
            .pids
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
            .iter()
        {
            signal(p, libc::SIGKILL);
        }
        if let Ok(mut kids) = self.children.lock() {
            for c in kids.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `/proc/<pid>/stat` fields tests use: (state, pgid, start time in ticks).
pub fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text
        .get(text.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    Some((
        rest.first()?.chars().next()?,
        rest.get(2)?.parse().ok()?,
        rest.get(19)?.parse().ok()?,
    ))
}

/// True while `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((s, _, _)) if s != 'Z' && s != 'X')
}

/// Live members of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(
                    |&p| matches!(stat(p), Some((s, g, _)) if g == pgid && s != 'Z' && s != 'X'),
                )
                .collect()
        })
        .unwrap_or_default()
}

/// A signal mask of `/proc/<pid>/status` (`"SigBlk:"`, `"SigIgn:"`, `"SigCgt:"`) as a
/// number; `None` when the process or the field is gone.
pub fn sig_mask(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
}

/// True once `pid` catches or blocks `sig`: a signal sent before its handler is in place
/// takes the default action instead of the one a test is about.
pub fn handles_signal(pid: i32, sig: i32) -> bool {
    let bit = 1u64 << (sig - 1);
    ["SigCgt:", "SigBlk:"]
        .iter()
        .any(|f| sig_mask(pid, f).is_some_and(|m| m & bit != 0))
}

/// The inotify watches `pid` holds (its `/proc/<pid>/fdinfo`): a waiter with one is asleep
/// on inotify, not still starting.
pub fn inotify_watches(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .lines()
                        .filter(|l| l.starts_with("inotify wd:"))
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Start time (clock ticks since boot) of a process.
pub fn start_ticks(pid: i32) -> u64 {
    stat(pid).expect("stat").2
}

/// The host name the binaries will record (no CORRAL_HOST in the scene).
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// RFC 3339 time `secs_ago` seconds before now.
pub fn ago(secs_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(secs_ago))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Starts `setsid sleep 300` (its own process group, like a launched worker).
pub fn sleeper(reaper: &Reaper) -> Child {
    let c = std::process::Command::new("setsid")
        .args(["sleep", "300"])
        .stdin(Stdio::null())
        .spawn()
        .expect("setsid sleep");
    reaper.add(c.id() as i32);
    // setsid execs in place when the caller is not a group leader; wait for the exec.
    let pid = c.id() as i32;
    wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim() == "sleep")
            .unwrap_or(false)
    });
    c
}

/// A hand-made running spec for a process the test started.
pub fn spec_for(id: &str, pid: i32, extra: Value) -> Value {
    let mut v = json!({
        "worker_id": id,
        "worker_type": "build-worker",
        "status": "running",
        "token_budget": {"allocated": 0, "used": 0},
        "heartbeat": {"last_seen": ago(0), "health_score": 100},
        "process": {
            "host": host(), "boot_id": boot_id(), "pid": pid, "pgid": pid,
            "start_time_ticks": start_ticks(pid), "command": ["sleep", "300"]
        },
        "created_at": ago(0),
        "started_at": ago(0)
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        for (k, val) in e {
            o.insert(k, val);
        }
    }
    v
}

/// Writes a hand-made spec through `spawn-worker --from-spec -`.
pub fn write_spec(s: &Scene, v: &Value) {
    let out = s.run_stdin(
        "spawn-worker",
        &["--from-spec", "-"],
        serde_json::to_string(v).expect("json").as_bytes(),
    );
    s.expect_code("spawn-worker", &["--from-spec", "-"], &out, 0);
}

/// Events of one type for one worker.
pub fn events_for(s: &Scene, kind: &str, id: &str) -> Vec<Value> {
    s.events_of(kind)
        .into_iter()
        .filter(|e| e["worker_id"] == id)
        .collect()
}

/// The pid a launched worker runs as.
pub fn worker_pid(s: &Scene, id: &str) -> i32 {
    let mut pid = 0;
    wait_until(Duration::from_secs(5), || {
        let dirs = s.dirs_of(id);
        if let Some(d) = dirs.first() {
            pid = s.spec(d, id)["process"]["pid"].as_i64().unwrap_or(0) as i32;
        }
        pid > 0
    });
    assert!(pid > 0, "{id} has no pid\n{}", s.tree());
    pid
}

/// Lines of the restart history.
pub fn history(s: &Scene) -> Vec<Value> {
    std::fs::read_to_string(s.coord().join("metrics/worker-restart-history.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("history line is JSON"))
        .collect()
}

/// Waits for the first event of a type for a worker (events are appended just after the
/// state change they report, so a test that saw the file move must still wait for them).
pub fn wait_event(s: &Scene, kind: &str, id: &str) -> Value {
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = events_for(s, kind, id).into_iter().next();
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no {kind} event for {id}\n{}", s.tree()))
}

/// Like [`sleeper`], but started the way a launched worker `id` is: with
/// `CORRAL_WORKER_ID=<id>` in its environment, the proof (DESIGN §6 S2) without which corral
/// never signals a process.
pub fn sleeper_for(reaper: &Reaper, id: &str) -> Child {
    let c = std::process::Command::new("setsid")
        .args(["sleep", "300"])
        .env("CORRAL_WORKER_ID", id)
        .stdin(Stdio::null())
        .spawn()
        .expect("setsid sleep");
    reaper.add(c.id() as i32);
    let pid = c.id() as i32;
    wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim() == "sleep")
            .unwrap_or(false)
    });
    c
}

/// Writes a hand-made spec straight into `worker-specs/<dir>/`, as a hand edit would.
/// `spawn-worker --from-spec` drops a `process` block (only corral's launch records one),
/// so a test that needs a spec for a process it started itself plants the file.
pub fn plant_spec(s: &Scene, dir: &str, v: &Value) {
    let id = v["worker_id"].as_str().expect("worker_id");
    let tmp = s.coord().join(format!(".tmp/plant-{id}.json"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).expect("json")).expect("write spec");
    std::fs::rename(&tmp, s.spec_path(dir, id)).expect("plant spec");
}
