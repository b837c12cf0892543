//! Serving connections: hyper with a header-read timeout (axum::serve arms none), caps
//! on open connections, an idle timeout, paced request bodies and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::paced::PacedBody;
use crate::connlimit::ConnLimits;

/// HTTP/2 requests one connection may have in progress; with the per-address cap this
/// bounds what one client holds.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// What a connection is held to.
pub struct ConnPolicy {
    /// Request headers (and a TLS handshake) must arrive within this.
    pub header_read_timeout: Duration,
    /// No request in progress for this long closes the connection.
    pub idle_timeout: Duration,
    pub limits: Arc<ConnLimits>,
    pub min_body_rate: u64,
    pub body_idle_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish. With `tls`, each connection first completes a TLS handshake on its own task
/// (never in the accept loop), bounded by `header_read_timeout` like the request
/// headers that follow it.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    policy: ConnPolicy,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(policy.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let builder = Arc::new(builder);
    let policy = Arc::new(policy);
    // Each connection's service carries its peer address (`ConnectInfo`), which the
    // `Client` extractor reads.
    let make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    policy.limits.accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = policy.limits.admit(peer.ip()) else {
            refuse(stream, tls.is_some());
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Watched from here on: shutdown also waits for a handshake in progress.
        let watcher = graceful.watcher();
        let (builder, tls, policy) = (builder.clone(), tls.clone(), policy.clone());
        let app = make_service.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(app) = app.oneshot(peer).await;
            let ended = match tls {
                None => serve_connection(&builder, stream, app, peer, &policy, watcher).await,
                Some(tls) => {
                    let handshake = tls.accept(stream);
                    match tokio::time::timeout(policy.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            serve_connection(&builder, stream, app, peer, &policy, watcher).await
                        }
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

/// Over the cap: a plain-HTTP client is told why (if its socket takes the few bytes
/// now; nothing waits on it), then the socket is closed at once, so it costs a
/// descriptor only for this moment.
fn refuse(stream: TcpStream, tls: bool) {
    if !tls {
        let _ = stream.try_write(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\n\
              Content-Length: 0\r\n\r\n",
        );
    }
}

/// One connection (HTTP/1.1 or HTTP/2, plain or TLS) until it closes, stays idle too
/// long, or shutdown has let its requests in flight finish.
async fn serve_connection<I, S>(
    builder: &Builder<TokioExecutor>,
    io: I,
    app: S,
    peer: SocketAddr,
    policy: &ConnPolicy,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<axum::extract::Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let activity = Arc::new(Activity::default());
    let (rate, body_idle) = (policy.min_body_rate, policy.body_idle_timeout);
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |req: hyper::Request<hyper::body::Incoming>| {
            // Until the response body is sent or dropped: a long download is not idle.
            let busy = activity.begin();
            let req = req.map(|b| Body::new(PacedBody::new(Body::new(b), rate, body_idle)));
            let response = app.clone().oneshot(req);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|b| {
                    Body::new(b.map_frame(move |f| {
                        let _ = &busy;
                        f
                    }))
                }))
            }
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let watched = watcher.watch(conn);
    tokio::select! {
        ended = watched => ended,
        () = activity.idle_for(policy.idle_timeout) => {
            tracing::debug!(%peer, "closing an idle connection");
            Ok(())
        }
    }
}

/// Requests in progress on one connection, and since when it has had none.
struct Activity {
    state: Mutex<(usize, Instant)>,
    ended: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            state: Mutex::new((0, Instant::now())),
            ended: Notify::new(),
        }
    }
}

/// A request in progress.
struct Busy(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
        Busy(self.clone())
    }

    /// Resolves once no request has been in progress for `limit` (counting from the
    /// connection's start, before any byte).
    async fn idle_for(&self, limit: Duration) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let (busy, since) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
            if busy > 0 {
                ended.await;
                continue;
            }
            let deadline = since + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = ended => {}
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0 {
            state.1 = Instant::now();
        }
        drop(state);
        self.0.ended.notify_waiters();
    }
}
