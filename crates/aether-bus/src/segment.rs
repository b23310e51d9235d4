//! The on-store format of a stream.
//!
//! A stream is a run of immutable segments `streams/<session_id>/<first offset>.seg`, the first
//! offset zero-padded to 20 digits so names sort by offset. Segments are written with
//! create-if-absent and never rewritten. A segment holds consecutive messages starting at the
//! offset in its name, in one of two formats:
//!
//! - **v2** (written now): [`MAGIC_V2`], the BLAKE3 hash of the body, then the body: the
//!   messages as length-delimited [`StoredMessage`]s, the bus's own record type, so a change
//!   of the API's `BusMessage` is not a change of what is stored. The hash is checked on
//!   every read, like every other object (promise 5).
//! - **v1** (read only): length-delimited wire `BusMessage`s, no checksum. A v1 segment never
//!   starts with a 0 byte (its first byte is the length of a message that holds an offset of
//!   at least 1), so the magic tells the two apart.

use std::collections::HashMap;
use std::sync::Arc;

use aether_proto::BusMessage;
use bytes::{Buf, Bytes, BytesMut};
use object_store::path::Path;
use prost::Message;

use crate::BusError;

const SUFFIX: &str = ".seg";
const OFFSET_DIGITS: usize = 20;
/// The start of a v2 segment.
const MAGIC_V2: &[u8; 8] = b"\0aebus02";
const HASH_BYTES: usize = 32;

/// One message as a v2 segment stores it.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredMessage {
    #[prost(uint64, tag = "1")]
    offset: u64,
    #[prost(string, tag = "2")]
    subject: String,
    #[prost(bytes = "bytes", tag = "3")]
    payload: Bytes,
    #[prost(map = "string, string", tag = "4")]
    headers: HashMap<String, String>,
    #[prost(message, optional, tag = "5")]
    publish_time: Option<StoredTime>,
    #[prost(string, tag = "6")]
    publisher: String,
}

/// A time as seconds and nanoseconds since the Unix epoch (exactly what the API carries).
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct StoredTime {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

impl From<&BusMessage> for StoredMessage {
    fn from(message: &BusMessage) -> Self {
        StoredMessage {
            offset: message.offset,
            subject: message.subject.clone(),
            payload: message.payload.clone(),
            headers: message.headers.clone().into_iter().collect(),
            publish_time: message.publish_time.map(|t| StoredTime {
                seconds: t.seconds,
                nanos: t.nanos,
            }),
            publisher: message.publisher.clone(),
        }
    }
}

impl From<StoredMessage> for BusMessage {
    fn from(stored: StoredMessage) -> Self {
        BusMessage {
            offset: stored.offset,
            subject: stored.subject,
            payload: stored.payload,
            headers: stored.headers.into_iter().collect(),
            publish_time: stored.publish_time.map(|t| prost_types::Timestamp {
                seconds: t.seconds,
                nanos: t.nanos,
            }),
            publisher: stored.publisher,
        }
    }
}

/// The folder of one session's segments. The session id is validated, so it is one clean
/// path part.
pub(crate) fn stream_prefix(session_id: &str) -> Path {
    Path::from(format!("streams/{session_id}"))
}

/// The object that holds the segment starting at `first`.
pub(crate) fn segment_path(session_id: &str, first: u64) -> Path {
    Path::from(format!(
        "streams/{session_id}/{first:0width$}{SUFFIX}",
        width = OFFSET_DIGITS
    ))
}

/// The first offset of a segment, from its file name; None for anything else.
pub(crate) fn parse_segment_name(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_suffix(SUFFIX)?;
    if digits.len() != OFFSET_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|first| *first > 0)
}

/// Encodes consecutive messages into one (v2) segment.
pub(crate) fn encode(messages: &[Arc<BusMessage>]) -> Bytes {
    let stored: Vec<StoredMessage> = messages.iter().map(|m| StoredMessage::from(&**m)).collect();
    let body_size: usize = stored
        .iter()
        .map(|m| {
            let len = m.encoded_len();
            len + prost::length_delimiter_len(len)
        })
        .sum();
    let mut body = BytesMut::with_capacity(body_size);
    for message in &stored {
        message
            .encode_length_delimited(&mut body)
            .expect("the buffer was sized for every message");
    }
    let mut segment = BytesMut::with_capacity(MAGIC_V2.len() + HASH_BYTES + body.len());
    segment.extend_from_slice(MAGIC_V2);
    segment.extend_from_slice(blake3::hash(&body).as_bytes());
    segment.extend_from_slice(&body);
    segment.freeze()
}

