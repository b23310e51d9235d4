//! Paging costs one page: ListTree (recursive) and Diff over 100k files in pages of 1,000, and
//! the latency of the first page against the last, beside one unpaged walk of the same tree
//! (in-process, no gRPC: what a listing costs at the least) with the ratio (issue 14: paging
//! through must cost at most 2× one unpaged listing). Before paging seeked, every page walked the
//! whole tree and scanned for its token, so the last page cost what the whole listing did and
//! paging through was O(N²); now a page costs what it returns.
//!
//! `cargo bench -p aether-coordinator --bench list_paging`

mod support;

use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use support::{filled_session, serve};
use tonic::transport::Channel;

const FILES: usize = 100_000;
const PAGE: u32 = 1000;

/// What paging through a listing cost.
struct Paged {
    entries: usize,
    pages: usize,
    total: Duration,
    first: Duration,
    last: Duration,
}

/// Pages through a listing: `page(token)` returns (entries on the page, next token).
async fn page_through<F, Fut>(mut page: F) -> Paged
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = (usize, String)>,
{
    let (mut entries, mut pages, mut token) = (0, 0, String::new());
    let mut first = Duration::ZERO;
    let started = Instant::now();
    loop {
        let call = Instant::now();
        let (count, next) = page(token).await;
        let took = call.elapsed();
        if pages == 0 {
            first = took;
        }
        pages += 1;
        entries += count;
        if next.is_empty() {
            return Paged {
                entries,
                pages,
                total: started.elapsed(),
                first,
                last: took,
            };
        }
        token = next;
    }
}

async fn list_through(channel: &Channel, id: &str) -> Paged {
    let workspace = WorkspaceServiceClient::new(channel.clone());
    page_through(|token| {
        let mut workspace = workspace.clone();
        let id = id.to_string();
        async move {
            let page = workspace
                .list_tree(pb::ListTreeRequest {
                    session_id: id,
                    path: String::new(),
                    recursive: true,
                    at: None,
                    page: Some(pb::PageRequest {
                        page_size: PAGE,
                        page_token: token,
                    }),
                })
                .await
                .unwrap()
                .into_inner();
            (page.entries.len(), page.next_page_token)
        }
    })
    .await
}

/// A diff against the empty checkpoint: every file.
async fn diff_through(channel: &Channel, id: &str) -> Paged {
    let workspace = WorkspaceServiceClient::new(channel.clone());
    page_through(|token| {
        let mut workspace = workspace.clone();
        let id = id.to_string();
        async move {
            let page = workspace
                .diff(pb::DiffRequest {
                    session_id: id,
                    from: Some(pb::Revision {
                        kind: pb::RevisionKind::Checkpoint as i32,
                        name: "empty".into(),
                    }),
                    page: Some(pb::PageRequest {
                        page_size: PAGE,
                        page_token: token,
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            (page.entries.len(), page.next_page_token)
        }
    })
    .await
}

/// One walk of the whole tree in the coordinator's own code, as an unpaged listing would be.
/// Cold (trees read from disk) and warm (from the cache) walks, and then the same tree paged
/// in-process (pages of PAGE by seeking, as ListTree does, without gRPC): what paging itself
/// adds over one walk.
async fn unpaged_walk(
    dir: &std::path::Path,
    channel: &Channel,
    id: &str,
) -> (usize, [Duration; 2], Duration) {
    use aether_coordinator::trees::Trees;
    let root = WorkspaceServiceClient::new(channel.clone())
        .stat(pb::StatRequest {
            session_id: id.to_string(),
            path: String::new(),
            at: None,
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap()
        .hash;
    let store = aether_store::BlobStore::new(
        aether_store::backend::BackendArgs::local(dir.to_path_buf())
            .build("objects")
            .unwrap(),
        aether_store::Limits::default(),
    );
    let trees = Trees::new(std::sync::Arc::new(store));
    let root = aether_core::Hash::from_hex(&root).unwrap();
    let mut times = [Duration::ZERO; 2];
    let mut entries = 0;
    for time in &mut times {
        let mut out = Vec::new();
        let started = Instant::now();
        trees
            .walk(
                root,
                aether_core::WorkspacePath::root(),
                true,
                &mut out,
                usize::MAX,
            )
            .await
            .unwrap();
        *time = started.elapsed();
        entries = out.len();
    }
    let started = Instant::now();
    let mut after: Vec<String> = Vec::new();
    loop {
        let mut page = Vec::new();
        trees
            .walk_page(
                root,
                aether_core::WorkspacePath::root(),
                true,
                &after,
                PAGE as usize,
                &mut page,
            )
            .await
            .unwrap();
        match page.last() {
            Some((path, _)) if page.len() == PAGE as usize => {
                after = path.components().map(str::to_owned).collect();
            }
            _ => break,
        }
    }
    (entries, times, started.elapsed())
}

fn report(what: &str, paged: Paged) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what:<26} {:>7} entries in {:>4} pages: {:>8.1} ms in all, {:>6.2} ms per page; first page {:>6.2} ms, last {:>6.2} ms (last/first {:.2}x)",
        paged.entries,
        paged.pages,
        ms(paged.total),
        ms(paged.total) / paged.pages as f64,
        ms(paged.first),
        ms(paged.last),
        ms(paged.last) / ms(paged.first).max(1e-6),
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let channel = serve(dir.path()).await;
    // An empty checkpoint first, so the diff lists every file.
    let id = filled_session(&channel, 0).await;
    HistoryServiceClient::new(channel.clone())
        .create_checkpoint(pb::CreateCheckpointRequest {
            session_id: id.clone(),
            name: "empty".into(),
            description: String::new(),
        })
        .await
        .unwrap();
    support::fill(&channel, &id, FILES).await;
    println!("{FILES} files of 64 bytes, 1,000 per directory; pages of {PAGE}");
    // Twice each: the first pass also loads the trees into the coordinator's cache.
    let (entries, unpaged, paged_in_process) = unpaged_walk(dir.path(), &channel, &id).await;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:<26} {entries:>7} entries in pages: {:>8.1} ms (paged / unpaged warm walk {:.2}x)",
        "paged walk (in-process)",
        ms(paged_in_process),
        ms(paged_in_process) / ms(unpaged[1])
    );
    for (pass, time) in ["cold", "warm"].iter().zip(unpaged) {
        println!(
            "{:<26} {entries:>7} entries at once:     {:>8.1} ms",
            format!("unpaged walk ({pass})"),
            ms(time)
        );
    }
    for (pass, unpaged) in ["cold", "warm"].into_iter().zip(unpaged) {
        let listed = list_through(&channel, &id).await;
        let ratio = ms(listed.total) / ms(unpaged);
        report(&format!("ListTree recursive ({pass})"), listed);
        println!("{:<26} paged through / unpaged walk: {ratio:.2}x", "");
        report(&format!("Diff ({pass})"), diff_through(&channel, &id).await);
    }
}
