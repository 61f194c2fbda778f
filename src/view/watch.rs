//! `worker-monitor --watch`: a live terminal dashboard, redrawn when inotify reports a change
//! and at least every `--interval`.
//!
//! The dashboard keeps the rows of `active/` and `zombie/` in memory, keyed by path, and on
//! each change re-reads only the files inotify names, so a redraw after an event costs one
//! file read plus the render even with ten thousand workers. A full re-read every interval
//! repairs anything a lost inotify event (queue overflow, a network filesystem) would leave
//! stale. `completed/` is only counted, since finished workers can number far more than live
//! ones. Every input — file changes, keys, signals (SIGINT, SIGTERM, SIGWINCH, taken by a
//! `sigwait` thread so no handler runs in signal context) — arrives on one channel, so the
//! loop has a single place to wait and the terminal guard is always dropped on the way out.

use super::eventlog::{Follower, LightEvent};
use super::summary::{self, QueueProgress};
use super::tasks;
use super::term::{self, Cell, Colour, RawTerminal};
use super::workers::{self, Filter, SortKey, WorkerRow};
use crate::error::{Error, Result};
use crate::home::{Home, StateDir, TaskState};
use crate::time::{self, Timestamp};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How the dashboard is set up.
#[derive(Debug, Clone)]
pub struct Options {
    pub interval: Duration,
    pub filter: Filter,
    pub sort: SortKey,
    pub colour: bool,
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Key(u8),
    Signal(nix::sys::signal::Signal),
}

/// Everything the dashboard shows, kept up to date incrementally.
pub struct Dashboard {
    home: Home,
    rows: HashMap<PathBuf, WorkerRow>,
    completed: u64,
    events: VecDeque<String>,
    follower: Follower,
    queue: QueueProgress,
    current: HashMap<String, (String, Option<Timestamp>)>,
    budget: Option<crate::budget::Budget>,
    /// Shown on top while no monitor watches the home (checked at every full reload).
    banner: Option<String>,
    opts: Options,
}

const EVENTS_KEPT: usize = 50;
const LIVE_DIRS: [StateDir; 2] = [StateDir::Active, StateDir::Zombie];

impl Dashboard {
    /// Loads everything once.
    pub fn new(home: &Home, opts: Options) -> Result<Dashboard> {
        let (follower, last) = Follower::from_end(home.events_path(), EVENTS_KEPT)?;
        let mut d = Dashboard {
            home: home.clone(),
            rows: HashMap::new(),
            completed: 0,
            events: VecDeque::new(),
            follower,
            queue: QueueProgress::default(),
            current: HashMap::new(),
            budget: None,
            banner: None,
            opts,
        };
        for l in last {
            d.push_event(&l);
        }
        d.reload()?;
        Ok(d)
    }

    fn push_event(&mut self, line: &[u8]) {
        if let Some(e) = LightEvent::parse(line) {
            let ts = e.timestamp.get(11..19).unwrap_or(&e.timestamp).to_string();
            let s = term::escape_line(&format!(
                "{ts}  {:<24}  {}  {}",
                e.kind,
                e.worker_id
                    .as_deref()
                    .map(|w| crate::lookup::short_id(w, crate::lookup::MIN_HEX))
                    .unwrap_or_else(|| "-".into()),
                e.message.as_deref().unwrap_or("")
            ))
            .into_owned();
            if self.events.len() == EVENTS_KEPT {
                self.events.pop_front();
            }
            self.events.push_back(s);
        }
    }

    /// Re-reads every live spec, the queue and the budget.
    pub fn reload(&mut self) -> Result<()> {
        let now = time::now();
        let loaded = workers::load(&self.home, &LIVE_DIRS, now)?;
        self.rows = loaded
            .rows
            .into_iter()
            .map(|r| (self.home.spec_path(r.state_dir, &r.worker_id), r))
            .collect();
        self.completed =
            crate::store::list_json(&self.home.specs_dir(StateDir::Completed))?.len() as u64;
        self.refresh_queue()?;
        self.budget = crate::budget::read(&self.home).ok();
        self.banner = crate::status::stale_warning(&self.home);
        Ok(())
    }

    fn refresh_queue(&mut self) -> Result<()> {
        self.queue = summary::queue_progress(&self.home)?;
        self.current = tasks::tasks_in(&self.home, TaskState::Processing)?
            .into_iter()
            .filter_map(|t| t.claimed_by.clone().map(|w| (w, (t.task_id, t.claimed_at))))
            .collect();
        Ok(())
    }

