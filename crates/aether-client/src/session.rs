//! [`SessionHandle`]: one typed method per session-scoped RPC of the v1 API (sessions,
//! workspace, history, review, knowledge, bus). Listings return every page; transfers of whole
//! files and trees are in `upload` and `download`.

use std::collections::HashMap;
use std::time::Duration;

use aether_proto as pb;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::client::rpc;
use crate::client::{collect_pages, deadline, duration, page, Client, Idempotence};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::revision::Rev;
use crate::subscription::Subscription;
use crate::DATA_MESSAGE_BYTES;

/// Stat calls in flight at once when looking up symlink targets.
const LOOKUP_CONCURRENCY: usize = 8;

/// A session, addressed by id, on a [`Client`]. Cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) client: Client,
    id: String,
    /// The record returned by the call that produced this handle, if any.
    pub(crate) cached: Option<pb::Session>,
}

/// The files that differ between two revisions.
#[derive(Clone, Debug, Default)]
pub struct DiffResult {
    pub from_root: String,
    pub to_root: String,
    pub entries: Vec<pb::DiffEntry>,
}

impl SessionHandle {
    pub(crate) fn new(client: Client, id: String) -> SessionHandle {
        SessionHandle {
            client,
            id,
            cached: None,
        }
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client this handle uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The record returned when this handle was created (by create or fork), without a call.
    pub fn created(&self) -> Option<&pb::Session> {
        self.cached.as_ref()
    }

    fn sid(&self) -> String {
        self.id.clone()
    }

    // ---- SessionService -------------------------------------------------------------------

    /// The session record: state, head version, counts.
    pub async fn info(&self) -> Result<pb::Session> {
        let request = pb::GetSessionRequest {
            session_id: self.sid(),
        };
        rpc!(self.client, Idempotent, sessions.get_session, request)
            .await?
            .session
            .ok_or_else(|| Error::missing("GetSession", "session"))
    }

    /// Changes labels, metadata, TTL or policy as named by `request.update_mask` (the session id
    /// is filled in).
    pub async fn update(&self, mut request: pb::UpdateSessionRequest) -> Result<pb::Session> {
        request.session_id = self.sid();
        rpc!(self.client, Mutating, sessions.update_session, request)
            .await?
            .session
            .ok_or_else(|| Error::missing("UpdateSession", "session"))
    }

    /// A new session sharing this one's files; its handle carries the new record.
    pub async fn fork(
        &self,
        labels: Vec<(String, String)>,
        metadata: Vec<(String, String)>,
        ttl: Option<Duration>,
    ) -> Result<SessionHandle> {
        let request = pb::ForkSessionRequest {
            session_id: self.sid(),
            labels: labels.into_iter().collect(),
            metadata: metadata.into_iter().collect(),
            ttl: ttl.map(duration),
        };
        let session = rpc!(self.client, Mutating, sessions.fork_session, request)
            .await?
            .session
            .ok_or_else(|| Error::missing("ForkSession", "session"))?;
        let mut handle = self.client.session(session.id.clone());
        handle.cached = Some(session);
        Ok(handle)
    }

    /// Hands the session to `new_owner`; the previous owner keeps `previous_owner_role`
    /// (`Role::Unspecified` keeps nothing).
    pub async fn transfer(
        &self,
        new_owner: &str,
        previous_owner_role: pb::Role,
        comment: &str,
    ) -> Result<pb::Session> {
        let request = pb::TransferSessionRequest {
            session_id: self.sid(),
            new_owner: new_owner.to_string(),
            previous_owner_role: previous_owner_role as i32,
            comment: comment.to_string(),
        };
        rpc!(self.client, Mutating, sessions.transfer_session, request)
            .await?
            .session
            .ok_or_else(|| Error::missing("TransferSession", "session"))
    }

    /// Makes the session read-only.
    pub async fn finalize(&self) -> Result<pb::Session> {
        let request = pb::FinalizeSessionRequest {
            session_id: self.sid(),
        };
        rpc!(self.client, Mutating, sessions.finalize_session, request)
            .await?
            .session
            .ok_or_else(|| Error::missing("FinalizeSession", "session"))
    }

    /// Removes the workspace (after exporting an archive into the store when `archive`).
    pub async fn close(&self, archive: bool) -> Result<pb::CloseSessionResponse> {
        let request = pb::CloseSessionRequest {
            session_id: self.sid(),
            archive,
        };
        rpc!(self.client, Mutating, sessions.close_session, request).await
    }

    /// The whole audit trail, oldest first.
    pub async fn audit_events(&self) -> Result<Vec<pb::AuditEvent>> {
        collect_pages(|token| {
            let request = pb::ListAuditEventsRequest {
                session_id: self.sid(),
                page: Some(page(token)),
            };
            async move {
                let response =
                    rpc!(self.client, Idempotent, sessions.list_audit_events, request).await?;
                Ok((response.events, response.next_page_token))
            }
        })
        .await
    }

    // ---- WorkspaceService: reads ----------------------------------------------------------

    /// Describes one path (empty for the root) at a revision.
    pub async fn stat(&self, path: &str, at: &Rev) -> Result<pb::Entry> {
        let request = pb::StatRequest {
            session_id: self.sid(),
            path: path.to_string(),
            at: at.to_proto(),
        };
        rpc!(self.client, Idempotent, workspace.stat, request)
            .await?
            .entry
            .ok_or_else(|| Error::missing("Stat", "entry"))
    }

    /// The targets of symlinks, each named with the revision to read it at, a few lookups at
    /// a time; in order.
    pub async fn symlink_targets(&self, links: &[(String, Rev)]) -> Result<Vec<String>> {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(links)
            .map(|(path, at)| async move { Ok::<_, Error>(self.stat(path, at).await?.symlink_target) })
            .buffered(LOOKUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Fills in `symlink_target` of the symlinks among `entries` (ListTree leaves it empty),
    /// reading them at `at`.
    pub async fn fill_symlink_targets(&self, entries: &mut [pb::Entry], at: &Rev) -> Result<()> {
        let links: Vec<(String, Rev)> = entries
            .iter()
            .filter(|e| e.kind == pb::EntryKind::Symlink as i32 && e.symlink_target.is_empty())
            .map(|e| (e.path.clone(), at.clone()))
            .collect();
        let mut targets = self.symlink_targets(&links).await?.into_iter();
        for entry in entries
            .iter_mut()
            .filter(|e| e.kind == pb::EntryKind::Symlink as i32 && e.symlink_target.is_empty())
        {
            entry.symlink_target = targets.next().unwrap_or_default();
        }
        Ok(())
    }

    /// Lists a directory (one level, or every descendant when `recursive`), every page, all
    /// from one state of the tree: if the tree changes between pages the listing starts over.
    pub async fn list(&self, path: &str, recursive: bool, at: &Rev) -> Result<Vec<pb::Entry>> {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let mut root: Option<String> = None;
            let mut consistent = true;
            let mut entries = Vec::new();
            let mut token = String::new();
            loop {
                let request = pb::ListTreeRequest {
                    session_id: self.sid(),
                    path: path.to_string(),
                    recursive,
                    at: at.to_proto(),
                    page: Some(page(token)),
                };
                let response = rpc!(self.client, Idempotent, workspace.list_tree, request).await?;
                match &root {
                    None => root = Some(response.root.clone()),
                    Some(first) if *first != response.root => {
                        consistent = false;
                        break;
                    }
                    Some(_) => {}
                }
                entries.extend(response.entries);
                if response.next_page_token.is_empty() {
                    break;
                }
                token = response.next_page_token;
            }
            if consistent {
                return Ok(entries);
            }
        }
        Err(Error::Status {
            code: tonic::Code::Aborted,
            message: format!(
                "the tree of session {} kept changing while it was listed; list again",
                self.id
            ),
        })
    }

    /// Opens a read of a file (or of `length` bytes from `offset`; 0 reads to the end).
    pub async fn open_read(
        &self,
        path: &str,
        at: &Rev,
        offset: u64,
        length: u64,
    ) -> Result<tonic::Streaming<pb::ReadFileResponse>> {
        let request = pb::ReadFileRequest {
            session_id: self.sid(),
            path: path.to_string(),
            at: at.to_proto(),
            offset,
            length,
        };
        self.client
            .open_stream(Idempotence::Idempotent, request, |mut c, r| async move {
                c.workspace.read_file(r).await
            })
            .await
    }

    /// Streams a whole file into `writer`; returns its entry. Progress gets a "downloading"
    /// phase with the file size.
    pub async fn read_to_writer<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        at: &Rev,
        writer: &mut W,
        progress: &dyn Progress,
    ) -> Result<pb::Entry> {
        self.read_into(path, at, writer, progress, true).await
    }

    pub(crate) async fn read_into<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        at: &Rev,
        writer: &mut W,
        progress: &dyn Progress,
        announce: bool,
    ) -> Result<pb::Entry> {
        let mut stream = self.open_read(path, at, 0, 0).await?;
        let mut entry = None;
        let mut received = 0u64;
        let timeout = self.client.options.timeout;
        while let Some(message) = deadline(timeout, stream.message()).await? {
            if let Some(e) = message.entry {
                if announce {
                    progress.phase("downloading", Some(e.size));
                }
                entry = Some(e);
            }
            if message.offset != received {
                return Err(Error::Status {
                    code: tonic::Code::DataLoss,
                    message: format!(
                        "ReadFile of {path} skipped from offset {received} to {}",
                        message.offset
                    ),
                });
            }
            writer
                .write_all(&message.data)
                .await
                .map_err(|e| Error::io(path, e))?;
            received += message.data.len() as u64;
            progress.advance(message.data.len() as u64);
        }
        writer.flush().await.map_err(|e| Error::io(path, e))?;
        let entry = entry.ok_or_else(|| Error::missing("ReadFile", "entry"))?;
        if received != entry.size {
            return Err(Error::Status {
                code: tonic::Code::DataLoss,
                message: format!(
                    "ReadFile of {path} ended after {received} of {} bytes",
                    entry.size
                ),
            });
        }
        Ok(entry)
    }

