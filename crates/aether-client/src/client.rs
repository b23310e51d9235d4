//! The connection: one channel per endpoint, an interceptor adding the bearer token and trace
//! context to every call, per-call deadlines, and retries with exponential backoff for statuses
//! that say "try again".
//!
//! What is retried (design promise 9, "retries apply once"), on UNAVAILABLE, DEADLINE_EXCEEDED,
//! and a connection that broke during the call (UNKNOWN with a transport error):
//! - reads, and uploads of content-addressed chunks;
//! - changes of the coordinator ([`Idempotence::Mutating`]): each logical call gets a fresh
//!   request id ([`REQUEST_ID_HEADER`], a UUID) sent with every attempt, so the coordinator
//!   applies it at most once and answers a retry with the first outcome. Retried whatever
//!   the [`OUTCOME_HEADER`] says: "not-applied" and "unknown" are both safe with the same id;
//! - changes the server cannot recognise again (bus publishes): only on UNAVAILABLE that says
//!   `not-applied`, since a retry of one that may have applied could apply twice.

use std::future::Future;
use std::time::Duration;

use aether_proto as pb;
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::content_service_client::ContentServiceClient;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::knowledge_service_client::KnowledgeServiceClient;
use aether_proto::review_service_client::ReviewServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_tls::{ClientTls, TlsError};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::error::{Error, Result};
use crate::session::SessionHandle;

/// The metadata header naming a change; every attempt of one call sends the same value.
pub const REQUEST_ID_HEADER: &str = "x-aether-request-id";
/// The metadata entry of a server error saying whether the change was applied: `not-applied`
/// or `unknown` (absent: unknown).
pub const OUTCOME_HEADER: &str = "x-aether-outcome";
/// Set to "true" on the answer to a retry: the outcome recorded by an earlier attempt.
pub const REPLAYED_HEADER: &str = "x-aether-replayed";

/// A fresh request id for one logical change.
pub(crate) fn new_request_id() -> MetadataValue<Ascii> {
    uuid::Uuid::new_v4()
        .to_string()
        .parse()
        .expect("a UUID is a valid header value")
}

/// Largest message the SDK accepts or sends: above every server's limit, so the server's own
/// RESOURCE_EXHAUSTED (with its message) is what a caller sees.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How to reach AetherFS.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bearer token sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// Deadline of each call (for streams: of opening it, and of each message of a transfer).
    pub timeout: Duration,
    /// Retries after the first attempt of a retryable failure.
    pub retries: u32,
    /// First backoff; it doubles with each retry, up to 5 s, with jitter.
    pub backoff: Duration,
    /// The content store, when it is not served at the main endpoint (a cluster); `aetherd dev`
    /// serves everything at one address.
    pub store_endpoint: Option<String>,
    /// The bus, when it is not served at the main endpoint.
    pub bus_endpoint: Option<String>,
    /// How `https://` endpoints are trusted (CA bundle; the system's roots by default) and the
    /// client certificate presented to servers that require one. `http://` is plaintext.
    pub tls: ClientTls,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: None,
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_millis(100),
            store_endpoint: None,
            bus_endpoint: None,
            tls: ClientTls::default(),
        }
    }
}

/// Adds the bearer token to every request, and the caller's trace context: a call made while
/// an OpenTelemetry span is current (and a global text-map propagator is installed) joins
/// that span's trace on every service it reaches.
#[derive(Clone)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        aether_auth::inject_trace_context(request.metadata_mut());
        Ok(request)
    }
}

/// A channel with the token interceptor.
pub type AuthChannel = InterceptedService<Channel, Auth>;

/// One unary call: `rpc!(client, Mutating, review.add_annotation, request)` sends `request`
/// to `ReviewService.AddAnnotation` through [`Client::unary`], retried as
/// [`Idempotence::Mutating`] allows.
macro_rules! rpc {
    ($client:expr, $idempotence:ident, $service:ident . $method:ident, $request:expr) => {
        $client.unary(
            $crate::client::Idempotence::$idempotence,
            $request,
            |mut c, r| async move { c.$service.$method(r).await },
        )
    };
}
pub(crate) use rpc;

