//! The Inference API's response cache (`options.use_cache`, `x-use-cache`): the bytes of
//! answers to deterministic requests, keyed by model, task, inputs and normalised
//! parameters, bounded in entries and in bytes, least recently used out first.
//!
//! Only requests whose answer cannot change are stored — greedy ones and sampled ones with
//! an explicit seed, without a time limit — so a hit is exactly what generating again
//! would answer (the engine is batch-invariant). Hits, misses and what is held are
//! metrics.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use axum::body::Bytes;
use lru::LruCache;

use crate::metrics as m;

/// A bounded LRU of response bodies.
#[derive(Debug)]
pub struct ResponseCache {
    inner: Option<Mutex<Inner>>,
    max_bytes: usize,
}

#[derive(Debug)]
struct Inner {
    entries: LruCache<String, Bytes>,
    bytes: usize,
}

impl ResponseCache {
    /// At most `max_entries` answers and `max_bytes` of keys and bodies; either 0 turns
    /// the cache off.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        let inner = NonZeroUsize::new(max_entries)
            .filter(|_| max_bytes > 0)
            .map(|n| Mutex::new(Inner { entries: LruCache::new(n), bytes: 0 }));
        ResponseCache { inner, max_bytes }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Inner>> {
        // The cache holds plain data: a panic elsewhere cannot leave it inconsistent.
        self.inner.as_ref().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The stored answer for `key`, counted as a hit or a miss.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        let mut inner = self.lock()?;
        let found = inner.entries.get(key).cloned();
        let counter =
            if found.is_some() { m::RESPONSE_CACHE_HITS } else { m::RESPONSE_CACHE_MISSES };
        metrics::counter!(counter).increment(1);
        found
    }

    /// Store `body` as the answer for `key`, evicting the least recently used answers
    /// until both bounds hold. An answer larger than the whole budget is not stored.
    pub fn put(&self, key: String, body: Bytes) {
        let size = key.len() + body.len();
        if size > self.max_bytes {
            return;
        }
        let Some(mut inner) = self.lock() else { return };
        if let Some((old_key, old)) = inner.entries.push(key, body) {
            inner.bytes -= old_key.len() + old.len();
        }
        inner.bytes += size;
        while inner.bytes > self.max_bytes {
            match inner.entries.pop_lru() {
                Some((k, v)) => inner.bytes -= k.len() + v.len(),
                None => break,
            }
        }
        metrics::gauge!(m::RESPONSE_CACHE_ENTRIES).set(inner.entries.len() as f64);
        metrics::gauge!(m::RESPONSE_CACHE_BYTES).set(inner.bytes as f64);
    }

    /// Answers held and their bytes (keys included).
    pub fn usage(&self) -> (usize, usize) {
        self.lock().map(|i| (i.entries.len(), i.bytes)).unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_bounds_hold_and_the_least_recently_used_goes_first() {
        let cache = ResponseCache::new(3, 30);
        cache.put("a".into(), Bytes::from_static(b"123456789")); // 10 bytes
        cache.put("b".into(), Bytes::from_static(b"123456789"));
        assert!(cache.get("a").is_some()); // b is now the oldest
        cache.put("c".into(), Bytes::from_static(b"123456789"));
        cache.put("d".into(), Bytes::from_static(b"123456789")); // over 30 bytes and 3 entries
        assert_eq!(cache.usage(), (3, 30));
        assert!(cache.get("b").is_none());
        assert!(cache.get("a").is_some() && cache.get("c").is_some() && cache.get("d").is_some());
        // Replacing an entry accounts for the old body.
        cache.put("d".into(), Bytes::from_static(b"1"));
        assert_eq!(cache.usage(), (3, 22));
        // Too large for the whole budget: not stored, nothing evicted.
        cache.put("e".into(), Bytes::from(vec![0u8; 40]));
        assert_eq!(cache.usage(), (3, 22));
    }

    #[test]
    fn zero_turns_it_off() {
        for cache in [ResponseCache::new(0, 100), ResponseCache::new(10, 0)] {
            cache.put("a".into(), Bytes::from_static(b"x"));
            assert!(cache.get("a").is_none());
            assert_eq!(cache.usage(), (0, 0));
        }
    }
}
