//! Reading a class's pending tasks in claim order, with bounded memory: one sorted listing
//! per bucket level is held at a time (at most ~1,000 names each), plus the flat files of a
//! home written before buckets existed, merged in by name. `list`, `stats`, the recount,
//! the doctor check and lookups by id all read the tree through [`ClassWalk`].

use super::layout::{
    self, class_dir, is_l1, is_sub_bucket, parse_lenient, parse_pending_name, sort_key,
};
use crate::error::Result;
use crate::home::Home;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// One pending task file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The 20-digit name it sorts by (its own name unless hand-written).
    pub key: String,
    pub path: PathBuf,
    pub prio: u8,
    pub ns: u64,
    pub task_id: String,
}

impl Entry {
    fn of(key: String, path: PathBuf) -> Option<Entry> {
        let p = parse_pending_name(&key)?;
        Some(Entry {
            prio: p.prio,
            ns: p.ns,
            task_id: p.task_id.to_string(),
            key,
            path,
        })
    }
}

/// Something in a class tree that is not a task file where a task file belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    pub path: PathBuf,
    pub why: String,
    /// A file in a bucket (quarantinable), rather than a directory or a flat-level oddity.
    pub in_bucket: bool,
}

/// Walks one class in claim order.
pub struct ClassWalk {
    flat: VecDeque<(String, String)>,
    dir: PathBuf,
    /// The listings of the current `<P>-<T1>`, `<T2>` and `<T3>` directories (their
    /// subdirectories, then the task files), with each directory's path and whether it had
    /// entries.
    stack: Vec<(PathBuf, VecDeque<String>, bool)>,
    l1: VecDeque<String>,
    pending: Option<Entry>,
    /// Things found along the way that are not tasks (for the doctor and the claimers).
    pub strays: Vec<Stray>,
    prune: bool,
}

impl ClassWalk {
    /// A walk over `class`, optionally only priorities `prio..` and removing empty bucket
    /// directories it passes (`prune`).
    pub fn new(home: &Home, class: &str, from_prio: u8, prune: bool) -> Result<ClassWalk> {
        let dir = class_dir(home, class);
        let mut l1 = Vec::new();
        let mut flat = Vec::new();
        let mut strays = Vec::new();
        for n in layout::list_names(&dir)? {
            if is_l1(&n) {
                if n.as_bytes()[0] - b'0' >= from_prio {
                    l1.push(n);
                }
            } else if n.ends_with(".json") {
                match (parse_lenient(&n), sort_key(&n)) {
                    (Some(p), Some(k)) => {
                        if p.prio >= from_prio {
                            flat.push((k, n));
                        }
                    }
                    _ => strays.push(Stray {
                        path: dir.join(&n),
                        why: "not a task file name (<prio>-<ns>-<task_id>.json)".into(),
                        in_bucket: false,
                    }),
                }
            } else if !n.starts_with('.') {
                strays.push(Stray {
                    path: dir.join(&n),
                    why: "neither a bucket directory nor a task file".into(),
                    in_bucket: false,
                });
            }
        }
        l1.sort_unstable();
        flat.sort_unstable();
        Ok(ClassWalk {
            flat: flat.into(),
            dir,
            stack: Vec::new(),
            l1: l1.into(),
            pending: None,
            strays,
            prune,
        })
    }

    /// The next bucketed file, depth first.
    fn next_bucketed(&mut self) -> Result<Option<Entry>> {
        loop {
            let depth = self.stack.len();
            if depth == 0 {
                let Some(b) = self.l1.pop_front() else {
                    return Ok(None);
                };
                self.push(self.dir.join(b), 1)?;
                continue;
            }
            let (dir, names, _) = &mut self.stack[depth - 1];
            let Some(n) = names.pop_front() else {
                if let Some((dir, _, used)) = self.stack.pop() {
                    if self.prune {
                        layout::retire_bucket(&dir, used);
                    }
                }
                continue;
            };
            let path = dir.join(&n);
            if depth == 3 {
                match Entry::of(n.clone(), path.clone()) {
                    Some(e) => return Ok(Some(e)),
                    None => self.strays.push(Stray {
                        path,
                        why: "not a task file name (<prio>-<ns:020>-<task_id>.json)".into(),
                        in_bucket: true,
                    }),
                }
                continue;
            }
            self.push(path, depth + 1)?;
        }
    }

    fn push(&mut self, dir: PathBuf, level: usize) -> Result<()> {
        let mut names = Vec::new();
        for n in layout::list_names(&dir)? {
            if level == 3 || is_sub_bucket(level - 1, &n) {
                names.push(n);
            } else {
                self.strays.push(Stray {
                    path: dir.join(&n),
                    why: "not a bucket directory".into(),
                    in_bucket: false,
                });
            }
        }
        names.sort_unstable();
        let used = !names.is_empty();
        self.stack.push((dir, names.into(), used));
        Ok(())
    }

    /// The next task in claim order.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.pending.is_none() {
            self.pending = self.next_bucketed()?;
        }
        let take_flat = match (&self.pending, self.flat.front()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(b), Some((k, _))) => k < &b.key,
        };
        if take_flat {
            if let Some((k, n)) = self.flat.pop_front() {
                return Ok(Entry::of(k, self.dir.join(n)));
            }
        }
        Ok(self.pending.take())
    }
}

