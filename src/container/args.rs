//! The `ENGINE run` argv of a container worker, built from its worker type. Pure (no engine
//! is run), so every rule is unit tested: what is mounted, which limits are passed, which
//! flags are refused because they would break tracking.
//!
//! Environment values never appear in the argv: each variable is passed as `--env NAME`
//! and its value is set on the client process, which the engine copies into the container.
//! So an `env_file` secret does not show in `ps` or `/proc/<pid>/cmdline`.

use super::{container_name, home_label, EngineKind, LABEL_HOME, LABEL_WORKER};
use crate::error::{Error, Result};
use crate::policy::WorkerType;
use std::path::Path;

/// Everything the launch path knows when it starts a container worker.
#[derive(Debug, Clone)]
pub struct RunRequest<'a> {
    pub worker_id: &'a str,
    /// The home (mounted at the same path inside, so `heartbeat` and `task-queue` work).
    pub home: &'a Path,
    pub worker_type: &'a WorkerType,
    /// `spawn-worker --image`: overrides the type's image.
    pub image: Option<&'a str>,
    /// The policy's default engine, used when the type names none.
    pub default_engine: Option<&'a str>,
    /// The worker's command, run inside the image as given (not resolved on the host).
    pub command: &'a [String],
    /// The launch environment (type `env`, `env_file`, `spawn-worker --env`), already merged.
    pub env: &'a [(String, String)],
    /// Where the engine writes the container id.
    pub cidfile: &'a Path,
    /// `--user UID:GID`; `None` runs as the caller's own ids, so files the worker writes in
    /// the home belong to the home's owner (a `0700` home admits nobody else).
    pub user: Option<(u32, u32)>,
}

/// The engine invocation of one container worker.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub engine: EngineKind,
    /// The container's name (`corral-<worker_id>`).
    pub name: String,
    pub image: String,
    /// Arguments after the engine program: `run … IMAGE COMMAND…`.
    pub args: Vec<String>,
    /// Variables to set on the client process (passed into the container by name).
    pub env: Vec<(String, String)>,
}

impl RunPlan {
    /// The full argv, engine program first (for logs and the spec's `process.command`).
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![self.engine.program().to_string()];
        v.extend(self.args.iter().cloned());
        v
    }
}

/// `engine_args` that would break how corral tracks a container, and why.
const REFUSED_ARGS: &[(&str, &str)] = &[
    ("--rm", "the exit code would be lost"),
    ("--name", "corral names the container corral-<worker_id>"),
    ("--cidfile", "corral records the container id itself"),
    ("-d", "the client must stay attached to its log"),
    ("--detach", "the client must stay attached to its log"),
    ("--replace", "it would remove another worker's container"),
    ("-t", "a terminal would swallow the log"),
    ("--tty", "a terminal would swallow the log"),
];

fn refused(arg: &str) -> Option<&'static str> {
    let flag = arg.split('=').next().unwrap_or(arg);
    REFUSED_ARGS
        .iter()
        .find(|(f, _)| *f == flag)
        .map(|(_, why)| *why)
}

/// Variables that choose or configure the engine the *client* talks to. In a worker's
/// launch environment (type `env`, `env_file`, `spawn-worker --env`) they would be set on
/// the `run` client alone, so the container would be created on one engine while `inspect`,
/// `stop`, cleanup and doctor (run by other corral commands, with their own environment)
/// asked another. They are read from the environment of corral's commands instead, the same
/// for all of them (e.g. `DOCKER_HOST=unix:///run/podman/podman.sock` in the monitor's unit).
pub const ENGINE_CLIENT_ENV: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_API_VERSION",
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINER_SSHKEY",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
];

fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `256m`, `1g`, `1.5g`, `1073741824`: what both engines accept for `--memory`.
fn valid_memory(s: &str) -> bool {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let digits = t.strip_suffix(['k', 'm', 'g']).unwrap_or(t);
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.parse::<f64>().map(|v| v > 0.0).unwrap_or(false)
}

/// Checks `HOST:CONTAINER[:OPTIONS]` with absolute paths on both sides.
fn check_volume(v: &str) -> Result<()> {
    let parts: Vec<&str> = v.split(':').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts[..2]
            .iter()
            .all(|p| Path::new(p).is_absolute() && !p.contains(".."));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid volume {v:?}: use /host/path:/container/path[:ro]"
        )))
    }
}