    /// Applies the changes inotify reported for `paths`.
    pub fn apply(&mut self, paths: &[PathBuf]) -> Result<()> {
        let now = time::now();
        let mut queue = false;
        let mut log = false;
        let coord = self.home.coordination();
        let tasks_root = coord.join("tasks");
        let completed_dir = self.home.specs_dir(StateDir::Completed);
        for p in paths {
            let parent = p.parent().unwrap_or(Path::new(""));
            if let Some(dir) = LIVE_DIRS
                .into_iter()
                .find(|d| self.home.specs_dir(*d) == parent)
            {
                if p.extension().is_some_and(|e| e == "json") {
                    match workers::read_row(p, dir, now) {
                        Ok(Some(r)) => {
                            self.rows.insert(p.clone(), r);
                        }
                        Ok(None) => {
                            self.rows.remove(p);
                        }
                        Err(e) => tracing::debug!("skipping {}: {e}", p.display()),
                    }
                }
            } else if parent == completed_dir {
                self.completed = crate::store::list_json(&completed_dir)?.len() as u64;
            } else if p.starts_with(&tasks_root) {
                queue = true;
            } else if p == &self.home.budget_path() {
                self.budget = crate::budget::read(&self.home).ok();
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("dashboard-events.jsonl"))
            {
                log = true;
            }
        }
        if queue {
            self.refresh_queue()?;
        }
        if log {
            self.read_log()?;
        }
        Ok(())
    }