impl Iterator for ClassWalk {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

/// Number of pending tasks of a class (names only).
pub fn count_pending(home: &Home, class: &str) -> Result<u64> {
    let mut n = 0u64;
    for e in ClassWalk::new(home, class, 0, false)? {
        e?;
        n += 1;
    }
    Ok(n)
}

/// The first task of each priority of a class: `[critical, high, medium, low]`. Cost: four
/// short walks, whatever the queue's length.
pub fn heads(home: &Home, class: &str) -> Result<[Option<Entry>; 4]> {
    let mut out: [Option<Entry>; 4] = Default::default();
    let mut prio = 0u8;
    while prio < 4 {
        let mut w = ClassWalk::new(home, class, prio, false)?;
        match w.next_entry()? {
            Some(e) => {
                let p = e.prio;
                out[p as usize] = Some(e);
                prio = p + 1;
            }
            None => break,
        }
    }
    Ok(out)
}

/// Finds a pending task by id: the hint kept for explicit ids, else a walk of every class
/// (names only). Returns the path.
pub fn find_pending(home: &Home, id: &str) -> Result<Option<PathBuf>> {
    if let Some(p) = super::ids::hint(home, id) {
        if p.exists() {
            return Ok(Some(p));
        }
    }
    for class in layout::classes(home)? {
        for e in ClassWalk::new(home, &class, 0, false)? {
            let e = e?;
            if e.task_id == id {
                return Ok(Some(e.path));
            }
        }
    }
    Ok(None)
}

/// The class a pending path belongs to (its directory under `pending/`).
pub fn class_of(home: &Home, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(layout::pending_root(home)).ok()?;
    rel.components()
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .map(str::to_string)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::Priority;

    /// Places an empty pending file of `class` in its bucket (shared with the index tests).
    pub(crate) fn put(home: &Home, class: &str, prio: Priority, ns: u64, id: &str) -> PathBuf {
        let dir = layout::leaf_dir(home, class, prio.rank(), ns);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(layout::pending_name(prio, ns, id));
        std::fs::write(&p, "{}").unwrap();
        p
    }

    #[test]
    fn walks_buckets_and_flat_files_in_name_order() {
        let (_d, h) = crate::home::test_home();
        let base = 1_764_000_000_000_000_000u64;
        put(&h, "c", Priority::Low, base, "low");
        put(&h, "c", Priority::High, base + 5_000_000_000_000, "h3");
        put(&h, "c", Priority::High, base + 1, "h1");
        put(&h, "c", Priority::High, base + 2_000_000, "h2");
        put(&h, "c", Priority::Critical, base + 9, "c1");
        let flat = class_dir(&h, "c");
        std::fs::write(flat.join("1-1764000000000000500-old.json"), "{}").unwrap();
        std::fs::write(flat.join("junk.json"), "{}").unwrap();
        std::fs::write(flat.join(".paused"), "{}").unwrap();
        let leaf = layout::leaf_dir(&h, "c", 1, base + 1);
        std::fs::write(leaf.join("stray.tmp"), "").unwrap();
        let mut w = ClassWalk::new(&h, "c", 0, false).unwrap();
        let ids: Vec<String> = w.by_ref().map(|e| e.unwrap().task_id).collect();
        assert_eq!(ids, ["c1", "h1", "old", "h2", "h3", "low"]);
        let strays: Vec<String> = w
            .strays
            .iter()
            .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(strays.contains(&"junk.json".to_string()), "{strays:?}");
        assert!(strays.contains(&"stray.tmp".to_string()), "{strays:?}");
        assert_eq!(count_pending(&h, "c").unwrap(), 6);
        let hd = heads(&h, "c").unwrap();
        assert_eq!(hd[0].as_ref().unwrap().task_id, "c1");
        assert_eq!(hd[1].as_ref().unwrap().task_id, "h1");
        assert!(hd[2].is_none());
        assert_eq!(hd[3].as_ref().unwrap().task_id, "low");
        assert!(find_pending(&h, "h2").unwrap().is_some());
        assert!(find_pending(&h, "nope").unwrap().is_none());
    }

    #[test]
    fn pruning_removes_empty_buckets() {
        let (_d, h) = crate::home::test_home();
        let p = put(&h, "c", Priority::High, 1_764_000_000_000_000_000, "x");
        std::fs::remove_file(&p).unwrap();
        assert_eq!(count_pending(&h, "c").unwrap(), 0);
        assert!(p.parent().unwrap().exists());
        // Young empty buckets are left alone (an enqueuer may be about to use them).
        let w = ClassWalk::new(&h, "c", 0, true).unwrap();
        assert_eq!(w.count(), 0);
        assert!(p.parent().unwrap().exists());
        layout::age_dirs(&class_dir(&h, "c"));
        let w = ClassWalk::new(&h, "c", 0, true).unwrap();
        assert_eq!(w.count(), 0);
        assert!(layout::list_names(&class_dir(&h, "c")).unwrap().is_empty());
    }
}
