//! The one error type of the library. Each variant carries the exit code of DESIGN.md §1,
//! so the binary wrapper maps any failure to the documented code without knowing its origin.

use std::path::Path;

/// Every failure a corral operation can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O failed on a path (exit 1).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A bug or an unexpected state (exit 1).
    #[error("{0}")]
    Internal(String),
    /// Bad usage that clap could not catch (exit 2).
    #[error("{0}")]
    Usage(String),
    /// No such worker or task (exit 3).
    #[error("{0}")]
    NotFound(String),
    /// The token budget cannot cover a reservation (exit 4); nothing was written.
    #[error("insufficient token budget: need {need}, available {available}")]
    Budget { need: u64, available: u64 },
    /// The target is in the wrong state for the operation (exit 5).
    #[error("{0}")]
    Conflict(String),
    /// A lock wait ran past `CORRAL_LOCK_TIMEOUT` (exit 5, DESIGN §6 S4). Kept apart from
    /// `Conflict` so that "someone holds the lock" is never mistaken for "wrong state".
    #[error("timed out after {:.1} s waiting for the lock {}: another process holds it{}", waited.as_secs_f64(), path.display(), network_fs.map(|fs| format!(" (the home is on {fs}: another host may hold it)")).unwrap_or_default())]
    LockTimeout {
        path: std::path::PathBuf,
        waited: std::time::Duration,
        network_fs: Option<&'static str>,
    },
    /// Malformed, schema-violating, oversized or otherwise refused input (exit 6).
    #[error("{0}")]
    Invalid(String),
    /// Nothing to do: no task to claim, a wait that timed out (exit 7).
    #[error("{0}")]
    NothingToDo(String),
    /// The home is missing or not initialised (exit 8).
    #[error("{0}")]
    NoHome(String),
    /// A check found problems (exit 10); the report is already on stdout.
    #[error("{0}")]
    CheckFailed(String),
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code DESIGN.md §1 assigns to this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Io { .. } | Error::Internal(_) => 1,
            Error::Usage(_) => 2,
            Error::NotFound(_) => 3,
            Error::Budget { .. } => 4,
            Error::Conflict(_) | Error::LockTimeout { .. } => 5,
            Error::Invalid(_) => 6,
            Error::NothingToDo(_) => 7,
            Error::NoHome(_) => 8,
            Error::CheckFailed(_) => 10,
        }
    }

    /// An error that exits with `code`: the summary a command returns after it printed the
    /// errors of the items that failed (one per line), so each is said once.
    pub fn with_code(code: u8, msg: String) -> Error {
        match code {
            2 => Error::Usage(msg),
            3 => Error::NotFound(msg),
            5 => Error::Conflict(msg),
            6 => Error::Invalid(msg),
            7 => Error::NothingToDo(msg),
            8 => Error::NoHome(msg),
            10 => Error::CheckFailed(msg),
            _ => Error::Internal(msg),
        }
    }

    /// A second line that tells the operator what to do next, where one helps.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::NoHome(_) => Some(
                "hint: create one with `corral init --home DIR`, or point --home/CORRAL_HOME at an existing home".into(),
            ),
            Error::Budget { .. } => Some(
                "hint: `recalc-budget` recovers tokens held by finished workers; `cleanup-zombies` releases zombies".into(),
            ),
            Error::LockTimeout { path, .. } => Some(format!(
                "hint: `fuser -v {}` shows who holds it (a stopped or hung process?); CORRAL_LOCK_TIMEOUT=SECS waits longer",
                path.display()
            )),
            _ => None,
        }
    }

    /// Wraps an I/O error with the operation and path it happened on.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when this is an I/O "not found" (a file that vanished under us).
    pub fn is_not_found_io(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Adds "cannot <verb> <path>" context to I/O results, as coreutils' `map_err_context` does.
pub trait IoContext<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(format!("cannot {what} {}", path.display()), e))
    }
}

/// Convenience for building paths in messages.
pub fn show(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_design() {
        let cases: Vec<(Error, u8)> = vec![
            (Error::Internal("x".into()), 1),
            (Error::Usage("x".into()), 2),
            (Error::NotFound("x".into()), 3),
            (
                Error::Budget {
                    need: 2,
                    available: 1,
                },
                4,
            ),
            (Error::Conflict("x".into()), 5),
            (
                Error::LockTimeout {
                    path: "/h/.locks/budget.lock".into(),
                    waited: std::time::Duration::from_secs(1),
                    network_fs: Some("nfs"),
                },
                5,
            ),
            (Error::Invalid("x".into()), 6),
            (Error::NothingToDo("x".into()), 7),
            (Error::NoHome("x".into()), 8),
            (Error::CheckFailed("x".into()), 10),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e:?}");
        }
        assert_eq!(Error::io("x", std::io::Error::other("boom")).exit_code(), 1);
        let t = Error::LockTimeout {
            path: "/h/.locks/budget.lock".into(),
            waited: std::time::Duration::from_secs(1),
            network_fs: Some("nfs"),
        }
        .to_string();
        assert!(
            t.contains("/h/.locks/budget.lock") && t.contains("another host"),
            "{t}"
        );
    }
}
