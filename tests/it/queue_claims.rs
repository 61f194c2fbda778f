//! How a claim is made (issue 10's throughput follow-up): the claim record is written into
//! the task's own inode while the task is held in `tasks/.claiming/`, a claimer that dies
//! there strands nothing, and idle claimers take turns so one arrival wakes one of them.

use crate::support::queue::tasks;
use crate::support::{read_json, Scene};
use corral::home::Home;
use corral::policy::HeartbeatPolicy;
use corral::queue::{self, Claimer, EnqueueRequest};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pending_files(s: &Scene) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(tasks(s).join("pending"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    v.sort();
    v
}

fn enqueue(s: &Scene, class: &str) -> String {
    s.ok("task-queue", &["enqueue", "--class", class])
        .trim()
        .to_string()
}

/// Regression: a claim staged a new file and renamed it over `processing/<id>.json`, an inode
/// allocated and one freed per claim (most of a claim's time on ext4). Now the task keeps its
/// inode from pending to processing, and the record is in it, readable by jq as before.
#[test]
fn a_claim_writes_its_record_into_the_tasks_own_inode() {
    let s = Scene::new();
    let id = enqueue(&s, "c");
    let ino = std::fs::metadata(&pending_files(&s)[0]).unwrap().ino();
    let out = s.ok(
        "task-queue",
        &["claim", "--worker", "w1", "--format", "jsonl"],
    );
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["task_id"], id.as_str());
    let p = tasks(&s).join(format!("processing/{id}.json"));
    assert_eq!(
        std::fs::metadata(&p).unwrap().ino(),
        ino,
        "a new inode per claim"
    );
    let t = read_json(&p);
    assert_eq!(t["claimed_by"], "w1", "{t}");
    assert_eq!(
        (t["state"].as_str(), t["attempts"].as_u64()),
        (Some("processing"), Some(1))
    );
    // Nothing stays behind where the task was held.
    assert_eq!(
        std::fs::read_dir(tasks(&s).join(".claiming"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(s.events_of("task_claimed").len(), 1);
}

/// Regression: a claimer killed while it holds a task in `.claiming/` must not strand it
/// (issue 10: "no stranded claims"): `show` still finds it, and the next maintenance pass
/// puts it back in pending with its counts right; one killed after writing its record is
/// moved to processing/, where its dead claimant's task is requeued.
#[test]
fn a_task_a_dead_claimer_left_in_claiming_is_requeued_by_the_next_pass() {
    let s = Scene::new();
    let h = Home::at(&s.home);
    let id = enqueue(&s, "c");
    let held = tasks(&s).join(format!(".claiming/{id}.json"));
    std::fs::create_dir_all(held.parent().unwrap()).unwrap();
    // What a claimer SIGKILLed between its two renames leaves (no lock is held any more).
    std::fs::rename(&pending_files(&s)[0], &held).unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&s.ok("task-queue", &["show", &id])).unwrap();
    assert_eq!(shown["task_id"], id.as_str());
    let p = HeartbeatPolicy::default();
    let m = queue::maintain(&h, &p, corral::time::now()).unwrap();
    assert_eq!((m.requeued, m.unrecorded), (1, 1), "{m:?}");
    assert!(!held.exists(), "still held: {}", s.tree());
    assert!(queue::check(&h, false).unwrap().is_empty(), "{}", s.tree());
    let out = s.ok(
        "task-queue",
        &["claim", "--worker", "w", "--format", "jsonl"],
    );
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (t["task_id"].as_str(), t["attempts"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    // Killed after writing its record: the claim stands, under its claimant's rules.
    let p2 = tasks(&s).join(format!("processing/{id}.json"));
    std::fs::rename(&p2, &held).unwrap();
    let m = queue::maintain(&h, &HeartbeatPolicy::default(), corral::time::now()).unwrap();
    assert!(m.recounted, "{m:?}");
    assert_eq!(read_json(&p2)["claimed_by"], "w");
}

/// A task of an id already in processing/ is put back untouched, not written over.
#[test]
fn a_claim_that_cannot_be_placed_puts_the_task_back_as_it_was() {
    let s = Scene::new();
    let id = enqueue(&s, "c");
    let file = pending_files(&s)[0].clone();
    let before = std::fs::read(&file).unwrap();
    let dup = tasks(&s).join(format!("processing/{id}.json"));
    std::fs::write(&dup, b"{}").unwrap();
    let h = Home::at(&s.home);
    let mut c = Claimer::new(&h, "w", &["c".to_string()], 60.0).unwrap();
    assert!(c.try_claim().unwrap().is_none());
    // The same content (padded with spaces to the length the record had: a one-page
    // rewrite is never cut).
    let after = std::fs::read(&file).unwrap();
    assert_eq!(
        after.trim_ascii_end(),
        before.trim_ascii_end(),
        "{}",
        s.tree()
    );
    assert_eq!(std::fs::read(&dup).unwrap(), b"{}");
}

/// Regression (issue 10: "every new task wakes every claimer"): with 8 idle claimers on one
/// class, each arrival woke all 8 (about 24 inotify wakeups and 5 lost races per arrival,
/// measured). Now only the claimer whose turn it is sleeps on the queue.
#[test]
fn one_arrival_wakes_one_idle_claimer() {
    let s = Scene::new();
    let h = Home::at(&s.home);
    let waiters = 8;
    let arrivals = 20;
    let claimed = Arc::new(AtomicUsize::new(0));
    let (wtx, wrx) = std::sync::mpsc::channel();
    let threads: Vec<_> = (0..waiters)
        .map(|w| {
            let h = h.clone();
            let claimed = claimed.clone();
            let wtx = wtx.clone();
            std::thread::spawn(move || {
                let mut c = Claimer::new(&h, &format!("idle-{w}"), &["t".into()], 600.0).unwrap();
                wtx.send(c.watch().unwrap()).unwrap();
                while c
                    .claim_wait(Some(Instant::now() + Duration::from_secs(120)))
                    .unwrap()
                    .is_some()
                {
                    claimed.fetch_add(1, Ordering::SeqCst);
                }
                c.stats
            })
        })
        .collect();
    let wakers: Vec<_> = (0..waiters).map(|_| wrx.recv().unwrap()).collect();
    for i in 0..arrivals {
        queue::enqueue_with(&h, &EnqueueRequest::new("t"), false).unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while claimed.load(Ordering::SeqCst) <= i {
            assert!(Instant::now() < until, "arrival {i} was never claimed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for w in &wakers {
        w.wake();
    }
    let stats: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let wakeups: u64 = stats.iter().map(|s| s.wakeups).sum();
    let lost: u64 = stats.iter().map(|s| s.lost_races).sum();
    let claims: u64 = stats.iter().map(|s| s.claims).sum();
    assert_eq!(claims, arrivals as u64);
    // One enqueue is up to four events (three new bucket directories and the file), each
    // waking the one claimer on watch; all eight waking is at least eight per arrival.
    assert!(
        wakeups <= 5 * arrivals as u64,
        "{wakeups} wakeups for {arrivals} arrivals: {stats:?}"
    );
    assert!(lost <= arrivals as u64 / 4, "{lost} lost races: {stats:?}");
}
