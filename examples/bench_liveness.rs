//! Liveness benchmarks for `heartbeat-monitor` (run by `scripts/bench.d/20-liveness.sh`):
//!
//! - `sigkill`: SIGKILL of a launched worker → its spec in `zombie/` (median, p99);
//! - `stale`: how late after `zombie_seconds` a silent worker is declared a zombie;
//! - `soak`: daemon CPU and peak RSS with N simulated workers beating every 30 s;
//! - `once`: wall time of `heartbeat-monitor --once` over N specs;
//! - `spawners`: false failures among spawns by concurrent spawners while the daemon runs
//!   (a healthy worker declared gone before its process could have ended).
//!
//! Usage: `bench_liveness --bin DIR --tmp DIR [sigkill|stale|soak|once|spawners|all]`; sizes
//! from env `BENCH_KILLS` (50), `BENCH_STALE` (50), `BENCH_WORKERS` (10000),
//! `BENCH_SOAK_SECONDS` (60), `BENCH_SPAWNS` (10000), `BENCH_SPAWNERS` (4),
//! `BENCH_SPAWN_LIFE` (10: seconds each spawned worker lives).

use corral::home::{Home, StateDir};
use corral::spec::{Status, WorkerSpec};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn env_n(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fresh_home(tmp: &Path, name: &str) -> Res<Home> {
    let root = tmp.join(name);
    let _ = std::fs::remove_dir_all(&root);
    let home = Home::at(&root);
    home.init(false)?;
    Ok(home)
}

fn set_policy(home: &Home, kv: &[(&str, serde_json::Value)]) -> Res<()> {
    let p = home.policy_path();
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
    for (k, v) in kv {
        let mut cur = &mut doc;
        let keys: Vec<&str> = k.split('.').collect();
        for key in &keys[..keys.len() - 1] {
            cur = &mut cur[*key];
        }
        cur[keys[keys.len() - 1]] = v.clone();
    }
    std::fs::write(&p, serde_json::to_vec_pretty(&doc)?)?;
    Ok(())
}

fn start_monitor(bin: &Path, home: &Home, args: &[&str]) -> Res<Daemon> {
    let log = home.root().join("monitor.stderr");
    let child = Command::new(bin.join("heartbeat-monitor"))
        .args(args)
        .env("CORRAL_HOME", home.root())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let d = Daemon(child);
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)?.contains("ready:") {
        if t0.elapsed() > Duration::from_secs(120) {
            return Err("monitor did not become ready".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(d)
}

fn watches(mpid: u32, pid: i32) -> bool {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{mpid}/fdinfo")) else {
        return false;
    };
    let want = format!("Pid:\t{pid}");
    rd.filter_map(|e| e.ok()).any(|e| {
        std::fs::read_to_string(e.path())
            .map(|t| t.lines().any(|l| l == want))
            .unwrap_or(false)
    })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, unit: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "liveness: {name} median {:.1} {unit} p99 {:.1} {unit} max {:.1} {unit} (n={})",
        pct(&v, 0.5),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(0.0),
        v.len()
    );
}

fn sigkill(bin: &Path, tmp: &Path) -> Res<()> {
    let n = env_n("BENCH_KILLS", 50);
    let home = fresh_home(tmp, "sigkill")?;
    set_policy(&home, &[("restart.enabled", false.into())])?;
    let d = start_monitor(bin, &home, &[])?;
    let mut lat = Vec::new();
    for _ in 0..n {
        let out = Command::new(bin.join("spawn-worker"))
            .args(["--type", "build-worker", "--", "sleep", "300"])
            .env("CORRAL_HOME", home.root())
            .output()?;
        let id = String::from_utf8(out.stdout)?.trim().to_string();
        let spec = corral::spec::load(&home, &id)?.spec;
        let pid = spec.process.ok_or("no process")?.pid;
        let t0 = Instant::now();
        while !watches(d.0.id(), pid) {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("monitor never watched {pid}").into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let zombie = home.spec_path(StateDir::Zombie, &id);
        let t = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)?;
        while !zombie.exists() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("{id} never reached zombie/").into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report("sigkill->zombie", "ms", lat);
    Ok(())
}

fn write_spec(home: &Home, s: &WorkerSpec) -> Res<()> {
    // A simulated worker writes its spec the way corral does: staged, then renamed.
    let v = serde_json::to_vec_pretty(s)?;
    let tmp = home.tmp_dir().join(format!("bench-{}.tmp", s.worker_id));
    std::fs::write(&tmp, v)?;
    std::fs::rename(&tmp, home.spec_path(StateDir::Active, &s.worker_id))?;
    Ok(())
}

fn sim_spec(i: usize, now: corral::time::Timestamp) -> WorkerSpec {
    let mut s = WorkerSpec::new(format!("worker-sim-{i:05}"), "build-worker".into(), now);
    s.status = Status::Running;
    s.started_at = Some(now);
    s.heartbeat.last_seen = Some(now);
    s.heartbeat.sequence = 1;
    s
}

fn stale(bin: &Path, tmp: &Path) -> Res<()> {
    let n = env_n("BENCH_STALE", 50) as usize;
    let home = fresh_home(tmp, "stale")?;
    let zombie_s = 2.0;
    set_policy(
        &home,
        &[
            ("zombie_seconds", zombie_s.into()),
            ("warning_seconds", 1000.into()),
            ("critical_seconds", 2000.into()),
            ("restart.enabled", false.into()),
        ],
    )?;
    let _d = start_monitor(bin, &home, &[])?;
    // Beats staggered by 20 ms, then silence; each must turn zombie at last_seen + 2 s.
    let mut last = Vec::new();
    for i in 0..n {
        let now = corral::time::now();
        write_spec(&home, &sim_spec(i, now))?;
        last.push(now);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut late = vec![None; n];
    let t0 = Instant::now();
    while late.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(30) {
        for (i, l) in late.iter_mut().enumerate() {
            if l.is_none()
                && home
                    .spec_path(StateDir::Zombie, &format!("worker-sim-{i:05}"))
                    .exists()
            {
                let due = last[i] + chrono::Duration::milliseconds((zombie_s * 1000.0) as i64);
                *l = Some(
                    (corral::time::now() - due).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                );
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let got: Vec<f64> = late.into_iter().flatten().collect();
    if got.len() < n {
        return Err(format!("only {} of {n} stale workers detected", got.len()).into());
    }
    report("staleness lateness", "ms", got);
    Ok(())
}

fn proc_cpu_seconds(pid: u32) -> Res<f64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest: Vec<&str> = t
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = rest[11].parse::<f64>()? + rest[12].parse::<f64>()?;
    Ok(ticks / corral::process::ticks_per_second() as f64)
}

fn proc_status_kb(pid: u32, key: &str) -> Res<f64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = t
        .lines()
        .find(|l| l.starts_with(key))
        .ok_or("no such key")?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn populate(home: &Home, n: usize) -> Res<Vec<WorkerSpec>> {
    let now = corral::time::now();
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let s = sim_spec(i, now);
        write_spec(home, &s)?;
        v.push(s);
    }
    Ok(v)
}

fn soak(bin: &Path, tmp: &Path) -> Res<()> {
    let n = env_n("BENCH_WORKERS", 10_000) as usize;
    let secs = env_n("BENCH_SOAK_SECONDS", 60);
    let home = fresh_home(tmp, "soak")?;
    let mut policy = vec![("restart.enabled", false.into())];
    if let Ok(extra) = std::env::var("BENCH_SOAK_POLICY") {
        // e.g. BENCH_SOAK_POLICY='{"maintain_interval_seconds": 600}' to isolate costs.
        let v: serde_json::Value = serde_json::from_str(&extra)?;
        for (k, val) in v.as_object().ok_or("BENCH_SOAK_POLICY: an object")? {
            policy.push((Box::leak(k.clone().into_boxed_str()), val.clone()));
        }
    }
    set_policy(&home, &policy)?;
    let mut specs = populate(&home, n)?;
    let d = start_monitor(bin, &home, &[])?;
    let pid = d.0.id();
    let cpu0 = proc_cpu_seconds(pid)?;
    let start = Instant::now();
    let period = Duration::from_secs(30);
    let mut beats = 0u64;
    // Worker i beats at i/n of every 30 s period.
    while start.elapsed() < Duration::from_secs(secs) {
        let el = start.elapsed();
        let periods = el.as_secs_f64() / period.as_secs_f64();
        let due_total = (periods * n as f64) as u64;
        while beats < due_total {
            let i = (beats % n as u64) as usize;
            let s = &mut specs[i];
            s.heartbeat.last_seen = Some(corral::time::now());
            s.heartbeat.sequence += 1;
            s.updated_at = s.heartbeat.last_seen;
            write_spec(&home, s)?;
            beats += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = proc_cpu_seconds(pid)? - cpu0;
    let hwm = proc_status_kb(pid, "VmHWM:")? / 1024.0;
    let rss = proc_status_kb(pid, "VmRSS:")? / 1024.0;
    let stray = std::fs::read_dir(home.specs_dir(StateDir::Zombie))?.count();
    println!(
        "liveness: soak {n} workers beating every 30 s for {wall:.0} s ({beats} beats): daemon CPU {:.2} % of a core, peak RSS {hwm:.1} MiB (now {rss:.1} MiB), {stray} false zombies",
        cpu / wall * 100.0
    );
    Ok(())
}

fn once(bin: &Path, tmp: &Path) -> Res<()> {
    let n = env_n("BENCH_WORKERS", 10_000) as usize;
    let home = fresh_home(tmp, "once")?;
    populate(&home, n)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let st = Command::new(bin.join("heartbeat-monitor"))
            .args(["--once", "-q"])
            .env("CORRAL_HOME", home.root())
            .status()?;
        if !st.success() {
            return Err(format!("--once failed: {st}").into());
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "liveness: --once over {n} specs median {:.0} ms (runs: {})",
        times[1],
        times
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn spawners(bin: &Path, tmp: &Path) -> Res<()> {
    let n = env_n("BENCH_SPAWNS", 10_000);
    let k = env_n("BENCH_SPAWNERS", 4).max(1);
    let life = env_n("BENCH_SPAWN_LIFE", 10).max(2);
    let home = fresh_home(tmp, "spawners")?;
    set_policy(
        &home,
        &[
            ("pending_timeout_seconds", 3600.into()),
            ("warning_seconds", 3000.into()),
            ("critical_seconds", 3500.into()),
            ("zombie_seconds", 3600.into()),
            ("restart.enabled", false.into()),
        ],
    )?;
    let _d = start_monitor(bin, &home, &[])?;
    let t0 = Instant::now();
    let life_s = life.to_string();
    let errors: u64 = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..k)
            .map(|i| {
                let (home, life_s) = (&home, &life_s);
                sc.spawn(move || {
                    let mine = n / k + u64::from(i < n % k);
                    let mut errors = 0u64;
                    for _ in 0..mine {
                        let ok = Command::new(bin.join("spawn-worker"))
                            .args(["--type", "build-worker", "--", "sleep", life_s])
                            .env("CORRAL_HOME", home.root())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .map(|s| s.success())
                            .unwrap_or(false);
                        errors += u64::from(!ok);
                    }
                    errors
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let took = t0.elapsed().as_secs_f64();
    // Every worker's process ends after `life` s; the monitor records those ends. A failure
    // recorded before that could have happened is a false one.
    std::thread::sleep(Duration::from_secs(life + 3));
    let mut false_failures = Vec::new();
    let mut ended = 0u64;
    for dir in [StateDir::Zombie, StateDir::Completed] {
        let (specs, _) = corral::spec::scan(&home, dir)?;
        for s in specs {
            ended += 1;
            let (Some(c), Some(e)) = (s.created_at, s.exit.as_ref()) else {
                continue;
            };
            if corral::time::secs_between(c, e.at) < (life as f64) - 1.0 {
                false_failures.push(e.reason.clone());
            }
        }
    }
    let active = std::fs::read_dir(home.specs_dir(StateDir::Active))?.count();
    let mut reasons: Vec<String> = false_failures.clone();
    reasons.sort();
    reasons.dedup();
    println!(
        "liveness: {n} spawns by {k} concurrent spawners with the daemon running, {took:.1} s ({:.0} spawns/s, {errors} spawn errors): {} false failures{} ({ended} ended, {active} still active)",
        n as f64 / took,
        false_failures.len(),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" [{}]", reasons.join("; "))
        }
    );
    Ok(())
}

fn main() -> Res<()> {
    let mut bin = None;
    let mut tmp = None;
    let mut what = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin" => bin = args.next().map(PathBuf::from),
            "--tmp" => tmp = args.next().map(PathBuf::from),
            other => what.push(other.to_string()),
        }
    }
    let bin = bin.ok_or("--bin DIR (the release binaries) is required")?;
    let tmp = tmp.ok_or("--tmp DIR is required")?;
    std::fs::create_dir_all(&tmp)?;
    if what.is_empty() || what.iter().any(|w| w == "all") {
        what = vec![
            "sigkill".into(),
            "stale".into(),
            "once".into(),
            "soak".into(),
            "spawners".into(),
        ];
    }
    for w in what {
        match w.as_str() {
            "sigkill" => sigkill(&bin, &tmp)?,
            "stale" => stale(&bin, &tmp)?,
            "soak" => soak(&bin, &tmp)?,
            "once" => once(&bin, &tmp)?,
            "spawners" => spawners(&bin, &tmp)?,
            other => return Err(format!("unknown benchmark {other:?}").into()),
        }
    }
    Ok(())
}
