//! `POST /api/v1/batches`: a device delivers one batch file in the request body.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::DeviceAuth;
use super::resumable::spool_full;
use super::{ApiError, AppState, ErrorBody};
use crate::deliver::{Filing, Origin};
use crate::ingest::{Receipt, Status};
use crate::layout::replica_stamp;
use crate::types::{Channel, RejectionKind};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_batch))
}

/// Deliver one batch file (CTData JSON or NDJSON, CSV, GeoJSON, a CyberTracker upload;
/// gzip or deflate allowed).
#[utoipa::path(
    post,
    path = "/api/v1/batches",
    tag = "devices",
    request_body(content = String, description = "The batch file as it is", content_type = "application/octet-stream"),
    params(
        ("X-CTData-Relay-For" = Option<String>, Header, description = "Send on sync: the device that recorded a file that names no device itself (a handheld's CSV or GeoJSON docked at this station); the sending device must be allowed to relay for it"),
    ),
    responses(
        (status = 201, description = "Stored", body = Receipt),
        (status = 200, description = "The identical batch was stored before: nothing added", body = Receipt),
        (status = 401, description = "No or wrong device token", body = ErrorBody),
        (status = 403, description = "Revoked device, or a batch naming another device that this device may not relay for", body = ErrorBody),
        (status = 409, description = "Same batch id, other content", body = Receipt),
        (status = 408, description = "The body stalled, or arrived slower than http.min_body_bytes_per_sec", body = ErrorBody),
        (status = 413, description = "Too large, also once inflated", body = ErrorBody),
        (status = 415, description = "Unknown format or Content-Encoding", body = ErrorBody),
        (status = 422, description = "Invalid rows: the reason names line and field", body = Receipt),
        (status = 507, description = "The device's unfinished uploads would pass http.max_spool_bytes_per_device", body = ErrorBody),
        (status = 503, description = "The database is unavailable or full: nothing was stored; send it again after Retry-After", body = ErrorBody),
    ),
    security(("device_token" = []), ("device_basic" = []))
)]
async fn post_batch(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    check_encoding(&headers)?;
    let relay_for = relay_header(&headers)?;
    let slot = state.uploads.acquire(&device).await?;
    let deliverer = state.deliverer();
    let claim = format!("{}-upload", replica_stamp());
    let spool = deliverer.layout.incoming(&device).join(&claim);
    // Removed if this request ends before the body is handed over (an error, or the
    // client gone and this future dropped with its connection).
    let guard = SpoolGuard(Some(spool.clone()));
    // Locked from its creation to the end of its store: the sweep leaves it alone.
    let held = spool_body(&state, &device, &headers, body, &spool).await?;
    // The store runs in a task of its own: a client that goes away while a received
    // body is being stored does not stop it (its retry is then a duplicate and gets the
    // same receipt), and nothing is left behind in `.incoming/` either way.
    guard.disarm();
    // It keeps the upload slot until done, so a device resending while its earlier
    // sends are still being stored waits: at most `http.max_uploads_per_device` bodies
    // of one device on disk.
    let store = tokio::spawn(async move {
        let _slot = slot;
        let _held = held;
        deliver_upload(
            &state,
            &device,
            &spool,
            "upload".into(),
            format!("http/{claim}"),
            relay_for,
        )
        .await
    });
    let receipt = store.await.map_err(anyhow::Error::from)??;
    Ok((status_for(&receipt), Json(receipt)))
}

/// The device named by the relay header (a docked handheld's CSV or GeoJSON, which
/// names no device itself), if given.
fn relay_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(crate::relay::HEADER) else {
        return Ok(None);
    };
    let name = value.to_str().unwrap_or("?").trim();
    match name.parse::<ctdata_batch::DeviceName>() {
        Ok(_) => Ok(Some(name.to_string())),
        Err(e) => Err(ApiError::BadRequest(format!(
            "{}: {e}",
            crate::relay::HEADER
        ))),
    }
}

