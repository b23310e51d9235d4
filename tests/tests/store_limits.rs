//! The store's limits over real gRPC: each is configurable by flag, enforced with the documented
//! status, and named in the message; bad input is refused and changes nothing.

use crate::store_support;

use aether_proto as pb;
use anyhow::Result;
use store_support::*;
use tonic::Code;

/// The default message limit (README "Limits": 4 MiB + 64 KiB).
const MAX_MESSAGE: usize = 4 * MIB + 64 * 1024;

#[tokio::test]
async fn store_limits_are_enforced_and_named() -> Result<()> {
    let objects = Objects::local()?;
    let store = Store::start(
        &objects,
        &[
            "--store-max-blob-bytes",
            "10485760",
            "--store-max-batch",
            "5",
        ],
    )
    .await?;
    let client = store.client();

    // Blob size, announced in the header.
    assert_status(
        put_messages(&client, vec![header(10 * MIB as u64 + 1, "")]).await,
        Code::ResourceExhausted,
        &["10485761", "limit of 10485760 bytes"],
    );
    let at_limit = test_bytes(10 * MIB, 1);
    assert_eq!(put(&client, &at_limit).await?.size, 10 * MIB as u64);

    // Blob size without a header size (`size_unknown`): enforced as the bytes arrive.
    let streamed_put = |data: &[u8]| -> Vec<_> {
        std::iter::once(unsized_header())
            .chain(data.chunks(MIB).map(data_message))
            .collect()
    };
    let over = test_bytes(10 * MIB + 1, 7);
    assert_status(
        put_messages(&client, streamed_put(&over)).await,
        Code::ResourceExhausted,
        &["limit of 10485760 bytes"],
    );
    let over_hash = aether_store::blobs::blob_hash(&over).to_hex().to_string();
    assert_eq!(missing(&client, &[&over_hash]).await?, [over_hash]);
    let streamed = put_messages(&client, streamed_put(&at_limit)).await?;
    assert_eq!(streamed.size, 10 * MIB as u64);
    let mut both = streamed_put(b"abc");
    both[0] = header(3, "");
    if let Some(pb::put_blob_request::Part::Header(h)) = &mut both[0].part {
        h.size_unknown = true;
    }
    assert_status(
        put_messages(&client, both).await,
        Code::InvalidArgument,
        &["size_unknown and a size (3)"],
    );

    // Message size: one data message over the limit, and a unary request over it.
    let messages = put_request(5 * MIB as u64, "", &test_bytes(5 * MIB, 2), 5 * MIB);
    assert_status(
        put_messages(&client, messages).await,
        Code::ResourceExhausted,
        &[&MAX_MESSAGE.to_string()],
    );
    let just_fits = put_request(4 * MIB as u64, "", &test_bytes(4 * MIB, 3), 4 * MIB);
    put_messages(&client, just_fits).await?;
    let huge_hashes: Vec<String> = (0..70_000).map(|i| format!("{i:064x}")).collect();
    let huge: Vec<&str> = huge_hashes.iter().map(String::as_str).collect();
    assert_status(
        missing(&client, &huge).await,
        Code::ResourceExhausted,
        &[&MAX_MESSAGE.to_string()],
    );

    // HasBlobs batch size.
    let six: Vec<&str> = huge[..6].to_vec();
    assert_status(
        missing(&client, &six).await,
        Code::InvalidArgument,
        &["6 hashes", "limit of 5"],
    );
    assert_eq!(missing(&client, &six[..5]).await?.len(), 5);

    // The header's size must match the data, in both directions.
    let data = test_bytes(1000, 4);
    let hash = blake3::hash(&data).to_hex().to_string();
    assert_status(
        put_messages(&client, put_request(999, "", &data, 600)).await,
        Code::InvalidArgument,
        &["more than the 999 bytes announced"],
    );
    assert_status(
        put_messages(&client, put_request(1001, "", &data, 600)).await,
        Code::InvalidArgument,
        &["after 1000 of the 1001 bytes"],
    );
    assert_eq!(missing(&client, &[&hash]).await?, [hash]);

    // expected_hash: a mismatch is refused before anything becomes visible, small or chunked.
    let other = blake3::hash(b"other").to_hex().to_string();
    for data in [test_bytes(1000, 5), test_bytes(9 * MIB, 6)] {
        let actual = aether_store::blobs::blob_hash(&data).to_hex().to_string();
        assert_status(
            put_messages(&client, put_request(data.len() as u64, &other, &data, MIB)).await,
            Code::InvalidArgument,
            &[&actual, &other, "not stored"],
        );
        assert_eq!(
            missing(&client, &[&actual, &other]).await?,
            [actual.clone(), other.clone()]
        );
        let stored =
            put_messages(&client, put_request(data.len() as u64, &actual, &data, MIB)).await?;
        assert_eq!(stored.hash, actual);
    }

    // The stream's shape: a header first, then only data.
    assert_status(
        put_messages(&client, vec![data_message(b"abc")]).await,
        Code::InvalidArgument,
        &["first PutBlob message must be a header"],
    );
    assert_status(
        put_messages(&client, vec![header(3, ""), header(3, "")]).await,
        Code::InvalidArgument,
        &["one header, then only data"],
    );
    Ok(())
}

#[tokio::test]
async fn store_refuses_to_start_with_inconsistent_limits() -> Result<()> {
    let objects = Objects::local()?;
    let error = Store::start(
        &objects,
        &[
            "--store-max-message-bytes",
            "1048576",
            "--store-stream-chunk-bytes",
            "1048576",
        ],
    )
    .await
    .err()
    .expect("aetherd must refuse limits that do not fit together");
    let message = format!("{error:#}");
    assert!(
        message.contains("--store-stream-chunk-bytes"),
        "the error should name the flag: {message}"
    );
    Ok(())
}

#[tokio::test]
async fn store_stream_chunk_bytes_sets_the_get_blob_message_size() -> Result<()> {
    let objects = Objects::local()?;
    let store = Store::start(&objects, &["--store-stream-chunk-bytes", "65536"]).await?;
    let client = store.client();
    let data = test_bytes(300_000, 7);
    let hash = put(&client, &data).await?.hash;
    let mut stream = client
        .clone()
        .get_blob(aether_proto::GetBlobRequest {
            hash,
            offset: 0,
            length: 0,
        })
        .await?
        .into_inner();
    let mut sizes = Vec::new();
    while let Some(message) = stream.message().await? {
        sizes.push(message.data.len());
    }
    assert_eq!(sizes, [65536, 65536, 65536, 65536, 300_000 - 4 * 65536]);
    Ok(())
}
