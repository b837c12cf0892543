//! The administrator's web dashboard at `/`: server-rendered pages (askama templates in
//! `server/templates/`), every asset embedded in the binary. Who is signed in, and the
//! CSRF token every form that changes something carries, are checked by the extractors
//! in [`session`].

mod account;
mod manage;
mod overview;
mod pages;
mod patrols;
mod session;
mod sightings;
mod view;

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::CookieJar;
use serde::Deserialize;

pub(super) use session::signed_in;
use session::{same_secret, secret, NoFields, SignedForm};
use view::{render, PageResult};

use super::throttle::Client;
use super::AppState;
use crate::auth::token_hash;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview::overview))
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
        .route("/patrols", get(patrols::list))
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

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    error: Option<&'a str>,
    csrf: &'a str,
    /// A hint how to make the first administrator.
    no_admins: bool,
}

/// The sign-in page with a fresh login CSRF value (in the form and in its cookie).
/// `status` is 200, or 401/403/429 after a refused attempt.
async fn login_form(
    state: &AppState,
    jar: CookieJar,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let no_admins = matches!(state.ingestor.db.admin_count().await, Ok(0));
    let csrf = secret();
    let page = render(
        status,
        LoginPage {
            error,
            csrf: &csrf,
            no_admins,
        },
    );
    let jar = jar.add(session::login_cookie(csrf, state.dashboard.secure_cookie));
    (jar, page).into_response()
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if signed_in(&state, &headers).await.is_some() {
        return Redirect::to("/").into_response();
    }
    login_form(
        &state,
        CookieJar::from_headers(&headers),
        StatusCode::OK,
        None,
    )
    .await
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
    csrf: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    client: Client,
    jar: CookieJar,
    Form(f): Form<LoginForm>,
) -> PageResult {
    let expected = jar.get(session::LOGIN).map(|c| c.value().to_string());
    let from_our_page = match (&f.csrf, &expected) {
        (Some(given), Some(expected)) => same_secret(given, expected),
        _ => false,
    };
    if !from_our_page {
        let why = "This sign-in form did not come from this server's sign-in page (CSRF). Reload the page and try again.";
        return Ok(login_form(&state, jar, StatusCode::FORBIDDEN, Some(why)).await);
    }
    let failures = &state.auth_failures;
    if let Some(wait) = failures.wait(&f.name, client.0) {
        let why = format!(
            "Too many failed sign-ins for this name from this address; try again in {} s.",
            wait.as_secs().max(1)
        );
        return Ok(login_form(&state, jar, StatusCode::TOO_MANY_REQUESTS, Some(&why)).await);
    }
    if !super::auth::admin_password_ok(&state, &f.name, f.password).await? {
        failures.failed(&f.name, client.0);
        let why = Some("Wrong name or password.");
        return Ok(login_form(&state, jar, StatusCode::UNAUTHORIZED, why).await);
    }
    failures.succeeded(&f.name, client.0);
    let token = secret();
    let life = state.dashboard.session.as_secs() as i64;
    let now = chrono::Utc::now().timestamp();
    state
        .ingestor
        .db
        .create_session(&token_hash(&token), &f.name, &secret(), now, now + life)
        .await?;
    tracing::info!(admin = f.name, "dashboard sign-in");
    let secure = state.dashboard.secure_cookie;
    // Two jars so the session cookie is the first Set-Cookie (a jar's order is not fixed).
    let session = CookieJar::new().add(session::session_cookie(token, life, secure));
    let spent = jar.remove(session::spent(session::LOGIN, "/login"));
    Ok((session, spent, Redirect::to("/")).into_response())
}

async fn logout(
    State(state): State<AppState>,
    jar: CookieJar,
    SignedForm { signed, .. }: SignedForm<NoFields>,
) -> PageResult {
    state.ingestor.db.delete_session(&signed.token_hash).await?;
    let jar = jar.remove(session::spent(session::SESSION, "/"));
    Ok((jar, Redirect::to("/login")).into_response())
}
