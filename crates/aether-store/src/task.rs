//! Object reads and writes run as spawned tasks so they make progress while the request
//! handler waits on the network (a plain future would only run when the handler polls it), and
//! so hashing spreads over all cores. The handle aborts its task when dropped: a request that
//! is cancelled (client gone) stops its outstanding work.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;

use crate::StoreError;

/// A spawned task, aborted when the handle is dropped.
pub(crate) struct Spawned<T>(JoinHandle<Result<T, StoreError>>);

pub(crate) fn spawn<T, F>(future: F) -> Spawned<T>
where
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
    T: Send + 'static,
{
    Spawned(tokio::spawn(future))
}

impl<T> Future for Spawned<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| match joined {
            Ok(result) => result,
            Err(error) => Err(StoreError::Internal(format!("store task failed: {error}"))),
        })
    }
}

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
