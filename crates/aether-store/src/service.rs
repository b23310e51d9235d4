//! `ContentService` over gRPC: a thin adapter from the wire to [`BlobStore`].

use std::pin::Pin;

use aether_core::Hash;
use aether_proto::content_service_server::{ContentService, ContentServiceServer};
use aether_proto::{
    put_blob_request, BlobLayout, ChunkRef, GetBlobRequest, GetBlobResponse, HasBlobsRequest,
    HasBlobsResponse, PutBlobRequest, PutBlobResponse, StatBlobRequest, StatBlobResponse,
};
use bytes::BytesMut;
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::blobs::{cut_points, BlobStore, Layout};

/// The gRPC face of a [`BlobStore`].
#[derive(Clone)]
pub struct ContentGrpc {
    store: BlobStore,
}

impl ContentGrpc {
    pub fn new(store: BlobStore) -> Self {
        Self { store }
    }

    /// A tonic service with the store's message size limit applied.
    pub fn into_server(self) -> ContentServiceServer<Self> {
        let max = self.store.limits().max_message_bytes;
        ContentServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }
}

pub(crate) fn parse_hash(value: &str, field: &str) -> Result<Hash, Status> {
    Hash::from_hex(value).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

type PutResult = Result<(Hash, u64, u64), crate::StoreError>;

#[tonic::async_trait]
impl ContentService for ContentGrpc {
    async fn put_blob(
        &self,
        request: Request<Streaming<PutBlobRequest>>,
    ) -> Result<Response<PutBlobResponse>, Status> {
        let limits = *self.store.limits();
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(PutBlobRequest {
                part: Some(put_blob_request::Part::Header(header)),
            }) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "the first PutBlob message must be a header with the blob size",
                ))
            }
        };
        if header.size > limits.max_blob_bytes {
            return Err(Status::resource_exhausted(format!(
                "blob of {} bytes exceeds the limit of {} bytes",
                header.size, limits.max_blob_bytes
            )));
        }
        let expected = if header.expected_hash.is_empty() {
            None
        } else {
            Some(parse_hash(&header.expected_hash, "expected_hash")?)
        };

        // Chunks are cut as data arrives and written while more is received, with at most
        // `concurrency` writes in flight: memory stays bounded whatever the blob size.
        let mut buffer = BytesMut::new();
        let mut received: u64 = 0;
        let mut in_flight = FuturesOrdered::new();
        let mut stored: Vec<(Hash, u64, u64)> = Vec::new();
        let schedule = |piece: bytes::Bytes, in_flight: &mut FuturesOrdered<_>| {
            let store = self.store.clone();
            let len = piece.len() as u64;
            in_flight.push_back(async move {
                let result: PutResult = store.put_chunk(piece).await.map(|(h, w)| (h, len, w));
                result
            });
        };
        loop {
            let message = stream.message().await?;
            let final_piece = message.is_none();
            if let Some(message) = message {
                let data = match message.part {
                    Some(put_blob_request::Part::Data(data)) => data,
                    _ => {
                        return Err(Status::invalid_argument(
                            "PutBlob takes one header, then only data messages",
                        ))
                    }
                };
                received += data.len() as u64;
                if received > header.size {
                    return Err(Status::invalid_argument(format!(
                        "received more than the {} bytes announced in the header",
                        header.size
                    )));
                }
                buffer.extend_from_slice(&data);
            } else if received != header.size {
                return Err(Status::invalid_argument(format!(
                    "stream ended after {received} of the {} bytes announced in the header",
                    header.size
                )));
            }
            for length in cut_points(&buffer, final_piece) {
                let piece = buffer.split_to(length).freeze();
                schedule(piece, &mut in_flight);
            }
            while in_flight.len() >= limits.concurrency || (final_piece && !in_flight.is_empty()) {
                let done = in_flight.next().await.expect("non-empty");
                stored.push(done?);
            }
            if final_piece {
                break;
            }
        }
        if stored.is_empty() {
            stored.push(
                self.store
                    .put_chunk(bytes::Bytes::new())
                    .await
                    .map(|(h, w)| (h, 0, w))?,
            );
        }
        let outcome = self.store.finish(stored).await?;
        if let Some(expected) = expected {
            if expected != outcome.hash {
                return Err(Status::invalid_argument(format!(
                    "content hashes to {}, not the expected {expected}; nothing was stored under the expected name",
                    outcome.hash
                )));
            }
        }
        Ok(Response::new(PutBlobResponse {
            hash: outcome.hash.to_hex(),
            size: outcome.size,
            chunks: outcome
                .chunks
                .iter()
                .map(|(hash, size)| ChunkRef {
                    hash: hash.to_hex(),
                    size: *size,
                })
                .collect(),
            stored_bytes: outcome.stored_bytes,
        }))
    }

    type GetBlobStream = Pin<Box<dyn Stream<Item = Result<GetBlobResponse, Status>> + Send>>;

    async fn get_blob(
        &self,
        request: Request<GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let request = request.into_inner();
        let hash = parse_hash(&request.hash, "hash")?;
        let pieces = self
            .store
            .read_range(&hash, request.offset, request.length)
            .await?;
        let message_bytes = self.store.limits().stream_chunk_bytes;
        let mut offset = request.offset;
        let stream = pieces.flat_map(move |piece| {
            let messages: Vec<Result<GetBlobResponse, Status>> = match piece {
                Err(e) => vec![Err(e.into())],
                Ok(piece) => {
                    let mut out = Vec::new();
                    let mut start = 0;
                    while start < piece.len() || (piece.is_empty() && out.is_empty()) {
                        let end = (start + message_bytes).min(piece.len());
                        out.push(Ok(GetBlobResponse {
                            offset,
                            data: piece.slice(start..end),
                        }));
                        offset += (end - start) as u64;
                        start = end;
                        if piece.is_empty() {
                            break;
                        }
                    }
                    out
                }
            };
            futures::stream::iter(messages)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn has_blobs(
        &self,
        request: Request<HasBlobsRequest>,
    ) -> Result<Response<HasBlobsResponse>, Status> {
        let hashes = request
            .into_inner()
            .hashes
            .iter()
            .enumerate()
            .map(|(i, h)| parse_hash(h, &format!("hashes[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let missing = self.store.missing_hashes(&hashes).await?;
        Ok(Response::new(HasBlobsResponse {
            missing: missing.iter().map(Hash::to_hex).collect(),
        }))
    }

    async fn stat_blob(
        &self,
        request: Request<StatBlobRequest>,
    ) -> Result<Response<StatBlobResponse>, Status> {
        let hash = parse_hash(&request.into_inner().hash, "hash")?;
        let (size, layout) = self.store.stat(&hash).await?;
        let (layout, chunk_count) = match layout {
            Layout::Single => (BlobLayout::Single, 1),
            Layout::Chunked(manifest) => (BlobLayout::Chunked, manifest.chunks.len() as u32),
        };
        Ok(Response::new(StatBlobResponse {
            hash: hash.to_hex(),
            size,
            layout: layout as i32,
            chunk_count,
        }))
    }
}
