//! The command line: global flags and one subcommand per lifecycle verb (design §7), each with
//! an example in its `--help`.

use std::path::PathBuf;
use std::time::Duration;

use aether_client::{Rev, SessionSource};
use aether_server::{CommonArgs, DevCommand};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::address::{self, Remote};

const TOP_HELP: &str = "\
Addressing is SESSION:PATH, as in scp. Examples assume S holds a session id:
  S=$(aether session create --label team=docs)
  aether put ./src $S:src
  aether tree $S
  aether checkpoint $S v1

Exit status: 0 ok, 1 the server refused (the status code and message are printed),
2 usage error, 3 not found.";

/// AetherFS command-line client: sessions, files, history, review and the bus.
#[derive(Debug, Parser)]
#[command(name = "aether", version, about, after_help = TOP_HELP)]
pub struct Cli {
    /// AetherFS endpoint (a coordinator, or `aether dev`).
    #[arg(
        long,
        env = "AETHER_ENDPOINT",
        default_value = "http://127.0.0.1:7600",
        global = true
    )]
    pub endpoint: String,
    /// Bearer token sent with every call.
    #[arg(long, env = "AETHER_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Output format of commands that print data.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// Deadline of each call.
    #[arg(long, env = "AETHER_TIMEOUT", default_value = "30s", value_parser = address::duration, global = true)]
    pub timeout: Duration,
    /// Retries of a call that failed with UNAVAILABLE, with exponential backoff.
    #[arg(long, env = "AETHER_RETRIES", default_value_t = 3, global = true)]
    pub retries: u32,
    /// Content store endpoint, when it is not served at --endpoint (a cluster).
    #[arg(long, env = "AETHER_STORE_ENDPOINT", global = true)]
    pub store_endpoint: Option<String>,
    /// Bus endpoint, when it is not served at --endpoint (a cluster).
    #[arg(long, env = "AETHER_BUS_ENDPOINT", global = true)]
    pub bus_endpoint: Option<String>,
    /// TLS for https:// endpoints: --tls-ca trusts a CA bundle (else the system's roots);
    /// --tls-cert and --tls-key present a client certificate (mutual TLS).
    #[command(flatten)]
    pub tls: aether_tls::TlsArgs,
    /// Print transfer statistics (chunks sent, deduplicated) on stderr.
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// How data is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for programs (one document; `watch` prints one per line).
    Json,
}

