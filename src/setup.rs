//! `corral init`: lays down a home from the template, and re-runs on an existing home
//! without losing anything.
//!
//! On an existing home (`--force`), configuration is kept as it is (custom worker types and
//! policy edits are the operator's work); `--reset-config` rewrites it from the template,
//! but only after copying each file to `<name>.bak-<UTC time>`, so no reset can destroy an
//! earlier backup. The budget is never reset: `used` and `consumed` are recounted from the
//! specs (as `recalc-budget` does) and the total is kept unless `--total-tokens` is given,
//! so a live home keeps exact books. Specs, tasks and logs are never touched.
//!
//! Modes follow the trust model of `crate::perms`: a new home is private (`0700`/`0600`),
//! `--group G` makes it group-shared (`2770`/`0660`, group G, converting an existing home
//! recursively). `--with-scripts` installs the runbook wrappers into `<home>/scripts/`.

use crate::budget::{self, RecalcOptions};
use crate::error::{Error, IoContext, Result};
use crate::events;
use crate::home::{Home, TEMPLATE};
use crate::perms;
use crate::store;
use serde::Serialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What `corral init` was asked for.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub total_tokens: Option<u64>,
    /// Re-run on an existing home (keeps everything; see the module docs).
    pub force: bool,
    /// With `force`: rewrite the config files from the template, after `.bak-*` copies.
    pub reset_config: bool,
    /// Make the home group-shared with this group (name or gid).
    pub group: Option<String>,
    /// Install the runbook wrapper scripts into `<home>/scripts/`.
    pub with_scripts: bool,
}

/// What `corral init` did.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub home: PathBuf,
    /// False when an existing home was re-initialised.
    pub created: bool,
    pub written: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
    pub backups: Vec<PathBuf>,
    pub scripts: Vec<PathBuf>,
    pub group_shared: bool,
    pub budget: budget::Budget,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Sets up (or re-initialises) a home; see the module docs.
pub fn init(home: &Home, opts: &InitOptions) -> Result<InitReport> {
    let existing = home.coordination().is_dir();
    if existing && !opts.force {
        return Err(Error::Conflict(format!(
            "{} is already a corral home (--force re-runs init keeping config, specs, tasks and logs, and recounts the budget)",
            home.root().display()
        )));
    }
    if opts.reset_config && !opts.force {
        return Err(Error::Usage("--reset-config needs --force".into()));
    }
    let gid = opts.group.as_deref().map(perms::lookup_group).transpose()?;
    let shared = gid.is_some() || (existing && perms::group_shared(home));
    let root = home.root();
    let root_created = !root.exists();
    std::fs::create_dir_all(root).ctx("create", root)?;
    let fresh = |p: &Path| -> Result<()> {
        // A new path gets the home's mode; an existing one keeps what the operator chose,
        // unless --group converts the home.
        perms::apply(p, shared, gid)
    };
    if root_created || gid.is_some() {
        fresh(root)?;
    }
    let mut report = InitReport {
        home: absolute(root),
        created: !existing,
        written: Vec::new(),
        kept: Vec::new(),
        backups: Vec::new(),
        scripts: Vec::new(),
        group_shared: shared,
        budget: budget::Budget::new(0, crate::time::now()),
    };
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    for (rel, contents) in TEMPLATE {
        let path = root.join(rel.trim_end_matches('/'));
        let is_dir = rel.ends_with('/');
        if let Some(parent) = path.parent() {
            create_dirs(root, parent, shared, gid)?;
        }
        if is_dir {
            create_dirs(root, &path, shared, gid)?;
            continue;
        }
        let exists = std::fs::symlink_metadata(&path).is_ok();
        let is_config = rel.starts_with("coordination/config/");
        let is_budget = path == home.budget_path();
        if exists && is_config && opts.reset_config {
            let bak = backup_path(&path, &stamp);
            std::fs::copy(&path, &bak).ctx("back up", &path)?;
            fresh(&bak)?;
            report.backups.push(bak);
        } else if exists && !(is_budget && store::read_json(&path).is_err()) {
            report.kept.push(path);
            continue;
        } else if exists {
            // An unreadable budget is kept aside and rebuilt from the specs below.
            let bak = backup_path(&path, &stamp);
            std::fs::rename(&path, &bak).ctx("move aside", &path)?;
            report.backups.push(bak);
        }
        store::atomic_write(home, &path, contents.as_bytes())?;
        fresh(&path)?;
        report.written.push(path);
    }
    report.budget = settle_budget(home, opts, existing)?;
    if opts.with_scripts {
        report.scripts = install_scripts(home)?;
    }
    // Last, so the budget rewrite and the event (and their lock files) are shared too.
    if gid.is_some() {
        perms::apply_tree(root, true, gid)?;
    }
    Ok(report)
}

