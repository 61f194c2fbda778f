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

/// Colour only on a terminal and only when `NO_COLOR` is unset or empty (no-color.org).
pub fn use_colour() -> bool {
    is_tty(libc::STDOUT_FILENO) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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

/// Renders aligned columns. When `max_width` is given, the columns listed in `shrink` (most
/// expendable first) are narrowed, down to 6 characters each, until a line fits.
pub fn render_table(
    header: &[&str],
    rows: &[Vec<Cell>],
    max_width: Option<usize>,
    shrink: &[usize],
    colour: bool,
) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(widths.len()) {
            widths[i] = widths[i].max(c.text.chars().count());
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
        line(&mut r.iter().map(|c| (c.text.clone(), c.colour)));
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
    /// it to raw input (keys arrive one by one, unechoed; Ctrl-C arrives as byte 3).
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
            t.c_cc[libc::VMIN] = 0;
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
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
