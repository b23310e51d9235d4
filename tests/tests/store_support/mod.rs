//! Shared steps of the content-store tests: a real `aetherd store` process on the local
//! filesystem or on moto S3, a raw gRPC client, and direct access to the stored objects so
//! tests can damage them.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use aether_proto as pb;
use aether_proto::content_service_client::ContentServiceClient;
use aether_testkit::{http, S3Server, ServiceProcess};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub const MIB: usize = 1024 * 1024;
/// Deadline for any single call in these tests, so a hang fails instead of stalling the suite.
pub const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// Where a store process keeps its objects.
pub enum Objects {
    Local(TempDir),
    S3(S3Server),
}

impl Objects {
    pub fn local() -> Result<Objects> {
        Ok(Objects::Local(
            tempfile::Builder::new().prefix("aether-store-").tempdir()?,
        ))
    }

    pub async fn s3() -> Result<Objects> {
        Ok(Objects::S3(S3Server::start().await?))
    }

    /// `aetherd store` flags for this backend.
    pub fn aetherd_args(&self) -> Vec<String> {
        let mut args = vec!["store".to_owned()];
        match self {
            Objects::Local(dir) => args.extend([
                "--store-backend".to_owned(),
                "local".to_owned(),
                "--data-dir".to_owned(),
                dir.path().display().to_string(),
            ]),
            Objects::S3(s3) => args.extend(s3.aetherd_args()),
        }
        args
    }

    pub fn s3_server(&self) -> &S3Server {
        match self {
            Objects::S3(s3) => s3,
            Objects::Local(_) => panic!("not an S3 backend"),
        }
    }

    fn local_path(dir: &TempDir, key: &str) -> PathBuf {
        dir.path().join("objects").join(key)
    }

    /// The bytes of the object at `key` (e.g. `chunks/ab/ab…`), read behind the store's back.
    pub async fn read_raw(&self, key: &str) -> Result<Vec<u8>> {
        match self {
            Objects::Local(dir) => Ok(std::fs::read(Self::local_path(dir, key))?),
            Objects::S3(s3) => {
                let response = s3_request(s3, "GET", key, b"").await?;
                if response.status != 200 {
                    bail!("GET {key}: {} {}", response.status, response.text());
                }
                Ok(response.body)
            }
        }
    }

    /// Replaces the object at `key`, behind the store's back.
    pub async fn write_raw(&self, key: &str, data: &[u8]) -> Result<()> {
        match self {
            Objects::Local(dir) => Ok(std::fs::write(Self::local_path(dir, key), data)?),
            Objects::S3(s3) => {
                let response = s3_request(s3, "PUT", key, data).await?;
                if response.status != 200 {
                    bail!("PUT {key}: {} {}", response.status, response.text());
                }
                Ok(())
            }
        }
    }
}

async fn s3_request(s3: &S3Server, method: &str, key: &str, body: &[u8]) -> Result<http::Response> {
    let authorization = s3.authorization();
    let path = format!("/{}/objects/{key}", s3.bucket());
    http::request(
        &s3.endpoint(),
        method,
        &path,
        &[
            ("Authorization", authorization.as_str()),
            ("Content-Type", "application/octet-stream"),
        ],
        body,
        Duration::from_secs(10),
    )
    .await
}

/// Object keys, as the store lays them out.
pub fn chunk_key(hash: &str) -> String {
    format!("chunks/{}/{hash}", &hash[..2])
}

pub fn manifest_key(hash: &str) -> String {
    format!("manifests/{}/{hash}", &hash[..2])
}

/// A store process and a client to it.
pub struct Store {
    pub process: ServiceProcess,
    pub client: ContentServiceClient<Channel>,
}

impl Store {
    /// Starts `aetherd store` on `objects` with `extra` flags.
    pub async fn start(objects: &Objects, extra: &[&str]) -> Result<Store> {
        let mut args = objects.aetherd_args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let process = ServiceProcess::start(&args).await?;
        let client = client(&process.endpoint()).await?;
        Ok(Store { process, client })
    }

    pub fn client(&self) -> ContentServiceClient<Channel> {
        self.client.clone()
    }
}

