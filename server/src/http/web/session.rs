//! Who is signed in, as extractors: a page handler takes [`Signed`] (a stranger is sent
//! to the sign-in page), a form handler takes [`SignedForm`] (refused with 403 unless the
//! form carries the session's CSRF token). Sign-in makes a session: a random token in an
//! HttpOnly cookie, its SHA-256 in `sessions`.

use axum::extract::{FromRequest, FromRequestParts, RawForm, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::view;
use crate::auth::token_hash;
use crate::http::AppState;

/// The session token's cookie.
pub const SESSION: &str = "ctdata_session";
/// The sign-in form's own CSRF guard (double submit): a random value in this cookie and
/// in the form, which must agree. Another site can post to /login but can neither read
/// nor set the cookie, so it cannot sign a browser in to an account it chose.
pub const LOGIN: &str = "ctdata_login";

/// The administrator behind a request's session cookie.
pub struct Signed {
    pub admin: String,
    pub csrf: String,
    pub token_hash: String,
}

/// The live session the request's cookie names, if any.
pub async fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<Signed> {
    let jar = CookieJar::from_headers(headers);
    let hash = token_hash(jar.get(SESSION)?.value());
    let session = match state.ingestor.db.session(&hash).await {
        Ok(s) => s?,
        Err(e) => {
            tracing::warn!("session lookup failed: {e}");
            return None;
        }
    };
    (session.expires_at > chrono::Utc::now().timestamp()).then_some(Signed {
        admin: session.admin,
        csrf: session.csrf,
        token_hash: hash,
    })
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Redirect> {
        signed_in(state, &parts.headers)
            .await
            .ok_or_else(|| Redirect::to("/login"))
    }
}

/// A form posted by a signed-in administrator with the session's CSRF token, and its
/// fields. The session and the token are checked before the fields are read.
pub struct SignedForm<F> {
    pub signed: Signed,
    pub form: F,
}

/// A form with no fields but its CSRF token.
#[derive(Deserialize)]
pub struct NoFields {}

#[derive(Deserialize)]
struct CsrfField {
    csrf: Option<String>,
}

impl<F: DeserializeOwned> FromRequest<AppState> for SignedForm<F> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let refused = |why: &str| view::message(StatusCode::FORBIDDEN, "Refused", why);
        let Some(signed) = signed_in(state, req.headers()).await else {
            return Err(refused(
                "You are not signed in (or the sign-in expired). Sign in and try again.",
            ));
        };
        let RawForm(body) = RawForm::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let given = serde_urlencoded::from_bytes::<CsrfField>(&body)
            .ok()
            .and_then(|f| f.csrf);
        if !same_secret(given.as_deref().unwrap_or_default(), &signed.csrf) {
            return Err(refused(
                "This form did not carry its security token (CSRF). Reload the page and try again.",
            ));
        }
        let form = serde_urlencoded::from_bytes(&body).map_err(|e| {
            let why = format!("The form is incomplete: {e}.");
            view::message(StatusCode::UNPROCESSABLE_ENTITY, "Refused", &why)
        })?;
        Ok(SignedForm { signed, form })
    }
}

/// Equal secrets, compared in a time that says nothing about where they differ.
pub fn same_secret(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// A fresh random secret as 64 hex digits.
pub fn secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The session cookie for `token`, lasting `life_secs`.
pub fn session_cookie(token: String, life_secs: i64, secure: bool) -> Cookie<'static> {
    Cookie::build((SESSION, token))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(life_secs))
        .secure(secure)
        .build()
}

/// The sign-in form's CSRF cookie, sent back only to /login.
pub fn login_cookie(csrf: String, secure: bool) -> Cookie<'static> {
    Cookie::build((LOGIN, csrf))
        .path("/login")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .build()
}

/// A cookie named `name` on `path`, for removing it.
pub fn spent(name: &'static str, path: &'static str) -> Cookie<'static> {
    Cookie::build(name).path(path).build()
}
