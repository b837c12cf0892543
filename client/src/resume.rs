//! Large batches over poor links: gzip, then a resumable upload (tus 1.0 under
//! `/api/v1/uploads`) in pieces that survive a cut and continue where the server's
//! offset says.
//!
//! Beside `outbox/NAME` the upload keeps `outbox/.NAME.gz` (the compressed batch,
//! written once; `.NAME.gz.src` names the size and modification time of the batch it
//! was made from, so a batch replaced since, by a re-dock, is compressed again) and
//! `outbox/.NAME.upload.json` (its URL on the server, length and SHA-256), so a client
//! killed mid-upload resumes after a restart instead of starting again. They go once
//! the batch is delivered or refused.
//!
//! A `PATCH` answered 409, 412, 423 or 460 (offset moved, busy, checksum mismatch)
//! resumes from the offset a `HEAD` gives; 404 or 410 (the upload expired or was lost)
//! starts a new upload, at most [`RESTARTS`] times per send.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use indicatif::ProgressBar;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::config::Endpoint;
use crate::http::{classify_answer, describe};
use crate::send::Outcome;

/// Batches larger than this (uncompressed) go up resumably; smaller ones stay one POST.
pub const RESUMABLE_ABOVE: u64 = 256 * 1024;
/// Bodies larger than this are gzipped.
pub const COMPRESS_ABOVE: u64 = 4 * 1024;
/// First and largest piece per PATCH: pieces grow while they go through quickly and
/// shrink after a cut, so a piece fits the link's few seconds.
const FIRST_PIECE: usize = 64 * 1024;
const MAX_PIECE: usize = 1024 * 1024;
/// A piece that moves no byte for this long is given up (a silent link).
pub const STALL: Duration = Duration::from_secs(15);
/// Resumes in a row that gain nothing before the batch is left for a later try.
const FRUITLESS_TRIES: u32 = 4;
/// New uploads after the server lost one (404, 410: expired, swept) before the batch is
/// left for a later try: a server that keeps losing uploads is not fed forever.
const RESTARTS: u32 = 3;
/// Whole uploads the server found damaged (460: it starts them again from 0) before the
/// batch is left for a later try.
const DAMAGED: u32 = 3;

/// What is remembered of an upload in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resume {
    /// The upload's URL on the server.
    pub url: String,
    /// Bytes of the compressed batch.
    pub length: u64,
    /// Bytes of the batch as stored in outbox/.
    pub raw: u64,
    pub sha256: String,
    /// The server's offset when last heard.
    pub offset: u64,
}

pub fn gz_path(batch: &Path) -> PathBuf {
    side(batch, ".gz")
}

pub fn resume_path(batch: &Path) -> PathBuf {
    side(batch, ".upload.json")
}

fn side(batch: &Path, suffix: &str) -> PathBuf {
    let name = batch.file_name().unwrap_or_default().to_string_lossy();
    batch.with_file_name(format!(".{name}{suffix}"))
}

