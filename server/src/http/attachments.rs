//! `GET /api/v1/attachments/{sha256}`: a stored photo, recording or signature, for
//! administrators, with `Range` so a large video can be resumed or seeked.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::AdminAuth;
use super::{ApiError, AppState, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_attachment))
}

/// An administrator: by token or password, or signed in to the dashboard (whose
/// thumbnails are plain `<img>` links; safe, as the route only reads).
struct AdminOrSession;

impl FromRequestParts<AppState> for AdminOrSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if super::web::signed_in(state, &parts.headers).await.is_some() {
            return Ok(AdminOrSession);
        }
        AdminAuth::from_request_parts(parts, state)
            .await
            .map(|_| AdminOrSession)
    }
}

/// Types a browser may show in place. Anything else a device sent (HTML, SVG, PDF…) is
/// served as a download, so it can never run as a page of the dashboard's origin.
fn shown_inline(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/jpeg" | "image/png" | "image/gif" | "image/webp"
    ) || content_type.starts_with("audio/")
        || content_type.starts_with("video/")
}

/// One stored attachment by its SHA-256 (as the exports link it).
#[utoipa::path(
    get,
    path = "/api/v1/attachments/{sha256}",
    tag = "admin",
    params(("sha256" = String, Path, description = "64 lowercase hex digits")),
    responses(
        (status = 200, description = "The file, with its stored Content-Type", content_type = "application/octet-stream"),
        (status = 206, description = "The part the Range asked for"),
        (status = 401, description = "No or wrong administrator credentials", body = ErrorBody),
        (status = 404, description = "No such attachment", body = ErrorBody),
        (status = 416, description = "The Range lies outside the file"),
    ),
    security(("admin_token" = []), ("admin_basic" = []))
)]
async fn get_attachment(
    State(state): State<AppState>,
    _admin: AdminOrSession,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = || ApiError::NotFound(format!("no attachment {sha256}"));
    let path = state.attachments.path(&sha256).ok_or_else(missing)?;
    let info = state
        .ingestor
        .db
        .attachment(&sha256)
        .await?
        .ok_or_else(missing)?;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "attachment {sha256} is recorded but its file {} is missing",
                path.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let size = file.metadata().await?.len();
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => match byte_range(r, size) {
            Some(range) => Some(range),
            None => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response())
            }
        },
    };
    let (status, start, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, size),
    };
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    match HeaderValue::from_str(&info.content_type) {
        Ok(v) if shown_inline(&info.content_type) => {
            h.insert(header::CONTENT_TYPE, v);
        }
        _ => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment"),
            );
        }
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{sha256}\"")).expect("hex"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let v = format!("bytes {start}-{}/{size}", start + len - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&v).expect("ascii"),
        );
    }
    Ok(response)
}

/// One `bytes=` range as inclusive offsets within `size`; `None` when it cannot be
/// served (a malformed or multiple range, or one outside the file).
fn byte_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        return Some((size.saturating_sub(n), size - 1));
    }
    let start: u64 = a.parse().ok()?;
    let end: u64 = if b.is_empty() {
        size - 1
    } else {
        b.parse::<u64>().ok()?.min(size - 1)
    };
    (start <= end && start < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(byte_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(byte_range("bytes=100-", 100), None);
        assert_eq!(byte_range("bytes=5-2", 100), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), None);
        assert_eq!(byte_range("items=0-1", 100), None);
    }
}
