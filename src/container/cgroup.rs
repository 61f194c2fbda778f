//! CPU and memory of a container, read from its cgroup. The container's init is only one
//! of its processes, so `/proc/<pid>/stat` of that pid (what direct mode samples) would
//! miss the worker; the cgroup counts every process in the container, and is where the
//! engine enforces `memory_limit`. Reading files is also far cheaper than `ENGINE stats`
//! (one process start per sample). Handles cgroup v1 (this machine kind's layout: one
//! hierarchy per controller) and v2 (unified, alone or beside v1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One reading of a container's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU time of every process in the container, in seconds (cumulative).
    pub cpu_seconds: f64,
    /// Memory in use, less the page cache the kernel can drop (as `ENGINE stats` shows it).
    pub memory_bytes: u64,
    /// The enforced limit, when there is one.
    pub memory_limit_bytes: Option<u64>,
    /// Processes the kernel's OOM killer ended in this container so far. The engine's own
    /// `OOMKilled` flag is not reliable (Podman 4.3 on this machine's cgroup v1 layout leaves
    /// it false even when the worker was OOM-killed), so this counter is how a sampler tells
    /// that the memory limit was hit.
    pub oom_kills: Option<u64>,
}

impl Usage {
    /// Memory in MiB, the unit of the spec's `resources.rss_mb`.
    pub fn memory_mb(&self) -> f64 {
        self.memory_bytes as f64 / (1024.0 * 1024.0)
    }
}

/// The cgroup paths of a process: per v1 controller, and its v2 path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Paths {
    pub v1: BTreeMap<String, String>,
    pub v2: Option<String>,
}

