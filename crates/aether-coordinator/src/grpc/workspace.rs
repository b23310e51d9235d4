//! `WorkspaceService`: read and change a session's files.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use aether_core::{EntryKind, Hash, WorkspacePath, MAX_SYMLINK_TARGET_BYTES};
use aether_proto as pb;
use aether_proto::workspace_service_server::WorkspaceService;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::{caller_of, page_size, page_token};
use crate::archive;
use crate::browse::Difference;
use crate::changes::{Change, Content, Precondition, Step};
use crate::error::{Error, Result};
use crate::revisions::Revision;
use crate::sessions::Sessions;

/// Largest file accepted inline in a WriteOp.
pub const MAX_INLINE_BYTES: usize = 1024 * 1024;
/// Largest file accepted by WriteFile: the content store's default blob limit. The file is
/// streamed into the store as it arrives, so memory does not depend on it.
pub const MAX_WRITE_FILE_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Most changes in one ApplyChanges batch.
pub const MAX_BATCH_CHANGES: usize = 10_000;
/// Chunks one write may name: a 4 GiB file in chunks of 64 KiB.
pub const MAX_CHUNKS_PER_WRITE: usize = 65_536;
/// Size of data messages sent by ReadFile and ExportArchive.
const MESSAGE_BYTES: usize = 1024 * 1024;

/// The `WorkspaceService` implementation.
#[derive(Clone)]
pub struct WorkspaceGrpc {
    sessions: Arc<Sessions>,
}

impl WorkspaceGrpc {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }
}

type ByteStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn path(value: &str) -> Result<WorkspacePath> {
    Ok(WorkspacePath::parse(value)?)
}

fn parse_change(change: pb::Change) -> Result<Change> {
    use pb::change::Op;
    let step = match change.op {
        Some(Op::Write(w)) => Step::Write {
            path: path(&w.path)?,
            content: write_content(w.content, &w.chunks)?,
            mode: w.mode,
            mtime_ns: w.mtime_ns,
        },
        Some(Op::Symlink(l)) => Step::Symlink {
            path: path(&l.path)?,
            target: symlink_target(&l.target)?,
            mtime_ns: l.mtime_ns,
        },
        Some(Op::SetAttributes(a)) => {
            if a.mode.is_none() && a.mtime_ns.is_none() {
                return Err(Error::InvalidArgument(format!(
                    "set_attributes of \"{}\" sets nothing: give a mode, an mtime_ns or both",
                    a.path
                )));
            }
            Step::SetAttributes {
                path: path(&a.path)?,
                mode: a.mode,
                mtime_ns: a.mtime_ns,
            }
        }
        Some(Op::Delete(d)) => Step::Delete {
            path: path(&d.path)?,
            recursive: d.recursive,
        },
        Some(Op::MakeDirectory(m)) => Step::MakeDirectory {
            path: path(&m.path)?,
            parents: m.parents,
        },
        Some(Op::Move(m)) => Step::Move {
            from: path(&m.from)?,
            to: path(&m.to)?,
            overwrite: m.overwrite,
        },
        Some(Op::Copy(c)) => Step::Copy {
            from: path(&c.from)?,
            to: path(&c.to)?,
            overwrite: c.overwrite,
        },
        None => {
            return Err(Error::InvalidArgument(
                "a change has no operation set".into(),
            ))
        }
    };
    Ok(Change {
        step,
        precondition: precondition(change.precondition)?,
    })
}

/// The content of a WriteFile call: its data messages, refused past
/// [`MAX_WRITE_FILE_BYTES`] or at any message that is not data.
fn file_body(
    stream: Streaming<pb::WriteFileRequest>,
) -> impl Stream<Item = std::result::Result<Bytes, Status>> {
    let mut received = 0u64;
    stream.map(move |message| match message?.part {
        Some(pb::write_file_request::Part::Data(data)) => {
            received += data.len() as u64;
            if received > MAX_WRITE_FILE_BYTES {
                return Err(Error::ResourceExhausted(format!(
                    "file exceeds the WriteFile limit of {MAX_WRITE_FILE_BYTES} bytes; upload chunks with PutBlob and use ApplyChanges"
                ))
                .into());
            }
            Ok(data)
        }
        _ => Err(Status::invalid_argument(
            "WriteFile takes one header, then only data messages",
        )),
    })
}