/// Decodes a segment of either format and checks that it holds consecutive offsets starting
/// at `first` (and, for v2, that its body is what its hash says).
pub(crate) fn decode(data: Bytes, first: u64, object: &Path) -> Result<Vec<BusMessage>, BusError> {
    let corrupt = |detail: String| BusError::Corrupt {
        object: object.to_string(),
        detail,
    };
    let messages = if data.starts_with(MAGIC_V2) {
        let mut body = data.slice(MAGIC_V2.len()..);
        if body.len() < HASH_BYTES {
            return Err(corrupt("the segment ends inside its checksum".into()));
        }
        let stored_hash = body.split_to(HASH_BYTES);
        if blake3::hash(&body).as_bytes() != stored_hash.as_ref() {
            return Err(corrupt(
                "its content does not match its checksum (damaged in the store)".into(),
            ));
        }
        decode_each::<StoredMessage>(body, &corrupt)?
            .into_iter()
            .map(BusMessage::from)
            .collect()
    } else {
        decode_each::<BusMessage>(data, &corrupt)?
    };
    for (i, message) in messages.iter().enumerate() {
        let expected = first.wrapping_add(i as u64);
        if message.offset != expected {
            return Err(corrupt(format!(
                "holds offset {} where {expected} belongs",
                message.offset
            )));
        }
    }
    if messages.is_empty() {
        return Err(corrupt("the segment is empty".into()));
    }
    Ok(messages)
}

