//! `ctdata app`: the window for rangers. A page served on 127.0.0.1 and opened in the
//! default browser; every button runs the same code as the command line (`send` in
//! this process, to watch its bytes; the other commands as `ctdata` child processes,
//! whose words the page shows).
//!
//! Only the person who started it may drive it: the address holds a random key made
//! for this run, every API call must present it in a header (which another site's page
//! cannot add, nor read from our page), and a POST must come from our own origin and
//! name our own host (no DNS rebinding).

mod actions;
mod view;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::home::Home;
use crate::AppArgs;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");
/// The header every API call carries the run's key in.
const KEY_HEADER: &str = "x-ctdata-key";
/// Imports are whole files from other tools; the client's own limits apply after.
const MAX_UPLOAD: usize = 1 << 30;

#[derive(Clone)]
struct App(Arc<Inner>);

struct Inner {
    home: Home,
    key: String,
    /// `127.0.0.1:PORT`, what the Host header must say.
    host: String,
    /// `http://127.0.0.1:PORT`, what a POST's Origin must say.
    origin: String,
    /// This program, to run the CLI's commands.
    exe: PathBuf,
    send: Mutex<SendJob>,
    /// An `autosend` started from the page; it stops with the window.
    autosend: Mutex<Option<tokio::process::Child>>,
    quit: Notify,
}

/// The Tap to send in progress or last finished.
#[derive(Default)]
struct SendJob {
    running: bool,
    progress: Option<ProgressBar>,
    result: Option<SendResult>,
}

#[derive(Clone, serde::Serialize)]
struct SendResult {
    ok: bool,
    /// `good`, `warn` (some refused) or `bad` (something left waiting).
    level: &'static str,
    headline: String,
    detail: String,
    at: DateTime<Utc>,
}

pub async fn run(home: Home, a: AppArgs) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, a.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", a.port))?;
    let addr: SocketAddr = listener.local_addr()?;
    let key = new_key();
    actions::sweep_staging(&home);
    let app = App(Arc::new(Inner {
        home,
        key: key.clone(),
        host: addr.to_string(),
        origin: format!("http://{addr}"),
        exe: std::env::current_exe().context("cannot find this program's path")?,
        send: Mutex::default(),
        autosend: Mutex::default(),
        quit: Notify::new(),
    }));
    let url = format!("http://{addr}/?key={key}");
    println!("ctdata app: open {url} in a web browser (stop with Ctrl-C)");
    if !a.no_browser {
        open_browser(&url);
    }
    let stopper = app.clone();
    let shutdown = async move {
        tokio::select! {
            () = crate::autosend::until_stop_signal() => {}
            () = stopper.0.quit.notified() => {}
        }
    };
    axum::serve(listener, router(app.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    actions::stop_autosend(&app).await;
    println!("ctdata app: stopped");
    Ok(ExitCode::SUCCESS)
}

fn router(app: App) -> Router {
    let api = Router::new()
        .route("/overview", get(view::overview))
        .route("/send", post(actions::send))
        .route("/test", post(actions::test))
        .route("/record", post(actions::record))
        .route("/import", post(actions::import))
        .route("/settings", post(actions::settings))
        .route("/autosend", post(actions::autosend))
        .route("/sync", post(actions::sync))
        .route("/purge", post(actions::purge))
        .route("/quit", post(actions::quit))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .route_layer(middleware::from_fn_with_state(app.clone(), guard));
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(|| static_file("text/javascript", SCRIPT)))
        .route("/app.css", get(|| static_file("text/css", STYLE)))
        .nest("/api", api)
        .with_state(app)
}

async fn static_file(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

#[derive(Deserialize)]
struct PageQuery {
    key: Option<String>,
}

async fn page(State(app): State<App>, Query(q): Query<PageQuery>, h: HeaderMap) -> Response {
    if !same(
        h.get(header::HOST).and_then(|v| v.to_str().ok()),
        &app.0.host,
    ) {
        return refused("this page only answers at 127.0.0.1");
    }
    if !same(q.key.as_deref(), &app.0.key) {
        return refused(
            "this address lacks the key: open the address `ctdata app` printed when it started",
        );
    }
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, Html(PAGE)).into_response()
}

/// Every API call: our host, our key; a POST also from our own page.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let text = |name| {
        h.get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    if !same(text(header::HOST.as_str()), &app.0.host) {
        return refused("this program only answers at 127.0.0.1");
    }
    if !same(text(KEY_HEADER), &app.0.key) {
        return refused("the request lacks this run's key: reload the page from the address `ctdata app` printed");
    }
    if req.method() == Method::POST {
        if let Some(origin) = text(header::ORIGIN.as_str()) {
            if origin != app.0.origin {
                return refused("the request comes from another site");
            }
        }
    }
    next.run(req).await
}

fn refused(why: &str) -> Response {
    (StatusCode::FORBIDDEN, format!("refused: {why}\n")).into_response()
}

/// Compares without stopping at the first differing byte.
fn same(given: Option<&str>, expected: &str) -> bool {
    let Some(given) = given else {
        return false;
    };
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn new_key() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The desktop's way to open an address; a failure only leaves the printed address.
fn open_browser(url: &str) {
    let mut cmd = if cfg!(target_os = "windows") {
        let mut c = std::process::Command::new("cmd");
        c.args(["/C", "start", ""]);
        c
    } else if cfg!(target_os = "macos") {
        std::process::Command::new("open")
    } else {
        std::process::Command::new("xdg-open")
    };
    let started = cmd
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = started {
        eprintln!("ctdata app: cannot open a browser ({e}); open the address above by hand");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same(Some("abc"), "abc"));
        assert!(!same(Some("abd"), "abc"));
        assert!(!same(Some("ab"), "abc"));
        assert!(!same(None, "abc"));
        let (a, b) = (new_key(), new_key());
        assert_eq!(a.len(), 48);
        assert_ne!(a, b);
    }
}
