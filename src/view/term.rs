//! The little terminal handling the dashboards need: is stdout a TTY, how wide is it, may we
//! colour, and a raw-mode + alternate-screen guard for `--watch`.
//!
//! This is done with libc's termios and a few ANSI sequences rather than a terminal crate:
//! the dashboard needs raw key input, the alternate screen, clear and colour — about sixty
//! lines — and every extra crate is build time on two shared cores. The guard restores the
//! terminal on drop, so every way out of `--watch` (q, Ctrl-C, an error) leaves the shell
//! usable.

use std::io::Write;
use std::os::fd::RawFd;

/// True when `fd` (stdin, stdout or stderr) is a terminal; std's `IsTerminal`, as the
/// progress bar uses, without unsafe code.
pub fn is_tty(fd: RawFd) -> bool {
    use std::io::IsTerminal;
    match fd {
        libc::STDIN_FILENO => std::io::stdin().is_terminal(),
        libc::STDOUT_FILENO => std::io::stdout().is_terminal(),
        libc::STDERR_FILENO => std::io::stderr().is_terminal(),
        _ => false,
    }
}

/// Colour on stdout: only on a terminal, unless the environment says otherwise.
pub fn use_colour() -> bool {
    colour_for(is_tty(libc::STDOUT_FILENO))
}

/// The colour decision for an output that is (or is not) a terminal, after the environment:
/// `NO_COLOR` (no-color.org) set and non-empty turns colour off, whatever else is set;
/// otherwise `CLICOLOR_FORCE` set to anything but `0` turns it on even into a pipe (for
/// `less -R`), and `CLICOLOR=0` turns it off on a terminal (the bixense convention).
pub fn colour_for(tty: bool) -> bool {
    colour_decision(
        tty,
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("CLICOLOR_FORCE").as_deref(),
        std::env::var_os("CLICOLOR").as_deref(),
    )
}

fn colour_decision(
    tty: bool,
    no_color: Option<&std::ffi::OsStr>,
    force: Option<&std::ffi::OsStr>,
    clicolor: Option<&std::ffi::OsStr>,
) -> bool {
    if no_color.is_some_and(|v| !v.is_empty()) {
        return false;
    }
    if force.is_some_and(|v| !v.is_empty() && v != "0") {
        return true;
    }
    tty && clicolor.is_none_or(|v| v != "0")
}

/// Shows text that came from a worker or a task without letting it drive the terminal:
/// every control character (C0 except newline and tab, DEL, C1) is written as a visible
/// escape (`\x1b`, `\r`), so a worker cannot move the cursor, recolour, retitle or hide
/// lines of an operator's screen. Newlines and tabs are kept; see [`escape_line`] for
/// single-line cells.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    escape_with(s, true)
}

/// [`escape`] for text that must stay on one line (table cells): newlines and tabs are
/// escaped too.
pub fn escape_line(s: &str) -> std::borrow::Cow<'_, str> {
    escape_with(s, false)
}

fn escape_with(s: &str, keep_lines: bool) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        let control = c.is_control();
        control && !(keep_lines && (c == '\n' || c == '\t'))
    };
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !bad(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// (columns, rows) of the terminal on stdout, else `$COLUMNS`/`$LINES`, else `None`.
pub fn size() -> Option<(usize, usize)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        return Some((ws.ws_col as usize, ws.ws_row.max(1) as usize));
    }
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    env("COLUMNS").map(|c| (c, env("LINES").unwrap_or(24)))
}

/// ANSI colours used for health and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Green,
    Yellow,
    Red,
    Magenta,
    Dim,
    Bold,
}

impl Colour {
    fn code(self) -> &'static str {
        match self {
            Colour::Green => "32",
            Colour::Yellow => "33",
            Colour::Red => "31",
            Colour::Magenta => "35",
            Colour::Dim => "2",
            Colour::Bold => "1",
        }
    }

    /// Wraps `text` in this colour.
    pub fn paint(self, text: &str) -> String {
        format!("\x1b[{}m{text}\x1b[0m", self.code())
    }
}

/// The colour of a health band.
pub fn health_colour(health: &str) -> Option<Colour> {
    match health {
        "healthy" => Some(Colour::Green),
        "degraded" => Some(Colour::Yellow),
        "unhealthy" => Some(Colour::Red),
        "unresponsive" => Some(Colour::Magenta),
        _ => None,
    }
}

/// Cuts `s` to `width` visible characters, marking the cut with `…`.
pub fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// One table cell: its text and an optional colour applied after padding, so colour codes
/// never disturb the alignment.
#[derive(Debug, Clone)]
pub struct Cell {
    pub text: String,
    pub colour: Option<Colour>,
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell { text, colour: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell {
            text: text.to_string(),
            colour: None,
        }
    }
}

/// A plain table (no width limit, no colour) of text cells: [`render_table`] underneath, so
/// every cell is escaped like any other view's. The views print their tables through these
/// two functions only, never through a renderer that does not escape.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| r.iter().map(|c| Cell::from(c.as_str())).collect())
        .collect();
    render_table(header, &cells, None, &[], false)
}

