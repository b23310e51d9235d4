//! The store on a real S3 server as a cluster runs it: an S3 outage is UNAVAILABLE within a
//! bounded time and heals by itself; several stateless store processes share one bucket.

use crate::store_support;

use std::time::Duration;

use anyhow::Result;
use store_support::*;
use tokio::time::Instant;
use tonic::Code;

/// `--s3-timeout-secs` default (5 s) plus room for a loaded machine.
const OUTAGE_BOUND: Duration = Duration::from_secs(12);

#[tokio::test]
async fn store_s3_outage_is_unavailable_and_recovers() -> Result<()> {
    let objects = Objects::s3().await?;
    let store = Store::start(&objects, &[]).await?;
    let client = store.client();
    let pid = store.process.pid();
    let big = test_bytes(9 * MIB, 1);
    let big_hash = put(&client, &big).await?.hash;
    let small = test_bytes(2000, 2);
    let small_hash = put(&client, &small).await?.hash;

    objects.s3_server().pause()?;
    let started = Instant::now();
    let fresh = test_bytes(6 * MIB, 3);
    let asked = [small_hash.as_str()];
    let (got, has, stated, stored) = tokio::join!(
        get(&client, &big_hash, 0, 0),
        missing(&client, &asked),
        stat(&client, &small_hash),
        put(&client, &fresh),
    );
    let elapsed = started.elapsed();
    objects.s3_server().resume()?;
    assert_status(got, Code::Unavailable, &["object store unavailable"]);
    assert_status(has, Code::Unavailable, &[]);
    assert_status(stated, Code::Unavailable, &[]);
    assert_status(stored, Code::Unavailable, &[]);
    assert!(
        elapsed < OUTAGE_BOUND,
        "failing took {elapsed:?}, more than {OUTAGE_BOUND:?}"
    );
    eprintln!("all four calls failed UNAVAILABLE within {elapsed:?}");

    // The same process serves again, with no restart: reads, writes, the lot.
    let deadline = Instant::now() + Duration::from_secs(30);
    let recovered = loop {
        match get(&client, &big_hash, 0, 0).await {
            Ok(data) => break data,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(status) => panic!("the store did not recover: {status:?}"),
        }
    };
    assert!(recovered == big);
    assert_eq!(store.process.pid(), pid);
    assert_eq!(put(&client, &fresh).await?.size, fresh.len() as u64);
    assert_eq!(
        missing(&client, &[&small_hash]).await?,
        Vec::<String>::new()
    );
    assert_eq!(stat(&client, &small_hash).await?.size, 2000);
    Ok(())
}

#[tokio::test]
async fn store_processes_share_one_bucket_statelessly() -> Result<()> {
    let objects = Objects::s3().await?;
    let (a, b) = tokio::join!(Store::start(&objects, &[]), Store::start(&objects, &[]));
    let (a, b) = (a?, b?);
    let (client_a, client_b) = (a.client(), b.client());

    // Written through one, read through the other.
    let data = test_bytes(11 * MIB, 1);
    let written = put(&client_a, &data).await?;
    assert_eq!(get(&client_b, &written.hash, 0, 0).await?, data);
    assert_eq!(
        stat(&client_b, &written.hash).await?.size,
        data.len() as u64
    );
    assert_eq!(
        missing(&client_b, &[&written.hash]).await?,
        Vec::<String>::new()
    );
    assert_eq!(put(&client_b, &data).await?.stored_bytes, 0);

    // The same new content through both at once: both succeed with the same name, and the
    // bytes are stored once between them.
    for (size, seed) in [(13 * MIB, 2), (3000, 3)] {
        let content = test_bytes(size, seed);
        let (one, two) = tokio::join!(put(&client_a, &content), put(&client_b, &content));
        let (one, two) = (one?, two?);
        assert_eq!(one.hash, two.hash);
        // Each object is created by exactly one of them (conditional create on S3).
        let manifest = if one.chunks.len() > 1 {
            8 + 40 * one.chunks.len() as u64
        } else {
            0
        };
        assert_eq!(
            one.stored_bytes + two.stored_bytes,
            size as u64 + manifest,
            "stored {} + {} bytes of {size}",
            one.stored_bytes,
            two.stored_bytes
        );
        assert_eq!(get(&client_a, &one.hash, 0, 0).await?, content);
        assert_eq!(get(&client_b, &one.hash, 0, 0).await?, content);
    }
    Ok(())
}
