//! One behaviour suite for every coordination backend. Each check panics with a message on a
//! violation; backends run it from their tests (`tests/conformance.rs`).

use std::sync::Arc;
use std::time::Duration;

use crate::holder::{self, Acquire, FencedOutcome, HolderRecord};
use crate::{Compare, CoordError, Coordination, Op};

/// Runs every check under a fresh key prefix.
pub async fn run_all(coord: Arc<dyn Coordination>, prefix: &str) {
    compare_and_put(&*coord, &format!("{prefix}/cas")).await;
    range_paging(&*coord, &format!("{prefix}/range")).await;
    lease_revoke_deletes_keys(&*coord, &format!("{prefix}/revoke")).await;
    lease_expiry_deletes_keys(&*coord, &format!("{prefix}/expiry")).await;
    fencing(&*coord, &format!("{prefix}/fence")).await;
}

async fn compare_and_put(coord: &dyn Coordination, key: &str) {
    let created = coord
        .txn(
            vec![Compare::Missing(key.into())],
            vec![Op::put(key, "one")],
        )
        .await
        .unwrap();
    assert!(
        created.succeeded,
        "create-if-missing must succeed on a new key"
    );
    let again = coord
        .txn(
            vec![Compare::Missing(key.into())],
            vec![Op::put(key, "two")],
        )
        .await
        .unwrap();
    assert!(
        !again.succeeded,
        "create-if-missing must fail on an existing key"
    );
    let kv = coord.get(key).await.unwrap().expect("key exists");
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.create_revision, created.revision);
    assert_eq!(kv.mod_revision, created.revision);

    let stale = coord
        .txn(
            vec![Compare::ModRevision(key.into(), kv.mod_revision - 1)],
            vec![Op::put(key, "stale")],
        )
        .await
        .unwrap();
    assert!(!stale.succeeded, "a stale mod revision must not apply");
    let fresh = coord
        .txn(
            vec![Compare::ModRevision(key.into(), kv.mod_revision)],
            vec![Op::put(key, "three"), Op::put(format!("{key}-side"), "x")],
        )
        .await
        .unwrap();
    assert!(fresh.succeeded);
    let kv2 = coord.get(key).await.unwrap().unwrap();
    assert_eq!(kv2.value, b"three");
    assert_eq!(
        kv2.create_revision, kv.create_revision,
        "updates keep the create revision"
    );
    assert!(kv2.mod_revision > kv.mod_revision);
    assert_eq!(
        coord
            .get(&format!("{key}-side"))
            .await
            .unwrap()
            .unwrap()
            .value,
        b"x",
        "every op of a successful txn applies"
    );

    // Delete and re-create: the create revision moves on, which is what fencing relies on.
    coord.txn(vec![], vec![Op::delete(key)]).await.unwrap();
    assert!(coord.get(key).await.unwrap().is_none());
    let recreated = coord.txn(vec![], vec![Op::put(key, "four")]).await.unwrap();
    let kv3 = coord.get(key).await.unwrap().unwrap();
    assert_eq!(kv3.create_revision, recreated.revision);
    assert!(kv3.create_revision > kv.create_revision);
}

async fn range_paging(coord: &dyn Coordination, prefix: &str) {
    for i in 0..7 {
        coord
            .txn(
                vec![],
                vec![Op::put(format!("{prefix}/k{i}"), vec![i as u8])],
            )
            .await
            .unwrap();
    }
    // A key that shares the prefix string but sorts after it must not leak in.
    coord
        .txn(vec![], vec![Op::put(format!("{prefix}0"), "other")])
        .await
        .unwrap();
    let dir = format!("{prefix}/");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = coord.range(&dir, after.as_deref(), 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        after = Some(page.last().unwrap().key.clone());
        seen.extend(page.into_iter().map(|kv| kv.key));
    }
    let expected: Vec<String> = (0..7).map(|i| format!("{prefix}/k{i}")).collect();
    assert_eq!(
        seen, expected,
        "paged range returns every key once, in order"
    );
}

