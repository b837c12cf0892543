//! `ctdata`, the CTData field client. This file is the manual (clap doc comments) and
//! the dispatch; the work is in the modules.

mod app;
mod autosend;
mod check;
mod commands;
mod config;
mod dock;
mod duration;
mod ftp;
mod home;
mod http;
mod localdb;
mod outbox;
mod pinned;
mod pull;
mod remote;
mod resume;
mod send;
mod share;
mod state;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Protocol;
use crate::duration::Dur;
use crate::home::Home;

/// CTData field client: record sightings, seal them into batches and send them to a
/// ctdata-server over HTTPS, FTP/FTPS or a mounted CTData share; test the connection;
/// pull the consolidated sightings.
///
/// Data lives in one folder (--home, CTDATA_HOME, or the platform's data folder):
/// outbox/ holds sealed batches waiting to go, sent/ delivered ones with their
/// receipts, rejected/ refused ones with the reason, inbox/ what pull brought, and
/// ctdata.log one line per send attempt. Exit status: 0 done, 1 failed or something
/// left pending, 2 bad command line.
#[derive(Parser)]
#[command(name = "ctdata", version)]
struct Cli {
    /// The client's data folder [default: ~/.local/share/ctdata on Linux]
    #[arg(long, global = true, env = "CTDATA_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the settings: where to send (upload) and where to download from.
    ///
    /// On a terminal, asks for whatever the flags leave out; in scripts give them all:
    /// `ctdata init --protocol https --url https://host:8443 --device ranger-07
    /// --token-stdin < token.txt`, `ctdata init --protocol ftps --url
    /// ftps://host:2121/ --device ranger-07 --token-file /etc/ctdata/token` or `ctdata
    /// init --protocol share --url /mnt/share/CTData --device ranger-07`.
    Init(InitArgs),
    /// Add one sighting to the open batch.
    Record(RecordArgs),
    /// Turn files from other tools (CTData JSON/NDJSON, CSV, GeoJSON, gzipped or not)
    /// into batches in the outbox. The same content is never imported twice.
    ///
    /// A large file is cut into several batches (each with its own batch id and
    /// sequence number) so no send is all or nothing over a poor link.
    Import {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        cut: CutArgs,
    },
    /// Close the open batch: it gets a UUID and the next sequence number and goes to
    /// the outbox (as several batches when it passes the size limits).
    Seal {
        #[command(flatten)]
        cut: CutArgs,
    },
    /// Tap to send: seal the open batch and send everything in the outbox.
    ///
    /// Delivered batches move to sent/, batches the server refuses for good to
    /// rejected/ with the reason; network errors and server trouble are retried, then
    /// the batch stays in the outbox and the others still go (smallest first), unless
    /// the server then does not answer at all (its health check over HTTP(S), its
    /// greeting over FTP(S)): the rest wait for the next send instead of each waiting
    /// out its own timeouts. Over
    /// HTTP(S) bodies above 4 KB go gzipped, and batches above 256 KB go up resumably
    /// (tus): a cut link resumes where the server's offset says, also after a restart.
    /// Over FTP(S) batches above 4 KB go gzipped as NAME.gz, and NAME.part resumes at
    /// the size the server reports (REST + STOR), over new connections as a cut needs.
    /// Prints one summary line with the bytes on the wire; exits 1 when anything is
    /// left pending.
    Send(SendArgs),
    /// Pending batches and sightings, last send, last error, autosend state.
    Status,
    /// Connection test: each step with ✓ or what went wrong, in plain words.
    ///
    /// HTTPS: resolve the host, connect, TLS, /healthz, log in with the device token.
    /// FTP/FTPS: resolve, connect, TLS (ftps), log in, find the CTData folder, write and
    /// delete a probe file. Share: the folder is there, a probe file can be written and
    /// deleted.
    Test,
    /// Send in the background on a timer; stops cleanly on SIGTERM or Ctrl-C.
    ///
    /// Sends whenever there is something to send. When a send fails it tries again
    /// after a pause that doubles each time (with jitter) up to --retry-max. Never runs
    /// two sends at once. One log line per attempt in ctdata.log.
    Autosend(AutosendArgs),
    /// Send on sync: import every new file a synced handheld left in DIR, then send.
    ///
    /// Files are remembered by content hash, so the same file is never taken twice.
    /// Source files are left alone unless --move (they then go to docked/ in the home).
    /// A file refused for its content is reported once and skipped until it changes; a
    /// file that could not be read or stored (I/O error, full disk) is tried again.
    /// A handheld's files keep its name: a CTData batch by the device it names, a CSV
    /// or GeoJSON by --device or, with --by-folder, its subfolder DIR/NAME/; they are
    /// relayed as they are, so the same file docked at two PCs is stored once.
    Dock(DockArgs),
    /// Download the consolidated sightings added since the last pull: a file in inbox/,
    /// or into a local SQLite copy with --into (the "master database" of a secondary).
    ///
    /// Each target remembers its own cursor (every format, every database), so one
    /// never makes another miss rows. Uses the download settings (by default the upload
    /// ones); needs a token the server lets read sightings: an administrator's API
    /// token, or the device's own token when the server lists the device in
    /// http.read_devices. On a terminal it shows the bytes received and the rate.
    Pull(PullArgs),
    /// Assisted sync: list files only here (outbox/, inbox/), only on the remote, and on
    /// both, saying whether their content is the same (size and SHA-256 on a share; size
    /// and modification time over FTP, which gives no hash). Works with share, ftp and
    /// ftps.
    Compare,
    /// Copy files to the remote (uploaded through a temporary name); a batch from
    /// outbox/ then goes to sent/. Other files stay here unless --move.
    ///
    /// A file of the same name there is never overwritten silently: --overwrite
    /// replaces it, --keep-both uploads under a free name (NAME-2.ext); without either,
    /// push asks on a terminal and refuses otherwise.
    Push {
        /// A path, or a name in outbox/ or inbox/
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
        /// Delete the local file once it is there (only inside the data folder; a
        /// file elsewhere is never deleted)
        #[arg(long = "move")]
        move_files: bool,
        #[command(flatten)]
        clash: ClashArgs,
    },
    /// Move files from the remote into inbox/ (e.g. reference files for a new machine):
    /// downloaded through a temporary name, the size checked, then removed there.
    /// A same-named file in inbox/ is handled as by push (--overwrite, --keep-both).
    Fetch {
        /// Names as `compare` lists them
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
        #[command(flatten)]
        clash: ClashArgs,
    },
    /// Turn sync off or on for this device, or delete its sync data.
    Sync {
        #[command(subcommand)]
        action: SyncAction,
    },
    /// The window for rangers: a page in the web browser with a Tap to send button.
    ///
    /// Serves a page on 127.0.0.1 (a free port) and opens it in the default browser:
    /// Tap to send with live progress, what is waiting and why, auto-send, the upload
    /// and download settings with a connection test, record a sighting, import a file,
    /// recent sightings and batches with their receipts, sync off and delete. Every
    /// button runs the same code as the command line. The address holds a random key
    /// made for this run, so other users and pages cannot drive it. Stop it with
    /// Ctrl-C or the Close button on the page.
    App(AppArgs),
}

