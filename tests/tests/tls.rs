//! TLS end to end (issue #8): clusters whose stores, buses and coordinators are separate
//! processes on real etcd and S3, serving TLS only with certificates of a CA made for the test.
//! Clients reach them over https://, and the coordinators reach the store, the bus and each
//! other (forwarding to the holder of a session) over https:// too. Clients that speak
//! plaintext, do not trust the CA, or (under mutual TLS) have no certificate are refused.

use crate::common;

use std::process::Command;
use std::time::Duration;

use aether_client::{Client, NewSession, Options, Rev};
use aether_testkit::{aether_cli_path, Cluster, ClusterSpec, TestCa, TlsMode};
use aether_tls::ClientTls;
use anyhow::Context;
use common::*;
use tonic::transport::Channel;
use tonic::Code;

async fn start(tls: TlsMode, coordinators: usize) -> Cluster {
    Cluster::start(ClusterSpec {
        coordinators,
        tls,
        ..Default::default()
    })
    .await
    .expect("start cluster")
}

fn ca(cluster: &Cluster) -> &TestCa {
    cluster.tls.as_ref().expect("a TLS cluster has a test CA")
}

/// Trusts the cluster's CA; presents no client certificate.
fn trusting(cluster: &Cluster) -> ClientTls {
    ClientTls::default().with_ca_pem(ca(cluster).ca_pem())
}

/// Trusts the cluster's CA and presents its client certificate.
fn with_certificate(cluster: &Cluster) -> ClientTls {
    let ca = ca(cluster);
    trusting(cluster).with_identity_pem(ca.client_cert_pem(), ca.client_key_pem())
}

