//! An append-only log of numbered entries in the content store: the storage of audit trails.
//!
//! Entries arrive in batches (segments) that are never rewritten. Segments hang under a tree
//! of index nodes of at most [`FANOUT`] children, each child named by the first number it
//! holds; the log is named by the hash of its root node. Appending a segment rewrites only the
//! rightmost path (one node per level: 3 levels hold 2 million segments), so its cost does
//! not grow with the log, unlike a flat index or a sorted map whose last page is rewritten on
//! every append. Reading from a number descends one path, then walks right.
//!
//! Writers store the new objects first and publish the new root in their fenced transaction:
//! until then nothing references them. Objects are content-addressed and verified by the
//! store on read.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use aether_core::Hash;
use aether_store::Blobs;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Children of one index node.
pub const FANOUT: usize = 128;

/// An entry with its number in the log (numbers increase along the log).
pub trait Numbered {
    fn number(&self) -> u64;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Node {
    /// What the log holds (checked on load, so one kind of root is never read as another).
    kind: String,
    /// 0: the children are segments.
    level: u32,
    children: Vec<Child>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Child {
    /// The first entry number below this child.
    first: u64,
    hash: String,
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "V: Serialize + DeserializeOwned")]
struct Segment<V> {
    kind: String,
    entries: Vec<V>,
}

/// Logs of one kind of entry.
pub struct AppendLog<V> {
    blobs: Arc<dyn Blobs>,
    kind: &'static str,
    fanout: usize,
    entries: PhantomData<fn() -> V>,
}

fn parse_hash(value: &str, kind: &str) -> Result<Hash> {
    Hash::from_hex(value)
        .map_err(|e| Error::Internal(format!("stored {kind} hash unreadable: {e}")))
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

impl<V> AppendLog<V>
where
    V: Numbered + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub fn new(blobs: Arc<dyn Blobs>, kind: &'static str) -> Self {
        Self::with_fanout(blobs, kind, FANOUT)
    }

    /// A log whose nodes hold at most `fanout` (at least 2) children.
    pub fn with_fanout(blobs: Arc<dyn Blobs>, kind: &'static str, fanout: usize) -> Self {
        Self {
            blobs,
            kind,
            fanout: fanout.max(2),
            entries: PhantomData,
        }
    }

    async fn put<T: Serialize>(&self, object: &T) -> Result<String> {
        let encoded = serde_json::to_vec(object).expect("log objects serialize");
        Ok(self.blobs.put(Bytes::from(encoded)).await?.to_hex())
    }

    async fn node(&self, hash: &str) -> Result<Node> {
        let bytes = self.blobs.get(&parse_hash(hash, self.kind)?).await?;
        let node: Node = serde_json::from_slice(&bytes).map_err(|e| {
            Error::DataLoss(format!("{} node {hash} cannot be decoded: {e}", self.kind))
        })?;
        if node.kind != self.kind {
            return Err(Error::DataLoss(format!(
                "object {hash} holds {}, not {}",
                node.kind, self.kind
            )));
        }
        Ok(node)
    }

    async fn segment(&self, hash: &str) -> Result<Vec<V>> {
        let bytes = self.blobs.get(&parse_hash(hash, self.kind)?).await?;
        let segment: Segment<V> = serde_json::from_slice(&bytes).map_err(|e| {
            Error::DataLoss(format!(
                "{} segment {hash} cannot be decoded: {e}",
                self.kind
            ))
        })?;
        if segment.kind != self.kind {
            return Err(Error::DataLoss(format!(
                "object {hash} holds {}, not {}",
                segment.kind, self.kind
            )));
        }
        Ok(segment.entries)
    }

    /// Stores `entries` (numbered after everything in the log) as a new segment and returns
    /// the new root; nothing references it until the caller publishes it.
    pub async fn append(&self, root: &str, entries: Vec<V>) -> Result<String> {
        let Some(first) = entries.first().map(Numbered::number) else {
            return Ok(root.to_string());
        };
        let segment = Segment {
            kind: self.kind.to_string(),
            entries,
        };
        let segment_child = Child {
            first,
            hash: self.put(&segment).await?,
        };
        if root.is_empty() {
            return self.put(&self.node_of(0, vec![segment_child])).await;
        }
        let path = self.rightmost_path(root).await?;
        let root_first = path[0].children.first().map(|c| c.first).unwrap_or(first);
        let root_level = path[0].level;
        // Bottom-up: a node takes the new child if it has room; a full node stays as it is
        // and the new child starts a sibling, carried to the level above.
        let mut replaced: Option<String> = None;
        let mut carry = Some(segment_child);
        for mut node in path.into_iter().rev() {
            let mut changed = false;
            if let Some(hash) = replaced.take() {
                node.children.last_mut().expect("nodes have children").hash = hash;
                changed = true;
            }
            if let Some(child) = carry.take() {
                if node.children.len() < self.fanout {
                    node.children.push(child);
                    changed = true;
                } else {
                    let sibling = self
                        .put(&self.node_of(node.level, vec![child.clone()]))
                        .await?;
                    carry = Some(Child {
                        first: child.first,
                        hash: sibling,
                    });
                }
            }
            if changed {
                replaced = Some(self.put(&node).await?);
            }
        }
        let top = replaced.unwrap_or_else(|| root.to_string());
        let Some(sibling) = carry else {
            return Ok(top);
        };
        // The root was full: a new root above it and its new sibling.
        let root = self.node_of(
            root_level + 1,
            vec![
                Child {
                    first: root_first,
                    hash: top,
                },
                sibling,
            ],
        );
        self.put(&root).await
    }

    /// The nodes from `root` down its last children to level 0, root first.
    async fn rightmost_path(&self, root: &str) -> Result<Vec<Node>> {
        let mut path = vec![self.node(root).await?];
        while let Some(node) = path.last().filter(|n| n.level > 0) {
            let last = node
                .children
                .last()
                .ok_or_else(|| Error::DataLoss(format!("{} node with no children", self.kind)))?;
            let hash = last.hash.clone();
            path.push(self.node(&hash).await?);
        }
        Ok(path)
    }

    fn node_of(&self, level: u32, children: Vec<Child>) -> Node {
        Node {
            kind: self.kind.to_string(),
            level,
            children,
        }
    }

    /// At most `limit` entries numbered after `after` (from the start when None), in order.
    pub async fn read(&self, root: &str, after: Option<u64>, limit: usize) -> Result<Vec<V>> {
        let mut out = Vec::new();
        if !root.is_empty() && limit > 0 {
            self.collect(root.to_string(), after, limit, &mut out)
                .await?;
        }
        Ok(out)
    }

    fn collect<'a>(
        &'a self,
        hash: String,
        after: Option<u64>,
        limit: usize,
        out: &'a mut Vec<V>,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
            let node = self.node(&hash).await?;
            // Child i holds the numbers from its `first` up to the next child's.
            let start = match after {
                Some(after) => node
                    .children
                    .partition_point(|c| c.first <= after)
                    .saturating_sub(1),
                None => 0,
            };
            for child in &node.children[start..] {
                if node.level == 0 {
                    let entries = self.segment(&child.hash).await?;
                    for entry in entries {
                        if after.is_some_and(|a| entry.number() <= a) {
                            continue;
                        }
                        out.push(entry);
                        if out.len() >= limit {
                            return Ok(());
                        }
                    }
                } else {
                    self.collect(child.hash.clone(), after, limit, out).await?;
                    if out.len() >= limit {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }

    /// The last entry of the log.
    pub async fn last(&self, root: &str) -> Result<Option<V>> {
        if root.is_empty() {
            return Ok(None);
        }
        let mut node = self.node(root).await?;
        loop {
            let Some(last) = node.children.last() else {
                return Ok(None);
            };
            if node.level == 0 {
                return Ok(self.segment(&last.hash).await?.pop());
            }
            node = self.node(&last.hash.clone()).await?;
        }
    }

    /// Every object of the log (for the garbage collector's mark).
    pub async fn objects(&self, root: &str) -> Result<Vec<Hash>> {
        let mut found = Vec::new();
        if root.is_empty() {
            return Ok(found);
        }
        let mut pending = vec![root.to_string()];
        while let Some(hash) = pending.pop() {
            found.push(parse_hash(&hash, self.kind)?);
            let node = self.node(&hash).await?;
            for child in node.children {
                if node.level == 0 {
                    found.push(parse_hash(&child.hash, self.kind)?);
                } else {
                    pending.push(child.hash);
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;
    use proptest::prelude::*;

    impl Numbered for u64 {
        fn number(&self) -> u64 {
            *self
        }
    }

    fn log(dir: &std::path::Path, fanout: usize) -> AppendLog<u64> {
        AppendLog::with_fanout(test_support::local_blobs(dir), "test.log.v1", fanout)
    }

    async fn read_all(log: &AppendLog<u64>, root: &str, page: usize) -> Vec<u64> {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let got = log.read(root, after, page).await.unwrap();
            assert!(got.len() <= page);
            let Some(last) = got.last() else { break };
            after = Some(*last);
            seen.extend(got);
        }
        seen
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever the segment sizes and the fanout (so trees of 1 to 5 levels), the log reads
        /// back every entry in order from any point, its last entry is the last appended, and
        /// the collector's object list covers everything a read touches.
        #[test]
        fn reads_back_everything_in_order_from_anywhere(
            sizes in proptest::collection::vec(1usize..5, 1..40),
            fanout in 2usize..5,
            page in 1usize..7,
            from in 0u64..100,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let log = log(dir.path(), fanout);
                let mut root = String::new();
                let mut next = 1u64;
                for size in &sizes {
                    let entries: Vec<u64> = (next..next + *size as u64).collect();
                    next += *size as u64;
                    root = log.append(&root, entries).await.unwrap();
                }
                let all: Vec<u64> = (1..next).collect();
                prop_assert_eq!(read_all(&log, &root, page).await, all.clone());
                let tail = log.read(&root, Some(from), usize::MAX).await.unwrap();
                let expected: Vec<u64> = all.iter().copied().filter(|n| *n > from).collect();
                prop_assert_eq!(tail, expected);
                prop_assert_eq!(log.last(&root).await.unwrap(), Some(next - 1));
                let objects = log.objects(&root).await.unwrap();
                prop_assert!(objects.len() > sizes.len());
                prop_assert!(log.blobs.missing(&objects).await.unwrap().is_empty());
                Ok(())
            })?;
        }
    }

    /// An append writes one segment and one node per level, however long the log is.
    #[tokio::test]
    async fn an_append_rewrites_only_the_rightmost_path() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 4);
        let mut root = String::new();
        for n in 0..200u64 {
            root = log.append(&root, vec![n * 2 + 1, n * 2 + 2]).await.unwrap();
        }
        // 200 segments under fanout 4: 4 levels of nodes.
        let before = log.objects(&root).await.unwrap();
        let root2 = log.append(&root, vec![401]).await.unwrap();
        let after = log.objects(&root2).await.unwrap();
        let new: Vec<_> = after.iter().filter(|h| !before.contains(h)).collect();
        assert!(new.len() <= 1 + 5, "{} new objects", new.len());
        assert_eq!(
            log.read(&root2, Some(399), 10).await.unwrap(),
            vec![400, 401]
        );
        assert!(log.read("", None, 10).await.unwrap().is_empty());
        assert_eq!(log.last("").await.unwrap(), None);
    }
}
