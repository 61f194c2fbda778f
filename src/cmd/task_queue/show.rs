//! `task-queue show`: one task, as its file's JSON or as `field: value` lines.

use super::{task_id, ShowArgs};
use crate::cli::{self, Format};
use crate::error::Result;
use crate::home::Home;
use crate::queue;
use serde_json::Value;

/// `show`: the task file as JSON unless `--format table` asks for `field: value` lines.
pub(super) fn show(home: &Home, a: ShowArgs) -> Result<()> {
    let v = queue::find(home, &task_id(home, &a.task)?)?
        .task
        .to_value()?;
    match a.format.unwrap_or(Format::Json) {
        Format::Json => cli::out_json(&v),
        Format::Jsonl => cli::out_jsonl(&v),
        Format::Table => cli::out(show_table(&v)),
    }
}

/// One `field: value` line per top-level field of the task, in the file's order: strings
/// as they are (escaped as `list` shows names: control characters and newlines never reach
/// the terminal raw, a field is always one line), other values as compact JSON (escaped
/// the same way).
fn show_table(v: &Value) -> String {
    let Some(m) = v.as_object() else {
        return v.to_string();
    };
    let width = m.keys().map(|k| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, x) in m {
        let text = match x {
            Value::String(s) => crate::view::term::escape_line(s).into_owned(),
            other => crate::view::term::escape_line(&other.to_string()).into_owned(),
        };
        out.push_str(&format!("{:<width$} {text}\n", format!("{k}:")));
    }
    out.pop();
    out
}