// Parsed once per run: the size of the `dev` variant (every aetherd flag) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in one process on embedded defaults.
    #[command(after_help = "Example:\n  aether dev --data ./aether-data --listen 127.0.0.1:7600")]
    Dev {
        #[command(flatten)]
        dev: DevCommand,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Create, list, inspect, fork, hand over, finalize and close sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// List a directory.
    #[command(after_help = "Examples:\n  aether ls $S\n  aether ls $S:src --at ckpt:v1")]
    Ls(ReadArgs),
    /// Show a directory and everything below it as a tree.
    #[command(after_help = "Example:\n  aether tree $S:src")]
    Tree(ReadArgs),
    /// Describe one path.
    #[command(after_help = "Example:\n  aether stat $S:src/main.rs")]
    Stat(ReadArgs),
    /// Print a file's bytes.
    #[command(after_help = "Example:\n  aether cat $S:README.md --at commit:ID")]
    Cat(ReadArgs),
    /// Download a file or a whole directory.
    #[command(
        after_help = "SESSION:DIR downloads the directory's contents into LOCAL (created if missing), so\n`aether put ./src $S:src` then `aether get $S:src ./copy` makes ./copy equal ./src:\nfiles, directories and symlinks, with modes and modification times. Nothing is written\nthrough a symlink inside LOCAL: one already there where a directory or file goes is\nrefused, and the session's links are made last (their targets are kept as given).\nA file goes to LOCAL, or into LOCAL when it is a directory; `-` writes to stdout.\n\nExamples:\n  aether get $S:src ./src-copy\n  aether get $S:notes/todo.txt .\n  aether get $S:src ./old --at ckpt:v1"
    )]
    Get(GetArgs),
    /// Upload a file or a whole directory; only content the store lacks is sent.
    #[command(
        after_help = "A directory's contents go into SESSION:DIR (created if missing): files, directories\nand symlinks (stored as links, never followed), with modes and modification times;\nsockets, devices and FIFOs are skipped and named on stderr. A file goes to\nSESSION:PATH, or into it when it is a directory or ends with '/'; `-` reads stdin.\nRe-uploading unchanged content sends no chunks (see --verbose or -o json).\n\nExamples:\n  aether put ./src $S:src\n  aether put notes.txt $S:docs/\n  echo hello | aether put - $S:hello.txt"
    )]
    Put(PutArgs),
    /// Delete a file or directory.
    #[command(after_help = "Examples:\n  aether rm $S:build.log\n  aether rm -r $S:build")]
    Rm(RmArgs),
    /// Move a file or directory within a session.
    #[command(after_help = "Example:\n  aether mv $S:draft.md $S:docs/final.md")]
    Mv(MoveArgs),
    /// Copy a file or directory within a session (O(1): content is shared).
    #[command(after_help = "Example:\n  aether cp $S:src $S:src-backup")]
    Cp(MoveArgs),
    /// Create a directory.
    #[command(after_help = "Example:\n  aether mkdir -p $S:docs/design")]
    Mkdir(MkdirArgs),
    /// List the files, symlinks and directories that differ between two revisions (default:
    /// base to head).
    #[command(
        after_help = "Each modified path says what changed: content, target (a symlink's), kind (file,\ndirectory, symlink) or mode; a change of modification time alone is left out unless\n--include-time-only. Revisions: head, base, ckpt:NAME, commit:ID.\n\nExamples:\n  aether diff $S\n  aether diff $S --from ckpt:v1 --to head\n  aether diff $S --include-time-only -o json"
    )]
    Diff(DiffArgs),
    /// Name the current head as a checkpoint.
    #[command(after_help = "Example:\n  aether checkpoint $S v1 -m \"before refactoring\"")]
    Checkpoint(CheckpointArgs),
    /// List checkpoints, oldest first.
    #[command(after_help = "Example:\n  aether checkpoints $S")]
    Checkpoints(SessionArgs),
    /// Move the head back to a checkpoint.
    #[command(after_help = "Example:\n  aether restore $S v1")]
    Restore(RestoreArgs),
    /// Record the head as a commit.
    #[command(after_help = "Example:\n  aether commit $S -m \"Add the parser\"")]
    Commit(CommitArgs),
    /// Show the commit history, newest first.
    #[command(after_help = "Example:\n  aether log $S")]
    Log(SessionArgs),
    /// Attach a note to a path.
    #[command(
        after_help = "Example:\n  aether annotate $S:src/main.rs --lines 10-14 -m \"handle the error\""
    )]
    Annotate(AnnotateArgs),
    /// List annotations.
    #[command(after_help = "Example:\n  aether annotations $S --all")]
    Annotations(AnnotationsArgs),
    /// Mark an annotation resolved.
    #[command(after_help = "Example:\n  aether resolve $S ANNOTATION_ID")]
    Resolve(ResolveArgs),
    /// Knowledge entries: small keyed values that travel with the session.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Request, decide and list approvals.
    #[command(subcommand)]
    Approval(ApprovalCommand),
    /// Write a tar archive of a revision.
    #[command(
        after_help = "FILE is where the tar goes; `-` writes to stdout.\n\nExamples:\n  aether export $S backup.tar\n  aether export $S v1.tar --at ckpt:v1"
    )]
    Export(ExportArgs),
    /// Unpack a tar archive into a session directory, atomically.
    #[command(
        after_help = "FILE is the tar to read; `-` reads stdin.\n\nExample:\n  aether import $S:restored backup.tar"
    )]
    Import(ImportArgs),
    /// Publish a message on a session's bus stream.
    #[command(after_help = "Example:\n  aether publish $S agent.progress \"step 3 of 5\"")]
    Publish(PublishArgs),
    /// Follow a session's bus stream: its events and published messages.
    #[command(
        after_help = "Examples:\n  aether watch $S\n  aether watch $S --from 10 --subject 'session.>'\n  aether watch $S --count 5 -o json"
    )]
    Watch(WatchArgs),
    /// Show a session's bus stream (offsets, retention, archive); set its retention.
    #[command(
        after_help = "Setting retention needs the owner role; 0 means no limit.\n\nExamples:\n  aether stream $S\n  aether stream $S --max-messages 100000 --max-age 7d"
    )]
    Stream(StreamArgs),
    /// Show a session's audit trail.
    #[command(after_help = "Example:\n  aether audit $S")]
    Audit(SessionArgs),
    /// Mount a session read-write at a local directory through FUSE (runs until unmounted).
    #[command(
        after_help = "Changes made through the mount reach the session in batches (every\n--commit-interval-ms, and before fsync returns); `mv`, `rm`, `mkdir`, symlinks, chmod,\ntouch and editors' save-by-rename work.\nUnmount with Ctrl-C (or SIGTERM), or `fusermount3 -u DIR`; both exit 0.\nNeeds /dev/fuse and fusermount3 (Debian: apt-get install fuse3).\n\nExample:\n  mkdir -p ./work && aether mount $S ./work &\n  ls ./work && echo hi > ./work/hello.txt\n  fusermount3 -u ./work"
    )]
    Mount(MountArgs),
    /// Make a local directory a copy of a session directory, kept in step with `status`,
    /// `pull` and `push` (no mount needed).
    #[command(
        after_help = "DIR (new or empty) gets the files, directories and symlinks of SESSION:PATH with\ntheir modes and modification times, and DIR/.aether/sync.json records what was\nsynced. Then `aether status DIR` lists changes on each side, `aether pull DIR` brings\nthe session's, `aether push DIR` sends yours in one atomic batch.\n\nExample:\n  aether clone $S:src ./src && cd ./src && aether status"
    )]
    Clone(CloneArgs),
    /// List what changed locally and in the session since the last clone, pull or push.
    #[command(after_help = "Example:\n  aether status ./src\n  aether status -o json")]
    Status(SyncDirArgs),
    /// Bring the session's changes into a synced directory; conflicts are reported and kept.
    #[command(
        after_help = "A path changed both here and in the session is a conflict: the local one is kept\nand named, and the command exits 1. --theirs takes the session's; --ours keeps the\nlocal one and marks it to be sent by the next push.\n\nExample:\n  aether pull ./src\n  aether pull --theirs ./src"
    )]
    Pull(PullArgs),
    /// Send a synced directory's changes to the session in one atomic batch.
    #[command(
        after_help = "Every change carries a precondition (the content it replaces, or that the path\nis free): if the session changed one of those paths since the last pull, nothing\nis applied and the command says to pull first. Content the store already holds\nis not sent again.\n\nExample:\n  aether push ./src"
    )]
    Push(SyncDirArgs),
    /// A session's result as a git commit on a branch, and sessions from git revisions.
    #[command(subcommand)]
    Git(GitCommand),
}

