//! A claimer's view of the pending tasks, kept current incrementally.
//!
//! For each class it holds the first-level bucket names and the flat files of an old home,
//! and — only along the head of each priority — the listings of the second-level, third-level
//! and leaf directories, each with an inotify watch. An arrival or departure in a watched
//! directory edits one set; nothing is listed again. So a claim costs the same whether 1,000
//! or 1,000,000 tasks wait, and memory and watches stay bounded (four directories per
//! priority per class). Directories off the head are read when the head reaches them; an
//! arrival there sorts after the head, so nothing is missed by not watching them.
//!
//! Without a watcher (a one-shot `claim`), the view is built afresh for each claim, which
//! reads at most four small directories per priority.

use super::layout::{
    self, class_dir, is_l1, is_sub_bucket, parse_lenient, parse_pending_name, sort_key,
};
use super::watch::{FsEvent, Watcher};
use crate::error::Result;
use crate::home::Home;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

#[derive(Debug, Default)]
struct Node {
    wd: Option<i32>,
    children: BTreeSet<String>,
    /// Found empty but young: not looked at again before this (see `retire`).
    skip_until: Option<std::time::Instant>,
    /// It held entries at some point: fully made, so it may go as soon as it is empty.
    used: bool,
}

#[derive(Debug)]
struct ClassView {
    name: String,
    dir: PathBuf,
    loaded: bool,
    wd: Option<i32>,
    paused: bool,
    l1: BTreeSet<String>,
    flat: BTreeMap<String, String>,
    /// Listed bucket directories: `"<P>-<T1>"`, `"<P>-<T1>/<T2>"`, `"<P>-<T1>/<T2>/<T3>"`.
    nodes: HashMap<String, Node>,
}

/// What a watch descriptor watches.
#[derive(Debug, Clone)]
enum Watched {
    Root,
    Class(usize),
    Node(usize, String),
}

/// The next task of a class, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The 20-digit name it sorts by.
    pub key: String,
    pub path: PathBuf,
    pub class: usize,
    pub prio: u8,
    pub ns: u64,
    /// The leaf (`None` for a flat file) whose listing holds it.
    leaf: Option<String>,
}

/// The view of all classes a claimer may take from.
pub struct Index {
    home: Home,
    classes: Vec<ClassView>,
    wds: HashMap<i32, Watched>,
    root_wd: Option<i32>,
    /// Names in buckets that are not task names (for quarantine by the claimer).
    pub strays: Vec<PathBuf>,
}

impl ClassView {
    fn new(home: &Home, name: &str) -> ClassView {
        ClassView {
            name: name.to_string(),
            dir: class_dir(home, name),
            loaded: false,
            wd: None,
            paused: false,
            l1: BTreeSet::new(),
            flat: BTreeMap::new(),
            nodes: HashMap::new(),
        }
    }
}

fn upper(p: u8) -> String {
    format!("{p}-~")
}

impl Index {
    /// A view over `classes` (more are added with [`Index::add_class`]).
    pub fn new(home: &Home, classes: &[String]) -> Index {
        Index {
            home: home.clone(),
            classes: classes.iter().map(|c| ClassView::new(home, c)).collect(),
            wds: HashMap::new(),
            root_wd: None,
            strays: Vec::new(),
        }
    }

    /// The class names, in the order given.
    pub fn class_names(&self) -> impl Iterator<Item = &str> {
        self.classes.iter().map(|c| c.name.as_str())
    }

    /// Number of classes in the view.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// True when the view has no class.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The name of class `i`.
    pub fn class_name(&self, i: usize) -> &str {
        &self.classes[i].name
    }

    /// Adds a class (found under `pending/`); returns its index.
    pub fn add_class(&mut self, name: &str) -> usize {
        if let Some(i) = self.classes.iter().position(|c| c.name == name) {
            return i;
        }
        self.classes.push(ClassView::new(&self.home, name));
        self.classes.len() - 1
    }

    /// Watches `pending/` itself, to learn of new classes.
    pub fn watch_root(&mut self, w: &Watcher) -> Result<()> {
        if self.root_wd.is_none() {
            let root = layout::pending_root(&self.home);
            crate::perms::mkdir_all(&root, crate::perms::modes(&self.home))?;
            if let Some(wd) = w.watch_dir(&root)? {
                self.root_wd = Some(wd);
                self.wds.insert(wd, Watched::Root);
            }
        }
        Ok(())
    }

