//! Who may read and write a home (DESIGN §10, the trust model). Whoever can write the home
//! can run commands as the monitor's user (worker-types commands, `alert_command`,
//! restarts), and specs, tasks and logs may hold secrets, so a home belongs to one user or
//! to one group:
//!
//! - **private** (the default): directories `0700`, files `0600`;
//! - **group-shared** (`corral init --group G`): directories `2770` (setgid, so everything
//!   created inside keeps the group), files `0660`, all owned by group G.
//!
//! A home is group-shared when its `coordination/` directory has the setgid bit and group
//! write; the rest of corral reads that to choose the modes of what it writes.
//! [`exposed`] finds what users outside the owner and group can reach, for `corral doctor`.

use crate::error::{Error, IoContext, Result};
use crate::home::{Home, Modes, PRIVATE, SHARED};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Directory mode of a private home.
pub const PRIVATE_DIR: u32 = 0o700;
/// File mode of a private home.
pub const PRIVATE_FILE: u32 = 0o600;
/// Directory mode of a group-shared home (setgid).
pub const SHARED_DIR: u32 = 0o2770;
/// File mode of a group-shared home.
pub const SHARED_FILE: u32 = 0o660;

/// True when the home is group-shared (see the module docs).
pub fn group_shared(home: &Home) -> bool {
    std::fs::metadata(home.coordination())
        .map(|m| m.mode() & 0o2020 == 0o2020)
        .unwrap_or(false)
}

/// The mode for a directory, or for a file (`executable` keeps scripts runnable).
pub fn mode_for(is_dir: bool, executable: bool, shared: bool) -> u32 {
    match (is_dir || executable, shared) {
        (true, false) => PRIVATE_DIR,
        (true, true) if is_dir => SHARED_DIR,
        (true, true) => 0o770,
        (false, false) => PRIVATE_FILE,
        (false, true) => SHARED_FILE,
    }
}

/// The modes of what corral creates in `home`: decided by the home itself (its
/// `coordination/` directory), never by the umask of the process that writes. Every write
/// path of the task queue creates through [`mkdir`], [`mkdir_all`] and [`create`] with these.
pub fn modes(home: &Home) -> Modes {
    if group_shared(home) {
        SHARED
    } else {
        PRIVATE
    }
}

/// `mkdir` of one directory with the directory mode of `m`. The umask strips group bits from
/// mkdir's mode, so in a shared home the mode is set explicitly after. Errors are the
/// kernel's (`AlreadyExists`, `NotFound` for a missing parent) for the caller to judge.
pub fn mkdir(path: &Path, m: Modes) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(m.dir & 0o777)
        .create(path)?;
    if m != PRIVATE {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m.dir))?;
    }
    Ok(())
}

/// [`mkdir`] of `path` and of any missing parent; an existing directory is fine.
pub fn mkdir_all(path: &Path, m: Modes) -> Result<()> {
    match mkdir(path, m) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(parent) => mkdir_all(parent, m)?,
                None => return Err(Error::io(format!("cannot create {}", path.display()), e)),
            }
            match mkdir(path, m) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
                Err(e) => Err(Error::io(format!("cannot create {}", path.display()), e)),
            }
        }
        Err(e) => Err(Error::io(format!("cannot create {}", path.display()), e)),
    }
}

/// Opens `path` with `opts` (which create it, or may), with the file mode of `m`. In a
/// shared home the umask's cut of the group bits is undone on the open file (only the
/// owner can: for anyone else a file already there keeps its mode).
pub fn create(opts: &mut OpenOptions, path: &Path, m: Modes) -> std::io::Result<File> {
    let f = opts.mode(m.file).open(path)?;
    if m != PRIVATE {
        let meta = f.metadata()?;
        if meta.mode() & 0o7777 != m.file && meta.uid() == rustix::process::geteuid().as_raw() {
            f.set_permissions(std::fs::Permissions::from_mode(m.file))?;
        }
    }
    Ok(f)
}

