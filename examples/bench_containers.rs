//! Container workers against direct ones, side by side in one run: spawn to first heartbeat
//! and stop latency, both through `spawn-worker --type T` and `stop-worker`, what an
//! operator runs. The direct type runs `sh -c 'heartbeat; exec sleep 300'` on the host; the
//! container type runs the same command inside the busybox image of `scripts/containers`
//! (corral's binaries and the host's C library mounted). The two modes alternate, one
//! worker of each per round, so load from other work on the machine falls on both alike.
//! Also the engine's own costs: `run` of a trivial container, and one `inspect` (what a
//! liveness check through the engine would cost). One `name value unit` line per figure.
//! With `DOCKER_HOST` set (Podman's API socket, `scripts/containers service start`), a third
//! column: the same container type through the `docker` engine (`docker_*` figures).
//!
//! ```text
//! scripts/containers setup && eval "$(scripts/containers env)"
//! scripts/containers service start && eval "$(scripts/containers docker-env)"   # optional
//! cargo run --release --example bench_containers -- --bin target/release --tmp /tmp/x [--n 10]
//! ```

use corral::container::{Engine, EngineKind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    bin: PathBuf,
    tmp: PathBuf,
    n: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        bin: PathBuf::from("target/release"),
        tmp: std::env::temp_dir().join("corral-bench-containers"),
        n: 10,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for w in args.chunks(2) {
        match (w[0].as_str(), w.get(1)) {
            ("--bin", Some(v)) => o.bin = PathBuf::from(v),
            ("--tmp", Some(v)) => o.tmp = PathBuf::from(v),
            ("--n", Some(v)) => o.n = v.parse().expect("--n N"),
            _ => panic!("usage: bench_containers [--bin DIR] [--tmp DIR] [--n N]"),
        }
    }
    o.bin = std::path::absolute(&o.bin).expect("bin dir");
    o
}

fn run(o: &Opts, name: &str, home: &Path, args: &[&str]) -> String {
    let out = Command::new(o.bin.join(name))
        .arg("--home")
        .arg(home)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run");
    assert!(out.status.success(), "{name} {args:?}: {}", out.status);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls the spec until its status says the worker has beaten (`running`).
fn wait_first_beat(home: &Path, id: &str) {
    let path = home
        .join("coordination/worker-specs/active")
        .join(format!("{id}.json"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(b) = std::fs::read(&path) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                if v["status"] == "running" {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "{id} never beat");
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn stats(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let med = ms[ms.len() / 2];
    let max = ms[ms.len() - 1];
    println!("{name}_median {med:.1} ms");
    println!("{name}_max {max:.1} ms");
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn fresh_home(o: &Opts, name: &str) -> PathBuf {
    let h = o.tmp.join(name);
    let _ = std::fs::remove_dir_all(&h);
    std::fs::create_dir_all(&o.tmp).expect("tmp");
    let out = Command::new(o.bin.join("corral"))
        .args(["init", "--home"])
        .arg(&h)
        .stdout(Stdio::null())
        .status()
        .expect("corral init");
    assert!(out.success());
    h
}

/// The docker engine, when `DOCKER_HOST` says where it is.
fn docker_engine() -> Option<Engine> {
    let host = std::env::var("DOCKER_HOST").ok()?;
    Some(Engine::new(EngineKind::Docker).with_env("DOCKER_HOST", host))
}

fn engine() -> Engine {
    let mut e = Engine::new(EngineKind::Podman);
    for k in ["CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"] {
        if let Ok(v) = std::env::var(k) {
            e = e.with_env(k, v);
        }
    }
    e
}

/// Adds the types to the home's `worker-types.json`: `bench-direct`, `bench-container`
/// and `bench-docker` (the container type through the docker engine), running `script`.
fn add_types(o: &Opts, home: &Path, script: &str) {
    let bins = o.bin.display().to_string();
    let mut volumes = vec![format!("{bins}:{bins}:ro")];
    for p in ["/lib64", "/lib/x86_64-linux-gnu"] {
        if let Ok(real) = std::fs::canonicalize(p) {
            volumes.push(format!("{}:{p}:ro", real.display()));
        }
    }
    let path = home.join("coordination/config/worker-types.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("types")).expect("types JSON");
    let command = serde_json::json!(["sh", "-c", script]);
    doc["types"]["bench-direct"] = serde_json::json!({"tokens": 1000, "command": command});
    doc["types"]["bench-container"] = serde_json::json!({
        "tokens": 1000,
        "command": command,
        "execution_mode": "container",
        "image": "localhost/corral-busybox",
        "volumes": volumes,
    });
    let mut docker = doc["types"]["bench-container"].clone();
    docker["engine"] = serde_json::json!("docker");
    doc["types"]["bench-docker"] = docker;
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).expect("json")).expect("write types");
}

fn main() {
    let o = opts();
    let hb = o.bin.join("heartbeat").display().to_string();
    let script = format!("{hb}; exec sleep 300");
    let home = fresh_home(&o, "home");
    add_types(&o, &home, &script);
    let e = engine();

    let docker = docker_engine();
    let mut modes = vec![
        ("direct", "bench-direct", None),
        ("container", "bench-container", Some(e.clone())),
    ];
    if let Some(d) = &docker {
        modes.push(("docker", "bench-docker", Some(d.clone())));
    }

    let mut fig: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for _ in 0..o.n {
        for (mode, ty, eng) in &modes {
            let t = Instant::now();
            let id = run(&o, "spawn-worker", &home, &["--type", ty]);
            let spawned = ms(t);
            wait_first_beat(&home, &id);
            let beat = ms(t);
            if let Some(eng) = eng {
                let t = Instant::now();
                let st = eng.inspect(&format!("corral-{id}")).expect("inspect");
                let key = if *mode == "docker" {
                    "docker_engine_inspect"
                } else {
                    "engine_inspect"
                };
                fig.entry(key.into()).or_default().push(ms(t));
                assert!(st.is_some_and(|st| st.running));
            }
            let t = Instant::now();
            run(&o, "stop-worker", &home, &[&id]);
            let stopped = ms(t);
            for (what, v) in [
                ("spawn_worker_returns", spawned),
                ("spawn_to_first_heartbeat", beat),
                ("stop_worker", stopped),
            ] {
                fig.entry(format!("{mode}_{what}")).or_default().push(v);
            }
        }
    }
    // Stopped containers stay for their exit codes until cleanup: remove them (both engines
    // reach the same Podman store here; each lists what it can).
    for eng in std::iter::once(&e).chain(docker.as_ref()) {
        for l in eng.list(&home).unwrap_or_default() {
            let _ = eng.remove(&l.id);
        }
    }

    // The engine alone: a container that does nothing, start to exit.
    for _ in 0..o.n {
        let t = Instant::now();
        let out = corral::process::command("podman")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "localhost/corral-busybox",
                "true",
            ])
            .envs(e.env().iter().cloned())
            .output()
            .expect("podman run true");
        assert!(out.status.success());
        fig.entry("engine_run_true".into()).or_default().push(ms(t));
    }
    for (name, v) in fig {
        stats(&name, v);
    }
    let _ = std::fs::remove_dir_all(&o.tmp);
}
