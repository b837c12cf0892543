//! `GET /api/v1/tracks` and `GET /api/v1/patrols`: the track points of CyberTracker
//! and SMART devices, and SMART patrols merged from their events (administrators).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::AdminDownload;
use super::{ApiError, AppState, ErrorBody, Query};
use crate::tracks::{self, PatrolFormat, TrackFormat};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(track_export))
        .routes(routes!(patrol_export))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TrackParams {
    /// geojson (default: a LineString per device and UTC day) or csv (one row per point)
    format: Option<String>,
    /// Only this device's track
    device: Option<String>,
}

fn parse_format(s: Option<&str>) -> Result<TrackFormat, ApiError> {
    match s.unwrap_or("geojson") {
        "geojson" => Ok(TrackFormat::Geojson),
        "csv" => Ok(TrackFormat::Csv),
        other => Err(ApiError::BadRequest(format!(
            "format {other:?}: use geojson or csv"
        ))),
    }
}

/// A streamed download: the chunks go out as they are made.
fn attachment(
    chunks: impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    content_type: &'static str,
    file: &str,
) -> Response {
    let mut r = Body::from_stream(chunks).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// Track points (CyberTracker and CTX waypoints), by device and time.
#[utoipa::path(
    get,
    path = "/api/v1/tracks",
    tag = "administrators",
    params(TrackParams),
    responses(
        (status = 200, description = "application/geo+json or text/csv", content_type = "application/geo+json", body = String),
        (status = 400, description = "An unknown format", body = ErrorBody),
        (status = 401, description = "Not an administrator", body = ErrorBody),
    ),
    security(("admin_token" = []), ("admin_basic" = []))
)]
async fn track_export(
    State(state): State<AppState>,
    AdminDownload(admin): AdminDownload,
    Query(p): Query<TrackParams>,
) -> Result<Response, ApiError> {
    let format = parse_format(p.format.as_deref())?;
    tracing::debug!(admin, "tracks export");
    let body = tracks::track_chunks(&state.ingestor.db, format, p.device);
    let ext = match format {
        TrackFormat::Geojson => "geojson",
        TrackFormat::Csv => "csv",
    };
    Ok(attachment(
        body,
        format.content_type(),
        &format!("ctdata-tracks.{ext}"),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PatrolParams {
    /// csv (default) or json
    format: Option<String>,
}

/// SMART patrols: one row per patrol with its start, end, distance along its track and
/// observation count, merged from every piece that has arrived.
#[utoipa::path(
    get,
    path = "/api/v1/patrols",
    tag = "administrators",
    params(PatrolParams),
    responses(
        (status = 200, description = "text/csv or application/json", content_type = "text/csv", body = String),
        (status = 400, description = "An unknown format", body = ErrorBody),
        (status = 401, description = "Not an administrator", body = ErrorBody),
    ),
    security(("admin_token" = []), ("admin_basic" = []))
)]
async fn patrol_export(
    State(state): State<AppState>,
    AdminDownload(admin): AdminDownload,
    Query(p): Query<PatrolParams>,
) -> Result<Response, ApiError> {
    tracing::debug!(admin, "patrols export");
    let (format, content_type, file) = match p.format.as_deref().unwrap_or("csv") {
        "csv" => (
            PatrolFormat::Csv,
            "text/csv; charset=utf-8",
            "ctdata-patrols.csv",
        ),
        "json" => (
            PatrolFormat::Json,
            "application/json",
            "ctdata-patrols.json",
        ),
        other => {
            return Err(ApiError::BadRequest(format!(
                "format {other:?}: use csv or json"
            )))
        }
    };
    let chunks = tracks::patrol_chunks(&state.ingestor.db, format);
    Ok(attachment(chunks, content_type, file))
}