/// A client whose own message limits are far above the store's, so the store's are the ones
/// tested.
pub async fn client(endpoint: &str) -> Result<ContentServiceClient<Channel>> {
    let channel = Endpoint::from_shared(endpoint.to_string())?
        .timeout(CALL_DEADLINE)
        .connect()
        .await
        .with_context(|| format!("connect to {endpoint}"))?;
    Ok(ContentServiceClient::new(channel)
        .max_decoding_message_size(64 * MIB)
        .max_encoding_message_size(64 * MIB))
}

pub use aether_testkit::test_bytes;

pub fn header(size: u64, expected_hash: &str) -> pb::PutBlobRequest {
    pb::PutBlobRequest {
        part: Some(pb::put_blob_request::Part::Header(pb::PutBlobHeader {
            size,
            expected_hash: expected_hash.to_owned(),
            size_unknown: false,
        })),
    }
}

/// The header of a blob streamed without its size (`size_unknown`).
pub fn unsized_header() -> pb::PutBlobRequest {
    pb::PutBlobRequest {
        part: Some(pb::put_blob_request::Part::Header(pb::PutBlobHeader {
            size: 0,
            expected_hash: String::new(),
            size_unknown: true,
        })),
    }
}

pub fn data_message(data: &[u8]) -> pb::PutBlobRequest {
    pb::PutBlobRequest {
        part: Some(pb::put_blob_request::Part::Data(Bytes::copy_from_slice(
            data,
        ))),
    }
}

/// PutBlob with a header announcing `data.len()` and data in 1 MiB messages.
pub async fn put(
    client: &ContentServiceClient<Channel>,
    data: &[u8],
) -> Result<pb::PutBlobResponse, Status> {
    put_messages(client, put_request(data.len() as u64, "", data, MIB)).await
}

pub fn put_request(
    size: u64,
    expected_hash: &str,
    data: &[u8],
    message_bytes: usize,
) -> Vec<pb::PutBlobRequest> {
    std::iter::once(header(size, expected_hash))
        .chain(data.chunks(message_bytes).map(data_message))
        .collect()
}

pub async fn put_messages(
    client: &ContentServiceClient<Channel>,
    messages: Vec<pb::PutBlobRequest>,
) -> Result<pb::PutBlobResponse, Status> {
    Ok(client
        .clone()
        .put_blob(futures::stream::iter(messages))
        .await?
        .into_inner())
}

/// GetBlob: the bytes received and the status the stream ended with (None when it completed).
/// Checks that message offsets are contiguous and messages at most 1 MiB.
pub async fn get_partial(
    client: &ContentServiceClient<Channel>,
    hash: &str,
    offset: u64,
    length: u64,
) -> (Vec<u8>, Option<Status>) {
    let request = pb::GetBlobRequest {
        hash: hash.to_owned(),
        offset,
        length,
    };
    let mut stream = match client.clone().get_blob(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut out = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                assert_eq!(
                    message.offset,
                    offset + out.len() as u64,
                    "GetBlob offsets are contiguous"
                );
                assert!(
                    message.data.len() <= MIB,
                    "GetBlob messages are at most 1 MiB"
                );
                out.extend_from_slice(&message.data);
            }
            Ok(None) => return (out, None),
            Err(status) => return (out, Some(status)),
        }
    }
}

pub async fn get(
    client: &ContentServiceClient<Channel>,
    hash: &str,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, Status> {
    match get_partial(client, hash, offset, length).await {
        (data, None) => Ok(data),
        (_, Some(status)) => Err(status),
    }
}

pub async fn missing(
    client: &ContentServiceClient<Channel>,
    hashes: &[&str],
) -> Result<Vec<String>, Status> {
    Ok(client
        .clone()
        .has_blobs(pb::HasBlobsRequest {
            hashes: hashes.iter().map(|h| h.to_string()).collect(),
        })
        .await?
        .into_inner()
        .missing)
}

pub async fn stat(
    client: &ContentServiceClient<Channel>,
    hash: &str,
) -> Result<pb::StatBlobResponse, Status> {
    Ok(client
        .clone()
        .stat_blob(pb::StatBlobRequest {
            hash: hash.to_owned(),
        })
        .await?
        .into_inner())
}

/// Asserts `result` failed with `code` and a message containing each of `needles`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    needles: &[&str],
) -> Status {
    let status = match result {
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "message {:?} should mention {needle:?}",
            status.message()
        );
    }
    status
}