#[derive(Debug, Subcommand)]
pub enum GitCommand {
    /// Make a session revision a commit on a branch of a local git repository.
    #[command(
        after_help = "The commit holds the revision's files (symlinks and executable bits as git keeps\nthem; empty directories are not kept by git), the session commit's message and\nauthor, and trailers naming the session, the revision, its approvals and the open\nannotations. The branch is created (on --parent, or as a root commit) or moved\nforward from its tip, atomically: if it moved meanwhile, nothing changes.\n\nExamples:\n  aether git export $S --at commit:ID --branch agent/fix --parent main\n  git push origin agent/fix"
    )]
    Export(GitExportArgs),
    /// Create a session holding a git revision's files; prints its id.
    #[command(after_help = "Example:\n  S=$(aether git import main --repo . --label team=docs)")]
    Import(GitImportArgs),
}

#[derive(Debug, Args)]
pub struct GitExportArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// The branch to create or move forward.
    #[arg(long)]
    pub branch: String,
    /// Revision to export: head, base, ckpt:NAME, commit:ID.
    #[arg(long, default_value = "head", value_parser = address::revision)]
    pub at: Rev,
    /// The git repository.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The commit a new branch starts from (ignored when the branch exists: its tip is).
    #[arg(long)]
    pub parent: Option<String>,
    /// Only this directory of the session, as the repository's root.
    #[arg(long, default_value = "")]
    pub path: String,
}