/// A channel to `endpoint`, connected now.
async fn connect_with(endpoint: &str, tls: &ClientTls) -> anyhow::Result<Channel> {
    aether_tls::endpoint(endpoint, tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connect to {endpoint}"))
}

/// Tries to create a session at `endpoint`; panics if that works. Returns how it failed: the
/// connection was refused, or the call failed UNAVAILABLE or with a transport error as its
/// cause (a plaintext client reads the server's TLS alert as a broken HTTP/2 frame, which
/// tonic reports as INTERNAL), never with an answer of the server.
async fn refused(endpoint: &str, tls: &ClientTls) -> String {
    let channel = match connect_with(endpoint, tls).await {
        Ok(channel) => channel,
        Err(e) => return format!("{e:#}"),
    };
    let error = match create_session(&channel).await {
        Ok(session) => panic!("{endpoint} let the client create session {}", session.id),
        Err(e) => e,
    };
    let status = error
        .downcast_ref::<tonic::Status>()
        .unwrap_or_else(|| panic!("not a gRPC status: {error:#}"));
    let transport = std::error::Error::source(status)
        .is_some_and(|cause| cause.is::<tonic::transport::Error>());
    assert!(
        status.code() == Code::Unavailable || transport,
        "refused as a transport failure, not answered: {status:?}"
    );
    format!("{status:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_on_tls_between_clients_and_services() {
    let cluster = start(TlsMode::On, 2).await;
    let coordinator_endpoint = cluster.coordinators[0].endpoint();
    let bus_endpoint = cluster.buses[0].endpoint();
    let store_endpoint = cluster.stores[0].endpoint();
    for endpoint in [&coordinator_endpoint, &bus_endpoint, &store_endpoint] {
        assert!(endpoint.starts_with("https://"), "{endpoint}");
    }
    let tls = trusting(&cluster);

    // Health and reflection are served over TLS beside the services.
    let coordinator = connect_with(&coordinator_endpoint, &tls).await.unwrap();
    let bus = connect_with(&bus_endpoint, &tls).await.unwrap();
    let store = connect_with(&store_endpoint, &tls).await.unwrap();
    assert_serving(&coordinator, "aetherfs.v1.WorkspaceService").await;
    assert_serving(&bus, "aetherfs.v1.BusService").await;
    assert_serving(&store, "aetherfs.v1.ContentService").await;
    assert!(reflected_services(&coordinator)
        .await
        .iter()
        .any(|s| s == "aetherfs.v1.SessionService"));

    // A file written through the coordinator (which stores its chunks in the store over TLS)
    // reads back byte for byte, and the bus (reached by the coordinator over TLS) delivers
    // the event.
    let session = create_session(&coordinator).await.unwrap();
    let mut events = subscribe(&bus, &session.id).await.unwrap();
    let data = test_bytes(3 * 1024 * 1024 + 17, 8);
    write_file(&coordinator, &session.id, "tls/data.bin", &data)
        .await
        .unwrap();
    assert_eq!(
        read_file(&coordinator, &session.id, "tls/data.bin")
            .await
            .unwrap(),
        data
    );
    await_file_changed(&mut events, "tls/data.bin")
        .await
        .unwrap();

    // The second coordinator forwards to the holder (the first) over TLS, streams included.
    let second = connect_with(&cluster.coordinators[1].endpoint(), &tls)
        .await
        .unwrap();
    let forwarded = test_bytes(1_500_000, 9);
    write_file(&second, &session.id, "tls/forwarded.bin", &forwarded)
        .await
        .unwrap();
    assert_eq!(
        read_file(&second, &session.id, "tls/forwarded.bin")
            .await
            .unwrap(),
        forwarded
    );
    assert_eq!(
        read_file(&coordinator, &session.id, "tls/forwarded.bin")
            .await
            .unwrap(),
        forwarded
    );
    await_file_changed(&mut events, "tls/forwarded.bin")
        .await
        .unwrap();

    // The SDK: https:// endpoints with a CA; uploads go to the store directly.
    let client = Client::connect(
        coordinator_endpoint.clone(),
        Options {
            store_endpoint: Some(store_endpoint.clone()),
            bus_endpoint: Some(bus_endpoint.clone()),
            tls: tls.clone(),
            retries: 0,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let handle = client.create_session(NewSession::default()).await.unwrap();
    handle
        .upload_bytes("sdk.txt", "over tls".into(), 0o644)
        .await
        .unwrap();
    assert_eq!(
        handle.read("sdk.txt", &Rev::Head).await.unwrap(),
        b"over tls"
    );

    // The CLI: --tls-ca trusts the CA; without it (the system's roots) the call fails.
    let cli = |with_ca: bool| {
        let mut command = Command::new(aether_cli_path().expect("aether is built"));
        command
            .args(["--endpoint", &coordinator_endpoint])
            .args(["--store-endpoint", &store_endpoint])
            .args(["--bus-endpoint", &bus_endpoint])
            .args(["--retries", "0", "session", "create"])
            .env_remove("AETHER_TLS_CA");
        if with_ca {
            command.arg("--tls-ca").arg(ca(&cluster).path("ca.pem"));
        }
        command.output().expect("run aether")
    };
    let output = cli(true);
    assert!(output.status.success(), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stdout).trim().is_empty());
    let output = cli(false);
    assert!(!output.status.success(), "{output:?}");
    eprintln!(
        "CLI without --tls-ca: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Plaintext against a TLS port is refused.
    let plaintext = coordinator_endpoint.replacen("https://", "http://", 1);
    let failure = refused(&plaintext, &ClientTls::default()).await;
    eprintln!("plaintext client: {failure}");

    // A client that trusts another CA does not accept the servers' certificates.
    let other_ca = TestCa::generate().unwrap();
    let untrusting = ClientTls::default().with_ca_pem(other_ca.ca_pem());
    let failure = refused(&coordinator_endpoint, &untrusting).await;
    eprintln!("client trusting another CA: {failure}");
    assert!(
        failure.contains("UnknownIssuer") || failure.contains("certificate"),
        "{failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_client_certificates() {
    let cluster = start(TlsMode::Mutual, 1).await;
    let coordinator_endpoint = cluster.coordinator_endpoint();
    let bus_endpoint = cluster.buses[0].endpoint();

    // With a certificate of the CA: everything works, including the coordinator's own calls to
    // the store and the bus, where it presents its certificate.
    let tls = with_certificate(&cluster);
    let coordinator = connect_with(&coordinator_endpoint, &tls).await.unwrap();
    let bus = connect_with(&bus_endpoint, &tls).await.unwrap();
    let session = create_session(&coordinator).await.unwrap();
    let mut events = subscribe(&bus, &session.id).await.unwrap();
    let data = test_bytes(700_000, 10);
    write_file(&coordinator, &session.id, "mtls.bin", &data)
        .await
        .unwrap();
    assert_eq!(
        read_file(&coordinator, &session.id, "mtls.bin")
            .await
            .unwrap(),
        data
    );
    await_file_changed(&mut events, "mtls.bin").await.unwrap();

    // Without a certificate, or with one the servers' CA did not issue: refused.
    for endpoint in [
        &coordinator_endpoint,
        &bus_endpoint,
        &cluster.stores[0].endpoint(),
    ] {
        let failure = refused(endpoint, &trusting(&cluster)).await;
        eprintln!("client without a certificate at {endpoint}: {failure}");
    }
    let other_ca = TestCa::generate().unwrap();
    let foreign =
        trusting(&cluster).with_identity_pem(other_ca.client_cert_pem(), other_ca.client_key_pem());
    refused(&coordinator_endpoint, &foreign).await;
}
