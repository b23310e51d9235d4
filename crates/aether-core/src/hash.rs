//! Content names: BLAKE3-256 hashes of blobs, chunks, trees and manifests.
//!
//! A [`Hash`](struct@Hash) is what the content store files objects under and what it verifies every read
//! against (promise 5). Its text form is 64 lower-case hex characters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The key that separates manifest names from chunk names (see [`manifest_hash`]).
const MANIFEST_CONTEXT: &str = "aetherfs.v1 chunk manifest";

/// A BLAKE3-256 content hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; 32]);

/// Why a string is not a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// The text is not 64 hex characters.
    #[error("invalid hash \"{value}\": expected 64 lower-case hex characters (BLAKE3-256)")]
    Invalid {
        /// The rejected text, truncated to 80 characters.
        value: String,
    },
}

impl Hash {
    /// Hashes `data` with plain BLAKE3.
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    /// The lower-case hex form, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Result<Hash, HashError> {
        let mut bytes = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut bytes).is_err() {
            return Err(HashError::Invalid {
                value: crate::excerpt(s, 80),
            });
        }
        Ok(Hash(bytes))
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Domain-separated hash of an encoded chunk manifest, so a manifest's name can never equal a
/// plain chunk's name: BLAKE3 in key-derivation mode with context "aetherfs.v1 chunk manifest".
pub fn manifest_hash(encoded: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new_derive_key(MANIFEST_CONTEXT);
    hasher.update(encoded);
    Hash(*hasher.finalize().as_bytes())
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Hash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Hash, HashError> {
        Hash::from_hex(s)
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(deserializer)?;
        Hash::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = Hash::of(b"hello");
        let text = h.to_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(Hash::from_hex(&text), Ok(h));
        assert_eq!(text.parse::<Hash>(), Ok(h));
        assert_eq!(h.to_string(), text);
        assert_eq!(format!("{h:?}"), text);
        assert_eq!(h.as_bytes(), blake3::hash(b"hello").as_bytes());
    }

    #[test]
    fn from_hex_accepts_upper_case() {
        let h = Hash::of(b"x");
        assert_eq!(Hash::from_hex(&h.to_hex().to_uppercase()), Ok(h));
    }

    #[test]
    fn from_hex_rejects_bad_text() {
        let good = Hash::of(b"x").to_hex();
        for bad in [
            String::new(),
            good[..63].to_string(),
            format!("{good}0"),
            format!("{}g", &good[..63]),
            format!("{}é", &good[..62]),
        ] {
            let err = Hash::from_hex(&bad).unwrap_err();
            assert!(
                err.to_string().contains("expected 64 lower-case hex"),
                "{err}"
            );
        }
    }

    #[test]
    fn error_message_is_truncated() {
        let long = "z".repeat(500);
        let HashError::Invalid { value } = Hash::from_hex(&long).unwrap_err();
        assert_eq!(value, format!("{}...", "z".repeat(80)));
    }

    #[test]
    fn manifest_hash_is_domain_separated() {
        let data = b"some bytes";
        assert_ne!(manifest_hash(data), Hash::of(data));
        assert_eq!(manifest_hash(data), manifest_hash(data));
    }

    #[test]
    fn serde_uses_hex_string() {
        let h = Hash::of(b"serde");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", h.to_hex()));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<Hash>("\"abc\"").is_err());
    }
}
