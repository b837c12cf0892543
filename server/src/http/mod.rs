//! The HTTP API: one state, a router per resource, served by [`serve`].

pub(crate) mod admin;
mod attachments;
mod auth;
mod batches;
mod conn;
mod download;
mod error;
pub mod fair;
mod headers;
mod openrosa;
pub mod paced;
pub(crate) mod resumable;
mod sightings;
pub(crate) mod throttle;
pub mod tls;
mod tracks;
mod web;
mod webhooks;
mod whoami;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use conn::{serve, ConnPolicy};
pub use error::{ApiError, ErrorBody, Query};

use crate::ingest::Ingestor;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub ingestor: Ingestor,
    /// The drop directory: uploads are spooled under `.incoming/` and filed into its
    /// `archive/` and `rejected/` like any other delivery.
    pub drop_dir: Arc<PathBuf>,
    pub max_body_bytes: u64,
    /// Longest silence inside a request body.
    pub body_idle_timeout: Duration,
    /// Failed logins by name and client address.
    pub auth_failures: Arc<throttle::AuthFailures>,
    /// Caps concurrent Argon2 password checks.
    pub password_checks: Arc<tokio::sync::Semaphore>,
    /// The remote sources, for the admin Download.
    pub puller: Arc<crate::sources::Puller>,
    /// Devices allowed to download sightings (`http.read_devices`).
    pub read_devices: Arc<Vec<String>>,
    /// The Darwin Core Archive settings (`format=dwca`).
    pub dwca: Arc<crate::config::DwcaSettings>,
    pub dashboard: Arc<DashboardSettings>,
    /// Slots for every request but uploads (`http.max_concurrent_requests`).
    pub request_slots: Arc<tokio::sync::Semaphore>,
    /// Slots for uploads, per device and in total.
    pub uploads: Arc<fair::UploadSlots>,
    /// Photos and other files that come with sightings.
    pub attachments: crate::attachments::AttachmentStore,
    /// `storage.max_attachment_bytes`.
    pub max_attachment_bytes: u64,
    pub openrosa: Arc<crate::config::OpenRosaSettings>,
    /// `http.max_spool_bytes_per_device`.
    pub max_spool_per_device: u64,
    /// Resumable uploads in progress (`/api/v1/uploads`).
    pub resumable: Arc<resumable::Registry>,
}

impl AppState {
    /// The delivery pipeline, filing into this server's drop directory.
    pub fn deliverer(&self) -> crate::deliver::Deliverer {
        crate::deliver::Deliverer::new(self.ingestor.clone(), &self.drop_dir)
    }
}

/// The web dashboard's settings.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// How long a sign-in lasts.
    pub session: Duration,
    pub stale_after_days: f64,
    /// Under TLS the session cookie is marked Secure.
    pub secure_cookie: bool,
    /// Tiles under the sightings map (`http.map_tile_url`), if any.
    pub map_tiles: Option<MapTiles>,
}

/// A Web Mercator tile source for the sightings map.
#[derive(Debug, Clone)]
pub struct MapTiles {
    /// With `{z}`, `{x}` and `{y}`.
    pub url: String,
    pub attribution: Option<String>,
}

pub fn app(state: AppState) -> Router {
    let (router, api) = api_router().split_for_parts();
    let api = Arc::new(api);
    router
        .merge(web::router())
        .merge(openrosa::router())
        .route(
            "/api/v1/openapi.json",
            get(move || std::future::ready(Json(api.as_ref().clone()))),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            fair::general_slots,
        ))
        .with_state(state)
        .layer(axum::middleware::from_fn(headers::security_headers))
        .layer(axum::middleware::from_fn(trace_request))
}

/// Every route, with the OpenAPI description generated from the same registrations, so
/// the document cannot list a route the server lacks or miss one it has.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .merge(batches::router())
        .merge(resumable::router())
        .merge(sightings::router())
        .merge(admin::router())
        .merge(download::router())
        .merge(whoami::router())
        .merge(tracks::router())
        .merge(webhooks::router())
        .merge(attachments::router())
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "CTData API", description = "Field batches in, consolidated sightings out."),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// Devices send a token (Bearer, or Basic NAME:TOKEN); administrators an API token or
/// Basic NAME:PASSWORD.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        for (name, scheme) in [
            ("device_token", HttpAuthScheme::Bearer),
            ("device_basic", HttpAuthScheme::Basic),
            ("admin_token", HttpAuthScheme::Bearer),
            ("admin_basic", HttpAuthScheme::Basic),
        ] {
            components.add_security_scheme(name, SecurityScheme::Http(Http::new(scheme)));
        }
    }
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// One log line per request, named by its route template (`/api/v1/rejected/{id}/…`)
/// rather than the raw path, so logs and metrics group by endpoint.
async fn trace_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        %method,
        route,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// Prometheus text: batches and sightings by channel, rejections, ingest latency,
/// export bytes.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, body = String)))]
async fn metrics(
    State(state): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let content_type = (
        axum::http::header::CONTENT_TYPE,
        "text/plain; version=0.0.4",
    );
    ([content_type], state.ingestor.metrics.render())
}

/// The database answers and takes writes, and the drop directory can be read: the server
/// can take batches. Not ready (503, naming the reason) while the database refuses
/// writes (a full disk, say) or the drop directory is gone (an unmounted share).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = String), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<String, ApiError> {
    let ingestor = &state.ingestor;
    ingestor.db.totals().await?;
    if let Some(failure) = ingestor.writes.check(&ingestor.db).await {
        return Err(ApiError::NotReady(failure.to_string()));
    }
    drop_dir_ready(&state)?;
    Ok(match ingestor.metrics.replica() {
        Some(replica) => format!("ready: replica {replica}\n"),
        None => "ready\n".to_string(),
    })
}

/// The ingest loop reports a drop directory it cannot read (an unmounted share).
fn drop_dir_ready(state: &AppState) -> Result<(), ApiError> {
    match state.ingestor.metrics.drop_dir_problem() {
        Some(problem) => Err(ApiError::Unavailable(problem)),
        None => Ok(()),
    }
}
