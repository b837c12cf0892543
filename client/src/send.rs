//! Tap to send: every batch in `outbox/` goes over the configured protocol; a batch
//! moves to `sent/` only once delivery is confirmed, to `rejected/` (with its reason)
//! when the server refuses it for good, and stays in `outbox/` otherwise.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::{Config, Protocol};
use crate::home::{list_files, move_into, write_atomic, Home, OUTBOX, REJECTED, SENT};
use crate::{ftp, http, outbox, share, state};

const SEND_LOCK: &str = ".send.lock";

/// What delivering one batch came to.
#[derive(Debug)]
pub enum Outcome {
    /// The other side has it (`duplicate`: it had it before).
    Delivered { duplicate: bool, receipt: Proof },
    /// Refused for good (invalid, conflicting): moved aside with the reason.
    Refused(String),
    /// Worth trying again later (network, server trouble).
    Retry(String),
    /// Nothing else will go either (credentials, configuration).
    Stop(String),
}

/// What is kept beside a sent batch as `NAME.receipt.json`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Proof {
    /// The server's own receipt (HTTP answers with it).
    Receipt(Box<ctdata_api::Receipt>),
    /// A file handed over (FTP, share): the server ingests it later, on its own.
    HandedOver {
        /// Always `delivered`.
        status: &'static str,
        file: String,
        channel: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
    },
}

impl Proof {
    pub fn handed_over(
        file: impl Into<String>,
        channel: &'static str,
        bytes: Option<u64>,
    ) -> Proof {
        Proof::HandedOver {
            status: "delivered",
            file: file.into(),
            channel,
            bytes,
        }
    }
}

pub struct Options {
    /// Tries per batch after the first, for network errors and 5xx.
    pub retries: u32,
    /// First pause between tries; it doubles each time.
    pub retry_delay: Duration,
    /// Set by a stop signal: finish the batch in flight, send no more.
    pub stop: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub delivered: usize,
    pub duplicates: usize,
    pub sightings: u64,
    pub bytes: u64,
    /// Bytes put on the wire for this send (compressed, every try and resume).
    pub wire_bytes: u64,
    pub rejected: Vec<(String, String)>,
    pub pending: usize,
    /// Why sending stopped with batches left.
    pub error: Option<String>,
}

impl Report {
    pub fn summary(&self, url: &str) -> String {
        let mut s = format!(
            "sent {} batch{} ({} sightings, {} bytes) to {url}",
            self.delivered,
            plural(self.delivered),
            self.sightings,
            self.bytes
        );
        if self.wire_bytes > 0 {
            s += &format!(", {} bytes on the wire", self.wire_bytes);
        }
        if self.duplicates > 0 {
            s += &format!(", {} already there", self.duplicates);
        }
        if !self.rejected.is_empty() {
            s += &format!(
                ", {} rejected (kept in rejected/ with the reason)",
                self.rejected.len()
            );
        }
        match (&self.error, self.pending) {
            (_, 0) => s += ", nothing pending",
            (Some(e), n) => s += &format!("; {n} batch{} pending: {e}", plural(n)),
            (None, n) => s += &format!("; {n} batch{} pending", plural(n)),
        }
        s
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "es"
    }
}

enum Transport {
    Http {
        client: reqwest::Client,
        token: String,
    },
    /// One FTP session for the whole send, opened on first use and after an error.
    Ftp(Arc<std::sync::Mutex<Option<ftp::Session>>>),
    Share,
}

/// Seals the open batch, then sends the outbox. Waits if another send is running.
pub async fn send(home: &Home, config: &Config, opts: &Options) -> anyhow::Result<Report> {
    send_watched(home, config, opts, None).await
}

