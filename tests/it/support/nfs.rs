//! One home on a real NFSv4.1 export, seen through two mounts that stand for two hosts.
//! `scripts/nfs test` boots the User-Mode Linux guest that serves and mounts the export and
//! runs the `nfs::` tests inside it with `CORRAL_NFS_A` and `CORRAL_NFS_B` set to the two
//! mount points; elsewhere (a plain `cargo test` on the host, which has no NFS) these tests
//! print that they run in the guest and return.
//!
//! Each mount is its own NFS superblock (`nosharecache`), with its own dentry and attribute
//! caches, so a file renamed through one is seen through the other only as another host
//! would see it. Commands run "on host A" or "on host B" get that mount's path as their
//! home and `CORRAL_HOST=host-a` / `host-b`; [`NfsScene::cmd_in_pidns`] adds a pid namespace
//! of their own, so host B cannot even see host A's pids.

use super::procs::Monitor;
use super::scene::{bin, json_ids, read_json, run_with_timeout, tree_of};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Which mount (host) a command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    A,
    B,
}

impl Host {
    pub fn name(self) -> &'static str {
        match self {
            Host::A => "host-a",
            Host::B => "host-b",
        }
    }
}

/// The two mount points of the export. The NFS tests are `#[ignore]`d on the host and run
/// in the guest by `scripts/nfs test`, which sets these; run anywhere else they fail rather
/// than pass without having tested anything.
pub fn mounts() -> (PathBuf, PathBuf) {
    match (
        std::env::var_os("CORRAL_NFS_A"),
        std::env::var_os("CORRAL_NFS_B"),
    ) {
        (Some(a), Some(b)) => (a.into(), b.into()),
        _ => panic!(
            "not on NFS: CORRAL_NFS_A and CORRAL_NFS_B are unset (run these tests in the NFS \
             guest: scripts/nfs test)"
        ),
    }
}

/// A home on the export, as seen from each host.
pub struct NfsScene {
    /// The test's directory through mount A (removed at the end).
    pub dir_a: PathBuf,
    pub home_a: PathBuf,
    pub home_b: PathBuf,
    pub env: Vec<(String, String)>,
}

impl NfsScene {
    /// A fresh home with `total` tokens, made by `corral init` on host A.
    pub fn new(total: u64) -> NfsScene {
        let (a, b) = mounts();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("t{}-{n}", std::process::id());
        let s = NfsScene {
            dir_a: a.join(&name),
            home_a: a.join(&name).join("home"),
            home_b: b.join(&name).join("home"),
            env: Vec::new(),
        };
        std::fs::create_dir_all(&s.dir_a).expect("test dir on the export");
        s.ok(
            Host::A,
            "corral",
            &["init", "--total-tokens", &total.to_string()],
        );
        s
    }

    /// Adds an environment variable for every command.
    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.push((k.into(), v.into()));
    }

    /// The home as host `h` sees it.
    pub fn home(&self, h: Host) -> &Path {
        match h {
            Host::A => &self.home_a,
            Host::B => &self.home_b,
        }
    }

    /// `coordination/` as host `h` sees it.
    pub fn coord(&self, h: Host) -> PathBuf {
        self.home(h).join("coordination")
    }

    fn base(&self, h: Host, c: &mut Command) {
        c.env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            )
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("CORRAL_HOME", self.home(h))
            .env("CORRAL_HOST", h.name())
            .current_dir(&self.dir_a)
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
    }

    /// A corral binary run on host `h`.
    pub fn cmd(&self, h: Host, name: &str) -> Command {
        let mut c = Command::new(bin(name));
        self.base(h, &mut c);
        c
    }

    /// A corral binary run on host `h` in a pid namespace of its own (`unshare`), so it
    /// cannot see or signal the other host's processes.
    pub fn cmd_in_pidns(&self, h: Host, name: &str) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(bin(name));
        self.base(h, &mut c);
        c
    }

    /// Runs a binary on host `h` (timeout 180 s: processes are slow in the guest).
    pub fn run(&self, h: Host, name: &str, args: &[&str]) -> Output {
        run_with_timeout(self.cmd(h, name).args(args), Duration::from_secs(180))
    }

    /// Runs and asserts the exit code.
    pub fn code(&self, h: Host, name: &str, args: &[&str], code: i32) -> Output {
        let out = self.run(h, name, args);
        if out.status.code() != Some(code) {
            panic!(
                "`{name} {}` on {} exited {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}\n--- home\n{}",
                args.join(" "),
                h.name(),
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.tree()
            );
        }
        out
    }

    /// Runs, asserts exit 0, returns stdout trimmed.
    pub fn ok(&self, h: Host, name: &str, args: &[&str]) -> String {
        let out = self.code(h, name, args, 0);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A spec's path in a state dir, as host `h` sees it.
    pub fn spec_path(&self, h: Host, dir: &str, id: &str) -> PathBuf {
        self.coord(h)
            .join("worker-specs")
            .join(dir)
            .join(format!("{id}.json"))
    }

    /// Which state dirs hold `id`, as host A sees them (after revalidating each directory:
    /// the test reads as an observer, not as the code under test).
    pub fn dirs_of(&self, id: &str) -> Vec<String> {
        ["active", "completed", "zombie", "archived"]
            .iter()
            .filter(|d| {
                let dir = self.coord(Host::A).join("worker-specs").join(d);
                let _ = std::fs::File::open(&dir);
                self.spec_path(Host::A, d, id).exists()
            })
            .map(|d| d.to_string())
            .collect()
    }

    /// Reads a spec through mount A.
    pub fn spec(&self, dir: &str, id: &str) -> Value {
        read_json(&self.spec_path(Host::A, dir, id))
    }

    /// The budget file through mount A.
    pub fn budget(&self) -> Value {
        read_json(&self.coord(Host::A).join("token-budget.json"))
    }

    /// Names (without `.json`) in a directory under `coordination/`, through mount A.
    pub fn names_in(&self, rel: &str) -> Vec<String> {
        json_ids(&self.coord(Host::A).join(rel))
    }

    /// Every event of one type, through mount A.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        std::fs::read_to_string(self.coord(Host::A).join("dashboard-events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// The home's tree, for failure reports.
    pub fn tree(&self) -> String {
        tree_of(&self.home_a)
    }

    /// Writes a key of the heartbeat policy (through mount A).
    pub fn set_policy(&self, key: &str, value: Value) {
        let p = self.coord(Host::A).join("config/heartbeat-policy.json");
        let mut doc = read_json(&p);
        doc[key] = value;
        std::fs::write(&p, serde_json::to_vec_pretty(&doc).expect("json")).expect("policy");
    }
}

impl Drop for NfsScene {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir_a);
        }
    }
}

/// A `heartbeat-monitor` on one host (the shared [`Monitor`], SIGKILLed when dropped).
pub struct HostMonitor;

impl HostMonitor {
    /// Starts `heartbeat-monitor ARGS` on host `h` (in its own pid namespace with `pidns`)
    /// and waits until it is ready.
    pub fn start(s: &NfsScene, h: Host, pidns: bool, args: &[&str]) -> Monitor {
        let log = s.dir_a.join(format!("monitor-{}.stderr", h.name()));
        let mut c = if pidns {
            s.cmd_in_pidns(h, "heartbeat-monitor")
        } else {
            s.cmd(h, "heartbeat-monitor")
        };
        c.args(args);
        Monitor::spawn(c, log, Duration::from_secs(90), || {
            format!("(on {})", h.name())
        })
    }
}
