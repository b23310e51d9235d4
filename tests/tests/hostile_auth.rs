//! Hostile callers over real gRPC against `aetherd dev` with a token file: no token, bad
//! tokens, and principals without a role on a session; and with JWT keys (HS256, RS256):
//! expired, forged, unsigned and wrong-algorithm tokens. Each case asserts the exact status and
//! that nothing changed (head version, listing).

use crate::common;

use aether_proto as pb;
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::ServiceProcess;
use common::connect;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
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
    let auth = ["--auth-token-file".into(), tokens.display().to_string()];
    start_with(data, &auth).await
}

/// `aetherd dev` with data in `data` and the given authentication flags.
async fn start_with(data: tempfile::TempDir, auth: &[String]) -> Dev {
    let mut args = vec![
        "dev".to_string(),
        "--data".into(),
        data.path().join("d").display().to_string(),
    ];
    args.extend_from_slice(auth);
    let server = ServiceProcess::start(&args).await.unwrap();
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
    head_as(dev, "tok-alice", id).await
}

async fn head_as(dev: &Dev, token: &str, id: &str) -> u64 {
    SessionServiceClient::new(dev.channel.clone())
        .get_session(with_token(
            Some(token),
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
    assert_eq!(code(write), Code::NotFound);
    let close = sessions
        .close_session(with_token(
            Some("tok-bob"),
            pb::CloseSessionRequest {
                session_id: id.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(close), Code::NotFound);
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
    // Nor can he start a session of his own from alice's checkpoint: reading its source is
    // reading alice's session.
    aether_proto::history_service_client::HistoryServiceClient::new(dev.channel.clone())
        .create_checkpoint(with_token(
            Some("tok-alice"),
            pb::CreateCheckpointRequest {
                session_id: id.clone(),
                name: "private".into(),
                description: String::new(),
            },
        ))
        .await
        .expect("the owner checkpoints");
    let from_checkpoint = sessions
        .create_session(with_token(
            Some("tok-bob"),
            pb::CreateSessionRequest {
                source: Some(pb::Source {
                    kind: Some(pb::source::Kind::Checkpoint(pb::CheckpointSource {
                        session_id: id.clone(),
                        name: "private".into(),
                    })),
                }),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(from_checkpoint), Code::NotFound);

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

    // Closed, the session is a tombstone in the coordination store and its record is in the
    // content store: the same policy still decides who sees it, on every path.
    sessions
        .close_session(with_token(
            Some("tok-alice"),
            pb::CloseSessionRequest {
                session_id: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("the owner closes");
    assert_eq!(listed(&dev, "tok-alice").await, vec![id.clone()]);
    assert_eq!(listed(&dev, "tok-carol").await, vec![id.clone()]);
    assert!(listed(&dev, "tok-bob").await.is_empty());
    for (token, expected) in [("tok-carol", Code::Ok), ("tok-bob", Code::NotFound)] {
        let get = sessions
            .get_session(with_token(
                Some(token),
                pb::GetSessionRequest {
                    session_id: id.clone(),
                },
            ))
            .await;
        assert_eq!(code(get), expected, "{token} reads the closed session");
        let subscribe = BusServiceClient::new(dev.channel.clone())
            .subscribe(with_token(
                Some(token),
                pb::SubscribeRequest {
                    session_id: id.clone(),
                    ..Default::default()
                },
            ))
            .await;
        assert_eq!(
            code(subscribe),
            expected,
            "{token} subscribes to the closed session"
        );
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT with claims sub, groups and exp (seconds from now; negative is in the past).
fn jwt(algorithm: Algorithm, key: &EncodingKey, sub: &str, groups: &[&str], exp: i64) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "groups": groups,
        "exp": now().saturating_add_signed(exp),
    });
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key).unwrap()
}

/// `token` with its payload replaced by `other`'s: a signature over different claims.
fn swap_payload(token: &str, other: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let other: Vec<&str> = other.split('.').collect();
    format!("{}.{}.{}", parts[0], other[1], parts[2])
}

/// `token`'s claims under `{"alg":"none","typ":"JWT"}`, without a signature.
fn unsigned(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
}

/// Creates a session as `owner` (a bearer token) with `policy` and one directory in it.
async fn session_with(dev: &Dev, owner: &str, policy: Option<pb::Policy>) -> pb::Session {
    let session = SessionServiceClient::new(dev.channel.clone())
        .create_session(with_token(
            Some(owner),
            pb::CreateSessionRequest {
                policy,
                ..Default::default()
            },
        ))
        .await
        .expect("a valid JWT is accepted")
        .into_inner()
        .session
        .unwrap();
    WorkspaceServiceClient::new(dev.channel.clone())
        .make_directory(with_token(Some(owner), mkdir(&session.id, "src")))
        .await
        .expect("the owner writes");
    session
}

/// Each token in `bad` is UNAUTHENTICATED for creating a session, writing to `id` and
/// reading it, and none of those attempts changed anything `owner` sees.
async fn assert_refused(dev: &Dev, owner: &str, id: &str, bad: &[(&str, String)]) {
    let before = (head_as(dev, owner, id).await, listed(dev, owner).await);
    let mut sessions = SessionServiceClient::new(dev.channel.clone());
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    for (case, token) in bad {
        let create = sessions
            .create_session(with_token(Some(token), pb::CreateSessionRequest::default()))
            .await;
        let status = create.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert!(
            status.message().contains("authorization: Bearer"),
            "{case}: says what to send: {status:?}"
        );
        let write = workspace
            .make_directory(with_token(Some(token), mkdir(id, "evil")))
            .await;
        assert_eq!(code(write), Code::Unauthenticated, "{case}: write");
        let read = sessions
            .get_session(with_token(
                Some(token),
                pb::GetSessionRequest {
                    session_id: id.into(),
                },
            ))
            .await;
        assert_eq!(code(read), Code::Unauthenticated, "{case}: read");
        let after = (head_as(dev, owner, id).await, listed(dev, owner).await);
        assert_eq!(after, before, "{case} changed something");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jwts_hs256_are_checked_and_groups_grant_roles() {
    const SECRET: &[u8] = b"hostile-auth-test-secret-0123456789";
    let data = tempfile::tempdir().unwrap();
    let secret_file = data.path().join("jwt-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let auth = [
        "--auth-jwt-hs256-secret-file".into(),
        secret_file.display().to_string(),
    ];
    let dev = start_with(data, &auth).await;
    let key = EncodingKey::from_secret(SECRET);

    // The principal is the token's sub.
    let alice = jwt(Algorithm::HS256, &key, "alice", &[], 600);
    let session = session_with(&dev, &alice, None).await;
    assert_eq!(session.owner, "alice");
    assert_eq!(listed(&dev, &alice).await, vec![session.id.clone()]);

    // Every forged token claims alice: had one been let in, alice's view would change.
    let other_key = EncodingKey::from_secret(b"another-secret-of-32-bytes-or-so");
    let mallory = jwt(Algorithm::HS256, &key, "mallory", &[], 600);
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "sub": "alice" }),
        &key,
    )
    .unwrap();
    let bad = [
        ("expired", jwt(Algorithm::HS256, &key, "alice", &[], -3600)),
        (
            "signed with another secret",
            jwt(Algorithm::HS256, &other_key, "alice", &[], 600),
        ),
        (
            "claims changed after signing",
            swap_payload(&mallory, &alice),
        ),
        ("alg none", unsigned(&alice)),
        (
            "alg none with some signature",
            unsigned(&alice).trim_end_matches('.').to_string() + ".x",
        ),
        ("no exp claim", no_exp),
        ("not a JWT", "a.b.c".to_string()),
    ];
    assert_refused(&dev, &alice, &session.id, &bad).await;

    // A group in the token's groups claim gets the role the policy binds to `group:NAME`.
    let team = session_with(
        &dev,
        &alice,
        Some(pb::Policy {
            bindings: vec![pb::RoleBinding {
                subject: "group:reviewers".into(),
                role: pb::Role::Editor as i32,
            }],
            ..Default::default()
        }),
    )
    .await;
    let dave = jwt(Algorithm::HS256, &key, "dave", &["reviewers"], 600);
    let dave_alone = jwt(Algorithm::HS256, &key, "dave", &[], 600);
    let before = head_as(&dev, &alice, &team.id).await;
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    let write = workspace
        .make_directory(with_token(Some(&dave_alone), mkdir(&team.id, "solo")))
        .await;
    assert_eq!(
        code(write),
        Code::NotFound,
        "dave without the group has no role"
    );
    let read = SessionServiceClient::new(dev.channel.clone())
        .get_session(with_token(
            Some(&dave_alone),
            pb::GetSessionRequest {
                session_id: team.id.clone(),
            },
        ))
        .await;
    assert_eq!(code(read), Code::NotFound, "nor sees the session");
    assert_eq!(head_as(&dev, &alice, &team.id).await, before);
    workspace
        .make_directory(with_token(Some(&dave), mkdir(&team.id, "docs")))
        .await
        .expect("an editor through group reviewers writes");
    assert_eq!(head_as(&dev, &dave, &team.id).await, before + 1);
    assert_eq!(listed(&dev, &dave).await, vec![team.id.clone()]);
    assert!(listed(&dev, &dave_alone).await.is_empty());
}

/// A fresh RSA key pair (private PEM, public PEM) from the `openssl` command line: no crate in
/// the workspace generates RSA keys (ring only signs with them).
fn rsa_key_pair(dir: &std::path::Path) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join("rs256-private.pem");
    let public = dir.join("rs256-public.pem");
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("this test needs the `openssl` command to generate an RSA key: {e}")
            });
        assert!(status.success(), "openssl {args:?} failed: {status}");
    };
    let private_arg = private.display().to_string();
    let public_arg = public.display().to_string();
    run(&["genrsa", "-out", &private_arg, "2048"]);
    run(&["rsa", "-in", &private_arg, "-pubout", "-out", &public_arg]);
    (std::fs::read(&private).unwrap(), public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jwts_rs256_are_checked_and_other_algorithms_refused() {
    let data = tempfile::tempdir().unwrap();
    let (private, public) = rsa_key_pair(data.path());
    let public_pem = std::fs::read(&public).unwrap();
    let auth = [
        "--auth-jwt-rs256-public-key".into(),
        public.display().to_string(),
    ];
    let dev = start_with(data, &auth).await;
    let key = EncodingKey::from_rsa_pem(&private).unwrap();

    let alice = jwt(Algorithm::RS256, &key, "alice", &[], 600);
    let session = session_with(&dev, &alice, None).await;
    assert_eq!(session.owner, "alice");

    let mallory = jwt(Algorithm::RS256, &key, "mallory", &[], 600);
    let bad = [
        ("expired", jwt(Algorithm::RS256, &key, "alice", &[], -3600)),
        (
            "claims changed after signing",
            swap_payload(&mallory, &alice),
        ),
        ("alg none", unsigned(&alice)),
        (
            // The classic confusion: HMAC keyed with the server's public key.
            "HS256 keyed with the public key",
            jwt(
                Algorithm::HS256,
                &EncodingKey::from_secret(&public_pem),
                "alice",
                &[],
                600,
            ),
        ),
        (
            "HS256 on an RS256-only server",
            jwt(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"0123456789abcdef-secret"),
                "alice",
                &[],
                600,
            ),
        ),
    ];
    assert_refused(&dev, &alice, &session.id, &bad).await;

    // And the valid token still works after all that.
    WorkspaceServiceClient::new(dev.channel.clone())
        .make_directory(with_token(Some(&alice), mkdir(&session.id, "docs")))
        .await
        .expect("alice still writes");
}

/// Field 1 of every request that names a session.
#[derive(Clone, PartialEq, prost::Message)]
struct NamesSession {
    #[prost(string, tag = "1")]
    session_id: String,
}

/// The first message of WriteFile and ImportArchive: a header (field 1) naming the session.
#[derive(Clone, PartialEq, prost::Message)]
struct HeaderNamesSession {
    #[prost(message, optional, tag = "1")]
    header: Option<NamesSession>,
}

/// Any answer (its fields are not read).
#[derive(Clone, PartialEq, prost::Message)]
struct AnyAnswer {}

/// How an RPC's first request message names the session.
#[derive(Clone, Copy, Debug)]
enum Naming {
    Field1,
    HeaderField1,
}

/// Every RPC of the API whose request names a session (field 1, or field 1 of a header in
/// field 1), from the compiled descriptor set: (path, naming, client streaming, server streaming).
fn rpcs_naming_a_session() -> Vec<(String, Naming, bool, bool)> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(aether_proto::FILE_DESCRIPTOR_SET).unwrap();
    let messages: std::collections::HashMap<String, &prost_types::DescriptorProto> = set
        .file
        .iter()
        .flat_map(|f| {
            let package = f.package().to_string();
            f.message_type
                .iter()
                .map(move |m| (format!(".{package}.{}", m.name()), m))
        })
        .collect();
    let field1 = |message: &str| {
        messages
            .get(message)
            .and_then(|m| m.field.iter().find(|f| f.number() == 1))
    };
    let mut rpcs = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let naming = match field1(method.input_type()) {
                    Some(f) if f.name() == "session_id" => Naming::Field1,
                    Some(f) if f.name() == "header" => match field1(f.type_name()) {
                        Some(inner) if inner.name() == "session_id" => Naming::HeaderField1,
                        _ => continue,
                    },
                    _ => continue,
                };
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                rpcs.push((
                    path,
                    naming,
                    method.client_streaming(),
                    method.server_streaming(),
                ));
            }
        }
    }
    rpcs
}

