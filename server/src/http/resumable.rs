//! Resumable uploads under `/api/v1/uploads`: the tus 1.0.0 protocol (core, creation,
//! checksum, expiration, termination) with our own handlers, for large batches over
//! links that drop every few seconds.
//!
//! - `POST /api/v1/uploads` with `Upload-Length` (and `Upload-Metadata`: `filename`,
//!   `batch_id`, `sha256` of the whole file, each base64) creates an upload: 201 and its
//!   `Location`.
//! - `HEAD /api/v1/uploads/{id}` answers `Upload-Offset`: the bytes the server holds,
//!   written to disk.
//! - `PATCH /api/v1/uploads/{id}` (`application/offset+octet-stream`, `Upload-Offset`
//!   equal to the server's) appends. A `PATCH` cut short keeps what arrived, unless it
//!   carried `Upload-Checksum` (then it is all or nothing, 460 on a mismatch). The
//!   `PATCH` that completes the upload checks the whole file's `sha256`, hands it to the
//!   delivery pipeline every channel uses, and answers with the receipt like
//!   `POST /api/v1/batches` (201, 200, 4xx).
//! - `GET /api/v1/uploads/{id}`: the receipt of a completed upload, so a client whose
//!   last answer was lost gets it (stored by a task of its own: a cut connection never
//!   interrupts a store). 404 while the upload is not complete.
//! - `DELETE` ends an upload; uploads not finished within `http.upload_expiry_secs` are
//!   deleted by a sweep.
//!
//! Files: `.uploads/<device>/<id>.part` (the bytes so far), `<id>.json` (its length,
//! metadata, expiry and, once stored, the receipt). They survive a restart.
//!
//! The part's lock (`flock`) is held by the `PATCH` writing it and by the store of a
//! complete upload, so servers sharing one folder (replicas) never append to one part
//! at once (the second `PATCH` gets 409 `upload_locked`) nor store it twice; and the
//! sweep (at start, every minute) removes what a crash left that no live request owns.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::DeviceAuth;
use super::{ApiError, AppState, ErrorBody};
use crate::ingest::Receipt;
use crate::layout::{self, Layout};

const TUS_VERSION: &str = "1.0.0";
const CHECKSUM_MISMATCH: u16 = 460;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_upload, upload_options))
        .routes(routes!(upload_offset, append, upload_receipt, end_upload))
}

/// What is kept beside an upload's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    device: String,
    length: u64,
    file_name: String,
    batch_id: Option<String>,
    /// SHA-256 of the whole file (hex), checked before it is stored.
    sha256: Option<String>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// Set once the bytes are complete and handed to the delivery pipeline.
    complete: bool,
    receipt: Option<Receipt>,
}

/// Uploads in progress: one writer at a time per upload, and a newer `PATCH` (the
/// client resuming after a cut the server has not noticed yet) takes over from an older
/// one at once instead of waiting for it to time out.
pub struct Registry {
    expiry: Duration,
    active: Mutex<HashMap<String, Arc<Active>>>,
}

#[derive(Default)]
struct Active {
    writer: tokio::sync::Mutex<()>,
    /// Bumped by each new `PATCH`: an older one stops at its next chunk or wake-up.
    generation: AtomicU64,
    takeover: tokio::sync::Notify,
    /// One delivery at a time.
    delivering: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn new(expiry: Duration) -> Registry {
        Registry {
            expiry,
            active: Mutex::default(),
        }
    }

    fn entry(&self, id: &str) -> Arc<Active> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.len() > 4096 {
            active.retain(|_, a| Arc::strong_count(a) > 1);
        }
        active.entry(id.to_string()).or_default().clone()
    }
}

fn meta_path(layout: &Layout, device: &str, id: &str) -> PathBuf {
    layout.uploads(device).join(format!("{id}.json"))
}

fn part_path(layout: &Layout, device: &str, id: &str) -> PathBuf {
    layout.uploads(device).join(format!("{id}.part"))
}

