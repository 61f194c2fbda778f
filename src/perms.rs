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
use crate::home::Home;
use serde::Serialize;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