/// `<file>.bak-<stamp>`, with a counter when that exists already.
fn backup_path(path: &Path, stamp: &str) -> PathBuf {
    let base = format!("{}.bak-{stamp}", path.display());
    let mut p = PathBuf::from(&base);
    let mut n = 1;
    while p.exists() {
        p = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    p
}

/// Creates `dir` and its missing parents below `root`, giving each new one the home's mode.
fn create_dirs(root: &Path, dir: &Path, shared: bool, gid: Option<u32>) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if parent != root && parent.starts_with(root) {
            create_dirs(root, parent, shared, gid)?;
        }
    }
    match std::fs::create_dir(dir) {
        Ok(()) => perms::apply(dir, shared, gid),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("cannot create {}", dir.display()), e)),
    }
}

/// A new home gets the requested total; an existing one is recounted from its specs.
fn settle_budget(home: &Home, opts: &InitOptions, existing: bool) -> Result<budget::Budget> {
    if !existing {
        let total = match opts.total_tokens {
            Some(t) => t,
            None => budget::read(home)?.total,
        };
        budget::initialise(home, total)?;
        perms::apply(&home.budget_path(), perms::group_shared(home), None)?;
        return budget::read(home);
    }
    let drift = budget::recalc(
        home,
        &RecalcOptions {
            check_only: false,
            set_total: opts.total_tokens,
            reset_period: false,
        },
    )?;
    // One event either way, so the log shows that a re-init recounted the books.
    events::emit(home, crate::doctor::budget_event(&drift));
    Ok(drift.after)
}

/// The runbook wrappers, compiled in so an installed `corral` needs no checkout:
/// (path under `scripts/`, contents).
pub const SCRIPTS: &[(&str, &str)] = &[
    (
        "lib/find-bin.sh",
        include_str!("../scripts/lib/find-bin.sh"),
    ),
    (
        "cleanup-zombie-workers.sh",
        include_str!("../scripts/cleanup-zombie-workers.sh"),
    ),
    (
        "spawn-worker.sh",
        include_str!("../scripts/spawn-worker.sh"),
    ),
    (
        "validate-and-write-worker-spec.sh",
        include_str!("../scripts/validate-and-write-worker-spec.sh"),
    ),
    (
        "recalculate-token-budget.sh",
        include_str!("../scripts/recalculate-token-budget.sh"),
    ),
    (
        "dashboards/worker-monitor.sh",
        include_str!("../scripts/dashboards/worker-monitor.sh"),
    ),
    (
        "wizards/create-worker.sh",
        include_str!("../scripts/wizards/create-worker.sh"),
    ),
];

/// The line of `lib/find-bin.sh` that an installed copy replaces with what it knows.
pub const INSTALL_MARKER: &str = "# @corral-install@";