/// Calls `path` as `token` with a request naming `session_id` and nothing else; the status it
/// ends with (OK when it answered without an error).
async fn call_naming(
    channel: &Channel,
    token: &str,
    (path, naming, client_streaming, server_streaming): &(String, Naming, bool, bool),
    session_id: &str,
) -> tonic::Status {
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic_prost::ProstCodec;
    let named = NamesSession {
        session_id: session_id.into(),
    };
    let message = match naming {
        Naming::Field1 => prost::Message::encode_to_vec(&named),
        Naming::HeaderField1 => prost::Message::encode_to_vec(&HeaderNamesSession {
            header: Some(named),
        }),
    };
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = PathAndQuery::try_from(path.as_str()).unwrap();
    let codec = ProstCodec::<RawMessage, AnyAnswer>::default();
    let raw = RawMessage(message);
    let status = match (client_streaming, server_streaming) {
        (false, false) => grpc
            .unary(with_token(Some(token), raw), path, codec)
            .await
            .err(),
        (false, true) => match grpc
            .server_streaming(with_token(Some(token), raw), path, codec)
            .await
        {
            Err(status) => Some(status),
            Ok(response) => first_error(response.into_inner()).await,
        },
        (true, false) => {
            let stream = tokio_stream::iter([raw]);
            grpc.client_streaming(with_token(Some(token), stream), path, codec)
                .await
                .err()
        }
        (true, true) => {
            let stream = tokio_stream::iter([raw]);
            match grpc
                .streaming(with_token(Some(token), stream), path, codec)
                .await
            {
                Err(status) => Some(status),
                Ok(response) => first_error(response.into_inner()).await,
            }
        }
    };
    status.unwrap_or_else(|| tonic::Status::ok(""))
}

