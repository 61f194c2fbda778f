//! In-process benchmark of the task queue, measured side by side in one run: the raw
//! `rename(2)` rate of the same filesystem; bulk enqueue next to the floor of one new file
//! per task (create, write, rename, measured just before and just after it) and the share
//! of its time spent in syncs; single enqueues; wakeups, lost races and turns per arrival
//! with 8 idle claimers and a trickle of arrivals, without and with turns; claims per
//! second with 1 and 8 watched claimers as a share of the raw rename rate, with the lost
//! races per claim, and next to the rate of the system calls a claim makes done alone (the
//! ceiling of this design); the enqueue → claim latency of a claimer asleep on inotify; the cost
//! of one maintenance pass; and — with `--sizes` — the cost of one-shot claims, enqueues
//! and `stats` at several queue lengths, with growth factors against the smallest (the
//! scale rule). One `name value unit` line per figure. `--only bulk|trickle|claimN` runs
//! one part.
//!
//! ```text
//! cargo run --release --example bench_queue -- [--tasks 10000] [--sizes 1000,100000] [--dir /tmp/x] [--only PART]
//! ```

use corral::home::Home;
use corral::policy::HeartbeatPolicy;
use corral::queue::{self, BulkOptions, Claimer, EnqueueRequest};
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

fn line3(name: &str, value: f64, unit: &str) {
    println!("{name} {value:.3} {unit}");
}

