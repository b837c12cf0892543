//! The administrator's read API and the reprocessing of rejected files.

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::AdminAuth;
use super::batches::status_for;
use super::{ApiError, AppState, ErrorBody, Query};
use crate::db::{BatchListFilter, BatchSummary, ConflictInfo, DeviceInfo, RejectionInfo, Skipped};
use crate::deliver::{Filing, Origin};
use crate::ingest::Receipt;
use crate::layout;
use crate::types::RejectionStatus;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(devices))
        .routes(routes!(batches))
        .routes(routes!(batch))
        .routes(routes!(conflicts))
        .routes(routes!(rejected))
        .routes(routes!(reprocess))
}

/// Devices with last seen, batches, sightings and state.
#[utoipa::path(get, path = "/api/v1/devices", tag = "administrators",
    responses((status = 200, body = [DeviceInfo]), (status = 401, body = ErrorBody)),
    security(("admin_token" = []), ("admin_basic" = [])))]
async fn devices(
    State(state): State<AppState>,
    _: AdminAuth,
) -> Result<Json<Vec<DeviceInfo>>, ApiError> {
    Ok(Json(state.ingestor.db.list_devices().await?))
}

/// Stored batches, newest first; `before` = the last id of the previous page.
#[utoipa::path(get, path = "/api/v1/batches", tag = "administrators", params(BatchListFilter),
    responses((status = 200, body = [BatchSummary]), (status = 401, body = ErrorBody)),
    security(("admin_token" = []), ("admin_basic" = [])))]
async fn batches(
    State(state): State<AppState>,
    _: AdminAuth,
    Query(f): Query<BatchListFilter>,
) -> Result<Json<Vec<BatchSummary>>, ApiError> {
    Ok(Json(state.ingestor.db.list_batches(&f).await?))
}

/// One stored batch and the sightings it skipped.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BatchDetail {
    #[serde(flatten)]
    pub batch: BatchSummary,
    /// Sightings skipped because their id was stored already: the first ids, and which
    /// came with other content (conflicts). Absent when none was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Skipped>,
}

/// One stored batch (the `id` of the batch list) with the sighting ids it skipped.
#[utoipa::path(get, path = "/api/v1/batches/{id}", tag = "administrators",
    params(("id" = i64, Path, description = "The batch's id in the batch list")),
    responses((status = 200, body = BatchDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_token" = []), ("admin_basic" = [])))]
async fn batch(
    State(state): State<AppState>,
    _: AdminAuth,
    UrlPath(id): UrlPath<i64>,
) -> Result<Json<BatchDetail>, ApiError> {
    let db = &state.ingestor.db;
    // The list's page just below `id + 1` starts with the batch, if there is one.
    let page = BatchListFilter {
        before: Some(id.saturating_add(1)),
        limit: Some(1),
        ..Default::default()
    };
    let batch = db
        .list_batches(&page)
        .await?
        .into_iter()
        .find(|b| b.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no batch {id}")))?;
    let skipped = db.skipped(id).await?;
    Ok(Json(BatchDetail { batch, skipped }))
}

#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConflictPage {
    /// Only conflicts with an id below this (the previous page's last id).
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

/// Sighting ids that arrived again with other content, newest first: the stored
/// version (kept) and the new one (not stored) side by side, and the fields that differ.
#[utoipa::path(get, path = "/api/v1/conflicts", tag = "administrators", params(ConflictPage),
    responses((status = 200, body = [ConflictInfo]), (status = 401, body = ErrorBody)),
    security(("admin_token" = []), ("admin_basic" = [])))]
async fn conflicts(
    State(state): State<AppState>,
    _: AdminAuth,
    Query(p): Query<ConflictPage>,
) -> Result<Json<Vec<ConflictInfo>>, ApiError> {
    let before = p.before.unwrap_or(i64::MAX);
    let limit = p.limit.unwrap_or(100).clamp(1, crate::db::MAX_PAGE);
    Ok(Json(state.ingestor.db.list_conflicts(before, limit).await?))
}

/// Refused files with their reasons, newest first.
#[utoipa::path(get, path = "/api/v1/rejected", tag = "administrators", params(BatchListFilter),
    responses((status = 200, body = [RejectionInfo]), (status = 401, body = ErrorBody)),
    security(("admin_token" = []), ("admin_basic" = [])))]
async fn rejected(
    State(state): State<AppState>,
    _: AdminAuth,
    Query(f): Query<BatchListFilter>,
) -> Result<Json<Vec<RejectionInfo>>, ApiError> {
    Ok(Json(state.ingestor.db.list_rejections(&f).await?))
}

/// Runs a rejected file through ingest again (after the cause was fixed, e.g. a limit
/// raised). The same rejection row is updated if it is refused again.
#[utoipa::path(post, path = "/api/v1/rejected/{id}/reprocess", tag = "administrators",
    params(("id" = i64, Path, description = "The rejection's id")),
    responses(
        (status = 201, description = "Stored now", body = Receipt),
        (status = 200, description = "Already stored by another delivery", body = Receipt),
        (status = 404, description = "No such rejection", body = ErrorBody),
        (status = 409, description = "Already reprocessed", body = ErrorBody),
        (status = 410, description = "The file is gone", body = ErrorBody),
        (status = 422, description = "Refused again: the reason is updated", body = Receipt),
    ),
    security(("admin_token" = []), ("admin_basic" = [])))]
async fn reprocess(
    State(state): State<AppState>,
    _: AdminAuth,
    UrlPath(id): UrlPath<i64>,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    let receipt = reprocess_rejection(&state, id).await?;
    Ok((status_for(&receipt), Json(receipt)))
}

/// The API's and the dashboard's Reprocess.
pub(super) async fn reprocess_rejection(state: &AppState, id: i64) -> Result<Receipt, ApiError> {
    let db = &state.ingestor.db;
    let r = db
        .rejection(id)
        .await?
        .ok_or(ApiError::NotFound(format!("no rejection {id}")))?;
    if r.status != RejectionStatus::Pending {
        return Err(ApiError::Conflict(format!(
            "rejection {id} was already {}",
            r.status
        )));
    }
    let stored = r.stored_path.as_deref().ok_or_else(|| {
        ApiError::Gone(format!(
            "rejection {id} kept no file (it was ingested in place by the CLI)"
        ))
    })?;
    let deliverer = state.deliverer();
    let path = deliverer.layout.resolve(stored);
    if !path.is_file() {
        return Err(ApiError::Gone(format!(
            "{stored} is no longer in the drop directory"
        )));
    }
    let device_dir = layout::parent_name(&path);
    let origin = Origin {
        channel: r.channel,
        file_name: r.file_name.clone(),
        device: layout::device_of_dir(&device_dir).map(str::to_string),
        claim: r.claim_name.clone(),
        filing: Filing::DropDir,
        relayed_by: None,
    };
    let receipt = deliverer.deliver(&path, &origin).await?;
    if receipt.status != crate::ingest::Status::Rejected {
        db.set_rejection_status(id, RejectionStatus::Reprocessed)
            .await?;
    }
    Ok(receipt)
}
