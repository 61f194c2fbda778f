//! What a launch needs beyond the argv, worked out the same way at spawn and at every restart
//! (DESIGN §6 S7): the program resolved to an absolute path (a PATH lookup, or relative to
//! the spawn's working directory, so `-- ./convert.sh` restarts from anywhere), the working
//! directory (the type's `cwd` over the spawn's), and the environment: the type's `env`,
//! its `env_file` (read at each launch and never copied into a spec: it may hold secrets),
//! then `spawn-worker --env K=V`, then corral's own `CORRAL_*` variables.

use crate::error::{Error, Result};
use crate::home::Home;
use crate::policy::WorkerType;
use crate::process::resolve_program;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Variables corral sets for every launched worker; `--env` may not set them (the worker id
/// is part of the proof of S2).
pub const RESERVED_ENV: [&str; 5] = [
    "CORRAL_HOME",
    "CORRAL_WORKER_ID",
    "CORRAL_TASK_ID",
    "CORRAL_SESSION_ID",
    "CORRAL_ALIVE_FD",
];

/// Largest env file read (it is a handful of `KEY=VALUE` lines).
const MAX_ENV_FILE_BYTES: u64 = 256 * 1024;

/// Checks an environment variable name: `^[A-Za-z_][A-Za-z0-9_]{0,127}$`.
pub fn check_env_key(what: &str, key: &str) -> Result<()> {
    let mut chars = key.chars();
    let ok = key.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what}: invalid variable name {key:?} (letters, digits and _, not starting with a digit)"
        )))
    }
}

/// Parses `--env K=V` values into a map, refusing bad names and corral's own variables.
pub fn parse_env_pairs(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("--env {p:?}: expected KEY=VALUE")))?;
        check_env_key("--env", k)?;
        if RESERVED_ENV.contains(&k) {
            return Err(Error::Invalid(format!(
                "--env cannot set {k}: corral sets it for every worker"
            )));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Parses an env file: `KEY=VALUE` lines, blank lines and `#` comments skipped, an optional
/// `export ` prefix, a value in matching single or double quotes taken literally.
pub fn parse_env_file(text: &str, origin: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line.split_once('=').ok_or_else(|| {
            Error::Invalid(format!(
                "{} line {}: expected KEY=VALUE",
                origin.display(),
                n + 1
            ))
        })?;
        let k = k.trim();
        check_env_key(&format!("{} line {}", origin.display(), n + 1), k)?;
        let v = v.trim();
        let v = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(a, b)| {
                (v.len() >= 2 && v.starts_with(*a) && v.ends_with(*b)).then(|| &v[1..v.len() - 1])
            })
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// A path from the type's config: absolute, or relative to `config/` of the home.
fn config_relative(home: &Home, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        home.coordination().join("config").join(path)
    }
}

/// Reads the type's env file (at each launch, so a rotated secret reaches the next start).
pub fn read_env_file(home: &Home, file: &str) -> Result<Vec<(String, String)>> {
    use std::io::Read;
    let path = config_relative(home, file);
    let f = std::fs::File::open(&path)
        .map_err(|e| Error::Invalid(format!("env_file {}: {e}", path.display())))?;
    let mut text = String::new();
    f.take(MAX_ENV_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::Invalid(format!("env_file {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_ENV_FILE_BYTES {
        return Err(Error::Invalid(format!(
            "env_file {}: larger than {MAX_ENV_FILE_BYTES} bytes",
            path.display()
        )));
    }
    parse_env_file(&text, &path)
}

/// Resolves argv's program (see [`resolve_program`]); the arguments are kept as given.
pub fn resolve_command(
    cmd: &[String],
    cwd: &Path,
    path: Option<&std::ffi::OsStr>,
) -> Result<Vec<String>> {
    let (prog, args) = cmd
        .split_first()
        .ok_or_else(|| Error::Invalid("empty worker command".into()))?;
    let mut out = Vec::with_capacity(cmd.len());
    out.push(resolve_program(prog, cwd, path)?);
    out.extend(args.iter().cloned());
    Ok(out)
}

/// The working directory of a launch: the type's `cwd` (absolute, or relative to the home)
/// over the spawn's recorded one; it must exist.
pub fn launch_cwd(home: &Home, t: Option<&WorkerType>, recorded: Option<&str>) -> Result<PathBuf> {
    let dir = match (t.and_then(|t| t.cwd.as_deref()), recorded) {
        (Some(c), _) => home.root().join(c),
        (None, Some(r)) => PathBuf::from(r),
        (None, None) => std::env::current_dir()
            .map_err(|e| Error::io("cannot read the current directory", e))?,
    };
    if !dir.is_dir() {
        return Err(Error::Invalid(format!(
            "working directory {} does not exist",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The environment a launch sets on top of what the launcher inherited, in order (later
/// wins): the type's `env`, its `env_file`, the spec's `launch.env`.
pub fn launch_env(
    home: &Home,
    t: Option<&WorkerType>,
    recorded: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(t) = t {
        env.extend(t.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(f) = &t.env_file {
            env.extend(read_env_file(home, f)?);
        }
    }
    env.extend(recorded.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.retain(|(k, _)| !RESERVED_ENV.contains(&k.as_str()));
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_like_a_shell_would_without_running_one() {
        let text =
            "# secrets\n\nexport A=1\nB = two words \nC=\"quoted # not a comment\"\nD='x=y'\nE=\n";
        let v = parse_env_file(text, Path::new("f")).unwrap();
        let m: BTreeMap<_, _> = v.into_iter().collect();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "quoted # not a comment");
        assert_eq!(m["D"], "x=y");
        assert_eq!(m["E"], "");
        assert!(parse_env_file("no equals\n", Path::new("f")).is_err());
        assert!(parse_env_file("1X=2\n", Path::new("f")).is_err());
    }

    #[test]
    fn env_pairs_refuse_bad_names_and_corral_variables() {
        let m = parse_env_pairs(&["A=1".into(), "B=x=y".into()]).unwrap();
        assert_eq!(m["B"], "x=y");
        for bad in ["A", "=1", "A-B=1", "CORRAL_WORKER_ID=x"] {
            assert_eq!(
                parse_env_pairs(&[bad.into()]).unwrap_err().exit_code(),
                6,
                "{bad}"
            );
        }
    }

    #[test]
    fn programs_resolve_to_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("convert.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let abs = resolve_program("./convert.sh", dir.path(), None).unwrap();
        assert!(Path::new(&abs).is_absolute() && abs.ends_with("convert.sh"));
        let path = std::ffi::OsString::from("/nonexistent:/bin:/usr/bin");
        let sh = resolve_program("sh", Path::new("/"), Some(&path)).unwrap();
        assert!(sh.starts_with('/') && sh.ends_with("/sh"), "{sh}");
        assert!(resolve_program("no-such-program-xyz", dir.path(), Some(&path)).is_err());
        let plain = dir.path().join("data.txt");
        std::fs::write(&plain, "").unwrap();
        assert!(
            resolve_program("./data.txt", dir.path(), None).is_err(),
            "not executable"
        );
    }
}
