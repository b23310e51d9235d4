//! The ContentService over real gRPC, through real `aetherd store` processes, on the local
//! filesystem and on a real S3 server: PutBlob / GetBlob (ranges) / HasBlobs / StatBlob,
//! deduplication, and uploads that are abandoned midway.

use crate::store_support;

use std::time::Duration;

use aether_proto as pb;
use aether_store::blobs::{blob_hash, chunk_plan, MAX_CHUNK};
use aether_store::RemoteBlobs;
use anyhow::Result;
use bytes::Bytes;
use store_support::*;
use tonic::Code;

#[tokio::test]
async fn store_api_on_local_filesystem() -> Result<()> {
    let objects = Objects::local()?;
    let store = Store::start(&objects, &[]).await?;
    exercise_api(&store).await
}

#[tokio::test]
async fn store_api_on_s3() -> Result<()> {
    let objects = Objects::s3().await?;
    let store = Store::start(&objects, &[]).await?;
    exercise_api(&store).await
}

async fn exercise_api(store: &Store) -> Result<()> {
    let client = store.client();

    // A small blob is one object under its plain BLAKE3 name.
    let small = test_bytes(4096, 1);
    let put_small = put(&client, &small).await?;
    assert_eq!(put_small.hash, blake3::hash(&small).to_hex().as_str());
    assert_eq!(put_small.size, 4096);
    assert_eq!(put_small.stored_bytes, 4096);
    assert_eq!(put_small.chunks.len(), 1);

    let empty = put(&client, b"").await?;
    assert_eq!(empty.hash, blake3::hash(b"").to_hex().as_str());
    assert_eq!(get(&client, &empty.hash, 0, 0).await?, b"");

    // A large blob is cut into chunks; its name is the one a client computes locally.
    let big = test_bytes(20 * MIB, 2);
    let put_big = put(&client, &big).await?;
    assert_eq!(put_big.hash, blob_hash(&big).to_hex());
    assert_eq!(put_big.size, big.len() as u64);
    let plan = chunk_plan(&big);
    assert!(plan.len() >= 5, "20 MiB in ~1 MiB chunks: {}", plan.len());
    let chunks: Vec<(String, u64)> = put_big
        .chunks
        .iter()
        .map(|c| (c.hash.clone(), c.size))
        .collect();
    let planned: Vec<(String, u64)> = plan.iter().map(|(h, s)| (h.to_hex(), *s)).collect();
    assert_eq!(chunks, planned);

    assert_eq!(get(&client, &put_small.hash, 0, 0).await?, small);
    assert_eq!(get(&client, &put_big.hash, 0, 0).await?, big);

    // Byte ranges, within one chunk, across chunk boundaries, to the end, and empty at the end.
    let boundary = plan[0].1;
    let size = big.len() as u64;
    for (offset, length) in [
        (0, 1),
        (boundary - 10, 20),
        (boundary + 5, 3 * MIB as u64),
        (size - 7, 0),
        (size - 7, 7),
        (size, 0),
    ] {
        let end = if length == 0 { size } else { offset + length };
        let got = get(&client, &put_big.hash, offset, length).await?;
        assert!(
            got == big[offset as usize..end as usize],
            "range {offset}+{length} returned other bytes"
        );
    }
    assert_eq!(
        get(&client, &put_small.hash, 100, 10).await?,
        &small[100..110]
    );
    for (hash, size) in [(&put_big.hash, size), (&put_small.hash, 4096)] {
        assert_status(
            get(&client, hash, size + 1, 0).await,
            Code::OutOfRange,
            &["past the end", &size.to_string()],
        );
        assert_status(
            get(&client, hash, size - 1, 2).await,
            Code::OutOfRange,
            &["past the end"],
        );
    }

    // HasBlobs knows blobs and chunks, and answers in request order.
    let absent = blake3::hash(b"never stored").to_hex().to_string();
    let asked = [
        absent.as_str(),
        put_small.hash.as_str(),
        put_big.hash.as_str(),
        put_big.chunks[1].hash.as_str(),
        &"0".repeat(64),
    ];
    assert_eq!(
        missing(&client, &asked).await?,
        [absent.clone(), "0".repeat(64)]
    );
    assert_eq!(missing(&client, &[]).await?, Vec::<String>::new());

    let stat_big = stat(&client, &put_big.hash).await?;
    assert_eq!(
        (stat_big.size, stat_big.layout(), stat_big.chunk_count),
        (size, pb::BlobLayout::Chunked, plan.len() as u32)
    );
    let stat_small = stat(&client, &put_small.hash).await?;
    assert_eq!(
        (stat_small.size, stat_small.layout(), stat_small.chunk_count),
        (4096, pb::BlobLayout::Single, 1)
    );

    assert_status(stat(&client, &absent).await, Code::NotFound, &[&absent]);
    assert_status(
        get(&client, &absent, 0, 0).await,
        Code::NotFound,
        &[&absent],
    );

    // Malformed hashes are refused, saying what a hash looks like.
    for bad in ["", "xyz", &"g".repeat(64), &"a".repeat(63)] {
        assert_status(
            get(&client, bad, 0, 0).await,
            Code::InvalidArgument,
            &["64"],
        );
        assert_status(stat(&client, bad).await, Code::InvalidArgument, &["64"]);
        assert_status(
            missing(&client, &[put_small.hash.as_str(), bad]).await,
            Code::InvalidArgument,
            &["hashes[1]", "64"],
        );
    }
    assert_status(
        put_messages(&client, put_request(3, "not-a-hash", b"abc", MIB)).await,
        Code::InvalidArgument,
        &["expected_hash", "64"],
    );
    Ok(())
}

