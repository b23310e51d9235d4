//! One function per verb: parse nothing (clap did), call the SDK, print a table or JSON.

mod bus;
mod files;
mod git;
mod history;
mod review;
mod sessions;
mod sync;
mod transfer;

use crate::cli::Command;
use crate::{Context, Failure};

/// Runs one command (every command but `dev`).
pub async fn run(context: &Context, command: Command) -> Result<(), Failure> {
    match command {
        Command::Dev { .. } => unreachable!("`aether dev` is run by main"),
        Command::Session(command) => sessions::run(context, command).await,
        Command::Ls(args) => files::ls(context, args).await,
        Command::Tree(args) => files::tree(context, args).await,
        Command::Stat(args) => files::stat(context, args).await,
        Command::Cat(args) => files::cat(context, args).await,
        Command::Rm(args) => files::rm(context, args).await,
        Command::Mv(args) => files::mv(context, args, false).await,
        Command::Cp(args) => files::mv(context, args, true).await,
        Command::Mkdir(args) => files::mkdir(context, args).await,
        Command::Get(args) => transfer::get(context, args).await,
        Command::Put(args) => transfer::put(context, args).await,
        Command::Export(args) => transfer::export(context, args).await,
        Command::Import(args) => transfer::import(context, args).await,
        Command::Diff(args) => history::diff(context, args).await,
        Command::Checkpoint(args) => history::checkpoint(context, args).await,
        Command::Checkpoints(args) => history::checkpoints(context, args).await,
        Command::Restore(args) => history::restore(context, args).await,
        Command::Commit(args) => history::commit(context, args).await,
        Command::Log(args) => history::log(context, args).await,
        Command::Annotate(args) => review::annotate(context, args).await,
        Command::Annotations(args) => review::annotations(context, args).await,
        Command::Resolve(args) => review::resolve(context, args).await,
        Command::Kv(command) => review::kv(context, command).await,
        Command::Approval(command) => review::approval(context, command).await,
        Command::Publish(args) => bus::publish(context, args).await,
        Command::Watch(args) => bus::watch(context, args).await,
        Command::Stream(args) => bus::stream(context, args).await,
        Command::Audit(args) => sessions::audit(context, args).await,
        Command::Mount(args) => crate::mount::run(context, args).await,
        Command::Clone(args) => sync::clone(context, args).await,
        Command::Status(args) => sync::status(context, args).await,
        Command::Pull(args) => sync::pull(context, args).await,
        Command::Push(args) => sync::push(context, args).await,
        Command::Git(command) => git::run(context, command).await,
    }
}

/// Most symlink targets one listing or diff looks up (one Stat each); past this, links are
/// shown without their targets.
pub(crate) const MAX_TARGET_LOOKUPS: usize = 1000;

/// Reads all of stdin.
pub(crate) async fn read_stdin() -> Result<Vec<u8>, Failure> {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut data)
        .await
        .map_err(|e| Failure::Other(format!("cannot read stdin: {e}")))?;
    Ok(data)
}