    fn read_log(&mut self) -> Result<()> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        self.follower.poll(&mut |l| {
            lines.push(l.to_vec());
            Ok(())
        })?;
        for l in lines {
            self.push_event(&l);
        }
        Ok(())
    }

    /// The frame for a `width` × `height` screen, one string per line.
    pub fn render(&self, width: usize, height: usize, now: Timestamp) -> Vec<String> {
        let mut lines = Vec::with_capacity(height);
        let c = self.opts.colour;
        let bold = |s: &str| {
            if c {
                Colour::Bold.paint(s)
            } else {
                s.to_string()
            }
        };
        lines.push(bold(&format!(
            "corral worker-monitor  {}  {}   q: quit",
            self.home.root().display(),
            time::format(&now)
        )));
        if let Some(b) = &self.banner {
            lines.push(if c {
                Colour::Yellow.paint(b)
            } else {
                b.clone()
            });
        }
        let mut by_status: BTreeMap<&str, u64> = [
            "pending",
            "running",
            "idle",
            "shutting_down",
            "failed",
            "zombie",
        ]
        .iter()
        .map(|s| (*s, 0))
        .collect();
        let mut by_health: BTreeMap<&str, u64> = BTreeMap::new();
        let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
        for r in self.rows.values() {
            *by_status.entry(r.status.as_str()).or_default() += 1;
            if r.state_dir == StateDir::Active {
                *by_health.entry(r.health.as_str()).or_default() += 1;
                *by_type.entry(r.worker_type.as_str()).or_default() += 1;
            }
        }
        let mut counts: Vec<String> = by_status.iter().map(|(k, v)| format!("{k} {v}")).collect();
        counts.push(format!("completed {}", self.completed));
        // Statuses and types come from specs read for display: escaped, one line each.
        lines.push(term::escape_line(&format!("Workers   {}", counts.join(" | "))).into_owned());
        let health: Vec<String> = ["healthy", "degraded", "unhealthy", "unresponsive"]
            .iter()
            .map(|h| {
                let s = format!("{h} {}", by_health.get(h).copied().unwrap_or(0));
                match (c, term::health_colour(h)) {
                    (true, Some(col)) => col.paint(&s),
                    _ => s,
                }
            })
            .collect();
        lines.push(format!("Health    {}", health.join(" | ")));
        lines.push(match &self.budget {
            Some(b) => {
                let spent = b.used + b.consumed;
                let pct = if b.total == 0 {
                    0.0
                } else {
                    spent as f64 * 100.0 / b.total as f64
                };
                let bar_w = 30usize;
                let filled = ((pct / 100.0) * bar_w as f64)
                    .round()
                    .clamp(0.0, bar_w as f64) as usize;
                let bar = format!("{}{}", "#".repeat(filled), "-".repeat(bar_w - filled));
                let bar = match (c, pct) {
                    (true, p) if p >= 90.0 => Colour::Red.paint(&bar),
                    (true, p) if p >= 75.0 => Colour::Yellow.paint(&bar),
                    (true, _) => Colour::Green.paint(&bar),
                    _ => bar,
                };
                format!(
                    "Budget    [{bar}] {pct:.0}%  used {} + consumed {} of {}, available {}",
                    b.used, b.consumed, b.total, b.available
                )
            }
            None => "Budget    (token-budget.json unreadable)".into(),
        });
        lines.push(format!("Queue     {}", self.queue.line()));
        let types: Vec<String> = by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
        lines.push(
            term::escape_line(&format!(
                "  Workers: {}",
                if types.is_empty() {
                    "none".to_string()
                } else {
                    types.join(", ")
                }
            ))
            .into_owned(),
        );
        lines.push(String::new());

        let events_shown = (height / 4).clamp(3, 12).min(self.events.len().max(1));
        let room = height.saturating_sub(lines.len() + events_shown + 3);
        let mut shown: Vec<&WorkerRow> = self
            .rows
            .values()
            .filter(|r| self.opts.filter.matches(r))
            .collect();
        let total = shown.len();
        shown.sort_unstable_by(|a, b| workers::compare(a, b, self.opts.sort, now));
        let cap = room.saturating_sub(1);
        let fits = if total > cap {
            cap.saturating_sub(1)
        } else {
            cap
        };
        // Short ids of the rows on screen only: a redraw stays cheap with 10k workers.
        let on_screen = &shown[..fits.min(shown.len())];
        let short = crate::lookup::short_ids(
            on_screen
                .iter()
                .map(|r| r.worker_id.as_str())
                .chain(
                    on_screen
                        .iter()
                        .filter_map(|r| self.current.get(&r.worker_id).map(|(t, _)| t.as_str())),
                )
                .chain(on_screen.iter().filter_map(|r| r.task_id.as_deref())),
        );
        let show = |id: &str| short.get(id).cloned().unwrap_or_else(|| id.to_string());
        let cells: Vec<Vec<Cell>> = shown
            .iter()
            .take(fits)
            .map(|r| {
                let (task, since) = match self.current.get(&r.worker_id) {
                    Some((t, at)) => (show(t), *at),
                    None => (
                        r.task_id.as_deref().map(show).unwrap_or_else(|| "-".into()),
                        None,
                    ),
                };
                let elapsed = since
                    .map(|t| super::secs_between(t, now))
                    .or(r.uptime_seconds);
                vec![
                    Cell::from(show(&r.worker_id)),
                    Cell::from(r.worker_type.as_str()),
                    Cell::from(r.status.as_str()),
                    match &r.verdict {
                        Some(_) => workers::health_cell(r),
                        None => Cell {
                            text: r.health_score.map(|s| s.to_string()).unwrap_or_default(),
                            colour: term::health_colour(&r.health),
                        },
                    },
                    Cell::from(task),
                    Cell::from(
                        elapsed
                            .map(super::human_duration)
                            .unwrap_or_else(|| "-".into()),
                    ),
                    Cell::from(
                        r.heartbeat_age_seconds
                            .map(super::human_duration)
                            .unwrap_or_else(|| "never".into()),
                    ),
                    Cell::from(r.message.clone().unwrap_or_default()),
                ]
            })
            .collect();
        let table = term::render_table(
            &[
                "ID", "TYPE", "STATUS", "HEALTH", "TASK", "ELAPSED", "BEAT", "MESSAGE",
            ],
            &cells,
            Some(width),
            &[7, 4, 1, 0],
            c,
        );
        lines.extend(table.lines().map(str::to_string));
        if total > cells.len() {
            lines.push(format!("… and {} more workers", total - cells.len()));
        }
        while lines.len() < height.saturating_sub(events_shown + 1) {
            lines.push(String::new());
        }
        lines.push(bold("Last events"));
        let skip = self.events.len().saturating_sub(events_shown);
        lines.extend(self.events.iter().skip(skip).cloned());
        lines.truncate(height);
        lines
            .into_iter()
            .map(|l| {
                if l.contains('\x1b') {
                    l
                } else {
                    term::truncate(&l, width)
                }
            })
            .collect()
    }
}

fn draw(out: &mut impl Write, frame: &[String]) -> std::io::Result<()> {
    let mut s = String::with_capacity(frame.len() * 120);
    s.push_str("\x1b[H");
    for l in frame {
        s.push_str(l);
        s.push_str("\x1b[K\r\n");
    }
    s.push_str("\x1b[J");
    out.write_all(s.as_bytes())?;
    out.flush()
}

fn watch_paths(home: &Home) -> Vec<(PathBuf, notify::RecursiveMode)> {
    use notify::RecursiveMode::{NonRecursive, Recursive};
    let mut v = vec![(home.coordination(), NonRecursive)];
    for d in [StateDir::Active, StateDir::Zombie, StateDir::Completed] {
        v.push((home.specs_dir(d), NonRecursive));
    }
    v.push((home.tasks_dir(TaskState::Pending), Recursive));
    for s in [
        TaskState::Processing,
        TaskState::Completed,
        TaskState::Failed,
    ] {
        v.push((home.tasks_dir(s), NonRecursive));
    }
    v
}

