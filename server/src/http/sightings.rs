//! `GET /api/v1/sightings`: the administrator's Download, streamed in constant memory.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::auth::authenticate_admin;
use super::{ApiError, AppState};
use crate::commands::parse_time;
use crate::db::{BBox, ExportFilter};
use crate::export::{byte_stream, ExportFormat};

/// The response header carrying the cursor to pass as `since` next time.
pub const NEXT_CURSOR: &str = "CTData-Next-Cursor";

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/sightings", get(download))
}

#[derive(Debug, Deserialize)]
struct Params {
    format: Option<String>,
    since: Option<i64>,
    from: Option<String>,
    to: Option<String>,
    device: Option<String>,
    species: Option<String>,
    bbox: Option<String>,
}

async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Result<Response, ApiError> {
    authenticate_admin(&state, &headers).await?;
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
    // Everything up to the newest cursor has committed (ingests are serialised), so
    // the next cursor can be named before the first row is sent.
    let next = state
        .ingestor
        .db
        .max_cursor()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
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
    let body = Body::from_stream(byte_stream(&state.ingestor.db, filter, format));
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