/// The remembered upload of `batch`, if any.
pub fn remembered(batch: &Path) -> Option<Resume> {
    let bytes = std::fs::read(resume_path(batch)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn remember(batch: &Path, r: &Resume) {
    if let Ok(bytes) = serde_json::to_vec_pretty(r) {
        let _ = crate::home::write_atomic(&resume_path(batch), &bytes);
    }
}

/// Forgets the upload of `batch` (delivered, refused, or gone on the server).
pub fn forget(batch: &Path) {
    let _ = std::fs::remove_file(resume_path(batch));
    let _ = std::fs::remove_file(gz_path(batch));
    let _ = std::fs::remove_file(side(batch, ".gz.src"));
}

/// What identifies the batch a `.gz` was made from: its size and modification time.
fn source_key(batch: &Path) -> std::io::Result<String> {
    let m = std::fs::metadata(batch)?;
    let mtime = m
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{} {mtime}", m.len()))
}

/// The gzip level of what goes up: the default (6), not the fastest. Each batch is
/// compressed once (a staged `.gz` is kept for its resumes), and on a poor link the
/// bytes saved (generated sightings: 0.265 of the raw size at level 1) are worth far
/// more than the second of CPU a 50 MB batch costs.
const LEVEL: flate2::Compression = flate2::Compression::new(6);

/// gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), LEVEL);
    enc.write_all(bytes)?;
    enc.finish()
}

/// Whether `file` starts with gzip's magic bytes.
pub fn is_gzip(file: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 2];
    let n = std::fs::File::open(file)?.read(&mut magic)?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// Writes `.NAME.gz` once (through a temporary name; level 6, no timestamp, so the
/// same batch always gives the same bytes); returns its path.
pub fn write_gz(batch: &Path) -> std::io::Result<PathBuf> {
    let gz = gz_path(batch);
    let key = source_key(batch)?;
    let src = side(batch, ".gz.src");
    if gz.exists() && std::fs::read_to_string(&src).ok().as_deref() != Some(key.as_str()) {
        // Made from another batch of this name (re-docked since): never sent for it.
        std::fs::remove_file(&gz)?;
    }
    if !gz.exists() {
        // Before the `.gz` appears: a crash in between leaves no `.gz` to trust.
        crate::home::write_atomic(&src, key.as_bytes())?;
    }
    if !gz.exists() && is_gzip(batch)? {
        // A docked handheld's `.ndjson.gz`: the server inflates one layer only.
        let tmp = side(batch, ".gz.tmp");
        std::fs::copy(batch, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &gz)?;
    }
    if !gz.exists() {
        let tmp = side(batch, ".gz.tmp");
        let mut input = std::io::BufReader::new(std::fs::File::open(batch)?);
        let out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut enc = flate2::write::GzEncoder::new(out, LEVEL);
        std::io::copy(&mut input, &mut enc)?;
        let file = enc.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &gz)?;
    }
    Ok(gz)
}