/// Installs the wrappers into `<home>/scripts/` (replacing older copies), so the runbook's
/// `$COMMIT_RELAY_HOME/scripts/cleanup-zombie-workers.sh` works as written, from cron too.
/// The installed `find-bin.sh` knows the directory of the running binary (cron's PATH
/// rarely has it) and defaults `CORRAL_HOME` to this home when neither home variable is set.
pub fn install_scripts(home: &Home) -> Result<Vec<PathBuf>> {
    let shared = perms::group_shared(home);
    let root = home.root();
    let dir = root.join("scripts");
    create_dirs(root, &dir, shared, None)?;
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let home_abs = absolute(root);
    let mut out = Vec::new();
    for (rel, text) in SCRIPTS {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            create_dirs(root, parent, shared, None)?;
        }
        let text = if *rel == "lib/find-bin.sh" {
            let mut lines = vec!["# Installed by `corral init --with-scripts`.".to_string()];
            if let Some(b) = &bin_dir {
                lines.push(format!(
                    "CORRAL_INSTALLED_BIN_DIR={}",
                    shell_quote(&b.display().to_string())
                ));
            }
            lines.push(format!(
                "if [[ -z ${{CORRAL_HOME:-}} && -z ${{COMMIT_RELAY_HOME:-}} ]]; then export CORRAL_HOME={}; fi",
                shell_quote(&home_abs.display().to_string())
            ));
            text.replace(INSTALL_MARKER, &lines.join("\n"))
        } else {
            text.to_string()
        };
        store::atomic_write(home, &path, text.as_bytes())?;
        let mode = if rel.ends_with(".sh") && !rel.starts_with("lib/") {
            perms::mode_for(false, true, shared)
        } else {
            perms::mode_for(false, false, shared)
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .ctx("chmod", &path)?;
        out.push(path);
    }
    Ok(out)
}

/// Single-quotes a string for bash.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_home_is_private() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::at(d.path().join("h"));
        let r = init(
            &home,
            &InitOptions {
                total_tokens: Some(500),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(r.created && !r.group_shared);
        assert_eq!(mode(home.root()), 0o700);
        assert_eq!(mode(&home.coordination()), 0o700);
        assert_eq!(mode(&home.locks_dir()), 0o700);
        assert_eq!(mode(&home.worker_types_path()), 0o600);
        assert_eq!(mode(&home.budget_path()), 0o600);
        assert_eq!(budget::read(&home).unwrap().total, 500);
        assert!(!perms::group_shared(&home));
    }

    #[test]
    fn force_keeps_config_and_reset_backs_it_up() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::at(d.path().join("h"));
        init(&home, &InitOptions::default()).unwrap();
        std::fs::write(
            home.worker_types_path(),
            r#"{"types": {"mine": {"tokens": 7}}}"#,
        )
        .unwrap();
        let again = init(&home, &InitOptions::default()).unwrap_err();
        assert_eq!(again.exit_code(), 5);
        let r = init(
            &home,
            &InitOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!r.created && r.backups.is_empty());
        assert!(std::fs::read_to_string(home.worker_types_path())
            .unwrap()
            .contains("mine"));
        let r = init(
            &home,
            &InitOptions {
                force: true,
                reset_config: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.backups.len(), 2, "{r:?}");
        let bak = r
            .backups
            .iter()
            .find(|b| b.display().to_string().contains("worker-types.json.bak-"))
            .unwrap();
        assert!(std::fs::read_to_string(bak).unwrap().contains("mine"));
        assert!(!std::fs::read_to_string(home.worker_types_path())
            .unwrap()
            .contains("mine"));
        let r2 = init(
            &home,
            &InitOptions {
                force: true,
                reset_config: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            r2.backups.iter().all(|b| !r.backups.contains(b)),
            "no backup overwritten"
        );
    }

    #[test]
    fn an_unreadable_budget_is_kept_aside_and_rebuilt_from_the_specs() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::at(d.path().join("h"));
        init(&home, &InitOptions::default()).unwrap();
        let mut s =
            crate::spec::WorkerSpec::new("w1".into(), "test-worker".into(), crate::time::now());
        s.token_budget.allocated = 700;
        crate::spec::save(&home, crate::home::StateDir::Active, &s).unwrap();
        std::fs::write(home.budget_path(), "{").unwrap();
        let r = init(
            &home,
            &InitOptions {
                force: true,
                total_tokens: Some(5000),
                ..Default::default()
            },
        )
        .unwrap();
        let bak = r
            .backups
            .iter()
            .find(|b| b.display().to_string().contains("token-budget"))
            .unwrap();
        assert_eq!(std::fs::read_to_string(bak).unwrap(), "{");
        let b = budget::read(&home).unwrap();
        assert_eq!((b.total, b.used, b.available), (5000, 700, 4300));
    }
}
