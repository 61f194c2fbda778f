//! Cost of the monitor's upkeep passes (run by `scripts/bench.d/22-upkeep.sh`), at two fleet
//! sizes, with the cadence the pacing gives each (`liveness::daemon::paced`):
//!
//! - `pool`: one `pool::reconcile` over N pool workers in `active/` with nothing missing (a
//!   scan of `active/`; what the monitor pays every second while a type has `replicas`);
//! - `rotate`: one `logrotate::rotate_all` over N worker logs below the limit (a `stat` each);
//! - `purge`: one `retention::purge_archived` over N archived specs, none old enough.
//!
//! Usage: `bench_upkeep --tmp DIR`; sizes from env `BENCH_UPKEEP_SIZES` (`1000,10000`).
//! Prints one `upkeep: …` line per pass and size, then the growth factor per pass.

use corral::home::{Home, StateDir};
use corral::liveness::daemon::{paced, paced_by, PACING_SOON};
use corral::spec::{Status, WorkerSpec};
use std::path::Path;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Runs of each pass; the median is reported.
const RUNS: usize = 7;

fn fresh_home(tmp: &Path, name: &str) -> Res<Home> {
    let root = tmp.join(name);
    let _ = std::fs::remove_dir_all(&root);
    let home = Home::at(&root);
    home.init(false)?;
    Ok(home)
}

fn write_spec(home: &Home, dir: StateDir, s: &WorkerSpec) -> Res<()> {
    let tmp = home.tmp_dir().join(format!("bench-{}.tmp", s.worker_id));
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
    std::fs::rename(&tmp, home.spec_path(dir, &s.worker_id))?;
    Ok(())
}

/// N pool workers of `build-worker` (replicas N), each with a small log.
fn populate(home: &Home, n: usize) -> Res<()> {
    let now = corral::time::now();
    let types = home.worker_types_path();
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&types)?)?;
    doc["types"]["build-worker"]["replicas"] = n.into();
    std::fs::write(&types, serde_json::to_vec_pretty(&doc)?)?;
    for i in 0..n {
        let id = format!("worker-build-{i:05}");
        let mut s = WorkerSpec::new(id.clone(), "build-worker".into(), now);
        s.status = Status::Running;
        s.started_at = Some(now);
        s.session_id = Some(corral::pool::session_for("build-worker"));
        write_spec(home, StateDir::Active, &s)?;
        let mut a = WorkerSpec::new(format!("worker-done-{i:05}"), "build-worker".into(), now);
        a.status = Status::Completed;
        a.completed_at = Some(now);
        write_spec(home, StateDir::Archived, &a)?;
        std::fs::create_dir_all(home.worker_log_dir(&id))?;
        std::fs::write(home.worker_log(&id), "a line of output\n")?;
    }
    Ok(())
}

fn median_ms(mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    let mut t = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[RUNS / 2])
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let mut tmp = None;
    while let Some(a) = args.next() {
        if a == "--tmp" {
            tmp = args.next();
        }
    }
    let tmp = std::path::PathBuf::from(tmp.ok_or("usage: bench_upkeep --tmp DIR")?);
    std::fs::create_dir_all(&tmp)?;
    let sizes: Vec<usize> = std::env::var("BENCH_UPKEEP_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut rows: Vec<(usize, [f64; 3])> = Vec::new();
    for &n in &sizes {
        let home = fresh_home(&tmp, &format!("upkeep-{n}"))?;
        populate(&home, n)?;
        let pool = median_ms(|| {
            let r = corral::pool::reconcile(&home, corral::time::now())?;
            if r.iter().any(|p| !p.spawned.is_empty()) {
                return Err("the pool spawned: the bench measures a full pool".into());
            }
            Ok(())
        })?;
        let policy = corral::logrotate::LogPolicy {
            max_bytes: Some(corral::logrotate::DEFAULT_MAX_BYTES),
            keep: corral::logrotate::DEFAULT_KEEP,
        };
        let mut deferred = std::collections::HashSet::new();
        let rotate = median_ms(|| {
            let r = corral::logrotate::rotate_all(&home, &policy, &mut deferred)?;
            if r.logs_seen != n as u64 {
                return Err(format!("saw {} logs of {n}", r.logs_seen).into());
            }
            Ok(())
        })?;
        let purge = median_ms(|| {
            let r = corral::retention::purge_archived(&home, 86_400.0, corral::time::now(), false)?;
            if !r.purged.is_empty() {
                return Err("purged a recent worker".into());
            }
            Ok(())
        })?;
        let ms = |x: f64| x.round() as i64;
        println!(
            "upkeep: {n} workers: pool pass {pool:.1} ms (next in {:.1} s at 1 % of a core), rotation scan {rotate:.1} ms (next in {:.1} s at 0.25 %), purge scan {purge:.1} ms (next in {:.1} s for a 30-day age)",
            paced_by(1.0, ms(pool), PACING_SOON) as f64 / 1000.0,
            paced(1.0, ms(rotate)) as f64 / 1000.0,
            paced(corral::liveness::upkeep::purge_interval(30.0 * 86_400.0), ms(purge)) as f64
                / 1000.0,
        );
        rows.push((n, [pool, rotate, purge]));
        let _ = std::fs::remove_dir_all(tmp.join(format!("upkeep-{n}")));
    }
    if let (Some(a), Some(b)) = (rows.first(), rows.last()) {
        if b.0 > a.0 {
            let g = |i: usize| b.1[i] / a.1[i].max(0.001);
            println!(
                "upkeep: growth {}→{} workers (×{:.0}): pool ×{:.1}, rotation scan ×{:.1}, purge scan ×{:.1}",
                a.0,
                b.0,
                b.0 as f64 / a.0 as f64,
                g(0),
                g(1),
                g(2)
            );
        }
    }
    Ok(())
}
