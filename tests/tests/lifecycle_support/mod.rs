//! Shared steps of the lifecycle tests: a cluster on real etcd and moto S3 whose coordinator
//! trusts the `x-aether-principal` header (so tests can act as several principals), typed
//! clients, and small helpers that turn a gRPC failure into its status.

#![allow(dead_code)]

use std::time::Duration;

use aether_proto as pb;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::knowledge_service_client::KnowledgeServiceClient;
use aether_proto::review_service_client::ReviewServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{Cluster, ClusterSpec, ServiceProcess};
use anyhow::{Context, Result};
use bytes::Bytes;
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

/// A cluster (etcd, moto S3, a store, a bus) plus one coordinator started with
/// `--trust-principal-header`.
pub struct Trusting {
    pub cluster: Cluster,
    pub coordinator: ServiceProcess,
    pub channel: Channel,
    pub bus: Channel,
}

impl Trusting {
    pub async fn start() -> Result<Trusting> {
        let cluster = Cluster::start(ClusterSpec {
            coordinators: 0,
            ..ClusterSpec::default()
        })
        .await
        .context("start cluster")?;
        let args: Vec<String> = [
            "coordinator",
            "--etcd-endpoints",
            &cluster.etcd.endpoints().join(","),
            "--store-endpoint",
            &cluster.stores[0].endpoint(),
            "--bus-endpoint",
            &cluster.buses[0].endpoint(),
            "--trust-principal-header",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let coordinator = ServiceProcess::start(&args)
            .await
            .context("start coordinator")?;
        let channel = connect(&coordinator.endpoint()).await?;
        let bus = connect(&cluster.buses[0].endpoint()).await?;
        Ok(Trusting {
            cluster,
            coordinator,
            channel,
            bus,
        })
    }

    pub fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel.clone())
    }
    pub fn workspace(&self) -> WorkspaceServiceClient<Channel> {
        WorkspaceServiceClient::new(self.channel.clone())
    }
    pub fn history(&self) -> HistoryServiceClient<Channel> {
        HistoryServiceClient::new(self.channel.clone())
    }
    pub fn review(&self) -> ReviewServiceClient<Channel> {
        ReviewServiceClient::new(self.channel.clone())
    }
    pub fn knowledge(&self) -> KnowledgeServiceClient<Channel> {
        KnowledgeServiceClient::new(self.channel.clone())
    }
}

pub async fn connect(endpoint: &str) -> Result<Channel> {
    Endpoint::from_shared(endpoint.to_string())?
        .connect()
        .await
        .with_context(|| format!("connect to {endpoint}"))
}

/// A request made as principal `who`.
pub fn as_user<T>(who: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-aether-principal", who.parse().expect("ascii principal"));
    request
}

/// The status code of a call that must fail.
pub fn code_of<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(response) => panic!("expected a failure, got {:?}", response.into_inner()),
        Err(status) => status.code(),
    }
}

/// The status of a call that must fail.
pub fn status_of<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
) -> tonic::Status {
    match result {
        Ok(response) => panic!("expected a failure, got {:?}", response.into_inner()),
        Err(status) => status,
    }
}

pub fn binding(subject: &str, role: pb::Role) -> pb::RoleBinding {
    pb::RoleBinding {
        subject: subject.into(),
        role: role as i32,
    }
}