fn read_meta(layout: &Layout, device: &str, id: &str) -> Result<Meta, ApiError> {
    let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let path = meta_path(layout, device, id);
    let bytes = match std::fs::read(&path) {
        Ok(b) if valid => b,
        Ok(_) => return Err(ApiError::NotFound(format!("no upload {id}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound(format!(
                "no upload {id} for this device (finished and expired, or never created): \
                 create a new one"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let meta: Meta = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?;
    if meta.expires_at < Utc::now() && meta.receipt.is_none() {
        remove_upload(layout, device, id);
        return Err(ApiError::Gone(format!(
            "upload {id} expired at {}: create a new one",
            meta.expires_at
        )));
    }
    Ok(meta)
}

fn write_meta(layout: &Layout, id: &str, meta: &Meta) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    layout::write_atomic(&layout.uploads(&meta.device), &format!("{id}.json"), &bytes)
}

fn remove_upload(layout: &Layout, device: &str, id: &str) {
    let _ = std::fs::remove_file(part_path(layout, device, id));
    let _ = std::fs::remove_file(meta_path(layout, device, id));
}

/// Bytes the server holds for `device`'s unfinished uploads: bodies being received under
/// `.incoming/`, and every unfinished resumable upload at its full declared length (the
/// space it will need).
pub(crate) fn spool_in_use(layout: &Layout, device: &str) -> u64 {
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir(layout.incoming(device)) {
        total += dir
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>();
    }
    if let Ok(dir) = std::fs::read_dir(layout.uploads(device)) {
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "json") {
                let meta = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
                if let Some(m) = meta.filter(|m| m.receipt.is_none()) {
                    total += m.length;
                }
            }
        }
    }
    total
}

/// A file younger than this is never taken for an orphan: a spool or part is locked by
/// its owner a moment after its name appears, and a `.tmp` is renamed within
/// milliseconds.
const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// Opens `path` and takes its lock (`flock`, shared by every server on the folder)
/// without waiting: `None` while another request, or another server sharing the
/// folder, holds it.
fn try_lock(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new().read(true).open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Removes `path` if no live request of any server owns it: its owner holds its lock
/// (a crashed server's locks went with it). With `grace`, a file changed within
/// [`ORPHAN_GRACE`] stays too (its owner may be about to lock it). Returns whether it
/// went.
fn remove_if_orphan(path: &Path, grace: bool) -> bool {
    if grace {
        let young = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().map_or(true, |age| age < ORPHAN_GRACE))
            .unwrap_or(true);
        if young {
            return false;
        }
    }
    match try_lock(path) {
        // Removed while locked: nobody can take it over in between.
        Ok(Some(_held)) => std::fs::remove_file(path).is_ok(),
        _ => false,
    }
}

/// Deletes expired uploads of every device (finished ones too: their receipt has been
/// kept long enough for a client to come back for it), and what a crash (kill -9 while
/// a finished upload or a POST body was being stored) left behind that no live upload
/// owns: the stores' hard links beside the uploads, parts without their `.json`,
/// temporary files, and bodies in `.incoming/` no request of any server holds.
/// Returns how many uploads and orphans went.
pub fn sweep(drop_dir: &Path) -> usize {
    let layout = Layout::new(drop_dir);
    let now = Utc::now();
    let mut swept = 0;
    if let Ok(devices) = std::fs::read_dir(layout.folder(layout::INCOMING)) {
        for device in devices.flatten() {
            let Ok(files) = std::fs::read_dir(device.path()) else {
                continue;
            };
            for file in files.flatten() {
                swept += usize::from(remove_if_orphan(&file.path(), true));
            }
        }
    }
    let Ok(devices) = std::fs::read_dir(layout.folder(layout::UPLOADS)) else {
        return swept;
    };
    for device in devices.flatten() {
        let Ok(files) = std::fs::read_dir(device.path()) else {
            continue;
        };
        let name = device.file_name().to_string_lossy().to_string();
        for file in files.flatten() {
            let path = file.path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            match path.extension().and_then(|s| s.to_str()) {
                Some("json") => {
                    let meta = std::fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
                    if meta.is_none_or(|m| m.expires_at < now) {
                        remove_upload(&layout, &name, stem);
                        swept += 1;
                    }
                }
                // A part whose upload is gone (or not yet written: the grace).
                Some("part") if meta_path(&layout, &name, stem).exists() => {}
                Some("part") => swept += usize::from(remove_if_orphan(&path, true)),
                Some("tmp") => swept += usize::from(remove_if_orphan(&path, true)),
                // A store's hard link (`<stamp>-upload-<id>`): it shares the part's
                // lock, which the store holds from before the link was made.
                _ => swept += usize::from(remove_if_orphan(&path, false)),
            }
        }
    }
    swept
}

fn tus_headers(headers: &mut HeaderMap) {
    headers.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn http_date(t: DateTime<Utc>) -> HeaderValue {
    HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers
        .get("tus-resumable")
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some(TUS_VERSION) => Ok(()),
        Some(other) => Err(ApiError::Upload(
            StatusCode::PRECONDITION_FAILED,
            format!("Tus-Resumable {other} is not supported: this server speaks {TUS_VERSION}"),
        )),
    }
}

fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("{name} must be a whole number of bytes"))
                })
        })
        .transpose()
}