#[tokio::test]
async fn store_dedup_on_local_filesystem() -> Result<()> {
    let objects = Objects::local()?;
    let store = Store::start(&objects, &[]).await?;
    exercise_dedup(&store).await
}

#[tokio::test]
async fn store_dedup_on_s3() -> Result<()> {
    let objects = Objects::s3().await?;
    let store = Store::start(&objects, &[]).await?;
    exercise_dedup(&store).await
}

async fn exercise_dedup(store: &Store) -> Result<()> {
    let client = store.client();
    let size = 20 * MIB;
    let manifest_bytes = |chunks: usize| 8 + 40 * chunks as u64;

    // Identical content a second time: nothing is written.
    let mut data = test_bytes(size, 3);
    let first = put(&client, &data).await?;
    assert!(first.stored_bytes >= size as u64);
    let again = put(&client, &data).await?;
    assert_eq!(
        (again.hash.as_str(), again.stored_bytes),
        (first.hash.as_str(), 0)
    );
    let small = test_bytes(1000, 4);
    assert_eq!(put(&client, &small).await?.stored_bytes, 1000);
    assert_eq!(put(&client, &small).await?.stored_bytes, 0);

    // An edit in the middle re-stores the chunks it touched (one, or two if it straddles a
    // boundary; FastCDC caps a chunk at MAX_CHUNK) and a new manifest; nothing else.
    data[10 * MIB..10 * MIB + 100].fill(0xAA);
    let edited = put(&client, &data).await?;
    assert_ne!(edited.hash, first.hash);
    let old: Vec<&str> = first.chunks.iter().map(|c| c.hash.as_str()).collect();
    let new_chunks: Vec<&pb::ChunkRef> = edited
        .chunks
        .iter()
        .filter(|c| !old.contains(&c.hash.as_str()))
        .collect();
    assert!((1..=2).contains(&new_chunks.len()), "{new_chunks:?}");
    let new_bytes: u64 = new_chunks.iter().map(|c| c.size).sum();
    assert_eq!(
        edited.stored_bytes,
        new_bytes + manifest_bytes(edited.chunks.len())
    );
    assert!(
        edited.stored_bytes <= 2 * MAX_CHUNK as u64 + manifest_bytes(edited.chunks.len()),
        "an edit of 100 bytes stored {} of {size} bytes",
        edited.stored_bytes
    );
    eprintln!(
        "edit of 100 bytes in a {size}-byte blob stored {} bytes",
        edited.stored_bytes
    );
    assert_eq!(get(&client, &edited.hash, 0, 0).await?, data);
    assert_eq!(get(&client, &first.hash, 0, 0).await?, test_bytes(size, 3));

    // Content shared by different blobs is stored once: a new 6 MiB head before the same
    // 24 MiB tail re-stores about the head.
    let tail = test_bytes(24 * MIB, 5);
    let x: Vec<u8> = [test_bytes(16 * MIB, 6), tail.clone()].concat();
    let y: Vec<u8> = [test_bytes(6 * MIB, 7), tail].concat();
    let put_x = put(&client, &x).await?;
    let put_y = put(&client, &y).await?;
    assert!(
        put_y.stored_bytes <= (6 * MIB + 2 * MAX_CHUNK) as u64 + manifest_bytes(put_y.chunks.len()),
        "the second blob stored {} of {} bytes",
        put_y.stored_bytes,
        y.len()
    );
    let shared: u64 = put_y
        .chunks
        .iter()
        .filter(|c| put_x.chunks.iter().any(|d| d.hash == c.hash))
        .map(|c| c.size)
        .sum();
    // Cut points resynchronise a chunk or two into the tail: most of it is shared.
    assert!(
        shared >= 12 * MIB as u64,
        "only {shared} bytes of the 24 MiB tail are shared chunks"
    );
    assert_eq!(get(&client, &put_y.hash, 0, 0).await?, y);

    // A client that asks HasBlobs first sends no content bytes for what the store holds.
    let remote = RemoteBlobs::new(client_channel(store).await?);
    let uploaded = remote.upload(Bytes::from(x.clone())).await?;
    assert_eq!(
        (uploaded.hash.to_hex().to_string(), uploaded.sent_bytes),
        (put_x.hash.clone(), 0)
    );
    let fresh = remote.upload(Bytes::from(test_bytes(5 * MIB, 8))).await?;
    assert_eq!(fresh.sent_bytes, 5 * MIB as u64);
    Ok(())
}

