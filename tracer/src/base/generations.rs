//! A memory of recent keys that forgets in bulk, for the per-event joins (which
//! socket a 4-tuple belonged to, which flows were just explained). Entries go to a
//! young generation; when it is full or `span_ns` old (checked on insert) it becomes
//! the old one and the previous old one is dropped. Lookups see both: an entry lives
//! at least `span_ns` unless `cap` newer ones came since, and on a quiet host until
//! newer ones push it out. Memory is bounded by twice `cap`
//! entries and nothing is ever scanned, so a storm costs the same per event as a
//! trickle. Keys are 64-bit digests of what they stand for: a collision (odds about
//! n/2^64) would only join two unrelated records.
use std::hash::Hash;

use crate::base::FastMap;

pub struct Generations<V> {
    young: FastMap<u64, V>,
    old: FastMap<u64, V>,
    cap: usize,
    span_ns: u64,
    young_since_ns: u64,
    digest: ahash::RandomState,
}

impl<V> Generations<V> {
    pub fn new(cap: usize, span_ns: u64) -> Self {
        Generations {
            young: FastMap::default(),
            old: FastMap::default(),
            cap,
            span_ns,
            young_since_ns: 0,
            digest: ahash::RandomState::new(),
        }
    }

    pub fn key<K: Hash>(&self, k: &K) -> u64 {
        self.digest.hash_one(k)
    }

    pub fn insert(&mut self, key: u64, v: V, now_ns: u64) {
        if self.young.len() >= self.cap || now_ns >= self.young_since_ns + self.span_ns {
            // Swap rather than reallocate: the old table's capacity is reused.
            std::mem::swap(&mut self.young, &mut self.old);
            self.young.clear();
            self.young_since_ns = now_ns;
        }
        self.young.insert(key, v);
    }

    pub fn get(&self, key: u64) -> Option<&V> {
        self.young.get(&key).or_else(|| self.old.get(&key))
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        match self.young.get_mut(&key) {
            Some(v) => Some(v),
            None => self.old.get_mut(&key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_two_generations_then_forgets() {
        let mut g = Generations::new(2, 1_000);
        g.insert(1, 'a', 0);
        g.insert(2, 'b', 10);
        // Young is full: 1 and 2 become old.
        g.insert(3, 'c', 20);
        assert_eq!((g.get(1), g.get(3)), (Some(&'a'), Some(&'c')));
        g.insert(4, 'd', 30);
        g.insert(5, 'e', 40);
        assert_eq!(g.get(1), None);
        assert_eq!(g.get(3), Some(&'c'));
        assert!(g.young.len() + g.old.len() <= 4);
    }

    #[test]
    fn forgets_by_age_without_traffic_limits() {
        let mut g = Generations::new(1000, 1_000);
        g.insert(1, (), 0);
        g.insert(2, (), 1_500);
        assert!(g.get(1).is_some());
        g.insert(3, (), 3_000);
        assert!(g.get(1).is_none());
        assert!(g.get(2).is_some());
    }

    #[test]
    fn newer_value_wins() {
        let mut g = Generations::new(2, 1_000);
        g.insert(1, 'a', 0);
        g.insert(2, 'b', 0);
        g.insert(1, 'z', 0);
        assert_eq!(g.get(1), Some(&'z'));
    }
}