    /// Forgets everything (after lost events, or before a claim without a watcher).
    pub fn reset(&mut self, w: Option<&Watcher>) {
        let root = self.root_wd;
        if let Some(w) = w {
            for wd in self.wds.keys() {
                if Some(*wd) != root {
                    w.unwatch(*wd);
                }
            }
        }
        self.wds.retain(|wd, _| Some(*wd) == root);
        for c in &mut self.classes {
            c.loaded = false;
            c.wd = None;
            c.l1.clear();
            c.flat.clear();
            c.nodes.clear();
            c.paused = false;
        }
    }

    fn load_class(&mut self, ci: usize, w: Option<&Watcher>) -> Result<()> {
        if self.classes[ci].loaded {
            return Ok(());
        }
        let dir = self.classes[ci].dir.clone();
        if let Some(w) = w {
            if self.classes[ci].wd.is_none() {
                if let Some(wd) = w.watch_dir(&dir)? {
                    self.classes[ci].wd = Some(wd);
                    self.wds.insert(wd, Watched::Class(ci));
                }
            }
        }
        let names = layout::list_names(&dir)?;
        let c = &mut self.classes[ci];
        c.l1.clear();
        c.flat.clear();
        c.paused = false;
        for n in names {
            Self::class_entry(c, n);
        }
        // Without a watch on a class that does not exist yet, it is looked at again next time.
        c.loaded = w.is_none() || c.wd.is_some();
        Ok(())
    }

    fn class_entry(c: &mut ClassView, n: String) {
        if is_l1(&n) {
            c.l1.insert(n);
        } else if n == layout::PAUSED_MARKER {
            c.paused = true;
        } else if n.ends_with(".json") {
            if let Some(k) = sort_key(&n) {
                c.flat.insert(k, n);
            }
        }
    }

    fn load_node(&mut self, ci: usize, rel: &str, w: Option<&Watcher>) -> Result<bool> {
        if self.classes[ci].nodes.contains_key(rel) {
            return Ok(true);
        }
        let dir = self.classes[ci].dir.join(rel);
        let mut node = Node::default();
        if let Some(w) = w {
            match w.watch_dir(&dir)? {
                Some(wd) => {
                    node.wd = Some(wd);
                    self.wds.insert(wd, Watched::Node(ci, rel.to_string()));
                }
                None => return Ok(false),
            }
        }
        let leaf = rel.matches('/').count() == 2;
        for n in layout::list_names(&dir)? {
            if leaf {
                if parse_pending_name(&n).is_some() {
                    node.children.insert(n);
                } else {
                    self.strays.push(dir.join(&n));
                }
            } else if is_sub_bucket(rel.matches('/').count(), &n) {
                node.children.insert(n);
            }
        }
        node.used = !node.children.is_empty();
        self.classes[ci].nodes.insert(rel.to_string(), node);
        Ok(true)
    }

