//! The OpenRosa submission API, as ODK Collect, KoboCollect and the CyberTracker app's
//! ODK/KoBo connectors speak it: `HEAD`/`GET …/submission` answers 204 with the
//! OpenRosa headers, `POST …/submission` takes one multipart submission (the XML and
//! its attachments, perhaps split over several POSTs with `*isIncomplete*`).
//!
//! The phone is told `https://HOST/openrosa/key/TOKEN` (the token in the path, the way
//! ODK Central serves app users) or `https://HOST/openrosa` with the device name and
//! token as Basic credentials (over HTTPS only).
//!
//! A submission becomes a CTData batch (`crate::openrosa` maps it) that goes through
//! `Deliverer::deliver` like every channel; its attachments and raw XML go to the
//! attachment store first (fsynced), then the batch, the links and the submission row
//! are committed, and only then does the phone get its 201. Replies are never 200
//! (Collect takes a 200 for a captive portal).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures::StreamExt;

use super::{ApiError, AppState};
use crate::attachments::{StoreError, StoredAttachment};
use crate::db::{NewLink, NewSubmission};
use crate::deliver::{Filing, Origin};
use crate::ingest::Status;
use crate::layout::replica_stamp;
use crate::openrosa::{self, Submission};
use crate::types::{Channel, RejectionKind};

/// The part that holds the submission XML.
const XML_PART: &str = "xml_submission_file";
/// The link name of the raw XML among a submission's attachments.
pub const XML_LINK: &str = crate::db::OPENROSA_XML;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openrosa/key/{token}/submission", any(keyed))
        .route("/openrosa/submission", any(basic))
}

async fn keyed(State(state): State<AppState>, Path(token): Path<String>, req: Request) -> Response {
    handle(state, Some(token), req).await
}

async fn basic(State(state): State<AppState>, req: Request) -> Response {
    handle(state, None, req).await
}

async fn handle(state: AppState, token: Option<String>, req: Request) -> Response {
    let accept = state.openrosa.accept_content_length;
    let reply = match answer(&state, token, req).await {
        Ok((status, message)) => xml_reply(status, &message, accept),
        Err(e) => error_reply(e, accept),
    };
    debug_assert_ne!(reply.status(), StatusCode::OK);
    reply
}

async fn answer(
    state: &AppState,
    token: Option<String>,
    req: Request,
) -> Result<(StatusCode, String), ApiError> {
    if !state.openrosa.enabled {
        return Err(ApiError::NotFound(
            "OpenRosa submissions are switched off on this server (openrosa.enabled)".into(),
        ));
    }
    let (parts, body) = req.into_parts();
    if token.is_none() && !state.dashboard.secure_cookie {
        return Err(ApiError::Forbidden(
            "a device name and token are only taken over HTTPS: give the phone the server URL \
             http://HOST/openrosa/key/DEVICE_TOKEN instead, or switch on TLS"
                .into(),
        ));
    }
    let device = super::auth::openrosa_device(state, &parts, token).await?;
    match parts.method {
        Method::HEAD | Method::GET => Ok((StatusCode::NO_CONTENT, String::new())),
        Method::POST => {
            let _slot = state.uploads.acquire(&device).await?;
            let body = SharedBody::new(body);
            let result = submit(state, &device, &parts.headers, body.body()).await;
            if let Err(e) = &result {
                body.drain_after(e, &parts.headers, state.openrosa.max_submission_bytes)
                    .await;
            }
            result
        }
        other => Err(ApiError::BadRequest(format!(
            "{other} is not an OpenRosa submission request: use HEAD to check and POST to submit"
        ))),
    }
}

/// The request body, readable by the multipart parser and, once that gave up, by
/// [`SharedBody::drain_after`].
#[derive(Clone)]
struct SharedBody(Arc<Mutex<(BodyDataStream, bool)>>);

/// How long a refused POST's body is read on before the answer, at most.
const DRAIN_TIME: Duration = Duration::from_secs(10);

impl SharedBody {
    fn new(body: Body) -> SharedBody {
        SharedBody(Arc::new(Mutex::new((body.into_data_stream(), false))))
    }

    fn body(&self) -> Body {
        Body::from_stream(self.clone())
    }

