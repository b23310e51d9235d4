//! The client side: [`Blobs`] over gRPC to a content-store process.
//!
//! Uploads skip what the store already holds: the client names the blob itself (the same
//! chunking and hashing as the store), asks HasBlobs, and sends content only when the blob is
//! missing, with `expected_hash` so the store refuses bytes that were damaged on the way.
//!
//! Streamed uploads ([`Blobs::put_stream`]) cannot be named before they are sent: they go as
//! one PutBlob with `size_unknown` (the store cuts and names them as it does every blob), the
//! client names the same bytes as they pass and refuses a reply that names anything else.
//! Back-pressure: at most [`STREAM_MESSAGES_IN_FLIGHT`] messages wait for the channel; the
//! source is pulled only when one leaves. Cancellation: an error from the source resets the
//! call before its stream ends, so the store never completes the blob.

use aether_auth::AttachToken;
use aether_core::Hash;
use aether_proto::content_service_client::ContentServiceClient;
use aether_proto::{
    put_blob_request, GetBlobRequest, HasBlobsRequest, PutBlobHeader, PutBlobRequest,
    StatBlobRequest,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::blobs::{blob_hash, BlobNamer};
use crate::{Blobs, Limits, StoreError};

/// Size of data messages this client sends (well under the store's message limit).
pub const MESSAGE_BYTES: usize = 1024 * 1024;
/// Data messages of a streamed upload queued for the channel: with [`MESSAGE_BYTES`], at most
/// 4 MiB wait beside the HTTP/2 stream window.
pub const STREAM_MESSAGES_IN_FLIGHT: usize = 4;
/// Blobs at least this large are looked up with HasBlobs before their bytes are sent; for
/// smaller ones the round trip costs about as much as the upload.
pub const DEDUP_PROBE_BYTES: usize = 64 * 1024;
/// How long a unary call (StatBlob, HasBlobs) may take when the caller set no shorter
/// deadline: a store that has stopped answering fails the call instead of holding it.
/// Streams have no default (their length depends on the blob); HTTP/2 keepalive ends them
/// when the store stops answering, and a caller's deadline is always carried.
pub const UNARY_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// First wait after the store refused an upload for being at its limit; it doubles up to
/// [`LAST_BACKOFF`] (about half a second in all), then the refusal reaches the caller.
const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(2);
const LAST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(256);

/// `wait` spread over [wait/2, wait], so refused uploads do not all come back at once.
fn jitter(wait: std::time::Duration) -> std::time::Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    wait / 2 + wait.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// What an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub hash: Hash,
    pub size: u64,
    /// Content bytes sent to the store: 0 when it already held the blob.
    pub sent_bytes: u64,
    /// Bytes the store newly wrote.
    pub stored_bytes: u64,
}

/// A content store reached over gRPC.
#[derive(Clone)]
pub struct RemoteBlobs {
    client: ContentServiceClient<InterceptedService<Channel, AttachToken>>,
    max_batch: usize,
}

impl RemoteBlobs {
    /// A client for a store running with the default limits.
    pub fn new(channel: Channel) -> Self {
        Self::with_limits(channel, &Limits::default())
    }

    /// A client for a store running with `limits`.
    pub fn with_limits(channel: Channel, limits: &Limits) -> Self {
        Self::with_token(channel, limits, AttachToken::none())
    }

    /// A client that authenticates every call with `token` (service-to-service calls).
    pub fn with_token(channel: Channel, limits: &Limits, token: AttachToken) -> Self {
        let client = ContentServiceClient::with_interceptor(channel, token)
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(limits.max_message_bytes);
        Self {
            client,
            max_batch: limits.max_batch,
        }
    }

    /// Stores `data`, sending its bytes only if the store does not hold it yet.
    pub async fn upload(&self, data: Bytes) -> Result<Uploaded, StoreError> {
        let hash = blob_hash(&data);
        if self.missing(&[hash]).await?.is_empty() {
            return Ok(Uploaded {
                hash,
                size: data.len() as u64,
                sent_bytes: 0,
                stored_bytes: 0,
            });
        }
        self.send(data, Some(hash)).await
    }

    /// Streams `data` to PutBlob in messages of [`MESSAGE_BYTES`].
    pub async fn send(&self, data: Bytes, expected: Option<Hash>) -> Result<Uploaded, StoreError> {
        let size = data.len();
        let header = PutBlobRequest {
            part: Some(put_blob_request::Part::Header(PutBlobHeader {
                size: size as u64,
                expected_hash: expected.map(|h| h.to_hex()).unwrap_or_default(),
                size_unknown: false,
            })),
        };
        let mut backoff = FIRST_BACKOFF;
        let response = loop {
            // Slices of `data`, produced as the channel asks for them: no copy, no second
            // buffer (a retry slices it again).
            let messages = data_messages(data.clone());
            let call = self
                .client
                .clone()
                .put_blob(futures::stream::iter(
                    std::iter::once(header.clone()).chain(messages),
                ))
                .await;
            match call {
                // The store is at its limit of uploads and stored nothing: a burst from this
                // process (or another) waits a little instead of failing the caller's change.
                Err(status)
                    if status.code() == tonic::Code::ResourceExhausted
                        && backoff <= LAST_BACKOFF =>
                {
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff *= 2;
                }
                call => break call?.into_inner(),
            }
        };
        Ok(Uploaded {
            hash: parse(&response.hash)?,
            size: response.size,
            sent_bytes: size as u64,
            stored_bytes: response.stored_bytes,
        })
    }
}

