//! Promise 5 through real processes: objects damaged behind the store's back (on disk, and in
//! S3 through raw HTTP) are reported as DATA_LOSS naming the object, never as wrong bytes.

use crate::store_support;

use anyhow::Result;
use store_support::*;
use tonic::Code;

#[tokio::test]
async fn store_corruption_on_local_filesystem_is_data_loss() -> Result<()> {
    let objects = Objects::local()?;
    let store = Store::start(&objects, &[]).await?;
    exercise_corruption(&objects, &store).await
}

#[tokio::test]
async fn store_corruption_in_s3_is_data_loss() -> Result<()> {
    let objects = Objects::s3().await?;
    let store = Store::start(&objects, &[]).await?;
    exercise_corruption(&objects, &store).await
}

async fn exercise_corruption(objects: &Objects, store: &Store) -> Result<()> {
    let client = store.client();
    let big = test_bytes(12 * MIB, 1);
    let put_big = put(&client, &big).await?;
    assert!(put_big.chunks.len() >= 3);
    let small = test_bytes(5000, 2);
    let small_hash = put(&client, &small).await?.hash;

    // A chunk in the middle of a large blob: flipped, then truncated.
    let victim = &put_big.chunks[1];
    let key = chunk_key(&victim.hash);
    let original = objects.read_raw(&key).await?;
    assert_eq!(original.len() as u64, victim.size);
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x01;
    let truncated = original[..original.len() - 1].to_vec();
    for (what, damaged) in [("flipped", &flipped), ("truncated", &truncated)] {
        objects.write_raw(&key, damaged).await?;
        let (received, status) = get_partial(&client, &put_big.hash, 0, 0).await;
        let status = status.unwrap_or_else(|| panic!("{what} chunk: GetBlob completed"));
        assert_eq!(status.code(), Code::DataLoss, "{what}: {status:?}");
        assert!(
            status.message().contains(&key),
            "{what}: the message should name {key}: {}",
            status.message()
        );
        // What did arrive is the verified prefix, before the damaged chunk.
        assert!(received.len() as u64 <= put_big.chunks[0].size, "{what}");
        assert!(big.starts_with(&received), "{what}: wrong bytes were sent");
        // A range of the damaged chunk alone fails the same way; one beside it still reads.
        let start = put_big.chunks[0].size;
        assert_status(
            get(&client, &put_big.hash, start + 10, 10).await,
            Code::DataLoss,
            &[&key],
        );
        assert_eq!(get(&client, &put_big.hash, 0, 100).await?, &big[..100]);
    }
    objects.write_raw(&key, &original).await?;
    assert_eq!(get(&client, &put_big.hash, 0, 0).await?, big);

    // A single-object blob, flipped and truncated: no byte is sent.
    let key = chunk_key(&small_hash);
    let mut flipped = small.clone();
    flipped[0] ^= 0x80;
    for damaged in [&flipped, &small[..100].to_vec()] {
        objects.write_raw(&key, damaged).await?;
        let (received, status) = get_partial(&client, &small_hash, 0, 0).await;
        let status = status.expect("GetBlob of a damaged blob completed");
        assert_eq!(status.code(), Code::DataLoss, "{status:?}");
        assert!(status.message().contains(&key), "{}", status.message());
        assert!(received.is_empty());
        // Ranges are verified too: the whole object is checked before any slice is sent.
        assert_status(
            get(&client, &small_hash, 1, 1).await,
            Code::DataLoss,
            &[&key],
        );
    }

    // A manifest: GetBlob and StatBlob refuse it. The process that wrote the blob keeps its
    // verified manifest in memory, so the damage is read by a second store process.
    let key = manifest_key(&put_big.hash);
    let mut manifest = objects.read_raw(&key).await?;
    manifest[8 + 32] ^= 0x01; // the first chunk's size
    objects.write_raw(&key, &manifest).await?;
    assert_eq!(get(&client, &put_big.hash, 0, 0).await?, big);
    let other = Store::start(objects, &[]).await?;
    let client = other.client();
    let (received, status) = get_partial(&client, &put_big.hash, 0, 0).await;
    let status = status.expect("GetBlob with a damaged manifest completed");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains(&key), "{}", status.message());
    assert!(received.is_empty());
    assert_status(stat(&client, &put_big.hash).await, Code::DataLoss, &[&key]);
    Ok(())
}
