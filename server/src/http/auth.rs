//! Who is calling: devices by token (Bearer, or Basic NAME:TOKEN), administrators by
//! API token (Bearer) or name and password (Basic, Argon2id, a few checks at a time).

use axum::http::{header, HeaderMap};
use base64::Engine;

use super::{ApiError, AppState};
use crate::auth::{token_hash, verify_password};

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

/// `Authorization: Bearer TOKEN`, or Basic `NAME:TOKEN` for field software that only
/// knows Basic. A revoked device is told so (403), anything else unknown gets 401.
pub async fn authenticate_device(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let (name, token) = match credentials(headers)? {
        Credentials::Bearer(token) => (None, token),
        Credentials::Basic(name, token) => (Some(name), token),
    };
    let refused = || ApiError::Unauthorized("unknown device or wrong token".into());
    let found = state
        .ingestor
        .db
        .device_token_state(&token_hash(&token))
        .await;
    let (device, revoked) = found
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or_else(refused)?;
    if name.is_some_and(|n| n != device) {
        return Err(refused());
    }
    if revoked {
        return Err(ApiError::Forbidden(format!("device {device} is revoked")));
    }
    Ok(device)
}

/// An administrator: an API token, or name and password. Password checks cost ~20 ms
/// of CPU and memory each, so only a few run at once.
pub async fn authenticate_admin(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let refused =
        || ApiError::Unauthorized("unknown administrator or wrong password or token".into());
    let db = &state.ingestor.db;
    match credentials(headers)? {
        Credentials::Bearer(token) => db
            .admin_for_token(&token_hash(&token))
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .ok_or_else(refused),
        Credentials::Basic(name, password) => {
            let stored = db
                .admin_password_hash(&name)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?
                .ok_or_else(refused)?;
            let _permit = state
                .password_checks
                .acquire()
                .await
                .map_err(anyhow::Error::from)?;
            let ok = tokio::task::spawn_blocking(move || verify_password(&password, &stored))
                .await
                .map_err(anyhow::Error::from)?;
            ok.then_some(name).ok_or_else(refused)
        }
    }
}

/// Who may download sightings: an administrator, or a device the administrator listed
/// in `http.read_devices`. Any other device is told why (403), not just refused.
pub async fn authenticate_reader(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let refused = match authenticate_admin(state, headers).await {
        Ok(admin) => return Ok(admin),
        Err(e @ ApiError::Unauthorized(_)) => e,
        Err(e) => return Err(e),
    };
    match authenticate_device(state, headers).await {
        Ok(device) if state.read_devices.contains(&device) => Ok(device),
        Ok(device) => Err(ApiError::Forbidden(format!(
            "device {device} may not download sightings: an administrator can allow it \
             in http.read_devices"
        ))),
        Err(ApiError::Forbidden(m)) => Err(ApiError::Forbidden(m)),
        Err(_) => Err(refused),
    }
}
