//! Signal masks and dispositions, in one place. A daemon blocks its stop signals before any
//! thread starts so that exactly one receiver (a signalfd or a `sigwait` thread) sees them;
//! every child corral starts must *not* inherit that mask, nor ignored dispositions (both
//! survive `exec`), or a worker could never be stopped gracefully (DESIGN §6 S7).

use crate::error::{Error, Result};
use nix::sys::signal::{SigSet, Signal};

/// The signals a corral daemon or loop handles itself: stop (TERM, INT) and reload (HUP).
pub const STOP_AND_RELOAD: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// Blocks `signals` in the calling thread, and so in every thread spawned after it. Call it
/// before anything starts a thread; returns the set for a signalfd or `sigwait`.
pub fn block(signals: &[Signal]) -> Result<SigSet> {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    set.thread_block()
        .map_err(|e| Error::io("cannot block signals", e.into()))?;
    Ok(set)
}

/// Gives a forked child a clean signal state before `exec`: an empty mask and the default
/// disposition for every signal. Runs between fork and exec, so it only makes
/// async-signal-safe calls (`sigprocmask`, `signal`).
pub fn reset_in_child() -> std::io::Result<()> {
    // SAFETY: sigemptyset/pthread_sigmask/signal are async-signal-safe and touch only the
    // child's own signal state; the sigset is a plain value on this stack.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for sig in 1..libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // Fails harmlessly for the few numbers libc reserves for itself.
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    Ok(())
}

/// Signals blocked in the calling thread, read back (for tests and diagnostics).
pub fn blocked_now() -> Result<SigSet> {
    SigSet::thread_get_mask().map_err(|e| Error::io("cannot read the signal mask", e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_gets_a_clean_mask_even_from_a_blocking_thread() {
        // A thread of our own, so the test runner's threads keep their mask.
        let out = std::thread::spawn(|| {
            block(&STOP_AND_RELOAD).expect("block");
            assert!(blocked_now().expect("mask").contains(Signal::SIGTERM));
            super::super::command("sh")
                .args(["-c", "grep -E '^(SigBlk|SigIgn)' /proc/self/status"])
                .output()
                .expect("run sh")
        })
        .join()
        .expect("thread");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("SigBlk:\t0000000000000000"),
            "child inherited a mask: {text}"
        );
        // Signals 32 and 33 belong to the C library, which refuses to change them; the
        // standard signals 1-31 must all be at their defaults.
        let ign = text
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:\t"))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            .expect("SigIgn line");
        assert_eq!(
            ign & 0x7fff_ffff,
            0,
            "child inherited ignored signals: {text}"
        );
    }
}
