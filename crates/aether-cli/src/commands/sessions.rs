//! `aether session …` and `aether audit`.

use aether_client::proto as pb;
use aether_client::{NewSession, SessionHandle};
use serde_json::json;

use crate::cli::{
    CloseArgs, CreateArgs, ForkArgs, RoleArg, SessionArgs, SessionCommand, SessionListArgs,
    StateArg, TransferArgs,
};
use crate::output;
use crate::progress::Bar;
use crate::{Context, Failure};

pub async fn run(context: &Context, command: SessionCommand) -> Result<(), Failure> {
    match command {
        SessionCommand::Create(args) => create(context, args).await,
        SessionCommand::Ls(args) => list(context, args).await,
        SessionCommand::Info(args) => info(context, args).await,
        SessionCommand::Fork(args) => fork(context, args).await,
        SessionCommand::Transfer(args) => transfer(context, args).await,
        SessionCommand::Finalize(args) => finalize(context, args).await,
        SessionCommand::Close(args) => close(context, args).await,
    }
}

/// Prints a session: the whole record as JSON, or just `text` in a table.
fn print_session(context: &Context, session: &pb::Session, text: &str) -> Result<(), Failure> {
    if context.json() {
        output::json(&output::session_json(session))
    } else {
        output::line(text)
    }
}

async fn create(context: &Context, args: CreateArgs) -> Result<(), Failure> {
    // Check the local import first, so a typo does not leave an empty session behind.
    let import = match &args.import {
        Some(path) => {
            let meta = std::fs::metadata(path).map_err(|e| Failure::local(path, e))?;
            Some((path.clone(), meta))
        }
        None => None,
    };
    let spec = NewSession {
        source: args.from.unwrap_or_default(),
        labels: args.labels,
        metadata: args.metadata,
        owner: args.owner,
        policy: None,
        ttl: args.ttl,
    };
    let session = context.client.create_session(spec).await?;
    if let Some((path, meta)) = import {
        let bar = Bar::for_terminal();
        let outcome = if meta.is_dir() {
            session
                .upload_directory(&path, "", &bar)
                .await
                .map(|report| {
                    if context.verbose {
                        eprintln!("{}", output::upload_details(&report));
                    }
                })
        } else {
            let mut file =
                tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| aether_client::Error::Io {
                        path: path.clone(),
                        source: e,
                    })?;
            session
                .import_from_reader("", &mut file, Some(meta.len()), &bar)
                .await
                .map(|_| ())
        };
        bar.finish();
        if let Err(error) = outcome {
            eprintln!(
                "aether: session {} was created, but importing {} into it failed",
                session.id(),
                path.display()
            );
            return Err(error.into());
        }
    }
    if context.json() {
        let record = session.info().await?;
        output::json(&output::session_json(&record))
    } else {
        output::line(session.id())
    }
}

async fn list(context: &Context, args: SessionListArgs) -> Result<(), Failure> {
    let states: Vec<pb::SessionState> = args
        .states
        .iter()
        .map(|s| match s {
            StateArg::Active => pb::SessionState::Active,
            StateArg::Finalized => pb::SessionState::Finalized,
            StateArg::Closed => pb::SessionState::Closed,
            StateArg::Expired => pb::SessionState::Expired,
        })
        .collect();
    let sessions = context
        .client
        .list_sessions(&args.selector, &states)
        .await?;
    if context.json() {
        output::json(&json!(sessions
            .iter()
            .map(output::session_json)
            .collect::<Vec<_>>()))
    } else {
        output::emit(&output::session_rows(&sessions))
    }
}

fn handle(context: &Context, session: &str) -> SessionHandle {
    context.client.session(session)
}

async fn info(context: &Context, args: SessionArgs) -> Result<(), Failure> {
    let session = handle(context, &args.session).info().await?;
    if context.json() {
        output::json(&output::session_json(&session))
    } else {
        output::emit(&output::session_text(&session))
    }
}

async fn fork(context: &Context, args: ForkArgs) -> Result<(), Failure> {
    let fork = handle(context, &args.session)
        .fork(args.labels, args.metadata, args.ttl)
        .await?;
    match fork.created() {
        Some(record) => print_session(context, record, fork.id()),
        None => output::line(fork.id()),
    }
}

async fn transfer(context: &Context, args: TransferArgs) -> Result<(), Failure> {
    let role = match args.keep_role {
        RoleArg::None => pb::Role::Unspecified,
        RoleArg::Viewer => pb::Role::Viewer,
        RoleArg::Editor => pb::Role::Editor,
        RoleArg::Reviewer => pb::Role::Reviewer,
        RoleArg::Owner => pb::Role::Owner,
    };
    let session = handle(context, &args.session)
        .transfer(&args.to, role, &args.comment)
        .await?;
    let text = format!("session {} is now owned by {}", session.id, session.owner);
    print_session(context, &session, &text)
}

async fn finalize(context: &Context, args: SessionArgs) -> Result<(), Failure> {
    let session = handle(context, &args.session).finalize().await?;
    let text = format!("session {} finalized: it is read-only now", session.id);
    print_session(context, &session, &text)
}

async fn close(context: &Context, args: CloseArgs) -> Result<(), Failure> {
    let response = handle(context, &args.session).close(args.archive).await?;
    if context.json() {
        let session = response.session.as_ref().map(output::session_json);
        return output::json(&json!({
            "session": session,
            "archive_blob_hash": response.archive_blob_hash,
        }));
    }
    output::line(format!("session {} closed", args.session))?;
    if !response.archive_blob_hash.is_empty() {
        output::line(format!("archive: {}", response.archive_blob_hash))?;
    }
    Ok(())
}

pub async fn audit(context: &Context, args: SessionArgs) -> Result<(), Failure> {
    let events = handle(context, &args.session).audit_events().await?;
    if context.json() {
        output::json(&json!(events
            .iter()
            .map(output::audit_json)
            .collect::<Vec<_>>()))
    } else {
        output::emit(&output::audit_rows(&events))
    }
}
