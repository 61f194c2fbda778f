//! Worker types from the command line (`corral type list|show|set|remove`), so nobody has
//! to hand-edit `config/worker-types.json`. Every change is a read-modify-write of the raw
//! document under `.locks/config.lock` (two operators never lose each other's edit), keeps
//! fields and types this version does not know, is validated as a whole (the schema, then
//! the typed model the monitor and spawn-worker load) before it is written atomically, and
//! keeps the file's mode. A broken change is refused with exit 6 and writes nothing.

use crate::error::{Error, Result};
use crate::home::{Home, StateDir};
use crate::policy::{WorkerType, WorkerTypes};
use crate::schema::{self, Kind};
use crate::spec::Priority;
use crate::store::{self, ReadError};
use serde_json::{json, Map, Value};
use std::os::unix::fs::PermissionsExt;

/// Largest `timeout_minutes` accepted (the bounded duration vocabulary's limit).
pub const MAX_TIMEOUT_MINUTES: u64 = (crate::time::MAX_SECONDS / 60.0) as u64;

/// The fields a `set` may clear with `--unset`.
pub const UNSETTABLE: &[&str] = &[
    "tokens",
    "timeout_minutes",
    "command",
    "max_retries",
    "priority",
    "description",
    "env",
    "env_file",
    "cwd",
    "replicas",
];