/// The ReadFile answer for `entry`'s bytes from `offset` (`length` of them, or to the end if
/// 0), streamed from the store's `pieces`: the first message carries the entry, and an empty
/// read still yields that one message.
fn read_stream(
    pieces: BoxStream<'static, std::result::Result<Bytes, aether_store::StoreError>>,
    entry: pb::Entry,
    offset: u64,
    length: u64,
) -> ByteStream<pb::ReadFileResponse> {
    let empty = entry.size == 0 || length == 0 && offset == entry.size;
    let head = if empty {
        vec![Ok(pb::ReadFileResponse {
            entry: Some(entry.clone()),
            offset,
            data: Bytes::new(),
        })]
    } else {
        vec![]
    };
    let mut first = Some(entry);
    let mut next = offset;
    let stream = pieces
        .map(move |piece| match piece {
            Err(e) => vec![Err(Status::from(Error::from(e)))],
            Ok(piece) => split(piece)
                .into_iter()
                .map(|data| {
                    let message = pb::ReadFileResponse {
                        entry: first.take(),
                        offset: next,
                        data,
                    };
                    next += message.data.len() as u64;
                    Ok(message)
                })
                .collect(),
        })
        .flat_map(futures::stream::iter);
    Box::pin(futures::stream::iter(head).chain(stream.filter(move |m| {
        futures::future::ready(!(empty && matches!(m, Ok(r) if r.data.is_empty())))
    })))
}