/// [`send`], with the byte count kept in `watch` (its length set to each batch's size as it starts)
/// instead of a terminal bar: `ctdata app` reads it to show progress.
pub async fn send_watched(
    home: &Home,
    config: &Config,
    opts: &Options,
    watch: Option<ProgressBar>,
) -> anyhow::Result<Report> {
    {
        let mut locked = outbox::lock(home, &config.device)?;
        outbox::seal(home, &config.device, &mut locked)?;
    }
    let lock = match home.try_lock(SEND_LOCK)? {
        Some(l) => l,
        None => {
            eprintln!("another send is running in this home; waiting for it to finish");
            let home = home.clone();
            tokio::task::spawn_blocking(move || home.lock(SEND_LOCK)).await??
        }
    };
    let report = send_outbox(home, config, opts, watch).await;
    let pruned = prune_sent(home, config.keep_sent_days);
    drop(lock);
    match pruned {
        Ok(0) => {}
        Ok(n) => home.log(&format!(
            "deleted {n} files from sent/ older than {} days",
            config.keep_sent_days
        )),
        Err(e) => home.log(&format!("could not prune sent/: {e}")),
    }
    let report = report?;
    let summary = report.summary(&config.upload.url);
    home.log(&summary);
    // "Last successful send" is the last send that delivered something: a send with
    // nothing to send does not overwrite it, and one that delivered some batches but not
    // all counts as both a success and an error.
    if report.delivered > 0 {
        state::note(home, Ok(summary.clone()))?;
    }
    match (&report.error, report.pending) {
        (Some(e), _) => state::note(home, Err(e.clone()))?,
        (None, n) if n > 0 => state::note(home, Err(summary.clone()))?,
        _ => {}
    }
    Ok(report)
}

async fn send_outbox(
    home: &Home,
    config: &Config,
    opts: &Options,
    watch: Option<ProgressBar>,
) -> anyhow::Result<Report> {
    let up = &config.upload;
    let transport = match up.protocol {
        Protocol::Https => Transport::Http {
            client: http::client(up)?,
            token: up.require_token()?,
        },
        Protocol::Ftp | Protocol::Ftps => Transport::Ftp(Arc::default()),
        Protocol::Share => Transport::Share,
    };
    let dir = home.dir(OUTBOX);
    let mut names = list_files(&dir)?;
    // Small batches first: over a poor link they get home while a large one is still
    // on its way, and a failing large one does not hold them up.
    let size_of = |n: &String| std::fs::metadata(dir.join(n)).map(|m| m.len()).unwrap_or(0);
    names.sort_by_key(|n| (size_of(n), n.clone()));
    // The window's bar (`ctdata app`) is given; a terminal gets its own. Each batch
    // sets the bar's length to its own size as it starts.
    let progress = match watch {
        Some(pb) => pb,
        None => progress_bar(names.len()),
    };
    let mut report = Report::default();
    // The handheld each docked batch is relayed for.
    let relayed = state::read(home)?.relayed;
    for (i, name) in names.iter().enumerate() {
        if opts.stop.load(Ordering::SeqCst) {
            break;
        }
        progress.set_prefix(format!("batch {}/{}", i + 1, names.len()));
        let path = dir.join(name);
        let rows = outbox::rows_in(&path);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        progress.set_length(size);
        progress.set_position(0);
        let mut attempt = 0;
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(opts.retry_delay)
            .with_max_delay(opts.retry_delay.saturating_mul(1 << 10))
            .with_factor(2.0)
            .with_max_times(opts.retries as usize)
            .build();
        let outcome = loop {
            let relay = relayed.get(name).map(String::as_str);
            let (outcome, wire) = deliver(&transport, config, &path, name, relay, &progress).await;
            report.wire_bytes += wire;
            match outcome {
                Outcome::Retry(ref why) => {
                    let Some(pause) = pauses.next() else {
                        break outcome;
                    };
                    home.log(&format!(
                        "{name}: try {} failed: {why}; next try in {pause:?}",
                        attempt + 1
                    ));
                    attempt += 1;
                    if sleep_unless_stopped(pause, &opts.stop).await {
                        break outcome;
                    }
                }
                other => break other,
            }
        };
        if !matches!(outcome, Outcome::Retry(_)) {
            crate::resume::forget(&path);
        }
        match outcome {
            Outcome::Delivered { duplicate, receipt } => {
                let kept = home.dir(SENT).join(format!("{name}.receipt.json"));
                write_atomic(&kept, &serde_json::to_vec_pretty(&receipt)?)?;
                move_into(&path, &home.dir(SENT))?;
                home.log(&format!(
                    "{name}: delivered ({rows} sightings{})",
                    if duplicate {
                        ", already stored before"
                    } else {
                        ""
                    }
                ));
                report.delivered += 1;
                report.duplicates += usize::from(duplicate);
                report.sightings += rows;
                report.bytes += size;
            }
            Outcome::Refused(reason) => {
                let why = home.dir(REJECTED).join(format!("{name}.reason.txt"));
                std::fs::create_dir_all(home.dir(REJECTED))?;
                write_atomic(&why, format!("{reason}\n").as_bytes())?;
                move_into(&path, &home.dir(REJECTED))?;
                home.log(&format!("{name}: rejected, moved to rejected/: {reason}"));
                report.rejected.push((name.clone(), reason));
            }
            // The queue keeps moving: this batch waits for a later send, the others go,
            // unless the server cannot be reached at all (a link that is down or
            // silent would make each of them wait out its own timeouts).
            Outcome::Retry(why) => {
                home.log(&format!("{name}: not sent: {why}"));
                report.error = Some(format!("{name}: {why}"));
                let left = names.len() - i - 1;
                if left > 0 && !opts.stop.load(Ordering::SeqCst) {
                    if let Err(cause) = reachable(&transport, config).await {
                        let why = format!(
                            "{name}: {why}; then the server could not be reached ({cause}), so the \
                             other {left} batch(es) wait for the next send"
                        );
                        home.log(&format!("stopping this send: {why}"));
                        report.error = Some(why);
                        break;
                    }
                }
            }
            Outcome::Stop(why) => {
                home.log(&format!("{name}: not sent: {why}"));
                report.error = Some(why);
                break;
            }
        }
    }
    progress.finish_and_clear();
    if let Transport::Ftp(session) = transport {
        let open = session.lock().ok().and_then(|mut s| s.take());
        if let Some(s) = open {
            tokio::task::spawn_blocking(move || ftp::quit(s)).await?;
        }
    }
    report.pending = list_files(&dir)?.len();
    Ok(report)
}