/// `Upload-Metadata`: `key base64,key base64`.
fn metadata(headers: &HeaderMap) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    let Some(raw) = headers.get("upload-metadata") else {
        return Ok(out);
    };
    let raw = raw
        .to_str()
        .map_err(|_| ApiError::BadRequest("Upload-Metadata is not ASCII".into()))?;
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| {
                ApiError::BadRequest(format!("Upload-Metadata {key}: the value is not base64"))
            })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            ApiError::BadRequest(format!("Upload-Metadata {key}: the value is not UTF-8"))
        })?;
        out.insert(key.to_string(), text);
    }
    Ok(out)
}

/// What the server supports (tus discovery).
#[utoipa::path(options, path = "/api/v1/uploads", tag = "devices",
    responses((status = 204, description = "Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm")))]
async fn upload_options(State(state): State<AppState>) -> Response {
    let mut headers = HeaderMap::new();
    tus_headers(&mut headers);
    headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    headers.insert(
        "tus-extension",
        HeaderValue::from_static("creation,checksum,expiration,termination"),
    );
    headers.insert("tus-max-size", HeaderValue::from(state.max_body_bytes));
    headers.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static("sha1,sha256"),
    );
    (StatusCode::NO_CONTENT, headers).into_response()
}

/// Start a resumable upload of `Upload-Length` bytes.
#[utoipa::path(post, path = "/api/v1/uploads", tag = "devices",
    params(
        ("Upload-Length" = u64, Header, description = "Size of the whole file in bytes"),
        ("Upload-Metadata" = Option<String>, Header, description = "filename, batch_id, sha256 (hex of the whole file): `key base64` pairs, comma separated"),
    ),
    responses(
        (status = 201, description = "Created: Location names the upload"),
        (status = 400, description = "Upload-Length missing or not a number", body = ErrorBody),
        (status = 413, description = "Larger than http.max_body_bytes", body = ErrorBody),
        (status = 507, description = "The device's unfinished uploads would pass http.max_spool_bytes_per_device", body = ErrorBody),
    ),
    security(("device_token" = []), ("device_basic" = [])))]
async fn create_upload(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let length = number(&headers, "upload-length")?.ok_or_else(|| {
        ApiError::BadRequest(
            "Upload-Length is required (Upload-Defer-Length is not supported)".into(),
        )
    })?;
    if length > state.max_body_bytes {
        return Err(ApiError::TooLarge(state.max_body_bytes));
    }
    let meta = metadata(&headers)?;
    let sha256 = meta.get("sha256").map(|s| s.to_ascii_lowercase());
    if sha256
        .as_ref()
        .is_some_and(|s| s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::BadRequest(
            "Upload-Metadata sha256 must be 64 hex digits".into(),
        ));
    }
    let layout = Layout::new(&state.drop_dir);
    let (cap, dev) = (state.max_spool_per_device, device.clone());
    let drop_dir = state.drop_dir.clone();
    let used = tokio::task::spawn_blocking(move || {
        sweep(&drop_dir);
        spool_in_use(&Layout::new(&drop_dir), &dev)
    })
    .await
    .map_err(anyhow::Error::from)?;
    if used.saturating_add(length) > cap {
        return Err(spool_full(used, length, cap));
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let now = Utc::now();
    let expires_at = now + chrono::Duration::from_std(state.resumable.expiry).unwrap_or_default();
    let m = Meta {
        device: device.clone(),
        length,
        file_name: meta
            .get("filename")
            .cloned()
            .unwrap_or_else(|| "upload".into()),
        batch_id: meta.get("batch_id").cloned(),
        sha256,
        created_at: now,
        expires_at,
        complete: false,
        receipt: None,
    };
    let part = part_path(&layout, &device, &id);
    let key = id.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(layout.uploads(&m.device))?;
        std::fs::File::create(&part)?.sync_all()?;
        write_meta(&layout, &key, &m)
    })
    .await
    .map_err(anyhow::Error::from)??;
    tracing::info!(device, id, length, "resumable upload created");
    let mut out = HeaderMap::new();
    tus_headers(&mut out);
    out.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/api/v1/uploads/{id}")).expect("a hex id"),
    );
    out.insert("upload-expires", http_date(expires_at));
    out.insert("upload-offset", HeaderValue::from(0u64));
    Ok((StatusCode::CREATED, out).into_response())
}

