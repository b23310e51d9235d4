//! moto serves objects in the test bucket, keeps them across a pause, and dies on kill.

use std::time::Duration;

use aether_testkit::{http, S3Server};

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
