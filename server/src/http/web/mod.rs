//! The administrator's web dashboard at `/`: server-rendered pages, every asset
//! embedded in the binary. Sign-in makes a session (random token in an HttpOnly cookie,
//! its SHA-256 in `sessions`); every form that changes something carries the session's
//! CSRF token, checked here.

mod conflicts;
mod html;
mod manage;
mod pages;
mod sightings;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::AppState;
use crate::auth::{token_hash, verify_password};

const COOKIE: &str = "ctdata_session";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/batches", get(pages::batches))
        .route("/batches/{id}", get(pages::batch))
        .route("/rejected", get(pages::rejected))
        .route("/rejected/{id}/file", get(pages::rejected_file))
        .route("/rejected/{id}/reprocess", post(pages::reprocess))
        .route("/rejected/{id}/delete", post(pages::delete_rejected))
        .route("/sightings", get(sightings::list))
        .route("/devices", get(manage::devices).post(manage::add_device))
        .route("/devices/{name}/rotate", post(manage::rotate))
        .route("/devices/{name}/revoke", post(manage::revoke))
        .route("/sources", get(manage::sources).post(manage::download))
        .route("/assets/style.css", get(style))
        .route("/assets/map.js", get(map_js))
}

async fn style() -> Response {
    let css = include_str!("assets/style.css");
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], css).into_response()
}

async fn map_js() -> Response {
    let js = include_str!("assets/map.js");
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        js,
    )
        .into_response()
}

/// The administrator behind a request's session cookie, if it names a live session.
pub struct Signed {
    pub admin: String,
    pub csrf: String,
    token_hash: String,
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(super) async fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<Signed> {
    let hash = token_hash(&cookie_token(headers)?);
    let session = match state.ingestor.db.session(&hash).await {
        Ok(s) => s?,
        Err(e) => {
            tracing::warn!("session lookup failed: {e}");
            return None;
        }
    };
    (session.expires_at > now()).then_some(Signed {
        admin: session.admin,
        csrf: session.csrf,
        token_hash: hash,
    })
}

/// A page's guard: the session, or a redirect to the sign-in page.
pub(super) async fn require(state: &AppState, headers: &HeaderMap) -> Result<Signed, Response> {
    signed_in(state, headers)
        .await
        .ok_or_else(|| Redirect::to("/login").into_response())
}

/// A form's guard: a live session and its CSRF token in the form, else 403.
pub(super) async fn require_form(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Signed, Response> {
    let refused = |why: &str| {
        let body = html::message_page("Refused", why);
        (StatusCode::FORBIDDEN, body).into_response()
    };
    let Some(signed) = signed_in(state, headers).await else {
        return Err(refused(
            "You are not signed in (or the sign-in expired). Sign in and try again.",
        ));
    };
    let given = csrf.unwrap_or_default().as_bytes();
    let expected = signed.csrf.as_bytes();
    // Length first, then every byte, so the comparison's time says nothing.
    let same = given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(refused(
            "This form did not carry its security token (CSRF). Reload the page and try again.",
        ));
    }
    Ok(signed)
}

/// Any failure inside a page, in words.
pub(super) fn failure(e: impl std::fmt::Display) -> Response {
    let body = html::message_page("Something went wrong", &e.to_string());
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if signed_in(&state, &headers).await.is_some() {
        return Redirect::to("/").into_response();
    }
    html::login_page(None).into_response()
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    name: String,
    password: String,
}

async fn login(State(state): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let wrong = || {
        let body = html::login_page(Some("Wrong name or password."));
        // 401, so the failed-login throttle counts it like an API login.
        (StatusCode::UNAUTHORIZED, body).into_response()
    };
    let db = &state.ingestor.db;
    let stored = match db.admin_password_hash(&f.name).await {
        Ok(Some(h)) => h,
        Ok(None) => return wrong(),
        Err(e) => return failure(e),
    };
    let Ok(_permit) = state.password_checks.acquire().await else {
        return failure("the server is shutting down");
    };
    let password = f.password;
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &stored)).await;
    if !ok.unwrap_or(false) {
        return wrong();
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let csrf = hex::encode(rand::random::<[u8; 32]>());
    let life = state.dashboard.session.as_secs() as i64;
    if let Err(e) = db
        .create_session(&token_hash(&token), &f.name, &csrf, now(), now() + life)
        .await
    {
        return failure(e);
    }
    tracing::info!(admin = f.name, "dashboard sign-in");
    let secure = if state.dashboard.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={life}{secure}");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/".to_string()),
        ],
    )
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    pub csrf: Option<String>,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let signed = match require_form(&state, &headers, f.csrf.as_deref()).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(e) = state.ingestor.db.delete_session(&signed.token_hash).await {
        return failure(e);
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/login".to_string()),
        ],
    )
        .into_response()
}