/// Delivers a fully received upload (a POST body or a finished resumable upload) as
/// `sender`'s, or as the device it relays for (named by the file, or by `relay_for`
/// for a file that names none), and records the relay after the commit.
/// Undecided, the file is not kept: its sender gets no answer and sends it again.
pub(super) async fn deliver_upload(
    state: &AppState,
    sender: &str,
    file: &std::path::Path,
    file_name: String,
    claim: String,
    relay_for: Option<String>,
) -> Result<Receipt, ApiError> {
    let relayed = match relayed_device(state, sender, file, relay_for).await {
        Ok(r) => r,
        Err(e) => {
            let _ = tokio::fs::remove_file(file).await;
            return Err(e);
        }
    };
    let origin = Origin {
        channel: Channel::Http,
        file_name,
        device: Some(relayed.clone().unwrap_or_else(|| sender.to_string())),
        claim: Some(claim),
        filing: Filing::DropDir,
        relayed_by: None,
    };
    let mut receipt = match state.deliverer().deliver(file, &origin).await {
        Ok(receipt) => receipt,
        Err(e) => {
            let _ = tokio::fs::remove_file(file).await;
            return Err(ApiError::storing(e));
        }
    };
    if let (Some(_), Some(batch_id), false) = (
        &relayed,
        receipt.batch_id,
        receipt.status == Status::Rejected,
    ) {
        // After the batch's commit and before the answer: a failure here answers 5xx,
        // the sender sends again, and the duplicate records it then.
        let db = &state.ingestor.db;
        db.mark_relayed(batch_id, sender).await?;
        receipt.relayed_by = db.relayed_by(batch_id).await?;
    }
    Ok(receipt)
}

/// Send on sync: a device with a relay right (`device add NAME --relay-for …`) may
/// deliver a batch that names another device; it is then stored as that device's.
/// Returns that device, or None for the sender's own batches (and for files whose
/// device the ingest decides, such as CSV). A batch naming a device the sender may
/// not relay for is refused here with 403. `named`: the device the relay header names
/// (a file that names none itself); a file that names another is then refused by the
/// ingest as a device mismatch.
async fn relayed_device(
    state: &AppState,
    sender: &str,
    spool: &std::path::Path,
    named: Option<String>,
) -> Result<Option<String>, ApiError> {
    if let Some(named) = named.filter(|n| !n.eq_ignore_ascii_case(sender)) {
        return match state.ingestor.db.relay_for(sender).await? {
            Some(rule) if crate::relay::covers(&rule, &named) => Ok(Some(named)),
            rule => Err(ApiError::Forbidden(crate::relay::refusal(
                sender,
                rule.as_deref(),
                &named,
            ))),
        };
    }
    let Some(rule) = state.ingestor.db.relay_for(sender).await? else {
        return Ok(None);
    };
    let (path, limits) = (spool.to_path_buf(), state.ingestor.limits());
    let scanned = tokio::task::spawn_blocking(move || ctdata_batch::scan(&path, &limits))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    // A file that cannot be read is the ingest's to refuse, with its reason.
    let Some(claimed) = scanned.ok().and_then(|s| s.device_id) else {
        return Ok(None);
    };
    if claimed.eq_ignore_ascii_case(sender) {
        return Ok(None);
    }
    if crate::relay::covers(&rule, &claimed) {
        return Ok(Some(claimed));
    }
    Err(ApiError::Forbidden(crate::relay::refusal(
        sender,
        Some(&rule),
        &claimed,
    )))
}

/// Deletes a spooled body when dropped, unless disarmed.
struct SpoolGuard(Option<std::path::PathBuf>);

impl SpoolGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// 201 stored, 200 stored before; a refused batch by why it was refused.
pub(super) fn status_for(r: &Receipt) -> StatusCode {
    use ctdata_batch::RejectKind::{TooLarge, UnknownFormat};
    let kind = r
        .kind
        .as_deref()
        .and_then(|k| k.parse::<RejectionKind>().ok());
    match (r.status, kind) {
        (Status::Ingested, _) => StatusCode::CREATED,
        (Status::Duplicate, _) => StatusCode::OK,
        (Status::Rejected, Some(RejectionKind::Conflict)) => StatusCode::CONFLICT,
        (Status::Rejected, Some(RejectionKind::DeviceMismatch)) => StatusCode::FORBIDDEN,
        (Status::Rejected, Some(RejectionKind::Batch(TooLarge))) => StatusCode::PAYLOAD_TOO_LARGE,
        (Status::Rejected, Some(RejectionKind::Batch(UnknownFormat))) => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        (Status::Rejected, _) => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// The body is kept as sent: the batch reader recognises gzip, zlib and raw deflate by
/// content and inflates them within the configured size and ratio limits. `deflate` is
/// what CyberTracker's HTTPZ protocol sends; senders disagree on whether it is zlib
/// wrapped (RFC 9110) or raw, so both are read.
fn check_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("identity") | Some("gzip") | Some("deflate") => Ok(()),
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {other} is not supported: send gzip, deflate or identity"
        ))),
    }
}

