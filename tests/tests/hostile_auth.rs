//! Hostile callers over real gRPC against `aetherd dev` with a token file: no token, bad
//! tokens, and principals without a role on a session. Each case asserts the exact status and
//! that nothing changed (head version, listing).

mod common;

use aether_proto as pb;
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::ServiceProcess;
use common::connect;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const TOKENS: &str = "\
# token principal groups
tok-alice alice
tok-bob bob
tok-carol carol team
";

struct Dev {
    _data: tempfile::TempDir,
    _server: ServiceProcess,
    channel: Channel,
}

async fn start() -> Dev {
    let data = tempfile::tempdir().unwrap();
    let tokens = data.path().join("tokens");
    std::fs::write(&tokens, TOKENS).unwrap();
    let server = ServiceProcess::start(&[
        "dev".into(),
        "--data".into(),
        data.path().join("d").display().to_string(),
        "--auth-token-file".into(),
        tokens.display().to_string(),
    ])
    .await
    .unwrap();
    let channel = connect(&server.endpoint()).await.unwrap();
    Dev {
        _data: data,
        _server: server,
        channel,
    }
}

fn with_token<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn head(dev: &Dev, id: &str) -> u64 {
    SessionServiceClient::new(dev.channel.clone())
        .get_session(with_token(
            Some("tok-alice"),
            pb::GetSessionRequest {
                session_id: id.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .head_version
}

async fn listed(dev: &Dev, token: &str) -> Vec<String> {
    SessionServiceClient::new(dev.channel.clone())
        .list_sessions(with_token(Some(token), pb::ListSessionsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.id)
        .collect()
}

fn mkdir(id: &str, path: &str) -> pb::MakeDirectoryRequest {
    pb::MakeDirectoryRequest {
        session_id: id.into(),
        path: path.into(),
        parents: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_unauthenticated_calls_are_refused_and_change_nothing() {
    let dev = start().await;
    let mut sessions = SessionServiceClient::new(dev.channel.clone());

    // Health stays open for probes.
    HealthClient::new(dev.channel.clone())
        .check(HealthCheckRequest {
            service: "aetherfs.v1.SessionService".into(),
        })
        .await
        .expect("health needs no token");

    let none = sessions
        .create_session(with_token(None, pb::CreateSessionRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    assert!(
        none.message().contains("authorization: Bearer"),
        "says what to send: {}",
        none.message()
    );
    for bad in ["tok-mallory", "", "tok-alice extra"] {
        let result = sessions
            .create_session(with_token(Some(bad), pb::CreateSessionRequest::default()))
            .await;
        assert_eq!(code(result), Code::Unauthenticated, "token {bad:?}");
    }
    let mut request = Request::new(pb::ListSessionsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Basic dG9rLWFsaWNl".parse().unwrap());
    assert_eq!(
        code(sessions.list_sessions(request).await),
        Code::Unauthenticated
    );
    // Nothing was created by the refused calls.
    assert!(listed(&dev, "tok-alice").await.is_empty());

    // The bus is behind the same layer.
    let subscribe = BusServiceClient::new(dev.channel.clone())
        .subscribe(with_token(
            None,
            pb::SubscribeRequest {
                session_id: "whatever".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(subscribe), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_wrong_principal_is_denied_and_changes_nothing() {
    let dev = start().await;
    let mut sessions = SessionServiceClient::new(dev.channel.clone());
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    let session = sessions
        .create_session(with_token(
            Some("tok-alice"),
            pb::CreateSessionRequest {
                policy: Some(pb::Policy {
                    bindings: vec![pb::RoleBinding {
                        subject: "group:team".into(),
                        role: pb::Role::Viewer as i32,
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(session.owner, "alice");
    let id = session.id.clone();
    workspace
        .make_directory(with_token(Some("tok-alice"), mkdir(&id, "src")))
        .await
        .expect("the owner writes");
    let before = head(&dev, &id).await;

    // bob has no role: the session does not exist for him, and he cannot change it.
    let get = sessions
        .get_session(with_token(
            Some("tok-bob"),
            pb::GetSessionRequest {
                session_id: id.clone(),
            },
        ))
        .await;
    assert_eq!(code(get), Code::NotFound);
    assert!(listed(&dev, "tok-bob").await.is_empty());
    let write = workspace
        .make_directory(with_token(Some("tok-bob"), mkdir(&id, "evil")))
        .await;
    assert_eq!(code(write), Code::PermissionDenied);
    let close = sessions
        .close_session(with_token(
            Some("tok-bob"),
            pb::CloseSessionRequest {
                session_id: id.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(close), Code::PermissionDenied);
    let subscribe = BusServiceClient::new(dev.channel.clone())
        .subscribe(with_token(
            Some("tok-bob"),
            pb::SubscribeRequest {
                session_id: id.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(subscribe), Code::NotFound);

    // carol is a viewer through group "team": she reads, but may not write or close.
    let get = sessions
        .get_session(with_token(
            Some("tok-carol"),
            pb::GetSessionRequest {
                session_id: id.clone(),
            },
        ))
        .await;
    assert_eq!(code(get), Code::Ok);
    assert_eq!(listed(&dev, "tok-carol").await, vec![id.clone()]);
    let write = workspace
        .make_directory(with_token(Some("tok-carol"), mkdir(&id, "evil")))
        .await;
    assert_eq!(code(write), Code::PermissionDenied);
    let finalize = sessions
        .finalize_session(with_token(
            Some("tok-carol"),
            pb::FinalizeSessionRequest {
                session_id: id.clone(),
            },
        ))
        .await;
    assert_eq!(code(finalize), Code::PermissionDenied);
    let subscribe = BusServiceClient::new(dev.channel.clone())
        .subscribe(with_token(
            Some("tok-carol"),
            pb::SubscribeRequest {
                session_id: id.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(subscribe), Code::Ok, "a viewer subscribes");
    let mut bus = BusServiceClient::new(dev.channel.clone());
    let retention = |token| {
        with_token(
            Some(token),
            pb::SetRetentionRequest {
                session_id: id.clone(),
                retention: Some(pb::Retention {
                    max_messages: 1,
                    max_age: None,
                }),
            },
        )
    };
    assert_eq!(
        code(bus.set_retention(retention("tok-carol")).await),
        Code::PermissionDenied,
        "a viewer may not change retention"
    );
    assert_eq!(
        code(bus.set_retention(retention("tok-bob")).await),
        Code::NotFound
    );
    // Not even the owner archives an open session's stream: that would silence its events.
    for token in ["tok-alice", "tok-carol"] {
        let archive = bus
            .archive_stream(with_token(
                Some(token),
                pb::ArchiveStreamRequest {
                    session_id: id.clone(),
                },
            ))
            .await;
        assert_eq!(code(archive), Code::PermissionDenied, "{token}");
    }
    let info = bus
        .get_stream_info(with_token(
            Some("tok-alice"),
            pb::GetStreamInfoRequest {
                session_id: id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !info.own_retention && info.archive_time.is_none(),
        "{info:?}"
    );

    // Nothing changed.
    assert_eq!(head(&dev, &id).await, before);
    assert_eq!(listed(&dev, "tok-alice").await, vec![id.clone()]);
    let tree = workspace
        .list_tree(with_token(
            Some("tok-alice"),
            pb::ListTreeRequest {
                session_id: id.clone(),
                recursive: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = tree.entries.iter().map(|e| e.path.clone()).collect();
    assert!(!names.iter().any(|n| n.contains("evil")), "{names:?}");
}