/// Creates (or truncates) `path` holding `bytes`, with the file mode of `m`: the queue's
/// marker files.
pub fn write_file(path: &Path, bytes: &[u8], m: Modes) -> Result<()> {
    use std::io::Write;
    let mut f = create(
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW),
        path,
        m,
    )
    .ctx("write", path)?;
    f.write_all(bytes).ctx("write", path)
}

/// A file or directory whose mode (or, in a shared home, group) is not the home's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Mismatch {
    pub path: PathBuf,
    pub is_dir: bool,
    pub mode: u32,
    /// The mode the home gives it.
    pub want: u32,
    /// Its group when a shared home's group is wanted and it has another.
    pub gid: Option<u32>,
}

/// Everything under `root` (itself included; symlinks skipped, other checks refuse them)
/// whose mode is wider or narrower than the home's, or that is not in the home's group in a
/// shared home. O(entries): for an operator's command.
pub fn mismatched(home: &Home, root: &Path) -> Vec<Mismatch> {
    let m = modes(home);
    let group = if m == SHARED {
        std::fs::metadata(home.coordination()).ok().map(|c| c.gid())
    } else {
        None
    };
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if e.file_type().is_symlink() {
            continue;
        }
        let Ok(meta) = e.metadata() else {
            continue;
        };
        let want = if meta.is_dir() { m.dir } else { m.file };
        let mode = meta.mode() & 0o7777;
        let gid = group.filter(|g| *g != meta.gid()).map(|_| meta.gid());
        if mode != want || gid.is_some() {
            out.push(Mismatch {
                path: e.path().to_path_buf(),
                is_dir: meta.is_dir(),
                mode,
                want,
                gid,
            });
        }
    }
    out
}

/// Gives a [`Mismatch`] the home's mode (and group), never following a symlink.
pub fn repair(home: &Home, x: &Mismatch) -> Result<()> {
    let meta = std::fs::symlink_metadata(&x.path).ctx("stat", &x.path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if x.gid.is_some() {
        let g = std::fs::metadata(home.coordination())
            .ctx("stat", &home.coordination())?
            .gid();
        std::os::unix::fs::lchown(&x.path, None, Some(g)).ctx("change the group of", &x.path)?;
    }
    std::fs::set_permissions(&x.path, std::fs::Permissions::from_mode(x.want)).ctx("chmod", &x.path)
}

/// Resolves a group name (or a numeric gid) to a gid; exit 6 when there is no such group.
pub fn lookup_group(name: &str) -> Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let cname = std::ffi::CString::new(name)
        .map_err(|_| Error::Invalid(format!("invalid group name {name:?}")))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `grp` and `buf` outlive the call; getgrnam_r writes only into them and
        // sets `result` to null or to `&grp`.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(Error::io(
                format!("cannot look up group {name}"),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        if result.is_null() {
            return Err(Error::Invalid(format!("no such group: {name}")));
        }
        return Ok(grp.gr_gid);
    }
}

/// Sets the mode (and group) of one path, never following a symlink.
pub fn apply(path: &Path, shared: bool, gid: Option<u32>) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).ctx("stat", path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if let Some(g) = gid {
        std::os::unix::fs::lchown(path, None, Some(g)).ctx("change the group of", path)?;
    }
    let mode = mode_for(meta.is_dir(), meta.mode() & 0o111 != 0, shared);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).ctx("chmod", path)
}

/// [`apply`] to `root` and everything under it (symlinks are left alone).
pub fn apply_tree(root: &Path, shared: bool, gid: Option<u32>) -> Result<u64> {
    let mut n = 0;
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.map_err(|e| Error::Internal(format!("cannot walk {}: {e}", root.display())))?;
        if e.file_type().is_symlink() {
            continue;
        }
        apply(e.path(), shared, gid)?;
        n += 1;
    }
    Ok(n)
}

/// Something users outside the owner (and the home's group) can reach.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Exposure {
    pub path: PathBuf,
    pub mode: u32,
    /// What others can do: `write`, `read`, `enter`.
    pub others_can: Vec<&'static str>,
}