/// A write's content: inline bytes (bounded), or the chunks it was uploaded as.
fn write_content(inline: Bytes, chunks: &[pb::ChunkRef]) -> Result<Content> {
    if chunks.is_empty() {
        if inline.len() > MAX_INLINE_BYTES {
            return Err(Error::ResourceExhausted(format!(
                "inline content of {} bytes exceeds {MAX_INLINE_BYTES}; upload with PutBlob and pass chunks, or use WriteFile",
                inline.len()
            )));
        }
        return Ok(Content::Inline(inline));
    }
    if chunks.len() > MAX_CHUNKS_PER_WRITE {
        return Err(Error::InvalidArgument(format!(
            "a write names {} chunks; at most {MAX_CHUNKS_PER_WRITE} (upload larger content with \
             WriteFile)",
            chunks.len()
        )));
    }
    let declared = chunks
        .iter()
        .fold(0u64, |sum, c| sum.saturating_add(c.size));
    if declared > MAX_WRITE_FILE_BYTES {
        return Err(Error::InvalidArgument(format!(
            "a write's chunks add up to {declared} bytes; a file holds at most \
             {MAX_WRITE_FILE_BYTES}"
        )));
    }
    let chunks = chunks
        .iter()
        .map(|c| {
            Hash::from_hex(&c.hash)
                .map(|h| (h, c.size))
                .map_err(|e| Error::InvalidArgument(format!("chunk hash: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Content::Chunks(chunks))
}

/// A path precondition of the API as the domain's; none when it asks nothing.
fn precondition(precondition: Option<pb::PathPrecondition>) -> Result<Option<Precondition>> {
    use pb::path_precondition::Condition;
    let Some(condition) = precondition.and_then(|p| p.condition) else {
        return Ok(None);
    };
    Ok(match condition {
        Condition::MustNotExist(false) => None,
        Condition::MustNotExist(true) => Some(Precondition::MustNotExist),
        Condition::ContentHash(hash) => {
            Hash::from_hex(&hash).map_err(|_| {
                Error::InvalidArgument(
                    "precondition content_hash must be a BLAKE3 hash: 64 hex digits, as an \
                     Entry's hash"
                        .into(),
                )
            })?;
            Some(Precondition::ContentHash(hash.to_ascii_lowercase()))
        }
    })
}

/// Checks a symlink target: what Linux accepts in symlink(2).
fn symlink_target(target: &str) -> Result<Bytes> {
    if target.is_empty() {
        return Err(Error::InvalidArgument(
            "a symlink target cannot be empty".into(),
        ));
    }
    if target.len() > MAX_SYMLINK_TARGET_BYTES {
        return Err(Error::InvalidArgument(format!(
            "symlink target of {} bytes exceeds {MAX_SYMLINK_TARGET_BYTES}",
            target.len()
        )));
    }
    if target.contains('\0') {
        return Err(Error::InvalidArgument(
            "a symlink target cannot contain NUL".into(),
        ));
    }
    Ok(Bytes::copy_from_slice(target.as_bytes()))
}

/// One path's difference as the API says it.
fn diff_entry(difference: &Difference) -> pb::DiffEntry {
    let (old, new, changed) = (
        difference.old.as_ref(),
        difference.new.as_ref(),
        &difference.changed,
    );
    let kind = match (old, new) {
        (Some(_), Some(_)) => pb::DiffKind::Modified,
        (None, _) => pb::DiffKind::Added,
        (Some(_), None) => pb::DiffKind::Deleted,
    };
    pb::DiffEntry {
        path: difference.path.to_string(),
        kind: kind as i32,
        old_size: old.map(|e| e.size).unwrap_or(0),
        new_size: new.map(|e| e.size).unwrap_or(0),
        old_hash: old.map(|e| e.hash.to_hex()).unwrap_or_default(),
        new_hash: new.map(|e| e.hash.to_hex()).unwrap_or_default(),
        old_kind: old.map(|e| convert::kind(e.kind) as i32).unwrap_or(0),
        new_kind: new.map(|e| convert::kind(e.kind) as i32).unwrap_or(0),
        old_mode: old.map(|e| e.mode).unwrap_or(0),
        new_mode: new.map(|e| e.mode).unwrap_or(0),
        old_mtime_ns: old.map(|e| e.mtime_ns).unwrap_or(0),
        new_mtime_ns: new.map(|e| e.mtime_ns).unwrap_or(0),
        content_changed: changed.content,
        mode_changed: changed.mode,
        kind_changed: changed.kind,
        mtime_changed: changed.mtime,
    }
}

/// The components (below `dir`) of the path a page token names: the last path of the page
/// before. A token that is not a path below `dir` (one level below unless `recursive`) was not
/// made by this listing.
fn page_after(
    page: &Option<pb::PageRequest>,
    dir: &WorkspacePath,
    recursive: bool,
) -> Result<Vec<String>> {
    let Some(token) = page_token(page) else {
        return Ok(Vec::new());
    };
    let bad = || {
        Error::InvalidArgument(format!(
            "page_token \"{}\" was not returned by this listing of \"{dir}\": pass next_page_token back unchanged, with the same path and `recursive`",
            aether_core::excerpt(&token, 64)
        ))
    };
    let path = WorkspacePath::parse(&token).map_err(|_| bad())?;
    let relative = path.strip_prefix(dir).ok_or_else(bad)?;
    let components: Vec<String> = relative.components().map(str::to_string).collect();
    if components.is_empty() || (!recursive && components.len() != 1) {
        return Err(bad());
    }
    Ok(components)
}

/// Splits a byte stream into messages of at most MESSAGE_BYTES.
fn split(piece: Bytes) -> Vec<Bytes> {
    if piece.len() <= MESSAGE_BYTES {
        return vec![piece];
    }
    (0..piece.len())
        .step_by(MESSAGE_BYTES)
        .map(|start| piece.slice(start..(start + MESSAGE_BYTES).min(piece.len())))
        .collect()
}

/// Cuts a stream of pieces into pieces of `size` bytes (the last may be shorter): large
/// pieces are sliced without a copy, small ones (tar headers, padding, small files) gathered.
fn regroup<E: Send + 'static>(
    pieces: BoxStream<'static, std::result::Result<Bytes, E>>,
    size: usize,
) -> BoxStream<'static, std::result::Result<Bytes, E>> {
    struct State<E> {
        pieces: BoxStream<'static, std::result::Result<Bytes, E>>,
        gathered: BytesMut,
        ready: VecDeque<Bytes>,
        ended: bool,
    }
    let state = State {
        pieces,
        gathered: BytesMut::new(),
        ready: VecDeque::new(),
        ended: false,
    };
    futures::stream::unfold(state, move |mut state| async move {
        loop {
            if let Some(piece) = state.ready.pop_front() {
                return Some((Ok(piece), state));
            }
            if state.ended {
                return None;
            }
            match state.pieces.next().await {
                Some(Ok(mut piece)) => {
                    if state.gathered.is_empty() {
                        while piece.len() >= size {
                            state.ready.push_back(piece.split_to(size));
                        }
                        state.gathered.extend_from_slice(&piece);
                    } else {
                        state.gathered.extend_from_slice(&piece);
                        while state.gathered.len() >= size {
                            state
                                .ready
                                .push_back(state.gathered.split_to(size).freeze());
                        }
                    }
                }
                Some(Err(e)) => {
                    state.ended = true;
                    return Some((Err(e), state));
                }
                None => {
                    state.ended = true;
                    if !state.gathered.is_empty() {
                        state.ready.push_back(state.gathered.split().freeze());
                    }
                }
            }
        }
    })
    .boxed()
}

impl WorkspaceGrpc {
    /// Applies one step as operation `operation`, if the head is at `expected` (0: any), and
    /// answers with `respond(new head version)` (recorded for retries).
    async fn apply_one<R: prost::Message>(
        &self,
        caller: &crate::caller::Caller,
        session_id: &str,
        (expected, operation): (u64, &'static str),
        step: Step,
        respond: impl FnOnce(u64) -> R,
    ) -> Result<R> {
        let prepared = self
            .sessions
            .apply_step(session_id, caller, expected, step, operation)
            .await?;
        let response = respond(prepared.record().head_version);
        self.sessions.finish(prepared, &response).await?;
        Ok(response)
    }
}

#[tonic::async_trait]
impl WorkspaceService for WorkspaceGrpc {
    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let path = path(&request.path)?;
        let at = convert::revision(&request.at)?;
        let entry = self.sessions.entry_at(&record, &at, &path).await?;
        let mut entry = convert::entry(&path, &entry);
        if entry.kind == pb::EntryKind::Symlink as i32 {
            entry.symlink_target = self.sessions.symlink_target(&entry.hash).await?;
        }
        Ok(Response::new(pb::StatResponse { entry: Some(entry) }))
    }

    async fn list_tree(
        &self,
        request: Request<pb::ListTreeRequest>,
    ) -> Result<Response<pb::ListTreeResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let dir = path(&request.path)?;
        let at = convert::revision(&request.at)?;
        let size = page_size(&request.page);
        let after = page_after(&request.page, &dir, request.recursive)?;
        let listing = self
            .sessions
            .list_tree(&record, &at, dir, request.recursive, &after, size)
            .await?;
        let entries: Vec<pb::Entry> = listing
            .entries
            .iter()
            .map(|(p, e)| convert::entry(p, e))
            .collect();
        let next_page_token = match entries.last() {
            Some(last) if listing.more => last.path.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTreeResponse {
            entries,
            next_page_token,
            root: listing.root.to_hex(),
        }))
    }

    type ReadFileStream = ByteStream<pb::ReadFileResponse>;

    async fn read_file(
        &self,
        request: Request<pb::ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let path = path(&request.path)?;
        let at = convert::revision(&request.at)?;
        let entry = self.sessions.entry_at(&record, &at, &path).await?;
        if entry.kind == EntryKind::Directory {
            return Err(Error::NotAFile {
                path: path.to_string(),
                hint: "use ListTree",
            }
            .into());
        }
        if request.offset > entry.size
            || (request.length > 0 && request.offset.saturating_add(request.length) > entry.size)
        {
            return Err(Error::OutOfRange(format!(
                "range {}+{} is past the end of \"{path}\" ({} bytes)",
                request.offset, request.length, entry.size
            ))
            .into());
        }
        let pieces = self
            .sessions
            .trees
            .blobs()
            .read(&entry.hash, request.offset, request.length)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(read_stream(
            pieces,
            convert::entry(&path, &entry),
            request.offset,
            request.length,
        )))
    }

    async fn write_file(
        &self,
        request: Request<Streaming<pb::WriteFileRequest>>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        let caller = caller_of(&request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::WriteFileRequest {
                part: Some(pb::write_file_request::Part::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first WriteFile message must be a header naming the session and path",
                ))
            }
        };
        let file = path(&header.path)?;
        self.sessions
            .admit_upload(&caller, &header.session_id, header.expected_head_version)
            .await?;
        // Stored as it arrives (a few chunks in memory), before the session lock is taken:
        // uploads do not serialize writers. Back-pressure: the next message is read when the
        // store has taken the last. Cancellation: a client that goes away ends the stream with
        // an error, which abandons the upload.
        let (hash, size) = self.sessions.trees.put_stream(file_body(stream)).await?;
        let change = Change {
            step: Step::Write {
                path: file.clone(),
                content: Content::Stored(hash, size),
                mode: header.mode,
                mtime_ns: header.mtime_ns,
            },
            precondition: precondition(header.precondition)?,
        };
        let prepared = self
            .sessions
            .apply(
                &header.session_id,
                &caller,
                header.expected_head_version,
                vec![change],
                "write",
            )
            .await?;
        let record = prepared.record();
        let root = Sessions::root(&record.head_root)?;
        let entry = self
            .sessions
            .trees
            .lookup(&root, &file)
            .await?
            .ok_or_else(|| Error::Internal("written file vanished".into()))?;
        let response = pb::WriteFileResponse {
            entry: Some(convert::entry(&file, &entry)),
            head_version: record.head_version,
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn apply_changes(
        &self,
        request: Request<pb::ApplyChangesRequest>,
    ) -> Result<Response<pb::ApplyChangesResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        if request.changes.is_empty() {
            return Err(Status::invalid_argument(
                "changes is empty: nothing to apply",
            ));
        }
        if request.changes.len() > MAX_BATCH_CHANGES {
            return Err(Error::ResourceExhausted(format!(
                "{} changes exceed the batch limit of {MAX_BATCH_CHANGES}; split the batch",
                request.changes.len()
            ))
            .into());
        }
        let changes = request
            .changes
            .into_iter()
            .map(parse_change)
            .collect::<Result<Vec<_>>>()?;
        let prepared = self
            .sessions
            .apply(
                &request.session_id,
                &caller,
                request.expected_head_version,
                changes,
                "batch",
            )
            .await?;
        let response = pb::ApplyChangesResponse {
            head_version: prepared.record().head_version,
            head_root: prepared.record().head_root.clone(),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn delete_path(
        &self,
        request: Request<pb::DeletePathRequest>,
    ) -> Result<Response<pb::DeletePathResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let step = Step::Delete {
            path: path(&r.path)?,
            recursive: r.recursive,
        };
        let version = (r.expected_head_version, "delete");
        let response = self
            .apply_one(&caller, &r.session_id, version, step, |head_version| {
                pb::DeletePathResponse { head_version }
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn make_directory(
        &self,
        request: Request<pb::MakeDirectoryRequest>,
    ) -> Result<Response<pb::MakeDirectoryResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let dir = path(&r.path)?;
        let step = Step::MakeDirectory {
            path: dir.clone(),
            parents: r.parents,
        };
        let prepared = self
            .sessions
            .apply_step(&r.session_id, &caller, 0, step, "mkdir")
            .await?;
        let record = prepared.record();
        let root = Sessions::root(&record.head_root)?;
        let entry = self
            .sessions
            .trees
            .lookup(&root, &dir)
            .await?
            .ok_or_else(|| Error::Internal("created directory vanished".into()))?;
        let response = pb::MakeDirectoryResponse {
            entry: Some(convert::entry(&dir, &entry)),
            head_version: record.head_version,
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn move_path(
        &self,
        request: Request<pb::MovePathRequest>,
    ) -> Result<Response<pb::MovePathResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let step = Step::Move {
            from: path(&r.from)?,
            to: path(&r.to)?,
            overwrite: r.overwrite,
        };
        let version = (r.expected_head_version, "move");
        let response = self
            .apply_one(&caller, &r.session_id, version, step, |head_version| {
                pb::MovePathResponse { head_version }
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn copy_path(
        &self,
        request: Request<pb::CopyPathRequest>,
    ) -> Result<Response<pb::CopyPathResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let step = Step::Copy {
            from: path(&r.from)?,
            to: path(&r.to)?,
            overwrite: r.overwrite,
        };
        let version = (r.expected_head_version, "copy");
        let response = self
            .apply_one(&caller, &r.session_id, version, step, |head_version| {
                pb::CopyPathResponse { head_version }
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let from = match &request.from {
            None => Revision::Base,
            some => convert::revision(some)?,
        };
        let to = convert::revision(&request.to)?;
        let prefix = path(&request.path_prefix)?;
        let after = page_after(&request.page, &prefix, true)?;
        let diff = self
            .sessions
            .diff(
                &record,
                (&from, &to),
                prefix,
                request.include_time_only,
                &after,
                page_size(&request.page),
            )
            .await?;
        let entries: Vec<pb::DiffEntry> = diff.entries.iter().map(diff_entry).collect();
        let next_page_token = match (entries.last(), diff.resume_after) {
            (Some(last), _) if diff.more => last.path.clone(),
            (_, Some(stopped)) => stopped.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::DiffResponse {
            entries,
            next_page_token,
            from_root: diff.from_root.to_hex(),
            to_root: diff.to_root.to_hex(),
        }))
    }

    type ExportArchiveStream = ByteStream<pb::ExportArchiveResponse>;

    async fn export_archive(
        &self,
        request: Request<pb::ExportArchiveRequest>,
    ) -> Result<Response<Self::ExportArchiveStream>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let at = convert::revision(&request.at)?;
        let dir = path(&request.path)?;
        let tar = self.sessions.export(&caller, &record, &at, &dir).await?;
        let messages = regroup(tar, MESSAGE_BYTES).map(|piece| match piece {
            Ok(data) => Ok(pb::ExportArchiveResponse { data }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn import_archive(
        &self,
        request: Request<Streaming<pb::ImportArchiveRequest>>,
    ) -> Result<Response<pb::ImportArchiveResponse>, Status> {
        let caller = caller_of(&request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::ImportArchiveRequest {
                part: Some(pb::import_archive_request::Part::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first ImportArchive message must be a header naming the session",
                ))
            }
        };
        let under = path(&header.path)?;
        self.sessions
            .admit_upload(&caller, &header.session_id, header.expected_head_version)
            .await?;
        let data = stream.map(|message| match message?.part {
            Some(pb::import_archive_request::Part::Data(data)) => Ok(data),
            _ => Err(Status::invalid_argument(
                "ImportArchive takes one header, then only data messages",
            )),
        });
        // The whole archive is read and validated, its files' content stored as it passes,
        // before the session is touched: a refusal changes nothing.
        let items = archive::read_tar(Box::pin(data), &under, &self.sessions.trees).await?;
        let (prepared, imported) = self
            .sessions
            .import(
                &caller,
                &header.session_id,
                header.expected_head_version,
                &under,
                items,
            )
            .await?;
        let response = pb::ImportArchiveResponse {
            files: imported.files,
            directories: imported.directories,
            bytes: imported.bytes,
            head_version: prepared.record().head_version,
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }
}
