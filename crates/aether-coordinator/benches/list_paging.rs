//! Paging costs one page: ListTree (recursive) and Diff over 100k files in pages of 1,000, and
//! the latency of the first page against the last. Before paging seeked, every page walked the
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
    for pass in ["cold", "warm"] {
        report(
            &format!("ListTree recursive ({pass})"),
            list_through(&channel, &id).await,
        );
        report(&format!("Diff ({pass})"), diff_through(&channel, &id).await);
    }
}
