//! Slows down guessing: after a few failed logins from one address, that address gets
//! 429 with a Retry-After that doubles with each further failure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// The address a request came from, added to every request of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// Failures allowed before the address has to wait.
const FREE_FAILURES: u32 = 5;
/// A quiet address is forgiven after this long.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
const LONGEST_WAIT: Duration = Duration::from_secs(300);
/// Bounds the table's memory under a spray of addresses.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Default)]
pub struct AuthFailures {
    by_address: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthFailures {
    /// How long `ip` must still wait, if it must.
    fn wait(&self, ip: IpAddr) -> Option<Duration> {
        let map = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let (count, last) = *map.get(&ip)?;
        let over = count.checked_sub(FREE_FAILURES)?;
        let backoff = Duration::from_secs(1u64 << over.min(16)).min(LONGEST_WAIT);
        backoff.checked_sub(last.elapsed()).filter(|d| !d.is_zero())
    }

    fn failed(&self, ip: IpAddr) {
        let mut map = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ADDRESSES {
            map.retain(|_, (_, last)| last.elapsed() < FORGET_AFTER);
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FORGET_AFTER {
            entry.0 = 0;
        }
        *entry = (entry.0 + 1, Instant::now());
    }

    fn succeeded(&self, ip: IpAddr) {
        self.by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

/// Middleware: refuses a throttled address before any credential is checked, and
/// counts the 401s it gets.
pub async fn throttle_failed_logins(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let ip = req.extensions().get::<Peer>().map(|p| p.0);
    if let Some(wait) = ip.and_then(|ip| state.auth_failures.wait(ip)) {
        let secs = wait.as_secs().max(1);
        let body = format!("too many failed logins from this address; try again in {secs} s\n");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            body,
        )
            .into_response();
    }
    let response = next.run(req).await;
    if let Some(ip) = ip {
        match response.status() {
            StatusCode::UNAUTHORIZED => state.auth_failures.failed(ip),
            s if s.is_success() => state.auth_failures.succeeded(ip),
            _ => {}
        }
    }
    response
}