/// Bodies up to this size are gathered in memory before they are written.
const HELD_BODY_BYTES: usize = 256 * 1024;

/// Creates `spool` and takes its lock (`flock`): while the lock is held, the sweep of
/// orphans (what a crash left, see `resumable::sweep`) does not take it for one, on any
/// server sharing the folder. Returns the file and a handle that holds the lock.
fn create_spool(spool: &std::path::Path) -> std::io::Result<(std::fs::File, std::fs::File)> {
    std::fs::create_dir_all(spool.parent().expect("spool has a folder"))?;
    let file = std::fs::File::create(spool)?;
    let lock = file.try_clone()?;
    // Just created: nobody else holds it; should it fail, the sweep's grace still
    // spares a file being written.
    let _ = lock.try_lock();
    Ok((file, lock))
}

/// Streams the body to `spool`, refusing it as soon as it passes the limit. Returns the
/// handle that holds the spool's lock.
async fn spool_body(
    state: &AppState,
    device: &str,
    headers: &HeaderMap,
    body: Body,
    spool: &std::path::Path,
) -> Result<std::fs::File, ApiError> {
    let limit = state.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge(limit));
    }
    // Space this device already holds in unfinished uploads: this body may add at most
    // what is left of its share.
    let (drop_dir, dev) = (state.drop_dir.clone(), device.to_string());
    let used = tokio::task::spawn_blocking(move || {
        super::resumable::spool_in_use(&crate::layout::Layout::new(&drop_dir), &dev)
    })
    .await
    .map_err(anyhow::Error::from)?;
    let cap = state.max_spool_per_device;
    let room = cap.saturating_sub(used);
    if declared.is_some_and(|n| n > room) {
        return Err(spool_full(used, declared.unwrap_or(0), cap));
    }
    // A small body (most batches are a few KB) is gathered in memory and written with
    // one blocking call; a large one goes to the file as it arrives.
    let mut held: Vec<u8> = Vec::new();
    let mut file: Option<tokio::io::BufWriter<tokio::fs::File>> = None;
    let mut lock = None;
    let mut written = 0u64;
    let mut stream = body.into_data_stream();
    let idle = state.body_idle_timeout;
    loop {
        let next = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| ApiError::BodyTimeout(idle.as_secs()))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| match super::paced::TooSlow::find(&e) {
            Some(slow) => ApiError::SlowBody(slow.to_string()),
            None => ApiError::BadRequest(format!("reading the request body failed: {e}")),
        })?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(ApiError::TooLarge(limit));
        }
        if written > room {
            return Err(spool_full(used, written, cap));
        }
        match &mut file {
            Some(f) => f.write_all(&chunk).await?,
            None if written as usize <= HELD_BODY_BYTES => held.extend_from_slice(&chunk),
            None => {
                let path = spool.to_path_buf();
                let (created, locked) = tokio::task::spawn_blocking(move || create_spool(&path))
                    .await
                    .map_err(anyhow::Error::from)??;
                lock = Some(locked);
                let mut f = tokio::io::BufWriter::new(tokio::fs::File::from_std(created));
                f.write_all(&held).await?;
                f.write_all(&chunk).await?;
                held = Vec::new();
                file = Some(f);
            }
        }
    }
    match (file, lock) {
        (Some(mut f), Some(lock)) => {
            f.flush().await?;
            Ok(lock)
        }
        _ => {
            let spool = spool.to_path_buf();
            let lock = tokio::task::spawn_blocking(move || {
                use std::io::Write as _;
                let (mut f, lock) = create_spool(&spool)?;
                f.write_all(&held)?;
                std::io::Result::Ok(lock)
            })
            .await
            .map_err(anyhow::Error::from)??;
            Ok(lock)
        }
    }
}