pub(super) fn spool_full(used: u64, length: u64, cap: u64) -> ApiError {
    ApiError::SpoolFull(format!(
        "this device already has {used} bytes in unfinished uploads; {length} more would pass \
         the server's limit of {cap} bytes (http.max_spool_bytes_per_device): finish or wait \
         for the uploads in progress"
    ))
}

/// Where a resumable upload stands: the head of every answer about it.
fn offset_headers(meta: &Meta, offset: u64) -> HeaderMap {
    let mut out = HeaderMap::new();
    tus_headers(&mut out);
    out.insert("upload-offset", HeaderValue::from(offset));
    out.insert("upload-length", HeaderValue::from(meta.length));
    out.insert("upload-expires", http_date(meta.expires_at));
    out
}

/// Bytes of the upload on disk (all of them once it is complete).
fn held(layout: &Layout, id: &str, meta: &Meta) -> std::io::Result<u64> {
    if meta.complete {
        return Ok(meta.length);
    }
    match std::fs::metadata(part_path(layout, &meta.device, id)) {
        Ok(m) => Ok(m.len()),
        Err(e) => Err(e),
    }
}

/// How many bytes the server holds: resume from `Upload-Offset`.
#[utoipa::path(head, path = "/api/v1/uploads/{id}", tag = "devices",
    params(("id" = String, Path, description = "From the Location of the creation")),
    responses(
        (status = 200, description = "Upload-Offset and Upload-Length"),
        (status = 404, description = "No such upload for this device"),
        (status = 410, description = "Expired"),
    ),
    security(("device_token" = []), ("device_basic" = [])))]
async fn upload_offset(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let layout = Layout::new(&state.drop_dir);
    let meta = read_meta(&layout, &device, &id)?;
    let offset = held(&layout, &id, &meta)?;
    Ok((StatusCode::OK, offset_headers(&meta, offset)).into_response())
}

/// What a cut, a stall or a newer `PATCH` left of one.
enum Stopped {
    Ended,
    Failed(ApiError),
}

