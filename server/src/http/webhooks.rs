//! `POST /api/v1/webhooks/cybertracker[/{token}]`: CyberTracker's webhook, one JSON
//! observation per saved or sent record. The observation is written as a one-feature
//! CyberTracker upload (§7a of the batch format) and goes through the delivery pipeline
//! like any batch (channel `webhook`), so it is read, mapped and filed the same way.
//! An edit comes again with the same `uid` and a newer `updateTime`: it replaces the
//! stored sighting (the old one is kept in `sighting_versions`); the same `uid` and
//! `updateTime` is a duplicate.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::{device_by_path_token, DeviceAuth};
use super::batches::status_for;
use super::{ApiError, AppState, ErrorBody};
use crate::db::Superseded;
use crate::deliver::{Filing, Origin};
use crate::ingest::{Receipt, Status};
use crate::layout::replica_stamp;
use crate::types::Channel;

/// The envelope key that holds the observation's version.
const VERSION: &str = "updateTime";
/// Webhook bodies carry inline media; more than a batch's request line, less than a file.
const MAX_BODY: usize = 32 << 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(with_header))
        .routes(routes!(with_path_token))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// What the webhook answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct WebhookReceipt {
    /// stored (new), updated (a newer version replaced the stored one), duplicate (this
    /// version is stored already) or outdated (an older version than the stored one: kept
    /// as a conflict, the stored one stays).
    status: &'static str,
    uid: String,
    /// The sighting's id (the uid as a UUID, or derived from it).
    sighting_id: Uuid,
    version: String,
    batch_id: Option<Uuid>,
}

/// A device by Basic or Bearer credentials.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/cybertracker",
    tag = "devices",
    request_body(content = Object, description = "One CyberTracker observation", content_type = "application/json"),
    responses(
        (status = 200, description = "Stored, updated, or already stored", body = WebhookReceipt),
        (status = 401, description = "No or wrong device token", body = ErrorBody),
        (status = 422, description = "Not a valid observation: the reason names the field", body = ErrorBody),
        (status = 503, description = "The database is unavailable: nothing was stored", body = ErrorBody),
    ),
    security(("device_token" = []), ("device_basic" = []))
)]
async fn with_header(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    body: Bytes,
) -> Result<Response, ApiError> {
    receive(&state, device, body).await
}

/// A device by the token in the path, for senders that can set no header.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/cybertracker/{token}",
    tag = "devices",
    params(("token" = String, Path, description = "The device's token")),
    request_body(content = Object, description = "One CyberTracker observation", content_type = "application/json"),
    responses(
        (status = 200, description = "Stored, updated, or already stored", body = WebhookReceipt),
        (status = 401, description = "Wrong device token", body = ErrorBody),
        (status = 422, description = "Not a valid observation: the reason names the field", body = ErrorBody),
        (status = 503, description = "The database is unavailable: nothing was stored", body = ErrorBody),
    ),
)]
async fn with_path_token(
    State(state): State<AppState>,
    PathDevice(device): PathDevice,
    body: Bytes,
) -> Result<Response, ApiError> {
    receive(&state, device, body).await
}

/// The device whose token is the last path segment.
struct PathDevice(String);

impl FromRequestParts<AppState> for PathDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(token) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        device_by_path_token(state, parts, token)
            .await
            .map(PathDevice)
    }
}

async fn receive(state: &AppState, device: String, body: Bytes) -> Result<Response, ApiError> {
    let obs = Observation::parse(&body).map_err(ApiError::Unprocessable)?;
    let upload = serde_json::to_vec(&obs.as_upload()).map_err(|e| ApiError::Internal(e.into()))?;
    let deliverer = state.deliverer();
    let claim = format!("{}-webhook", replica_stamp());
    let spool = deliverer.layout.incoming(&device).join(&claim);
    tokio::fs::create_dir_all(spool.parent().expect("spool has a folder")).await?;
    tokio::fs::write(&spool, &upload).await?;
    // The sighting as the pipeline reads it, for a replacement of the stored version.
    let sighting = read_back(state, &spool).await;
    let origin = Origin {
        channel: Channel::Webhook,
        file_name: format!("webhook-{}.json", obs.id),
        device: Some(device.clone()),
        claim: Some(format!("webhook/{claim}")),
        filing: Filing::DropDir,
        relayed_by: None,
    };
    let receipt = match deliverer.deliver(&spool, &origin).await {
        Ok(r) => r,
        Err(e) => {
            let _ = tokio::fs::remove_file(&spool).await;
            return Err(ApiError::storing(e));
        }
    };
    if receipt.status == Status::Rejected {
        return Ok((status_for(&receipt), Json(receipt)).into_response());
    }
    let status = settle(state, &device, &receipt, sighting?).await?;
    let answer = WebhookReceipt {
        status,
        uid: obs.uid,
        sighting_id: obs.id,
        version: obs.update_time,
        batch_id: receipt.batch_id,
    };
    Ok((StatusCode::OK, Json(answer)).into_response())
}

