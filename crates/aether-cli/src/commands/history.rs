//! Reviewing and saving states: diff, checkpoint, checkpoints, restore, commit, log.

use serde_json::json;

use crate::cli::{CheckpointArgs, CommitArgs, DiffArgs, RestoreArgs, SessionArgs};
use crate::output;
use crate::{Context, Failure};

pub async fn diff(context: &Context, args: DiffArgs) -> Result<(), Failure> {
    let result = context
        .client
        .session(&args.session)
        .diff(&args.from, &args.to, &args.path)
        .await?;
    if context.json() {
        output::json(&output::diff_json(&result))
    } else {
        output::emit(&output::diff_text(&result))
    }
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