/// Passes keys from stdin (a terminal in raw mode, whose reads wait for a key) until its
/// input ends. The end of input (a hangup, a closed pty) or a read error stops the keys
/// only: the dashboard keeps redrawing on changes and every interval, and SIGINT, SIGTERM and
/// SIGHUP still end it.
fn read_keys(tx: &mpsc::Sender<Msg>) {
    let mut stdin = std::io::stdin();
    let mut b = [0u8; 1];
    loop {
        match stdin.read(&mut b) {
            Ok(1) => {
                if tx.send(Msg::Key(b[0])).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(_) => {
                tracing::debug!("stdin ended: no more keys, the dashboard goes on");
                return;
            }
            Err(e) => {
                tracing::debug!("stdin: {e}: no more keys, the dashboard goes on");
                return;
            }
        }
    }
}

/// Runs the dashboard until q, Ctrl-C, or SIGTERM.
pub fn run(home: &Home, opts: Options) -> Result<()> {
    use nix::sys::signal::Signal;
    use notify::Watcher;
    let interval = opts.interval.max(Duration::from_millis(100));
    // Blocked before any thread starts, so only the sigwait thread ever receives them.
    let set = crate::process::signals::block(&[
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGWINCH,
    ])?;
    let mut dash = Dashboard::new(home, opts)?;
    let (tx, rx) = mpsc::channel::<Msg>();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            while let Ok(sig) = set.wait() {
                if tx.send(Msg::Signal(sig)).is_err() {
                    break;
                }
            }
        });
    }
    let fs_tx = tx.clone();
    // notify's inotify mask includes IN_OPEN, so the dashboard's own reads would come back
    // as Access events and redraw forever: only changes are passed on.
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if !matches!(&ev, Ok(e) if e.kind.is_access()) {
            let _ = fs_tx.send(Msg::Fs(ev));
        }
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("no inotify ({e}): redrawing every {interval:?} only");
            None
        }
    };
    if let Some(w) = watcher.as_mut() {
        for (p, mode) in watch_paths(home) {
            if let Err(e) = w.watch(&p, mode) {
                tracing::warn!("cannot watch {}: {e}", p.display());
            }
        }
    }
    let guard = RawTerminal::enter().map_err(|e| Error::io("cannot set up the terminal", e))?;
    if term::is_tty(libc::STDIN_FILENO) {
        let tx = tx.clone();
        std::thread::spawn(move || read_keys(&tx));
    }
    drop(tx);
    let mut stdout = std::io::stdout();
    let mut next_full = Instant::now() + interval;
    let frame = |d: &Dashboard| {
        let (w, h) = term::size().unwrap_or((120, 40));
        d.render(w, h, time::now())
    };
    draw(&mut stdout, &frame(&dash)).map_err(|e| Error::io("cannot draw", e))?;
    loop {
        let wait = next_full.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let started = Instant::now();
        let mut paths: Vec<PathBuf> = Vec::new();
        let mut quit = false;
        let mut batch: Vec<Msg> = first.into_iter().collect();
        batch.extend(rx.try_iter());
        let changes = batch.len();
        for m in batch {
            match m {
                Msg::Fs(Ok(ev)) => paths.extend(ev.paths),
                Msg::Fs(Err(e)) => tracing::debug!("inotify: {e}"),
                // q and Ctrl-C (README). Ctrl-D is the end of input on a terminal, not a
                // request to leave: the dashboard goes on redrawing.
                Msg::Key(b'q' | b'Q' | 3) => quit = true,
                Msg::Key(_) => {}
                Msg::Signal(Signal::SIGWINCH) => {}
                Msg::Signal(_) => quit = true,
            }
        }
        if quit {
            break;
        }
        if Instant::now() >= next_full {
            dash.reload()?;
            next_full = Instant::now() + interval;
        } else {
            paths.sort();
            paths.dedup();
            dash.apply(&paths)?;
        }
        draw(&mut stdout, &frame(&dash)).map_err(|e| Error::io("cannot draw", e))?;
        tracing::debug!(
            "redraw {:.2} ms after {changes} change(s), {} workers",
            started.elapsed().as_secs_f64() * 1000.0,
            dash.rows.len()
        );
    }
    drop(guard);
    drop(watcher);
    Ok(())
}