#[derive(Args)]
pub struct AppArgs {
    /// Do not open a browser; only print the address to open
    #[arg(long)]
    pub no_browser: bool,
    /// Listen on this port instead of a free one
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

#[derive(Subcommand)]
enum SyncAction {
    /// Pause sending for this device: autosend waits (it logs so once) until `sync on`,
    /// `send` asks for --force; local data is kept.
    Off,
    /// Allow autosend again.
    On,
    /// Synchronize now: send everything pending, then pull what is new (into inbox/,
    /// or the local copy given with --into).
    Now(SyncNowArgs),
    /// Delete this device's local sync data: outbox/, sent/, rejected/, inbox/,
    /// docked/, the open batch and the send state (the settings, the sequence number
    /// and the memory of imported files stay). Asks for confirmation.
    Purge {
        /// Also delete, on the remote, the files this client put there (its batches and
        /// pushed files, by its own record) that the server has not taken yet; other
        /// files in the folder are left alone (share and ftp/ftps)
        #[arg(long)]
        remote: bool,
        /// Do not ask (for scripts)
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args)]
pub struct InitArgs {
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// https://host:8443 (http:// for a test server), ftp://host:2121/,
    /// ftps://host:2121/CTData, or a share path /mnt/share/CTData
    #[arg(long)]
    pub url: Option<String>,
    /// FTP login name [default: the device name]
    #[arg(long)]
    pub user: Option<String>,
    /// This device's name on the server, e.g. ranger-07
    #[arg(long)]
    pub device: Option<String>,
    /// The device token from `ctdata-server device add NAME` (for ftp/ftps: the
    /// password). Other users see it in `ps` while init runs: prefer --token-stdin or
    /// --token-file
    #[arg(long, conflicts_with_all = ["token_file", "token_stdin"])]
    pub token: Option<String>,
    /// Read the token from the first line of standard input (e.g. `ctdata init …
    /// --token-stdin < token.txt`), so it appears in no process list
    #[arg(long, conflicts_with = "token_file")]
    pub token_stdin: bool,
    /// A file holding the token instead (read at each use)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust this certificate too (PEM), for a server with a self-signed certificate
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Download (pull) from here instead of the upload URL
    #[arg(long)]
    pub download_url: Option<String>,
    /// Token for downloading (an administrator's API token) [default: the upload
    /// token]. Without --download-url, downloads go to the upload URL with this token
    #[arg(long)]
    pub download_token: Option<String>,
    /// Days a delivered batch is kept in sent/ before `send` deletes it
    #[arg(long, default_value_t = 90)]
    pub keep_sent_days: u64,
}

#[derive(Args)]
pub struct RecordArgs {
    #[arg(long)]
    pub species: Option<String>,
    /// Latitude, WGS 84 decimal degrees
    #[arg(long, allow_hyphen_values = true)]
    pub lat: f64,
    /// Longitude, WGS 84 decimal degrees
    #[arg(long, allow_hyphen_values = true)]
    pub lon: f64,
    #[arg(long)]
    pub count: Option<i64>,
    #[arg(long)]
    pub observer: Option<String>,
    /// When it was seen, RFC 3339 with offset [default: now]
    #[arg(long)]
    pub at: Option<String>,
    /// Any other field, KEY=VALUE (repeatable); numbers and true/false stay numbers
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attrs: Vec<String>,
}

#[derive(Args)]
pub struct SendArgs {
    /// Tries per batch after the first, for network errors and server trouble
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Pause before the first retry; doubles each time
    #[arg(long, default_value = "1s")]
    pub retry_delay: Dur,
    /// Send even though sync is off for this device (`ctdata sync off`); without it,
    /// `send` asks on a terminal and refuses otherwise
    #[arg(long)]
    pub force: bool,
}

/// Where batches are cut: about a minute of a 3G link once gzipped by default.
#[derive(Args, Clone, Copy)]
pub struct CutArgs {
    /// Most sightings in one batch
    #[arg(long, default_value_t = 50_000)]
    pub max_sightings: u64,
    /// Most bytes of NDJSON in one batch (about a fifth of it goes on the wire)
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_bytes: u64,
}

impl From<CutArgs> for outbox::Cut {
    fn from(a: CutArgs) -> Self {
        outbox::Cut {
            max_sightings: a.max_sightings,
            max_bytes: a.max_bytes,
        }
    }
}

#[derive(Args)]
pub struct AutosendArgs {
    /// How often to look for something to send, e.g. 30s, 15m, 1h
    #[arg(long, default_value = "15m")]
    pub every: Dur,
    /// First pause after a failed send (doubles, with jitter, up to --retry-max)
    #[arg(long, default_value = "2s")]
    pub retry_min: Dur,
    /// Longest pause after failed sends [default: --every]
    #[arg(long)]
    pub retry_max: Option<Dur>,
    /// Also pull what is new from the server at each look (into inbox/ as
    /// --pull-format, or into --pull-into)
    #[arg(long)]
    pub pull: bool,
    /// Pull into this local SQLite copy (implies --pull)
    #[arg(long, value_name = "DB")]
    pub pull_into: Option<PathBuf>,
    /// csv, geojson or ndjson, for pulls into inbox/
    #[arg(long, default_value = "csv")]
    pub pull_format: String,
}

#[derive(Args)]
pub struct SyncNowArgs {
    /// Pull into this local SQLite copy (as `pull --into`)
    #[arg(long, value_name = "DB")]
    pub into: Option<PathBuf>,
    /// csv, geojson or ndjson, when pulling into inbox/
    #[arg(long, default_value = "csv")]
    pub format: String,
    /// Send even though sync is off for this device
    #[arg(long)]
    pub force: bool,
}

/// What to do when the destination already has a file of that name.
#[derive(Args, Clone, Copy)]
pub struct ClashArgs {
    /// Replace a same-named file at the destination
    #[arg(long, conflicts_with = "keep_both")]
    pub overwrite: bool,
    /// Keep both: the new copy gets a free name (NAME-2.ext, NAME-3.ext, …)
    #[arg(long)]
    pub keep_both: bool,
}

#[derive(Args)]
pub struct PullArgs {
    /// csv, geojson or ndjson (for a file in inbox/)
    #[arg(long, default_value = "csv")]
    pub format: String,
    /// Keep a local SQLite copy in this file instead: table `sightings` with the
    /// server's columns, updated by cursor in one transaction per pull; pulling the
    /// same range again changes nothing
    #[arg(long, value_name = "DB")]
    pub into: Option<PathBuf>,
    /// Start from this cursor instead of where the last pull ended
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub since: Option<i64>,
    /// Start from the beginning (everything the server holds)
    #[arg(long)]
    pub all: bool,
}

#[derive(Args)]
pub struct DockArgs {
    /// The folder a synced handheld leaves its files in (or the mounted device)
    pub dir: PathBuf,
    /// Keep watching DIR and take new files as they appear
    #[arg(long)]
    pub watch: bool,
    /// Move taken files out of DIR into docked/
    #[arg(long = "move")]
    pub move_files: bool,
    /// How often --watch looks
    #[arg(long, default_value = "2s")]
    pub interval: Dur,
    /// The handheld that recorded the CSV and GeoJSON files in DIR (they name no device
    /// themselves). Such files are sent as they are, for that handheld: the server must
    /// let this station relay for it (`ctdata-server device relay STATION --for NAME`)
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Each subfolder of DIR is a handheld's: a CSV or GeoJSON file in DIR/NAME/ is
    /// NAME's, relayed as with --device (without it, CSV and GeoJSON files are this
    /// station's own wherever they are below DIR)
    #[arg(long, conflicts_with = "device")]
    pub by_folder: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let home = Home::locate(cli.home)?;
    match cli.command {
        Command::Init(args) => commands::init(&home, args),
        Command::Record(args) => commands::record(&home, args),
        Command::Import { files, cut } => commands::import(&home, &files, cut.into()),
        Command::Seal { cut } => commands::seal(&home, cut.into()),
        Command::Send(args) => commands::send(&home, args).await,
        Command::Status => commands::status(&home),
        Command::Test => check::run(&home).await,
        Command::Autosend(args) => autosend::run(&home, args).await,
        Command::Dock(args) => dock::run(&home, args).await,
        Command::Pull(args) => pull::run(&home, args).await,
        Command::Compare => blocking(move || sync::compare(&home)).await,
        Command::Push {
            files,
            move_files,
            clash,
        } => blocking(move || sync::push(&home, &files, move_files, clash)).await,
        Command::Fetch { files, clash } => {
            blocking(move || sync::fetch(&home, &files, clash)).await
        }
        Command::App(args) => app::run(home, args).await,
        Command::Sync { action } => match action {
            SyncAction::Off => sync::switch(&home, false),
            SyncAction::On => sync::switch(&home, true),
            SyncAction::Now(args) => pull::sync_now(&home, args).await,
            SyncAction::Purge { remote, yes } => {
                blocking(move || sync::purge(&home, remote, yes)).await
            }
        },
    }
}

/// FTP sessions block: run them off the async workers.
async fn blocking(
    f: impl FnOnce() -> anyhow::Result<ExitCode> + Send + 'static,
) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(f).await?
}
