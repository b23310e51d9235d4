//! Shared steps of the end-to-end tests.

#![allow(dead_code)]

use std::time::Duration;

use aether_proto as pb;
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use anyhow::{Context, Result};
use bytes::Bytes;
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub async fn connect(endpoint: &str) -> Result<Channel> {
    Endpoint::from_shared(endpoint.to_string())?
        .connect()
        .await
        .with_context(|| format!("connect to {endpoint}"))
}

pub use aether_testkit::test_bytes;

pub async fn create_session(channel: &Channel) -> Result<pb::Session> {
    let response = SessionServiceClient::new(channel.clone())
        .create_session(pb::CreateSessionRequest {
            labels: [("suite".to_string(), "e2e".to_string())].into(),
            ..Default::default()
        })
        .await?;
    response
        .into_inner()
        .session
        .context("no session in response")
}

pub async fn write_file(
    channel: &Channel,
    session_id: &str,
    path: &str,
    data: &[u8],
) -> Result<pb::WriteFileResponse> {
    let mut messages = vec![pb::WriteFileRequest {
        part: Some(pb::write_file_request::Part::Header(pb::WriteFileHeader {
            session_id: session_id.to_string(),
            path: path.to_string(),
            ..Default::default()
        })),
    }];
    for piece in data.chunks(1024 * 1024) {
        messages.push(pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Data(Bytes::copy_from_slice(
                piece,
            ))),
        });
    }
    Ok(WorkspaceServiceClient::new(channel.clone())
        .write_file(futures::stream::iter(messages))
        .await?
        .into_inner())
}

/// The session's head version.
pub async fn head_version(channel: &Channel, session: &str) -> u64 {
    aether_proto::session_service_client::SessionServiceClient::new(channel.clone())
        .get_session(pb::GetSessionRequest {
            session_id: session.to_string(),
        })
        .await
        .expect("GetSession")
        .into_inner()
        .session
        .expect("a session")
        .head_version
}

pub async fn read_file(channel: &Channel, session_id: &str, path: &str) -> Result<Vec<u8>> {
    let mut stream = WorkspaceServiceClient::new(channel.clone())
        .read_file(pb::ReadFileRequest {
            session_id: session_id.to_string(),
            path: path.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        assert_eq!(
            message.offset as usize,
            out.len(),
            "read offsets are contiguous"
        );
        out.extend_from_slice(&message.data);
    }
    Ok(out)
}

/// Subscribes to a session's stream from the first offset.
pub async fn subscribe(
    channel: &Channel,
    session_id: &str,
) -> Result<tonic::Streaming<pb::SubscribeResponse>> {
    Ok(BusServiceClient::new(channel.clone())
        .subscribe(pb::SubscribeRequest {
            session_id: session_id.to_string(),
            start: Some(pb::StartPosition {
                position: Some(pb::start_position::Position::Earliest(true)),
            }),
            subject_filter: "session.>".into(),
        })
        .await?
        .into_inner())
}

/// Waits (with a failure deadline) for a "files changed" event naming `path`.
pub async fn await_file_changed(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    path: &str,
) -> Result<pb::BusMessage> {
    let wait = async {
        while let Some(response) = stream.message().await? {
            let Some(pb::subscribe_response::Event::Message(message)) = response.event else {
                anyhow::bail!("subscription reported it fell behind");
            };
            if message.subject != "session.files.changed" {
                continue;
            }
            let event = pb::SessionEvent::decode(message.payload.clone())?;
            if let Some(pb::session_event::Event::FilesChanged(changed)) = &event.event {
                if changed.paths.iter().any(|p| p == path) {
                    return Ok(message);
                }
            }
        }
        anyhow::bail!("subscription ended without the event")
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .context("no files-changed event within 30 s")?
}

/// Asserts `service` reports SERVING through grpc.health.v1.
pub async fn assert_serving(channel: &Channel, service: &str) {
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("health of {service}: {e}"))
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
        "{service}"
    );
}

/// The services listed through gRPC server reflection.
pub async fn reflected_services(channel: &Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let response = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .expect("a reflection answer");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// `aetherd dev` on a fresh data directory (removed with it), and a channel to it.
pub struct Dev {
    pub server: aether_testkit::ServiceProcess,
    pub channel: Channel,
    _data: tempfile::TempDir,
}

/// Starts `aetherd dev` with `flags` after its data directory.
pub async fn start_dev(flags: &[&str]) -> Dev {
    let data = tempfile::tempdir().expect("a temporary data directory");
    let mut args = vec![
        "dev".to_string(),
        "--data".into(),
        data.path().display().to_string(),
    ];
    args.extend(flags.iter().map(|f| f.to_string()));
    let server = aether_testkit::ServiceProcess::start(&args)
        .await
        .expect("start aetherd dev");
    let channel = connect(&server.endpoint())
        .await
        .expect("connect to aetherd dev");
    Dev {
        server,
        channel,
        _data: data,
    }
}

/// Starts one more coordinator of `cluster` (on its etcd and first store), with `extra` flags.
pub async fn start_coordinator(
    cluster: &aether_testkit::Cluster,
    extra: &[&str],
) -> aether_testkit::ServiceProcess {
    let mut args = vec![
        "coordinator".to_string(),
        "--etcd-endpoints".into(),
        cluster.etcd.endpoints().join(","),
        "--store-endpoint".into(),
        cluster.stores[0].endpoint(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    aether_testkit::ServiceProcess::start(&args)
        .await
        .expect("start a coordinator")
}