#[derive(Debug, Args)]
pub struct GitImportArgs {
    /// A git revision (branch, tag, commit).
    #[arg(default_value = "HEAD")]
    pub rev: String,
    /// The git repository.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Labels of the new session.
    #[arg(long = "label", value_parser = address::key_value)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// SESSION:PATH of a directory (SESSION alone for the root).
    #[arg(value_parser = address::remote)]
    pub source: Remote,
    /// A new or empty local directory.
    pub directory: PathBuf,
}

#[derive(Debug, Args)]
pub struct SyncDirArgs {
    /// The synced directory.
    #[arg(default_value = ".")]
    pub directory: PathBuf,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The synced directory.
    #[arg(default_value = ".")]
    pub directory: PathBuf,
    /// On a conflict, take the session's version.
    #[arg(long, conflicts_with = "ours")]
    pub theirs: bool,
    /// On a conflict, keep the local version (the next push sends it).
    #[arg(long)]
    pub ours: bool,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// The session to mount (its head).
    pub session: String,
    /// An existing local directory to mount it at.
    pub dir: PathBuf,
    /// How often changes made through the mount are sent to the session, in milliseconds
    /// (fsync sends them at once).
    #[arg(long, default_value_t = 200)]
    pub commit_interval_ms: u64,
    /// Make close() wait until the file's changes are in the session (slower; fsync always
    /// waits).
    #[arg(long)]
    pub sync_close: bool,
    /// Where content is cached by hash and writes are staged [default: $XDG_CACHE_HOME/aether
    /// or ~/.cache/aether].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Let other users use the mount (as root, or with user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Request loops serving the kernel: 1 is fastest for small operations; more let other
    /// requests proceed while one fetches content from the session (1 to 64).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Memory that files written through the mount may use before they are staged on disk,
    /// in MiB (files up to 1 MiB are kept in memory while it lasts).
    #[arg(long, default_value_t = 256)]
    pub staging_memory_mib: u64,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session and print its id.
    #[command(
        after_help = "Examples:\n  S=$(aether session create --label team=docs --ttl 7d)\n  aether session create --from $S --label variant=b\n  aether session create --from ckpt:$S/v1\n  aether session create --import ./project --label kind=import"
    )]
    Create(CreateArgs),
    /// List sessions.
    #[command(
        after_help = "Examples:\n  aether session ls\n  aether session ls -l team=docs,stage!=done --state active"
    )]
    Ls(SessionListArgs),
    /// Show a session's record and counts.
    #[command(after_help = "Example:\n  aether session info $S")]
    Info(SessionArgs),
    /// Create a new session sharing this one's files (O(1)); prints its id.
    #[command(after_help = "Example:\n  aether session fork $S --label variant=b")]
    Fork(ForkArgs),
    /// Hand a session to another principal.
    #[command(
        after_help = "Example:\n  aether session transfer $S --to user:bob --keep-role viewer"
    )]
    Transfer(TransferArgs),
    /// Make a session read-only.
    #[command(after_help = "Example:\n  aether session finalize $S")]
    Finalize(SessionArgs),
    /// Remove a session's workspace; history and audit stay.
    #[command(after_help = "Example:\n  aether session close $S --archive")]
    Close(CloseArgs),
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    /// The session id.
    #[arg(value_parser = address::session_id)]
    pub session: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Start from another session's head, ckpt:SESSION/NAME or commit:SESSION/ID.
    #[arg(long, value_parser = address::source)]
    pub from: Option<SessionSource>,
    /// Upload a local directory, or unpack a local tar file, into the new session.
    #[arg(long, value_name = "DIR|TAR")]
    pub import: Option<PathBuf>,
    /// A label, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = address::key_value)]
    pub labels: Vec<(String, String)>,
    /// A metadata entry, KEY=VALUE (repeatable).
    #[arg(long = "meta", value_parser = address::key_value)]
    pub metadata: Vec<(String, String)>,
    /// Idle time to live (30m, 7d...); none never expires.
    #[arg(long, value_parser = address::duration)]
    pub ttl: Option<Duration>,
    /// Owner principal (defaults to the caller).
    #[arg(long)]
    pub owner: Option<String>,
}

