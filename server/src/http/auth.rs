//! Who is calling: devices by token (Bearer, or Basic NAME:TOKEN), administrators by
//! API token (Bearer) or name and password (Basic, Argon2id, a few checks at a time).
//! Failures are counted per name and client address (see `throttle`): a name that
//! failed too often is refused with 429 before its secret is even looked at.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use base64::Engine;

use super::throttle::{Client, UNKNOWN_TOKEN};
use super::{ApiError, AppState};
use crate::auth::{token_hash, verify_admin_password};

/// A device that proved its token; holds the device's name. As a handler argument it
/// answers 401 (unknown), 403 (revoked) or 429 (locked out) before the handler runs.
#[derive(Debug, Clone)]
pub struct DeviceAuth(pub String);

/// An administrator, by API token or name and password; holds the name.
#[derive(Debug, Clone)]
pub struct AdminAuth(pub String);

/// Who may download sightings, for the log (`admin NAME` or `device NAME`): a signed-in
/// dashboard session, an administrator, or a device listed in `http.read_devices`.
#[derive(Debug, Clone)]
pub struct ReaderAuth(pub String);

/// An administrator for a download that changes nothing (tracks, patrols): by API token,
/// name and password, or a signed-in dashboard session, so the dashboard's links work.
#[derive(Debug, Clone)]
pub struct AdminDownload(pub String);

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = Client::of(parts, state);
        authenticate_device(state, client, &parts.headers)
            .await
            .map(DeviceAuth)
    }
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = Client::of(parts, state);
        authenticate_admin(state, client, &parts.headers)
            .await
            .map(AdminAuth)
    }
}

impl FromRequestParts<AppState> for ReaderAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The dashboard's Download buttons are plain links: a signed-in browser sends its
        // session cookie (safe here: the only reader route is a GET that changes nothing).
        if let Some(session) = super::web::signed_in(state, &parts.headers).await {
            return Ok(ReaderAuth(format!("admin {}", session.admin)));
        }
        let client = Client::of(parts, state);
        authenticate_reader(state, client, &parts.headers)
            .await
            .map(ReaderAuth)
    }
}

impl FromRequestParts<AppState> for AdminDownload {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(session) = super::web::signed_in(state, &parts.headers).await {
            return Ok(AdminDownload(session.admin));
        }
        let client = Client::of(parts, state);
        authenticate_admin(state, client, &parts.headers)
            .await
            .map(AdminDownload)
    }
}

#[derive(Clone)]
enum Credentials {
    Bearer(String),
    Basic(String, String),
}

fn credentials(headers: &HeaderMap) -> Result<Credentials, ApiError> {
    let missing =
        || ApiError::Unauthorized("send credentials: Authorization: Bearer TOKEN, or Basic".into());
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Ok(Credentials::Bearer(token.trim().to_string()));
    }
    let encoded = value.strip_prefix("Basic ").ok_or_else(missing)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::Unauthorized("malformed Basic credentials".into()))?;
    let (name, secret) = decoded
        .split_once(':')
        .ok_or_else(|| ApiError::Unauthorized("Basic credentials must be NAME:SECRET".into()))?;
    Ok(Credentials::Basic(name.to_string(), secret.to_string()))
}