    /// Reads and discards what is left of a refused POST's body (up to four times
    /// `limit` more bytes, for at most [`DRAIN_TIME`]), so a client still sending gets
    /// the answer rather than a reset connection: ODK Collect shows a broken pipe
    /// instead of the 413's message otherwise. Not for a body that stalled (408), nor
    /// when the client waits for `100 Continue` before sending anything.
    async fn drain_after(&self, e: &ApiError, headers: &HeaderMap, limit: u64) {
        let status = e.status();
        if !status.is_client_error() || status == StatusCode::REQUEST_TIMEOUT {
            return;
        }
        let waits_for_continue = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let budget = limit.saturating_mul(4);
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        // Nothing read yet: the client waits for a 100 Continue that would only make it
        // send what is refused, or declared more than would ever be drained.
        if !self.started() && (waits_for_continue || declared.is_some_and(|n| n > budget)) {
            return;
        }
        let mut rest = self.clone();
        let deadline = tokio::time::Instant::now() + DRAIN_TIME;
        let mut drained = 0u64;
        while drained <= budget {
            match tokio::time::timeout_at(deadline, rest.next()).await {
                Ok(Some(Ok(chunk))) => drained += chunk.len() as u64,
                Ok(Some(Err(_)) | None) => return,
                Err(_) => break,
            }
        }
        tracing::debug!(drained, "a refused OpenRosa POST still sending: closing");
    }

