//! Reading and changing paths in place: ls, tree, stat, cat, rm, mv, cp, mkdir.

use aether_client::NoProgress;
use serde_json::json;

use crate::cli::{MkdirArgs, MoveArgs, ReadArgs, RmArgs};
use crate::output;
use crate::{Context, Failure};

/// Fills in the targets of the symlinks in a listing, up to [`super::MAX_TARGET_LOOKUPS`].
async fn with_targets(
    session: &aether_client::SessionHandle,
    at: &aether_client::Rev,
    mut entries: Vec<aether_client::proto::Entry>,
) -> Result<Vec<aether_client::proto::Entry>, Failure> {
    let links = entries.iter().filter(|e| output::is_symlink(e)).count();
    if links > 0 && links <= super::MAX_TARGET_LOOKUPS {
        session.fill_symlink_targets(&mut entries, at).await?;
    }
    Ok(entries)
}

pub async fn ls(context: &Context, args: ReadArgs) -> Result<(), Failure> {
    let session = context.client.session(&args.target.session);
    let entry = session.stat(&args.target.path, &args.at).await?;
    let entries = if output::is_dir(&entry) {
        let listed = session.list(&args.target.path, false, &args.at).await?;
        with_targets(&session, &args.at, listed).await?
    } else {
        vec![entry]
    };
    if context.json() {
        output::json(&json!(entries
            .iter()
            .map(output::entry_json)
            .collect::<Vec<_>>()))
    } else {
        output::emit(&output::entry_rows(&entries))
    }
}

pub async fn tree(context: &Context, args: ReadArgs) -> Result<(), Failure> {
    let session = context.client.session(&args.target.session);
    let listed = session.list(&args.target.path, true, &args.at).await?;
    let entries = with_targets(&session, &args.at, listed).await?;
    if context.json() {
        output::json(&json!(entries
            .iter()
            .map(output::entry_json)
            .collect::<Vec<_>>()))
    } else {
        let label = format!("{}:{}", args.target.session, args.target.path);
        output::emit(&output::tree_text(&label, &args.target.path, &entries))
    }
}

pub async fn stat(context: &Context, args: ReadArgs) -> Result<(), Failure> {
    let entry = context
        .client
        .session(&args.target.session)
        .stat(&args.target.path, &args.at)
        .await?;
    if context.json() {
        output::json(&output::entry_json(&entry))
    } else {
        output::emit(&output::entry_text(&entry))
    }
}

pub async fn cat(context: &Context, args: ReadArgs) -> Result<(), Failure> {
    let mut stdout = tokio::io::stdout();
    context
        .client
        .session(&args.target.session)
        .read_to_writer(&args.target.path, &args.at, &mut stdout, &NoProgress)
        .await?;
    Ok(())
}

/// Prints the head version a change produced (JSON only: changes are silent in tables).
fn changed(context: &Context, head_version: u64) -> Result<(), Failure> {
    if context.json() {
        output::json(&json!({ "head_version": head_version }))
    } else {
        Ok(())
    }
}

pub async fn rm(context: &Context, args: RmArgs) -> Result<(), Failure> {
    if args.target.path.is_empty() {
        return Err(Failure::Usage(
            "refusing to delete a session's root; name a path, or close the session".into(),
        ));
    }
    let version = context
        .client
        .session(&args.target.session)
        .delete(&args.target.path, args.recursive)
        .await?;
    changed(context, version)
}

pub async fn mv(context: &Context, args: MoveArgs, copy: bool) -> Result<(), Failure> {
    if args.from.session != args.to.session {
        return Err(Failure::Usage(format!(
            "{} works within one session; to move content between sessions, use get and put (or `session create --from`)",
            if copy { "cp" } else { "mv" }
        )));
    }
    let session = context.client.session(&args.from.session);
    // A destination that names a directory (trailing '/', the root, or an existing one)
    // receives the source under its own name, as with mv and cp.
    let mut to = args.to.path.clone();
    let into = args.to.directory
        || match session.stat(&to, &aether_client::Rev::Head).await {
            Ok(entry) => output::is_dir(&entry),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
    if into {
        to = args.to.join(args.from.name());
    }
    let version = if copy {
        session.copy_path(&args.from.path, &to, args.force).await?
    } else {
        session.move_path(&args.from.path, &to, args.force).await?
    };
    changed(context, version)
}

pub async fn mkdir(context: &Context, args: MkdirArgs) -> Result<(), Failure> {
    let response = context
        .client
        .session(&args.target.session)
        .mkdir(&args.target.path, args.parents)
        .await?;
    changed(context, response.head_version)
}
