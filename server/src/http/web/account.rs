//! The signed-in administrator's own account: change the password (the current one
//! first), list and revoke the API tokens.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::session::{NoFields, Signed, SignedForm};
use super::view::{filters, render, Frame, Notice, PageResult};
use crate::db::{AdminTokenInfo, Revoked, TokenChoice};
use crate::http::throttle::Client;
use crate::http::AppState;

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage<'a> {
    frame: Frame<'a>,
    notice: Option<Notice>,
    min_password_len: usize,
    tokens: Vec<AdminTokenInfo>,
}

pub async fn account(State(state): State<AppState>, signed: Signed) -> PageResult {
    account_page(&state, &signed, StatusCode::OK, None).await
}

async fn account_page(
    state: &AppState,
    signed: &Signed,
    status: StatusCode,
    notice: Option<Notice>,
) -> PageResult {
    let tokens = state.ingestor.db.admin_tokens(&signed.admin).await?;
    let page = AccountPage {
        frame: signed.frame("/account", "Account"),
        notice,
        min_password_len: crate::auth::MIN_PASSWORD_LEN,
        tokens: tokens.unwrap_or_default(),
    };
    Ok(render(status, page))
}

#[derive(Deserialize)]
pub struct PasswordForm {
    current: String,
    new: String,
    again: String,
}

pub async fn change_password(
    State(state): State<AppState>,
    client: Client,
    SignedForm { signed, form: f }: SignedForm<PasswordForm>,
) -> PageResult {
    let refused =
        |status, why: &str| account_page(&state, &signed, status, Some(Notice::error(why)));
    // The current password is a login like any other: counted, and throttled.
    let failures = &state.auth_failures;
    if let Some(wait) = failures.wait(&signed.admin, client.0) {
        let why = format!(
            "Too many failed password checks; try again in {} s.",
            wait.as_secs().max(1)
        );
        return refused(StatusCode::TOO_MANY_REQUESTS, &why).await;
    }
    if !crate::http::auth::admin_password_ok(&state, &signed.admin, f.current).await? {
        failures.failed(&signed.admin, client.0);
        let why = "The current password is wrong; nothing changed.";
        return refused(StatusCode::UNAUTHORIZED, why).await;
    }
    failures.succeeded(&signed.admin, client.0);
    if f.new != f.again {
        let why = "The two new passwords differ; nothing changed.";
        return refused(StatusCode::UNPROCESSABLE_ENTITY, why).await;
    }
    let db = &state.ingestor.db;
    let keep = Some(signed.token_hash.as_str());
    match crate::credentials::set_admin_password(db, &signed.admin, &f.new, keep).await {
        Ok(()) => {
            tracing::info!(admin = signed.admin, "dashboard password change");
            let ok = Notice::ok("Password changed. Your other sign-ins have ended.");
            account_page(&state, &signed, StatusCode::OK, Some(ok)).await
        }
        Err(e) => refused(StatusCode::UNPROCESSABLE_ENTITY, &format!("{e:#}")).await,
    }
}

pub async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    SignedForm { signed, .. }: SignedForm<NoFields>,
) -> PageResult {
    // Only the signed-in administrator's own tokens: the id is looked for among them.
    let revoked = state
        .ingestor
        .db
        .revoke_admin_tokens(&signed.admin, &TokenChoice::Id(id))
        .await?;
    let notice = match revoked {
        Revoked::Done(_) => {
            tracing::info!(
                admin = signed.admin,
                token = id,
                "dashboard revoked an API token"
            );
            Notice::ok("The token is revoked: it no longer works.")
        }
        _ => Notice::error("You have no such active token."),
    };
    account_page(&state, &signed, StatusCode::OK, Some(notice)).await
}
