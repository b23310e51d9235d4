//! ListSessions: the sessions a caller may see that match a filter, one bounded page at a time.
//!
//! A "k=v" term of the selector reads only the sessions carrying that label (through
//! [`crate::label_index`], once it is complete); any other filter reads session records in id
//! order. Either way one call reads at most [`MAX_EXAMINED_PER_PAGE`] records, so a filter that
//! matches few sessions answers early with a token to go on from instead of reading them all.

use aether_core::LabelSelector;
use futures::StreamExt;

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::label_index;
use crate::model::{self, SessionRecord, State};
use crate::sessions::Sessions;
use crate::tombstones::Stored;

/// Session records one ListSessions call reads at most (then it answers with what it found
/// and a token to go on from).
pub const MAX_EXAMINED_PER_PAGE: usize = 5000;
/// Records read per range call.
const BATCH: usize = 500;
/// Archived records of closed sessions read from the store at once.
const RESOLVING: usize = 16;

/// Which sessions a listing returns.
pub struct SessionFilter {
    pub selector: LabelSelector,
    /// Empty: every state.
    pub states: Vec<State>,
}

impl SessionFilter {
    /// Judged on what etcd holds (a tombstone has the labels and state too), so a closed
    /// session's archived record is read only when it matches.
    fn matches(&self, stored: &Stored) -> bool {
        self.selector.matches(stored.labels())
            && (self.states.is_empty() || self.states.contains(&stored.state()))
    }
}

/// One page of a listing.
pub struct SessionPage {
    pub records: Vec<SessionRecord>,
    /// Where the next page starts; empty when this page is the last.
    pub next_page_token: String,
}

/// A page token is the id of a session (or a short prefix of one): anything else was not
/// returned by a listing.
pub fn parse_page_token(token: Option<String>) -> Result<Option<String>> {
    match token {
        Some(token) if crate::sessions::validate_session_id(&token).is_err() => {
            Err(Error::InvalidArgument(
                "page_token is malformed; pass next_page_token back unchanged".into(),
            ))
        }
        other => Ok(other),
    }
}

impl Sessions {
    /// Up to `size` sessions that match `filter` and `caller` may see, in id order, after
    /// session id `after`.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: &SessionFilter,
        size: usize,
        mut after: Option<String>,
    ) -> Result<SessionPage> {
        let coord = &*self.coord;
        let indexed = match filter.selector.required_pairs().first() {
            Some(pair) if label_index::ready(coord).await? => Some(*pair),
            _ => None,
        };
        let mut records = Vec::new();
        let mut examined = 0usize;
        // Read candidates in id order, filtering, until a page is full or they run out.
        loop {
            let (batch, last) = match indexed {
                Some(pair) => {
                    let want = (size + 1 - records.len()).clamp(1, BATCH);
                    label_index::sessions_with(coord, pair, after.as_deref(), want).await?
                }
                None => self.records_after(after.as_deref()).await?,
            };
            let Some(last) = last else {
                return Ok(SessionPage::last(records));
            };
            examined += batch.len();
            // Filtered and access-checked on what etcd holds (a tombstone has the owner and
            // policy too), so only sessions this page returns are read from the store.
            let mut matched = batch
                .into_iter()
                .filter(|s| {
                    let (owner, policy) = s.access();
                    filter.matches(s) && caller.can_see(owner, policy)
                })
                .peekable();
            while matched.peek().is_some() {
                // Only as many as could still go in the page, a few at once.
                let wanted: Vec<Stored> = matched.by_ref().take(size + 1 - records.len()).collect();
                for record in self.resolve_all(wanted).await? {
                    if records.len() == size {
                        return Ok(SessionPage::full(records));
                    }
                    records.push(record);
                }
            }
            after = Some(last);
            if examined >= MAX_EXAMINED_PER_PAGE {
                return Ok(SessionPage::cut_short(records, &after.unwrap_or_default()));
            }
        }
    }

    /// The whole records of `stored`, in order (archived ones read [`RESOLVING`] at once). A
    /// closed session whose archived record is lost is left out and logged: one lost record
    /// must not end every listing that passes it (reading it by id reports the loss).
    async fn resolve_all(&self, stored: Vec<Stored>) -> Result<Vec<SessionRecord>> {
        let blobs = self.trees.blobs().as_ref();
        let resolved: Vec<Result<SessionRecord>> = futures::stream::iter(stored)
            .map(|s| s.resolve(blobs))
            .buffered(RESOLVING)
            .collect()
            .await;
        let mut records = Vec::with_capacity(resolved.len());
        for record in resolved {
            match record {
                Ok(record) => records.push(record),
                Err(Error::DataLoss(why)) => {
                    tracing::error!(%why, "a closed session's record is lost; listings skip it")
                }
                Err(other) => return Err(other),
            }
        }
        Ok(records)
    }

    /// Up to [`BATCH`] session records in id order after session id `after`, and the id of the
    /// last one read (`None` when there were none).
    async fn records_after(&self, after: Option<&str>) -> Result<(Vec<Stored>, Option<String>)> {
        let prefix = model::sessions_prefix();
        let start = after.map(|id| format!("{prefix}{id}"));
        let batch = self.coord.range(&prefix, start.as_deref(), BATCH).await?;
        let last = batch
            .last()
            .and_then(|kv| kv.key.strip_prefix(&prefix))
            .map(str::to_owned);
        let records = batch
            .iter()
            .filter_map(|kv| Stored::decode(&kv.value).ok())
            .collect();
        Ok((records, last))
    }
}

impl SessionPage {
    /// The candidates ran out: no next page.
    fn last(records: Vec<SessionRecord>) -> Self {
        Self {
            records,
            next_page_token: String::new(),
        }
    }

    /// The page filled up with more to come: the next starts after its last session.
    fn full(records: Vec<SessionRecord>) -> Self {
        let next_page_token = records.last().map(|r| r.id.clone()).unwrap_or_default();
        Self {
            records,
            next_page_token,
        }
    }

    /// The page ended at the read bound after session id `last_read`. The token must not name
    /// a session the caller may not see: the last one returned, or a short prefix of the last
    /// one read (seeking after it only reads again a few records this call passed over).
    fn cut_short(records: Vec<SessionRecord>, last_read: &str) -> Self {
        let prefix: String = last_read.chars().take(8).collect();
        let returned = records.last().map(|r| r.id.clone());
        let next_page_token = returned.filter(|r| *r > prefix).unwrap_or(prefix);
        Self {
            records,
            next_page_token,
        }
    }
}