/// Why a streamed upload stopped before the store answered: the source failed (its sender is
/// kept until the call is dropped, so the stream is reset rather than ended cleanly), or the
/// call failed.
type Stopped = (
    StoreError,
    Option<tokio::sync::mpsc::Sender<PutBlobRequest>>,
);

/// A piece as data messages of at most [`MESSAGE_BYTES`] (slices, no copy).
fn data_messages(piece: Bytes) -> impl Iterator<Item = PutBlobRequest> {
    let size = piece.len();
    (0..size)
        .step_by(MESSAGE_BYTES)
        .map(move |start| PutBlobRequest {
            part: Some(put_blob_request::Part::Data(
                piece.slice(start..(start + MESSAGE_BYTES).min(size)),
            )),
        })
}

/// A unary request with [`UNARY_CALL_TIMEOUT`] (a caller's shorter deadline still wins).
fn with_timeout<T>(message: T) -> tonic::Request<T> {
    aether_auth::deadline::request_within(message, UNARY_CALL_TIMEOUT)
}

fn parse(value: &str) -> Result<Hash, StoreError> {
    Hash::from_hex(value).map_err(|e| StoreError::Internal(format!("store returned {e}")))
}

#[async_trait]
impl Blobs for RemoteBlobs {
    async fn put(&self, data: Bytes) -> Result<Hash, StoreError> {
        let uploaded = if data.len() >= DEDUP_PROBE_BYTES {
            self.upload(data).await?
        } else {
            self.send(data, None).await?
        };
        Ok(uploaded.hash)
    }

    async fn put_stream(
        &self,
        mut data: BoxStream<'_, Result<Bytes, StoreError>>,
    ) -> Result<(Hash, u64), StoreError> {
        let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_MESSAGES_IN_FLIGHT);
        let header = PutBlobRequest {
            part: Some(put_blob_request::Part::Header(PutBlobHeader {
                size: 0,
                expected_hash: String::new(),
                size_unknown: true,
            })),
        };
        let mut client = self.client.clone();
        let call = async move {
            client
                .put_blob(ReceiverStream::new(receiver))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| -> Stopped { (status.into(), None) })
        };
        // Runs beside the call in this task (no spawn: `data` may borrow from the caller).
        let feed = async move {
            let mut namer = BlobNamer::default();
            if sender.send(header).await.is_err() {
                return Ok(None);
            }
            while let Some(piece) = data.next().await {
                let piece = match piece {
                    Ok(piece) => piece,
                    Err(e) => return Err((e, Some(sender))),
                };
                namer.push(piece.clone());
                for message in data_messages(piece) {
                    if sender.send(message).await.is_err() {
                        // The call ended early; its status says why.
                        return Ok(None);
                    }
                }
            }
            // Dropping the sender ends the stream: the blob is complete.
            drop(sender);
            Ok::<_, Stopped>(Some(namer.finish()))
        };
        // On an error the call is dropped (reset) before the source's sender is.
        let (response, named) = futures::try_join!(call, feed).map_err(|(e, _sender)| e)?;
        let Some((expected, size)) = named else {
            return Err(StoreError::Internal(
                "the content store answered a streamed upload before its end".into(),
            ));
        };
        let stored = parse(&response.hash)?;
        if stored != expected || response.size != size {
            return Err(StoreError::Internal(format!(
                "the content store named a streamed blob {stored} ({} bytes), but the {size} bytes sent are {expected}; nothing references it, retry",
                response.size
            )));
        }
        Ok((stored, size))
    }

    async fn get(&self, hash: &Hash) -> Result<Bytes, StoreError> {
        let pieces: Vec<Bytes> = self.read(hash, 0, 0).await?.try_collect().await?;
        if pieces.len() == 1 {
            return Ok(pieces.into_iter().next().expect("one piece"));
        }
        let mut buffer = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
        for piece in pieces {
            buffer.extend_from_slice(&piece);
        }
        Ok(buffer.freeze())
    }

    async fn read(
        &self,
        hash: &Hash,
        offset: u64,
        length: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let stream = self
            .client
            .clone()
            .get_blob(GetBlobRequest {
                hash: hash.to_hex(),
                offset,
                length,
            })
            .await?
            .into_inner();
        Ok(stream
            .map(|message| message.map(|m| m.data).map_err(StoreError::from))
            .boxed())
    }

    async fn size(&self, hash: &Hash) -> Result<u64, StoreError> {
        let response = self
            .client
            .clone()
            .stat_blob(with_timeout(StatBlobRequest {
                hash: hash.to_hex(),
            }))
            .await?;
        Ok(response.into_inner().size)
    }

    async fn missing(&self, hashes: &[Hash]) -> Result<Vec<Hash>, StoreError> {
        let mut missing = Vec::new();
        for batch in hashes.chunks(self.max_batch) {
            let response = self
                .client
                .clone()
                .has_blobs(with_timeout(HasBlobsRequest {
                    hashes: batch.iter().map(Hash::to_hex).collect(),
                }))
                .await?;
            for hash in response.into_inner().missing {
                missing.push(parse(&hash)?);
            }
        }
        Ok(missing)
    }
}
