//! The administrator's web dashboard at `/`: server-rendered pages, every asset
//! embedded in the binary. Sign-in makes a session (random token in an HttpOnly cookie,
//! its SHA-256 in `sessions`); every form that changes something carries the session's
//! CSRF token, checked here.

mod account;
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

use super::throttle::Client;
use super::AppState;
use crate::auth::token_hash;

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
        .route("/account", get(account::account))
        .route("/account/password", post(account::change_password))
        .route("/account/tokens/{id}/revoke", post(account::revoke_token))
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
    pub token_hash: String,
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    cookie(headers, COOKIE)
}

/// The value of the request's cookie `name`, if it sent one.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&prefix).map(str::to_string))
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
    if !same_secret(csrf.unwrap_or_default(), &signed.csrf) {
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

/// The sign-in form's own CSRF guard (double submit): a random value in a cookie and in
/// the form, which must agree. Another site can post to /login but can neither read
/// nor set the cookie, so it cannot sign a browser in to an account it chose.
const LOGIN_COOKIE: &str = "ctdata_login";

fn login_cookie(headers: &HeaderMap) -> Option<String> {
    cookie(headers, LOGIN_COOKIE)
}

/// The sign-in page with a fresh login CSRF value, and a hint when no administrator
/// exists yet. `status` is 200, or 401/429 after a refused attempt.
async fn login_form(state: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let no_admins = matches!(state.ingestor.db.admin_count().await, Ok(0));
    let csrf = hex::encode(rand::random::<[u8; 32]>());
    let secure = if state.dashboard.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{LOGIN_COOKIE}={csrf}; Path=/login; HttpOnly; SameSite=Strict{secure}");
    let body = html::login_page(error, &csrf, no_admins);
    (status, [(header::SET_COOKIE, cookie)], body).into_response()
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if signed_in(&state, &headers).await.is_some() {
        return Redirect::to("/").into_response();
    }
    login_form(&state, StatusCode::OK, None).await
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    name: String,
    password: String,
    csrf: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let cookie = login_cookie(&headers);
    if cookie.is_none()
        || !same_secret(
            f.csrf.as_deref().unwrap_or_default(),
            cookie.as_deref().unwrap_or_default(),
        )
    {
        let why = "This sign-in form did not come from this server's sign-in page (CSRF). Reload the page and try again.";
        return login_form(&state, StatusCode::FORBIDDEN, Some(why)).await;
    }
    let failures = &state.auth_failures;
    if let Some(wait) = failures.wait(&f.name, client.0) {
        let why = format!(
            "Too many failed sign-ins for this name from this address; try again in {} s.",
            wait.as_secs().max(1)
        );
        return login_form(&state, StatusCode::TOO_MANY_REQUESTS, Some(&why)).await;
    }
    match super::auth::admin_password_ok(&state, &f.name, f.password).await {
        Ok(true) => failures.succeeded(&f.name, client.0),
        Ok(false) => {
            failures.failed(&f.name, client.0);
            return login_form(
                &state,
                StatusCode::UNAUTHORIZED,
                Some("Wrong name or password."),
            )
            .await;
        }
        Err(e) => return failure(e),
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let csrf = hex::encode(rand::random::<[u8; 32]>());
    let db = &state.ingestor.db;
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
    let spent = format!("{LOGIN_COOKIE}=; Path=/login; HttpOnly; Max-Age=0");
    let mut response =
        (StatusCode::SEE_OTHER, [(header::LOCATION, "/".to_string())]).into_response();
    for c in [cookie, spent] {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// Equal secrets, compared in a time that says nothing about where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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
