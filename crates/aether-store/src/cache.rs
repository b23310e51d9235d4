//! Verified manifests of recently written or read blobs.
//!
//! Reading a chunked blob otherwise costs two round trips to the object store before the first
//! chunk: the probe for a single object of that name (absent) and the manifest itself. Manifests
//! are immutable and every cached one was verified against its name, so serving reads from here
//! never returns wrong bytes (chunks are still verified on every read), and processes that do not
//! share it stay interchangeable. Only reads use it: existence questions (HasBlobs, StatBlob) go
//! to the backend, since garbage collection may have removed a blob this process remembers.
//! Bounded by encoded bytes; the oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use aether_core::{ChunkManifest, Hash};

pub(crate) struct ManifestCache {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Hash, Arc<ChunkManifest>>,
    /// Insertion order, for eviction.
    order: VecDeque<Hash>,
    bytes: usize,
}

/// What a manifest takes in its encoding (the cache's unit).
fn weight(manifest: &ChunkManifest) -> usize {
    8 + 40 * manifest.chunks.len()
}

impl ManifestCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::default(),
        }
    }

    pub(crate) fn get(&self, hash: &Hash) -> Option<Arc<ChunkManifest>> {
        self.state
            .lock()
            .expect("cache lock")
            .entries
            .get(hash)
            .cloned()
    }

    /// Remembers a manifest that was verified against `hash`.
    pub(crate) fn insert(&self, hash: Hash, manifest: Arc<ChunkManifest>) {
        let weight = weight(&manifest);
        if weight > self.capacity {
            return;
        }
        let mut state = self.state.lock().expect("cache lock");
        if state.entries.insert(hash, manifest).is_some() {
            return;
        }
        state.order.push_back(hash);
        state.bytes += weight;
        while state.bytes > self.capacity {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            if let Some(evicted) = state.entries.remove(&oldest) {
                state.bytes -= self::weight(&evicted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(chunks: usize, seed: u8) -> Arc<ChunkManifest> {
        Arc::new(ChunkManifest {
            chunks: (0..chunks)
                .map(|i| (Hash::of(&[seed, i as u8]), 1))
                .collect(),
        })
    }

    #[test]
    fn keeps_the_newest_within_its_byte_bound() {
        // Room for two manifests of 2 chunks (88 bytes each), not three.
        let cache = ManifestCache::new(200);
        let (a, b, c) = (manifest(2, 1), manifest(2, 2), manifest(2, 3));
        cache.insert(a.hash(), a.clone());
        cache.insert(b.hash(), b.clone());
        cache.insert(b.hash(), b.clone());
        assert!(cache.get(&a.hash()).is_some());
        cache.insert(c.hash(), c.clone());
        assert!(cache.get(&a.hash()).is_none(), "the oldest is evicted");
        assert!(cache.get(&b.hash()).is_some() && cache.get(&c.hash()).is_some());
        let huge = manifest(10, 4);
        cache.insert(huge.hash(), huge.clone());
        assert!(
            cache.get(&huge.hash()).is_none(),
            "larger than the whole cache"
        );
        assert!(cache.get(&c.hash()).is_some());
    }
}