pub async fn create_session(
    t: &Trusting,
    who: &str,
    policy: Option<pb::Policy>,
) -> Result<pb::Session> {
    t.sessions()
        .create_session(as_user(
            who,
            pb::CreateSessionRequest {
                policy,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .session
        .context("no session")
}

pub async fn get_session(t: &Trusting, id: &str) -> Result<pb::Session> {
    t.sessions()
        .get_session(pb::GetSessionRequest {
            session_id: id.into(),
        })
        .await?
        .into_inner()
        .session
        .context("no session")
}

pub async fn write(t: &Trusting, id: &str, path: &str, data: &[u8]) -> Result<u64> {
    let response = t
        .workspace()
        .apply_changes(pb::ApplyChangesRequest {
            session_id: id.into(),
            changes: vec![pb::Change {
                op: Some(pb::change::Op::Write(pb::WriteOp {
                    path: path.into(),
                    content: Bytes::copy_from_slice(data),
                    ..Default::default()
                })),
                precondition: None,
            }],
            expected_head_version: 0,
        })
        .await?
        .into_inner();
    Ok(response.head_version)
}

pub async fn read(t: &Trusting, id: &str, path: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = t
        .workspace()
        .read_file(pb::ReadFileRequest {
            session_id: id.into(),
            path: path.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.extend_from_slice(&message.data);
    }
    Ok(out)
}

pub async fn checkpoint(t: &Trusting, id: &str, name: &str) -> Result<()> {
    t.history()
        .create_checkpoint(pb::CreateCheckpointRequest {
            session_id: id.into(),
            name: name.into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

pub async fn restore(t: &Trusting, id: &str, name: &str) -> Result<()> {
    t.history()
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            session_id: id.into(),
            name: name.into(),
            expected_head_version: 0,
        })
        .await?;
    Ok(())
}

pub async fn put_entry(
    t: &Trusting,
    id: &str,
    key: &str,
    value: &[u8],
    tags: &[&str],
) -> Result<pb::KnowledgeEntry, tonic::Status> {
    t.knowledge()
        .put_entry(pb::PutEntryRequest {
            session_id: id.into(),
            entry: Some(pb::KnowledgeEntry {
                key: key.into(),
                value: Bytes::copy_from_slice(value),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            }),
        })
        .await
        .map(|r| r.into_inner().entry.expect("entry"))
}

pub async fn get_entry(
    t: &Trusting,
    id: &str,
    key: &str,
) -> Result<pb::KnowledgeEntry, tonic::Status> {
    t.knowledge()
        .get_entry(pb::GetEntryRequest {
            session_id: id.into(),
            key: key.into(),
        })
        .await
        .map(|r| r.into_inner().entry.expect("entry"))
}

/// Every entry under `prefix` carrying `tag`, walking pages of `page_size`.
pub async fn all_entries(
    t: &Trusting,
    id: &str,
    prefix: &str,
    tag: &str,
    page_size: u32,
) -> Result<Vec<pb::KnowledgeEntry>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = t
            .knowledge()
            .list_entries(pb::ListEntriesRequest {
                session_id: id.into(),
                prefix: prefix.into(),
                tag: tag.into(),
                page: Some(pb::PageRequest {
                    page_size,
                    page_token: token.clone(),
                }),
            })
            .await?
            .into_inner();
        assert!(page.entries.len() <= page_size as usize);
        out.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Every annotation, walking pages of `page_size`.
pub async fn all_annotations(
    t: &Trusting,
    id: &str,
    path_prefix: &str,
    include_resolved: bool,
    page_size: u32,
) -> Result<Vec<pb::Annotation>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = t
            .review()
            .list_annotations(pb::ListAnnotationsRequest {
                session_id: id.into(),
                path_prefix: path_prefix.into(),
                include_resolved,
                page: Some(pb::PageRequest {
                    page_size,
                    page_token: token.clone(),
                }),
            })
            .await?
            .into_inner();
        out.extend(page.annotations);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

pub async fn all_audit(t: &Trusting, id: &str) -> Result<Vec<pb::AuditEvent>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = t
            .sessions()
            .list_audit_events(pb::ListAuditEventsRequest {
                session_id: id.into(),
                page: Some(pb::PageRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                }),
            })
            .await?
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// The tar of a session's head, or the status that refused it.
pub async fn export(t: &Trusting, who: &str, id: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = t
        .workspace()
        .export_archive(as_user(
            who,
            pb::ExportArchiveRequest {
                session_id: id.into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.extend_from_slice(&message.data);
    }
    Ok(out)
}

/// Subscribes to a session's events from the first offset.
pub async fn subscribe(t: &Trusting, id: &str) -> Result<tonic::Streaming<pb::SubscribeResponse>> {
    Ok(
        aether_proto::bus_service_client::BusServiceClient::new(t.bus.clone())
            .subscribe(pb::SubscribeRequest {
                session_id: id.into(),
                start: Some(pb::StartPosition {
                    position: Some(pb::start_position::Position::Earliest(true)),
                }),
                subject_filter: "session.>".into(),
            })
            .await?
            .into_inner(),
    )
}

/// Reads session events until every `(subject, name, detail)` in `wanted` was seen (30 s
/// failure deadline; the events are what we wait for, not time).
pub async fn await_events(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    wanted: &[(&str, &str, &str)],
) -> Result<()> {
    let mut missing: Vec<(String, String, String)> = wanted
        .iter()
        .map(|(s, n, d)| (s.to_string(), n.to_string(), d.to_string()))
        .collect();
    let wait = async {
        while !missing.is_empty() {
            let Some(response) = stream.message().await? else {
                anyhow::bail!("subscription ended; still missing {missing:?}");
            };
            let Some(pb::subscribe_response::Event::Message(message)) = response.event else {
                continue;
            };
            let event = pb::SessionEvent::decode(message.payload.clone())?;
            use pb::session_event::Event;
            let named = match &event.event {
                Some(Event::Annotation(n))
                | Some(Event::ApprovalRequested(n))
                | Some(Event::ApprovalDecided(n)) => n,
                _ => continue,
            };
            missing.retain(|(s, n, d)| {
                !(*s == message.subject && *n == named.name && *d == named.detail)
            });
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .context("events did not arrive within 30 s")?
}
