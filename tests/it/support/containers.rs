//! Real Podman for the container tests: the engine set up once per test run by the
//! project's `scripts/containers setup` (its config under its own directory, the local
//! busybox image), a worker type that runs the project's own binaries inside that image,
//! a scene whose binaries reach that engine, and a guard that removes the home's
//! containers even when the test panics. The `docker` engine is the Docker CLI talking to
//! Podman's API service (`scripts/containers service start`), the one set-up of it that
//! runs here without a dockerd.

use super::scene::{bin, read_json, Scene};
use corral::container::{Engine, EngineKind};
use corral::policy::WorkerType;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The image `scripts/containers setup` builds.
pub const IMAGE: &str = "localhost/corral-busybox";

/// Podman configured by `scripts/containers setup`.
pub struct Podman {
    pub dir: PathBuf,
    /// The engine the scenes' worker types name (`podman`, or `docker` through the socket).
    pub kind: EngineKind,
    /// `DOCKER_HOST` for the docker engine: Podman's API socket.
    pub docker_host: Option<String>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn on_path(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The engine, set up once for this test process; `None` (a printed skip) when Podman is not
/// installed outside CI. Under `CI` a missing Podman fails (`.ci/run` installs it), and a
/// set-up that fails panics with its output: a broken engine never passes as a skip.
pub fn podman() -> Option<&'static Podman> {
    static P: OnceLock<Option<Podman>> = OnceLock::new();
    P.get_or_init(|| {
        if !super::have_tool(on_path("podman"), "podman (run scripts/containers setup)") {
            return None;
        }
        let dir = std::env::var_os("CORRAL_CONTAINERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/corral-containers"));
        let out = Command::new(repo_root().join("scripts/containers"))
            .arg("setup")
            .env("CORRAL_CONTAINERS_DIR", &dir)
            .output()
            .expect("run scripts/containers setup");
        assert!(
            out.status.success(),
            "scripts/containers setup failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Podman {
            dir,
            kind: EngineKind::Podman,
            docker_host: None,
        })
    })
    .as_ref()
}

/// The `docker` engine: the Docker CLI against Podman's Docker-compatible API service,
/// started (once per test process, idempotently across processes) by `scripts/containers
/// service start` with its socket under the harness's directory. `None` (a printed skip)
/// when the CLI is missing outside CI; under `CI` a missing CLI or a service that does not
/// answer fails. The service is left running for the other tests (and test processes) that
/// share it; `scripts/containers service stop` ends it.
pub fn docker() -> Option<&'static Podman> {
    static D: OnceLock<Option<Podman>> = OnceLock::new();
    D.get_or_init(|| {
        let p = podman()?;
        if !super::have_tool(on_path("docker"), "docker (run scripts/containers setup)") {
            return None;
        }
        let out = Command::new(repo_root().join("scripts/containers"))
            .args(["service", "start"])
            .env("CORRAL_CONTAINERS_DIR", &p.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/containers service start");
        assert!(
            out.status.success(),
            "scripts/containers service start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Podman {
            dir: p.dir.clone(),
            kind: EngineKind::Docker,
            docker_host: Some(format!("unix://{}", p.dir.join("podman.sock").display())),
        })
    })
    .as_ref()
}

impl Podman {
    /// The variables that point the engine at the harness's set-up: Podman's config, or for
    /// the docker engine only `DOCKER_HOST` (what an operator sets in the environment of
    /// corral's commands; the engine client inherits it).
    pub fn env(&self) -> Vec<(String, String)> {
        if let Some(h) = &self.docker_host {
            return vec![("DOCKER_HOST".into(), h.clone())];
        }
        vec![
            (
                "CONTAINERS_CONF".into(),
                self.dir.join("containers.conf").display().to_string(),
            ),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                self.dir.join("storage.conf").display().to_string(),
            ),
        ]
    }

    /// The library's engine, configured like the harness.
    pub fn engine(&self) -> Engine {
        self.env()
            .into_iter()
            .fold(Engine::new(self.kind), |e, (k, v)| e.with_env(k, v))
    }

    /// A container worker type on the busybox image that can run corral's own binaries:
    /// the binaries' directory and the host's C library are mounted read-only (the image
    /// has no libc; the binaries are dynamically linked).
    pub fn worker_type(&self) -> WorkerType {
        let bins = bin("heartbeat")
            .parent()
            .expect("binary dir")
            .display()
            .to_string();
        let mut volumes = vec![format!("{bins}:{bins}:ro")];
        volumes.extend(host_libc_volumes());
        WorkerType {
            execution_mode: Some("container".into()),
            image: Some(IMAGE.into()),
            engine: (self.kind == EngineKind::Docker).then(|| "docker".to_string()),
            volumes,
            ..Default::default()
        }
    }

    /// A scene whose binaries reach this engine (its config in their environment), and a
    /// guard that removes every container labelled for its home when the test ends.
    pub fn scene(&self) -> HomeScene {
        let mut s = Scene::new();
        for (k, v) in self.env() {
            s.set_env(&k, &v);
        }
        let home = s.home.clone();
        HomeScene {
            scene: s,
            guard: HomeGuard {
                engine: self.engine(),
                home,
            },
        }
    }

    /// Adds container worker type `name` to the scene's `worker-types.json`: the busybox
    /// image with corral's binaries and the host's C library mounted, running `command`;
    /// `edit` changes the type's JSON further.
    pub fn add_type(
        &self,
        s: &Scene,
        name: &str,
        command: &[String],
        edit: impl FnOnce(&mut Value),
    ) {
        let p = s.coord().join("config/worker-types.json");
        let mut doc = read_json(&p);
        let mut t = serde_json::to_value(self.worker_type()).expect("type JSON");
        if let Some(o) = t.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        t["command"] = serde_json::json!(command);
        t["tokens"] = serde_json::json!(1000);
        edit(&mut t);
        doc["types"][name] = t;
        std::fs::write(&p, serde_json::to_vec_pretty(&doc).expect("json")).expect("write types");
    }
}

/// `HOST:CONTAINER:ro` volumes for the host's dynamic loader and C library, where a
/// dynamically linked host binary looks for them (`/lib64/ld-linux-…`, `/lib/<triplet>`).
pub fn host_libc_volumes() -> Vec<String> {
    ["/lib64", "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu"]
        .iter()
        .filter_map(|p| {
            let real = std::fs::canonicalize(p).ok()?;
            Some(format!("{}:{p}:ro", real.display()))
        })
        .collect()
}

/// A scene for container workers; dereferences to the [`Scene`].
pub struct HomeScene {
    pub guard: HomeGuard,
    pub scene: Scene,
}

impl std::ops::Deref for HomeScene {
    type Target = Scene;
    fn deref(&self) -> &Scene {
        &self.scene
    }
}

/// Removes every container labelled for a home (running or not) when dropped.
pub struct HomeGuard {
    pub engine: Engine,
    pub home: PathBuf,
}

impl Drop for HomeGuard {
    fn drop(&mut self) {
        for l in self.engine.list(&self.home).unwrap_or_default() {
            let _ = self.engine.remove(&l.id);
        }
    }
}

/// The path of a corral binary, as a container worker runs it (the build directory is
/// mounted at the same path).
pub fn bin_path(name: &str) -> String {
    bin(name).display().to_string()
}