/// The observation's sighting as the pipeline reads it, and the (name, sha256) of each
/// file inlined in it, hashed from its bytes (what the store holds, if it took it).
type ReadBack = (ctdata_batch::Sighting, Vec<(String, String)>);

async fn read_back(state: &AppState, path: &std::path::Path) -> Result<Option<ReadBack>, ApiError> {
    let path = path.to_path_buf();
    let limits = ctdata_batch::Limits::default();
    let mapping = state.ingestor.cybertracker_mapping().clone();
    let read = move || -> Option<ReadBack> {
        let scan = ctdata_batch::scan(&path, &limits).ok()?;
        let mut first = None;
        ctdata_batch::read(&path, &scan, &limits, |s| {
            first = Some(s);
            std::ops::ControlFlow::Break(())
        })
        .ok()?;
        let mut files = Hashed::default();
        ctdata_batch::inline_media::media(&path, &scan, &limits, &mut files).ok()?;
        first.map(|mut s| {
            mapping.apply(&mut s);
            let own = files
                .done
                .into_iter()
                .filter(|(id, _, _)| *id == s.id)
                .map(|(_, name, sha)| (name, sha))
                .collect();
            (s, own)
        })
    };
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| ApiError::Internal(e.into()))
}

/// Hashes each inlined file as the pipeline hands it out.
#[derive(Default)]
struct Hashed {
    current: sha2::Sha256,
    done: Vec<(Uuid, String, String)>,
}

impl ctdata_batch::inline_media::MediaSink for Hashed {
    fn begin(&mut self) -> std::io::Result<()> {
        self.current = sha2::Sha256::default();
        Ok(())
    }
    fn chunk(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        sha2::Digest::update(&mut self.current, bytes);
        Ok(())
    }
    fn end(&mut self, item: ctdata_batch::inline_media::MediaItem) -> std::io::Result<()> {
        let sha = hex::encode(sha2::Digest::finalize(std::mem::take(&mut self.current)));
        self.done.push((item.sighting_id, item.name, sha));
        Ok(())
    }
}

/// After the batch is filed: a new sighting, or a version of one stored before.
async fn settle(
    state: &AppState,
    device: &str,
    r: &Receipt,
    sighting: Option<ReadBack>,
) -> Result<&'static str, ApiError> {
    if r.status == Status::Ingested && r.inserted == 1 {
        return Ok("stored");
    }
    let (Some((s, files)), Some(batch_id)) = (sighting, r.batch_id) else {
        return Ok("duplicate");
    };
    let db = &state.ingestor.db;
    let Some(batch) = db.find_batch(device, batch_id).await? else {
        return Ok("duplicate");
    };
    // Also on a duplicate: a crash after the batch committed and before the
    // replacement leaves it to the sender's retry.
    let done = db
        .supersede(
            &s,
            &files,
            ctdata_batch::CYBERTRACKER_ENVELOPE,
            VERSION,
            batch.pk,
        )
        .await
        .map_err(ApiError::storing)?;
    Ok(match done {
        Superseded::Replaced(_) => "updated",
        Superseded::NotNewer(_) if r.status == Status::Duplicate => "duplicate",
        Superseded::NotNewer(stored)
            if Some(stored.as_str())
                == s.attributes
                    .get(ctdata_batch::CYBERTRACKER_ENVELOPE)
                    .and_then(|e| e.get(VERSION))
                    .and_then(Value::as_str) =>
        {
            "duplicate"
        }
        Superseded::NotNewer(_) => "outdated",
        Superseded::Missing => "duplicate",
        Superseded::OtherDevice => {
            return Err(ApiError::Conflict(format!(
                "observation uid {} names a sighting another device stored: it was not replaced \
                 (a device edits only its own observations)",
                s.id
            )))
        }
    })
}

