//! The client side: [`Blobs`] over gRPC to a content-store process.

use aether_core::Hash;
use aether_proto::content_service_client::ContentServiceClient;
use aether_proto::{
    put_blob_request, GetBlobRequest, HasBlobsRequest, PutBlobHeader, PutBlobRequest,
    StatBlobRequest,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use tonic::transport::Channel;

use crate::{Blobs, StoreError};

/// Size of data messages this client sends.
const MESSAGE_BYTES: usize = 1024 * 1024;
/// Most hashes per HasBlobs call (the server's limit).
const BATCH: usize = 10_000;

/// A content store reached over gRPC.
#[derive(Clone)]
pub struct RemoteBlobs {
    client: ContentServiceClient<Channel>,
}

impl RemoteBlobs {
    pub fn new(channel: Channel) -> Self {
        let client = ContentServiceClient::new(channel)
            .max_decoding_message_size(8 * 1024 * 1024)
            .max_encoding_message_size(8 * 1024 * 1024);
        Self { client }
    }
}

fn parse(value: &str) -> Result<Hash, StoreError> {
    Hash::from_hex(value).map_err(|e| StoreError::Internal(format!("store returned {e}")))
}

#[async_trait]
impl Blobs for RemoteBlobs {
    async fn put(&self, data: Bytes) -> Result<Hash, StoreError> {
        let mut messages = vec![PutBlobRequest {
            part: Some(put_blob_request::Part::Header(PutBlobHeader {
                size: data.len() as u64,
                expected_hash: String::new(),
            })),
        }];
        let mut start = 0;
        while start < data.len() {
            let end = (start + MESSAGE_BYTES).min(data.len());
            messages.push(PutBlobRequest {
                part: Some(put_blob_request::Part::Data(data.slice(start..end))),
            });
            start = end;
        }
        let response = self
            .client
            .clone()
            .put_blob(futures::stream::iter(messages))
            .await?;
        parse(&response.into_inner().hash)
    }

    async fn get(&self, hash: &Hash) -> Result<Bytes, StoreError> {
        let mut stream = self.read(hash, 0, 0).await?;
        let mut buffer = BytesMut::new();
        while let Some(piece) = stream.try_next().await? {
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
        for batch in hashes.chunks(BATCH) {
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
