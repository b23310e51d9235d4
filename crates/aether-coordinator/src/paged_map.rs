//! A sorted map kept in the content store, cut into pages: the storage of knowledge entries and
//! annotations.
//!
//! A map is named by the hash of its index object, which lists its pages (first key, hash,
//! entry count) in key order; each page is an immutable object of at most [`PAGE_ENTRIES`]
//! sorted entries (and about [`PAGE_BYTES`]). A session record holds only the index hash, so
//! carrying a whole map along (checkpoint, fork, restore) is O(1), and a change rewrites one
//! page (two on a split) and the index: its cost is bounded by a page and the index, not by
//! the map. The empty map is the empty string, so records written before a map existed read
//! as empty.
//!
//! Writers store the new objects first and publish the new root in their fenced transaction
//! (promises 1 and 2): until then nothing references them. Objects are content-addressed and
//! verified by the store on read (promise 5), so decoded objects are cached by hash.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use aether_core::Hash;
use aether_store::Blobs;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most entries in one page before it splits.
pub const PAGE_ENTRIES: usize = 256;
/// Encoded size past which a page of two or more entries splits.
pub const PAGE_BYTES: usize = 1024 * 1024;
/// A page this small after a removal merges with a neighbour.
const MERGE_BELOW: usize = PAGE_ENTRIES / 4;
/// Encoded bytes of decoded objects a cache keeps before it starts over (objects are cheap to
/// reload; pages are up to about [`PAGE_BYTES`] each).
const CACHE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Index {
    /// What the map holds (checked on load, so one kind of root is never read as another).
    kind: String,
    pages: Vec<PageRef>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PageRef {
    first: String,
    hash: String,
    len: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "V: Serialize + DeserializeOwned")]
struct Page<V> {
    entries: BTreeMap<String, V>,
}

struct Cached<T> {
    objects: HashMap<Hash, Arc<T>>,
    bytes: usize,
}

struct Cache<T>(Mutex<Cached<T>>);

impl<T> Cache<T> {
    fn new() -> Self {
        Self(Mutex::new(Cached {
            objects: HashMap::new(),
            bytes: 0,
        }))
    }

    fn get(&self, hash: &Hash) -> Option<Arc<T>> {
        self.0.lock().expect("map cache").objects.get(hash).cloned()
    }

    /// Remembers an object decoded from (or encoded to) `bytes` bytes.
    fn put(&self, hash: Hash, value: Arc<T>, bytes: usize) {
        let mut cache = self.0.lock().expect("map cache");
        if cache.bytes + bytes > CACHE_BYTES {
            cache.objects.clear();
            cache.bytes = 0;
        }
        if cache.objects.insert(hash, value).is_none() {
            cache.bytes += bytes;
        }
    }
}

/// Access to the maps of one kind (one value type) in the content store.
pub struct PagedMap<V> {
    blobs: Arc<dyn Blobs>,
    kind: &'static str,
    indexes: Cache<Index>,
    pages: Cache<Page<V>>,
}

/// The page that holds (or would hold) `key`.
fn position(pages: &[PageRef], key: &str) -> usize {
    pages
        .partition_point(|p| p.first.as_str() <= key)
        .saturating_sub(1)
}

fn parse_hash(value: &str, what: &str) -> Result<Hash> {
    Hash::from_hex(value)
        .map_err(|e| Error::Internal(format!("stored {what} hash unreadable: {e}")))
}

