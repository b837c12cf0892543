//! The HTTP API: one state, a router per resource, served by hyper with a header-read
//! timeout (axum::serve arms none) and graceful shutdown.

mod admin;
mod auth;
mod batches;
mod error;
mod sightings;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

pub use error::ApiError;

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
    /// Caps concurrent Argon2 password checks.
    pub password_checks: Arc<tokio::sync::Semaphore>,
}

/// Folder (inside the drop directory) where request bodies are spooled.
pub const INCOMING: &str = ".incoming";

pub fn app(state: AppState, max_concurrent_requests: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(batches::router())
        .merge(sightings::router())
        .merge(admin::router())
        .with_state(state)
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            max_concurrent_requests.max(1),
        ))
}

/// The database answers: the server can take batches.
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state
        .ingestor
        .db
        .totals()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok("ready\n")
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
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
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