fn others(mode: u32, is_dir: bool) -> Vec<&'static str> {
    let mut v = Vec::new();
    if mode & 0o002 != 0 {
        v.push("write");
    }
    if mode & 0o004 != 0 {
        v.push("read");
    }
    if is_dir && mode & 0o001 != 0 {
        v.push("enter");
    }
    v
}

/// What others can reach. The home directory itself is only reported when others can write
/// it (its listing holds no secrets); below it, the topmost entry that others can read,
/// write or enter is reported and not descended into (closing it closes everything below,
/// and a closed directory hides its contents whatever their modes).
pub fn exposed(home: &Home) -> Result<Vec<Exposure>> {
    let root = home.root();
    let meta = std::fs::metadata(root).ctx("stat", root)?;
    let mut out = Vec::new();
    if meta.mode() & 0o002 != 0 {
        out.push(Exposure {
            path: root.to_path_buf(),
            mode: meta.mode() & 0o7777,
            others_can: vec!["write"],
        });
    }
    if meta.mode() & 0o001 == 0 {
        return Ok(out);
    }
    // Only the home's own entries need a look: one that others can reach is reported (and
    // closing it closes everything below); one they cannot reach hides what it holds.
    let rd = std::fs::read_dir(root).ctx("list", root)?;
    for e in rd.flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if m.file_type().is_symlink() {
            continue;
        }
        let can = others(m.mode(), m.is_dir());
        if !can.is_empty() {
            out.push(Exposure {
                path: e.path(),
                mode: m.mode() & 0o7777,
                others_can: can,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Removes every permission of others from `path` (the home itself: only write).
pub fn close(home: &Home, e: &Exposure) -> Result<()> {
    let keep = if e.path == home.root() {
        e.mode & !0o002
    } else {
        e.mode & !0o007
    };
    std::fs::set_permissions(&e.path, std::fs::Permissions::from_mode(keep)).ctx("chmod", &e.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn modes_follow_the_sharing() {
        assert_eq!(mode_for(true, false, false), 0o700);
        assert_eq!(mode_for(false, false, false), 0o600);
        assert_eq!(mode_for(false, true, false), 0o700);
        assert_eq!(mode_for(true, false, true), 0o2770);
        assert_eq!(mode_for(false, false, true), 0o660);
        assert_eq!(mode_for(false, true, true), 0o770);
    }

    #[test]
    fn groups_resolve_by_name_and_number() {
        assert_eq!(lookup_group("0").unwrap(), 0);
        assert_eq!(lookup_group("root").unwrap(), 0);
        assert_eq!(
            lookup_group("no-such-group-corral")
                .unwrap_err()
                .exit_code(),
            6
        );
    }

    #[test]
    fn only_what_others_can_reach_is_reported() {
        let (_d, home) = crate::home::test_home();
        let root = home.root();
        chmod(root, 0o700);
        chmod(&home.coordination(), 0o755);
        assert!(
            exposed(&home).unwrap().is_empty(),
            "a closed home hides all"
        );
        chmod(root, 0o755);
        let found = exposed(&home).unwrap();
        let paths: Vec<&Path> = found.iter().map(|e| e.path.as_path()).collect();
        assert!(paths.contains(&home.coordination().as_path()), "{found:?}");
        assert!(
            !paths
                .iter()
                .any(|p| p.starts_with(home.coordination()) && *p != home.coordination()),
            "nothing below an open directory is listed: {found:?}"
        );
        for e in &found {
            close(&home, e).unwrap();
        }
        assert!(exposed(&home).unwrap().is_empty());
        chmod(root, 0o757);
        let found = exposed(&home).unwrap();
        assert_eq!(found[0].path, root);
        close(&home, &found[0]).unwrap();
        let m = std::fs::metadata(root).unwrap().mode() & 0o777;
        assert_eq!(m, 0o755, "the home keeps others' read and enter");
    }
}
