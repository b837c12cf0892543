//! The signed-in administrator's own account: change the password (the current one
//! first), list and revoke the API tokens.

use std::fmt::Write;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::html::{button, csrf_field, esc, page, when};
use super::pages::{db, guard};
use super::{require, require_form, CsrfForm, Signed};
use crate::db::{Revoked, TokenChoice};
use crate::http::throttle::Client;
use crate::http::AppState;

pub async fn account(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = guard!(require(&state, &headers).await);
    account_page(&state, &signed, StatusCode::OK, "").await
}

async fn account_page(
    state: &AppState,
    signed: &Signed,
    status: StatusCode,
    notice: &str,
) -> Response {
    let tokens = db!(state.ingestor.db.admin_tokens(&signed.admin)).unwrap_or_default();
    let mut body = String::from(notice);
    let _ = write!(
        body,
        "<h2>Password</h2><form method=\"post\" action=\"/account/password\" class=\"stack\">{}\
         <label>Current password <input type=\"password\" name=\"current\" id=\"current\" \
         autocomplete=\"current-password\" required></label>\
         <label>New password (at least {} characters) <input type=\"password\" name=\"new\" \
         id=\"new-password\" autocomplete=\"new-password\" required></label>\
         <label>New password again <input type=\"password\" name=\"again\" id=\"again\" \
         autocomplete=\"new-password\" required></label>\
         <button id=\"change-password\">Change password</button></form>\
         <h2>API tokens</h2><p>Scripts sign in with these; <code>ctdata-server admin token {}</code> \
         makes a new one. Only their first characters are kept.</p>",
        csrf_field(signed),
        crate::auth::MIN_PASSWORD_LEN,
        esc(&signed.admin)
    );
    body.push_str(
        "<div class=\"scroll\"><table id=\"tokens\"><thead><tr><th>Token</th><th>Created (UTC)</th>\
         <th>State</th><th></th></tr></thead><tbody>",
    );
    for t in &tokens {
        let (state_text, action) = match &t.revoked_at {
            Some(r) => (format!("revoked {}", when(r)), String::new()),
            None => (
                "active".to_string(),
                button(
                    signed,
                    &format!("/account/tokens/{}/revoke", t.id),
                    "Revoke",
                    "danger",
                ),
            ),
        };
        let _ = write!(
            body,
            "<tr id=\"token-{}\"><td><code>{}</code></td><td>{}</td><td>{state_text}</td><td>{action}</td></tr>",
            t.id,
            esc(t.prefix.as_deref().map(|p| format!("{p}…")).as_deref().unwrap_or("(made before prefixes were kept)")),
            when(&t.created_at),
        );
    }
    body.push_str("</tbody></table></div>");
    (status, page(signed, "/account", "Account", &body)).into_response()
}

#[derive(Deserialize)]
pub struct PasswordForm {
    csrf: Option<String>,
    current: String,
    new: String,
    again: String,
}

pub async fn change_password(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    Form(f): Form<PasswordForm>,
) -> Response {
    let signed = guard!(require_form(&state, &headers, f.csrf.as_deref()).await);
    let refused = |why: &str| format!("<p class=\"error\" id=\"notice\">{}</p>", esc(why));
    // The current password is a login like any other: counted, and throttled.
    let failures = &state.auth_failures;
    if let Some(wait) = failures.wait(&signed.admin, client.0) {
        let why = format!(
            "Too many failed password checks; try again in {} s.",
            wait.as_secs().max(1)
        );
        return account_page(
            &state,
            &signed,
            StatusCode::TOO_MANY_REQUESTS,
            &refused(&why),
        )
        .await;
    }
    match crate::http::auth::admin_password_ok(&state, &signed.admin, f.current).await {
        Ok(true) => failures.succeeded(&signed.admin, client.0),
        Ok(false) => {
            failures.failed(&signed.admin, client.0);
            let why = refused("The current password is wrong; nothing changed.");
            return account_page(&state, &signed, StatusCode::UNAUTHORIZED, &why).await;
        }
        Err(e) => return super::failure(e),
    }
    if f.new != f.again {
        let why = refused("The two new passwords differ; nothing changed.");
        return account_page(&state, &signed, StatusCode::UNPROCESSABLE_ENTITY, &why).await;
    }
    let db = &state.ingestor.db;
    let changed =
        crate::credentials::set_admin_password(db, &signed.admin, &f.new, Some(&signed.token_hash))
            .await;
    match changed {
        Ok(()) => {
            tracing::info!(admin = signed.admin, "dashboard password change");
            let ok = "<p class=\"ok\" id=\"notice\">Password changed. Your other sign-ins have ended.</p>";
            account_page(&state, &signed, StatusCode::OK, ok).await
        }
        Err(e) => {
            let why = refused(&format!("{e:#}"));
            account_page(&state, &signed, StatusCode::UNPROCESSABLE_ENTITY, &why).await
        }
    }
}

pub async fn revoke_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let signed = guard!(require_form(&state, &headers, f.csrf.as_deref()).await);
    // Only the signed-in administrator's own tokens: the id is looked for among them.
    let revoked = db!(state
        .ingestor
        .db
        .revoke_admin_tokens(&signed.admin, &TokenChoice::Id(id)));
    let notice = match revoked {
        Revoked::Done(_) => {
            tracing::info!(
                admin = signed.admin,
                token = id,
                "dashboard revoked an API token"
            );
            "<p class=\"ok\" id=\"notice\">The token is revoked: it no longer works.</p>"
                .to_string()
        }
        _ => "<p class=\"error\" id=\"notice\">You have no such active token.</p>".to_string(),
    };
    account_page(&state, &signed, StatusCode::OK, &notice).await
}