/// How long the check that the server still answers may take after a batch failed:
/// as long as a link may stay silent before a send gives it up.
const REACHABLE_WITHIN: Duration = crate::resume::STALL;

/// Whether the server still answers at all, asked after a batch failed: HTTP(S) any
/// answer to `/healthz`, FTP(S) the server's greeting line. All of it async and within
/// [`REACHABLE_WITHIN`], so nothing is left waiting behind. A share is not asked: a
/// missing folder fails each batch at once anyway. `Err` names why not.
async fn reachable(transport: &Transport, config: &Config) -> Result<(), String> {
    let up = &config.upload;
    let probe = async {
        match transport {
            Transport::Http { client, .. } => {
                let url = format!("{}/healthz", up.base());
                client
                    .get(&url)
                    .timeout(REACHABLE_WITHIN)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| http::describe(&e, &up.url))
            }
            Transport::Ftp(_) => ftp_greets(config).await,
            Transport::Share => Ok(()),
        }
    };
    tokio::time::timeout(REACHABLE_WITHIN, probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REACHABLE_WITHIN:?}")))
}

/// The FTP server's greeting (`220 …`, before any TLS), read without blocking a thread.
async fn ftp_greets(config: &Config) -> Result<(), String> {
    use tokio::io::AsyncBufReadExt;
    let t = ftp::Target::new(config).map_err(|e| e.to_string())?;
    let addr = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("cannot find host {:?}: {e}", t.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", t.host))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut line = String::new();
    tokio::io::BufReader::new(tcp)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    match line.starts_with('2') {
        true => Ok(()),
        false => Err(format!(
            "{addr} did not greet as an FTP server: {:?}",
            line.trim()
        )),
    }
}

/// Delivers one batch; `relay`: the handheld it is relayed for (send on sync).
async fn deliver(
    transport: &Transport,
    config: &Config,
    path: &Path,
    name: &str,
    relay: Option<&str>,
    progress: &ProgressBar,
) -> (Outcome, u64) {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let handed = |o: Outcome| (o, size);
    match transport {
        Transport::Http { client, token } => {
            // A resumable upload has no relay header: a docked file goes whole.
            if size > crate::resume::RESUMABLE_ABOVE && relay.is_none() {
                let up = &config.upload;
                if let Some(sent) = crate::resume::upload(client, up, token, path, progress).await {
                    return (sent.outcome, sent.wire);
                }
            }
            http::post_batch(client, &config.upload, token, path, relay, progress).await
        }
        Transport::Ftp(session) => {
            let (session, config) = (session.clone(), config.clone());
            let (path, name, progress) = (path.to_path_buf(), name.to_string(), progress.clone());
            let relay = relay.map(str::to_string);
            tokio::task::spawn_blocking(move || {
                ftp_put(&session, &config, &path, &name, &progress, relay.as_deref())
            })
            .await
            .unwrap_or_else(|e| (Outcome::Retry(format!("the FTP uploader failed: {e}")), 0))
        }
        Transport::Share => {
            let (up, device) = (config.upload.clone(), config.device.clone());
            let (path, name) = (path.to_path_buf(), name.to_string());
            let relay = relay.map(str::to_string);
            handed(
                tokio::task::spawn_blocking(move || {
                    share::put(&up, &device, &path, &name, relay.as_deref())
                })
                .await
                .unwrap_or_else(|e| Outcome::Retry(format!("the share writer failed: {e}"))),
            )
        }
    }
}

/// One batch over FTP: batches above 4 KB go gzipped as `NAME.gz` (written once beside
/// the batch as `outbox/.NAME.gz`, so a resume after a restart sends the same bytes);
/// the server recognises the compression by its content and the batch by its id.
fn ftp_put(
    session: &std::sync::Mutex<Option<ftp::Session>>,
    config: &Config,
    path: &Path,
    name: &str,
    progress: &ProgressBar,
    relay: Option<&str>,
) -> (Outcome, u64) {
    let mut guard = match session.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let gzipped = if size > crate::resume::COMPRESS_ABOVE {
        match crate::resume::is_gzip(path) {
            // A docked handheld's `.ndjson.gz` goes as it is.
            Ok(true) => None,
            Ok(false) => match crate::resume::write_gz(path) {
                Ok(gz) => Some(gz),
                Err(e) => {
                    return (
                        Outcome::Stop(format!("cannot compress {}: {e}", path.display())),
                        0,
                    )
                }
            },
            Err(e) => {
                return (
                    Outcome::Stop(format!("cannot read {}: {e}", path.display())),
                    0,
                )
            }
        }
    } else {
        None
    };
    let (file, mut remote) = match gzipped {
        Some(gz) => (gz, format!("{name}.gz")),
        None => (path.to_path_buf(), name.to_string()),
    };
    let Some(handheld) = relay else {
        return ftp::deliver(&mut guard, config, &file, &remote, progress);
    };
    // Relayed for a handheld: into `relay/HANDHELD/`, made on a session of its own.
    if guard.is_none() {
        match ftp::open(config) {
            Ok(s) => *guard = Some(s),
            Err(e) => return (Outcome::Retry(format!("{}: {e}", config.upload.url)), 0),
        }
    }
    if let Some(s) = guard.as_mut() {
        remote = ftp::relay_name(s, handheld, &remote);
    }
    let (outcome, wire) = ftp::deliver(&mut guard, config, &file, &remote, progress);
    (ftp::relay_outcome(outcome, &config.device, handheld), wire)
}

/// Deletes delivered batches (and their receipts) delivered more than `days` ago, by
/// the receipt's time (written at delivery; a batch keeps its sealing time).
fn prune_sent(home: &Home, days: u64) -> std::io::Result<usize> {
    let dir = home.dir(SENT);
    let limit = Duration::from_secs(days.saturating_mul(86_400));
    let now = std::time::SystemTime::now();
    let old = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > limit)
    };
    let mut deleted = 0;
    for name in list_files(&dir)? {
        if name.ends_with(".receipt.json") {
            continue;
        }
        let receipt = dir.join(format!("{name}.receipt.json"));
        let when = if receipt.exists() {
            &receipt
        } else {
            &dir.join(&name)
        };
        if old(when) {
            std::fs::remove_file(dir.join(&name))?;
            deleted += 1;
            if receipt.exists() {
                std::fs::remove_file(&receipt)?;
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// `true` when stopped during the pause.
async fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) -> bool {
    let until = tokio::time::Instant::now() + pause;
    while tokio::time::Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100).min(pause)).await;
    }
    stop.load(Ordering::SeqCst)
}

/// On a terminal, per batch: the bytes the server acknowledged (its offset for a
/// resumable upload), the rate over the last seconds, and what is happening (resuming
/// at X, stored by the server…); nothing when piped or logged.
fn progress_bar(batches: usize) -> ProgressBar {
    if batches == 0 || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} {spinner} [{bar:30}] {bytes}/{total_bytes} acknowledged, {bytes_per_sec} {msg}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    // After the style: the steady tick draws at once.
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}
