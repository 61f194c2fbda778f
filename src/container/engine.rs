//! Engine commands other than `run`: inspect, stop, kill, remove, list. Each is one argv
//! started through [`crate::process::command`] (never a shell) and bounded by a timeout, so
//! a hung engine cannot hang the monitor or a CLI; output is read on threads, so a long
//! listing cannot fill a pipe and deadlock.

use super::{home_label, worker_of_name, EngineKind, LABEL_HOME};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// Default bound on one engine command (stop adds its grace period to it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A container's state as the engine reports it (`inspect`'s `.State`; the same keys in
/// Podman and Docker).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContainerState {
    /// `created`, `running`, `paused`, `exited`, …
    #[serde(rename = "Status", default)]
    pub status: String,
    #[serde(rename = "Running", default)]
    pub running: bool,
    /// Host pid of the container's first process (its init); 0 when not running.
    #[serde(rename = "Pid", default)]
    pub pid: i32,
    /// The worker's exit code once it has exited (137 after `kill`, 143 after a TERM the
    /// worker did not handle itself).
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i32,
    /// The kernel's OOM killer ended it (its memory limit was hit).
    #[serde(rename = "OOMKilled", default)]
    pub oom_killed: bool,
    #[serde(rename = "StartedAt", default)]
    pub started_at: String,
    #[serde(rename = "FinishedAt", default)]
    pub finished_at: String,
    /// The container id (not part of `.State`; filled from `.Id`).
    #[serde(skip)]
    pub id: String,
    /// The container's name (`.Name`; Docker's leading `/` removed).
    #[serde(skip)]
    pub name: String,
    /// Its labels (`.Config.Labels`): what tells corral's containers apart.
    #[serde(skip)]
    pub labels: BTreeMap<String, String>,
}

impl ContainerState {
    /// True once the container's processes are all gone.
    pub fn has_exited(&self) -> bool {
        !self.running && matches!(self.status.as_str(), "exited" | "stopped" | "dead")
    }

    /// True while processes of the container may run: running, paused, restarting or
    /// stopping. A container that is only created (never started) has none.
    pub fn is_live(&self) -> bool {
        self.running
            || matches!(
                self.status.as_str(),
                "running" | "paused" | "restarting" | "stopping"
            )
    }

    /// True for a container that was created but never started (its client died first).
    pub fn never_started(&self) -> bool {
        !self.running
            && matches!(
                self.status.as_str(),
                "created" | "configured" | "initialized"
            )
    }

    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// One container labelled for a home.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: String,
    pub name: String,
    /// The worker it runs, from the `corral-<worker_id>` name.
    pub worker_id: Option<String>,
    /// `running`, `exited`, `created`, …
    pub state: String,
}

/// A container engine on this host.
#[derive(Debug, Clone)]
pub struct Engine {
    pub kind: EngineKind,
    program: String,
    timeout: Duration,
    env: Vec<(String, String)>,
}

/// What `inspect` prints: one field per line (JSON never holds a raw newline, and a name or
/// id cannot), the same template for Podman and Docker.
pub const INSPECT_FORMAT: &str = "{{.Id}}\n{{.Name}}\n{{json .Config.Labels}}\n{{json .State}}";

/// Parses the output of `inspect --format` [`INSPECT_FORMAT`].
pub fn parse_inspect(text: &str) -> Result<ContainerState> {
    let bad = |why: String| Error::Internal(format!("unexpected inspect output ({why}): {text:?}"));
    let mut lines = text.trim().lines();
    let (Some(id), Some(name), Some(labels), Some(state)) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        return Err(bad("four lines expected".into()));
    };
    let mut st: ContainerState =
        serde_json::from_str(state).map_err(|e| bad(format!("state: {e}")))?;
    st.id = id.trim().to_string();
    st.name = name.trim().trim_start_matches('/').to_string();
    // `null` when the container has no labels.
    st.labels = serde_json::from_str::<Option<BTreeMap<String, String>>>(labels)
        .map_err(|e| bad(format!("labels: {e}")))?
        .unwrap_or_default();
    Ok(st)
}

