//! Chunk manifests: a large blob as the ordered list of the chunks content-defined chunking
//! cut it into.
//!
//! A manifest is stored as an object of its own, named by [`manifest_hash`] (domain-separated,
//! so it can never collide with a chunk's name). Like trees, its encoding is canonical and
//! [`ChunkManifest::decode`] accepts nothing else.
//!
//! Encoding: magic `b"AFM1"`, `u32` LE chunk count, then per chunk a 32-byte hash and a `u64`
//! LE size.

use crate::hash::{manifest_hash, Hash};

const MAGIC: &[u8; 4] = b"AFM1";
const HEADER_BYTES: usize = 8;
const CHUNK_BYTES: usize = 32 + 8;

/// The chunks of one blob, in order, as (chunk hash, chunk size in bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkManifest {
    /// (chunk hash, chunk size) in blob order.
    pub chunks: Vec<(Hash, u64)>,
}

/// Why bytes are not a chunk manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The encoding does not start with `AFM1`.
    #[error("not a chunk manifest: expected magic \"AFM1\" in the first 4 bytes")]
    BadMagic,
    /// The encoding ends before its chunk count.
    #[error("chunk manifest is truncated: {len} bytes is shorter than the 8-byte header")]
    TruncatedHeader {
        /// The input length.
        len: usize,
    },
    /// The manifest lists no chunks.
    #[error(
        "chunk manifest has no chunks: an empty blob is stored as a plain blob, not a manifest"
    )]
    Empty,
    /// The input length does not match the declared chunk count.
    #[error("chunk manifest declares {count} chunks, which take {expected} bytes, but the input is {len} bytes")]
    LengthMismatch {
        /// The declared count.
        count: u32,
        /// The length that count implies.
        expected: u64,
        /// The input length.
        len: usize,
    },
    /// A chunk has size 0.
    #[error("chunk {index} of the manifest has size 0: every chunk holds at least one byte")]
    ZeroSizeChunk {
        /// The chunk's position.
        index: usize,
    },
    /// The chunk sizes add up to more than `u64::MAX`.
    #[error("chunk manifest sizes add up to more than 2^64-1 bytes")]
    SizeOverflow,
}

impl ChunkManifest {
    /// The blob's size: the sum of the chunk sizes (saturating).
    pub fn total_size(&self) -> u64 {
        self.chunks
            .iter()
            .fold(0u64, |sum, &(_, size)| sum.saturating_add(size))
    }

