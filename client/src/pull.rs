//! `ctdata pull`: the consolidated sightings added since the last pull, into a file in
//! `inbox/` or into a local SQLite copy (`--into`). The cursor is saved only after the
//! data is safely in place (the file renamed into place, or the same transaction as the
//! rows), so a crash means the same range is fetched again, never a gap.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use ctdata_api::{ErrorBody, NEXT_CURSOR};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use tokio::io::AsyncWriteExt;

use crate::config::{Config, Endpoint, Protocol};
use crate::home::{sync_dir, Home, INBOX};
use crate::{http, localdb, state, PullArgs, SendArgs, SyncNowArgs};

/// Where pulled sightings go.
#[derive(Debug, Clone)]
pub enum Target {
    /// A file per pull in `inbox/`, in this format (csv, geojson, ndjson).
    File(String),
    /// A local SQLite copy, updated in place.
    Db(PathBuf),
}

impl Target {
    pub fn new(format: &str, into: Option<PathBuf>) -> anyhow::Result<Target> {
        if let Some(db) = into {
            return Ok(Target::Db(std::path::absolute(&db)?));
        }
        if !matches!(format, "csv" | "geojson" | "ndjson") {
            bail!("--format {format:?}: use csv, geojson or ndjson");
        }
        Ok(Target::File(format.to_string()))
    }
}

/// Where a pull starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// Where the last pull into the same target ended.
    Saved,
    /// From this cursor (`--since N`), or 0 (`--all`).
    At(i64),
}

pub async fn run(home: &Home, a: PullArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    home.create()?;
    let target = Target::new(&a.format, a.into)?;
    let start = match (a.all, a.since) {
        (true, _) => Start::At(0),
        (false, Some(n)) => Start::At(n),
        (false, None) => Start::Saved,
    };
    println!("{}", pull(home, &config, &target, start).await?);
    Ok(ExitCode::SUCCESS)
}

/// `sync now`: send, then pull. Both run even when the send leaves something pending
/// (what the server has is still worth having); exits 1 when either fell short.
pub async fn sync_now(home: &Home, a: SyncNowArgs) -> anyhow::Result<ExitCode> {
    let target = Target::new(&a.format, a.into)?;
    let send = SendArgs {
        retries: 3,
        retry_delay: crate::duration::Dur(std::time::Duration::from_secs(1)),
        force: a.force,
    };
    let sent = crate::commands::send(home, send).await?;
    let config = Config::load(home)?;
    match pull(home, &config, &target, Start::Saved).await {
        Ok(line) => {
            println!("{line}");
            Ok(sent)
        }
        Err(e) => {
            eprintln!("pull failed: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// One pull; returns the line to show.
pub async fn pull(
    home: &Home,
    config: &Config,
    target: &Target,
    start: Start,
) -> anyhow::Result<String> {
    let down = config.download();
    if down.protocol != Protocol::Https {
        bail!("pull needs an https download URL: `ctdata init --download-url https://… --download-token …`");
    }
    let Some(_only_one) = home.try_lock(".pull.lock")? else {
        bail!("another pull is running for {}", home.root.display());
    };
    let mut db = match target {
        Target::Db(path) => Some(localdb::LocalDb::open(path).await?),
        Target::File(_) => None,
    };
    let saved = match (target, &mut db) {
        (Target::Db(_), Some(db)) => db.cursor(down.base()).await?,
        (Target::File(format), _) => state::read(home)?.pull_cursors.get(format).copied(),
        _ => None,
    };
    let since = match start {
        Start::Saved => saved.unwrap_or(0),
        Start::At(n) => n,
    };
    let format = match target {
        Target::File(f) => f.as_str(),
        Target::Db(_) => "ndjson",
    };
    let response = request(down, format, since).await?;
    let url = format!("{}/api/v1/sightings", down.base());
    let next: i64 = response
        .headers()
        .get(NEXT_CURSOR)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .with_context(|| format!("{url} sent no {NEXT_CURSOR} header: is it a ctdata-server?"))?;
    if next <= since {
        return Ok(format!("nothing new since the last pull (cursor {since})"));
    }
    // A pull from an earlier point never moves the saved cursor back.
    let keep = next.max(saved.unwrap_or(0));
    let progress = progress_bar();
    match (target, db) {
        (Target::Db(path), Some(mut db)) => {
            let rows = db.load(response, down.base(), keep, &progress).await;
            progress.finish_and_clear();
            let rows = rows?;
            Ok(format!(
                "pulled {rows} sightings into {} (cursor {since} → {next})",
                path.display()
            ))
        }
        _ => {
            let dir = home.dir(INBOX);
            let name = format!("sightings-{since}-{next}.{format}");
            let bytes = to_file(response, &dir, &name, &down.url, &progress).await;
            progress.finish_and_clear();
            let bytes = bytes?;
            let mut locked = state::lock(home)?;
            locked.state.pull_cursors.insert(format.to_string(), keep);
            locked.save()?;
            Ok(format!(
                "pulled {bytes} bytes into {}",
                dir.join(&name).display()
            ))
        }
    }
}

async fn request(down: &Endpoint, format: &str, since: i64) -> anyhow::Result<reqwest::Response> {
    let client = http::client(down)?;
    let url = format!("{}/api/v1/sightings", down.base());
    let response = client
        .get(&url)
        .query(&[("format", format), ("since", &since.to_string())])
        .bearer_auth(down.require_token()?)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(http::describe(&e, &down.url)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.json::<ErrorBody>().await.ok();
    let message = body
        .as_ref()
        .map_or("no reason given", |b| b.message.as_str());
    if status == reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "{url} does not accept the download token ({message}): pull needs an \
             administrator's API token (`ctdata-server admin token NAME`, set with \
             `ctdata init --download-token`) or the token of a device the server lets \
             read (http.read_devices)"
        );
    }
    bail!("{url} answered {status}: {message}");
}

/// Streams the body into `dir/name` through a temporary name; returns its size.
async fn to_file(
    response: reqwest::Response,
    dir: &Path,
    name: &str,
    url: &str,
    progress: &ProgressBar,
) -> anyhow::Result<u64> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = tokio::fs::File::create(&tmp).await?;
    let mut bytes = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!(http::describe(&e, url)))?;
        bytes += chunk.len() as u64;
        progress.inc(chunk.len() as u64);
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(bytes)
}

/// On a terminal: the bytes received so far and the rate (and the rows, into a local
/// database); nothing when piped or logged. The server does not say the size ahead.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    // The style first: the steady tick draws at once, and a pull that ends within its
    // first period would otherwise have shown only a bare spinner.
    if let Ok(style) =
        ProgressStyle::with_template("pulling {spinner} {bytes} received, {bytes_per_sec} {msg}")
    {
        pb.set_style(style);
    }
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}
