//! Benchmark helper: the raw `write + fsync + rename + fsync(dir)` rate of a filesystem, the
//! ceiling for any durable one-file-per-record store. `scripts/bench` compares corral with it.
//! Usage: bench_atomic_write DIR COUNT

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let count: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let tmp = dir.join("tmp");
    let out = dir.join("out");
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&out)?;
    let body = vec![b'x'; 1500];
    let start = Instant::now();
    for i in 0..count {
        let t = tmp.join(format!("{i}.tmp"));
        // The mode corral writes with in a private home.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&t)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&t, out.join(format!("{i}.json")))?;
        File::open(&out)?.sync_all()?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{:.1}", count as f64 / secs);
    Ok(())
}