#[derive(Debug, Args)]
pub struct SessionListArgs {
    /// Label selector: k=v, k!=v, k, !k, comma-separated.
    #[arg(short = 'l', long, default_value = "")]
    pub selector: String,
    /// Only sessions in these states (repeatable).
    #[arg(long = "state", value_enum)]
    pub states: Vec<StateArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StateArg {
    Active,
    Finalized,
    Closed,
    Expired,
}

#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The session to fork.
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// A label of the new session, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = address::key_value)]
    pub labels: Vec<(String, String)>,
    /// A metadata entry of the new session, KEY=VALUE (repeatable).
    #[arg(long = "meta", value_parser = address::key_value)]
    pub metadata: Vec<(String, String)>,
    /// Idle TTL of the new session (default: the parent's).
    #[arg(long, value_parser = address::duration)]
    pub ttl: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// The new owner (for example user:bob).
    #[arg(long = "to")]
    pub to: String,
    /// Role the previous owner keeps.
    #[arg(long, value_enum, default_value_t = RoleArg::None)]
    pub keep_role: RoleArg,
    /// Reason, recorded in the audit trail.
    #[arg(short = 'm', long = "message", default_value = "")]
    pub comment: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    None,
    Viewer,
    Editor,
    Reviewer,
    Owner,
}

#[derive(Debug, Args)]
pub struct CloseArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// Export the head as a tar archive into the content store first (its hash is printed).
    #[arg(long)]
    pub archive: bool,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// SESSION:PATH (SESSION alone for the root).
    #[arg(value_parser = address::remote)]
    pub target: Remote,
    /// Revision to read: head, base, ckpt:NAME, commit:ID.
    #[arg(long, default_value = "head", value_parser = address::revision)]
    pub at: Rev,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// SESSION:PATH of a file or directory.
    #[arg(value_parser = address::remote)]
    pub source: Remote,
    /// Local destination; `-` for stdout (files only).
    pub destination: PathBuf,
    /// Revision to read: head, base, ckpt:NAME, commit:ID.
    #[arg(long, default_value = "head", value_parser = address::revision)]
    pub at: Rev,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Local file or directory; `-` for stdin.
    pub source: PathBuf,
    /// SESSION:PATH destination.
    #[arg(value_parser = address::remote)]
    pub destination: Remote,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(value_parser = address::remote)]
    pub target: Remote,
    /// Delete a non-empty directory and everything below it.
    #[arg(short = 'r', long)]
    pub recursive: bool,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// SESSION:PATH to move or copy.
    #[arg(value_parser = address::remote)]
    pub from: Remote,
    /// SESSION:PATH destination, in the same session.
    #[arg(value_parser = address::remote)]
    pub to: Remote,
    /// Replace an existing file at the destination.
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct MkdirArgs {
    #[arg(value_parser = address::remote)]
    pub target: Remote,
    /// Create missing parents; succeed if it exists.
    #[arg(short = 'p', long)]
    pub parents: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// The older revision.
    #[arg(long, default_value = "base", value_parser = address::revision)]
    pub from: Rev,
    /// The newer revision.
    #[arg(long, default_value = "head", value_parser = address::revision)]
    pub to: Rev,
    /// Only paths under this directory.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Also list paths whose only change is their modification time.
    #[arg(long)]
    pub include_time_only: bool,
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// Name (generated when omitted): 1 to 128 of [A-Za-z0-9._-].
    pub name: Option<String>,
    /// Description.
    #[arg(short = 'm', long = "message", default_value = "")]
    pub description: String,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// The checkpoint name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// The commit message.
    #[arg(short = 'm', long = "message")]
    pub message: String,
}

