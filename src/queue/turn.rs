//! Whose turn it is to sleep on the queue: one idle claimer per set of classes.
//!
//! inotify tells every watcher of a directory about every arrival, so N idle claimers of one
//! class all woke for each new task and raced for it; N-1 lost. Instead, an idle claimer
//! first takes its class set's *turn*, an `flock` on `.locks/turn-<hash>.lock`, and only the
//! holder sleeps on inotify; the others sleep in `flock`, which the kernel hands to one of
//! them when the holder lets go. The holder lets go as soon as it claims a task (so the next
//! arrival wakes the next idle claimer) or is dropped; a holder that dies lets go with its
//! process. A claimer that is busy claims without the turn (it never sleeps). On a network
//! filesystem claimers do not take turns (`Claimer::claim_wait`): inotify there sees only
//! one host's changes, so every host's claimers keep watching.
//!
//! `flock` cannot be given a timeout or be interrupted by the claimer's waker, so the lock is
//! taken by a helper thread that owns its own open file (its own lock); the claimer waits in
//! `poll` for the helper's eventfd, its waker and its deadline. The helper gives the turn back
//! when asked and ends when the claimer is dropped, at the latest once it next gets the lock
//! (which it then releases at once).

use crate::error::{Error, Result};
use crate::home::Home;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

#[derive(Default)]
struct State {
    /// The claimer wants the turn.
    want: bool,
    /// The helper holds the lock.
    held: bool,
    /// The claimer is gone.
    quit: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Written by the helper when it got the lock.
    got: EventFd,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a wait for the turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnWait {
    /// This claimer holds the turn.
    Got,
    /// The claimer's waker was used.
    Woken,
    /// The deadline passed.
    Deadline,
}

/// One claimer's place in the turn of its class set.
pub struct Turn {
    shared: Arc<Shared>,
    /// Handoffs: times this claimer got the turn.
    pub taken: u64,
}

impl Turn {
    /// The turn for `classes` (empty: all classes) in `home`; the lock file is opened now.
    pub fn new(home: &Home, classes: &[String]) -> Result<Turn> {
        let mut key: Vec<&str> = classes.iter().map(String::as_str).collect();
        key.sort_unstable();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.join("\n").bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let path = home.named_lock(&format!("turn-{h:016x}"));
        let file = open_turn_file(&path)?;
        let got = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| Error::io("cannot create an eventfd", e.into()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            got,
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("corral-turn".into())
            .spawn(move || helper(&s, file))
            .map_err(|e| Error::io("cannot start the turn thread", e))?;
        Ok(Turn { shared, taken: 0 })
    }

    /// Whether this claimer holds the turn.
    pub fn held(&self) -> bool {
        self.shared.lock().held
    }

    /// Waits until this claimer holds the turn, `waker_fd` is readable (not consumed), or
    /// `deadline` passes.
    pub fn wait(
        &mut self,
        waker_fd: std::os::fd::BorrowedFd<'_>,
        deadline: Option<Instant>,
    ) -> Result<TurnWait> {
        {
            let mut st = self.shared.lock();
            if st.held {
                return Ok(TurnWait::Got);
            }
            if !st.want {
                st.want = true;
                self.shared.changed.notify_all();
            }
        }
        loop {
            if self.shared.got.read().is_ok() || self.held() {
                if self.held() {
                    self.taken += 1;
                    return Ok(TurnWait::Got);
                }
                continue;
            }
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(TurnWait::Deadline);
                    }
                    let ms = left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [
                PollFd::new(self.shared.got.as_fd(), PollFlags::POLLIN),
                PollFd::new(waker_fd, PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::io("poll(turn)", e.into())),
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return Ok(TurnWait::Woken);
            }
        }
    }

    /// Gives the turn back (or stops waiting for it), so another idle claimer sleeps on the
    /// queue. Returns at once: the helper unlocks.
    pub fn release(&mut self) {
        let mut st = self.shared.lock();
        if st.want || st.held {
            st.want = false;
            self.shared.changed.notify_all();
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.want = false;
        st.quit = true;
        self.shared.changed.notify_all();
    }
}

/// Opens the turn's lock file read-write (as an exclusive flock needs on NFS), never through
/// a symlink. A missing one is made by the one lock opener (with the home's mode); it cannot
/// be taken for long by anyone then, since nobody held it.
fn open_turn_file(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    for _ in 0..3 {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        match f {
            Ok(f) => {
                let meta = f.metadata().map_err(|e| Error::io("stat turn lock", e))?;
                if !meta.is_file() {
                    return Err(Error::Invalid(format!(
                        "refusing lock {}: not a regular file",
                        path.display()
                    )));
                }
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match crate::store::lock_within(path, std::time::Duration::from_millis(100)) {
                    Ok(g) => drop(g),
                    Err(Error::LockTimeout { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Error::Invalid(format!(
                    "refusing lock {}: it is a symlink",
                    path.display()
                )))
            }
            Err(e) => return Err(Error::io(format!("cannot open lock {}", path.display()), e)),
        }
    }
    Err(Error::Internal(format!(
        "{} keeps vanishing",
        path.display()
    )))
}

fn helper(s: &Shared, file: std::fs::File) {
    loop {
        {
            let mut st = s.lock();
            while !st.quit && !st.want {
                st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.quit {
                return;
            }
        }
        // Blocks until the holder lets go (or dies).
        if file.lock().is_err() {
            // Nothing sensible to do but let the claimer sleep on inotify as before.
            let mut st = s.lock();
            st.held = true;
            let _ = s.got.write(1);
            return;
        }
        let mut st = s.lock();
        if st.quit || !st.want {
            drop(st);
            let _ = file.unlock();
            continue;
        }
        st.held = true;
        let _ = s.got.write(1);
        while st.want && !st.quit {
            st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.held = false;
        let quit = st.quit;
        drop(st);
        let _ = file.unlock();
        if quit {
            return;
        }
    }
}