/// Renders aligned columns. Every cell is shown through [`escape_line`] (DESIGN §10): a
/// newline, carriage return or escape sequence in worker or task text can neither drive the
/// terminal nor start a forged row. When `max_width` is given, the columns listed in `shrink` (most
/// expendable first) are narrowed, down to 6 characters each, until a line fits.
pub fn render_table(
    header: &[&str],
    rows: &[Vec<Cell>],
    max_width: Option<usize>,
    shrink: &[usize],
    colour: bool,
) -> String {
    // Cells may hold worker or task text: escaped before anything is measured or drawn
    // (a clean cell, nearly all of them, is borrowed, not copied).
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(widths.len()) {
            widths[i] = widths[i].max(escape_line(&c.text).chars().count());
        }
    }
    if let Some(max) = max_width {
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
        for &i in shrink {
            let over = total(&widths).saturating_sub(max);
            if over == 0 {
                break;
            }
            let floor = header.get(i).map_or(6, |h| h.chars().count().max(6));
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).saturating_sub(over).max(floor.min(*w));
            }
        }
    }
    let mut out = String::with_capacity((rows.len() + 1) * 100);
    let mut line = |cells: &mut dyn Iterator<Item = (String, Option<Colour>)>| {
        let mut s = String::new();
        let cells: Vec<_> = cells.collect();
        let n = cells.len();
        for (i, (text, col)) in cells.into_iter().enumerate() {
            let t = truncate(&text, widths[i]);
            let pad = widths[i].saturating_sub(t.chars().count());
            let painted = match (colour, col) {
                (true, Some(c)) => c.paint(&t),
                _ => t,
            };
            s.push_str(&painted);
            if i + 1 < n {
                s.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().map(|h| (h.to_string(), None)));
    for r in rows {
        line(
            &mut r
                .iter()
                .map(|c| (escape_line(&c.text).into_owned(), c.colour)),
        );
    }
    out.pop();
    out
}

/// Raw mode and the alternate screen for as long as the guard lives.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Enters the alternate screen, hides the cursor and, when stdin is a terminal, switches
    /// it to raw input (keys arrive one by one, unechoed; Ctrl-C arrives as byte 3, Ctrl-D as
    /// byte 4). A read waits for a key (`VMIN` 1), so a read of nothing means the input has
    /// really ended (a hangup), never merely "no key yet".
    pub fn enter() -> std::io::Result<RawTerminal> {
        let mut saved = None;
        if is_tty(libc::STDIN_FILENO) {
            // SAFETY: termios is plain data; tcgetattr fills it for a terminal descriptor.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let orig = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
            t.c_iflag &= !(libc::IXON | libc::ICRNL);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            // SAFETY: sets attributes of our own terminal from a struct we own.
            if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            saved = Some(orig);
        }
        let guard = RawTerminal { saved };
        let mut o = std::io::stdout().lock();
        o.write_all(b"\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")?;
        o.flush()?;
        Ok(guard)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = o.flush();
        if let Some(t) = self.saved.take() {
            // SAFETY: restores the attributes saved in `enter`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_shrink() {
        let rows = vec![vec![
            Cell::from("worker-implementation-1"),
            Cell {
                text: "healthy".into(),
                colour: Some(Colour::Green),
            },
            Cell::from("a-very-long-task-identifier-here"),
        ]];
        let t = render_table(&["ID", "HEALTH", "TASK"], &rows, None, &[], false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].find("HEALTH"), lines[1].find("healthy"));
        let narrow = render_table(&["ID", "HEALTH", "TASK"], &rows, Some(45), &[2], true);
        let plain: String = narrow
            .lines()
            .nth(1)
            .unwrap()
            .replace("\x1b[32m", "")
            .replace("\x1b[0m", "");
        assert!(plain.chars().count() <= 45, "{plain}");
        assert!(plain.ends_with('…'));
        assert!(narrow.contains("\x1b[32mhealthy\x1b[0m"));
    }

    #[test]
    fn worker_text_cannot_drive_the_terminal() {
        assert_eq!(escape("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            escape("\x1b[2Jwiped\rover\x07\u{9b}31m"),
            "\\x1b[2Jwiped\\rover\\x07\\x9b31m"
        );
        assert_eq!(escape_line("two\nlines\tx"), "two\\nlines\\tx");
        assert!(matches!(escape("ok"), std::borrow::Cow::Borrowed(_)));
        let rows = vec![vec![Cell::from("\x1b]0;pwned\x07")]];
        let t = render_table(&["MESSAGE"], &rows, None, &[], true);
        assert!(!t.contains('\x1b') && !t.contains('\x07'), "{t:?}");
        let t = table(
            &["A", "MESSAGE"],
            &[vec!["x".into(), "q\r\nFORGED\x1b".into()]],
        );
        assert_eq!(t, "A  MESSAGE\nx  q\\r\\nFORGED\\x1b");
    }

    #[test]
    fn colour_follows_the_terminal_and_the_environment() {
        use std::ffi::OsStr;
        let s = |v: &'static str| Some(OsStr::new(v));
        assert!(colour_decision(true, None, None, None));
        assert!(!colour_decision(false, None, None, None));
        assert!(!colour_decision(true, s("1"), None, None), "NO_COLOR");
        assert!(
            colour_decision(true, s(""), None, None),
            "empty NO_COLOR is unset"
        );
        assert!(colour_decision(false, None, s("1"), None), "CLICOLOR_FORCE");
        assert!(!colour_decision(false, None, s("0"), None));
        assert!(
            !colour_decision(false, s("1"), s("1"), None),
            "NO_COLOR wins"
        );
        assert!(!colour_decision(true, None, None, s("0")), "CLICOLOR=0");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