/// Parses `/proc/<pid>/cgroup` (`ID:CONTROLLERS:PATH` per line; v2 is `0::PATH`).
pub fn parse_proc_cgroup(text: &str) -> Paths {
    let mut p = Paths::default();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            p.v2 = Some(path.to_string());
        } else {
            for c in ctrls.split(',') {
                p.v1.insert(c.to_string(), path.to_string());
            }
            // A combined hierarchy is mounted under its joined name (e.g. `cpu,cpuacct`).
            if ctrls.contains(',') {
                p.v1.insert(ctrls.to_string(), path.to_string());
            }
        }
    }
    p
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// A `key value` line of a cgroup stat file (`memory.stat`, `memory.oom_control`, …).
fn stat_key(p: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(p).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// A limit at or above this is "no limit" (cgroup v1 reports a page-rounded `i64::MAX`).
const NO_LIMIT: u64 = 1 << 60;

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

fn v1_dir(root: &Path, paths: &Paths, ctrl: &str) -> Option<PathBuf> {
    let path = paths.v1.get(ctrl)?;
    // Look for the controller's own mount, then a combined one that holds it.
    let mut names = vec![ctrl.to_string()];
    names.extend(
        paths
            .v1
            .keys()
            .filter(|k| k.contains(',') && k.split(',').any(|c| c == ctrl))
            .cloned(),
    );
    names
        .into_iter()
        .map(|n| root.join(n).join(rel(path)))
        .find(|d| d.is_dir())
}

fn v2_dir(root: &Path, paths: &Paths) -> Option<PathBuf> {
    let path = paths.v2.as_deref()?;
    [root.join("unified"), root.to_path_buf()]
        .into_iter()
        .map(|r| r.join(rel(path)))
        .find(|d| d.join("cgroup.procs").exists() && d.join("memory.current").exists())
}

/// Reads the usage of the cgroup described by `paths` under the cgroup mount `root`
/// (normally `/sys/fs/cgroup`). v1 controllers are preferred where they are mounted, since
/// on a hybrid layout the engine puts its limits there.
pub fn usage_at(root: &Path, paths: &Paths) -> Option<Usage> {
    if let Some(mem) = v1_dir(root, paths, "memory") {
        let used = read_u64(&mem.join("memory.usage_in_bytes"))?;
        let cache = stat_key(&mem.join("memory.stat"), "total_inactive_file").unwrap_or(0);
        let limit = read_u64(&mem.join("memory.limit_in_bytes")).filter(|&l| l < NO_LIMIT);
        let cpu_ns = v1_dir(root, paths, "cpuacct")
            .and_then(|d| read_u64(&d.join("cpuacct.usage")))
            .unwrap_or(0);
        return Some(Usage {
            cpu_seconds: cpu_ns as f64 / 1e9,
            memory_bytes: used.saturating_sub(cache),
            memory_limit_bytes: limit,
            oom_kills: stat_key(&mem.join("memory.oom_control"), "oom_kill"),
        });
    }
    let dir = v2_dir(root, paths)?;
    let used = read_u64(&dir.join("memory.current"))?;
    let cache = stat_key(&dir.join("memory.stat"), "inactive_file").unwrap_or(0);
    let limit = std::fs::read_to_string(dir.join("memory.max"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&l: &u64| l < NO_LIMIT);
    let cpu_us = stat_key(&dir.join("cpu.stat"), "usage_usec").unwrap_or(0);
    Some(Usage {
        cpu_seconds: cpu_us as f64 / 1e6,
        memory_bytes: used.saturating_sub(cache),
        memory_limit_bytes: limit,
        oom_kills: stat_key(&dir.join("memory.events"), "oom_kill"),
    })
}

/// The usage of the container whose init has host pid `pid` (from
/// [`Engine::inspect`](super::Engine::inspect)); `None` when it is gone or its cgroup
/// cannot be read.
pub fn sample(pid: i32) -> Option<Usage> {
    if pid <= 1 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    usage_at(Path::new("/sys/fs/cgroup"), &parse_proc_cgroup(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn proc_cgroup_parses_v1_combined_and_v2() {
        let p = parse_proc_cgroup(
            "9:name=systemd:/x\n4:memory:/libpod_parent/libpod-1\n2:cpu,cpuacct:/libpod_parent/libpod-1\n0::/libpod_parent/libpod-1\nbroken\n",
        );
        assert_eq!(p.v1["memory"], "/libpod_parent/libpod-1");
        assert_eq!(p.v1["cpuacct"], "/libpod_parent/libpod-1");
        assert!(p.v1.contains_key("cpu,cpuacct"));
        assert_eq!(p.v2.as_deref(), Some("/libpod_parent/libpod-1"));
    }

    #[test]
    fn v1_usage_subtracts_cache_and_reads_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let c = "libpod_parent/libpod-1";
        write(
            &root.join("memory").join(c).join("memory.usage_in_bytes"),
            "10485760\n",
        );
        write(
            &root.join("memory").join(c).join("memory.stat"),
            "cache 1\ntotal_inactive_file 2097152\n",
        );
        write(
            &root.join("memory").join(c).join("memory.limit_in_bytes"),
            "67108864\n",
        );
        write(
            &root.join("cpu,cpuacct").join(c).join("cpuacct.usage"),
            "1500000000\n",
        );
        write(
            &root.join("memory").join(c).join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        let paths = parse_proc_cgroup(&format!("4:memory:/{c}\n2:cpu,cpuacct:/{c}\n"));
        let u = usage_at(root, &paths).unwrap();
        assert_eq!(u.memory_bytes, 8 * 1024 * 1024);
        assert_eq!(u.memory_limit_bytes, Some(64 * 1024 * 1024));
        assert!((u.cpu_seconds - 1.5).abs() < 1e-9);
        assert!((u.memory_mb() - 8.0).abs() < 1e-9);
        assert_eq!(u.oom_kills, Some(2));
        // No limit set: v1 reports a huge number.
        write(
            &root.join("memory").join(c).join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        assert_eq!(usage_at(root, &paths).unwrap().memory_limit_bytes, None);
    }

    #[test]
    fn v2_usage_on_a_unified_hierarchy() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("machine.slice/libpod-2");
        write(&dir.join("cgroup.procs"), "1\n");
        write(&dir.join("memory.current"), "4194304\n");
        write(&dir.join("memory.stat"), "anon 1\ninactive_file 1048576\n");
        write(&dir.join("memory.max"), "max\n");
        write(&dir.join("cpu.stat"), "usage_usec 250000\nuser_usec 1\n");
        write(
            &dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        let u = usage_at(d.path(), &parse_proc_cgroup("0::/machine.slice/libpod-2\n")).unwrap();
        assert_eq!(u.memory_bytes, 3 * 1024 * 1024);
        assert_eq!(u.memory_limit_bytes, None);
        assert!((u.cpu_seconds - 0.25).abs() < 1e-9);
        assert_eq!(u.oom_kills, Some(1));
        assert_eq!(usage_at(d.path(), &parse_proc_cgroup("0::/gone\n")), None);
    }

    #[test]
    fn no_container_no_sample() {
        assert_eq!(sample(0), None);
        assert_eq!(sample(1), None);
        assert_eq!(sample(i32::MAX), None);
    }
}