/// Parses `ps --format '{{.ID}} {{.Names}} {{.State}}'` lines. Docker prints the state as
/// one word (`running`, `exited`); Podman 4 as a phrase (`Up 3 seconds ago`, `Exited (0) 2
/// seconds ago`), whose first word is kept with `up` read as `running`.
pub fn parse_list(text: &str) -> Vec<Listed> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id = f.next()?.to_string();
            let name = f.next()?.to_string();
            let mut state = f.next().unwrap_or("").to_ascii_lowercase();
            if state == "up" {
                state = "running".into();
            }
            Some(Listed {
                worker_id: worker_of_name(&name).map(str::to_string),
                id,
                name,
                state,
            })
        })
        .collect()
}

/// The containers of a listing whose worker no spec of the home knows (`known` says which
/// worker ids have a spec): what `corral doctor` reports and cleanup may remove. A container
/// of ours whose name carries no worker id is unknown too.
pub fn orphans(listed: &[Listed], known: impl Fn(&str) -> bool) -> Vec<&Listed> {
    listed
        .iter()
        .filter(|l| !l.worker_id.as_deref().is_some_and(&known))
        .collect()
}

/// True when the engine's stderr says the container does not exist (Podman: "no such
/// container" / "no such object"; Docker: "No such container" / "No such object").
pub fn is_no_such(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("no such container")
        || s.contains("no such object")
        || s.contains("no container with name or id")
}

impl Engine {
    /// The engine of that kind, found on `PATH`, with the default timeout.
    pub fn new(kind: EngineKind) -> Engine {
        Engine {
            kind,
            program: kind.program().to_string(),
            timeout: DEFAULT_TIMEOUT,
            env: Vec::new(),
        }
    }

    /// Uses another executable for the engine (an absolute path, or a test double).
    pub fn with_program(mut self, program: impl Into<String>) -> Engine {
        self.program = program.into();
        self
    }