/// One webhook observation, checked.
struct Observation {
    uid: String,
    id: Uuid,
    update_time: String,
    body: Map<String, Value>,
}

fn bad(field: &str, why: &str) -> String {
    format!("field {field}: {why}")
}

impl Observation {
    fn parse(body: &[u8]) -> Result<Observation, String> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let Value::Object(body) = v else {
            return Err("the body must be one JSON object, a CyberTracker observation".into());
        };
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let uid = text("uid")
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| bad("uid", "required: the observation's unique id"))?;
        let create = text("createTime").ok_or_else(|| {
            bad(
                "createTime",
                "required: when the observation was made, RFC 3339 with an offset",
            )
        })?;
        let update_time = text(VERSION).unwrap_or_else(|| create.clone());
        let id = guid(&uid);
        let location = body.get("location").and_then(Value::as_array);
        let numbers: Option<Vec<f64>> =
            location.and_then(|l| l.iter().map(Value::as_f64).collect());
        if !numbers.as_ref().is_some_and(|n| (2..=4).contains(&n.len())) {
            return Err(bad("location", "must be [longitude, latitude, altitude, accuracy] (altitude and accuracy optional)"));
        }
        if let Some(records) = body.get("records") {
            if !records.is_array() {
                return Err(bad("records", "must be an array of {uid, summary, values}"));
            }
        }
        Ok(Observation {
            uid,
            id,
            update_time,
            body,
        })
    }

    /// The observation as a one-feature CyberTracker upload: `uid` → id, `createTime` →
    /// dateTime, `location` → geometry and accuracy, the records' values → the sighting
    /// elements (by name; by id where two share a name), the rest → the envelope.
    fn as_upload(&self) -> Value {
        let b = &self.body;
        let loc: Vec<f64> = b["location"]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let coordinates = match loc.get(2) {
            Some(alt) => json!([loc[0], loc[1], alt]),
            None => json!([loc[0], loc[1]]),
        };
        let mut sighting = Map::new();
        let mut records = Vec::new();
        for r in b
            .get("records")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            records.push(json!({"uid": r.get("uid"), "summary": r.get("summary")}));
            for v in r
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = v.get("name").and_then(Value::as_str);
                let id = v.get("id").and_then(Value::as_str);
                let Some(key) = name.filter(|n| !sighting.contains_key(*n)).or(id) else {
                    continue;
                };
                if !sighting.contains_key(key) {
                    sighting.insert(
                        key.to_string(),
                        v.get("value").cloned().unwrap_or(Value::Null),
                    );
                }
            }
        }
        let mut props = Map::new();
        props.insert("id".into(), json!(self.id.to_string()));
        props.insert("dateTime".into(), b["createTime"].clone());
        if let Some(acc) = loc.get(3) {
            props.insert("accuracy".into(), json!(acc));
        }
        for key in [
            "uid",
            "createTime",
            "updateTime",
            "sessionId",
            "deviceId",
            "username",
            "summary",
            "project",
        ] {
            if let Some(v) = b.get(key).filter(|v| !v.is_null()) {
                props.insert(key.into(), v.clone());
            }
        }
        props.insert(VERSION.into(), json!(self.update_time));
        props.insert("records".into(), Value::Array(records));
        props.insert("sighting".into(), Value::Object(sighting));
        json!({"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": coordinates},
             "properties": props}
        ]})
    }
}

/// The uid as a sighting id: itself when it is a GUID, else a UUIDv5 of it.
fn guid(uid: &str) -> Uuid {
    let inner = uid.trim().trim_start_matches('{').trim_end_matches('}');
    Uuid::try_parse(inner)
        .unwrap_or_else(|_| Uuid::new_v5(&ctdata_batch::CTDATA_NAMESPACE, uid.as_bytes()))
}
