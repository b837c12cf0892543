//! The administrator's "Download": pull every remote source (or one) now.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::AdminAuth;
use super::{ApiError, AppState, ErrorBody, Query};
use crate::sources::DownloadReport;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(download))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// Only this source (its `name` in the configuration).
    pub source: Option<String>,
}

/// Pulls from the configured sources now and reports, per source, what was found,
/// fetched, ingested, duplicate and rejected, and every error in plain words naming the
/// step and the cause (host not found, connection refused, timed out, TLS handshake
/// failed, login incorrect, folder missing, permission denied). A report with errors
/// is still a 200: `ok` is false and each source lists its errors.
#[utoipa::path(post, path = "/api/v1/admin/download", tag = "administrators", params(DownloadQuery),
    responses(
        (status = 200, description = "The pull ran; see `ok` and each source's errors", body = DownloadReport),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No source has that name", body = ErrorBody),
    ),
    security(("admin_token" = []), ("admin_basic" = [])))]
async fn download(
    State(state): State<AppState>,
    AdminAuth(admin): AdminAuth,
    Query(q): Query<DownloadQuery>,
) -> Result<Json<DownloadReport>, ApiError> {
    tracing::info!(
        admin,
        source = q.source.as_deref().unwrap_or("(all)"),
        "download requested"
    );
    // On its own task: a client that hangs up does not cut a pull short (it would be
    // safe, but the pull would go unrecorded).
    let puller = state.puller.clone();
    let report = tokio::spawn(async move { puller.download(q.source.as_deref(), "admin").await })
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    Ok(Json(report))
}
