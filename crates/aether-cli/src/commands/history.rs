//! Reviewing and saving states: diff, checkpoint, checkpoints, restore, commit, log.

use serde_json::json;

use crate::cli::{CheckpointArgs, CommitArgs, DiffArgs, RestoreArgs, SessionArgs};
use crate::output;
use crate::{Context, Failure};

pub async fn diff(context: &Context, args: DiffArgs) -> Result<(), Failure> {
    let session = context.client.session(&args.session);
    let result = session
        .diff_with(&args.from, &args.to, &args.path, args.include_time_only)
        .await?;
    let targets = diff_targets(&session, &args, &result).await?;
    if context.json() {
        output::json(&output::diff_json(&result, &targets))
    } else {
        output::emit(&output::diff_text(&result, &targets))
    }
}

/// The symlink targets on each side of a diff, looked up when there are at most
/// [`super::MAX_TARGET_LOOKUPS`].
async fn diff_targets(
    session: &aether_client::SessionHandle,
    args: &DiffArgs,
    result: &aether_client::DiffResult,
) -> Result<output::DiffTargets, Failure> {
    let link = aether_client::proto::EntryKind::Symlink as i32;
    let mut lookups = Vec::new();
    for e in &result.entries {
        if e.old_kind == link {
            lookups.push((e.path.clone(), args.from.clone()));
        }
        if e.new_kind == link {
            lookups.push((e.path.clone(), args.to.clone()));
        }
    }
    if lookups.is_empty() || lookups.len() > super::MAX_TARGET_LOOKUPS {
        return Ok(vec![(None, None); result.entries.len()]);
    }
    let mut found = session.symlink_targets(&lookups).await?.into_iter();
    Ok(result
        .entries
        .iter()
        .map(|e| {
            let old = (e.old_kind == link).then(|| found.next()).flatten();
            let new = (e.new_kind == link).then(|| found.next()).flatten();
            (old, new)
        })
        .collect())
}

pub async fn checkpoint(context: &Context, args: CheckpointArgs) -> Result<(), Failure> {
    let checkpoint = context
        .client
        .session(&args.session)
        .checkpoint(args.name.as_deref().unwrap_or(""), &args.description)
        .await?;
    if context.json() {
        output::json(&output::checkpoint_json(&checkpoint))
    } else {
        output::line(format!(
            "checkpoint {} at head version {}",
            checkpoint.name, checkpoint.head_version
        ))
    }
}

pub async fn checkpoints(context: &Context, args: SessionArgs) -> Result<(), Failure> {
    let checkpoints = context.client.session(&args.session).checkpoints().await?;
    if context.json() {
        output::json(&json!(checkpoints
            .iter()
            .map(output::checkpoint_json)
            .collect::<Vec<_>>()))
    } else {
        output::emit(&output::checkpoint_rows(&checkpoints))
    }
}

pub async fn restore(context: &Context, args: RestoreArgs) -> Result<(), Failure> {
    let response = context
        .client
        .session(&args.session)
        .restore(&args.name)
        .await?;
    if context.json() {
        output::json(&json!({
            "head_version": response.head_version,
            "head_root": response.head_root,
        }))
    } else {
        output::line(format!(
            "restored checkpoint {}: head version {}",
            args.name, response.head_version
        ))
    }
}

pub async fn commit(context: &Context, args: CommitArgs) -> Result<(), Failure> {
    let commit = context
        .client
        .session(&args.session)
        .commit(&args.message)
        .await?;
    if context.json() {
        output::json(&output::commit_json(&commit))
    } else {
        // The id alone, so `C=$(aether commit $S -m …)` works.
        output::line(&commit.id)
    }
}

pub async fn log(context: &Context, args: SessionArgs) -> Result<(), Failure> {
    let commits = context.client.session(&args.session).log().await?;
    if context.json() {
        output::json(&json!(commits
            .iter()
            .map(output::commit_json)
            .collect::<Vec<_>>()))
    } else {
        let text: Vec<String> = commits.iter().map(output::commit_text).collect();
        output::emit(&text.join("\n"))
    }
}
