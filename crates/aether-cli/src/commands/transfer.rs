//! Moving bytes between the local machine and a session: put, get, export, import. Each shows a
//! progress bar when stdout is a terminal.

use std::path::{Path, PathBuf};

use aether_client::{
    file_mode, mtime_ns, NoProgress, SessionHandle, UploadFile, UploadPlan, UploadReport,
    UploadSource,
};
use serde_json::json;

use crate::cli::{ExportArgs, GetArgs, ImportArgs, PutArgs};
use crate::output;
use crate::progress::Bar;
use crate::{Context, Failure};

fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

pub async fn put(context: &Context, args: PutArgs) -> Result<(), Failure> {
    let session = context.client.session(&args.destination.session);
    let dest = &args.destination;
    let bar = Bar::for_terminal();
    let (report, what) = if is_dash(&args.source) {
        if dest.directory {
            return Err(Failure::Usage(
                "`put -` needs a file path to write, such as SESSION:notes.txt".into(),
            ));
        }
        let data = super::read_stdin().await?;
        let report = session.upload_bytes(&dest.path, data.into(), 0).await?;
        (report, format!("stdin to {dest}"))
    } else {
        let meta = std::fs::metadata(&args.source).map_err(|e| Failure::local(&args.source, e))?;
        if meta.is_dir() {
            let plan = plan_directory(&args.source, &dest.path).await?;
            for skipped in &plan.skipped {
                eprintln!(
                    "aether: skipped {} (not a regular file, directory or symlink)",
                    skipped.display()
                );
            }
            let report = session.upload(plan, &bar).await?;
            (report, format!("{} to {dest}", args.source.display()))
        } else {
            let name = args
                .source
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    Failure::Usage(format!("{} has no UTF-8 file name", args.source.display()))
                })?
                .to_string();
            let into = dest.directory
                || match session.stat(&dest.path, &aether_client::Rev::Head).await {
                    Ok(entry) => output::is_dir(&entry),
                    Err(e) if e.is_not_found() => false,
                    Err(e) => return Err(e.into()),
                };
            let path = if into {
                dest.join(&name)
            } else {
                dest.path.clone()
            };
            let plan = UploadPlan {
                files: vec![UploadFile {
                    path: path.clone(),
                    mode: file_mode(&meta),
                    mtime_ns: mtime_ns(&meta),
                    source: UploadSource::File(args.source.clone()),
                }],
                ..Default::default()
            };
            let report = session.upload(plan, &bar).await?;
            (
                report,
                format!("{} to {}:{path}", args.source.display(), dest.session),
            )
        }
    };
    bar.finish();
    print_upload(context, &report, &what)
}

async fn plan_directory(local: &Path, remote: &str) -> Result<UploadPlan, Failure> {
    let local = local.to_path_buf();
    let remote = remote.to_string();
    tokio::task::spawn_blocking(move || UploadPlan::from_directory(&local, &remote))
        .await
        .map_err(|e| Failure::Other(format!("walking the directory failed: {e}")))?
        .map_err(Failure::from)
}

fn print_upload(context: &Context, report: &UploadReport, what: &str) -> Result<(), Failure> {
    if context.verbose {
        eprintln!("{}", output::upload_details(report));
    }
    if context.json() {
        return output::json(&output::upload_json(report));
    }
    output::line(format!(
        "uploaded {what}: {}{}, {}; sent {} ({} of {} chunks already stored)",
        output::plural(report.files, "file"),
        symlinks(report.symlinks),
        output::size(report.bytes),
        output::size(report.bytes_uploaded + report.inline_bytes),
        report.chunks_present,
        report.chunks
    ))
}

pub async fn get(context: &Context, args: GetArgs) -> Result<(), Failure> {
    let session = context.client.session(&args.source.session);
    let entry = session.stat(&args.source.path, &args.at).await?;
    let bar = Bar::for_terminal();
    if output::is_dir(&entry) {
        return get_directory(context, &session, &args, &bar).await;
    }
    if is_dash(&args.destination) {
        let mut stdout = tokio::io::stdout();
        session
            .read_to_writer(&args.source.path, &args.at, &mut stdout, &NoProgress)
            .await?;
        return Ok(());
    }
    let name = output::base_name(&entry.path);
    let target: PathBuf = if args.destination.is_dir()
        || args
            .destination
            .as_os_str()
            .to_string_lossy()
            .ends_with('/')
    {
        args.destination.join(name)
    } else {
        args.destination.clone()
    };
    let entry = session
        .download_file(&args.source.path, &args.at, &target, &bar)
        .await?;
    bar.finish();
    print_file_download(context, &args, &target, &entry)
}

