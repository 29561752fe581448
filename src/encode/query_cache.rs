//! A bounded cache of query embeddings, so a repeated query costs no pass through the text tower.
//!
//! A query's embedding is a pure function of the backbone (one per process), the task model's
//! digest, its text length and the query string, so entries are keyed by exactly those: a new
//! generation of a task comes with a new digest and never sees the old generation's entries
//! (invalidation needs no hook into the registry). Each embedding space (digest, text length) has
//! its own LRU of at most `per_task` queries, so one busy task cannot push every other task's
//! queries out; at most `spaces` spaces are kept, the least recently used one dropped first,
//! which is also how a replaced generation's entries go.

use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// (model digest, text length): one embedding space.
type Space = (String, usize);
/// One space's queries, most recently used first.
type Queries = LruCache<String, Arc<[f32]>>;

/// The cache; `None` capacities (0 in the config) turn it off.
pub struct QueryCache {
    spaces: Option<Mutex<LruCache<Space, Queries>>>,
    per_task: NonZeroUsize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Hits and misses since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryCacheStats {
    pub hits: u64,
    pub misses: u64,
}

impl QueryCache {
    /// At most `per_task` queries for each of at most `spaces` embedding spaces; either 0 turns
    /// the cache off.
    pub fn new(per_task: usize, spaces: usize) -> Self {
        let on = NonZeroUsize::new(per_task).zip(NonZeroUsize::new(spaces));
        Self {
            spaces: on.map(|(_, s)| Mutex::new(LruCache::new(s))),
            per_task: on.map_or(NonZeroUsize::MIN, |(p, _)| p),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached embedding of `text` in the space of (`digest`, `text_len`), if any.
    pub fn get(&self, digest: &str, text_len: usize, text: &str) -> Option<Arc<[f32]>> {
        let spaces = self.spaces.as_ref()?;
        let key = (digest.to_string(), text_len);
        let hit = spaces
            .lock()
            .get_mut(&key)
            .and_then(|q| q.get(text).cloned());
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Remembers `embedding` for `text` in the space of (`digest`, `text_len`).
    pub fn put(&self, digest: &str, text_len: usize, text: &str, embedding: &[f32]) {
        let Some(spaces) = self.spaces.as_ref() else {
            return;
        };
        let mut spaces = spaces.lock();
        let per_task = self.per_task;
        let queries =
            spaces.get_or_insert_mut((digest.to_string(), text_len), || LruCache::new(per_task));
        queries.put(text.to_string(), embedding.into());
    }

    pub fn stats(&self) -> QueryCacheStats {
        QueryCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_only_in_the_same_space() {
        let c = QueryCache::new(4, 4);
        assert!(c.get("a", 32, "dog").is_none());
        c.put("a", 32, "dog", &[1.0, 2.0]);
        assert_eq!(c.get("a", 32, "dog").as_deref(), Some(&[1.0, 2.0][..]));
        // Another generation (digest) or text length is another embedding space.
        assert!(c.get("b", 32, "dog").is_none());
        assert!(c.get("a", 16, "dog").is_none());
        assert!(c.get("a", 32, "cat").is_none());
        assert_eq!(c.stats(), QueryCacheStats { hits: 1, misses: 4 });
    }

    #[test]
    fn bounded_per_task_and_in_spaces() {
        let c = QueryCache::new(2, 2);
        for q in ["q1", "q2", "q3"] {
            c.put("a", 32, q, &[0.0]);
        }
        assert!(c.get("a", 32, "q1").is_none(), "the oldest query went");
        assert!(c.get("a", 32, "q3").is_some());
        // A busy second task does not evict the first task's queries.
        for q in ["x1", "x2", "x3", "x4"] {
            c.put("b", 32, q, &[0.0]);
        }
        assert!(c.get("a", 32, "q3").is_some());
        // A third space drops the least recently used one (b: a was just read).
        c.put("c", 32, "z", &[0.0]);
        assert!(c.get("b", 32, "x4").is_none());
        assert!(c.get("a", 32, "q2").is_some());
    }

    #[test]
    fn zero_capacity_turns_it_off() {
        let c = QueryCache::new(0, 8);
        c.put("a", 32, "dog", &[1.0]);
        assert!(c.get("a", 32, "dog").is_none());
    }
}
