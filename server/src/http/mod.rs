//! The HTTP API: one state, a router per resource, served by hyper with a header-read
//! timeout (axum::serve arms none) and graceful shutdown.

pub(crate) mod admin;
mod auth;
mod batches;
mod download;
mod error;
mod sightings;
mod throttle;
pub mod tls;
mod web;
mod whoami;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody};

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
    /// Failed logins by address.
    pub auth_failures: Arc<throttle::AuthFailures>,
    /// Caps concurrent Argon2 password checks.
    pub password_checks: Arc<tokio::sync::Semaphore>,
    /// The remote sources, for the admin Download.
    pub puller: Arc<crate::sources::Puller>,
    /// Devices allowed to download sightings (`http.read_devices`).
    pub read_devices: Arc<Vec<String>>,
    pub dashboard: Arc<DashboardSettings>,
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

/// Folder (inside the drop directory) where request bodies are spooled.
pub const INCOMING: &str = ".incoming";

pub fn app(state: AppState, max_concurrent_requests: usize) -> Router {
    let (router, api) = api_router().split_for_parts();
    let api = Arc::new(api);
    router
        .merge(web::router())
        .route(
            "/api/v1/openapi.json",
            get(move || std::future::ready(Json(api.as_ref().clone()))),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            throttle::throttle_failed_logins,
        ))
        .with_state(state)
        .layer(axum::middleware::from_fn(trace_request))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            max_concurrent_requests.max(1),
        ))
}

/// Every route, with the OpenAPI description generated from the same registrations, so
/// the document cannot list a route the server lacks or miss one it has.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .merge(batches::router())
        .merge(sightings::router())
        .merge(admin::router())
        .merge(download::router())
        .merge(whoami::router())
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

/// The database answers and the drop directory can be read: the server can take batches.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = String), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state
        .ingestor
        .db
        .totals()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    drop_dir_ready(&state)?;
    Ok("ready\n")
}

/// The ingest loop reports a drop directory it cannot read (an unmounted share).
fn drop_dir_ready(state: &AppState) -> Result<(), ApiError> {
    match state.ingestor.metrics.drop_dir_problem() {
        Some(problem) => Err(ApiError::Unavailable(problem)),
        None => Ok(()),
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish. With `tls`, each connection first completes a TLS handshake on its own task
/// (never in the accept loop), bounded by `header_read_timeout` like the request
/// headers that follow it.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Watched from here on: shutdown also waits for a handshake in progress.
        let watcher = graceful.watcher();
        let app = app
            .clone()
            .layer(axum::Extension(throttle::Peer(peer.ip())));
        let (builder, tls) = (builder.clone(), tls.clone());
        tokio::spawn(async move {
            let ended = match tls {
                None => serve_connection(&builder, stream, app, watcher).await,
                Some(tls) => {
                    match tokio::time::timeout(header_read_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(&builder, stream, app, watcher).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One connection (HTTP/1.1 or HTTP/2, plain or TLS) until it closes, or until shutdown
/// has let its requests in flight finish.
async fn serve_connection<I>(
    builder: &Builder<TokioExecutor>,
    io: I,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    watcher.watch(conn).await
}