impl<V> PagedMap<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub fn new(blobs: Arc<dyn Blobs>, kind: &'static str) -> Self {
        Self {
            blobs,
            kind,
            indexes: Cache::new(),
            pages: Cache::new(),
        }
    }

    async fn index(&self, root: &str) -> Result<Arc<Index>> {
        if root.is_empty() {
            return Ok(Arc::new(Index {
                kind: self.kind.to_string(),
                pages: Vec::new(),
            }));
        }
        let hash = parse_hash(root, self.kind)?;
        if let Some(index) = self.indexes.get(&hash) {
            return Ok(index);
        }
        let bytes = self.blobs.get(&hash).await?;
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| {
            Error::DataLoss(format!("{} index {root} cannot be decoded: {e}", self.kind))
        })?;
        if index.kind != self.kind {
            return Err(Error::DataLoss(format!(
                "object {root} holds {}, not {}",
                index.kind, self.kind
            )));
        }
        let index = Arc::new(index);
        self.indexes.put(hash, index.clone(), bytes.len());
        Ok(index)
    }

    async fn page(&self, reference: &PageRef) -> Result<Arc<Page<V>>> {
        let hash = parse_hash(&reference.hash, self.kind)?;
        if let Some(page) = self.pages.get(&hash) {
            return Ok(page);
        }
        let bytes = self.blobs.get(&hash).await?;
        let page: Page<V> = serde_json::from_slice(&bytes).map_err(|e| {
            Error::DataLoss(format!(
                "{} page {} cannot be decoded: {e}",
                self.kind, reference.hash
            ))
        })?;
        let page = Arc::new(page);
        self.pages.put(hash, page.clone(), bytes.len());
        Ok(page)
    }

    /// Writes entries as one or more pages (splitting what is too large), in key order.
    async fn write_pages(&self, entries: BTreeMap<String, V>) -> Result<Vec<PageRef>> {
        let mut queue = VecDeque::from([entries]);
        let mut written = Vec::new();
        while let Some(mut chunk) = queue.pop_front() {
            let Some(first) = chunk.keys().next().cloned() else {
                continue;
            };
            let page = Page { entries: chunk };
            let encoded = serde_json::to_vec(&page).expect("pages serialize");
            chunk = page.entries;
            if chunk.len() >= 2 && (chunk.len() > PAGE_ENTRIES || encoded.len() > PAGE_BYTES) {
                let middle = chunk
                    .keys()
                    .nth(chunk.len() / 2)
                    .cloned()
                    .expect("two or more entries");
                let upper = chunk.split_off(&middle);
                queue.push_front(upper);
                queue.push_front(chunk);
                continue;
            }
            let size = encoded.len();
            let hash = self.blobs.put(Bytes::from(encoded)).await?;
            let len = chunk.len() as u64;
            self.pages
                .put(hash, Arc::new(Page { entries: chunk }), size);
            written.push(PageRef {
                first,
                hash: hash.to_hex(),
                len,
            });
        }
        Ok(written)
    }

    async fn write_index(&self, pages: Vec<PageRef>) -> Result<String> {
        if pages.is_empty() {
            return Ok(String::new());
        }
        let index = Index {
            kind: self.kind.to_string(),
            pages,
        };
        let encoded = serde_json::to_vec(&index).expect("indexes serialize");
        let size = encoded.len();
        let hash = self.blobs.put(Bytes::from(encoded)).await?;
        self.indexes.put(hash, Arc::new(index), size);
        Ok(hash.to_hex())
    }

    /// How many entries the map holds.
    pub async fn len(&self, root: &str) -> Result<u64> {
        Ok(self.index(root).await?.pages.iter().map(|p| p.len).sum())
    }

    pub async fn get(&self, root: &str, key: &str) -> Result<Option<V>> {
        let index = self.index(root).await?;
        if index.pages.is_empty() {
            return Ok(None);
        }
        let page = self.page(&index.pages[position(&index.pages, key)]).await?;
        Ok(page.entries.get(key).cloned())
    }

    /// Puts `value` at `key`: the new root and the value it replaced.
    pub async fn insert(&self, root: &str, key: String, value: V) -> Result<(String, Option<V>)> {
        let index = self.index(root).await?;
        let mut pages = index.pages.clone();
        if pages.is_empty() {
            let written = self.write_pages(BTreeMap::from([(key, value)])).await?;
            return Ok((self.write_index(written).await?, None));
        }
        let at = position(&pages, &key);
        let mut entries = self.page(&pages[at]).await?.entries.clone();
        let replaced = entries.insert(key, value);
        let written = self.write_pages(entries).await?;
        pages.splice(at..=at, written);
        Ok((self.write_index(pages).await?, replaced))
    }

    /// Removes `key`: the new root and the value removed (the root is unchanged if it was absent).
    pub async fn remove(&self, root: &str, key: &str) -> Result<(String, Option<V>)> {
        let index = self.index(root).await?;
        if index.pages.is_empty() {
            return Ok((root.to_string(), None));
        }
        let mut pages = index.pages.clone();
        let mut at = position(&pages, key);
        let mut entries = self.page(&pages[at]).await?.entries.clone();
        let Some(removed) = entries.remove(key) else {
            return Ok((root.to_string(), None));
        };
        let mut replace = at..=at;
        // Keep pages from thinning out after many removals: merge a small page with its next
        // neighbour (or its previous one, for the last page); write_pages splits again if needed.
        if entries.len() < MERGE_BELOW && pages.len() > 1 {
            let neighbour = if at + 1 < pages.len() { at + 1 } else { at - 1 };
            let other = self.page(&pages[neighbour]).await?;
            entries.extend(other.entries.iter().map(|(k, v)| (k.clone(), v.clone())));
            at = at.min(neighbour);
            replace = at..=at + 1;
        }
        let written = self.write_pages(entries).await?;
        pages.splice(replace, written);
        Ok((self.write_index(pages).await?, Some(removed)))
    }

    /// Every object of the map at `root` (its index, then its pages), for garbage collection.
    /// Objects the values name (knowledge value blobs) are the caller's to add.
    pub async fn objects(&self, root: &str) -> Result<Vec<Hash>> {
        if root.is_empty() {
            return Ok(Vec::new());
        }
        let index = self.index(root).await?;
        let mut objects = vec![parse_hash(root, self.kind)?];
        for page in &index.pages {
            objects.push(parse_hash(&page.hash, self.kind)?);
        }
        Ok(objects)
    }

    /// Visits entries in key order from `start` until `visit` returns false.
    pub async fn scan(
        &self,
        root: &str,
        start: Bound<&str>,
        mut visit: impl FnMut(&str, &V) -> bool,
    ) -> Result<()> {
        let index = self.index(root).await?;
        let from = match start {
            Bound::Unbounded => 0,
            Bound::Included(key) | Bound::Excluded(key) => position(&index.pages, key),
        };
        for reference in index.pages.iter().skip(from) {
            let page = self.page(reference).await?;
            for (key, value) in page.entries.range::<str, _>((start, Bound::Unbounded)) {
                if !visit(key, value) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(dir: &tempfile::TempDir) -> PagedMap<u64> {
        PagedMap::new(crate::test_support::local_blobs(dir.path()), "test.v1")
    }

    async fn all(map: &PagedMap<u64>, root: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        map.scan(root, Bound::Unbounded, |k, v| {
            out.push((k.to_string(), *v));
            true
        })
        .await
        .unwrap();
        out
    }

    #[tokio::test]
    async fn inserts_splits_removes_and_merges_like_a_btreemap() {
        let dir = tempfile::tempdir().unwrap();
        let map = map(&dir);
        let mut model = BTreeMap::new();
        let mut root = String::new();
        // A deterministic shuffle of 2000 keys: enough for several splits.
        let keys: Vec<u64> = (0..2000u64).map(|i| (i * 7919) % 2000).collect();
        for (n, k) in keys.iter().enumerate() {
            let key = format!("k{k:05}");
            let (next, replaced) = map.insert(&root, key.clone(), n as u64).await.unwrap();
            assert_eq!(replaced, model.insert(key, n as u64));
            root = next;
        }
        let index = map.index(&root).await.unwrap();
        assert!(index.pages.len() > 2000 / PAGE_ENTRIES);
        assert!(index.pages.iter().all(|p| p.len as usize <= PAGE_ENTRIES));
        assert_eq!(map.len(&root).await.unwrap(), 2000);
        let objects = map.objects(&root).await.unwrap();
        assert_eq!(objects.len(), index.pages.len() + 1);
        assert!(map.blobs.missing(&objects).await.unwrap().is_empty());
        let expected: Vec<(String, u64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(all(&map, &root).await, expected);
        assert_eq!(
            map.get(&root, "k01234").await.unwrap(),
            model.get("k01234").copied()
        );
        assert_eq!(map.get(&root, "nope").await.unwrap(), None);

        // A range scan starts where asked.
        let mut from = Vec::new();
        map.scan(&root, Bound::Excluded("k01000"), |k, _| {
            from.push(k.to_string());
            from.len() < 3
        })
        .await
        .unwrap();
        assert_eq!(from, ["k01001", "k01002", "k01003"]);

        // The old root is untouched by later changes (persistence, as checkpoints need).
        let before = root.clone();
        for k in 0..1990u64 {
            let key = format!("k{k:05}");
            let (next, removed) = map.remove(&root, &key).await.unwrap();
            assert_eq!(removed, model.remove(&key));
            root = next;
        }
        let (same, removed) = map.remove(&root, "absent").await.unwrap();
        assert_eq!((same.as_str(), removed), (root.as_str(), None));
        assert_eq!(
            map.index(&root).await.unwrap().pages.len(),
            1,
            "small pages merge"
        );
        let expected: Vec<(String, u64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(all(&map, &root).await, expected);
        assert_eq!(map.len(&before).await.unwrap(), 2000);
        for k in 1990..2000u64 {
            root = map.remove(&root, &format!("k{k:05}")).await.unwrap().0;
        }
        assert_eq!(root, "", "the empty map is the empty root");
    }

    #[tokio::test]
    async fn a_root_of_another_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let map = map(&dir);
        let (root, _) = map.insert("", "a".into(), 1).await.unwrap();
        let other: PagedMap<u64> = PagedMap::new(map.blobs.clone(), "other.v1");
        assert!(matches!(
            other.get(&root, "a").await,
            Err(Error::DataLoss(_))
        ));
    }
}
