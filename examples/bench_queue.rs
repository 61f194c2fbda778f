//! In-process benchmark of the task queue: enqueue and claim rates against the raw
//! `rename(2)` rate measured in the same run, claim with 1 and 8 claimer threads, the
//! enqueue → claim latency of a claimer sleeping on inotify, and the cost of one
//! `queue::maintain` pass over a full queue. One `name value unit` line per figure.
//!
//! ```text
//! cargo run --release --example bench_queue -- [--tasks 10000] [--dir /tmp/x]
//! ```

use corral::home::Home;
use corral::policy::HeartbeatPolicy;
use corral::queue::{self, Claimer, EnqueueRequest};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn fresh_home(base: &Path, name: &str) -> Home {
    let root = base.join(name);
    let _ = std::fs::remove_dir_all(&root);
    let home = Home::at(&root);
    home.init(false).expect("init");
    home
}

fn line(name: &str, value: f64, unit: &str) {
    println!("{name} {value:.1} {unit}");
}

/// Renames `n` files from one directory to another, one thread: the floor a claim is
/// measured against.
fn raw_rename_rate(base: &Path, n: usize) -> f64 {
    let a = base.join("raw-a");
    let b = base.join("raw-b");
    for d in [&a, &b] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).expect("mkdir");
    }
    for i in 0..n {
        std::fs::write(a.join(format!("{i:08}.json")), b"{}").expect("write");
    }
    let t = Instant::now();
    for i in 0..n {
        let name = format!("{i:08}.json");
        std::fs::rename(a.join(&name), b.join(&name)).expect("rename");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn fill(home: &Home, n: usize) {
    for i in 0..n {
        let mut r = EnqueueRequest::new(["a", "b"][i % 2]);
        r.payload = serde_json::json!({"n": i});
        queue::enqueue_with(home, &r, false).expect("enqueue");
    }
}

fn claim_all(home: &Home, threads: usize) -> (usize, Duration, u64) {
    let t = Instant::now();
    let (count, lost) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|w| {
                s.spawn(move || {
                    let mut c =
                        Claimer::new(home, &format!("bench-{w}"), &[], 600.0).expect("claimer");
                    c.watch().expect("watch");
                    let mut n = 0usize;
                    while c.try_claim().expect("claim").is_some() {
                        n += 1;
                    }
                    (n, c.stats.lost_races)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("join"))
            .fold((0, 0), |(a, b), (n, l)| (a + n, b + l))
    });
    (count, t.elapsed(), lost)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut tasks = 10_000usize;
    let mut dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tasks" => tasks = args.next().and_then(|v| v.parse().ok()).unwrap_or(tasks),
            "--dir" => dir = args.next().map(PathBuf::from),
            _ => {
                eprintln!("usage: bench_queue [--tasks N] [--dir DIR]");
                std::process::exit(2);
            }
        }
    }
    let tmp = tempfile::tempdir_in(dir.unwrap_or_else(std::env::temp_dir)).expect("tempdir");
    let base = tmp.path();

    let raw = raw_rename_rate(base, tasks);
    line("queue.inproc.raw_rename_per_s", raw, "renames/s");

    let home = fresh_home(base, "h1");
    let t = Instant::now();
    fill(&home, tasks);
    let enq = tasks as f64 / t.elapsed().as_secs_f64();
    line("queue.inproc.enqueue_per_s", enq, "tasks/s");
    line("queue.inproc.enqueue_vs_raw_rename", 100.0 * enq / raw, "%");

    let policy = HeartbeatPolicy::default();
    let now = corral::time::now();
    queue::maintain(&home, &policy, now).expect("maintain");
    let t = Instant::now();
    let passes = 20;
    for _ in 0..passes {
        queue::maintain(&home, &policy, now).expect("maintain");
    }
    line(
        &format!("queue.inproc.maintain_ms_with_{tasks}_pending"),
        t.elapsed().as_secs_f64() * 1000.0 / passes as f64,
        "ms/pass",
    );

    for threads in [1usize, 8] {
        let home = if threads == 1 {
            home.clone()
        } else {
            let h = fresh_home(base, "h8");
            fill(&h, tasks);
            h
        };
        let (n, took, lost) = claim_all(&home, threads);
        assert_eq!(n, tasks, "every task claimed exactly once");
        let rate = n as f64 / took.as_secs_f64();
        line(
            &format!("queue.inproc.claim_per_s_{threads}_claimers"),
            rate,
            "claims/s",
        );
        line(
            &format!("queue.inproc.claim_vs_raw_rename_{threads}_claimers"),
            100.0 * rate / raw,
            "%",
        );
        line(
            &format!("queue.inproc.lost_races_{threads}_claimers"),
            lost as f64,
            "races",
        );
    }

    // enqueue → claim with a claimer asleep on inotify.
    let home = fresh_home(base, "lat");
    let rounds = 200;
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let waiter = {
        let home = home.clone();
        std::thread::spawn(move || {
            let mut c = Claimer::new(&home, "waiter", &["lat".to_string()], 600.0).expect("c");
            c.watch().expect("watch");
            for _ in 0..rounds {
                let t = c
                    .claim_wait(Some(Instant::now() + Duration::from_secs(10)))
                    .expect("wait");
                assert!(t.is_some(), "the wait timed out");
                tx.send(Instant::now()).expect("send");
            }
        })
    };
    let mut lat = Vec::new();
    let mut lat_from_start = Vec::new();
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..rounds {
        let start = Instant::now();
        queue::enqueue_with(&home, &EnqueueRequest::new("lat"), false).expect("enqueue");
        let done = Instant::now();
        let claimed = rx.recv().expect("recv");
        lat.push(claimed.saturating_duration_since(done).as_secs_f64() * 1000.0);
        lat_from_start.push(claimed.saturating_duration_since(start).as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(2));
    }
    waiter.join().expect("join");
    line(
        "queue.inproc.enqueue_return_to_claim_wait_median_ms",
        median(&mut lat),
        "ms",
    );
    line(
        "queue.inproc.enqueue_start_to_claim_wait_median_ms",
        median(&mut lat_from_start),
        "ms",
    );
}