    /// Reads a whole file into memory.
    pub async fn read(&self, path: &str, at: &Rev) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_to_writer(path, at, &mut out, &crate::NoProgress)
            .await?;
        Ok(out)
    }

    /// Lists the files that differ between two revisions (under `path_prefix` when not empty),
    /// leaving out changes of modification time alone.
    pub async fn diff(&self, from: &Rev, to: &Rev, path_prefix: &str) -> Result<DiffResult> {
        self.diff_with(from, to, path_prefix, false).await
    }

    /// [`SessionHandle::diff`], with `include_time_only` to also list paths whose only change
    /// is their modification time.
    pub async fn diff_with(
        &self,
        from: &Rev,
        to: &Rev,
        path_prefix: &str,
        include_time_only: bool,
    ) -> Result<DiffResult> {
        let mut result = DiffResult::default();
        let mut token = String::new();
        loop {
            let request = pb::DiffRequest {
                session_id: self.sid(),
                // An unset `from` means the base to the server; say head explicitly.
                from: Some(rev_explicit(from)),
                to: Some(rev_explicit(to)),
                path_prefix: path_prefix.to_string(),
                page: Some(page(token)),
                include_time_only,
            };
            let response = rpc!(self.client, Idempotent, workspace.diff, request).await?;
            result.from_root = response.from_root;
            result.to_root = response.to_root;
            result.entries.extend(response.entries);
            if response.next_page_token.is_empty() {
                return Ok(result);
            }
            token = response.next_page_token;
        }
    }

    /// Streams a tar archive of `path` (empty for everything) at a revision into `writer`;
    /// returns the bytes written.
    pub async fn export_to_writer<W: AsyncWrite + Unpin>(
        &self,
        at: &Rev,
        path: &str,
        writer: &mut W,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let request = pb::ExportArchiveRequest {
            session_id: self.sid(),
            at: at.to_proto(),
            path: path.to_string(),
        };
        let mut stream = self
            .client
            .open_stream(Idempotence::Idempotent, request, |mut c, r| async move {
                c.workspace.export_archive(r).await
            })
            .await?;
        progress.phase("exporting", None);
        let mut written = 0u64;
        let timeout = self.client.options.timeout;
        while let Some(message) = deadline(timeout, stream.message()).await? {
            writer
                .write_all(&message.data)
                .await
                .map_err(|e| Error::io("archive output", e))?;
            written += message.data.len() as u64;
            progress.advance(message.data.len() as u64);
        }
        writer
            .flush()
            .await
            .map_err(|e| Error::io("archive output", e))?;
        Ok(written)
    }

    // ---- WorkspaceService: changes --------------------------------------------------------

    /// Applies a batch atomically (at most 10,000 changes); `expected_head_version` 0 means no
    /// precondition.
    pub async fn apply_changes(
        &self,
        changes: Vec<pb::Change>,
        expected_head_version: u64,
    ) -> Result<pb::ApplyChangesResponse> {
        let request = pb::ApplyChangesRequest {
            session_id: self.sid(),
            changes,
            expected_head_version,
        };
        rpc!(self.client, Mutating, workspace.apply_changes, request).await
    }

    /// [`Self::apply_changes`] under the caller's request id: sending the same batch again with
    /// the same id (after an error whose outcome is unknown) applies it at most once. The id is
    /// 1 to 128 visible ASCII characters.
    pub async fn apply_changes_as(
        &self,
        request_id: &str,
        changes: Vec<pb::Change>,
        expected_head_version: u64,
    ) -> Result<pb::ApplyChangesResponse> {
        let id = request_id
            .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
            .ok()
            .filter(|_| {
                !request_id.is_empty()
                    && request_id.len() <= 128
                    && request_id.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "request id {request_id:?} must be 1 to 128 visible ASCII characters"
                ))
            })?;
        let request = pb::ApplyChangesRequest {
            session_id: self.sid(),
            changes,
            expected_head_version,
        };
        self.client
            .unary_as(
                Idempotence::Mutating,
                Some(id),
                request,
                |mut c, r| async move { c.workspace.apply_changes(r).await },
            )
            .await
    }

    /// Writes a whole file through the WriteFile stream (the server chunks and stores it).
    /// For many files, or content that may already be stored, prefer [`Self::upload`].
    pub async fn write_file(
        &self,
        path: &str,
        data: Bytes,
        mode: u32,
    ) -> Result<pb::WriteFileResponse> {
        let header = pb::WriteFileHeader {
            session_id: self.sid(),
            path: path.to_string(),
            mode,
            ..Default::default()
        };
        let mut messages = vec![pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Header(header)),
        }];
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + DATA_MESSAGE_BYTES).min(data.len());
            messages.push(pb::WriteFileRequest {
                part: Some(pb::write_file_request::Part::Data(data.slice(offset..end))),
            });
            offset = end;
        }
        let request_id = crate::client::new_request_id();
        self.client
            .with_retries(Idempotence::Mutating, || {
                let mut workspace = self.client.workspace.clone();
                let mut request = tonic::Request::new(futures::stream::iter(messages.clone()));
                request
                    .metadata_mut()
                    .insert(crate::client::REQUEST_ID_HEADER, request_id.clone());
                async move { workspace.write_file(request).await.map(|r| r.into_inner()) }
            })
            .await
    }

    /// Deletes a path (`recursive` for a non-empty directory).
    pub async fn delete(&self, path: &str, recursive: bool) -> Result<u64> {
        let request = pb::DeletePathRequest {
            session_id: self.sid(),
            path: path.to_string(),
            recursive,
            expected_head_version: 0,
        };
        Ok(rpc!(self.client, Mutating, workspace.delete_path, request)
            .await?
            .head_version)
    }

    /// Creates a directory (`parents`: like `mkdir -p`).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<pb::MakeDirectoryResponse> {
        let request = pb::MakeDirectoryRequest {
            session_id: self.sid(),
            path: path.to_string(),
            parents,
        };
        rpc!(self.client, Mutating, workspace.make_directory, request).await
    }

    /// Moves a path; returns the new head version.
    pub async fn move_path(&self, from: &str, to: &str, overwrite: bool) -> Result<u64> {
        let request = pb::MovePathRequest {
            session_id: self.sid(),
            from: from.to_string(),
            to: to.to_string(),
            overwrite,
            expected_head_version: 0,
        };
        Ok(rpc!(self.client, Mutating, workspace.move_path, request)
            .await?
            .head_version)
    }

    /// Copies a path in O(1); returns the new head version.
    pub async fn copy_path(&self, from: &str, to: &str, overwrite: bool) -> Result<u64> {
        let request = pb::CopyPathRequest {
            session_id: self.sid(),
            from: from.to_string(),
            to: to.to_string(),
            overwrite,
            expected_head_version: 0,
        };
        Ok(rpc!(self.client, Mutating, workspace.copy_path, request)
            .await?
            .head_version)
    }

    /// Unpacks a tar archive read from `reader` into directory `path` (empty for the root),
    /// atomically. A read error cancels the call, so nothing half-read is imported.
    pub async fn import_from_reader<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        reader: &mut R,
        total_bytes: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<pb::ImportArchiveResponse> {
        let (sender, receiver) = tokio::sync::mpsc::channel::<pb::ImportArchiveRequest>(4);
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (message, receiver))
        });
        let mut workspace = self.client.workspace.clone();
        // Not retried (the reader cannot be read again), but named like every change.
        let mut stream = tonic::Request::new(stream);
        stream.metadata_mut().insert(
            crate::client::REQUEST_ID_HEADER,
            crate::client::new_request_id(),
        );
        let call = async move { workspace.import_archive(stream).await };
        let header = pb::ImportArchiveHeader {
            session_id: self.sid(),
            path: path.to_string(),
            expected_head_version: 0,
        };
        let feed = async move {
            progress.phase("importing", total_bytes);
            let first = pb::ImportArchiveRequest {
                part: Some(pb::import_archive_request::Part::Header(header)),
            };
            if sender.send(first).await.is_err() {
                return Ok(());
            }
            loop {
                let mut buffer = vec![0u8; DATA_MESSAGE_BYTES];
                let n = read_full(reader, &mut buffer)
                    .await
                    .map_err(|e| Error::io("archive input", e))?;
                if n == 0 {
                    return Ok(());
                }
                buffer.truncate(n);
                progress.advance(n as u64);
                let message = pb::ImportArchiveRequest {
                    part: Some(pb::import_archive_request::Part::Data(Bytes::from(buffer))),
                };
                if sender.send(message).await.is_err() {
                    // The call ended early; its status says why.
                    return Ok(());
                }
            }
        };
        Ok(client_stream(call, feed).await?.into_inner())
    }

    // ---- HistoryService -------------------------------------------------------------------

    /// Names the head as a checkpoint (a generated name when `name` is empty).
    pub async fn checkpoint(&self, name: &str, description: &str) -> Result<pb::Checkpoint> {
        let request = pb::CreateCheckpointRequest {
            session_id: self.sid(),
            name: name.to_string(),
            description: description.to_string(),
        };
        rpc!(self.client, Mutating, history.create_checkpoint, request)
            .await?
            .checkpoint
            .ok_or_else(|| Error::missing("CreateCheckpoint", "checkpoint"))
    }

    /// Every checkpoint, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<pb::Checkpoint>> {
        collect_pages(|token| {
            let request = pb::ListCheckpointsRequest {
                session_id: self.sid(),
                page: Some(page(token)),
            };
            async move {
                let response =
                    rpc!(self.client, Idempotent, history.list_checkpoints, request).await?;
                Ok((response.checkpoints, response.next_page_token))
            }
        })
        .await
    }

    /// Moves the head back to a checkpoint.
    pub async fn restore(&self, name: &str) -> Result<pb::RestoreCheckpointResponse> {
        let request = pb::RestoreCheckpointRequest {
            session_id: self.sid(),
            name: name.to_string(),
            expected_head_version: 0,
        };
        rpc!(self.client, Mutating, history.restore_checkpoint, request).await
    }

    /// Records the head as a commit.
    pub async fn commit(&self, message: &str) -> Result<pb::CommitInfo> {
        let request = pb::CommitRequest {
            session_id: self.sid(),
            message: message.to_string(),
            expected_head_version: 0,
        };
        rpc!(self.client, Mutating, history.commit, request)
            .await?
            .commit
            .ok_or_else(|| Error::missing("Commit", "commit"))
    }

    /// The commit history, newest first.
    pub async fn log(&self) -> Result<Vec<pb::CommitInfo>> {
        collect_pages(|token| {
            let request = pb::ListCommitsRequest {
                session_id: self.sid(),
                page: Some(page(token)),
            };
            async move {
                let response = rpc!(self.client, Idempotent, history.list_commits, request).await?;
                Ok((response.commits, response.next_page_token))
            }
        })
        .await
    }

    /// One commit of this session's history.
    pub async fn get_commit(&self, commit_id: &str) -> Result<pb::CommitInfo> {
        let request = pb::GetCommitRequest {
            session_id: self.sid(),
            commit_id: commit_id.to_string(),
        };
        rpc!(self.client, Idempotent, history.get_commit, request)
            .await?
            .commit
            .ok_or_else(|| Error::missing("GetCommit", "commit"))
    }

    // ---- ReviewService --------------------------------------------------------------------

    /// Attaches a note to a path, optionally to lines `first..=last`.
    pub async fn annotate(
        &self,
        path: &str,
        lines: Option<(u32, u32)>,
        body: &str,
    ) -> Result<pb::Annotation> {
        let request = pb::AddAnnotationRequest {
            session_id: self.sid(),
            path: path.to_string(),
            lines: lines.map(|(first_line, last_line)| pb::LineRange {
                first_line,
                last_line,
            }),
            body: body.to_string(),
        };
        rpc!(self.client, Mutating, review.add_annotation, request)
            .await?
            .annotation
            .ok_or_else(|| Error::missing("AddAnnotation", "annotation"))
    }

    /// Annotations under `path_prefix` (empty for all), resolved ones too when asked.
    pub async fn annotations(
        &self,
        path_prefix: &str,
        include_resolved: bool,
    ) -> Result<Vec<pb::Annotation>> {
        collect_pages(|token| {
            let request = pb::ListAnnotationsRequest {
                session_id: self.sid(),
                path_prefix: path_prefix.to_string(),
                include_resolved,
                page: Some(page(token)),
            };
            async move {
                let response =
                    rpc!(self.client, Idempotent, review.list_annotations, request).await?;
                Ok((response.annotations, response.next_page_token))
            }
        })
        .await
    }

    /// Marks an annotation resolved.
    pub async fn resolve_annotation(&self, annotation_id: &str) -> Result<pb::Annotation> {
        let request = pb::ResolveAnnotationRequest {
            session_id: self.sid(),
            annotation_id: annotation_id.to_string(),
        };
        rpc!(self.client, Mutating, review.resolve_annotation, request)
            .await?
            .annotation
            .ok_or_else(|| Error::missing("ResolveAnnotation", "annotation"))
    }

    /// Asks reviewers (anyone with the reviewer role when empty) to approve the current head.
    pub async fn request_approval(
        &self,
        action: pb::ApprovalAction,
        reviewers: Vec<String>,
        comment: &str,
    ) -> Result<pb::Approval> {
        let request = pb::RequestApprovalRequest {
            session_id: self.sid(),
            action: action as i32,
            reviewers,
            comment: comment.to_string(),
        };
        rpc!(self.client, Mutating, review.request_approval, request)
            .await?
            .approval
            .ok_or_else(|| Error::missing("RequestApproval", "approval"))
    }

    /// Approves or rejects a pending request.
    pub async fn decide_approval(
        &self,
        approval_id: &str,
        decision: pb::Decision,
        comment: &str,
    ) -> Result<pb::Approval> {
        let request = pb::DecideApprovalRequest {
            session_id: self.sid(),
            approval_id: approval_id.to_string(),
            decision: decision as i32,
            comment: comment.to_string(),
        };
        rpc!(self.client, Mutating, review.decide_approval, request)
            .await?
            .approval
            .ok_or_else(|| Error::missing("DecideApproval", "approval"))
    }

    /// Approval requests in `states` (all when empty).
    pub async fn approvals(&self, states: &[pb::ApprovalState]) -> Result<Vec<pb::Approval>> {
        let states: Vec<i32> = states.iter().map(|s| *s as i32).collect();
        collect_pages(|token| {
            let request = pb::ListApprovalsRequest {
                session_id: self.sid(),
                states: states.clone(),
                page: Some(page(token)),
            };
            async move {
                let response =
                    rpc!(self.client, Idempotent, review.list_approvals, request).await?;
                Ok((response.approvals, response.next_page_token))
            }
        })
        .await
    }

    // ---- KnowledgeService -----------------------------------------------------------------

    /// Creates or replaces a knowledge entry.
    pub async fn put_entry(
        &self,
        key: &str,
        value: Bytes,
        tags: Vec<String>,
    ) -> Result<pb::KnowledgeEntry> {
        let request = pb::PutEntryRequest {
            session_id: self.sid(),
            entry: Some(pb::KnowledgeEntry {
                key: key.to_string(),
                value,
                tags,
                ..Default::default()
            }),
        };
        rpc!(self.client, Mutating, knowledge.put_entry, request)
            .await?
            .entry
            .ok_or_else(|| Error::missing("PutEntry", "entry"))
    }

    /// One knowledge entry.
    pub async fn get_entry(&self, key: &str) -> Result<pb::KnowledgeEntry> {
        let request = pb::GetEntryRequest {
            session_id: self.sid(),
            key: key.to_string(),
        };
        rpc!(self.client, Idempotent, knowledge.get_entry, request)
            .await?
            .entry
            .ok_or_else(|| Error::missing("GetEntry", "entry"))
    }

    /// Knowledge entries by key prefix and tag (empty: no filter), in key order.
    pub async fn list_entries(&self, prefix: &str, tag: &str) -> Result<Vec<pb::KnowledgeEntry>> {
        collect_pages(|token| {
            let request = pb::ListEntriesRequest {
                session_id: self.sid(),
                prefix: prefix.to_string(),
                tag: tag.to_string(),
                page: Some(page(token)),
            };
            async move {
                let response =
                    rpc!(self.client, Idempotent, knowledge.list_entries, request).await?;
                Ok((response.entries, response.next_page_token))
            }
        })
        .await
    }

    /// Deletes a knowledge entry.
    pub async fn delete_entry(&self, key: &str) -> Result<()> {
        let request = pb::DeleteEntryRequest {
            session_id: self.sid(),
            key: key.to_string(),
        };
        rpc!(self.client, Mutating, knowledge.delete_entry, request).await?;
        Ok(())
    }

    // ---- BusService -----------------------------------------------------------------------

    /// Publishes messages in order on the session's stream; returns (first, last) offsets.
    pub async fn publish(
        &self,
        messages: Vec<pb::OutgoingMessage>,
        durability: pb::Durability,
    ) -> Result<(u64, u64)> {
        let request = pb::PublishRequest {
            session_id: self.sid(),
            messages,
            durability: durability as i32,
        };
        // The bus keeps no request ids: a publish is repeated only if it surely did not apply.
        let response = rpc!(self.client, Unrepeatable, bus.publish, request).await?;
        Ok((response.first_offset, response.last_offset))
    }

    /// Publishes one message with a subject, payload and headers; returns its offset.
    pub async fn publish_one(
        &self,
        subject: &str,
        payload: Bytes,
        headers: HashMap<String, String>,
    ) -> Result<u64> {
        let message = pb::OutgoingMessage {
            subject: subject.to_string(),
            payload,
            headers,
        };
        Ok(self
            .publish(vec![message], pb::Durability::Persisted)
            .await?
            .0)
    }

    /// Follows the session's stream from `start` (subject filter empty for all), resuming by
    /// itself after falling behind or a dropped connection.
    pub fn subscribe(&self, start: pb::StartPosition, subject_filter: &str) -> Subscription {
        Subscription::new(self.clone(), start, subject_filter.to_string())
    }

    /// Gives the session's stream its own retention (owner only): keep at most `max_messages`
    /// (0: no limit) for at most `max_age` (None: forever).
    pub async fn set_retention(
        &self,
        max_messages: u64,
        max_age: Option<Duration>,
    ) -> Result<pb::SetRetentionResponse> {
        let max_age = max_age.map(duration);
        let request = pb::SetRetentionRequest {
            session_id: self.sid(),
            retention: Some(pb::Retention {
                max_messages,
                max_age,
            }),
        };
        rpc!(self.client, Idempotent, bus.set_retention, request).await
    }

    /// Offsets and retention of the session's stream.
    pub async fn stream_info(&self) -> Result<pb::GetStreamInfoResponse> {
        let request = pb::GetStreamInfoRequest {
            session_id: self.sid(),
        };
        rpc!(self.client, Idempotent, bus.get_stream_info, request).await
    }
}

/// A revision with head said explicitly (Diff reads an unset `from` as the base).
fn rev_explicit(rev: &Rev) -> pb::Revision {
    rev.to_proto().unwrap_or(pb::Revision {
        kind: pb::RevisionKind::Head as i32,
        name: String::new(),
    })
}

/// Reads until `buffer` is full or the input ends.
async fn read_full<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = reader.read(&mut buffer[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Runs a client-streaming call while `feed` produces its messages. If `feed` fails, the call
/// is dropped (cancelled on the wire), so the server never sees a silently truncated stream.
pub(crate) async fn client_stream<T>(
    call: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    feed: impl std::future::Future<Output = Result<()>>,
) -> Result<T> {
    tokio::pin!(call);
    tokio::pin!(feed);
    let mut fed = false;
    loop {
        tokio::select! {
            result = &mut call => return result.map_err(Error::from),
            outcome = &mut feed, if !fed => {
                outcome?;
                fed = true;
            }
        }
    }
}