/// Whether, and how, a call may be repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idempotence {
    /// Reads, and writes of content-addressed data: repeating changes nothing.
    Idempotent,
    /// Changes of the coordinator: sent with one request id for all attempts, so a repeat
    /// returns the first outcome instead of applying again.
    Mutating,
    /// Changes the server cannot recognise again: repeated only when the server says they
    /// were not applied.
    Unrepeatable,
}

/// A connection to AetherFS. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) sessions: SessionServiceClient<AuthChannel>,
    pub(crate) workspace: WorkspaceServiceClient<AuthChannel>,
    pub(crate) history: HistoryServiceClient<AuthChannel>,
    pub(crate) review: ReviewServiceClient<AuthChannel>,
    pub(crate) knowledge: KnowledgeServiceClient<AuthChannel>,
    pub(crate) content: ContentServiceClient<AuthChannel>,
    pub(crate) bus: BusServiceClient<AuthChannel>,
    pub(crate) options: Options,
    endpoint: String,
}

fn channel(endpoint: &str, tls: &ClientTls) -> Result<Channel> {
    let endpoint = aether_tls::endpoint(endpoint, tls)
        .map_err(|e| match e {
            TlsError::InvalidEndpoint { endpoint, reason } => {
                Error::InvalidEndpoint { endpoint, reason }
            }
            other => Error::Tls(other),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    // Lazy: the first call connects, and a dropped connection is re-established by the
    // channel; a server that is not up yet is an UNAVAILABLE that the retries absorb.
    Ok(endpoint.connect_lazy())
}

macro_rules! limits {
    ($client:expr) => {
        $client
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    };
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`, or `https://host:port` for TLS per
    /// [`Options::tls`]). The connection is made on first use, so
    /// this fails only for an invalid endpoint or token.
    pub async fn connect(endpoint: impl Into<String>, options: Options) -> Result<Client> {
        let endpoint = endpoint.into();
        let header = match &options.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|e| Error::InvalidToken(e.to_string()))?,
            ),
            None => None,
        };
        let auth = Auth { header };
        let main = channel(&endpoint, &options.tls)?;
        let store = match &options.store_endpoint {
            Some(other) => channel(other, &options.tls)?,
            None => main.clone(),
        };
        let bus = match &options.bus_endpoint {
            Some(other) => channel(other, &options.tls)?,
            None => main.clone(),
        };
        let with = |channel: &Channel| InterceptedService::new(channel.clone(), auth.clone());
        Ok(Client {
            sessions: limits!(SessionServiceClient::new(with(&main))),
            workspace: limits!(WorkspaceServiceClient::new(with(&main))),
            history: limits!(HistoryServiceClient::new(with(&main))),
            review: limits!(ReviewServiceClient::new(with(&main))),
            knowledge: limits!(KnowledgeServiceClient::new(with(&main))),
            content: limits!(ContentServiceClient::new(with(&store))),
            bus: limits!(BusServiceClient::new(with(&bus))),
            options,
            endpoint,
        })
    }

    /// The main endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// A handle on one session (nothing is checked until it is used).
    pub fn session(&self, id: impl Into<String>) -> SessionHandle {
        SessionHandle::new(self.clone(), id.into())
    }

    /// Creates a session; see [`NewSession`] for the choices.
    pub async fn create_session(&self, spec: NewSession) -> Result<SessionHandle> {
        let request = pb::CreateSessionRequest {
            source: Some(pb::Source {
                kind: Some(spec.source.into_proto()),
            }),
            labels: spec.labels.into_iter().collect(),
            metadata: spec.metadata.into_iter().collect(),
            owner: spec.owner.unwrap_or_default(),
            policy: spec.policy,
            ttl: spec.ttl.map(duration),
        };
        let response = rpc!(self, Mutating, sessions.create_session, request).await?;
        let session = response
            .session
            .ok_or_else(|| Error::missing("CreateSession", "session"))?;
        let mut handle = self.session(session.id.clone());
        handle.cached = Some(session);
        Ok(handle)
    }

    /// Every session matching a label selector (`k=v,k2!=v,k3,!k4`; empty for all) and, when
    /// not empty, in one of `states`.
    pub async fn list_sessions(
        &self,
        selector: &str,
        states: &[pb::SessionState],
    ) -> Result<Vec<pb::Session>> {
        let states: Vec<i32> = states.iter().map(|s| *s as i32).collect();
        collect_pages(|token| {
            let request = pb::ListSessionsRequest {
                label_selector: selector.to_string(),
                states: states.clone(),
                page: Some(page(token)),
            };
            async move {
                let response = rpc!(self, Idempotent, sessions.list_sessions, request).await?;
                Ok((response.sessions, response.next_page_token))
            }
        })
        .await
    }

    /// Which of `hashes` the content store lacks (any number: asked 10,000 at a time).
    pub async fn missing_blobs(&self, hashes: &[String]) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for batch in hashes.chunks(crate::MAX_HASHES_PER_CALL) {
            let request = pb::HasBlobsRequest {
                hashes: batch.to_vec(),
            };
            let response = rpc!(self, Idempotent, content.has_blobs, request).await?;
            missing.extend(response.missing);
        }
        Ok(missing)
    }

    /// Uploads one blob held in memory (at most a few MiB: one message of data per 1 MiB).
    /// Content-addressed, so it is retried like a read.
    pub async fn put_blob(
        &self,
        data: bytes::Bytes,
        expected_hash: Option<String>,
    ) -> Result<pb::PutBlobResponse> {
        let header = pb::PutBlobHeader {
            size: data.len() as u64,
            expected_hash: expected_hash.unwrap_or_default(),
            size_unknown: false,
        };
        let mut messages = vec![pb::PutBlobRequest {
            part: Some(pb::put_blob_request::Part::Header(header)),
        }];
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + crate::DATA_MESSAGE_BYTES).min(data.len());
            messages.push(pb::PutBlobRequest {
                part: Some(pb::put_blob_request::Part::Data(data.slice(offset..end))),
            });
            offset = end;
        }
        self.with_retries(Idempotence::Idempotent, || {
            let mut client = self.content.clone();
            let mut request = Request::new(futures::stream::iter(messages.clone()));
            request.set_timeout(self.options.timeout);
            let timeout = self.options.timeout;
            async move {
                deadline(timeout, async move { client.put_blob(request).await })
                    .await
                    .map(Response::into_inner)
            }
        })
        .await
    }

    /// Uploads one blob read from `reader` as it is sent (PutBlob with `size_unknown`: the store
    /// cuts and names it as the bytes arrive), holding one message at a time. Not retried: a
    /// reader cannot be read twice.
    pub async fn put_blob_from_reader<R>(&self, mut reader: R) -> Result<pb::PutBlobResponse>
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        use tokio::io::AsyncReadExt;
        let header = pb::PutBlobRequest {
            part: Some(pb::put_blob_request::Part::Header(pb::PutBlobHeader {
                size: 0,
                expected_hash: String::new(),
                size_unknown: true,
            })),
        };
        let (sender, receiver) = tokio::sync::mpsc::channel::<pb::PutBlobRequest>(2);
        let pump = tokio::spawn(async move {
            if sender.send(header).await.is_err() {
                return Ok(());
            }
            loop {
                let mut buffer = bytes::BytesMut::with_capacity(crate::DATA_MESSAGE_BYTES);
                while buffer.len() < crate::DATA_MESSAGE_BYTES {
                    if reader.read_buf(&mut buffer).await? == 0 {
                        break;
                    }
                }
                if buffer.is_empty() {
                    return Ok::<(), std::io::Error>(());
                }
                let message = pb::PutBlobRequest {
                    part: Some(pb::put_blob_request::Part::Data(buffer.freeze())),
                };
                if sender.send(message).await.is_err() {
                    return Ok(());
                }
            }
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (message, receiver))
        });
        let answer = self.content.clone().put_blob(Request::new(stream)).await;
        // A read error ends the stream early: the store then refuses (or names) a short blob,
        // but the read error is the one to report.
        match pump.await {
            Ok(Err(e)) => {
                return Err(Error::InvalidArgument(format!(
                    "reading the blob to upload failed: {e}"
                )))
            }
            Err(e) => return Err(Error::InvalidArgument(format!("upload task failed: {e}"))),
            Ok(Ok(())) => {}
        }
        Ok(answer?.into_inner())
    }

    /// Reads a blob (or `length` bytes from `offset`; 0 reads to the end) into memory, verified
    /// by the store against its hash.
    pub async fn get_blob(&self, hash: &str, offset: u64, length: u64) -> Result<bytes::Bytes> {
        let request = pb::GetBlobRequest {
            hash: hash.to_string(),
            offset,
            length,
        };
        let mut stream = self
            .open_stream(Idempotence::Idempotent, request, |mut c, r| async move {
                c.content.get_blob(r).await
            })
            .await?;
        let mut data = bytes::BytesMut::new();
        while let Some(message) = deadline(self.options.timeout, stream.message()).await? {
            data.extend_from_slice(&message.data);
        }
        Ok(data.freeze())
    }

    /// Describes a blob of the content store.
    pub async fn stat_blob(&self, hash: &str) -> Result<pb::StatBlobResponse> {
        let request = pb::StatBlobRequest {
            hash: hash.to_string(),
        };
        rpc!(self, Idempotent, content.stat_blob, request).await
    }

    /// One unary call with a deadline and retries. `call` gets a clone of this client and the
    /// request (a fresh one per attempt).
    pub(crate) async fn unary<T, R, F, Fut>(
        &self,
        idempotence: Idempotence,
        message: T,
        call: F,
    ) -> Result<R>
    where
        T: Clone,
        F: Fn(Client, Request<T>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<R>, Status>>,
    {
        let request_id = (idempotence == Idempotence::Mutating).then(new_request_id);
        self.unary_as(idempotence, request_id, message, call).await
    }

    /// [`Client::unary`] with the caller's own request id (a change the caller may send again
    /// later, after this call's own retries are spent).
    pub(crate) async fn unary_as<T, R, F, Fut>(
        &self,
        idempotence: Idempotence,
        request_id: Option<MetadataValue<Ascii>>,
        message: T,
        call: F,
    ) -> Result<R>
    where
        T: Clone,
        F: Fn(Client, Request<T>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<R>, Status>>,
    {
        let timeout = self.options.timeout;
        self.with_retries(idempotence, || {
            let mut request = Request::new(message.clone());
            request.set_timeout(timeout);
            if let Some(id) = &request_id {
                request.metadata_mut().insert(REQUEST_ID_HEADER, id.clone());
            }
            let attempt = call(self.clone(), request);
            async move { deadline(timeout, attempt).await.map(Response::into_inner) }
        })
        .await
    }

    /// Opens a server stream with a deadline on opening and retries; the stream itself is not
    /// bounded in time.
    pub(crate) async fn open_stream<T, R, F, Fut>(
        &self,
        idempotence: Idempotence,
        message: T,
        call: F,
    ) -> Result<tonic::Streaming<R>>
    where
        T: Clone,
        F: Fn(Client, Request<T>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<tonic::Streaming<R>>, Status>>,
    {
        let timeout = self.options.timeout;
        let request_id = (idempotence == Idempotence::Mutating).then(new_request_id);
        self.with_retries(idempotence, || {
            let mut request = Request::new(message.clone());
            if let Some(id) = &request_id {
                request.metadata_mut().insert(REQUEST_ID_HEADER, id.clone());
            }
            let attempt = call(self.clone(), request);
            async move { deadline(timeout, attempt).await.map(Response::into_inner) }
        })
        .await
    }

    /// Runs `attempt` until it succeeds, fails with a status that is not retryable, or the
    /// retries are spent.
    pub(crate) async fn with_retries<R, F, Fut>(
        &self,
        idempotence: Idempotence,
        mut attempt: F,
    ) -> Result<R>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<R, Status>>,
    {
        let mut tries = 0;
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(status) if tries < self.options.retries && retryable(&status, idempotence) => {
                    let wait = backoff(self.options.backoff, tries);
                    tracing::debug!(code = ?status.code(), message = status.message(), ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                    tries += 1;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
}

/// Bounds a call by the deadline, answering DEADLINE_EXCEEDED like the server would.
pub(crate) async fn deadline<T>(
    timeout: Duration,
    call: impl Future<Output = std::result::Result<T, Status>>,
) -> std::result::Result<T, Status> {
    let expired = || {
        Status::deadline_exceeded(format!(
            "no answer within {timeout:?} (raise the timeout for slow links)"
        ))
    };
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, call).await {
        // A tonic server enforcing the grpc-timeout we sent answers CANCELLED when it expires;
        // to the caller that is the same deadline.
        Ok(Err(status))
            if status.code() == Code::Cancelled && started.elapsed() >= timeout * 9 / 10 =>
        {
            Err(expired())
        }
        Ok(result) => result,
        Err(_) => Err(expired()),
    }
}

/// Whether a failed attempt is tried again (see the module comment).
pub(crate) fn retryable(status: &Status, idempotence: Idempotence) -> bool {
    // A server at its admission budget refused the call before doing anything: any call may
    // be tried again.
    if status.code() == Code::ResourceExhausted
        && status
            .metadata()
            .get(ADMISSION_HEADER)
            .is_some_and(|v| v == "busy")
    {
        return true;
    }
    let transient = match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        // The connection broke mid-call (the server died): the status comes from the transport.
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    };
    match idempotence {
        Idempotence::Idempotent | Idempotence::Mutating => transient,
        Idempotence::Unrepeatable => {
            status.code() == Code::Unavailable && outcome(status) == Some("not-applied")
        }
    }
}

/// Set (to `busy`) on a refusal by a server's admission control.
pub const ADMISSION_HEADER: &str = "x-aether-admission";

/// What the server said of a failed change: `not-applied`, `unknown`, or nothing.
pub(crate) fn outcome(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(OUTCOME_HEADER)
        .and_then(|v| v.to_str().ok())
}

/// `base · 2^tries`, at most 5 s, plus up to a quarter of jitter so that clients that failed
/// together do not retry together.
pub(crate) fn backoff(base: Duration, tries: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << tries.min(16));
    let capped = exp.min(Duration::from_secs(5));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = capped / 4 * (nanos % 1000) / 1000;
    capped + jitter
}

pub(crate) fn page(token: String) -> pb::PageRequest {
    pb::PageRequest {
        page_size: 1000,
        page_token: token,
    }
}

/// Fetches every page: `fetch(token)` returns one page's items and the next token.
pub(crate) async fn collect_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String)>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Where a new session's files come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SessionSource {
    /// Empty.
    #[default]
    Empty,
    /// The head of another session.
    Session(String),
    /// A checkpoint of a session.
    Checkpoint { session: String, name: String },
    /// A commit in a session's history.
    Commit { session: String, commit: String },
    /// A tar archive already in the content store (see [`Client::put_blob`]).
    Archive { blob_hash: String },
}

