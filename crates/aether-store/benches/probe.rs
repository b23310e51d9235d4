use aether_store::blobs::{cut_points, BlobStore};
use aether_store::Limits;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
fn rb(len: usize, seed: u64) -> Bytes {
    let mut state = (seed << 1) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}
fn main() {
    let data = rb(64 << 20, 1);
    for _ in 0..3 {
        let t = Instant::now();
        let h = blake3::hash(&data);
        let e = t.elapsed();
        println!(
            "blake3 64MiB: {:.0} MB/s {h}",
            64.0 * 1.048576 / e.as_secs_f64()
        );
        let t = Instant::now();
        let n = cut_points(&data, true).len();
        let e = t.elapsed();
        println!(
            "fastcdc 64MiB: {:.0} MB/s ({n} chunks)",
            64.0 * 1.048576 / e.as_secs_f64()
        );
        let t = Instant::now();
        let v = data.to_vec();
        let e = t.elapsed();
        println!(
            "memcpy 64MiB: {:.0} MB/s {}",
            64.0 * 1.048576 / e.as_secs_f64(),
            v.len()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let fs =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let mem = Arc::new(object_store::memory::InMemory::new());
        for (name, objects) in [
            ("local", fs as Arc<dyn object_store::ObjectStore>),
            ("memory", mem as _),
        ] {
            let store = BlobStore::new(objects, Limits::default());
            for i in 0..4 {
                let d = rb(64 << 20, 10 + i);
                let t = Instant::now();
                let o = store.put_bytes(d).await.unwrap();
                let e = t.elapsed();
                println!(
                    "{name} put_bytes 64MiB: {:.0} MB/s",
                    64.0 * 1.048576 / e.as_secs_f64()
                );
                let t = Instant::now();
                let g = store.get_bytes(&o.hash).await.unwrap();
                let e = t.elapsed();
                println!(
                    "{name} get_bytes 64MiB: {:.0} MB/s {}",
                    64.0 * 1.048576 / e.as_secs_f64(),
                    g.len()
                );
            }
        }
    });
}
