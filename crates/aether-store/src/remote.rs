//! The client side: [`Blobs`] over gRPC to a content-store process.
//!
//! Uploads skip what the store already holds: the client names the blob itself (the same
//! chunking and hashing as the store), asks HasBlobs, and sends content only when the blob is
//! missing, with `expected_hash` so the store refuses bytes that were damaged on the way.

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
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::blobs::blob_hash;
use crate::{Blobs, Limits, StoreError};

/// Size of data messages this client sends (well under the store's message limit).
pub const MESSAGE_BYTES: usize = 1024 * 1024;
/// Blobs at least this large are looked up with HasBlobs before their bytes are sent; for
/// smaller ones the round trip costs about as much as the upload.
pub const DEDUP_PROBE_BYTES: usize = 64 * 1024;

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
            })),
        };
        // Slices of `data`, produced as the channel asks for them: no copy, no second buffer.
        let messages = (0..size)
            .step_by(MESSAGE_BYTES)
            .map(move |start| PutBlobRequest {
                part: Some(put_blob_request::Part::Data(
                    data.slice(start..(start + MESSAGE_BYTES).min(size)),
                )),
            });
        let response = self
            .client
            .clone()
            .put_blob(futures::stream::iter(
                std::iter::once(header).chain(messages),
            ))
            .await?
            .into_inner();
        Ok(Uploaded {
            hash: parse(&response.hash)?,
            size: response.size,
            sent_bytes: size as u64,
            stored_bytes: response.stored_bytes,
        })
    }
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
            .stat_blob(StatBlobRequest {
                hash: hash.to_hex(),
            })
            .await?;
        Ok(response.into_inner().size)
    }

    async fn missing(&self, hashes: &[Hash]) -> Result<Vec<Hash>, StoreError> {
        let mut missing = Vec::new();
        for batch in hashes.chunks(self.max_batch) {
            let response = self
                .client
                .clone()
                .has_blobs(HasBlobsRequest {
                    hashes: batch.iter().map(Hash::to_hex).collect(),
                })
                .await?;
            for hash in response.into_inner().missing {
                missing.push(parse(&hash)?);
            }
        }
        Ok(missing)
    }
}
