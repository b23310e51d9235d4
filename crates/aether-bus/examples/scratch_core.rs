use aether_bus::{Bus, BusConfig, Delivery, Start};
use aether_proto::{Durability, OutgoingMessage};
use object_store::memory::InMemory;
use std::sync::Arc;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let bus = Bus::new(Arc::new(InMemory::new()), BusConfig::default());
    let n: u64 = 1_000_000;
    let mut sub = bus.subscribe("s", Start::Offset(1), "").await.unwrap();
    let consumer = tokio::spawn(async move {
        let mut got = 0u64;
        let mut lagged = 0;
        while got < n {
            match sub.next().await {
                Some(Ok(Delivery::Message(_))) => got += 1,
                Some(Ok(Delivery::Lagged { .. })) => {
                    lagged += 1;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        (got, lagged)
    });
    let t = Instant::now();
    let payload = bytes::Bytes::from(vec![b'x'; 100]);
    for _ in 0..n / 1000 {
        let batch: Vec<_> = (0..1000)
            .map(|_| OutgoingMessage {
                subject: "bench.msg".into(),
                payload: payload.clone(),
                headers: Default::default(),
            })
            .collect();
        bus.publish("s", batch, "anonymous", Durability::Accepted)
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    let pub_t = t.elapsed();
    let (got, lagged) = consumer.await.unwrap();
    println!(
        "publish {:.0}/s, delivered {got} lagged {lagged} in {:?} -> {:.0}/s",
        n as f64 / pub_t.as_secs_f64(),
        t.elapsed(),
        got as f64 / t.elapsed().as_secs_f64()
    );
}