#[derive(Debug, Args)]
pub struct AnnotateArgs {
    /// SESSION:PATH annotated.
    #[arg(value_parser = address::remote)]
    pub target: Remote,
    /// The note.
    #[arg(short = 'm', long = "message")]
    pub body: String,
    /// Lines, LINE or FIRST-LAST.
    #[arg(long, value_parser = address::lines)]
    pub lines: Option<(u32, u32)>,
}

#[derive(Debug, Args)]
pub struct AnnotationsArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// Include resolved annotations.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only paths under this prefix.
    #[arg(long, default_value = "")]
    pub path: String,
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// The annotation id.
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Create or replace an entry.
    #[command(
        after_help = "Examples:\n  aether kv put $S build.status green --tag ci\n  aether kv put $S notes --file notes.md"
    )]
    Put(KvPutArgs),
    /// Print an entry's value.
    #[command(after_help = "Example:\n  aether kv get $S build.status")]
    Get(KvKeyArgs),
    /// List entries.
    #[command(after_help = "Example:\n  aether kv ls $S --prefix build.")]
    Ls(KvListArgs),
    /// Delete an entry.
    #[command(after_help = "Example:\n  aether kv rm $S build.status")]
    Rm(KvKeyArgs),
}

#[derive(Debug, Args)]
pub struct KvPutArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    pub key: String,
    /// The value (or use --file).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from a file; `-` for stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KvKeyArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    pub key: String,
}

#[derive(Debug, Args)]
pub struct KvListArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// Only keys starting with this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Only entries with this tag.
    #[arg(long, default_value = "")]
    pub tag: String,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// Ask reviewers to approve the current head for a commit or an export.
    #[command(
        after_help = "Example:\n  aether approval request $S --for commit --reviewer user:carol -m \"ready\""
    )]
    Request(ApprovalRequestArgs),
    /// Approve a pending request.
    #[command(after_help = "Example:\n  aether approval approve $S APPROVAL_ID -m \"looks good\"")]
    Approve(DecideArgs),
    /// Reject a pending request.
    #[command(after_help = "Example:\n  aether approval reject $S APPROVAL_ID -m \"tests fail\"")]
    Reject(DecideArgs),
    /// List approval requests.
    #[command(after_help = "Example:\n  aether approval ls $S")]
    Ls(SessionArgs),
}

#[derive(Debug, Args)]
pub struct ApprovalRequestArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// What the approval gates.
    #[arg(long = "for", value_enum)]
    pub action: ActionArg,
    /// A reviewer (repeatable; none means anyone with the reviewer role).
    #[arg(long = "reviewer")]
    pub reviewers: Vec<String>,
    /// A note for the reviewers.
    #[arg(short = 'm', long = "message", default_value = "")]
    pub comment: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ActionArg {
    Commit,
    Export,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// The approval id.
    pub id: String,
    /// A comment.
    #[arg(short = 'm', long = "message", default_value = "")]
    pub comment: String,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// The tar file to write; `-` for stdout.
    pub file: PathBuf,
    /// Revision to export: head, base, ckpt:NAME, commit:ID.
    #[arg(long, default_value = "head", value_parser = address::revision)]
    pub at: Rev,
    /// Only this directory.
    #[arg(long, default_value = "")]
    pub path: String,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// SESSION:DIR to unpack into (SESSION alone for the root).
    #[arg(value_parser = address::remote)]
    pub target: Remote,
    /// The tar file to read; `-` for stdin.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// Subject: '.'-separated tokens.
    pub subject: String,
    /// The payload; `-` reads stdin.
    pub message: String,
    /// A header, KEY=VALUE (repeatable).
    #[arg(long = "header", value_parser = address::key_value)]
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// Keep at most this many messages (0: no limit); sets the stream's own retention.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Keep messages at most this long (30m, 7d...; 0: forever); sets the stream's own retention.
    #[arg(long, value_parser = address::duration)]
    pub max_age: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[arg(value_parser = address::session_id)]
    pub session: String,
    /// Where to start: an offset, `earliest` or `latest`.
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Subject filter ('*' one token, '>' the rest).
    #[arg(long, default_value = "")]
    pub subject: String,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
}