/// Append bytes at `Upload-Offset`; the one that completes the upload answers with the
/// receipt.
#[utoipa::path(patch, path = "/api/v1/uploads/{id}", tag = "devices",
    params(
        ("id" = String, Path, description = "From the Location of the creation"),
        ("Upload-Offset" = u64, Header, description = "Must equal the server's offset (HEAD)"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha1 BASE64` or `sha256 BASE64` of this request's body: all or nothing"),
    ),
    request_body(content = String, description = "The next bytes", content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Appended; Upload-Offset is the new offset"),
        (status = 201, description = "Complete and stored", body = Receipt),
        (status = 200, description = "Complete; the identical batch was stored before", body = Receipt),
        (status = 409, description = "Upload-Offset is not the server's: HEAD, then resume", body = ErrorBody),
        (status = 415, description = "Not application/offset+octet-stream", body = ErrorBody),
        (status = 422, description = "Complete, and refused: the reason names line and field", body = Receipt),
        (status = 460, description = "Checksum mismatch: nothing of this request was kept", body = ErrorBody),
    ),
    security(("device_token" = []), ("device_basic" = [])))]
async fn append(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if kind != "application/offset+octet-stream" {
        return Err(ApiError::UnsupportedMediaType(format!(
            "a PATCH to an upload must be application/offset+octet-stream, not {kind:?}"
        )));
    }
    let offset = number(&headers, "upload-offset")?
        .ok_or_else(|| ApiError::BadRequest("Upload-Offset is required".into()))?;
    let checksum = checksum(&headers)?;
    let layout = Layout::new(&state.drop_dir);
    let active = state.resumable.entry(&id);
    // A newer request takes over: the older one (its client cut off, the server not yet
    // told) stops at once.
    let generation = active.generation.fetch_add(1, Ordering::SeqCst) + 1;
    let _writer = loop {
        active.takeover.notify_waiters();
        match tokio::time::timeout(Duration::from_millis(200), active.writer.lock()).await {
            Ok(guard) => break guard,
            Err(_) if active.generation.load(Ordering::SeqCst) != generation => {
                return Err(ApiError::Conflict(
                    "a newer request took over this upload".into(),
                ))
            }
            Err(_) => continue,
        }
    };
    let _slot = state.uploads.acquire(&device).await?;
    let mut meta = read_meta(&layout, &device, &id)?;
    // Across servers sharing the folder (replicas), the part's lock: a PATCH another
    // server is still receiving keeps this one off (its client resumes after a HEAD).
    let mut _locked = None;
    if !meta.complete {
        match try_lock(&part_path(&layout, &device, &id)) {
            Ok(Some(lock)) => _locked = Some(lock),
            Ok(None) => {
                let current = held(&layout, &id, &meta)?;
                let mut out = offset_headers(&meta, current);
                out.remove(header::CONTENT_LENGTH);
                let body = Json(ErrorBody {
                    error: "upload_locked".into(),
                    message: format!(
                        "upload {id} is being written by another request (on another server \
                         sharing this folder): HEAD, then resume from its offset"
                    ),
                });
                return Ok((StatusCode::CONFLICT, out, body).into_response());
            }
            // Completed and stored by another server meanwhile: its meta says so.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // What it holds now, the lock ours.
        meta = read_meta(&layout, &device, &id)?;
    }
    let current = held(&layout, &id, &meta)?;
    if offset != current {
        let mut out = offset_headers(&meta, current);
        let body = Json(ErrorBody {
            error: "upload_mismatch".into(),
            message: format!(
                "Upload-Offset {offset} is not where this upload stands ({current} bytes held): \
                 resume from {current}"
            ),
        });
        out.remove(header::CONTENT_LENGTH);
        return Ok((StatusCode::CONFLICT, out, body).into_response());
    }
    if !meta.complete {
        let part = part_path(&layout, &device, &id);
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&part)
            .await?;
        let mut written = 0u64;
        let mut hash = checksum.as_ref().map(|(algo, _)| Hasher::new(*algo));
        let mut stream = body.into_data_stream();
        let idle = state.body_idle_timeout;
        let room = meta.length - current;
        let stopped = loop {
            let next = tokio::select! {
                n = tokio::time::timeout(idle, stream.next()) => n,
                () = active.takeover.notified() => break Stopped::Failed(ApiError::Conflict(
                    "a newer request took over this upload".into())),
            };
            if active.generation.load(Ordering::SeqCst) != generation {
                break Stopped::Failed(ApiError::Conflict(
                    "a newer request took over this upload".into(),
                ));
            }
            let chunk = match next {
                Err(_) => break Stopped::Failed(ApiError::BodyTimeout(idle.as_secs())),
                Ok(None) => break Stopped::Ended,
                Ok(Some(Err(e))) => {
                    break Stopped::Failed(ApiError::BadRequest(format!(
                        "reading the request body failed: {e}"
                    )))
                }
                Ok(Some(Ok(c))) => c,
            };
            if written + chunk.len() as u64 > room {
                break Stopped::Failed(ApiError::Upload(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "this PATCH passes Upload-Length {}: at most {room} more bytes",
                        meta.length
                    ),
                ));
            }
            if let Some(h) = &mut hash {
                h.update(&chunk);
            }
            if let Err(e) = file.write_all(&chunk).await {
                break Stopped::Failed(e.into());
            }
            written += chunk.len() as u64;
        };
        let mismatch = matches!(stopped, Stopped::Ended)
            && match (&checksum, hash) {
                (Some((_, want)), Some(h)) => h.finish() != *want,
                _ => false,
            };
        let keep = match (&stopped, &checksum) {
            _ if mismatch => {
                drop(file);
                truncate(&part, current).await?;
                return Err(ApiError::Upload(
                    StatusCode::from_u16(CHECKSUM_MISMATCH).expect("a valid status"),
                    "Upload-Checksum does not match the bytes received: nothing of this request \
                     was kept; send it again"
                        .into(),
                ));
            }
            // A checksummed request is all or nothing; a plain one keeps what arrived.
            (Stopped::Failed(_), Some(_)) => false,
            _ => true,
        };
        if keep {
            file.flush().await?;
            file.sync_data().await?;
        } else {
            drop(file);
            truncate(&part, current).await?;
        }
        if let Stopped::Failed(e) = stopped {
            return Err(e);
        }
        let now_held = current + written;
        if now_held < meta.length {
            return Ok((StatusCode::NO_CONTENT, offset_headers(&meta, now_held)).into_response());
        }
        if let Some(want) = &meta.sha256 {
            let (p, want) = (part.clone(), want.clone());
            let got = tokio::task::spawn_blocking(move || sha256_file(&p))
                .await
                .map_err(anyhow::Error::from)??;
            if got != want {
                truncate(&part, 0).await?;
                return Err(ApiError::Upload(
                    StatusCode::from_u16(CHECKSUM_MISMATCH).expect("a valid status"),
                    format!(
                        "the whole upload's SHA-256 is {got}, the metadata said {want}: the \
                         bytes were damaged on the way; the upload starts again from 0"
                    ),
                ));
            }
        }
        meta.complete = true;
        let m = meta.clone();
        let l = layout.clone();
        let key = id.clone();
        tokio::task::spawn_blocking(move || write_meta(&l, &key, &m))
            .await
            .map_err(anyhow::Error::from)??;
    }
    drop(_locked);
    drop(_writer);
    let receipt = stored(&state, &active, &id, meta.clone()).await?;
    let mut out = offset_headers(&meta, meta.length);
    out.remove(header::CONTENT_LENGTH);
    Ok((super::batches::status_for(&receipt), out, Json(receipt)).into_response())
}

/// The receipt of a complete upload (its last answer may have been lost on the way).
#[utoipa::path(get, path = "/api/v1/uploads/{id}", tag = "devices",
    params(("id" = String, Path, description = "From the Location of the creation")),
    responses(
        (status = 201, description = "Stored", body = Receipt),
        (status = 200, description = "The identical batch was stored before", body = Receipt),
        (status = 404, description = "No such upload, or not complete yet (HEAD says how far)", body = ErrorBody),
        (status = 422, description = "Refused: the reason names line and field", body = Receipt),
    ),
    security(("device_token" = []), ("device_basic" = [])))]
async fn upload_receipt(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let layout = Layout::new(&state.drop_dir);
    let meta = read_meta(&layout, &device, &id)?;
    if !meta.complete {
        let offset = held(&layout, &id, &meta)?;
        return Err(ApiError::NotFound(format!(
            "upload {id} is not complete: {offset} of {} bytes held",
            meta.length
        )));
    }
    let active = state.resumable.entry(&id);
    let receipt = stored(&state, &active, &id, meta).await?;
    Ok((super::batches::status_for(&receipt), Json(receipt)).into_response())
}

/// End an upload; its bytes are deleted.
#[utoipa::path(delete, path = "/api/v1/uploads/{id}", tag = "devices",
    params(("id" = String, Path, description = "From the Location of the creation")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such upload")),
    security(("device_token" = []), ("device_basic" = [])))]
async fn end_upload(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let layout = Layout::new(&state.drop_dir);
    let meta = read_meta(&layout, &device, &id)?;
    let active = state.resumable.entry(&id);
    active.generation.fetch_add(1, Ordering::SeqCst);
    active.takeover.notify_waiters();
    let _writer = active.writer.lock().await;
    let _delivering = active.delivering.lock().await;
    if meta.complete && meta.receipt.is_none() {
        return Err(ApiError::Conflict(
            "the upload is complete and being stored: ask for its receipt instead".into(),
        ));
    }
    remove_upload(&layout, &device, &id);
    let mut out = HeaderMap::new();
    tus_headers(&mut out);
    Ok((StatusCode::NO_CONTENT, out).into_response())
}

/// Hands a complete upload to the delivery pipeline once, in a task of its own: a client
/// that goes away mid-store does not stop the store, and its next request gets the
/// receipt. Undecided (the database down), the bytes stay and the next request tries
/// again.
async fn stored(
    state: &AppState,
    active: &Arc<Active>,
    id: &str,
    meta: Meta,
) -> Result<Receipt, ApiError> {
    let (state, active, id) = (state.clone(), active.clone(), id.to_string());
    let task = tokio::spawn(async move {
        let _one = active.delivering.lock().await;
        let layout = Layout::new(&state.drop_dir);
        let part = part_path(&layout, &meta.device, &id);
        // One store at a time across servers sharing the folder too: the part's lock,
        // held until the receipt is written. The hard link below shares it, so the
        // sweep knows a link of a live store from one a crash left.
        let p = part.clone();
        let _lock = tokio::task::spawn_blocking(move || {
            match std::fs::OpenOptions::new().read(true).open(&p) {
                Ok(f) => f.lock().map(|()| Some(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(anyhow::Error::from)??;
        let meta = read_meta(&layout, &meta.device, &id).unwrap_or(meta);
        if let Some(receipt) = meta.receipt {
            return Ok(receipt);
        }
        if _lock.is_none() {
            return Err(ApiError::Gone(format!(
                "the bytes of upload {id} are gone from the server: create a new upload"
            )));
        }
        // The pipeline moves the file it files away: hand it a copy's name of its own
        // (a hard link), so the part stays until the receipt is written.
        let handed = layout
            .uploads(&meta.device)
            .join(format!("{}-upload-{id}", layout::stamp()));
        let (p, h) = (part.clone(), handed.clone());
        tokio::task::spawn_blocking(move || std::fs::hard_link(&p, &h))
            .await
            .map_err(anyhow::Error::from)??;
        let receipt = super::batches::deliver_upload(
            &state,
            &meta.device,
            &handed,
            meta.file_name.clone(),
            format!("http/upload-{id}"),
            None,
        )
        .await?;
        let mut done = meta;
        done.receipt = Some(receipt.clone());
        let (l, key) = (layout.clone(), id.clone());
        tokio::task::spawn_blocking(move || {
            write_meta(&l, &key, &done)?;
            std::fs::remove_file(&part)
        })
        .await
        .map_err(anyhow::Error::from)??;
        tracing::info!(id, status = ?receipt.status, "resumable upload stored");
        Ok(receipt)
    });
    task.await.map_err(anyhow::Error::from)?
}

async fn truncate(path: &Path, len: u64) -> std::io::Result<()> {
    let f = tokio::fs::OpenOptions::new().write(true).open(path).await?;
    f.set_len(len).await?;
    f.sync_data().await
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    f.rewind()?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[derive(Clone, Copy)]
enum Algo {
    Sha1,
    Sha256,
}

enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(algo: Algo) -> Hasher {
        match algo {
            Algo::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// `Upload-Checksum: ALGO BASE64`.
fn checksum(headers: &HeaderMap) -> Result<Option<(Algo, Vec<u8>)>, ApiError> {
    let Some(raw) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let raw = raw.to_str().unwrap_or("");
    let (algo, value) = raw.split_once(' ').unwrap_or((raw, ""));
    let algo = match algo {
        "sha1" => Algo::Sha1,
        "sha256" => Algo::Sha256,
        other => {
            return Err(ApiError::BadRequest(format!(
                "Upload-Checksum algorithm {other:?} is not supported: use sha1 or sha256"
            )))
        }
    };
    let value = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| ApiError::BadRequest("Upload-Checksum: the value is not base64".into()))?;
    Ok(Some((algo, value)))
}