    /// Whether the body was read from at all.
    fn started(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

impl futures::Stream for SharedBody {
    type Item = Result<bytes::Bytes, axum::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let mut body = self.0.lock().unwrap_or_else(|p| p.into_inner());
        body.1 = true;
        std::pin::Pin::new(&mut body.0).poll_next(cx)
    }
}

/// The reply body OpenRosa clients show and the CyberTracker connectors search for
/// "successful" or "duplicate".
fn xml_reply(status: StatusCode, message: &str, accept: u64) -> Response {
    let mut response = if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        let body = format!(
            "<OpenRosaResponse xmlns=\"http://openrosa.org/http/response\"><message nature=\"{}\">{}</message></OpenRosaResponse>",
            if status.is_success() { "submit_success" } else { "error" },
            escape(message)
        );
        (
            status,
            [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
            body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert("X-OpenRosa-Version", HeaderValue::from_static("1.0"));
    h.insert(
        "X-OpenRosa-Accept-Content-Length",
        HeaderValue::from(accept),
    );
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    if let Ok(v) = HeaderValue::from_str(&date) {
        h.insert(header::DATE, v);
    }
    response
}

fn error_reply(e: ApiError, accept: u64) -> Response {
    let status = e.status();
    let message = if status.is_server_error() {
        tracing::error!("OpenRosa submission failed: {e:#}");
        match e {
            ApiError::Unavailable(_) | ApiError::Database(_) => {
                "the server cannot store submissions right now; nothing was kept: send again later"
                    .to_string()
            }
            _ => "the server could not complete the submission; it is logged".to_string(),
        }
    } else {
        e.to_string()
    };
    let mut response = xml_reply(status, &message, accept);
    let h = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"CTData OpenRosa\""),
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(super::error::RETRY_UNAVAILABLE_SECS),
        );
    }
    if let ApiError::TooManyFailures(secs) = e {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What one POST carried.
struct Received {
    xml: Option<Vec<u8>>,
    incomplete: bool,
    files: Vec<(String, String, StoredAttachment)>,
}

async fn submit(
    state: &AppState,
    device: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, String), ApiError> {
    let received = receive(state, headers, body).await?;
    let xml = received.xml.ok_or_else(|| {
        ApiError::BadRequest(format!(
            "the submission has no {XML_PART} part: send the form's XML in a part of that name"
        ))
    })?;
    let text = std::str::from_utf8(&xml)
        .map_err(|e| ApiError::BadRequest(format!("{XML_PART} is not UTF-8 text: {e}")))?;
    let (sub, doc) = openrosa::identify(text).map_err(ApiError::BadRequest)?;
    let db = &state.ingestor.db;
    let xml_stored = state
        .attachments
        .store_stream(&xml[..], u64::MAX)
        .await
        .map_err(store_error)?;
    let batch = match db.openrosa_submission(&sub.instance_id).await? {
        Some(known) if known.device != device => {
            return Err(ApiError::Conflict(format!(
                "instanceID {} was sent by another device: every submission needs an \
                 instanceID of its own",
                sub.instance_id
            )))
        }
        Some(known) if known.xml_sha256 == xml_stored.sha256 => known.batch,
        Some(known) => {
            return Err(ApiError::Conflict(format!(
                "instanceID {} was received on {} with other content: an edited form must \
                 get a new instanceID (and name this one as its deprecatedID)",
                sub.instance_id,
                known.received_at.format("%Y-%m-%d %H:%M UTC")
            )))
        }
        None => {
            let sightings = openrosa::sightings(&doc, &sub, state.openrosa.form(&sub.form_id))
                .map_err(ApiError::BadRequest)?;
            store_batch(state, device, &sub, &sightings).await?
        }
    };
    let held = db.batch_attachments(batch).await?;
    let new_names: std::collections::BTreeSet<&str> = received
        .files
        .iter()
        .map(|(name, _, _)| name.as_str())
        .filter(|n| !held.iter().any(|h| h.name == *n))
        .collect();
    let files_held = held.iter().filter(|h| h.name != XML_LINK).count();
    let max = state.openrosa.max_attachments;
    if files_held + new_names.len() > max {
        return Err(ApiError::TooLargeWhy(format!(
            "submission {} would hold {} attachments; at most {max} are accepted \
             (openrosa.max_attachments)",
            sub.instance_id,
            files_held + new_names.len()
        )));
    }
    db.record_attachment(&xml_stored.sha256, xml_stored.size, "text/xml")
        .await?;
    let mut links = vec![NewLink {
        sighting_id: None,
        name: XML_LINK,
        sha256: &xml_stored.sha256,
    }];
    for (name, content_type, stored) in &received.files {
        db.record_attachment(&stored.sha256, stored.size, content_type)
            .await?;
        links.push(NewLink {
            sighting_id: None,
            name,
            sha256: &stored.sha256,
        });
    }
    // An edit's file replaces the one carried over from the submission it edits.
    let carried_from = match sub.deprecated_id.as_deref() {
        Some(old) => db
            .openrosa_submission(old)
            .await?
            .filter(|known| known.device == device)
            .map(|known| known.batch),
        None => None,
    };
    db.link_attachments(batch, &links, carried_from).await?;
    db.record_openrosa_submission(&NewSubmission {
        instance_id: &sub.instance_id,
        device,
        form_id: &sub.form_id,
        form_version: sub.form_version.as_deref(),
        xml_sha256: &xml_stored.sha256,
        batch,
        deprecated_id: sub.deprecated_id.as_deref(),
    })
    .await?;
    let message = match (received.incomplete, received.files.len()) {
        (true, n) => format!(
            "Submission successful so far: {} with {n} attachment(s) stored; waiting for the rest",
            sub.instance_id
        ),
        (false, n) => format!(
            "Form received successfully: {} with {n} attachment(s) stored",
            sub.instance_id
        ),
    };
    Ok((StatusCode::CREATED, message))
}

/// Writes the submission's sightings as a CTData batch and delivers it; the stored
/// batch's key. A resend after a crash that stored the batch but not the submission
/// row builds the same bytes again, so it is a duplicate, not a conflict.
async fn store_batch(
    state: &AppState,
    device: &str,
    sub: &Submission,
    sightings: &[ctdata_batch::Sighting],
) -> Result<i64, ApiError> {
    let deliverer = state.deliverer();
    let claim = format!("{}-openrosa", replica_stamp());
    let spool = deliverer.layout.incoming(device).join(&claim);
    let header = ctdata_batch::write::BatchHeader {
        batch_id: sub.batch_id(),
        device_id: device.to_string(),
        created_at: sightings
            .iter()
            .map(|s| s.observed_at)
            .max()
            .expect("a submission maps to a sighting at least"),
    };
    let rows = sightings.to_vec();
    let path = spool.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().expect("a folder"))?;
        let file = std::fs::File::create(&path)?;
        let mut w = ctdata_batch::write::NdjsonWriter::new(file, &header)?;
        for s in &rows {
            w.push(s)?;
        }
        w.finish()?;
        Ok(())
    })
    .await
    .map_err(anyhow::Error::from)??;
    let origin = Origin {
        channel: Channel::Openrosa,
        file_name: format!("{}.xml", sub.form_id),
        device: Some(device.to_string()),
        claim: Some(format!("openrosa/{claim}")),
        filing: Filing::DropDir,
        relayed_by: None,
    };
    let receipt = match deliverer.deliver(&spool, &origin).await {
        Ok(receipt) => receipt,
        Err(e) => {
            let _ = tokio::fs::remove_file(&spool).await;
            return Err(ApiError::storing(e));
        }
    };
    match receipt.status {
        Status::Ingested | Status::Duplicate => {}
        Status::Rejected => {
            let reason = receipt.reason.unwrap_or_default();
            let kind = receipt.kind.as_deref().and_then(|k| k.parse().ok());
            return Err(match kind {
                Some(RejectionKind::Conflict) => ApiError::Conflict(format!(
                    "instanceID {} was received before with other content: {reason}",
                    sub.instance_id
                )),
                Some(RejectionKind::DeviceMismatch) => ApiError::Forbidden(reason),
                _ => ApiError::BadRequest(format!(
                    "form {} cannot be stored as sightings: {reason}",
                    sub.form_id
                )),
            });
        }
    }
    let stored = state
        .ingestor
        .db
        .find_batch(device, sub.batch_id())
        .await?
        .ok_or_else(|| anyhow::anyhow!("batch {} stored but not found", sub.batch_id()))?;
    Ok(stored.pk)
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::TooLarge(n) => ApiError::TooLargeWhy(format!(
            "an attachment is larger than {n} bytes (storage.max_attachment_bytes)"
        )),
        StoreError::Io(e) => ApiError::storing(e.into()),
    }
}

