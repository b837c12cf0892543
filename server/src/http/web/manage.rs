//! Devices (add, rotate, revoke; a new token is shown once) and Sources (last pull,
//! Download now).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::session::{NoFields, Signed, SignedForm};
use super::view::{filters, render, Frame, Notice, PageResult};
use crate::db::{DeviceStats, PullRecord};
use crate::http::AppState;
use crate::sources::DownloadReport;

/// Nothing received for `stale_after_days` (a device never seen is not stale: it may
/// not be in the field yet).
pub fn stale(state: &AppState, d: &DeviceStats) -> bool {
    if d.revoked {
        return false;
    }
    let Some(seen) = d.last_seen_at else {
        return false;
    };
    let age = chrono::Utc::now().signed_duration_since(seen);
    age.num_seconds() as f64 > state.dashboard.stale_after_days * 86_400.0
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage<'a> {
    frame: Frame<'a>,
    /// A device's name and its new token, shown this once.
    new_token: Option<(String, String)>,
    notice: Option<Notice>,
    stale_after_days: f64,
    rows: Vec<DeviceRow>,
}

struct DeviceRow {
    device: DeviceStats,
    state: DeviceState,
    /// Batch numbers that never arrived, e.g. "3, 5–6 (3 batches)".
    missing: Option<String>,
}

enum DeviceState {
    Revoked,
    /// Seen through the drop directory only.
    Unregistered,
    Stale,
    Active,
}

fn rotate_label(d: &DeviceStats) -> &'static str {
    if d.registered {
        "Rotate token"
    } else {
        "Give a token"
    }
}

pub async fn devices(State(state): State<AppState>, signed: Signed) -> PageResult {
    devices_page(&state, &signed, None, None).await
}

async fn devices_page(
    state: &AppState,
    signed: &Signed,
    new_token: Option<(String, String)>,
    notice: Option<Notice>,
) -> PageResult {
    let devices = state.ingestor.db.device_stats().await?;
    let gaps = state.ingestor.db.sequence_gaps().await?;
    let rows = devices
        .into_iter()
        .map(|d| DeviceRow {
            state: if d.revoked {
                DeviceState::Revoked
            } else if !d.registered {
                DeviceState::Unregistered
            } else if stale(state, &d) {
                DeviceState::Stale
            } else {
                DeviceState::Active
            },
            missing: missing(&gaps, &d.name),
            device: d,
        })
        .collect();
    let page = DevicesPage {
        frame: signed.frame("/devices", "Devices"),
        new_token,
        notice,
        stale_after_days: state.dashboard.stale_after_days,
        rows,
    };
    Ok(render(StatusCode::OK, page))
}

/// The skipped numbers as runs, e.g. "3, 5–6 (3 batches)"; at most eight runs are
/// spelled out. `None` when nothing is missing.
fn missing(gaps: &[(String, i64, i64)], device: &str) -> Option<String> {
    let runs: Vec<(i64, i64)> = gaps
        .iter()
        .filter(|(name, _, _)| name == device)
        .map(|(_, lo, hi)| (*lo, *hi))
        .collect();
    if runs.is_empty() {
        return None;
    }
    let total: i64 = runs.iter().map(|(lo, hi)| hi - lo + 1).sum();
    let mut shown: Vec<String> = runs
        .iter()
        .take(8)
        .map(|(lo, hi)| match lo == hi {
            true => lo.to_string(),
            false => format!("{lo}–{hi}"),
        })
        .collect();
    if runs.len() > 8 {
        shown.push("…".into());
    }
    let noun = if total == 1 { "batch" } else { "batches" };
    Some(format!("{} ({total} {noun})", shown.join(", ")))
}

/// A new token to show, or why there is none.
async fn token_page(
    state: &AppState,
    signed: &Signed,
    name: &str,
    made: anyhow::Result<String>,
) -> PageResult {
    match made {
        Ok(token) => devices_page(state, signed, Some((name.to_string(), token)), None).await,
        Err(e) => devices_page(state, signed, None, Some(Notice::error(e))).await,
    }
}

#[derive(Deserialize)]
pub struct AddForm {
    name: String,
}

pub async fn add_device(
    State(state): State<AppState>,
    SignedForm { signed, form }: SignedForm<AddForm>,
) -> PageResult {
    let name = form.name.trim();
    let made = crate::credentials::add_device(&state.ingestor.db, name).await;
    if made.is_ok() {
        tracing::info!(
            admin = signed.admin,
            device = name,
            "dashboard added a device"
        );
    }
    token_page(&state, &signed, name, made).await
}

pub async fn rotate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    SignedForm { signed, .. }: SignedForm<NoFields>,
) -> PageResult {
    let db = &state.ingestor.db;
    // A device first seen through the drop directory has no token to rotate: add one.
    let registered = db
        .device_stats()
        .await?
        .iter()
        .any(|d| d.name == name && d.registered);
    let made = if registered {
        crate::credentials::rotate_device(db, &name).await
    } else {
        crate::credentials::add_device(db, &name).await
    };
    token_page(&state, &signed, &name, made).await
}

pub async fn revoke(
    State(state): State<AppState>,
    Path(name): Path<String>,
    SignedForm { signed, .. }: SignedForm<NoFields>,
) -> PageResult {
    let notice = match crate::credentials::revoke_device(&state.ingestor.db, &name).await {
        Ok(()) => Notice::ok(format!("{name} is revoked: its token no longer works.")),
        Err(e) => Notice::error(e),
    };
    devices_page(&state, &signed, None, Some(notice)).await
}

#[derive(Template)]
#[template(path = "sources.html")]
struct SourcesPage<'a> {
    frame: Frame<'a>,
    /// What Download now did.
    report: Option<Result<DownloadReport, String>>,
    sources: Vec<SourceRow>,
}

struct SourceRow {
    name: String,
    /// Without any password.
    url: String,
    last: Option<PullRecord>,
}

pub async fn sources(State(state): State<AppState>, signed: Signed) -> PageResult {
    sources_page(&state, &signed, None).await
}

async fn sources_page(
    state: &AppState,
    signed: &Signed,
    report: Option<Result<DownloadReport, String>>,
) -> PageResult {
    let pulls = state.ingestor.db.last_pulls().await?;
    let sources = state
        .puller
        .sources()
        .iter()
        .map(|s| SourceRow {
            name: s.name.clone(),
            url: crate::config::redact_url(&s.url),
            last: pulls.iter().find(|p| p.source == s.name).cloned(),
        })
        .collect();
    let page = SourcesPage {
        frame: signed.frame("/sources", "Sources"),
        report,
        sources,
    };
    Ok(render(StatusCode::OK, page))
}

#[derive(Deserialize)]
pub struct DownloadForm {
    source: Option<String>,
}

pub async fn download(
    State(state): State<AppState>,
    SignedForm { signed, form }: SignedForm<DownloadForm>,
) -> PageResult {
    tracing::info!(
        admin = signed.admin,
        source = form.source.as_deref().unwrap_or("(all)"),
        "dashboard download"
    );
    let puller = state.puller.clone();
    let source = form.source.filter(|s| !s.is_empty());
    // Its own task: closing the tab does not cut the pull short.
    let ran =
        tokio::spawn(async move { puller.download(source.as_deref(), "dashboard").await }).await;
    let report = match ran {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    sources_page(&state, &signed, Some(report)).await
}
