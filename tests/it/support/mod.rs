//! Support shared by every integration test: the scene (a temp home and the real binaries)
//! and real processes (monitor, reaper, `/proc` readers, signals).
#![allow(dead_code)]

pub mod containers;
pub mod nfs;
pub mod procs;
pub mod queue;
pub mod scene;

pub use scene::*;

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Keeps each test thread's panic message, so that what is printed while unwinding (a
/// monitor's log) can end with it: CI shows the head and the tail of a long output, and
/// the message would otherwise sit in the middle, cut. Installed once, by `Scene`.
pub fn keep_panic_messages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{at}: {msg}")));
            default(info);
        }));
    });
}

/// This thread's panic message, cut to `max` characters, for a report printed while it
/// unwinds.
pub fn panic_message(max: usize) -> Option<String> {
    LAST_PANIC.with(|p| {
        p.borrow()
            .as_ref()
            .map(|m| m.chars().take(max).collect::<String>())
    })
}