/// A part's file name, kept only as a name (never as a path).
fn file_name(name: &str) -> Result<String, ApiError> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(ApiError::BadRequest(format!(
            "attachment name {name:?} is not a plain file name"
        )));
    }
    Ok(name.to_string())
}

/// Reads the multipart body as it arrives: the XML into memory (it is small and
/// bounded), every file part into the attachment store.
async fn receive(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Received, ApiError> {
    let settings = &state.openrosa;
    let limit = settings.max_submission_bytes;
    let too_big = || {
        ApiError::TooLargeWhy(format!(
            "the submission is larger than {limit} bytes (openrosa.max_submission_bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::UnsupportedMediaType(format!(
            "an OpenRosa submission is multipart/form-data with a boundary, not {content_type:?}"
        ))
    })?;
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit));
    let mut multipart =
        multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let idle = state.body_idle_timeout;
    let body_error = |e: multer::Error| match e {
        multer::Error::StreamSizeExceeded { .. } => too_big(),
        multer::Error::StreamReadFailed(inner) => {
            let text = inner.to_string();
            match super::paced::TooSlow::find(inner.as_ref()) {
                Some(slow) => ApiError::SlowBody(slow.to_string()),
                None => ApiError::BadRequest(format!("reading the submission failed: {text}")),
            }
        }
        other => ApiError::BadRequest(format!("the multipart body is malformed: {other}")),
    };
    let mut got = Received {
        xml: None,
        incomplete: false,
        files: Vec::new(),
    };
    loop {
        let next = tokio::time::timeout(idle, multipart.next_field())
            .await
            .map_err(|_| ApiError::BodyTimeout(idle.as_secs()))?;
        let Some(mut field) = next.map_err(body_error)? else {
            break;
        };
        let name = field.name().unwrap_or("").to_string();
        let file = field.file_name().map(str::to_string);
        if name == XML_PART {
            let mut xml = Vec::new();
            while let Some(chunk) = tokio::time::timeout(idle, field.chunk())
                .await
                .map_err(|_| ApiError::BodyTimeout(idle.as_secs()))?
                .map_err(body_error)?
            {
                xml.extend_from_slice(&chunk);
                if xml.len() as u64 > settings.max_xml_bytes {
                    return Err(ApiError::TooLargeWhy(format!(
                        "the submission XML is larger than {} bytes (openrosa.max_xml_bytes)",
                        settings.max_xml_bytes
                    )));
                }
            }
            got.xml = Some(xml);
        } else if file.is_some()
            || field
                .content_type()
                .is_some_and(|m| m.essence_str() != "text/plain")
        {
            let name = file_name(file.as_deref().unwrap_or(&name))?;
            let content_type = field
                .content_type()
                .map(|m| m.essence_str().to_string())
                .unwrap_or_else(|| "application/octet-stream".into());
            if got.files.len() >= settings.max_attachments {
                return Err(ApiError::TooLargeWhy(format!(
                    "the submission has more than {} attachments (openrosa.max_attachments)",
                    settings.max_attachments
                )));
            }
            let mut pending = state.attachments.begin(state.max_attachment_bytes).await?;
            while let Some(chunk) = tokio::time::timeout(idle, field.chunk())
                .await
                .map_err(|_| ApiError::BodyTimeout(idle.as_secs()))?
                .map_err(body_error)?
            {
                pending.write(&chunk).await.map_err(|e| match e {
                    StoreError::TooLarge(n) => ApiError::TooLargeWhy(format!(
                        "attachment {name} is larger than {n} bytes (storage.max_attachment_bytes)"
                    )),
                    StoreError::Io(e) => ApiError::storing(e.into()),
                })?;
            }
            let stored = pending
                .finish()
                .await
                .map_err(|e| ApiError::storing(e.into()))?;
            got.files.push((name, content_type, stored));
        } else {
            let mut text = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(body_error)? {
                if text.len() < 1024 {
                    text.extend_from_slice(&chunk);
                }
            }
            if name == "*isIncomplete*" {
                got.incomplete = String::from_utf8_lossy(&text).trim() == "yes";
            }
        }
    }
    Ok(got)
}
