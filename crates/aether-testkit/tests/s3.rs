//! moto serves objects in the test bucket, keeps them across a pause, and dies on kill;
//! s3s-fs serves the same bucket to a client configured from the same `aetherd` flags.

use std::time::Duration;

use aether_store::backend::BackendArgs;
use aether_testkit::{http, S3Kind, S3Server};
use clap::Parser;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions};

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn s3_server_stores_objects_and_survives_a_pause() -> anyhow::Result<()> {
    let mut s3 = S3Server::start().await?;
    let endpoint = s3.endpoint();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    assert_eq!(s3.bucket(), "aether-test");
    assert_eq!(
        (s3.access_key(), s3.secret_key(), s3.region()),
        ("test", "test", "us-east-1")
    );

    let object = format!("/{}/greeting.txt", s3.bucket());
    let authorization = s3.authorization();
    let headers = [
        ("Authorization", authorization.as_str()),
        ("Content-Type", "application/octet-stream"),
    ];
    let headers = &headers[..];
    let put = http::request(
        &endpoint,
        "PUT",
        &object,
        headers,
        b"hello, aether",
        TIMEOUT,
    )
    .await?;
    assert_eq!(put.status, 200, "{}", put.text());
    let get = http::request(&endpoint, "GET", &object, headers, b"", TIMEOUT).await?;
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(get.body, b"hello, aether");

    s3.pause()?;
    let stalled = http::request(
        &endpoint,
        "GET",
        &object,
        headers,
        b"",
        Duration::from_millis(300),
    )
    .await;
    assert!(stalled.is_err(), "a paused server answered: {stalled:?}");
    s3.resume()?;
    let get = http::request(&endpoint, "GET", &object, headers, b"", TIMEOUT).await?;
    assert_eq!(get.body, b"hello, aether", "the pause must keep the object");

    assert_eq!(
        s3.aetherd_args(),
        [
            "--store-backend",
            "s3",
            "--s3-endpoint",
            endpoint.as_str(),
            "--s3-bucket",
            "aether-test",
            "--s3-region",
            "us-east-1",
            "--s3-access-key",
            "test",
            "--s3-secret-key",
            "test",
            "--s3-allow-http",
        ]
    );

    s3.kill()?;
    assert!(
        http::request(&endpoint, "GET", &object, headers, b"", TIMEOUT)
            .await
            .is_err()
    );
    assert!(s3.pause().is_err(), "pausing a killed server must fail");
    s3.kill()?; // idempotent
    Ok(())
}

/// The object store flags `aetherd` would parse from [`S3Server::aetherd_args`].
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    backend: BackendArgs,
}

#[tokio::test]
async fn s3s_fs_serves_the_bucket_to_aetherds_client() -> anyhow::Result<()> {
    check_s3s_fs(S3Kind::S3sFs).await
}

#[tokio::test]
async fn s3s_fs_on_tmpfs_serves_the_bucket_to_aetherds_client() -> anyhow::Result<()> {
    check_s3s_fs(S3Kind::S3sFsTmpfs).await
}

async fn check_s3s_fs(kind: S3Kind) -> anyhow::Result<()> {
    let mut s3 = S3Server::start_with(kind).await?;
    assert_eq!(s3.kind(), kind);
    assert!(s3.dir().join("data").join(s3.bucket()).is_dir());
    assert_eq!(
        s3.dir().starts_with("/dev/shm"),
        kind == S3Kind::S3sFsTmpfs,
        "{}",
        s3.dir().display()
    );
    let flags = |args: Vec<String>| {
        Flags::try_parse_from(std::iter::once("aetherd".to_owned()).chain(args))
            .map(|flags| flags.backend)
    };
    let objects = flags(s3.aetherd_args())?
        .build("probe")
        .map_err(anyhow::Error::msg)?;

    let path = Path::from("chunks/ab/greeting");
    objects.put(&path, "hello, aether".into()).await?;
    let got = objects.get(&path).await?.bytes().await?;
    assert_eq!(&got[..], b"hello, aether");
    // The store writes every object with a conditional create; s3s-fs refuses a second one
    // (not atomically under a race, which is why tests use moto).
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let again = objects
        .put_opts(&path, "other".into(), create)
        .await
        .expect_err("the object exists");
    assert!(
        matches!(
            again,
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
        ),
        "{again}"
    );

    // It checks credentials, unlike moto.
    let mut wrong = s3.aetherd_args();
    let secret = wrong
        .iter()
        .position(|arg| arg == "--s3-secret-key")
        .expect("a secret key flag")
        + 1;
    wrong[secret] = "not-the-secret".into();
    let denied = flags(wrong)?.build("probe").map_err(anyhow::Error::msg)?;
    assert!(
        denied.get(&path).await.is_err(),
        "a wrong secret was accepted"
    );

    s3.kill()?;
    assert!(objects.get(&path).await.is_err());
    Ok(())
}
