//! The on-store format of a stream.
//!
//! A stream is a run of immutable segments `streams/<session_id>/<first offset>.seg`, the first
//! offset zero-padded to 20 digits so names sort by offset. A segment holds consecutive
//! messages as length-delimited prost-encoded `BusMessage`s, starting at the offset in its name.
//! Segments are written with create-if-absent and never rewritten.

use std::sync::Arc;

use aether_proto::BusMessage;
use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use prost::Message;

use crate::BusError;

const SUFFIX: &str = ".seg";
const OFFSET_DIGITS: usize = 20;

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

/// Encodes consecutive messages into one segment.
pub(crate) fn encode(messages: &[Arc<BusMessage>]) -> Bytes {
    let size: usize = messages
        .iter()
        .map(|m| {
            let len = m.encoded_len();
            len + prost::length_delimiter_len(len)
        })
        .sum();
    let mut buffer = BytesMut::with_capacity(size);
    for message in messages {
        message
            .encode_length_delimited(&mut buffer)
            .expect("the buffer was sized for every message");
    }
    buffer.freeze()
}

/// Decodes a segment and checks that it holds consecutive offsets starting at `first`.
pub(crate) fn decode(
    mut data: Bytes,
    first: u64,
    object: &Path,
) -> Result<Vec<BusMessage>, BusError> {
    let corrupt = |detail: String| BusError::Corrupt {
        object: object.to_string(),
        detail,
    };
    let mut messages = Vec::new();
    while !data.is_empty() {
        let message = BusMessage::decode_length_delimited(&mut data)
            .map_err(|e| corrupt(format!("message {}: {e}", messages.len())))?;
        let expected = first + messages.len() as u64;
        if message.offset != expected {
            return Err(corrupt(format!(
                "holds offset {} where {expected} belongs",
                message.offset
            )));
        }
        messages.push(message);
    }
    if messages.is_empty() {
        return Err(corrupt("the segment is empty".into()));
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
}
