//! Review and knowledge: annotate, annotations, resolve, approval …, kv ….

use aether_client::proto as pb;
use serde_json::json;

use crate::cli::{
    ActionArg, AnnotateArgs, AnnotationsArgs, ApprovalCommand, KvCommand, KvPutArgs, ResolveArgs,
};
use crate::output;
use crate::{Context, Failure};

pub async fn annotate(context: &Context, args: AnnotateArgs) -> Result<(), Failure> {
    let annotation = context
        .client
        .session(&args.target.session)
        .annotate(&args.target.path, args.lines, &args.body)
        .await?;
    if context.json() {
        output::json(&output::annotation_json(&annotation))
    } else {
        output::line(&annotation.id)
    }
}

pub async fn annotations(context: &Context, args: AnnotationsArgs) -> Result<(), Failure> {
    let annotations = context
        .client
        .session(&args.session)
        .annotations(&args.path, args.all)
        .await?;
    if context.json() {
        output::json(&json!(annotations
            .iter()
            .map(output::annotation_json)
            .collect::<Vec<_>>()))
    } else {
        output::emit(&output::annotation_rows(&annotations))
    }
}

pub async fn resolve(context: &Context, args: ResolveArgs) -> Result<(), Failure> {
    let annotation = context
        .client
        .session(&args.session)
        .resolve_annotation(&args.id)
        .await?;
    if context.json() {
        output::json(&output::annotation_json(&annotation))
    } else {
        output::line(format!("resolved {}", annotation.id))
    }
}

pub async fn approval(context: &Context, command: ApprovalCommand) -> Result<(), Failure> {
    let print = |approval: &pb::Approval, text: String| {
        if context.json() {
            output::json(&output::approval_json(approval))
        } else {
            output::line(text)
        }
    };
    match command {
        ApprovalCommand::Request(args) => {
            let action = match args.action {
                ActionArg::Commit => pb::ApprovalAction::Commit,
                ActionArg::Export => pb::ApprovalAction::Export,
            };
            let approval = context
                .client
                .session(&args.session)
                .request_approval(action, args.reviewers, &args.comment)
                .await?;
            print(&approval, approval.id.clone())
        }
        ApprovalCommand::Approve(args) => {
            let approval = context
                .client
                .session(&args.session)
                .decide_approval(&args.id, pb::Decision::Approve, &args.comment)
                .await?;
            print(&approval, format!("approved {}", approval.id))
        }
        ApprovalCommand::Reject(args) => {
            let approval = context
                .client
                .session(&args.session)
                .decide_approval(&args.id, pb::Decision::Reject, &args.comment)
                .await?;
            print(&approval, format!("rejected {}", approval.id))
        }
        ApprovalCommand::Ls(args) => {
            let approvals = context.client.session(&args.session).approvals(&[]).await?;
            if context.json() {
                output::json(&json!(approvals
                    .iter()
                    .map(output::approval_json)
                    .collect::<Vec<_>>()))
            } else {
                output::emit(&output::approval_rows(&approvals))
            }
        }
    }
}

pub async fn kv(context: &Context, command: KvCommand) -> Result<(), Failure> {
    match command {
        KvCommand::Put(args) => kv_put(context, args).await,
        KvCommand::Get(args) => {
            let entry = context
                .client
                .session(&args.session)
                .get_entry(&args.key)
                .await?;
            if context.json() {
                output::json(&output::knowledge_json(&entry))
            } else {
                print_value(&entry.value)
            }
        }
        KvCommand::Ls(args) => {
            let entries = context
                .client
                .session(&args.session)
                .list_entries(&args.prefix, &args.tag)
                .await?;
            if context.json() {
                output::json(&json!(entries
                    .iter()
                    .map(output::knowledge_json)
                    .collect::<Vec<_>>()))
            } else {
                output::emit(&output::knowledge_rows(&entries))
            }
        }
        KvCommand::Rm(args) => {
            context
                .client
                .session(&args.session)
                .delete_entry(&args.key)
                .await?;
            if context.json() {
                output::json(&json!({ "deleted": args.key }))
            } else {
                Ok(())
            }
        }
    }
}

/// `aether kv put`: stores the VALUE given, or the content of --file (`-`: stdin).
async fn kv_put(context: &Context, args: KvPutArgs) -> Result<(), Failure> {
    let value: Vec<u8> = match (&args.value, &args.file) {
        (Some(value), _) => value.clone().into_bytes(),
        (None, Some(path)) if path.as_os_str() == "-" => super::read_stdin().await?,
        (None, Some(path)) => std::fs::read(path).map_err(|e| Failure::local(path, e))?,
        (None, None) => {
            return Err(Failure::Usage("give a VALUE or --file".into()));
        }
    };
    let entry = context
        .client
        .session(&args.session)
        .put_entry(&args.key, value.into(), args.tags)
        .await?;
    if context.json() {
        output::json(&output::knowledge_json(&entry))
    } else {
        Ok(())
    }
}

/// Writes a kv entry's value to stdout as it is, ending it with a newline when it has none.
fn print_value(value: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(value)
        .and_then(|_| {
            if value.ends_with(b"\n") {
                Ok(())
            } else {
                stdout.write_all(b"\n")
            }
        })
        .and_then(|_| stdout.flush())
        .map_err(Failure::stdout)
}
