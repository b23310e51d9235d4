//! etcd starts healthy on free ports, survives losing a minority, and is gone after drop.

use std::time::Duration;

use aether_testkit::{http, Etcd, EtcdCluster};

const PROBE: Duration = Duration::from_secs(2);

async fn healthy(endpoint: &str) -> bool {
    http::request(endpoint, "GET", "/health", &[], b"", PROBE)
        .await
        .is_ok_and(|response| response.text().contains("\"health\":\"true\""))
}

#[tokio::test]
async fn single_etcd_is_healthy_and_gone_after_drop() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    let response = http::request(&endpoint, "GET", "/health", &[], b"", PROBE).await?;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.text().contains("\"health\":\"true\""),
        "{}",
        response.text()
    );

    drop(etcd);
    let after = http::request(&endpoint, "GET", "/health", &[], b"", PROBE).await;
    assert!(after.is_err(), "etcd still answers after drop: {after:?}");
    Ok(())
}

#[tokio::test]
async fn cluster_keeps_quorum_when_one_member_dies_and_takes_it_back() -> anyhow::Result<()> {
    let mut cluster = EtcdCluster::start(3).await?;
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    for endpoint in &endpoints {
        assert!(
            healthy(endpoint).await,
            "{endpoint} not healthy after start"
        );
    }

    cluster.kill(0)?;
    assert!(
        http::request(&endpoints[0], "GET", "/health", &[], b"", PROBE)
            .await
            .is_err(),
        "killed member still answers"
    );
    // The survivors may need an election first (if member 0 led), so wait rather than probe.
    cluster.wait_healthy(1).await?;
    cluster.wait_healthy(2).await?;

    cluster.restart(0).await?;
    assert_eq!(
        cluster.endpoints(),
        endpoints,
        "restart must keep the ports"
    );
    for endpoint in &endpoints {
        assert!(
            healthy(endpoint).await,
            "{endpoint} not healthy after restart"
        );
    }
    assert!(cluster.log_tail(0, 200).contains("etcd0"));

    assert!(cluster.kill(3).is_err());
    assert!(cluster.restart(7).await.is_err());
    Ok(())
}

#[tokio::test]
async fn a_cluster_needs_members() {
    let error = EtcdCluster::start(0)
        .await
        .err()
        .expect("zero members must fail");
    assert!(
        error.to_string().contains("at least one member"),
        "{error:#}"
    );
}
