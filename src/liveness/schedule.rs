//! The timer heap: every time-based thing the monitor does (judge a worker again, sample
//! resources, retry a busy worker, run housekeeping) is one deadline here, so the event loop
//! sleeps exactly until the earliest one and nothing is polled.
//!
//! Each key has at most one deadline: setting it again replaces the old one. The heap keeps
//! replaced entries until they surface (cheaper than removing from the middle) and skips
//! them by checking the key's current deadline; it is rebuilt when stale entries pile up,
//! so 10,000 workers beating every 30 s cannot grow it without bound. Times are plain
//! milliseconds, so tests drive it with any clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

/// Deadlines by key, earliest first.
#[derive(Debug)]
pub struct Schedule<K: Ord + Hash + Clone> {
    heap: BinaryHeap<Reverse<(i64, u64, K)>>,
    current: HashMap<K, (i64, u64)>,
    seq: u64,
}

impl<K: Ord + Hash + Clone> Default for Schedule<K> {
    fn default() -> Self {
        Schedule {
            heap: BinaryHeap::new(),
            current: HashMap::new(),
            seq: 0,
        }
    }
}

impl<K: Ord + Hash + Clone> Schedule<K> {
    /// Sets `key` due at `at_ms`, replacing any deadline it had.
    pub fn set(&mut self, key: K, at_ms: i64) {
        if self.current.get(&key).is_some_and(|(at, _)| *at == at_ms) {
            return;
        }
        self.seq += 1;
        self.current.insert(key.clone(), (at_ms, self.seq));
        self.heap.push(Reverse((at_ms, self.seq, key)));
        if self.heap.len() > 2 * self.current.len() + 1024 {
            self.compact();
        }
    }

    /// Sets `key` due at `at_ms` unless it is already due earlier.
    pub fn set_earlier(&mut self, key: K, at_ms: i64) {
        match self.current.get(&key) {
            Some((at, _)) if *at <= at_ms => {}
            _ => self.set(key, at_ms),
        }
    }

    /// Removes `key`'s deadline.
    pub fn cancel(&mut self, key: &K) {
        self.current.remove(key);
    }

    /// When `key` is due, if it is scheduled.
    pub fn when(&self, key: &K) -> Option<i64> {
        self.current.get(key).map(|(at, _)| *at)
    }

    /// The earliest deadline.
    pub fn next_at(&mut self) -> Option<i64> {
        self.drop_stale();
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns every key due at or before `now_ms`, earliest first.
    pub fn pop_due(&mut self, now_ms: i64) -> Vec<K> {
        let mut out = Vec::new();
        loop {
            self.drop_stale();
            match self.heap.peek() {
                Some(Reverse((at, _, _))) if *at <= now_ms => {}
                _ => return out,
            }
            if let Some(Reverse((_, _, key))) = self.heap.pop() {
                self.current.remove(&key);
                out.push(key);
            }
        }
    }

    /// Live deadlines.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    fn is_current(&self, at: i64, seq: u64, key: &K) -> bool {
        self.current.get(key) == Some(&(at, seq))
    }

    fn drop_stale(&mut self) {
        while let Some(Reverse((at, seq, key))) = self.heap.peek() {
            if self.is_current(*at, *seq, key) {
                return;
            }
            self.heap.pop();
        }
    }

    fn compact(&mut self) {
        self.heap = self
            .current
            .iter()
            .map(|(k, (at, seq))| Reverse((*at, *seq, k.clone())))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_one_deadline_per_key() {
        let mut s: Schedule<&str> = Schedule::default();
        s.set("b", 20);
        s.set("a", 10);
        s.set("c", 30);
        assert_eq!(s.next_at(), Some(10));
        s.set("a", 25); // replaces 10
        assert_eq!(s.next_at(), Some(20));
        assert_eq!(s.pop_due(19), Vec::<&str>::new());
        assert_eq!(s.pop_due(25), vec!["b", "a"]);
        assert_eq!(s.when(&"c"), Some(30));
        s.cancel(&"c");
        assert_eq!(s.next_at(), None);
        assert!(s.is_empty());
    }

    #[test]
    fn set_earlier_only_moves_forward_in_time() {
        let mut s: Schedule<u32> = Schedule::default();
        s.set(1, 100);
        s.set_earlier(1, 200);
        assert_eq!(s.when(&1), Some(100));
        s.set_earlier(1, 50);
        assert_eq!(s.when(&1), Some(50));
        s.set_earlier(2, 70);
        assert_eq!(s.pop_due(1000), vec![1, 2]);
    }

    #[test]
    fn replaced_entries_do_not_pile_up() {
        let mut s: Schedule<u32> = Schedule::default();
        // 10 keys rescheduled 100,000 times, as beats do.
        for i in 0..100_000i64 {
            s.set((i % 10) as u32, i);
        }
        assert_eq!(s.len(), 10);
        assert!(s.heap.len() <= 2 * 10 + 1025, "{}", s.heap.len());
        let due = s.pop_due(i64::MAX);
        assert_eq!(due.len(), 10);
        assert_eq!(
            due[0], 0,
            "key 0 was set last at 99,990, the earliest of the ten"
        );
    }
}