/// Renames `n` files from one directory to another, one thread: the floor a claim is
/// measured against.
fn raw_rename_rate(base: &Path, n: usize) -> f64 {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let r = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let a = base.join(format!("raw-a{r}"));
    let b = base.join(format!("raw-b{r}"));
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

/// Creates, writes and renames `n` small files, one thread: the floor of anything that
/// writes a new file atomically (an enqueue, a claim's record), which is slower than a bare
/// rename on a filesystem whose inode allocator is busy.
fn raw_create_rename_rate(base: &Path, n: usize) -> f64 {
    use std::io::Write;
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let r = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let a = base.join(format!("rawc-a{r}"));
    let b = base.join(format!("rawc-b{r}"));
    for d in [&a, &b] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let body = vec![b' '; 700];
    let t = Instant::now();
    for i in 0..n {
        let name = format!("{i:08}.json");
        let mut f = std::fs::File::create_new(a.join(&name)).expect("create");
        f.write_all(&body).expect("write");
        drop(f);
        std::fs::rename(a.join(&name), b.join(&name)).expect("rename");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// The system calls one claim makes, and nothing else, `n` times in one thread: the
/// stripe lock; the rename out of the pending bucket into the claim's private directory;
/// open, `fstat`, read, `pwrite` and close of the task; the rename into `processing/`; the
/// count update (lock, `pread`, `pwrite`, unlock); and the event append (lock, the two
/// `stat`s that notice a new lock file or a rotated log, one `write`, unlock). No parsing,
/// no schema check, no index: the ceiling a claim of this design can approach, measured on
/// the same filesystem as the claims.
fn claim_syscalls_rate(base: &Path, n: usize, task: &[u8]) -> f64 {
    use std::fs::{File, OpenOptions};
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    let run = base.join("claim-syscalls");
    let _ = std::fs::remove_dir_all(&run);
    let (pending, hold, processing) = (run.join("p"), run.join("c"), run.join("q"));
    for d in [&pending, &hold, &processing] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    for i in 0..n {
        std::fs::write(pending.join(format!("{i:08}.json")), task).expect("write");
    }
    let open_rw = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .expect("open")
    };
    let stripe = open_rw(&run.join("stripe.lock"));
    let counts = open_rw(&run.join("counts"));
    counts.write_all_at(&[b' '; 217], 0).expect("counts");
    let (ev_lock_path, ev_path) = (run.join("events.lock"), run.join("events.jsonl"));
    let ev_lock: File = open_rw(&ev_lock_path);
    let mut ev = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&ev_path)
        .expect("events");
    let line = vec![b'x'; 330];
    let t = Instant::now();
    for i in 0..n {
        let name = format!("{i:08}.json");
        let (from, held, to) = (
            pending.join(&name),
            hold.join(&name),
            processing.join(&name),
        );
        stripe.lock().expect("lock");
        std::fs::rename(&from, &held).expect("rename");
        let mut f = open_rw(&held);
        let len = f.metadata().expect("fstat").len() as usize;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).expect("read");
        f.write_all_at(&buf, 0).expect("pwrite");
        drop(f);
        std::fs::rename(&held, &to).expect("rename");
        stripe.unlock().expect("unlock");
        counts.lock().expect("lock");
        let mut c = [0u8; 512];
        let got = counts.read_at(&mut c, 0).expect("pread");
        counts.write_all_at(&c[..got], 0).expect("pwrite");
        counts.unlock().expect("unlock");
        ev_lock.lock().expect("lock");
        std::fs::symlink_metadata(&ev_lock_path).expect("stat");
        std::fs::symlink_metadata(&ev_path).expect("stat");
        ev.write_all(&line).expect("append");
        ev_lock.unlock().expect("unlock");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// The bytes of one task of the benchmark's kind after its claim.
fn claimed_sample(base: &Path) -> Vec<u8> {
    let home = fresh_home(base, "sample");
    fill(&home, "a", 1);
    let mut c = Claimer::new(&home, "bench-0", &[], 600.0).expect("claimer");
    let task = c.try_claim().expect("claim").expect("a task");
    let path = home
        .tasks_dir(corral::home::TaskState::Processing)
        .join(format!("{}.json", task.task_id));
    std::fs::read(path).expect("read the claimed task")
}

/// Bulk-loads `n` tasks into `class`; returns tasks/s.
fn fill(home: &Home, class: &str, n: usize) -> f64 {
    let mut input = String::with_capacity(n * 12);
    for i in 0..n {
        input.push_str(&format!("{{\"n\": {i}}}\n"));
    }
    let opts = BulkOptions {
        class: class.to_string(),
        priority: corral::spec::Priority::Medium,
        max_attempts: None,
        not_before: None,
        timeout_seconds: None,
    };
    let t = Instant::now();
    queue::enqueue_bulk(home, input.as_bytes(), &opts, |_| Ok(())).expect("bulk");
    n as f64 / t.elapsed().as_secs_f64()
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

/// `waiters` idle claimers (threads) on one class, and `arrivals` tasks enqueued one at a
/// time, each once the previous one was claimed: returns (inotify wakeups, lost races,
/// turns taken), all claimers together.
fn trickle(home: &Home, waiters: usize, arrivals: usize, turns: bool) -> (u64, u64, u64) {
    let claimed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (wtx, wrx) = std::sync::mpsc::channel();
    let hs: Vec<_> = (0..waiters)
        .map(|w| {
            let home = home.clone();
            let claimed = claimed.clone();
            let wtx = wtx.clone();
            std::thread::spawn(move || {
                let mut c = Claimer::new(&home, &format!("idle-{w}"), &["t".to_string()], 600.0)
                    .expect("c");
                c.take_turns(turns);
                wtx.send(c.watch().expect("watch")).expect("send");
                while c
                    .claim_wait(Some(Instant::now() + Duration::from_secs(30)))
                    .expect("wait")
                    .is_some()
                {
                    claimed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                c.stats
            })
        })
        .collect();
    let wakers: Vec<_> = (0..waiters).map(|_| wrx.recv().expect("waker")).collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..arrivals {
        queue::enqueue_with(home, &EnqueueRequest::new("t"), false).expect("enqueue");
        let until = Instant::now() + Duration::from_secs(10);
        while claimed.load(std::sync::atomic::Ordering::SeqCst) <= i && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    for w in &wakers {
        w.wake();
    }
    let mut tot = (0, 0, 0);
    for h in hs {
        let s = h.join().expect("join");
        tot.0 += s.wakeups;
        tot.1 += s.lost_races;
        tot.2 += s.turns;
    }
    tot
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median milliseconds of `f` over `n` runs.
fn time_ms(n: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    median(&mut v)
}

/// One-shot claim, single enqueue and stats at several queue lengths (in-process, so the
/// figures are the queue's own cost, without process start).
fn sizes(base: &Path, sizes: &[usize]) {
    let policy = HeartbeatPolicy::default();
    let mut first: Option<(f64, f64, f64)> = None;
    for &n in sizes {
        let home = fresh_home(base, &format!("size-{n}"));
        let rate = fill(&home, "s", n);
        line(
            &format!("queue.inproc.size{n}.bulk_enqueue_per_s"),
            rate,
            "tasks/s",
        );
        let names0 = queue::layout::names_read();
        let claim = time_ms(30, || {
            let mut c = Claimer::new(&home, "one-shot", &["s".to_string()], 600.0).expect("c");
            c.try_claim().expect("claim").expect("a task");
        });
        let names = (queue::layout::names_read() - names0) as f64 / 30.0;
        let enq = time_ms(30, || {
            queue::enqueue_with(&home, &EnqueueRequest::new("s"), false).expect("enqueue");
        });
        let stats = time_ms(10, || {
            queue::stats(&home, &policy, corral::time::now(), false).expect("stats");
        });
        line3(&format!("queue.inproc.size{n}.claim_ms"), claim, "ms");
        line(
            &format!("queue.inproc.size{n}.claim_names_read"),
            names,
            "names",
        );
        line3(&format!("queue.inproc.size{n}.enqueue_ms"), enq, "ms");
        line3(&format!("queue.inproc.size{n}.stats_ms"), stats, "ms");
        match first {
            None => first = Some((claim, enq, stats)),
            Some((c0, e0, s0)) => {
                line(
                    &format!("queue.inproc.size{n}.claim_growth"),
                    claim / c0,
                    "x",
                );
                line(
                    &format!("queue.inproc.size{n}.enqueue_growth"),
                    enq / e0,
                    "x",
                );
                line(
                    &format!("queue.inproc.size{n}.stats_growth"),
                    stats / s0,
                    "x",
                );
            }
        }
        let _ = std::fs::remove_dir_all(home.root());
    }
}

fn main() {
    let mut tasks = 10_000usize;
    let mut dir: Option<PathBuf> = None;
    let mut size_list: Vec<usize> = Vec::new();
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tasks" => tasks = args.next().and_then(|v| v.parse().ok()).unwrap_or(tasks),
            "--dir" => dir = args.next().map(PathBuf::from),
            "--only" => only = args.next(),
            "--sizes" => {
                size_list = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|s| s.trim().parse().ok())
                    .collect()
            }
            _ => {
                eprintln!("usage: bench_queue [--tasks N] [--sizes N,N,…] [--dir DIR]");
                std::process::exit(2);
            }
        }
    }
    let tmp = tempfile::tempdir_in(dir.unwrap_or_else(std::env::temp_dir)).expect("tempdir");
    let base = tmp.path();
    if only.as_deref() == Some("bulk") {
        let home = fresh_home(base, "b");
        let c0 = queue::costs();
        let rate = fill(&home, "a", tasks);
        let c1 = queue::costs();
        println!(
            "bulk {rate:.0} tasks/s, {} syncs, {:.0} ms in syncs",
            c1.fsyncs - c0.fsyncs,
            (c1.fsync_ns - c0.fsync_ns) as f64 / 1e6
        );
        return;
    }
    if only.as_deref() == Some("trickle") {
        for turns in [false, true] {
            let home = fresh_home(base, if turns { "t1" } else { "t0" });
            let (w, l, t) = trickle(&home, 8, 100, turns);
            println!("turns={turns}: wakeups {w} lost {l} turns {t} per 100 arrivals");
        }
        return;
    }
    if let Some(o) = only.as_deref() {
        let threads: usize = o.trim_start_matches("claim").parse().unwrap_or(1);
        let home = fresh_home(base, "p");
        fill(&home, "a", tasks);
        let (n, took, lost) = claim_all(&home, threads);
        println!(
            "{n} claims in {took:?}: {:.0}/s, lost {lost}",
            n as f64 / took.as_secs_f64()
        );
        return;
    }

    let raw = raw_rename_rate(base, tasks);
    line("queue.inproc.raw_rename_per_s", raw, "renames/s");

    // Bulk enqueue next to the floor of one new file per task, measured just before and
    // just after it (the cost of an inode varies with what the machine deletes meanwhile).
    let home = fresh_home(base, "h1");
    // In the home itself: the inode allocator's cost depends on where a file is made.
    let floor0 = raw_create_rename_rate(&home.coordination().join(".tmp"), tasks);
    let c0 = queue::costs();
    let t = Instant::now();
    let bulk = fill(&home, "a", tasks);
    let bulk_secs = t.elapsed().as_secs_f64();
    let sync_secs = (queue::costs().fsync_ns - c0.fsync_ns) as f64 / 1e9;
    let floor1 = raw_create_rename_rate(&home.coordination().join(".tmp"), tasks);
    let floor = (floor0 + floor1) / 2.0;
    line("queue.inproc.bulk_enqueue_per_s", bulk, "tasks/s");
    line(
        "queue.inproc.raw_create_write_rename_per_s",
        floor,
        "files/s",
    );
    line(
        "queue.inproc.raw_create_write_rename_per_s_before",
        floor0,
        "files/s",
    );
    line(
        "queue.inproc.raw_create_write_rename_per_s_after",
        floor1,
        "files/s",
    );
    line(
        "queue.inproc.bulk_enqueue_vs_raw_create",
        100.0 * bulk / floor,
        "%",
    );
    line(
        "queue.inproc.bulk_enqueue_sync_share",
        100.0 * sync_secs / bulk_secs,
        "%",
    );
    let single = fresh_home(base, "single");
    let k = tasks.min(300);
    let t = Instant::now();
    for _ in 0..k {
        queue::enqueue_with(&single, &EnqueueRequest::new("a"), false).expect("enqueue");
    }
    line(
        "queue.inproc.enqueue_per_s",
        k as f64 / t.elapsed().as_secs_f64(),
        "tasks/s",
    );

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

    // Idle claimers and a trickle of arrivals: before turns (every idle claimer sleeps on
    // the queue) and after.
    for turns in [false, true] {
        let h = fresh_home(base, if turns { "trickle1" } else { "trickle0" });
        let arrivals = 100;
        let (w, l, t) = trickle(&h, 8, arrivals, turns);
        let tag = if turns { "turns" } else { "no_turns" };
        line3(
            &format!("queue.inproc.idle8.{tag}.wakeups_per_arrival"),
            w as f64 / arrivals as f64,
            "wakeups",
        );
        line3(
            &format!("queue.inproc.idle8.{tag}.lost_races_per_arrival"),
            l as f64 / arrivals as f64,
            "races",
        );
        line3(
            &format!("queue.inproc.idle8.{tag}.turns_per_arrival"),
            t as f64 / arrivals as f64,
            "turns",
        );
    }

    let raw2 = raw_rename_rate(base, tasks);
    let raw = (raw + raw2) / 2.0;
    line("queue.inproc.raw_rename_per_s_mean", raw, "renames/s");
    // A claimed task as a claim rewrites it (the same size as the benchmark's tasks).
    let sample = claimed_sample(base);
    let floor = claim_syscalls_rate(base, tasks, &sample);
    line("queue.inproc.claim_syscalls_per_s", floor, "claims/s");
    line(
        "queue.inproc.claim_syscalls_vs_raw_rename",
        100.0 * floor / raw,
        "%",
    );
    for threads in [1usize, 8] {
        let home = if threads == 1 {
            home.clone()
        } else {
            let h = fresh_home(base, "h8");
            fill(&h, "a", tasks);
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
            &format!("queue.inproc.claim_vs_claim_syscalls_{threads}_claimers"),
            100.0 * rate / floor,
            "%",
        );
        line(
            &format!("queue.inproc.lost_races_{threads}_claimers"),
            lost as f64,
            "races",
        );
        line3(
            &format!("queue.inproc.lost_races_per_claim_{threads}_claimers"),
            lost as f64 / n.max(1) as f64,
            "races/claim",
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

    if !size_list.is_empty() {
        sizes(base, &size_list);
    }
}
