//! `ContentService` over gRPC: a thin adapter from the wire to [`BlobStore`].
//!
//! Back-pressure: PutBlob reads the next message only when the upload pipeline has room
//! ([`crate::blobs::Upload`]); GetBlob's chunk reads run ahead of the client by at most
//! `concurrency` chunks. Cancellation: a client that goes away drops the handler or the
//! response stream, which aborts the outstanding object reads and writes.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use aether_core::Hash;
use aether_proto::content_service_server::{ContentService, ContentServiceServer};
use aether_proto::{
    put_blob_request, BlobLayout, ChunkRef, GetBlobRequest, GetBlobResponse, HasBlobsRequest,
    HasBlobsResponse, PutBlobRequest, PutBlobResponse, StatBlobRequest, StatBlobResponse,
};
use futures::future::BoxFuture;
use futures::stream::{self, Stream, StreamExt};
use tonic::codegen::{http, Service, StdError};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

use crate::blobs::{BlobStore, Layout};

/// The gRPC face of a [`BlobStore`].
#[derive(Clone)]
pub struct ContentGrpc {
    store: BlobStore,
}

impl ContentGrpc {
    pub fn new(store: BlobStore) -> Self {
        Self { store }
    }

    /// The tonic service, with the store's message size limit applied.
    pub fn into_server(self) -> ContentServer {
        let max = self.store.limits().max_message_bytes;
        ContentServer(
            ContentServiceServer::new(self)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
    }
}

pub(crate) fn parse_hash(value: &str, field: &str) -> Result<Hash, Status> {
    Hash::from_hex(value).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

#[tonic::async_trait]
impl ContentService for ContentGrpc {
    async fn put_blob(
        &self,
        request: Request<Streaming<PutBlobRequest>>,
    ) -> Result<Response<PutBlobResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(PutBlobRequest {
                part: Some(put_blob_request::Part::Header(header)),
            }) => header,
            _ => return Err(Status::invalid_argument(
                "the first PutBlob message must be a header with the blob size (or size_unknown)",
            )),
        };
        let expected = if header.expected_hash.is_empty() {
            None
        } else {
            Some(parse_hash(&header.expected_hash, "expected_hash")?)
        };
        let mut upload = if header.size_unknown {
            if header.size != 0 {
                return Err(Status::invalid_argument(format!(
                    "the PutBlob header sets size_unknown and a size ({}); send one or the other",
                    header.size
                )));
            }
            self.store.upload_unsized()
        } else {
            self.store.upload(header.size)?
        };
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(put_blob_request::Part::Data(data)) => upload.push(data).await?,
                _ => {
                    return Err(Status::invalid_argument(
                        "PutBlob takes one header, then only data messages",
                    ))
                }
            }
        }
        let outcome = upload.finish(expected).await?;
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
        // Verified pieces are cut into messages of at most `stream_chunk_bytes` (slices, no
        // copy); an empty blob is one empty message.
        let messages = pieces.flat_map(move |piece| {
            let messages: Vec<Result<GetBlobResponse, Status>> = match piece {
                Err(e) => vec![Err(e.into())],
                Ok(piece) if piece.is_empty() => vec![Ok(GetBlobResponse {
                    offset,
                    data: piece,
                })],
                Ok(piece) => (0..piece.len())
                    .step_by(message_bytes)
                    .map(|start| {
                        let data = piece.slice(start..(start + message_bytes).min(piece.len()));
                        let message = GetBlobResponse { offset, data };
                        offset += message.data.len() as u64;
                        Ok(message)
                    })
                    .collect(),
            };
            stream::iter(messages)
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn has_blobs(
        &self,
        request: Request<HasBlobsRequest>,
    ) -> Result<Response<HasBlobsResponse>, Status> {
        let hashes = request.into_inner().hashes;
        let max = self.store.limits().max_batch;
        // Checked before parsing, so an oversized batch costs nothing.
        if hashes.len() > max {
            return Err(Status::invalid_argument(format!(
                "{} hashes in one HasBlobs request exceeds the limit of {max}; split the batch",
                hashes.len()
            )));
        }
        let hashes = hashes
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

/// The ContentService as served: the generated server, plus one correction. tonic refuses a
/// message over the size limit with OUT_OF_RANGE before any handler runs; AetherFS answers
/// every exceeded limit with RESOURCE_EXHAUSTED (design §5), so that one status is rewritten.
#[derive(Clone)]
pub struct ContentServer(ContentServiceServer<ContentGrpc>);

impl NamedService for ContentServer {
    const NAME: &'static str = <ContentServiceServer<ContentGrpc> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for ContentServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<B>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            aether_proto::transport::oversize_in_headers_is_resource_exhausted(
                response.headers_mut(),
                Some("the store's --store-max-message-bytes"),
            );
            Ok(response)
        })
    }
}