async fn client_channel(store: &Store) -> Result<tonic::transport::Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(store.process.endpoint())?
            .connect()
            .await?,
    )
}

/// A streamed upload (`Blobs::put_stream`: PutBlob with `size_unknown`) through a real store:
/// any split of the bytes gets the name a whole upload gets; a source that fails midway
/// leaves nothing visible.
#[tokio::test]
async fn store_streamed_upload_on_local_filesystem() -> Result<()> {
    use aether_store::Blobs;
    use futures::StreamExt;
    let objects = Objects::local()?;
    let store = Store::start(&objects, &[]).await?;
    let client = store.client();
    let remote = RemoteBlobs::new(client_channel(&store).await?);
    for len in [0, 1, MAX_CHUNK, MAX_CHUNK + 1, 20 * MIB] {
        let data = Bytes::from(test_bytes(len, len as u64 + 60));
        let sizes = [1, 7919, MIB + 1, 3 * MIB + 3, 13];
        let mut pieces = Vec::new();
        let mut start = 0;
        for size in sizes.iter().cycle() {
            if start == len {
                break;
            }
            let end = (start + size).min(len);
            pieces.push(Ok(data.slice(start..end)));
            start = end;
        }
        let (hash, size) = remote
            .put_stream(futures::stream::iter(pieces).boxed())
            .await?;
        assert_eq!((hash, size), (blob_hash(&data), len as u64), "{len} bytes");
        assert_eq!(
            get(&client, &hash.to_hex(), 0, 0).await?,
            data,
            "{len} bytes"
        );
    }

    let data = Bytes::from(test_bytes(20 * MIB, 61));
    let hash = blob_hash(&data).to_hex().to_string();
    let pieces = vec![
        Ok(data.slice(..12 * MIB)),
        Err(aether_store::StoreError::Unavailable(
            "the source went away".into(),
        )),
    ];
    let error = remote
        .put_stream(futures::stream::iter(pieces).boxed())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("the source went away"),
        "{error}"
    );
    // Neither the blob nor the part sent before the failure: the call was reset, not ended.
    let part = blob_hash(&data[..12 * MIB]).to_hex().to_string();
    assert_eq!(missing(&client, &[&hash, &part]).await?, [hash, part]);
    Ok(())
}

#[tokio::test]
async fn store_abandoned_upload_on_local_filesystem() -> Result<()> {
    let objects = Objects::local()?;
    let store = Store::start(&objects, &[]).await?;
    exercise_abandoned_upload(&store).await
}

#[tokio::test]
async fn store_abandoned_upload_on_s3() -> Result<()> {
    let objects = Objects::s3().await?;
    let store = Store::start(&objects, &[]).await?;
    exercise_abandoned_upload(&store).await
}

/// A client that goes away mid-upload, or ends its stream early, leaves the blob invisible.
async fn exercise_abandoned_upload(store: &Store) -> Result<()> {
    let client = store.client();
    let data = test_bytes(20 * MIB, 9);
    let hash = blob_hash(&data).to_hex().to_string();
    let first_chunk = chunk_plan(&data)[0].0.to_hex().to_string();

    // The client sends 12 MiB of 20, then vanishes (the call is dropped: RST_STREAM).
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .clone()
                .put_blob(tokio_stream::wrappers::ReceiverStream::new(receiver))
                .await
        }
    });
    sender.send(header(data.len() as u64, "")).await?;
    for piece in data[..12 * MIB].chunks(MIB) {
        sender.send(data_message(piece)).await?;
    }
    // The store has been writing chunks of the partial upload: proof it got that far.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !missing(&client, &[&first_chunk]).await?.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first chunk was never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    call.abort();
    drop(sender);
    let _ = call.await;

    assert_eq!(
        missing(&client, &[&hash]).await?,
        std::slice::from_ref(&hash)
    );
    assert_status(stat(&client, &hash).await, Code::NotFound, &[&hash]);
    assert_status(get(&client, &hash, 0, 0).await, Code::NotFound, &[&hash]);

    // The client ends its stream cleanly but early: refused, and still invisible.
    let messages = put_request(data.len() as u64, "", &data[..15 * MIB], MIB);
    assert_status(
        put_messages(&client, messages).await,
        Code::InvalidArgument,
        &["15728640 of the 20971520 bytes"],
    );
    assert_eq!(
        missing(&client, &[&hash]).await?,
        std::slice::from_ref(&hash)
    );
    assert_status(stat(&client, &hash).await, Code::NotFound, &[]);

    // The store is unharmed, and the whole upload then works.
    let done = put(&client, &data).await?;
    assert_eq!(done.hash, hash);
    assert_eq!(get(&client, &hash, 0, 0).await?, data);
    Ok(())
}
