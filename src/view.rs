//! Views of a home: tables, JSON, Prometheus text. Being built: see the issue tracker.

use crate::error::Result;
use crate::home::Home;
use std::path::Path;

/// The Prometheus text exposition of the home's state.
pub fn prometheus_text(_home: &Home) -> Result<String> {
    Ok(String::new())
}

/// Writes [`prometheus_text`] atomically to `path` (node_exporter's textfile collector).
pub fn write_prometheus(home: &Home, path: &Path) -> Result<()> {
    crate::store::atomic_write(home, path, prometheus_text(home)?.as_bytes())
}