fn has_flag(args: &[String], names: &[&str]) -> bool {
    args.iter().any(|a| {
        let flag = a.split('=').next().unwrap_or(a);
        names.contains(&flag)
    })
}

/// Builds the run plan. Refuses (exit 6) what cannot work: no image, no command, a limit the
/// engine would reject, a volume that is not absolute, an `engine_args` flag that breaks
/// tracking, an environment name the engine cannot pass.
pub fn run_plan(req: &RunRequest<'_>) -> Result<RunPlan> {
    let t = req.worker_type;
    let engine = EngineKind::parse(t.engine.as_deref().or(req.default_engine))?;
    let image = req
        .image
        .or(t.image.as_deref())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "worker {}: container mode needs an image (the type's \"image\" or --image)",
                req.worker_id
            ))
        })?
        .to_string();
    if image.starts_with('-') {
        return Err(Error::Invalid(format!("invalid image {image:?}")));
    }
    if req.command.is_empty() {
        return Err(Error::Invalid(format!(
            "worker {}: container mode needs a command to run in the image",
            req.worker_id
        )));
    }
    for a in &t.engine_args {
        if let Some(why) = refused(a) {
            return Err(Error::Invalid(format!(
                "engine_args may not contain {a:?}: {why}"
            )));
        }
    }
    let name = container_name(req.worker_id);
    let home = home_label(req.home);
    let mut args: Vec<String> = vec!["run".into()];
    let mut push = |a: &str, b: &str| {
        args.push(a.to_string());
        args.push(b.to_string());
    };
    push("--name", &name);
    push("--cidfile", &req.cidfile.display().to_string());
    push("--label", &format!("{LABEL_HOME}={home}"));
    push("--label", &format!("{LABEL_WORKER}={}", req.worker_id));
    if engine == EngineKind::Podman {
        push("--log-driver", "passthrough");
    }
    let network = t.network.as_deref().unwrap_or("none").trim();
    if network.is_empty() || network.starts_with('-') || network.contains(char::is_whitespace) {
        return Err(Error::Invalid(format!("invalid network {network:?}")));
    }
    push("--network", network);
    if let Some(m) = &t.memory_limit {
        if !valid_memory(m) {
            return Err(Error::Invalid(format!(
                "invalid memory_limit {m:?}: use e.g. 256m or 2g"
            )));
        }
        // Swap limited to the same figure: the limit is then a real ceiling, not a hint.
        push("--memory", m.trim());
        push("--memory-swap", m.trim());
    }
    if let Some(c) = t.cpus {
        if !(c.is_finite() && c > 0.0 && c <= 4096.0) {
            return Err(Error::Invalid(format!(
                "invalid cpus {c}: a positive number of CPUs"
            )));
        }
        push("--cpus", &c.to_string());
    }
    if !has_flag(&t.engine_args, &["--user", "-u"]) {
        let (uid, gid) = req.user.unwrap_or_else(|| {
            (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            )
        });
        push("--user", &format!("{uid}:{gid}"));
    }
    push("--volume", &format!("{home}:{home}"));
    for v in &t.volumes {
        check_volume(v)?;
        push("--volume", v);
    }
    if let Some(cwd) = &t.cwd {
        if !Path::new(cwd).is_absolute() {
            return Err(Error::Invalid(format!(
                "container cwd {cwd:?} must be an absolute path inside the image"
            )));
        }
        push("--workdir", cwd);
    }
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        env.retain(|(old, _)| old != k);
        env.push((k.to_string(), v.to_string()));
    };
    set("CORRAL_HOME", &home);
    set("CORRAL_WORKER_ID", req.worker_id);
    for (k, v) in req.env {
        if !valid_env_name(k) {
            return Err(Error::Invalid(format!(
                "environment name {k:?} cannot be passed into a container"
            )));
        }
        if ENGINE_CLIENT_ENV.contains(&k.as_str()) {
            return Err(Error::Invalid(format!(
                "{k} in a container worker's env would redirect only its `run` client, not \
                 the inspect, stop and cleanup that follow: set it in the environment of \
                 corral's commands (the monitor, spawn-worker, stop-worker, cleanup-zombies)"
            )));
        }
        if k != "CORRAL_HOME" && k != "CORRAL_WORKER_ID" {
            set(k, v);
        }
    }
    for (k, _) in &env {
        push("--env", k);
    }
    if t.init.unwrap_or(true) {
        args.push("--init".into());
    }
    args.extend(t.engine_args.iter().cloned());
    args.push(image.clone());
    args.extend(req.command.iter().cloned());
    Ok(RunPlan {
        engine,
        name,
        image,
        args,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty() -> WorkerType {
        WorkerType {
            execution_mode: Some("container".into()),
            image: Some("localhost/corral-busybox".into()),
            ..Default::default()
        }
    }

    fn plan_of(t: &WorkerType, env: &[(String, String)]) -> Result<RunPlan> {
        let cmd = vec!["sh".to_string(), "-c".into(), "sleep 1".into()];
        run_plan(&RunRequest {
            worker_id: "worker-x-1",
            home: Path::new("/srv/home"),
            worker_type: t,
            image: None,
            default_engine: None,
            command: &cmd,
            env,
            cidfile: Path::new("/srv/home/agents/logs/workers/worker-x-1/container.cid"),
            user: Some((1000, 1000)),
        })
    }

    /// The value after the first occurrence of `flag`.
    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn defaults_name_label_mount_isolate_and_init() {
        let p = plan_of(&ty(), &[]).unwrap();
        assert_eq!(p.engine, EngineKind::Podman);
        assert_eq!(p.name, "corral-worker-x-1");
        assert_eq!(p.args[0], "run");
        assert_eq!(after(&p.args, "--name"), ["corral-worker-x-1"]);
        assert_eq!(
            after(&p.args, "--label"),
            ["corral.home=/srv/home", "corral.worker_id=worker-x-1"]
        );
        assert_eq!(
            after(&p.args, "--cidfile"),
            ["/srv/home/agents/logs/workers/worker-x-1/container.cid"]
        );
        assert_eq!(after(&p.args, "--network"), ["none"]);
        assert_eq!(after(&p.args, "--volume"), ["/srv/home:/srv/home"]);
        assert_eq!(after(&p.args, "--user"), ["1000:1000"]);
        assert_eq!(after(&p.args, "--log-driver"), ["passthrough"]);
        assert!(p.args.contains(&"--init".to_string()));
        assert!(!p.args.contains(&"--rm".to_string()));
        assert!(!p.args.iter().any(|a| a == "--memory" || a == "--cpus"));
        // Image, then the command exactly as given, at the end.
        let n = p.args.len();
        assert_eq!(
            p.args[n - 4..],
            ["localhost/corral-busybox", "sh", "-c", "sleep 1"]
        );
        assert_eq!(p.argv()[0], "podman");
        assert_eq!(
            p.env,
            [
                ("CORRAL_HOME".to_string(), "/srv/home".to_string()),
                ("CORRAL_WORKER_ID".to_string(), "worker-x-1".to_string())
            ]
        );
    }

    #[test]
    fn limits_volumes_cwd_and_engine_args_are_passed() {
        let mut t = ty();
        t.memory_limit = Some("64m".into());
        t.cpus = Some(0.5);
        t.volumes = vec!["/opt/tools:/opt/tools:ro".into()];
        t.network = Some("slirp4netns".into());
        t.init = Some(false);
        t.cwd = Some("/srv/home/work".into());
        t.engine_args = vec!["--pids-limit=64".into(), "--user=5:5".into()];
        t.engine = Some("docker".into());
        let p = plan_of(&t, &[]).unwrap();
        assert_eq!(p.engine, EngineKind::Docker);
        assert_eq!(after(&p.args, "--memory"), ["64m"]);
        assert_eq!(after(&p.args, "--memory-swap"), ["64m"]);
        assert_eq!(after(&p.args, "--cpus"), ["0.5"]);
        assert_eq!(
            after(&p.args, "--volume"),
            ["/srv/home:/srv/home", "/opt/tools:/opt/tools:ro"]
        );
        assert_eq!(after(&p.args, "--network"), ["slirp4netns"]);
        assert_eq!(after(&p.args, "--workdir"), ["/srv/home/work"]);
        assert!(!p.args.contains(&"--init".to_string()));
        assert!(
            after(&p.args, "--user").is_empty(),
            "engine_args set the user"
        );
        assert!(
            after(&p.args, "--log-driver").is_empty(),
            "docker has no passthrough"
        );
        let img = p.args.iter().position(|a| a == "localhost/corral-busybox");
        let extra = p.args.iter().position(|a| a == "--pids-limit=64");
        assert!(extra < img, "engine_args go before the image");
    }

    #[test]
    fn env_values_stay_out_of_the_argv() {
        let env = vec![
            ("API_TOKEN".to_string(), "s3cret".to_string()),
            ("CORRAL_WORKER_ID".to_string(), "spoofed".to_string()),
        ];
        let p = plan_of(&ty(), &env).unwrap();
        assert!(!p.args.iter().any(|a| a.contains("s3cret")));
        assert_eq!(
            after(&p.args, "--env"),
            ["CORRAL_HOME", "CORRAL_WORKER_ID", "API_TOKEN"]
        );
        assert!(p.env.contains(&("API_TOKEN".into(), "s3cret".into())));
        assert!(
            p.env
                .contains(&("CORRAL_WORKER_ID".into(), "worker-x-1".into())),
            "the worker id cannot be overridden"
        );
        let bad = vec![("NOT-A-NAME".to_string(), "x".to_string())];
        assert_eq!(plan_of(&ty(), &bad).unwrap_err().exit_code(), 6);
        // The engine's endpoint is not the worker's to choose: the client alone would use it.
        for k in ["DOCKER_HOST", "CONTAINER_HOST", "CONTAINERS_CONF"] {
            let redirect = vec![(k.to_string(), "unix:///elsewhere.sock".to_string())];
            let e = plan_of(&ty(), &redirect).unwrap_err();
            assert_eq!(e.exit_code(), 6, "{e}");
            assert!(
                e.to_string().contains("environment of corral's commands"),
                "{e}"
            );
        }
    }

    #[test]
    fn image_override_and_policy_engine() {
        let cmd = vec!["true".to_string()];
        let t = ty();
        let p = run_plan(&RunRequest {
            worker_id: "w",
            home: Path::new("/h"),
            worker_type: &t,
            image: Some("localhost/other:1"),
            default_engine: Some("docker"),
            command: &cmd,
            env: &[],
            cidfile: Path::new("/h/c.cid"),
            user: None,
        })
        .unwrap();
        assert_eq!(p.image, "localhost/other:1");
        assert_eq!(p.engine, EngineKind::Docker);
        let me = format!(
            "{}:{}",
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw()
        );
        assert_eq!(after(&p.args, "--user"), [me.as_str()]);
    }

    #[test]
    fn what_breaks_tracking_or_the_engine_is_refused() {
        let refuse = |f: &dyn Fn(&mut WorkerType)| {
            let mut t = ty();
            f(&mut t);
            let e = plan_of(&t, &[]).unwrap_err();
            assert_eq!(e.exit_code(), 6, "{e}");
            e.to_string()
        };
        assert!(refuse(&|t| t.image = None).contains("needs an image"));
        assert!(refuse(&|t| t.engine_args = vec!["--rm".into()]).contains("exit code"));
        refuse(&|t| t.engine_args = vec!["--name=x".into()]);
        refuse(&|t| t.engine_args = vec!["-d".into()]);
        refuse(&|t| t.memory_limit = Some("lots".into()));
        refuse(&|t| t.memory_limit = Some("0m".into()));
        refuse(&|t| t.cpus = Some(f64::NAN));
        refuse(&|t| t.cpus = Some(-1.0));
        refuse(&|t| t.volumes = vec!["relative:/x".into()]);
        refuse(&|t| t.volumes = vec!["/a".into()]);
        refuse(&|t| t.volumes = vec!["/a/../etc:/x".into()]);
        refuse(&|t| t.network = Some("--privileged".into()));
        refuse(&|t| t.engine = Some("lxc".into()));
        refuse(&|t| t.cwd = Some("work".into()));
        refuse(&|t| t.image = Some("--privileged".into()));
        let cmd: Vec<String> = vec![];
        let t = ty();
        let e = run_plan(&RunRequest {
            worker_id: "w",
            home: Path::new("/h"),
            worker_type: &t,
            image: None,
            default_engine: None,
            command: &cmd,
            env: &[],
            cidfile: Path::new("/h/c.cid"),
            user: None,
        })
        .unwrap_err();
        assert!(e.to_string().contains("needs a command"));
    }

    #[test]
    fn memory_sizes() {
        for ok in ["64m", "1g", "1.5g", "512k", "1073741824", "256M", "64mb"] {
            assert!(valid_memory(ok), "{ok}");
        }
        for bad in ["", "m", "-1m", "1t", "lots", "0"] {
            assert!(!valid_memory(bad), "{bad}");
        }
    }
}