/// Runs `check` under the failed-login throttle. A named account that is locked is
/// refused before its secret is checked; a token names no account until it matches,
/// so a locked address's unknown tokens are refused only after the (cheap) look-up,
/// and a valid token still works.
async fn throttled<F, Fut>(
    state: &AppState,
    client: Client,
    creds: Credentials,
    check: F,
) -> Result<String, ApiError>
where
    F: FnOnce(Credentials) -> Fut,
    Fut: std::future::Future<Output = Result<String, ApiError>>,
{
    let failures = &state.auth_failures;
    let ip = client.0;
    let too_many = |account: &str| {
        failures
            .wait(account, ip)
            .map(|w| ApiError::TooManyFailures(w.as_secs().max(1)))
    };
    let account = match &creds {
        Credentials::Basic(name, _) => {
            if let Some(e) = too_many(name) {
                return Err(e);
            }
            Some(name.clone())
        }
        Credentials::Bearer(_) => None,
    };
    match check(creds).await {
        Ok(name) => {
            failures.succeeded(&name, ip);
            Ok(name)
        }
        Err(e @ ApiError::Unauthorized(_)) => {
            let account = account.as_deref().unwrap_or(UNKNOWN_TOKEN);
            if let Some(locked) = too_many(account) {
                return Err(locked);
            }
            failures.failed(account, ip);
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// A device token in the URL path, for senders that can set no header (webhooks);
/// counted against failed logins like a Bearer token.
pub(super) async fn device_by_path_token(
    state: &AppState,
    parts: &Parts,
    token: String,
) -> Result<String, ApiError> {
    let client = Client::of(parts, state);
    throttled(state, client, Credentials::Bearer(token), |c| {
        check_device(state, c)
    })
    .await
}

/// The device of an OpenRosa request: the token in its path (`/openrosa/key/TOKEN/…`,
/// the way ODK Central serves app users), else its Basic credentials.
pub(super) async fn openrosa_device(
    state: &AppState,
    parts: &Parts,
    path_token: Option<String>,
) -> Result<String, ApiError> {
    let client = Client::of(parts, state);
    let creds = match path_token {
        Some(token) => Credentials::Bearer(token),
        None => credentials(&parts.headers)?,
    };
    throttled(state, client, creds, |c| check_device(state, c)).await
}

/// `Authorization: Bearer TOKEN`, or Basic `NAME:TOKEN` for field software that only
/// knows Basic. A revoked device is told so (403), anything else unknown gets 401.
async fn authenticate_device(
    state: &AppState,
    client: Client,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let creds = credentials(headers)?;
    throttled(state, client, creds, |c| check_device(state, c)).await
}

async fn check_device(state: &AppState, creds: Credentials) -> Result<String, ApiError> {
    let (name, token) = match creds {
        Credentials::Bearer(token) => (None, token),
        Credentials::Basic(name, token) => (Some(name), token),
    };
    let refused = || ApiError::Unauthorized("unknown device or wrong token".into());
    let found = state
        .ingestor
        .db
        .device_token_state(&token_hash(&token))
        .await?;
    let (device, revoked) = found.ok_or_else(refused)?;
    if name.is_some_and(|n| n != device) {
        return Err(refused());
    }
    if revoked {
        return Err(ApiError::Forbidden(format!("device {device} is revoked")));
    }
    Ok(device)
}

/// An administrator: an API token, or name and password.
async fn authenticate_admin(
    state: &AppState,
    client: Client,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let creds = credentials(headers)?;
    throttled(state, client, creds, |c| check_admin(state, c)).await
}

async fn check_admin(state: &AppState, creds: Credentials) -> Result<String, ApiError> {
    let refused =
        || ApiError::Unauthorized("unknown administrator or wrong password or token".into());
    match creds {
        Credentials::Bearer(token) => state
            .ingestor
            .db
            .admin_for_token(&token_hash(&token))
            .await?
            .ok_or_else(refused),
        Credentials::Basic(name, password) => {
            if admin_password_ok(state, &name, password).await? {
                Ok(name)
            } else {
                Err(refused())
            }
        }
    }
}

/// Checks an administrator's password. Each check costs ~20 ms of CPU and 19 MiB, so
/// only a few run at once; an unknown name costs the same (see `verify_admin_password`).
pub async fn admin_password_ok(
    state: &AppState,
    name: &str,
    password: String,
) -> Result<bool, ApiError> {
    let stored = state.ingestor.db.admin_password_hash(name).await?;
    let _permit = state
        .password_checks
        .acquire()
        .await
        .map_err(anyhow::Error::from)?;
    state.ingestor.metrics.password_checked();
    let ok =
        tokio::task::spawn_blocking(move || verify_admin_password(&password, stored.as_deref()))
            .await
            .map_err(anyhow::Error::from)?;
    Ok(ok)
}

/// Who may download sightings: an administrator, or a device the administrator listed
/// in `http.read_devices`. Any other device is told why (403), not just refused.
/// Returns who it is for the log: `admin <name>` or `device <name>`.
async fn authenticate_reader(
    state: &AppState,
    client: Client,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let creds = credentials(headers)?;
    // One attempt, counted once, whichever kind of account it turns out to be.
    throttled(state, client, creds, |c| async move {
        let copy = c.clone();
        let refused = match check_admin(state, c).await {
            Ok(admin) => return Ok(format!("admin {admin}")),
            Err(e @ ApiError::Unauthorized(_)) => e,
            Err(e) => return Err(e),
        };
        match check_device(state, copy).await {
            Ok(device) if state.read_devices.contains(&device) => Ok(format!("device {device}")),
            Ok(device) => Err(ApiError::Forbidden(format!(
                "device {device} may not download sightings: an administrator can allow it \
                 in http.read_devices"
            ))),
            Err(ApiError::Forbidden(m)) => Err(ApiError::Forbidden(m)),
            Err(_) => Err(refused),
        }
    })
    .await
}
