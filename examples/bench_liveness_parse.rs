//! Micro-benchmark of the monitor's per-beat read path (stat, guarded read, JSON parse,
//! schema validation, typed load), to see where a beat's cost goes.
//! Usage: `bench_liveness_parse SPEC.json [N]`.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = std::path::PathBuf::from(args.next().ok_or("SPEC.json")?);
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let time = |name: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        println!(
            "{name}: {:.1} µs",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        );
    };
    time("stat", &mut || {
        let _ = std::fs::symlink_metadata(&path);
    });
    time("read_guarded", &mut || {
        let _ = corral::store::read_guarded(&path);
    });
    let bytes = corral::store::read_guarded(&path).map_err(|_| "read")?;
    time("parse Value", &mut || {
        let _: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    });
    let v: serde_json::Value = serde_json::from_slice(&bytes)?;
    time("schema validate", &mut || {
        let _ = corral::schema::validate(corral::schema::Kind::WorkerSpec, &v);
    });
    time("typed from Value", &mut || {
        let _: Option<corral::WorkerSpec> = serde_json::from_value(v.clone()).ok();
    });
    time("read_for_scan (all)", &mut || {
        let _ = corral::spec::read_for_scan(&path);
    });
    Ok(())
}
