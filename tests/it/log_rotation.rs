//! worker.log rotated by size by the monitor while a real worker keeps writing to it: no
//! line is lost or doubled across `worker.log*`, `worker-monitor logs` reads the pieces as
//! one stream, and a `--follow` started during the rotations prints every line exactly once.
//! Regression: worker.log grew forever (nothing rotated it), and a rename-based rotation
//! would have left the worker writing into the renamed file.

use crate::support::procs::*;
use crate::support::{run_with_timeout, stdout, wait_until, Scene};
use serde_json::json;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const LINES: usize = 20_000;

/// Every piece of the log, oldest first, as one byte stream. Read under the shared lock
/// every reader takes: a rotation renumbers the pieces, so a listing taken without it can
/// name a file that is gone a moment later.
fn stream(dir: &Path) -> Vec<u8> {
    let _lock = corral::logrotate::read_lock(dir).expect("log directory lock");
    let mut pieces: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("worker.log.")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    pieces.sort_by_key(|p| std::cmp::Reverse(p.0));
    let mut out = Vec::new();
    for (_, p) in pieces {
        out.extend(std::fs::read(p).unwrap());
    }
    out.extend(std::fs::read(dir.join("worker.log")).unwrap_or_default());
    out
}

fn pieces(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        n.strip_prefix("worker.log.")
                            .is_some_and(|x| x.parse::<u32>().is_ok())
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

/// Checks that `text` is lines `0..n` in order, each once, then `END`, with `n >= LINES`.
fn every_line_once(text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    let mut want = 0;
    let mut ended = false;
    for l in text.lines() {
        assert!(!ended, "a line after END: {l:?}");
        if l == "END" {
            ended = true;
            continue;
        }
        let n: usize = l
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a worker line: {l:?}"));
        assert_eq!(n, want, "line {want} expected, got {l:?}");
        want += 1;
    }
    assert!(ended, "no END after line {want}");
    assert!(want >= LINES, "END after only {want} lines");
}

#[test]
fn a_running_workers_log_is_rotated_without_losing_or_doubling_a_line() {
    let s = Scene::new();
    let r = Reaper::default();
    s.set_policy("max_log_bytes", json!(65536));
    s.set_policy("keep_log_files", json!(1000));
    s.set_policy("maintain_interval_seconds", json!(0.2));
    s.set_policy("restart.enabled", json!(false));
    let m = Monitor::start(&s, &[]);
    // ~100-byte lines, at least 2 MB, with pauses, until the test has seen enough rotations
    // happen while the worker writes (a loaded machine paces the monitor's passes further
    // apart, so the writer waits for them rather than the test hoping for them).
    let stop = s.dir.path().join("stop-writing");
    let script = format!(
        "i=0; while [ $i -lt {LINES} ] || [ ! -e '{stop}' ]; do echo \"line $i of a worker writing to its log without a pause xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"; i=$((i+1)); if [ $((i % 200)) -eq 0 ]; then sleep 0.1; fi; done; echo END; sleep 2",
        stop = stop.display()
    );
    let id = stdout(&s.code(
        "spawn-worker",
        &[
            "--type",
            "build-worker",
            "--tokens",
            "0",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ],
        0,
    ));
    r.group(worker_pid(&s, &id));
    let dir = s.home.join(format!("agents/logs/workers/{id}"));
    // A follower started while the worker writes (after the first rotations).
    assert!(
        wait_until(Duration::from_secs(60), || pieces(&dir) >= 2),
        "{}",
        m.stderr()
    );
    let follower = s
        .cmd("worker-monitor")
        .args(["logs", &id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker-monitor logs --follow");
    assert!(
        wait_until(Duration::from_secs(180), || pieces(&dir) >= 5),
        "{}",
        m.stderr()
    );
    std::fs::write(&stop, b"").unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || {
            stream(&dir).ends_with(b"END\n")
        }),
        "{}",
        m.stderr()
    );
    // The follower ends by itself once the worker has left active/.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(follower.wait_with_output());
    });
    let followed = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the follower did not end")
        .expect("follower output");
    assert!(
        followed.status.success(),
        "{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    let rotated = pieces(&dir);
    assert!(
        rotated >= 4,
        "only {rotated} rotations: the test proves nothing\n{}",
        m.stderr()
    );
    let all = stream(&dir);
    every_line_once(&all);
    assert!(
        followed.stdout == all,
        "the follower printed every line once"
    );
    let printed = run_with_timeout(
        s.cmd("worker-monitor").args(["logs", &id]),
        Duration::from_secs(60),
    );
    assert!(printed.stdout == all, "logs reads the pieces as one stream");
    drop(m);
}