    /// Bounds every command by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Engine {
        self.timeout = timeout;
        self
    }

    /// Sets a variable for every engine command (`CONTAINERS_CONF`, `DOCKER_HOST`, …).
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Engine {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The variables set with [`Engine::with_env`], for the launch path's `run` client.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The engine executable.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Runs `ENGINE ARGS` and returns its output, whatever its exit status; an engine that
    /// cannot be started, or runs past `timeout` (it is killed), is an error.
    pub fn invoke(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let what = || format!("{} {}", self.program, args.join(" "));
        let mut cmd = crate::process::command(&self.program);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Claimed: in the monitor, the SIGCHLD reaper must not take the status we wait for.
        let (mut child, _claim) = crate::process::spawn_claimed(&mut cmd)
            .map_err(|e| Error::io(format!("cannot run {}", what()), e))?;
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let status = wait_bounded(&mut child, timeout, &what())?;
        Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }

    /// Copies the output the engine kept of container `name` (`logs`: its stdout and stderr)
    /// into `to`, streamed (a long log never sits in memory), bounded by the timeout.
    pub fn logs_to(&self, name: &str, to: &std::fs::File) -> Result<()> {
        let what = format!("{} logs {name}", self.program);
        let copy = || {
            to.try_clone()
                .map_err(|e| Error::io(format!("cannot hand a file to {what}"), e))
        };
        let mut cmd = crate::process::command(&self.program);
        cmd.args(["logs", name])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(copy()?)
            .stderr(copy()?);
        let (mut child, _claim) = crate::process::spawn_claimed(&mut cmd)
            .map_err(|e| Error::io(format!("cannot run {what}"), e))?;
        let status = wait_bounded(&mut child, self.timeout, &what)?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Internal(format!("{what} failed ({status})")))
        }
    }

    /// Runs a command that acts on one container: `Ok(true)` when it did, `Ok(false)` when
    /// there is no such container, an error naming the command otherwise.
    fn act(&self, args: &[&str], timeout: Duration) -> Result<bool> {
        let out = self.invoke(args, timeout)?;
        if out.status.success() {
            return Ok(true);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if is_no_such(&stderr) {
            return Ok(false);
        }
        Err(Error::Internal(format!(
            "{} {} failed ({}): {}",
            self.program,
            args.join(" "),
            out.status,
            stderr.trim()
        )))
    }

    /// The state of container `name` (a name or id); `None` when there is no such container.
    pub fn inspect(&self, name: &str) -> Result<Option<ContainerState>> {
        let args = ["container", "inspect", "--format", INSPECT_FORMAT, name];
        let out = self.invoke(&args, self.timeout)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if is_no_such(&stderr) {
                return Ok(None);
            }
            return Err(Error::Internal(format!(
                "{} container inspect {name} failed ({}): {}",
                self.program,
                out.status,
                stderr.trim()
            )));
        }
        parse_inspect(&String::from_utf8_lossy(&out.stdout)).map(Some)
    }

    /// Graceful stop: the engine sends the stop signal (SIGTERM), waits `grace`, then
    /// SIGKILL. Returns when the container has exited; `false` when there was none.
    pub fn stop(&self, name: &str, grace: Duration) -> Result<bool> {
        let secs = grace.as_secs_f64().ceil().min(u32::MAX as f64) as u64;
        let t = secs.to_string();
        self.act(
            &["stop", "-t", &t, name],
            self.timeout + Duration::from_secs(secs),
        )
    }

    /// Sends `signal` (e.g. `KILL`, `TERM`) to the container's init.
    pub fn kill(&self, name: &str, signal: &str) -> Result<bool> {
        let sig = format!("--signal={signal}");
        self.act(&["kill", &sig, name], self.timeout)
    }

    /// Removes the container, running or not; `false` when there was none.
    pub fn remove(&self, name: &str) -> Result<bool> {
        // `rm -f` of a missing container succeeds in Podman and fails in Docker: both mean
        // "nothing left", so inspect first to report which it was.
        if self.inspect(name)?.is_none() {
            return Ok(false);
        }
        self.act(&["rm", "-f", name], self.timeout)
    }

    /// Every container (running or not) labelled for `home`, for doctor and cleanup.
    pub fn list(&self, home: &Path) -> Result<Vec<Listed>> {
        let filter = format!("label={LABEL_HOME}={}", home_label(home));
        let args = [
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &filter,
            "--format",
            "{{.ID}} {{.Names}} {{.State}}",
        ];
        let out = self.invoke(&args, self.timeout)?;
        if !out.status.success() {
            return Err(Error::Internal(format!(
                "{} ps failed ({}): {}",
                self.program,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(parse_list(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Waits until the container has exited (polling `inspect`), up to `timeout`; returns
    /// its final state, `None` when it vanished or is still running at the deadline.
    pub fn wait_exit(&self, name: &str, timeout: Duration) -> Result<Option<ContainerState>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.inspect(name)? {
                Some(st) if st.has_exited() => return Ok(Some(st)),
                None => return Ok(None),
                Some(_) if Instant::now() >= deadline => return Ok(None),
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Waits for an engine command until `timeout`, then kills it (an error naming `what`).
fn wait_bounded(
    child: &mut std::process::Child,
    timeout: Duration,
    what: &str,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Internal(format!(
                    "{what} did not finish within {:.0} s (killed)",
                    timeout.as_secs_f64()
                )));
            }
            Err(e) => return Err(Error::io(format!("cannot wait for {what}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_output_parses_for_both_engines() {
        let podman = "d6b5c74f\ncorral-w1\n{\"corral.home\":\"/tmp/a b\",\"corral.worker_id\":\"w1\"}\n{\"OciVersion\":\"1.0.2-dev\",\"Status\":\"running\",\"Running\":true,\"Paused\":false,\"OOMKilled\":false,\"Dead\":false,\"Pid\":17571,\"ConmonPid\":17561,\"ExitCode\":0,\"Error\":\"a b c\",\"StartedAt\":\"2026-12-01T21:41:29.15Z\",\"FinishedAt\":\"0001-01-01T00:00:00Z\",\"Health\":{\"Status\":\"\"}}\n";
        let st = parse_inspect(podman).unwrap();
        assert_eq!(st.id, "d6b5c74f");
        assert_eq!(st.name, "corral-w1");
        assert_eq!(st.label("corral.home"), Some("/tmp/a b"));
        assert!(st.running && !st.has_exited() && st.is_live() && !st.never_started());
        assert_eq!(st.pid, 17571);
        let docker = "abc\n/corral-w2\nnull\n{\"Status\":\"exited\",\"Running\":false,\"Paused\":false,\"Restarting\":false,\"OOMKilled\":true,\"Dead\":false,\"Pid\":0,\"ExitCode\":137,\"Error\":\"\",\"StartedAt\":\"x\",\"FinishedAt\":\"y\"}\n";
        let st = parse_inspect(docker).unwrap();
        assert!(st.has_exited() && st.oom_killed && !st.is_live());
        assert_eq!(st.name, "corral-w2", "Docker's leading slash is dropped");
        assert!(st.labels.is_empty());
        assert_eq!((st.pid, st.exit_code), (0, 137));
        assert!(parse_inspect("").is_err());
        assert!(parse_inspect("id\nname\n{}\nnot-json").is_err());
        assert!(parse_inspect("id not-json").is_err());
    }

    #[test]
    fn listing_parses_and_names_workers() {
        let l = parse_list(
            "aaa corral-worker-1 running\nbbb other exited\nccc corral-w2 Up 3 seconds ago\n\n",
        );
        assert_eq!(l.len(), 3);
        assert_eq!(l[2].state, "running");
        assert_eq!(l[2].worker_id.as_deref(), Some("w2"));
        assert_eq!(l[0].worker_id.as_deref(), Some("worker-1"));
        assert_eq!(l[0].state, "running");
        assert_eq!(l[1].worker_id, None);
    }

    #[test]
    fn orphans_are_the_containers_no_spec_knows() {
        let l = parse_list("a corral-w1 running\nb corral-w2 exited\nc stray up\n");
        let o = orphans(&l, |id| id == "w1");
        let names: Vec<&str> = o.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["corral-w2", "stray"]);
        assert!(
            orphans(&l, |_| true).len() == 1,
            "a name without an id is never known"
        );
    }

    #[test]
    fn missing_containers_are_recognised() {
        assert!(is_no_such(
            "Error: no container with name or ID \"x\" found: no such container"
        ));
        assert!(is_no_such(
            "Error: inspecting object: no such object: \"x\""
        ));
        assert!(is_no_such("Error: No such container: x"));
        assert!(!is_no_such("Error: permission denied"));
    }

    #[test]
    fn a_hung_engine_is_killed_at_the_timeout() {
        let e = Engine::new(EngineKind::Podman).with_program("sleep");
        let t = Instant::now();
        let err = e.invoke(&["30"], Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(20));
        let missing = Engine::new(EngineKind::Podman).with_program("/nonexistent/podman");
        assert!(missing.inspect("x").is_err());
    }

    #[test]
    fn logs_stream_into_a_file() {
        let (dir, _home) = crate::home::test_home();
        let path = dir.path().join("kept.log");
        let f = std::fs::File::create(&path).unwrap();
        let e = Engine::new(EngineKind::Docker).with_program("echo");
        e.logs_to("corral-w", &f).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "logs corral-w\n");
        let failing = Engine::new(EngineKind::Docker).with_program("false");
        assert!(failing.logs_to("corral-w", &f).is_err());
    }

    #[test]
    fn engine_failures_name_the_command() {
        // `false` exits 1 with no "no such" message: a real failure, not a missing container.
        let e = Engine::new(EngineKind::Podman).with_program("false");
        let err = e.stop("corral-w", Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("stop -t 1 corral-w"), "{err}");
        assert!(e.inspect("corral-w").is_err());
        assert!(e.list(Path::new("/h")).is_err());
    }
}