async fn first_error(mut stream: tonic::Streaming<AnyAnswer>) -> Option<tonic::Status> {
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message()).await;
    next.expect("a refused stream ends at once").err()
}

/// A request message already encoded.
#[derive(Clone, Debug, Default)]
struct RawMessage(Vec<u8>);

impl prost::Message for RawMessage {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        _tag: u32,
        _wire_type: prost::encoding::WireType,
        _buf: &mut impl bytes::Buf,
        _ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        unreachable!("only sent")
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Every RPC of every service that names a session, called by a principal with no role in
/// it, answers exactly as it does for a session that does not exist (same code, same message
/// but for the id): existence and ownership leak through none of them, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stranger_learns_nothing_from_any_rpc() {
    let dev = start().await;
    let session = SessionServiceClient::new(dev.channel.clone())
        .create_session(with_token(
            Some("tok-alice"),
            pb::CreateSessionRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let id = session.id;
    WorkspaceServiceClient::new(dev.channel.clone())
        .make_directory(with_token(Some("tok-alice"), mkdir(&id, "src")))
        .await
        .unwrap();
    let before = head(&dev, &id).await;
    let missing = "0123456789abcdef0123";

    let rpcs = rpcs_naming_a_session();
    assert!(rpcs.len() >= 40, "only {} RPCs name a session", rpcs.len());
    let mut not_found = 0;
    for rpc in &rpcs {
        let real = call_naming(&dev.channel, "tok-bob", rpc, &id).await;
        let absent = call_naming(&dev.channel, "tok-bob", rpc, missing).await;
        assert_eq!(
            (real.code(), real.message().replace(&id, "ID")),
            (absent.code(), absent.message().replace(missing, "ID")),
            "{}: a stranger tells an existing session from a missing one",
            rpc.0
        );
        // Only the coordinator archives a stream: anyone else is refused before the session
        // is looked up, whatever it is.
        let service_only = rpc.0.ends_with("/ArchiveStream");
        assert!(
            matches!(real.code(), Code::NotFound | Code::InvalidArgument)
                || (service_only && real.code() == Code::PermissionDenied),
            "{}: {real:?}",
            rpc.0
        );
        assert!(!real.message().contains("alice"), "{}: {real:?}", rpc.0);
        not_found += usize::from(real.code() == Code::NotFound);
    }
    // The others refuse the request's own fields (an empty commit message, no changes…)
    // before looking the session up; the rest reached the session and found nothing.
    assert!(
        not_found >= 25,
        "only {not_found} of {} RPCs reached the session",
        rpcs.len()
    );
    assert_eq!(head(&dev, &id).await, before, "nothing changed");
}