impl SessionSource {
    fn into_proto(self) -> pb::source::Kind {
        use pb::source::Kind;
        match self {
            SessionSource::Empty => Kind::Empty(pb::EmptySource {}),
            SessionSource::Session(session_id) => Kind::Session(pb::SessionSource { session_id }),
            SessionSource::Checkpoint { session, name } => Kind::Checkpoint(pb::CheckpointSource {
                session_id: session,
                name,
            }),
            SessionSource::Commit { session, commit } => Kind::Commit(pb::CommitSource {
                session_id: session,
                commit_id: commit,
            }),
            SessionSource::Archive { blob_hash } => Kind::Archive(pb::ArchiveSource { blob_hash }),
        }
    }
}

/// What [`Client::create_session`] creates.
#[derive(Clone, Debug, Default)]
pub struct NewSession {
    pub source: SessionSource,
    pub labels: Vec<(String, String)>,
    pub metadata: Vec<(String, String)>,
    /// Defaults to the caller.
    pub owner: Option<String>,
    pub policy: Option<pb::Policy>,
    /// Idle time to live; none never expires.
    pub ttl: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_millis(100);
        let first = backoff(base, 0);
        assert!(first >= base && first <= base * 5 / 4);
        let third = backoff(base, 2);
        assert!(third >= base * 4 && third <= base * 5);
        assert!(backoff(base, 30) <= Duration::from_secs(5) * 5 / 4);
    }

    #[test]
    fn a_refusal_for_load_is_retried_a_refusal_for_the_request_is_not() {
        let mut busy = Status::resource_exhausted("at its limit of 128 reading streams");
        busy.metadata_mut()
            .insert(OUTCOME_HEADER, "not-applied".parse().unwrap());
        busy.metadata_mut()
            .insert(ADMISSION_HEADER, "busy".parse().unwrap());
        let mut full = Status::resource_exhausted("the session holds the most annotations");
        full.metadata_mut()
            .insert(OUTCOME_HEADER, "not-applied".parse().unwrap());
        for idempotence in [
            Idempotence::Idempotent,
            Idempotence::Mutating,
            Idempotence::Unrepeatable,
        ] {
            assert!(retryable(&busy, idempotence));
            assert!(!retryable(&full, idempotence));
        }
    }

    #[test]
    fn changes_with_an_id_retry_any_outcome_others_only_not_applied() {
        let unavailable = Status::unavailable("down");
        let timeout = Status::deadline_exceeded("slow");
        let mut not_applied = Status::unavailable("fenced");
        not_applied
            .metadata_mut()
            .insert(OUTCOME_HEADER, "not-applied".parse().unwrap());
        let mut unknown = Status::unavailable("etcd timed out");
        unknown
            .metadata_mut()
            .insert(OUTCOME_HEADER, "unknown".parse().unwrap());
        for status in [&unavailable, &timeout, &not_applied, &unknown] {
            assert!(retryable(status, Idempotence::Idempotent), "{status:?}");
            assert!(retryable(status, Idempotence::Mutating), "{status:?}");
        }
        assert!(retryable(&not_applied, Idempotence::Unrepeatable));
        for status in [&unavailable, &timeout, &unknown] {
            assert!(!retryable(status, Idempotence::Unrepeatable), "{status:?}");
        }
        let broken = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(retryable(&broken, Idempotence::Mutating));
        assert!(!retryable(&broken, Idempotence::Unrepeatable));
        for idempotence in [
            Idempotence::Idempotent,
            Idempotence::Mutating,
            Idempotence::Unrepeatable,
        ] {
            assert!(!retryable(
                &Status::unknown("a handler's error"),
                idempotence
            ));
            assert!(!retryable(
                &Status::failed_precondition("finalized"),
                idempotence
            ));
            assert!(!retryable(&Status::aborted("lost a race"), idempotence));
        }
    }

    #[tokio::test]
    async fn rejects_endpoints_without_a_scheme() {
        let error = Client::connect("127.0.0.1:7600", Options::default())
            .await
            .err()
            .expect("no scheme");
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.to_string().contains("http://"), "{error}");
    }
}