/// `aether get` of a directory: downloads it into the local directory named (never to
/// stdout) and prints the summary.
async fn get_directory(
    context: &Context,
    session: &SessionHandle,
    args: &GetArgs,
    bar: &Bar,
) -> Result<(), Failure> {
    if is_dash(&args.destination) {
        return Err(Failure::Usage(format!(
            "{} is a directory; give a local directory to download it into (or use export for a tar on stdout)",
            args.source
        )));
    }
    let report = session
        .download_directory(&args.source.path, &args.at, &args.destination, bar)
        .await?;
    bar.finish();
    if context.json() {
        return output::json(&output::download_json(&report));
    }
    output::line(format!(
        "downloaded {} to {}: {}, {}{}, {}",
        args.source,
        args.destination.display(),
        output::plural(report.files, "file"),
        output::plural(report.directories, "directory"),
        symlinks(report.symlinks),
        output::size(report.bytes)
    ))
}

/// The summary of `aether get` of one file or symlink, now at `target`.
fn print_file_download(
    context: &Context,
    args: &GetArgs,
    target: &Path,
    entry: &aether_client::proto::Entry,
) -> Result<(), Failure> {
    let link = entry.kind == aether_client::proto::EntryKind::Symlink as i32;
    if context.json() {
        return output::json(&json!({
            "files": u64::from(!link),
            "directories": 0,
            "symlinks": u64::from(link),
            "bytes": if link { 0 } else { entry.size },
        }));
    }
    if link {
        return output::line(format!(
            "downloaded {} to {} (symlink to {})",
            args.source,
            target.display(),
            entry.symlink_target
        ));
    }
    output::line(format!(
        "downloaded {} to {} ({})",
        args.source,
        target.display(),
        output::size(entry.size)
    ))
}

/// `, 2 symlinks` for a summary line; nothing when there are none.
fn symlinks(count: u64) -> String {
    if count == 0 {
        String::new()
    } else {
        format!(", {}", output::plural(count, "symlink"))
    }
}

pub async fn export(context: &Context, args: ExportArgs) -> Result<(), Failure> {
    let session = context.client.session(&args.session);
    if is_dash(&args.file) {
        let mut stdout = tokio::io::stdout();
        session
            .export_to_writer(&args.at, &args.path, &mut stdout, &NoProgress)
            .await?;
        return Ok(());
    }
    let bar = Bar::for_terminal();
    // Write beside the target and rename, so a failed export leaves no truncated archive.
    let partial = partial_path(&args.file);
    let file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| Failure::local(&partial, e))?;
    let mut writer = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
    let outcome = session
        .export_to_writer(&args.at, &args.path, &mut writer, &bar)
        .await;
    bar.finish();
    let bytes = match outcome {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    std::fs::rename(&partial, &args.file).map_err(|e| Failure::local(&args.file, e))?;
    if context.json() {
        return output::json(&json!({"file": args.file.display().to_string(), "bytes": bytes}));
    }
    output::line(format!(
        "exported {}{} at {} to {} ({})",
        args.session,
        if args.path.is_empty() {
            String::new()
        } else {
            format!(":{}", args.path)
        },
        args.at,
        args.file.display(),
        output::size(bytes)
    ))
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

pub async fn import(context: &Context, args: ImportArgs) -> Result<(), Failure> {
    let session = context.client.session(&args.target.session);
    let bar = Bar::for_terminal();
    let response = if is_dash(&args.file) {
        let mut stdin = tokio::io::stdin();
        session
            .import_from_reader(&args.target.path, &mut stdin, None, &NoProgress)
            .await?
    } else {
        let mut file = tokio::fs::File::open(&args.file)
            .await
            .map_err(|e| Failure::local(&args.file, e))?;
        let total = file.metadata().await.ok().map(|m| m.len());
        session
            .import_from_reader(&args.target.path, &mut file, total, &bar)
            .await?
    };
    bar.finish();
    if context.json() {
        return output::json(&json!({
            "files": response.files,
            "directories": response.directories,
            "bytes": response.bytes,
            "head_version": response.head_version,
        }));
    }
    output::line(format!(
        "imported {}, {} ({}) into {}; head version {}",
        output::plural(response.files, "file"),
        output::plural(response.directories, "directory"),
        output::size(response.bytes),
        args.target,
        response.head_version
    ))
}