    fn drop_node(&mut self, ci: usize, rel: &str, w: Option<&Watcher>) {
        let c = &mut self.classes[ci];
        let prefix = format!("{rel}/");
        let gone: Vec<String> = c
            .nodes
            .keys()
            .filter(|k| *k == rel || k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in gone {
            if let Some(n) = c.nodes.remove(&k) {
                if let Some(wd) = n.wd {
                    self.wds.remove(&wd);
                    if let Some(w) = w {
                        w.unwatch(wd);
                    }
                }
            }
        }
    }

    /// Removes an empty bucket directory from disk and from the view, unless it is young
    /// (then it is skipped, without a syscall, until it may be removed). Returns false when
    /// it stays: a watched node stays watched (an arrival's event brings the claimer back);
    /// an unwatched one that turned out not to be empty is dropped, so the caller reads it
    /// again.
    fn retire(&mut self, ci: usize, rel: &str, w: Option<&Watcher>) -> bool {
        if let Some(t) = self.classes[ci].nodes.get(rel).and_then(|n| n.skip_until) {
            if std::time::Instant::now() < t {
                return false;
            }
        }
        let dir = self.classes[ci].dir.join(rel);
        let used = self.classes[ci].nodes.get(rel).is_some_and(|n| n.used);
        match layout::retire_bucket(&dir, used) {
            layout::Retired::Removed => {}
            layout::Retired::Young(left) => {
                if let Some(n) = self.classes[ci].nodes.get_mut(rel) {
                    n.skip_until = Some(std::time::Instant::now() + left);
                }
                return false;
            }
            layout::Retired::Kept => {
                if w.is_none() {
                    self.drop_node(ci, rel, w);
                    return false;
                }
                // Not empty: the arrival's event is on its way; until then skip it briefly.
                if let Some(n) = self.classes[ci].nodes.get_mut(rel) {
                    n.skip_until =
                        Some(std::time::Instant::now() + std::time::Duration::from_millis(100));
                }
                return false;
            }
        }
        self.drop_node(ci, rel, w);
        let c = &mut self.classes[ci];
        match rel.rsplit_once('/') {
            None => {
                c.l1.remove(rel);
            }
            Some((parent, name)) => {
                if let Some(p) = c.nodes.get_mut(parent) {
                    p.children.remove(name);
                }
            }
        }
        true
    }

    /// The first task under bucket directory `rel` (depth first, in name order), retiring
    /// the empty directories it passes.
    fn first_in(&mut self, ci: usize, rel: &str, w: Option<&Watcher>) -> Result<Option<Head>> {
        use std::ops::Bound::{Excluded, Unbounded};
        if !self.load_node(ci, rel, w)? {
            return Ok(None);
        }
        let leaf = rel.matches('/').count() == 2;
        let mut prev: Option<String> = None;
        let mut rereads = 0;
        loop {
            let next = {
                let Some(node) = self.classes[ci].nodes.get(rel) else {
                    return Ok(None);
                };
                match &prev {
                    None => node.children.iter().next(),
                    Some(p) => node.children.range((Excluded(p.clone()), Unbounded)).next(),
                }
                .cloned()
            };
            let Some(child) = next else {
                return Ok(None);
            };
            if leaf {
                if let Some(p) = parse_pending_name(&child) {
                    return Ok(Some(Head {
                        path: self.classes[ci].dir.join(rel).join(&child),
                        key: child.clone(),
                        class: ci,
                        prio: p.prio,
                        ns: p.ns,
                        leaf: Some(rel.to_string()),
                    }));
                }
                prev = Some(child);
                continue;
            }
            let sub = format!("{rel}/{child}");
            if let Some(h) = self.first_in(ci, &sub, w)? {
                return Ok(Some(h));
            }
            if !self.retire(ci, &sub, w) && w.is_none() && rereads < 3 {
                rereads += 1;
                continue;
            }
            rereads = 0;
            prev = Some(child);
        }
    }

    /// The first task of priority `prio` in class `ci`: descends the first bucket of that
    /// priority, retiring empty directories on the way, and compares with the flat files.
    fn head_of(&mut self, ci: usize, prio: u8, w: Option<&Watcher>) -> Result<Option<Head>> {
        use std::ops::Bound::{Excluded, Included};
        let lo = format!("{prio}-");
        let hi = upper(prio);
        let mut bucketed: Option<Head> = None;
        let mut prev: Option<String> = None;
        let mut rereads = 0;
        loop {
            let next = {
                let l1 = &self.classes[ci].l1;
                match &prev {
                    None => l1
                        .range((Included(lo.clone()), Excluded(hi.clone())))
                        .next(),
                    Some(p) => l1.range((Excluded(p.clone()), Excluded(hi.clone()))).next(),
                }
                .cloned()
            };
            let Some(b1) = next else { break };
            if let Some(h) = self.first_in(ci, &b1, w)? {
                bucketed = Some(h);
                break;
            }
            if !self.retire(ci, &b1, w) && w.is_none() && rereads < 3 {
                rereads += 1;
                continue;
            }
            rereads = 0;
            prev = Some(b1);
        }
        let c = &self.classes[ci];
        let flat = c.flat.range(lo..hi).next().and_then(|(k, n)| {
            let p = parse_lenient(n)?;
            Some(Head {
                key: k.clone(),
                path: c.dir.join(n),
                class: ci,
                prio: p.prio,
                ns: p.ns,
                leaf: None,
            })
        });
        Ok(match (bucketed, flat) {
            (Some(b), Some(f)) => Some(if f.key < b.key { f } else { b }),
            (b, f) => b.or(f),
        })
    }

    /// The claimable head of class `ci` at `now_ns`: the first priority whose first task is
    /// due. Also returns the earliest time a not-yet-due head becomes due.
    pub fn class_head(
        &mut self,
        ci: usize,
        now_ns: u64,
        w: Option<&Watcher>,
    ) -> Result<(Option<Head>, Option<u64>)> {
        self.load_class(ci, w)?;
        if self.classes[ci].paused {
            return Ok((None, None));
        }
        let mut due: Option<u64> = None;
        for p in 0..4u8 {
            if let Some(h) = self.head_of(ci, p, w)? {
                if h.ns <= now_ns {
                    return Ok((Some(h), due));
                }
                due = Some(due.map_or(h.ns, |d| d.min(h.ns)));
            }
        }
        Ok((None, due))
    }

    /// A claimable task at a random place among the next `leaves` leaf directories after
    /// the head (same priority and second) and the first `per_leaf` tasks of that leaf: where
    /// a claimer that keeps losing races starts instead of the head, so that concurrent
    /// claimers spread over the order. `None` when there is nowhere else to start.
    pub fn spread_pick(
        &mut self,
        head: &Head,
        leaves: usize,
        per_leaf: usize,
        now_ns: u64,
        w: Option<&Watcher>,
    ) -> Result<Option<Head>> {
        let Some(leaf) = head.leaf.clone() else {
            return Ok(None);
        };
        let Some((parent, l3)) = leaf.rsplit_once('/') else {
            return Ok(None);
        };
        let ci = head.class;
        let siblings: Vec<String> = match self.classes[ci].nodes.get(parent) {
            Some(n) => n
                .children
                .range(l3.to_string()..)
                .take(leaves.max(1))
                .cloned()
                .collect(),
            None => return Ok(None),
        };
        if siblings.is_empty() {
            return Ok(None);
        }
        let pick = (crate::id::random_u64() % siblings.len() as u64) as usize;
        let rel = format!("{parent}/{}", siblings[pick]);
        if !self.load_node(ci, &rel, w)? {
            return Ok(None);
        }
        let c = &self.classes[ci];
        let Some(node) = c.nodes.get(&rel) else {
            return Ok(None);
        };
        let names: Vec<(&String, u64)> = node
            .children
            .iter()
            .filter_map(|n| {
                let p = parse_pending_name(n)?;
                (p.prio == head.prio && p.ns <= now_ns).then_some((n, p.ns))
            })
            .take(per_leaf.max(1))
            .collect();
        if names.is_empty() {
            return Ok(None);
        }
        let (name, ns) = names[(crate::id::random_u64() % names.len() as u64) as usize];
        Ok(Some(Head {
            key: name.clone(),
            path: c.dir.join(&rel).join(name),
            class: ci,
            prio: head.prio,
            ns,
            leaf: Some(rel),
        }))
    }

    /// Forgets one task name (claimed by us or someone else).
    pub fn forget(&mut self, head: &Head, name: &str) {
        let c = &mut self.classes[head.class];
        match &head.leaf {
            Some(leaf) => {
                if let Some(n) = c.nodes.get_mut(leaf) {
                    n.children.remove(name);
                }
            }
            None => {
                c.flat.remove(&head.key);
            }
        }
    }

    /// Whether class `ci` is paused (as last seen).
    pub fn paused(&self, ci: usize) -> bool {
        self.classes[ci].paused
    }

    /// Applies inotify events. Returns true when something arrived (a reason to try a claim)
    /// and the names of classes that appeared under `pending/`.
    pub fn apply(&mut self, events: &[FsEvent], w: Option<&Watcher>) -> (bool, Vec<String>) {
        let mut arrived = false;
        let mut new_classes = Vec::new();
        for ev in events {
            match ev {
                FsEvent::Overflow => {
                    self.reset(w);
                    arrived = true;
                }
                FsEvent::Changed { .. } => {}
                FsEvent::Gone { wd } => {
                    if let Some(what) = self.wds.remove(wd) {
                        match what {
                            Watched::Root => self.root_wd = None,
                            Watched::Class(ci) => {
                                let c = &mut self.classes[ci];
                                c.wd = None;
                                c.loaded = false;
                                c.nodes.clear();
                                arrived = true;
                            }
                            Watched::Node(ci, rel) => {
                                if let Some(n) = self.classes[ci].nodes.get_mut(&rel) {
                                    n.wd = None;
                                }
                                self.drop_node(ci, &rel, w);
                            }
                        }
                    }
                }
                FsEvent::Added { wd, name, .. } => match self.wds.get(wd).cloned() {
                    Some(Watched::Root) if crate::id::validate("class", name).is_ok() => {
                        // A class directory appeared (or came back): look at it again.
                        if let Some(c) = self.classes.iter_mut().find(|c| c.name == *name) {
                            c.loaded = false;
                            c.nodes.clear();
                        }
                        new_classes.push(name.clone());
                        arrived = true;
                    }
                    Some(Watched::Class(ci)) => {
                        let c = &mut self.classes[ci];
                        let was_paused = c.paused;
                        Self::class_entry(c, name.clone());
                        arrived |= name != layout::PAUSED_MARKER || was_paused != c.paused;
                    }
                    Some(Watched::Node(ci, rel)) => {
                        if let Some(n) = self.classes[ci].nodes.get_mut(&rel) {
                            n.children.insert(name.clone());
                            n.skip_until = None;
                            n.used = true;
                        }
                        arrived = true;
                    }
                    Some(Watched::Root) | None => {}
                },
                FsEvent::Removed { wd, name, .. } => match self.wds.get(wd).cloned() {
                    Some(Watched::Class(ci)) => {
                        let c = &mut self.classes[ci];
                        if name == layout::PAUSED_MARKER {
                            c.paused = false;
                            arrived = true;
                        } else if is_l1(name) {
                            c.l1.remove(name);
                            self.drop_node(ci, name, w);
                        } else if let Some(k) = sort_key(name) {
                            c.flat.remove(&k);
                        }
                    }
                    Some(Watched::Node(ci, rel)) => {
                        if let Some(n) = self.classes[ci].nodes.get_mut(&rel) {
                            n.children.remove(name);
                        }
                        if rel.matches('/').count() < 2 {
                            self.drop_node(ci, &format!("{rel}/{name}"), w);
                        }
                    }
                    _ => {}
                },
            }
        }
        (arrived, new_classes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::walk::tests::put;
    use crate::spec::Priority;

    #[test]
    fn heads_follow_priority_delay_and_retire_empty_buckets() {
        let (_d, h) = crate::home::test_home();
        let base = 1_764_000_000_000_000_000u64;
        let now = base + 10_000_000_000;
        let a = put(&h, "c", Priority::High, base + 5, "a");
        put(&h, "c", Priority::High, base + 7, "b");
        put(&h, "c", Priority::Critical, now + 60_000_000_000, "later");
        put(&h, "c", Priority::Low, base, "low");
        let mut ix = Index::new(&h, &["c".to_string()]);
        let (hd, due) = ix.class_head(0, now, None).unwrap();
        let hd = hd.unwrap();
        assert_eq!(
            (hd.key.contains("-a.json"), hd.path.clone()),
            (true, a.clone())
        );
        assert_eq!(
            due,
            Some(now + 60_000_000_000),
            "the delayed critical task is due later"
        );
        // A contended claimer may start at either of the two high tasks.
        for _ in 0..20 {
            let p = ix.spread_pick(&hd, 8, 8, now, None).unwrap().unwrap();
            assert!(
                p.key.ends_with("-a.json") || p.key.ends_with("-b.json"),
                "{p:?}"
            );
        }
        std::fs::remove_file(&a).unwrap();
        ix.forget(&hd, &hd.key);
        let (hd2, _) = ix.class_head(0, now, None).unwrap();
        let hd2 = hd2.unwrap();
        assert!(hd2.key.ends_with("-b.json"));
        // Empty the high bucket: the low task is next, and the empty directories go.
        std::fs::remove_file(&hd2.path).unwrap();
        ix.reset(None);
        let (hd3, _) = ix.class_head(0, now, None).unwrap();
        assert!(hd3.unwrap().key.ends_with("-low.json"));
        assert!(
            class_dir(&h, "c").join("1-01764000").exists(),
            "young: kept"
        );
        layout::age_dirs(&class_dir(&h, "c"));
        ix.reset(None);
        let (hd3, _) = ix.class_head(0, now, None).unwrap();
        assert!(hd3.unwrap().key.ends_with("-low.json"));
        assert!(!class_dir(&h, "c").join("1-01764000").exists());
        // Paused: nothing.
        std::fs::write(class_dir(&h, "c").join(layout::PAUSED_MARKER), "{}").unwrap();
        ix.reset(None);
        assert!(ix.class_head(0, now, None).unwrap().0.is_none());
    }

    #[test]
    fn a_watched_view_follows_arrivals_without_listing() {
        let (_d, h) = crate::home::test_home();
        let base = 1_764_000_000_000_000_000u64;
        let now = base + 1_000_000_000_000;
        put(&h, "c", Priority::Medium, base, "m");
        let mut w = Watcher::new().unwrap();
        let mut ix = Index::new(&h, &["c".to_string()]);
        let (hd, _) = ix.class_head(0, now, Some(&w)).unwrap();
        assert!(hd.unwrap().key.ends_with("-m.json"));
        // A critical arrival in a new bucket, and one in the watched leaf.
        put(&h, "c", Priority::Critical, base + 3, "crit");
        let mut evs = Vec::new();
        w.drain(&mut evs).unwrap();
        let (arrived, _) = ix.apply(&evs, Some(&w));
        assert!(arrived, "{evs:?}");
        let (hd, _) = ix.class_head(0, now, Some(&w)).unwrap();
        assert!(hd.unwrap().key.ends_with("-crit.json"));
    }
}