    /// The canonical binary encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.chunks.len() * CHUNK_BYTES);
        out.extend_from_slice(MAGIC);
        let count =
            u32::try_from(self.chunks.len()).expect("a manifest has at most u32::MAX chunks");
        out.extend_from_slice(&count.to_le_bytes());
        for (hash, size) in &self.chunks {
            out.extend_from_slice(hash.as_bytes());
            out.extend_from_slice(&size.to_le_bytes());
        }
        out
    }

    /// Parses an encoding; rejects anything [`ChunkManifest::encode`] would not produce for a
    /// non-empty manifest of non-empty chunks. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<ChunkManifest, ManifestError> {
        if bytes.get(..4) != Some(MAGIC.as_slice()) {
            return Err(ManifestError::BadMagic);
        }
        let Some(count) = bytes.get(4..HEADER_BYTES) else {
            return Err(ManifestError::TruncatedHeader { len: bytes.len() });
        };
        let count = u32::from_le_bytes(count.try_into().expect("slice of 4 bytes"));
        if count == 0 {
            return Err(ManifestError::Empty);
        }
        let expected = HEADER_BYTES as u64 + u64::from(count) * CHUNK_BYTES as u64;
        if bytes.len() as u64 != expected {
            return Err(ManifestError::LengthMismatch {
                count,
                expected,
                len: bytes.len(),
            });
        }
        let mut total = 0u64;
        let mut chunks = Vec::with_capacity(count as usize);
        for (index, raw) in bytes[HEADER_BYTES..].chunks_exact(CHUNK_BYTES).enumerate() {
            let hash = Hash(raw[..32].try_into().expect("slice of 32 bytes"));
            let size = u64::from_le_bytes(raw[32..].try_into().expect("slice of 8 bytes"));
            if size == 0 {
                return Err(ManifestError::ZeroSizeChunk { index });
            }
            total = total.checked_add(size).ok_or(ManifestError::SizeOverflow)?;
            chunks.push((hash, size));
        }
        Ok(ChunkManifest { chunks })
    }

    /// The manifest's name: [`manifest_hash`] of its encoding.
    pub fn hash(&self) -> Hash {
        manifest_hash(&self.encode())
    }

    /// Index of the chunk holding byte `offset` and the offset of that chunk's first byte;
    /// None past the end.
    pub fn locate(&self, offset: u64) -> Option<(usize, u64)> {
        let mut start = 0u64;
        for (index, &(_, size)) in self.chunks.iter().enumerate() {
            let end = start.saturating_add(size);
            if offset < end {
                return Some((index, start));
            }
            start = end;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(sizes: &[u64]) -> ChunkManifest {
        ChunkManifest {
            chunks: sizes
                .iter()
                .map(|&size| (Hash::of(&size.to_le_bytes()), size))
                .collect(),
        }
    }

    #[test]
    fn round_trip() {
        let m = manifest(&[10, 20, 5]);
        let bytes = m.encode();
        assert_eq!(bytes.len(), 8 + 3 * 40);
        assert_eq!(&bytes[..4], b"AFM1");
        assert_eq!(ChunkManifest::decode(&bytes), Ok(m.clone()));
        assert_eq!(m.total_size(), 35);
        assert_eq!(m.hash(), manifest_hash(&bytes));
        assert_ne!(m.hash(), Hash::of(&bytes));
    }

    #[test]
    fn locate_finds_chunk_boundaries() {
        let m = manifest(&[10, 20, 5]);
        assert_eq!(m.locate(0), Some((0, 0)));
        assert_eq!(m.locate(9), Some((0, 0)));
        assert_eq!(m.locate(10), Some((1, 10)));
        assert_eq!(m.locate(29), Some((1, 10)));
        assert_eq!(m.locate(30), Some((2, 30)));
        assert_eq!(m.locate(34), Some((2, 30)));
        assert_eq!(m.locate(35), None);
        assert_eq!(m.locate(u64::MAX), None);
        assert_eq!(manifest(&[]).locate(0), None);
    }

    #[test]
    fn decode_rejects_bad_input() {
        assert_eq!(ChunkManifest::decode(b""), Err(ManifestError::BadMagic));
        assert_eq!(ChunkManifest::decode(b"AFT1"), Err(ManifestError::BadMagic));
        assert_eq!(
            ChunkManifest::decode(b"AFM1\x01"),
            Err(ManifestError::TruncatedHeader { len: 5 })
        );
        assert_eq!(
            ChunkManifest::decode(&manifest(&[]).encode()),
            Err(ManifestError::Empty)
        );
        assert!(matches!(
            ChunkManifest::decode(b"AFM1\xff\xff\xff\xff"),
            Err(ManifestError::LengthMismatch {
                count: u32::MAX,
                ..
            })
        ));

        let bytes = manifest(&[1, 2]).encode();
        for len in 0..bytes.len() {
            assert!(
                ChunkManifest::decode(&bytes[..len]).is_err(),
                "prefix {len}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            ChunkManifest::decode(&trailing),
            Err(ManifestError::LengthMismatch { .. })
        ));

        assert_eq!(
            ChunkManifest::decode(&manifest(&[3, 0]).encode()),
            Err(ManifestError::ZeroSizeChunk { index: 1 })
        );
        assert_eq!(
            ChunkManifest::decode(&manifest(&[u64::MAX, 1]).encode()),
            Err(ManifestError::SizeOverflow)
        );
    }
}