/// Length-delimited messages of type `M` until `data` ends. A claimed length is never
/// allocated: prost reads a message only from bytes that are there.
fn decode_each<M: Message + Default>(
    mut data: Bytes,
    corrupt: &dyn Fn(String) -> BusError,
) -> Result<Vec<M>, BusError> {
    let mut messages = Vec::new();
    while data.has_remaining() {
        let message = M::decode_length_delimited(&mut data)
            .map_err(|e| corrupt(format!("message {}: {e}", messages.len())))?;
        messages.push(message);
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: u64) -> Arc<BusMessage> {
        Arc::new(BusMessage {
            offset,
            subject: "a.b".into(),
            payload: Bytes::from(vec![offset as u8; 100]),
            headers: [("k".to_string(), "v".to_string())].into(),
            publish_time: None,
            publisher: "p".into(),
        })
    }

    #[test]
    fn names_sort_by_offset_and_round_trip() {
        let path = segment_path("s-1", 42);
        assert_eq!(path.as_ref(), "streams/s-1/00000000000000000042.seg");
        assert_eq!(parse_segment_name(path.filename().unwrap()), Some(42));
        assert!(segment_path("s", 9).as_ref() < segment_path("s", 10).as_ref());
        for bad in [
            "42.seg",
            "00000000000000000042",
            "0000000000000000004x.seg",
            "00000000000000000000.seg",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn segments_round_trip_and_reject_corruption() {
        let messages: Vec<_> = (7..12).map(message).collect();
        let data = encode(&messages);
        let path = segment_path("s", 7);
        let decoded = decode(data.clone(), 7, &path).unwrap();
        assert_eq!(decoded.len(), 5);
        assert!(decoded.iter().zip(&messages).all(|(a, b)| a == b.as_ref()));

        assert!(matches!(
            decode(data.clone(), 6, &path),
            Err(BusError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(data.slice(..data.len() - 1), 7, &path),
            Err(BusError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(Bytes::new(), 7, &path),
            Err(BusError::Corrupt { .. })
        ));
    }

    /// Segments written before v2 (wire messages, no checksum) still read; a v2 segment with
    /// one byte changed anywhere after its magic is refused as corrupt.
    #[test]
    fn v1_segments_read_and_v2_checksums_are_verified() {
        let messages: Vec<_> = (3..6).map(message).collect();
        let mut v1 = BytesMut::new();
        for m in &messages {
            m.encode_length_delimited(&mut v1).unwrap();
        }
        let path = segment_path("s", 3);
        let decoded = decode(v1.freeze(), 3, &path).unwrap();
        assert!(decoded.iter().zip(&messages).all(|(a, b)| a == b.as_ref()));

        let v2 = encode(&messages);
        assert!(v2.starts_with(MAGIC_V2));
        for at in MAGIC_V2.len()..v2.len() {
            let mut damaged = v2.to_vec();
            damaged[at] ^= 0x40;
            match decode(damaged.into(), 3, &path) {
                Err(BusError::Corrupt { detail, .. }) => {
                    assert!(detail.contains("checksum"), "{detail}")
                }
                other => panic!("a damaged byte at {at} gave {other:?}"),
            }
        }
    }

    mod fuzz {
        //! Structure-aware fuzzing of segment decoding: real segments (valid messages with
        //! hostile field values) that are then cut, spliced, renumbered or given a length
        //! prefix that claims more than follows. Decoding must never panic or allocate from
        //! a claimed length, and must accept exactly the segments `encode` writes.
        use super::*;
        use proptest::prelude::*;

        fn hostile_message() -> impl Strategy<Value = BusMessage> {
            (
                any::<u64>(),
                ".{0,40}",
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
                ".{0,20}",
            )
                .prop_map(|(offset, subject, payload, headers, publisher)| {
                    BusMessage {
                        offset,
                        subject,
                        payload: payload.into(),
                        headers: headers.into_iter().collect(),
                        publish_time: None,
                        publisher,
                    }
                })
        }

        /// A valid segment from `first`, and a way to damage it.
        fn segment() -> impl Strategy<Value = (u64, Vec<BusMessage>, u8, usize, u64)> {
            (
                0u64..u64::MAX / 2,
                proptest::collection::vec(hostile_message(), 1..8),
                0u8..5,
                any::<usize>(),
                any::<u64>(),
            )
                .prop_map(|(first, mut messages, damage, at, value)| {
                    for (i, message) in messages.iter_mut().enumerate() {
                        message.offset = first + i as u64;
                    }
                    (first, messages, damage, at, value)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn decode_accepts_what_encode_writes_and_survives_damage(
                (first, messages, damage, at, value) in segment()
            ) {
                let path = segment_path("s", first.max(1));
                let shared: Vec<_> = messages.iter().cloned().map(Arc::new).collect();
                let data = encode(&shared);
                prop_assert_eq!(decode(data.clone(), first, &path).unwrap(), messages.clone());
                let cut = at % data.len();
                let damaged: Bytes = match damage {
                    // Cut short.
                    0 => data.slice(..cut),
                    // A length prefix claiming far more than follows (up to 2^64).
                    1 => {
                        let mut out = BytesMut::new();
                        prost::encoding::encode_varint(value, &mut out);
                        out.extend_from_slice(&data[..cut]);
                        out.freeze()
                    }
                    // Renumbered: a message whose offset is not the next one.
                    2 => {
                        let mut changed = messages.clone();
                        let i = at % changed.len();
                        changed[i].offset = changed[i].offset.wrapping_add(value | 1);
                        encode(&changed.into_iter().map(Arc::new).collect::<Vec<_>>())
                    }
                    // Spliced: garbage in the middle.
                    3 => [&data[..cut], &value.to_le_bytes()[..], &data[cut..]].concat().into(),
                    // Claimed from another first offset.
                    _ => data.clone(),
                };
                let claimed_first = if damage == 4 { first.wrapping_add(value | 1) } else { first };
                match decode(damaged.clone(), claimed_first, &path) {
                    // Damage can leave a decodable segment only by chance (protobuf skips
                    // unknown fields); then it must still hold consecutive offsets.
                    Ok(decoded) => {
                        for (i, message) in decoded.iter().enumerate() {
                            prop_assert_eq!(message.offset, claimed_first + i as u64);
                        }
                    }
                    Err(BusError::Corrupt { .. }) => {}
                    Err(other) => prop_assert!(false, "unexpected error {other:?}"),
                }
            }
        }
    }
}
