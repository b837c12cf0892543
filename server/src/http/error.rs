//! One error type for the API: a status per variant, a short machine-readable body for
//! client errors, details logged for server errors.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

pub use ctdata_api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// 413 that names the limit and the setting.
    #[error("{0}")]
    TooLargeWhy(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but not what the endpoint takes (a webhook body missing a field).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("the request body stalled for more than {0} s")]
    BodyTimeout(u64),
    #[error("too many failed logins for this name from this address; try again in {0} s")]
    TooManyFailures(u64),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A query failed: the database is down, full or refusing; logged, 503.
    #[error("database unavailable: {0}")]
    Database(#[from] sqlx::Error),
    /// Spooling or filing a file failed; logged, 500.
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
    /// The body stalled or trickled below `http.min_body_bytes_per_sec`.
    #[error("{0}")]
    SlowBody(String),
    /// 503 that says why, for operators and load balancers.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The device's spool space (`http.max_spool_bytes_per_device`) is used up: 507.
    #[error("{0}")]
    SpoolFull(String),
    /// A resumable upload's offset or checksum did not match (tus): the status to answer.
    #[error("{1}")]
    Upload(StatusCode, String),
}

/// What a 503 asks the client to wait before trying again.
pub const RETRY_UNAVAILABLE_SECS: u64 = 30;

impl ApiError {
    /// A failure to store what the client sent: when the database failed (down, full,
    /// out of connections) or the disk is full, nothing was acknowledged and the same
    /// request will work later, so it is 503 with Retry-After; anything else is 500.
    pub fn storing(e: anyhow::Error) -> ApiError {
        let transient = e.chain().any(|cause| {
            cause.is::<sqlx::Error>()
                || cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
        });
        if transient {
            ApiError::Unavailable(format!("{e:#}"))
        } else {
            ApiError::Internal(e)
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge(_) | ApiError::TooLargeWhy(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyFailures(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::SpoolFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Upload(status, _) => *status,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooLarge(_) | ApiError::TooLargeWhy(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Gone(_) => "gone",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::TooManyFailures(_) => "too_many_failures",
            ApiError::Unavailable(_) | ApiError::Database(_) => "unavailable",
            ApiError::Internal(_) | ApiError::Io(_) => "internal",
            ApiError::SlowBody(_) => "body_too_slow",
            ApiError::NotReady(_) => "not_ready",
            ApiError::SpoolFull(_) => "spool_full",
            ApiError::Upload(..) => "upload_mismatch",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if let ApiError::NotReady(why) = &self {
            tracing::warn!("not ready: {why}");
            self.to_string()
        } else if status.is_server_error() && !matches!(self, ApiError::SpoolFull(_)) {
            tracing::error!("request failed: {self:#}");
            "the server could not complete the request; it is logged".to_string()
        } else {
            self.to_string()
        };
        let body = Json(ErrorBody {
            error: self.code().to_string(),
            message,
        });
        let mut response = (status, body).into_response();
        if let ApiError::TooManyFailures(secs) = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(*secs));
        }
        if let ApiError::Unavailable(_) = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(RETRY_UNAVAILABLE_SECS),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer, Basic realm=\"CTData\""),
            );
        }
        response
    }
}

/// Query parameters decoded into `T`, like axum's `Query`, but a parameter that does
/// not parse is answered like every other client error: 400 with an [`ErrorBody`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}
