//! A coordinator watches etcd's database size (issue 15): past 80% of the quota it warns in
//! its log, naming what to do, before etcd refuses every write.

use std::time::{Duration, Instant};

use aether_testkit::{Cluster, ClusterSpec, ServiceProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_warns_as_etcd_nears_its_quota() {
    let cluster = Cluster::start(ClusterSpec {
        coordinators: 0,
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    // A quota smaller than any etcd database: the first reading is past 80% of it.
    let coordinator = ServiceProcess::start(&[
        "coordinator".into(),
        "--etcd-endpoints".into(),
        cluster.etcd.endpoints().join(","),
        "--store-endpoint".into(),
        cluster.stores[0].endpoint(),
        "--etcd-quota-bytes".into(),
        "4096".into(),
    ])
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = coordinator.stderr_tail(200);
        if log.contains("etcd database at") {
            assert!(log.contains("4096"), "{log}");
            assert!(log.contains("defrag"), "{log}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no warning about etcd's quota:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
