//! `aether git export` and `aether git import`: a session's result as a git commit on a branch
//! (to push and review as a pull request), and a session started from a git revision.
//!
//! Both drive the user's own `git` (plumbing only: a private index, `write-tree`,
//! `commit-tree`, `update-ref` with the old tip, `archive`), so the repository's objects are
//! written by git itself and the branch moves atomically or not at all.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use aether_client::{proto as pb, NewSession, Rev, SessionHandle, SessionSource};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::cli::{GitCommand, GitExportArgs, GitImportArgs};
use crate::{Context, Failure};

/// Open annotations named in an exported commit's trailers at most.
const MAX_ANNOTATION_TRAILERS: usize = 100;
/// The SHA-1 (or SHA-256) name git prints, as text.
const ZERO_OID_CHARS: [usize; 2] = [40, 64];

pub async fn run(context: &Context, command: GitCommand) -> Result<(), Failure> {
    match command {
        GitCommand::Export(args) => export(context, args).await,
        GitCommand::Import(args) => import(context, args).await,
    }
}

/// Runs git in `repo` with `env`, feeding `input`; its trimmed stdout, or a failure that
/// shows git's own message.
async fn git(
    repo: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    input: Option<&[u8]>,
) -> Result<String, Failure> {
    let mut command = tokio::process::Command::new("git");
    command
        .arg("-C")
        .arg(repo)
        .args(args)
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| {
        Failure::Other(format!(
            "cannot run git ({e}): install it (Debian: apt-get install -y git)"
        ))
    })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input)
            .await
            .map_err(|e| Failure::Other(format!("cannot write to git: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| Failure::Other(format!("git failed: {e}")))?;
    if !output.status.success() {
        return Err(Failure::Other(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The commit `rev` names in `repo`, or None when it names nothing.
async fn resolve(repo: &Path, rev: &str) -> Result<Option<String>, Failure> {
    let spec = format!("{rev}^{{commit}}");
    match git(
        repo,
        &["rev-parse", "--verify", "--quiet", &spec],
        &[],
        None,
    )
    .await
    {
        Ok(oid) if ZERO_OID_CHARS.contains(&oid.len()) => Ok(Some(oid)),
        Ok(_) | Err(_) => Ok(None),
    }
}

pub async fn export(context: &Context, args: GitExportArgs) -> Result<(), Failure> {
    let repo = args.repo.clone();
    let branch_ref = check_export_target(&repo, &args.branch).await?;
    let session = context.client.session(&args.session);
    let old_tip = resolve(&repo, &branch_ref).await?;
    let parent = match (&old_tip, &args.parent) {
        (Some(tip), _) => Some(tip.clone()),
        (None, Some(rev)) => Some(resolve(&repo, rev).await?.ok_or_else(|| {
            Failure::Usage(format!(
                "--parent {rev} names no commit in {}",
                repo.display()
            ))
        })?),
        (None, None) => None,
    };
    // Room for the downloaded work tree and the private index; removed when export returns.
    let scratch = tempfile::tempdir().map_err(|e| Failure::Other(format!("no temp dir: {e}")))?;
    let tree = write_tree(&repo, &session, &args, scratch.path()).await?;
    let (message, author, time) = commit_message(&session, &args).await?;
    let env = commit_env(&repo, &author, time).await;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut commit_args = vec!["commit-tree", tree.as_str()];
    if let Some(parent) = &parent {
        commit_args.extend(["-p", parent.as_str()]);
    }
    let commit = git(&repo, &commit_args, &env, Some(message.as_bytes())).await?;
    // Moves the branch only if it is still where it was read: a concurrent update wins.
    let expected = old_tip.clone().unwrap_or_else(|| "0".repeat(commit.len()));
    git(
        &repo,
        &[
            "update-ref",
            "-m",
            "aether git export",
            &branch_ref,
            &commit,
            &expected,
        ],
        &[],
        None,
    )
    .await?;
    if context.json() {
        println!(
            "{}",
            json!({ "commit": commit, "branch": args.branch, "tree": tree, "parent": parent })
        );
    } else {
        println!("{commit}");
        eprintln!(
            "aether: {} of session {} is commit {commit} on branch {}{}",
            args.at,
            args.session,
            args.branch,
            parent.map(|p| format!(" (parent {p})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Checks that `repo` is a git repository and `branch` a valid branch name; the branch's
/// full ref name.
async fn check_export_target(repo: &Path, branch: &str) -> Result<String, Failure> {
    git(repo, &["rev-parse", "--git-dir"], &[], None)
        .await
        .map_err(|_| {
            Failure::Usage(format!(
                "{} is not a git repository: pass --repo DIR (or run `git init` there)",
                repo.display()
            ))
        })?;
    let branch_ref = format!("refs/heads/{branch}");
    git(repo, &["check-ref-format", &branch_ref], &[], None)
        .await
        .map_err(|_| Failure::Usage(format!("{branch:?} is not a valid branch name")))?;
    Ok(branch_ref)
}

/// The files: the revision downloaded into a scratch work tree in `scratch`, added to a
/// private index there, written as a tree of `repo`; the tree's name.
async fn write_tree(
    repo: &Path,
    session: &SessionHandle,
    args: &GitExportArgs,
    scratch: &Path,
) -> Result<String, Failure> {
    let tree_dir = scratch.join("tree");
    session
        .download_directory(&args.path, &args.at, &tree_dir, &aether_client::NoProgress)
        .await?;
    let index = scratch.join("index");
    let index = index.display().to_string();
    let git_dir = git(repo, &["rev-parse", "--absolute-git-dir"], &[], None).await?;
    let work_tree = tree_dir.display().to_string();
    let private = [("GIT_INDEX_FILE", index.as_str())];
    git(
        repo,
        &[
            "--git-dir",
            &git_dir,
            "--work-tree",
            &work_tree,
            "-c",
            "core.autocrlf=false",
            "-c",
            "core.safecrlf=false",
            "add",
            "--all",
            "--force",
            ".",
        ],
        &private,
        None,
    )
    .await?;
    git(repo, &["--git-dir", &git_dir, "write-tree"], &private, None).await
}

/// The exported commit's message (with its Aether trailers), author and time (seconds):
/// the session's commit when the revision is one, else what the revision is.
async fn commit_message(
    session: &SessionHandle,
    args: &GitExportArgs,
) -> Result<(String, String, Option<i64>), Failure> {
    let (mut message, author, time) = match &args.at {
        Rev::Commit(id) => {
            let commit = session.get_commit(id).await?;
            let time = commit.time.map(|t| t.seconds);
            let mut message = commit.message.trim_end().to_string();
            message.push_str("\n\n");
            for approval in &commit.approvals {
                message.push_str(&format!("Aether-Approval: {approval}\n"));
            }
            (message, commit.author, time)
        }
        other => (
            format!("{other} of AetherFS session {}\n\n", args.session),
            String::new(),
            None,
        ),
    };
    message.push_str(&format!("Aether-Session: {}\n", args.session));
    message.push_str(&format!("Aether-Revision: {}\n", args.at));
    let open = session.annotations(&args.path, false).await?;
    for annotation in open.iter().take(MAX_ANNOTATION_TRAILERS) {
        // One line per trailer, whatever the path, author or body hold.
        message.push_str(&format!(
            "Aether-Open-Annotation: {}{} ({}): {}\n",
            one_line(&annotation.path),
            lines(annotation),
            one_line(&annotation.author),
            one_line(annotation.body.lines().next().unwrap_or(""))
        ));
    }
    if open.len() > MAX_ANNOTATION_TRAILERS {
        message.push_str(&format!(
            "Aether-Open-Annotations-Not-Listed: {}\n",
            open.len() - MAX_ANNOTATION_TRAILERS
        ));
    }
    Ok((message, author, time))
}

/// `text` with its line breaks (and other control characters) as spaces, for a trailer.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The environment of `git commit-tree`: the session commit's author and time when there is
/// one, and an AetherFS identity where `repo` has none.
async fn commit_env(repo: &Path, author: &str, time: Option<i64>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    if !author.is_empty() {
        let email = if author.contains('@') {
            author.to_string()
        } else {
            format!("{author}@aetherfs.invalid")
        };
        env.push(("GIT_AUTHOR_NAME".into(), author.to_string()));
        env.push(("GIT_AUTHOR_EMAIL".into(), email));
        if let Some(seconds) = time {
            env.push(("GIT_AUTHOR_DATE".into(), format!("@{seconds} +0000")));
        }
    }
    // A repository without an identity still gets a commit, made by AetherFS.
    if git(repo, &["config", "user.email"], &[], None)
        .await
        .is_err()
    {
        env.push(("GIT_COMMITTER_NAME".into(), "AetherFS".into()));
        env.push((
            "GIT_COMMITTER_EMAIL".into(),
            "aether@aetherfs.invalid".into(),
        ));
        if author.is_empty() {
            env.push(("GIT_AUTHOR_NAME".into(), "AetherFS".into()));
            env.push(("GIT_AUTHOR_EMAIL".into(), "aether@aetherfs.invalid".into()));
        }
    }
    env
}

fn lines(annotation: &pb::Annotation) -> String {
    match &annotation.lines {
        Some(range) if range.first_line > 0 && range.last_line > range.first_line => {
            format!(":{}-{}", range.first_line, range.last_line)
        }
        Some(range) if range.first_line > 0 => format!(":{}", range.first_line),
        _ => String::new(),
    }
}

pub async fn import(context: &Context, args: GitImportArgs) -> Result<(), Failure> {
    let repo = args.repo.clone();
    let commit = resolve(&repo, &args.rev).await?.ok_or_else(|| {
        Failure::Usage(format!(
            "{} names no commit in {} (is it a git repository?)",
            args.rev,
            repo.display()
        ))
    })?;
    let absolute = std::fs::canonicalize(&repo).unwrap_or_else(|_| PathBuf::from(&repo));
    // The revision's tar goes to the store as it is made; the session starts from it, so its
    // base is the git revision (`aether diff --from base` is what changed since).
    let mut child = tokio::process::Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["archive", "--format=tar", &commit])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::Other(format!("cannot run git archive: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let stored = context.client.put_blob_from_reader(stdout).await;
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| Failure::Other(format!("git archive failed: {e}")))?;
    if !output.status.success() {
        return Err(Failure::Other(format!(
            "git archive {commit} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let archive = stored?;
    let session = context
        .client
        .create_session(NewSession {
            source: SessionSource::Archive {
                blob_hash: archive.hash,
            },
            labels: args.labels.clone(),
            metadata: vec![
                ("git.repository".into(), absolute.display().to_string()),
                ("git.commit".into(), commit.clone()),
            ],
            ..Default::default()
        })
        .await?;
    let files = session.info().await?.counts.map(|c| c.files).unwrap_or(0);
    if context.json() {
        println!(
            "{}",
            json!({ "session": session.id(), "commit": commit, "files": files })
        );
    } else {
        println!("{}", session.id());
        eprintln!(
            "aether: session {} holds commit {commit} of {} ({} files)",
            session.id(),
            absolute.display(),
            files
        );
    }
    Ok(())
}