/// Writes `.NAME.gz` once (a copy of a batch that is gzip already); returns its length
/// and SHA-256.
fn compressed(batch: &Path) -> std::io::Result<(u64, String)> {
    let gz = write_gz(batch)?;
    let mut f = std::fs::File::open(&gz)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    Ok((len, hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// What one upload came to, and the bytes it put on the wire.
pub struct Sent {
    pub outcome: Outcome,
    pub wire: u64,
}

/// Uploads `batch` resumably; `None` when the server has no resumable uploads (an older
/// server), so the caller posts it whole.
pub async fn upload(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    token: &str,
    batch: &Path,
    progress: &ProgressBar,
) -> Option<Sent> {
    let mut wire = 0u64;
    let done = |outcome: Outcome, wire: u64| Some(Sent { outcome, wire });
    let raw = std::fs::metadata(batch).map(|m| m.len()).unwrap_or(0);
    let b = batch.to_path_buf();
    let (length, sha256) = match tokio::task::spawn_blocking(move || compressed(&b)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            return done(
                Outcome::Stop(format!("cannot compress {}: {e}", batch.display())),
                0,
            )
        }
        Err(e) => return done(Outcome::Retry(format!("compressing failed: {e}")), 0),
    };
    let base = endpoint.base();
    let mut resume = remembered(batch).filter(|r| r.sha256 == sha256 && r.length == length);
    let mut piece = FIRST_PIECE;
    let mut fruitless = 0u32;
    let (mut restarts, mut damaged) = (0u32, 0u32);
    // Asks for the receipt of a complete upload whose answer was lost.
    let mut waits = 0u32;
    let mut last_error = String::new();
    progress.set_length(length);
    loop {
        if fruitless >= FRUITLESS_TRIES {
            return done(Outcome::Retry(last_error), wire);
        }
        // Where the server stands: a new upload, or the remembered one's offset.
        let r = match resume.take() {
            Some(r) => r,
            None => match create(client, base, token, batch, length, raw, &sha256).await {
                Ok(Some(r)) => {
                    remember(batch, &r);
                    r
                }
                Ok(None) => return None,
                Err(Step::Answer(o)) => return done(o, wire),
                Err(Step::Net(why) | Step::Lost(why)) => {
                    last_error = why;
                    fruitless += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let offset = match head(client, &r.url, token).await {
            Ok(Some(o)) => o,
            // Gone on the server (expired, swept): start a new one, a few times.
            Ok(None) => {
                forget_url(batch);
                restarts += 1;
                if restarts > RESTARTS {
                    return done(Outcome::Retry(lost(&endpoint.url, restarts)), wire);
                }
                continue;
            }
            Err(why) => {
                last_error = why;
                fruitless += 1;
                resume = Some(r);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut r = r;
        r.offset = offset;
        remember(batch, &r);
        progress.set_position(offset);
        progress.set_message(match offset {
            0 => format!("{length} bytes, gzipped, in pieces"),
            _ => format!("resuming at {offset} of {length} bytes"),
        });
        // Pieces until the end, or until the link fails.
        let before = offset;
        let mut at = offset;
        let result = loop {
            if at >= length {
                waits += 1;
                if waits > 40 {
                    break Err(Step::Answer(Outcome::Retry(format!(
                        "{} has the whole batch but gave no receipt yet: {last_error}",
                        endpoint.url
                    ))));
                }
                break finish(client, &r.url, token, &endpoint.url, progress).await;
            }
            let n = piece.min((length - at) as usize);
            let bytes = match read_at(&gz_path(batch), at, n) {
                Ok(b) => b,
                Err(e) => {
                    forget(batch);
                    break Err(Step::Answer(Outcome::Retry(format!(
                        "cannot read the compressed batch: {e}"
                    ))));
                }
            };
            if at + n as u64 >= length {
                progress.set_message("stored by the server…");
            }
            let started = Instant::now();
            let sent = client
                .patch(&r.url)
                .bearer_auth(token)
                .header("Tus-Resumable", "1.0.0")
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/offset+octet-stream",
                )
                .header("Upload-Offset", at)
                .timeout(STALL + Duration::from_secs((n / 8192) as u64))
                .body(bytes)
                .send()
                .await;
            wire += n as u64;
            match sent {
                Ok(resp) if resp.status() == StatusCode::NO_CONTENT => {
                    at = offset_of(&resp).unwrap_or(at + n as u64);
                    r.offset = at;
                    remember(batch, &r);
                    progress.set_position(at);
                    if started.elapsed() < Duration::from_secs(2) {
                        piece = (piece * 2).min(MAX_PIECE);
                    }
                }
                // Offset moved, busy (another request, another replica), version:
                // where it stands is for a HEAD to say.
                Ok(resp) if matches!(resp.status().as_u16(), 409 | 412 | 423) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    break Err(Step::Net(format!(
                        "the server answered {status} ({}): resuming from its offset",
                        error_text(&body)
                    )));
                }
                Ok(resp) if resp.status().as_u16() == 460 => {
                    damaged += 1;
                    let body = resp.bytes().await.unwrap_or_default();
                    let why = format!("checksum mismatch: {}", error_text(&body));
                    if damaged > DAMAGED {
                        break Err(Step::Answer(Outcome::Retry(format!(
                            "{} found the upload damaged {damaged} times ({why}); it is \
                             tried again later",
                            endpoint.url
                        ))));
                    }
                    break Err(Step::Net(why));
                }
                // The upload expired or was lost there: a new one.
                Ok(resp) if matches!(resp.status().as_u16(), 404 | 410) => {
                    break Err(Step::Lost(resp.status().to_string()));
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    if status.is_success() || status.is_client_error() {
                        // The last piece: the answer is the receipt (or a refusal).
                        break Ok(classify_answer(status, &body, &endpoint.url));
                    }
                    break Err(Step::Answer(classify_answer(status, &body, &endpoint.url)));
                }
                Err(e) => {
                    piece = (piece / 2).max(16 * 1024);
                    break Err(Step::Net(describe(&e, &endpoint.url)));
                }
            }
        };
        match result {
            Ok(outcome) => {
                if !matches!(outcome, Outcome::Retry(_)) {
                    forget(batch);
                }
                return done(outcome, wire);
            }
            Err(Step::Answer(o)) => return done(o, wire),
            Err(Step::Lost(status)) => {
                forget_url(batch);
                restarts += 1;
                if restarts > RESTARTS {
                    return done(Outcome::Retry(lost(&endpoint.url, restarts)), wire);
                }
                last_error = format!("the server answered {status}: the upload was lost there");
                progress.set_position(0);
            }
            Err(Step::Net(why)) => {
                // Gaining ground: go on at once; otherwise count it.
                if r.offset > before || at > before || at >= length {
                    fruitless = 0;
                } else {
                    fruitless += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                last_error = format!(
                    "{why} (the server holds {} of {length} bytes; the upload resumes there)",
                    r.offset
                );
                resume = Some(r);
            }
        }
    }
}

enum Step {
    /// The server answered for good (or with trouble worth a later try).
    Answer(Outcome),
    /// The link failed: resume.
    Net(String),
    /// The server no longer has the upload (404, 410): start a new one.
    Lost(String),
}

fn lost(server: &str, restarts: u32) -> String {
    format!(
        "{server} lost the upload {restarts} times in a row (expired or removed there): \
         the batch is tried again later"
    )
}

/// The message of an error body, or its text.
fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

fn forget_url(batch: &Path) {
    let _ = std::fs::remove_file(resume_path(batch));
}

fn offset_of(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get("upload-offset")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn read_at(path: &Path, at: u64, n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Seek;
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(at))?;
    let mut buf = vec![0u8; n];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

async fn create(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    batch: &Path,
    length: u64,
    raw: u64,
    sha256: &str,
) -> Result<Option<Resume>, Step> {
    let name = batch.file_name().unwrap_or_default().to_string_lossy();
    let batch_id = name
        .split_once('-')
        .map(|(_, rest)| rest.trim_end_matches(".ndjson"))
        .unwrap_or_default();
    let meta = format!(
        "filename {},batch_id {},sha256 {}",
        b64(&name),
        b64(batch_id),
        b64(sha256)
    );
    let sent = client
        .post(format!("{base}/api/v1/uploads"))
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", length)
        .header("Upload-Metadata", meta)
        .timeout(STALL)
        .send()
        .await
        .map_err(|e| Step::Net(describe(&e, base)))?;
    let status = sent.status();
    if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
        return Ok(None);
    }
    if status != StatusCode::CREATED {
        let body = sent.bytes().await.unwrap_or_default();
        return Err(Step::Answer(classify_answer(status, &body, base)));
    }
    let location = sent
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Step::Answer(Outcome::Stop(format!(
                "{base} created an upload without a Location"
            )))
        })?;
    let url = if location.starts_with("http") {
        location.to_string()
    } else {
        format!("{base}{location}")
    };
    Ok(Some(Resume {
        url,
        length,
        raw,
        sha256: sha256.to_string(),
        offset: 0,
    }))
}

/// The server's offset; `None` when the upload is gone there.
async fn head(client: &reqwest::Client, url: &str, token: &str) -> Result<Option<u64>, String> {
    let resp = client
        .head(url)
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
        .timeout(STALL)
        .send()
        .await
        .map_err(|e| describe(&e, url))?;
    match resp.status() {
        StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
        s if s.is_success() => offset_of(&resp)
            .map(Some)
            .ok_or_else(|| format!("{url} answered without Upload-Offset")),
        s => Err(format!(
            "{url} answered {s} when asked how far the upload is"
        )),
    }
}

/// All bytes are there: the server stores the batch (a task of its own there); asks for
/// the receipt until it comes.
async fn finish(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    server: &str,
    progress: &ProgressBar,
) -> Result<Outcome, Step> {
    progress.set_message("stored by the server…");
    let resp = client
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .map_err(|e| Step::Net(describe(&e, server)))?;
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    Ok(classify_answer(status, &body, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gunzip(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_batch_replaced_since_is_compressed_again() {
        let dir = std::env::temp_dir().join(format!(
            "ctdata-resume-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let batch = dir.join("ranger-07-b.ndjson");
        std::fs::write(&batch, b"{\"first\":1}\n").unwrap();
        let (_, first) = compressed(&batch).unwrap();
        assert_eq!(gunzip(&gz_path(&batch)), b"{\"first\":1}\n");
        // Unchanged: the same .gz again.
        assert_eq!(compressed(&batch).unwrap().1, first);

        // Re-docked: other content, another size.
        std::fs::write(&batch, b"{\"second\":22}\n").unwrap();
        let (_, second) = compressed(&batch).unwrap();
        assert_ne!(second, first);
        assert_eq!(gunzip(&gz_path(&batch)), b"{\"second\":22}\n");

        // Same size, other content: the modification time tells.
        std::fs::write(&batch, b"{\"second\":33}\n").unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&batch)
            .unwrap()
            .set_modified(later)
            .unwrap();
        compressed(&batch).unwrap();
        assert_eq!(gunzip(&gz_path(&batch)), b"{\"second\":33}\n");

        forget(&batch);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("ranger-07-b.ndjson")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
