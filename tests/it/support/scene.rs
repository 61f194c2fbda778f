//! The test scene: a fresh home made by `corral init` in a temp dir, the real binaries run
//! with a cleared environment and a timeout, and on failure the command, both streams and
//! the home's tree are printed.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a corral binary built for this test run.
pub fn bin(name: &str) -> PathBuf {
    let corral = PathBuf::from(env!("CARGO_BIN_EXE_corral"));
    corral.with_file_name(name)
}

/// A temp home plus helpers.
pub struct Scene {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Scene {
    /// A home with the default budget.
    pub fn new() -> Scene {
        Scene::with_tokens(1_000_000)
    }

    /// A home with `total` tokens.
    pub fn with_tokens(total: u64) -> Scene {
        super::keep_panic_messages();
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let s = Scene {
            dir,
            home,
            env: Vec::new(),
        };
        s.ok("corral", &["init", "--total-tokens", &total.to_string()]);
        s
    }

    /// Adds an environment variable for every command this scene runs.
    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.push((k.into(), v.into()));
    }

    /// A command for a corral binary with a cleared environment pointing at this home.
    pub fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(bin(name));
        c.env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            )
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("CORRAL_HOME", &self.home)
            // Lock waits are bounded (10 s by default); on a CI machine whose fsyncs stall
            // for seconds under load, a test about something else must not fail on them.
            // Tests of the timeout itself set their own.
            .env("CORRAL_LOCK_TIMEOUT", "120")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs a binary with a 120 s timeout.
    pub fn run(&self, name: &str, args: &[&str]) -> Output {
        run_with_timeout(self.cmd(name).args(args), Duration::from_secs(120))
    }

    /// Runs and feeds `input` on stdin.
    pub fn run_stdin(&self, name: &str, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut c = self.cmd(name);
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    }

    /// Runs and asserts exit 0; returns stdout.
    pub fn ok(&self, name: &str, args: &[&str]) -> String {
        let out = self.run(name, args);
        self.expect_code(name, args, &out, 0);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts the exit code; returns the output.
    pub fn code(&self, name: &str, args: &[&str], code: i32) -> Output {
        let out = self.run(name, args);
        self.expect_code(name, args, &out, code);
        out
    }

    /// Panics with a full report when the exit code is not `code`.
    pub fn expect_code(&self, name: &str, args: &[&str], out: &Output, code: i32) {
        if out.status.code() != Some(code) {
            panic!(
                "`{name} {}` exited {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}\n--- home\n{}",
                args.join(" "),
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.tree()
            );
        }
    }

    /// `coordination/` of the home.
    pub fn coord(&self) -> PathBuf {
        self.home.join("coordination")
    }

    /// Path of a spec in a state dir.
    pub fn spec_path(&self, dir: &str, id: &str) -> PathBuf {
        self.coord()
            .join("worker-specs")
            .join(dir)
            .join(format!("{id}.json"))
    }

    /// Reads a spec from a state dir.
    pub fn spec(&self, dir: &str, id: &str) -> Value {
        read_json(&self.spec_path(dir, id))
    }

    /// Which state dirs hold `id`.
    pub fn dirs_of(&self, id: &str) -> Vec<String> {
        ["active", "completed", "zombie", "archived"]
            .iter()
            .filter(|d| self.spec_path(d, id).exists())
            .map(|d| d.to_string())
            .collect()
    }

    /// Ids in a state dir.
    pub fn ids_in(&self, dir: &str) -> Vec<String> {
        json_ids(&self.coord().join("worker-specs").join(dir))
    }

    /// The budget file.
    pub fn budget(&self) -> Value {
        read_json(&self.coord().join("token-budget.json"))
    }

    /// Every event in the current log, parsed (each line must be one JSON object).
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.coord().join("dashboard-events.jsonl"))
            .unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("event line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Events of one type.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// The home's file tree, for failure reports.
    pub fn tree(&self) -> String {
        tree_of(&self.home)
    }

    /// Writes a key into the heartbeat policy file (dotted path like `restart.max_retries`).
    pub fn set_policy(&self, path: &str, value: Value) {
        let p = self.coord().join("config/heartbeat-policy.json");
        let mut doc = read_json(&p);
        let mut cur = &mut doc;
        let keys: Vec<&str> = path.split('.').collect();
        for k in &keys[..keys.len() - 1] {
            cur = &mut cur[*k];
        }
        cur[keys[keys.len() - 1]] = value;
        std::fs::write(&p, serde_json::to_vec_pretty(&doc).expect("json")).expect("write policy");
    }
}

/// Reads and parses a JSON file, panicking with the path on failure.
pub fn read_json(p: &Path) -> Value {
    let text =
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}\n{text}", p.display()))
}

/// Writes an executable script (mode 0755) at `p`.
pub fn write_script(p: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, body).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", p.display()));
}

/// Runs a command, killing it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child_output_within(child, timeout, &format!("{cmd:?}"))
}

/// Waits for a spawned child's output (what it was to read already given), killing it and
/// failing the test (naming `what`) after `timeout`.
pub fn child_output_within(child: std::process::Child, timeout: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{what} timed out after {timeout:?}");
        }
    }
}

/// Polls `f` every 10 ms until it is true or `timeout` passes (one global deadline instead
/// of sleeps).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stdout as a trimmed string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Stderr as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether a test may go on without an external tool. Outside CI a missing tool is a skip
/// (printed); under `CI` it is a failure, so a CI machine that lost a package cannot pass
/// by skipping.
pub fn have_tool(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is required under CI (see .ci/run) but is missing"
    );
    eprintln!("SKIP: {what} is missing");
    false
}

/// The names (without `.json`) of the JSON files in `dir`, sorted; none when it is missing.
pub fn json_ids(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".json"))
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every path under `root` (directories marked with `/`), for failure reports.
pub fn tree_of(root: &Path) -> String {
    let mut out = String::new();
    for e in walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
    {
        let rel = e.path().strip_prefix(root).unwrap_or(e.path());
        out.push_str(&format!(
            "{}{}\n",
            rel.display(),
            if e.file_type().is_dir() { "/" } else { "" }
        ));
    }
    out
}