async fn lease_revoke_deletes_keys(coord: &dyn Coordination, key: &str) {
    let lease = coord.grant_lease(Duration::from_secs(30)).await.unwrap();
    coord
        .txn(
            vec![],
            vec![Op::Put {
                key: key.into(),
                value: b"leased".to_vec(),
                lease: Some(lease),
            }],
        )
        .await
        .unwrap();
    let kv = coord.get(key).await.unwrap().unwrap();
    assert_eq!(kv.lease, lease);
    coord.keep_alive(lease).await.unwrap();
    coord.revoke_lease(lease).await.unwrap();
    assert!(
        coord.get(key).await.unwrap().is_none(),
        "revoking a lease deletes its keys"
    );
    let renewed = coord.keep_alive(lease).await;
    assert!(
        matches!(renewed, Err(CoordError::LeaseNotFound(_))),
        "renewing a revoked lease must say it is gone, got {renewed:?}"
    );
    // A write bound to the gone lease is refused whole, saying so (the caller knows nothing
    // applied and can retry once it holds a lease again).
    let other = format!("{key}-other");
    let refused = coord
        .txn(
            vec![],
            vec![
                Op::put(other.clone(), b"unleased".to_vec()),
                Op::Put {
                    key: key.into(),
                    value: b"late".to_vec(),
                    lease: Some(lease),
                },
            ],
        )
        .await;
    assert!(
        matches!(refused, Err(CoordError::LeaseNotFound(id)) if id == lease),
        "a put with a revoked lease must be refused as LeaseNotFound, got {refused:?}"
    );
    assert!(
        coord.get(&other).await.unwrap().is_none(),
        "nothing applied"
    );
    assert!(coord.get(key).await.unwrap().is_none(), "nothing applied");
}

async fn lease_expiry_deletes_keys(coord: &dyn Coordination, key: &str) {
    let lease = coord.grant_lease(Duration::from_secs(1)).await.unwrap();
    coord
        .txn(
            vec![],
            vec![Op::Put {
                key: key.into(),
                value: b"short".to_vec(),
                lease: Some(lease),
            }],
        )
        .await
        .unwrap();
    // Expiry is the event under test; poll for it with a deadline (etcd checks about twice a
    // second, so allow the TTL plus slack).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while coord.get(key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a lease left without keep-alive must expire and delete its keys"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fencing(coord: &dyn Coordination, key: &str) {
    let data = format!("{key}-data");
    let a = HolderRecord {
        node_id: "a".into(),
        address: "http://a".into(),
    };
    let b = HolderRecord {
        node_id: "b".into(),
        address: "http://b".into(),
    };
    let lease_a = coord.grant_lease(Duration::from_secs(30)).await.unwrap();
    let lease_b = coord.grant_lease(Duration::from_secs(30)).await.unwrap();
    let Acquire::Held(fence_a) = holder::acquire(coord, key, &a, lease_a).await.unwrap() else {
        panic!("first acquire must succeed");
    };
    match holder::acquire(coord, key, &b, lease_b).await.unwrap() {
        Acquire::HeldBy(holder) => assert_eq!(holder, a, "second acquire sees the holder"),
        Acquire::Held(_) => panic!("two holders at once"),
    }
    let applied = holder::fenced_txn(coord, &fence_a, vec![], vec![Op::put(&data, "from a")])
        .await
        .unwrap();
    assert!(matches!(applied, FencedOutcome::Applied(_)));
    let conflict = holder::fenced_txn(
        coord,
        &fence_a,
        vec![Compare::Missing(data.clone())],
        vec![Op::put(&data, "again")],
    )
    .await
    .unwrap();
    assert_eq!(conflict, FencedOutcome::Conflict);

    // A loses its lease (as if paused past its TTL); B takes over.
    coord.revoke_lease(lease_a).await.unwrap();
    let Acquire::Held(fence_b) = holder::acquire(coord, key, &b, lease_b).await.unwrap() else {
        panic!("acquire after the holder's lease ended must succeed");
    };
    assert!(fence_b.create_revision > fence_a.create_revision);
    let zombie = holder::fenced_txn(coord, &fence_a, vec![], vec![Op::put(&data, "zombie")])
        .await
        .unwrap();
    assert_eq!(
        zombie,
        FencedOutcome::Fenced,
        "a former holder cannot write"
    );
    assert_eq!(coord.get(&data).await.unwrap().unwrap().value, b"from a");
    holder::release(coord, &fence_b).await.unwrap();
    assert!(holder::current(coord, key).await.unwrap().is_none());
    coord.revoke_lease(lease_b).await.unwrap();
}
