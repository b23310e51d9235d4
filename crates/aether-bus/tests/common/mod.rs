//! Helpers shared by the bus tests: messages, deadlines, a store that fails on demand, and a
//! real gRPC server on a free port.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aether_bus::{Bus, BusConfig, Delivery, Principal, Subscription};
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::{BusMessage, OutgoingMessage};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tonic::transport::Channel;

/// How long any awaited event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("timed out waiting for an event")
}

pub fn message(subject: &str, payload: impl Into<Vec<u8>>) -> OutgoingMessage {
    OutgoingMessage {
        subject: subject.to_string(),
        payload: payload.into().into(),
        headers: Default::default(),
    }
}

/// `count` messages on "test.msg" with payloads "<tag>-<i>".
pub fn batch(tag: &str, count: usize) -> Vec<OutgoingMessage> {
    (0..count)
        .map(|i| message("test.msg", format!("{tag}-{i}")))
        .collect()
}

pub fn memory_bus(config: BusConfig) -> (Bus, Arc<dyn ObjectStore>) {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    (Bus::new(objects.clone(), config), objects)
}

/// The next delivery, which must be a message.
pub async fn next_message(subscription: &mut Subscription) -> Arc<BusMessage> {
    match within(subscription.next()).await {
        Some(Ok(Delivery::Message(message))) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next `count` messages.
pub async fn next_messages(subscription: &mut Subscription, count: usize) -> Vec<Arc<BusMessage>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(next_message(subscription).await);
    }
    out
}

pub fn payload(message: &BusMessage) -> String {
    String::from_utf8(message.payload.to_vec()).unwrap()
}

/// Segment objects of a session, by first offset.
pub async fn segments(objects: &dyn ObjectStore, session_id: &str) -> Vec<u64> {
    let prefix = Path::from(format!("streams/{session_id}"));
    let mut firsts: Vec<u64> = objects
        .list(Some(&prefix))
        .map(|meta| meta.unwrap())
        // The stream's settings object sits beside its segments.
        .filter(|meta| std::future::ready(meta.location.filename() != Some("stream.json")))
        .map(|meta| {
            let name = meta.location.filename().unwrap().to_string();
            assert!(name.ends_with(".seg") && name.len() == 24, "{name}");
            name[..20].parse::<u64>().unwrap()
        })
        .collect()
        .await;
    firsts.sort();
    firsts
}

/// The first and last offsets of a stream.
pub fn offsets(info: aether_bus::StreamInfo) -> (u64, u64) {
    (info.first_offset, info.last_offset)
}

/// An object store whose writes fail while `failing` is set.
#[derive(Debug)]
pub struct FlakyStore {
    pub inner: Arc<dyn ObjectStore>,
    pub failing: AtomicBool,
    pub failed_puts: AtomicUsize,
}

impl FlakyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            failing: AtomicBool::new(false),
            failed_puts: AtomicUsize::new(0),
        })
    }

    fn check(&self) -> object_store::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            self.failed_puts.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "flaky",
                source: "injected failure".into(),
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for FlakyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FlakyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check()?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Serves `bus` on a free port of 127.0.0.1, attributing every call to `principal` when given.
pub async fn serve(bus: &Bus, principal: Option<&str>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let principal = principal.map(Principal::user);
    let service = tonic::service::interceptor::InterceptedService::new(
        bus.grpc(),
        move |mut request: tonic::Request<()>| {
            if let Some(principal) = &principal {
                request.extensions_mut().insert(principal.clone());
            }
            Ok(request)
        },
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

pub async fn client(addr: SocketAddr) -> BusServiceClient<Channel> {
    BusServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(aether_bus::MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(aether_bus::MAX_GRPC_MESSAGE_BYTES)
}
