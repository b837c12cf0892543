//! `GET /api/v1/sightings`: the administrator's Download, streamed in constant memory;
//! also for devices listed in `http.read_devices` (the field client's `pull`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures::StreamExt;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::ReaderAuth;
use super::{ApiError, AppState, ErrorBody, Query};
use crate::db::{BBox, ExportFilter};
use crate::dwca::Publisher;
use crate::export::{byte_stream, ExportFormat};
use crate::types::parse_time;

pub use ctdata_api::NEXT_CURSOR;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(download))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Params {
    /// csv (default), geojson, ndjson, or dwca (a Darwin Core Archive zip for GBIF;
    /// administrators only)
    format: Option<String>,
    /// Only sightings stored after this cursor
    since: Option<i64>,
    /// Only sightings observed at or after (RFC 3339 or YYYY-MM-DD)
    from: Option<String>,
    /// Only sightings observed before (RFC 3339 or YYYY-MM-DD)
    to: Option<String>,
    device: Option<String>,
    species: Option<String>,
    /// minLon,minLat,maxLon,maxLat
    bbox: Option<String>,
    /// CSV only: text cells starting with `=`, `+`, `-` or `@` get a leading `'` so a
    /// spreadsheet shows them instead of running them as formulas
    excel_safe: Option<bool>,
}

/// The administrator's Download: every matching sighting, streamed.
#[utoipa::path(
    get,
    path = "/api/v1/sightings",
    tag = "administrators",
    params(Params),
    responses(
        (status = 200, description = "The export (text/csv, application/geo+json, application/x-ndjson \
          or application/zip); the CTData-Next-Cursor header holds the `since` for next time",
         content_type = "text/csv", body = String,
         headers(("CTData-Next-Cursor" = i64, description = "Pass as `since` next time"))),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, description = "Not an administrator", body = ErrorBody),
        (status = 403, description = "A device not listed in http.read_devices, or a device asking for dwca", body = ErrorBody),
        (status = 409, description = "format=dwca while a [dwca] metadata setting is missing (named)", body = ErrorBody),
    ),
    security(("admin_token" = []), ("admin_basic" = []), ("device_token" = []))
)]
async fn download(
    State(state): State<AppState>,
    ReaderAuth(who): ReaderAuth,
    Query(p): Query<Params>,
) -> Result<Response, ApiError> {
    // PostgreSQL refuses NUL in text outright; no stored value holds one.
    for (name, value) in [
        ("from", &p.from),
        ("to", &p.to),
        ("device", &p.device),
        ("species", &p.species),
        ("bbox", &p.bbox),
    ] {
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(ApiError::BadRequest(format!(
                "{name} contains a NUL character"
            )));
        }
    }
    let excel_safe = p.excel_safe.unwrap_or(false);
    let format: ExportFormat = p
        .format
        .as_deref()
        .unwrap_or("csv")
        .parse()
        .map_err(ApiError::BadRequest)?;
    let time = |t: Option<String>| {
        t.as_deref()
            .map(parse_time)
            .transpose()
            .map_err(ApiError::BadRequest)
    };
    let bbox = p
        .bbox
        .as_deref()
        .map(str::parse::<BBox>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    // Nothing can commit at or below the safe cursor any more, so the next cursor can
    // be named before the first row is sent.
    let next = state.ingestor.db.safe_cursor().await?;
    let since = p.since.unwrap_or(0);
    let filter = ExportFilter {
        since,
        until: Some(next),
        from: time(p.from)?,
        to: time(p.to)?,
        device: p.device,
        species: p.species,
        bbox,
    };
    let next = next.max(since);
    if format == ExportFormat::Dwca {
        return dwca_download(&state, filter, who, since, next).await;
    }
    let metrics = state.ingestor.metrics.clone();
    let chunks =
        byte_stream(&state.ingestor.db, filter, format, excel_safe, who).inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                metrics.exported_bytes(bytes.len() as u64);
            }
        });
    let body = Body::from_stream(chunks);
    let file = format!("ctdata-sightings-{since}-{next}.{}", format.extension());
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    let disposition = format!("attachment; filename=\"{file}\"");
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).map_err(anyhow::Error::from)?,
    );
    h.insert(NEXT_CURSOR, HeaderValue::from(next));
    Ok(response)
}

/// `format=dwca`: the archive is built in a temporary file (its zip directory comes last,
/// so it cannot be streamed as rows arrive), then sent from there.
async fn dwca_download(
    state: &AppState,
    filter: ExportFilter,
    who: String,
    since: i64,
    next: i64,
) -> Result<Response, ApiError> {
    if !who.starts_with("admin ") {
        return Err(ApiError::Forbidden(
            "a Darwin Core Archive is for administrators".into(),
        ));
    }
    let publisher =
        Publisher::new(&state.dwca).map_err(|e| ApiError::Conflict(format!("{e:#}")))?;
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(anyhow::Error::from)?
        .map_err(anyhow::Error::from)?;
    let (file, summary) = publisher.write(&state.ingestor.db, filter, file).await?;
    state.ingestor.metrics.exported_bytes(summary.bytes);
    tracing::info!(
        who,
        format = "dwca",
        rows = summary.rows,
        bytes = summary.bytes,
        unnamed = summary.unnamed,
        excluded = summary.excluded,
        generalised = summary.generalised,
        "darwin core archive sent"
    );
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        tokio::fs::File::from_std(file),
        64 * 1024,
    ));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(ExportFormat::Dwca.content_type()),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(summary.bytes));
    let disposition = format!("attachment; filename=\"ctdata-dwca-{since}-{next}.zip\"");
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).map_err(anyhow::Error::from)?,
    );
    h.insert(NEXT_CURSOR, HeaderValue::from(next));
    h.insert(DWCA_UNNAMED, HeaderValue::from(summary.unnamed));
    Ok(response)
}

/// Response header of `format=dwca`: sightings left out because they name no species.
pub const DWCA_UNNAMED: &str = "ctdata-dwca-unnamed";
