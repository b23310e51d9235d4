//! Garbage collection against reuse: content a writer relies on (found by HasBlobs, or
//! stored again by a put) is renewed, so a sweep cannot take it even though nothing references
//! it yet and its objects were old; untouched old garbage is swept.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use aether_store::backend::BackendArgs;
use aether_store::{BlobStore, Limits};
use aether_testkit::test_bytes as noise;
use bytes::Bytes;

fn age_everything(dir: &std::path::Path) {
    // Objects written "two hours ago": older than both the refresh age and the grace period.
    let status = Command::new("find")
        .arg(dir)
        .args([
            "-type",
            "f",
            "-exec",
            "touch",
            "-d",
            "2 hours ago",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn reused_content_is_renewed_and_untouched_garbage_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(
        BackendArgs::local(dir.path().to_path_buf())
            .build("objects")
            .unwrap(),
        Limits::default(),
    );
    let reused = store
        .put_bytes(Bytes::from(noise(9 << 20, 1)))
        .await
        .unwrap();
    assert!(reused.chunks.len() > 1, "a chunked blob");
    let small = store
        .put_bytes(Bytes::from_static(b"stored again"))
        .await
        .unwrap();
    let garbage = store
        .put_bytes(Bytes::from(noise(12 << 20, 2)))
        .await
        .unwrap();
    age_everything(dir.path());

    // A client finds the chunked blob with HasBlobs and will reference it; a writer stores the
    // small one again.
    assert!(store
        .missing_hashes(&[reused.hash])
        .await
        .unwrap()
        .is_empty());
    store
        .put_bytes(Bytes::from_static(b"stored again"))
        .await
        .unwrap();

    let report = store
        .sweep(&HashSet::new(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        report.deleted_objects > garbage.chunks.len() as u64,
        "{report:?}"
    );
    let data = store
        .get_bytes(&reused.hash)
        .await
        .expect("reused blob survives, chunks too");
    assert_eq!(data.len(), 9 << 20);
    assert_eq!(
        &store.get_bytes(&small.hash).await.unwrap()[..],
        b"stored again"
    );
    assert_eq!(
        store.missing_hashes(&[garbage.hash]).await.unwrap(),
        vec![garbage.hash]
    );
}
