//! Progress on stderr for long batch work (cleaning up thousands of zombies, a doctor pass
//! over a large home). Drawn only when stderr is a terminal and the batch is large enough to
//! be worth it, so scripts, cron mail and pipes never see carriage returns; redrawn at most
//! ten times a second, and safe to advance from worker threads.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Batches smaller than this finish before a bar would help.
pub const MIN_ITEMS: usize = 200;
const REDRAW: Duration = Duration::from_millis(100);

/// A progress line: `cleanup-zombies  1200/3000 [########------------]  40%`.
pub struct Progress {
    label: String,
    total: usize,
    done: AtomicUsize,
    last: Mutex<Option<Instant>>,
    enabled: bool,
}

impl Progress {
    /// A bar for `total` items, drawn only if stderr is a terminal, `total >= MIN_ITEMS`
    /// and `CORRAL_NO_PROGRESS` is unset.
    pub fn new(label: &str, total: usize) -> Progress {
        let enabled = total >= MIN_ITEMS
            && std::io::stderr().is_terminal()
            && std::env::var_os("CORRAL_NO_PROGRESS").is_none();
        Progress::with(label, total, enabled)
    }

    fn with(label: &str, total: usize, enabled: bool) -> Progress {
        Progress {
            label: label.to_string(),
            total,
            done: AtomicUsize::new(0),
            last: Mutex::new(None),
            enabled,
        }
    }

    /// One more item done.
    pub fn inc(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.enabled {
            return;
        }
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REDRAW) && done < self.total {
            return;
        }
        *last = Some(now);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}", render(&self.label, done, self.total));
        let _ = err.flush();
    }

    /// Clears the line (also done on drop).
    pub fn finish(&self) {
        if self.enabled && self.last.lock().map(|l| l.is_some()).unwrap_or(false) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The text of one progress line.
pub fn render(label: &str, done: usize, total: usize) -> String {
    const WIDTH: usize = 20;
    let total = total.max(1);
    let done = done.min(total);
    let filled = done * WIDTH / total;
    format!(
        "{label} {done:>w$}/{total} [{}{}] {:>3}%",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        done * 100 / total,
        w = total.to_string().len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_bar() {
        assert_eq!(
            render("cleanup", 0, 10),
            "cleanup  0/10 [--------------------]   0%"
        );
        assert_eq!(
            render("cleanup", 5, 10),
            "cleanup  5/10 [##########----------]  50%"
        );
        assert_eq!(
            render("doctor", 300, 300),
            "doctor 300/300 [####################] 100%"
        );
        assert_eq!(render("x", 7, 0), "x 1/1 [####################] 100%");
    }

    #[test]
    fn counts_across_threads_without_drawing_when_disabled() {
        let p = Progress::with("t", 1000, false);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..250).for_each(|_| p.inc()));
            }
        });
        assert_eq!(p.done.load(Ordering::Relaxed), 1000);
        assert!(
            p.last.lock().map(|l| l.is_none()).unwrap_or(false),
            "nothing drawn"
        );
    }
}
