//! Helpers shared by the liveness and restart tests: a running `heartbeat-monitor` that is
//! killed when the test ends (even on panic), processes that are killed likewise, and
//! hand-made specs for processes the test started itself.
#![allow(dead_code)]

use crate::common::{wait_until, Scene};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Stdio};
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
        let f = std::fs::File::create(&log).expect("log file");
        let child = s
            .cmd("heartbeat-monitor")
            .args(args)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start heartbeat-monitor");
        let mut m = Monitor { child, log };
        let ready = wait_until(Duration::from_secs(20), || {
            m.stderr().contains("ready:") || m.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            ready && m.stderr().contains("ready:"),
            "monitor did not start:\n{}\n{}",
            m.stderr(),
            s.tree()
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
        }
    }
}

/// Sends a signal to a pid (never ≤ 1).
pub fn signal(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) has no memory effects.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Pids to SIGKILL when the test ends.
#[derive(Default)]
pub struct Reaper(pub Vec<i32>);

impl Reaper {
    pub fn add(&mut self, pid: i32) {
        self.0.push(pid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for p in &self.0 {
            signal(*p, libc::SIGKILL);
        }
    }
}

/// True while `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(t) => {
            let state = t
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Start time (clock ticks since boot) of a process.
pub fn start_ticks(pid: i32) -> u64 {
    let t = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = t.rsplit(')').next().expect("stat line");
    rest.split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("ticks")
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
pub fn sleeper(reaper: &mut Reaper) -> Child {
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