/// A change to one type; `None`/empty leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TypeChange {
    pub tokens: Option<u64>,
    pub timeout_minutes: Option<u64>,
    pub max_retries: Option<u32>,
    pub priority: Option<Priority>,
    pub description: Option<String>,
    /// The command as argv (run without a shell).
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` pairs added to (or replacing in) the type's environment.
    pub env: Vec<String>,
    /// Keys removed from the environment.
    pub unset_env: Vec<String>,
    pub env_file: Option<String>,
    pub cwd: Option<String>,
    pub replicas: Option<u32>,
    /// Fields removed (see [`UNSETTABLE`]).
    pub unset: Vec<String>,
}

impl TypeChange {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_none()
            && self.timeout_minutes.is_none()
            && self.max_retries.is_none()
            && self.priority.is_none()
            && self.description.is_none()
            && self.command.is_none()
            && self.env.is_empty()
            && self.unset_env.is_empty()
            && self.env_file.is_none()
            && self.cwd.is_none()
            && self.replicas.is_none()
            && self.unset.is_empty()
    }
}

/// Loads the types the way spawn-worker and the monitor do.
pub fn list(home: &Home) -> Result<WorkerTypes> {
    WorkerTypes::load(home)
}

/// One type; exit 3 naming the known types when it does not exist.
pub fn show(home: &Home, name: &str) -> Result<WorkerType> {
    let types = list(home)?;
    types
        .get(name)
        .cloned()
        .map_err(|e| Error::NotFound(e.to_string()))
}

fn read_doc(home: &Home) -> Result<Value> {
    let path = home.worker_types_path();
    match store::read_json(&path) {
        Ok(v) => Ok(v),
        Err(ReadError::Missing) => Ok(json!({ "types": {} })),
        Err(e) => Err(e.into_error(&path)),
    }
}

/// Validates the whole document and writes it atomically, keeping the file's mode.
fn write_doc(home: &Home, doc: &Value) -> Result<WorkerTypes> {
    schema::validate(Kind::WorkerTypes, doc)?;
    let typed: WorkerTypes = serde_json::from_value(doc.clone())
        .map_err(|e| Error::Invalid(format!("invalid worker types: {e}")))?;
    let path = home.worker_types_path();
    let mode = std::fs::metadata(&path)
        .ok()
        .map(|m| m.permissions().mode());
    store::atomic_write(home, &path, &store::to_pretty(doc)?)?;
    let mode = mode.unwrap_or(crate::perms::mode_for(
        false,
        false,
        crate::perms::group_shared(home),
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("cannot chmod {}", path.display()), e))?;
    Ok(typed)
}

fn absolute(p: &str) -> Result<String> {
    let abs = std::path::absolute(p).map_err(|e| Error::io(format!("cannot resolve {p}"), e))?;
    Ok(abs.display().to_string())
}

/// Creates or changes type `name`; returns it as written and whether it is new.
pub fn set(home: &Home, name: &str, change: &TypeChange) -> Result<(WorkerType, bool)> {
    crate::id::validate("worker type", name)?;
    for f in &change.unset {
        if !UNSETTABLE.contains(&f.as_str()) {
            return Err(Error::Usage(format!(
                "--unset {f}: not a field (use {})",
                UNSETTABLE.join(", ")
            )));
        }
    }
    if let Some(m) = change.timeout_minutes.filter(|m| *m > MAX_TIMEOUT_MINUTES) {
        return Err(Error::Invalid(format!(
            "--timeout-minutes {m}: more than {MAX_TIMEOUT_MINUTES}"
        )));
    }
    if change
        .command
        .as_ref()
        .is_some_and(|c| c.is_empty() || c[0].is_empty())
    {
        return Err(Error::Invalid("--command: the program is empty".into()));
    }
    let mut env_pairs = Vec::new();
    for kv in &change.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("--env {kv:?}: expected KEY=VALUE")))?;
        env_pairs.push((k.to_string(), v.to_string()));
    }
    let _lock = store::lock(&home.named_lock("config"))?;
    let mut doc = read_doc(home)?;
    let types = doc
        .as_object_mut()
        .ok_or_else(|| Error::Invalid("config/worker-types.json: not a JSON object".into()))?
        .entry("types")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| Error::Invalid("config/worker-types.json: types is not an object".into()))?;
    let created = !types.contains_key(name);
    let t = types
        .entry(name.to_string())
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| Error::Invalid(format!("type {name}: not a JSON object")))?;
    for f in &change.unset {
        t.remove(f);
    }
    let mut put = |k: &str, v: Value| {
        t.insert(k.to_string(), v);
    };
    if let Some(v) = change.tokens {
        put("tokens", v.into());
    }
    if let Some(v) = change.timeout_minutes {
        put("timeout_minutes", v.into());
    }
    if let Some(v) = change.max_retries {
        put("max_retries", v.into());
    }
    if let Some(v) = change.priority {
        put("priority", v.as_str().into());
    }
    if let Some(v) = &change.description {
        put("description", v.clone().into());
    }
    if let Some(v) = &change.command {
        put("command", json!(v));
    }
    if let Some(v) = &change.env_file {
        put("env_file", absolute(v)?.into());
    }
    if let Some(v) = &change.cwd {
        put("cwd", absolute(v)?.into());
    }
    if let Some(v) = change.replicas {
        put("replicas", v.into());
    }
    if !env_pairs.is_empty() || !change.unset_env.is_empty() {
        let env = t
            .entry("env")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| Error::Invalid(format!("type {name}: env is not an object")))?;
        for (k, v) in env_pairs {
            env.insert(k, v.into());
        }
        for k in &change.unset_env {
            env.remove(k);
        }
        if env.is_empty() {
            t.remove("env");
        }
    }
    let typed = write_doc(home, &doc)?;
    let out = typed
        .types
        .get(name)
        .cloned()
        .ok_or_else(|| Error::Internal(format!("type {name} vanished on write")))?;
    Ok((out, created))
}

/// Active workers of a type (what a removal would orphan).
pub fn active_workers(home: &Home, name: &str) -> Result<Vec<String>> {
    crate::lifecycle::ids_in(home, StateDir::Active, |s| s.worker_type == name)
}

/// Removes type `name`. Refused (exit 5) while workers of the type are active, unless
/// `force`: spawn-worker, restarts and pools would fail for them.
pub fn remove(home: &Home, name: &str, force: bool) -> Result<WorkerType> {
    crate::id::validate("worker type", name)?;
    let _lock = store::lock(&home.named_lock("config"))?;
    let mut doc = read_doc(home)?;
    let old = WorkerTypes::load(home)?
        .get(name)
        .cloned()
        .map_err(|e| Error::NotFound(e.to_string()))?;
    let live = active_workers(home, name)?;
    if !live.is_empty() && !force {
        return Err(Error::Conflict(format!(
            "{} active worker(s) of type {name} (e.g. {}): stop them first, or pass --force",
            live.len(),
            live[0]
        )));
    }
    if let Some(types) = doc.get_mut("types").and_then(Value::as_object_mut) {
        types.remove(name);
    }
    write_doc(home, &doc)?;
    Ok(old)
}

/// Warnings about a type that is valid but will not work here: a command whose program is
/// not found (on PATH or beside this binary), a missing `cwd` or `env_file`.
pub fn warnings(name: &str, t: &WorkerType) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(prog) = t.command.as_ref().and_then(|c| c.first()) {
        if !program_found(prog, t.cwd.as_deref()) {
            out.push(format!(
                "type {name}: command {prog:?} is not found (not on PATH, not beside {})",
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.display().to_string()))
                    .unwrap_or_else(|| "corral".into())
            ));
        }
    }
    if let Some(d) = &t.cwd {
        if !std::path::Path::new(d).is_dir() {
            out.push(format!("type {name}: cwd {d} is not a directory"));
        }
    }
    if let Some(f) = &t.env_file {
        if !std::path::Path::new(f).is_file() {
            out.push(format!("type {name}: env_file {f} does not exist"));
        }
    }
    out
}

/// True when `prog` can be run: a path (relative to `cwd` when given), a name on PATH, or
/// a corral binary next to the running one (the binaries are installed together).
pub fn program_found(prog: &str, cwd: Option<&str>) -> bool {
    if prog.contains('/') {
        let p = std::path::Path::new(prog);
        return match (p.is_relative(), cwd) {
            (true, Some(d)) => std::path::Path::new(d).join(p).is_file(),
            _ => p.is_file(),
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false);
    on_path
        || std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join(prog).is_file()))
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_creates_changes_and_keeps_unknown_fields() {
        let (_d, home) = crate::home::test_home();
        let mut doc: Value =
            serde_json::from_str(&std::fs::read_to_string(home.worker_types_path()).unwrap())
                .unwrap();
        doc["types"]["review-worker"]["x-team"] = json!("fleet");
        doc["x-note"] = json!("kept");
        std::fs::write(home.worker_types_path(), doc.to_string()).unwrap();
        let (t, created) = set(
            &home,
            "conv",
            &TypeChange {
                tokens: Some(10),
                command: Some(vec!["sh".into(), "-c".into(), "cat".into()]),
                env: vec!["A=1".into(), "B=x=y".into()],
                replicas: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(created);
        assert_eq!(t.tokens, Some(10));
        assert_eq!(t.env.get("B").map(String::as_str), Some("x=y"));
        let (t, created) = set(
            &home,
            "conv",
            &TypeChange {
                unset_env: vec!["A".into()],
                unset: vec!["replicas".into()],
                timeout_minutes: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!created);
        assert_eq!(
            (t.replicas, t.timeout_minutes, t.env.len()),
            (None, Some(5), 1)
        );
        assert_eq!(t.command.as_deref().map(|c| c.len()), Some(3), "kept");
        let raw: Value =
            serde_json::from_str(&std::fs::read_to_string(home.worker_types_path()).unwrap())
                .unwrap();
        assert_eq!(raw["types"]["review-worker"]["x-team"], "fleet");
        assert_eq!(raw["x-note"], "kept");
    }

    #[test]
    fn bad_changes_write_nothing() {
        let (_d, home) = crate::home::test_home();
        let before = std::fs::read(home.worker_types_path()).unwrap();
        let bad = |c: TypeChange| set(&home, "t", &c).unwrap_err().exit_code();
        assert_eq!(
            bad(TypeChange {
                env: vec!["NOEQUALS".into()],
                ..Default::default()
            }),
            6
        );
        assert_eq!(
            bad(TypeChange {
                env: vec!["1BAD=x".into()],
                ..Default::default()
            }),
            6
        );
        assert_eq!(
            bad(TypeChange {
                command: Some(vec![]),
                ..Default::default()
            }),
            6
        );
        assert_eq!(
            bad(TypeChange {
                timeout_minutes: Some(u64::MAX),
                ..Default::default()
            }),
            6
        );
        assert_eq!(
            bad(TypeChange {
                unset: vec!["nope".into()],
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            set(&home, "../x", &TypeChange::default())
                .unwrap_err()
                .exit_code(),
            6
        );
        assert_eq!(std::fs::read(home.worker_types_path()).unwrap(), before);
    }

    #[test]
    fn remove_refuses_while_workers_run() {
        let (_d, home) = crate::home::test_home();
        let s = crate::spec::WorkerSpec::new("w1".into(), "test-worker".into(), crate::time::now());
        crate::spec::save(&home, StateDir::Active, &s).unwrap();
        assert_eq!(
            remove(&home, "test-worker", false).unwrap_err().exit_code(),
            5
        );
        assert_eq!(remove(&home, "nope", false).unwrap_err().exit_code(), 3);
        remove(&home, "test-worker", true).unwrap();
        assert_eq!(show(&home, "test-worker").unwrap_err().exit_code(), 3);
        assert!(show(&home, "review-worker").is_ok());
    }

    #[test]
    fn programs_are_found_on_path_or_beside_corral() {
        assert!(program_found("sh", None));
        assert!(!program_found("no-such-program-corral", None));
        assert!(program_found("/bin/sh", None));
        assert!(!program_found("./nope.sh", Some("/")));
        let t = WorkerType {
            command: Some(vec!["no-such-program-corral".into()]),
            cwd: Some("/no/such/dir".into()),
            ..Default::default()
        };
        assert_eq!(warnings("x", &t).len(), 2);
    }
}
