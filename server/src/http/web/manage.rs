//! Devices (add, rotate, revoke; a new token is shown once) and Sources (last pull,
//! Download now).

use std::fmt::Write;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::html::{button, csrf_field, esc, page, when};
use super::pages::{db, guard};
use super::{require, require_form, CsrfForm, Signed};
use crate::db::DeviceStats;
use crate::http::AppState;

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

pub async fn devices(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = guard!(require(&state, &headers).await);
    devices_page(&state, &signed, "").await
}

async fn devices_page(state: &AppState, signed: &Signed, notice: &str) -> Response {
    let rows = db!(state.ingestor.db.device_stats());
    let gaps = db!(state.ingestor.db.sequence_gaps());
    let mut body = format!(
        "{notice}<form class=\"filters\" method=\"post\" action=\"/devices\">{}<label>New device name\
         <input name=\"name\" id=\"new-device\" required pattern=\"[A-Za-z0-9._-]+\"></label>\
         <button id=\"add-device\">Add device</button></form>\
         <p>Missing: batch numbers a device gave (header <code>sequence</code>, as the field client \
         numbers its batches) that never arrived here, below the highest received. A device is stale \
         after {} days without a batch.</p>\
         <div class=\"scroll\"><table id=\"devices\"><thead><tr><th>Name</th><th>Last seen (UTC)</th>\
         <th>Last batch (UTC)</th><th class=\"num\">Batches</th><th class=\"num\">Sightings</th><th>Missing</th><th>State</th>\
         <th></th></tr></thead><tbody>",
        csrf_field(signed),
        state.dashboard.stale_after_days
    );
    for d in &rows {
        let status = if d.revoked {
            "<span class=\"error\">revoked</span>"
        } else if !d.registered {
            "no token (drop directory only)"
        } else if stale(state, d) {
            "<span class=\"warn\">stale</span>"
        } else {
            "<span class=\"ok\">active</span>"
        };
        let mut actions = String::new();
        if !d.revoked {
            let n = super::html::urlencode(&d.name);
            let label = if d.registered {
                "Rotate token"
            } else {
                "Give a token"
            };
            actions.push_str(&button(signed, &format!("/devices/{n}/rotate"), label, ""));
            if d.registered {
                actions.push_str(&button(
                    signed,
                    &format!("/devices/{n}/revoke"),
                    "Revoke",
                    "danger",
                ));
            }
        }
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"gaps\">{}</td><td>{status}</td>\
             <td><div class=\"actions\">{actions}</div></td></tr>",
            esc(&d.name),
            d.last_seen_at.as_ref().map_or("never".into(), when),
            d.last_batch.as_ref().map_or("none".into(), when),
            d.batches,
            d.sightings,
            missing(&gaps, &d.name)
        );
    }
    if rows.is_empty() {
        body.push_str("<tr><td colspan=\"8\">No devices yet.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    page(signed, "/devices", "Devices", &body).into_response()
}

/// "none", or the skipped numbers as runs, e.g. "3, 5–6 (3 batches)"; at most
/// eight runs are spelled out.
fn missing(gaps: &[(String, i64, i64)], device: &str) -> String {
    let runs: Vec<(i64, i64)> = gaps
        .iter()
        .filter(|(name, _, _)| name == device)
        .map(|(_, lo, hi)| (*lo, *hi))
        .collect();
    if runs.is_empty() {
        return "none".into();
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
    format!(
        "<span class=\"warn\">{} ({total} {noun})</span>",
        shown.join(", ")
    )
}

fn token_notice(name: &str, token: &str) -> String {
    format!(
        "<div class=\"card\"><p class=\"ok\">The token of <b>{}</b>, shown this once: copy it to the device now.</p>\
         <p class=\"token\" id=\"token\">{}</p></div>",
        esc(name),
        esc(token)
    )
}

fn error_notice(e: impl std::fmt::Display) -> String {
    format!(
        "<p class=\"error\" id=\"notice\">{}</p>",
        esc(&e.to_string())
    )
}

#[derive(Deserialize)]
pub struct AddForm {
    csrf: Option<String>,
    name: String,
}

pub async fn add_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<AddForm>,
) -> Response {
    let signed = guard!(require_form(&state, &headers, f.csrf.as_deref()).await);
    let name = f.name.trim();
    let notice = match crate::credentials::add_device(&state.ingestor.db, name).await {
        Ok(token) => {
            tracing::info!(
                admin = signed.admin,
                device = name,
                "dashboard added a device"
            );
            token_notice(name, &token)
        }
        Err(e) => error_notice(e),
    };
    devices_page(&state, &signed, &notice).await
}

pub async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let signed = guard!(require_form(&state, &headers, f.csrf.as_deref()).await);
    let db = &state.ingestor.db;
    // A device first seen through the drop directory has no token to rotate: add one.
    let registered = db!(db.device_stats())
        .iter()
        .any(|d| d.name == name && d.registered);
    let made = if registered {
        crate::credentials::rotate_device(db, &name).await
    } else {
        crate::credentials::add_device(db, &name).await
    };
    let notice = match made {
        Ok(token) => token_notice(&name, &token),
        Err(e) => error_notice(e),
    };
    devices_page(&state, &signed, &notice).await
}

pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let signed = guard!(require_form(&state, &headers, f.csrf.as_deref()).await);
    let notice = match crate::credentials::revoke_device(&state.ingestor.db, &name).await {
        Ok(()) => format!(
            "<p class=\"ok\" id=\"notice\">{} is revoked: its token no longer works.</p>",
            esc(&name)
        ),
        Err(e) => error_notice(e),
    };
    devices_page(&state, &signed, &notice).await
}

pub async fn sources(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = guard!(require(&state, &headers).await);
    sources_page(&state, &signed, "").await
}

async fn sources_page(state: &AppState, signed: &Signed, report: &str) -> Response {
    let pulls = db!(state.ingestor.db.last_pulls());
    let mut body = String::from(report);
    if state.puller.sources().is_empty() {
        body.push_str(
            "<p>No remote sources are configured ([[sources]] in the configuration file).</p>",
        );
    }
    body.push_str(
        "<div class=\"scroll\"><table id=\"sources\"><thead><tr><th>Source</th><th>Where</th><th>Last pull (UTC)</th>\
         <th class=\"num\">Found</th><th class=\"num\">Ingested</th><th class=\"num\">Duplicates</th>\
         <th class=\"num\">Rejected</th><th>Result</th><th></th></tr></thead><tbody>",
    );
    for s in state.puller.sources() {
        let last = pulls.iter().find(|p| p.source == s.name);
        let (cells, result) = match last {
            Some(p) => (
                format!(
                    "<td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                    when(&p.finished_at), p.found, p.ingested, p.duplicates, p.rejected
                ),
                if p.result == "ok" {
                    "<span class=\"ok\">ok</span>".to_string()
                } else {
                    format!("<span class=\"error\">{}</span>", esc(p.error.as_deref().unwrap_or(&p.result)))
                },
            ),
            None => ("<td>never</td><td></td><td></td><td></td><td></td>".into(), String::new()),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td>{cells}<td>{result}</td><td><form method=\"post\" action=\"/sources\" class=\"inline\">{}\
             <input type=\"hidden\" name=\"source\" value=\"{}\"><button>Download now</button></form></td></tr>",
            esc(&s.name),
            esc(&crate::config::redact_url(&s.url)),
            csrf_field(signed),
            esc(&s.name)
        );
    }
    body.push_str("</tbody></table></div>");
    if !state.puller.sources().is_empty() {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/sources\" class=\"pager\">{}<button id=\"download-all\">Download now from every source</button></form>",
            csrf_field(signed)
        );
    }
    page(signed, "/sources", "Sources", &body).into_response()
}

#[derive(Deserialize)]
pub struct DownloadForm {
    csrf: Option<String>,
    source: Option<String>,
}

pub async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<DownloadForm>,
) -> Response {
    let signed = guard!(require_form(&state, &headers, f.csrf.as_deref()).await);
    tracing::info!(
        admin = signed.admin,
        source = f.source.as_deref().unwrap_or("(all)"),
        "dashboard download"
    );
    let puller = state.puller.clone();
    let source = f.source.filter(|s| !s.is_empty());
    // Its own task: closing the tab does not cut the pull short.
    let ran =
        tokio::spawn(async move { puller.download(source.as_deref(), "dashboard").await }).await;
    let mut report = String::from("<div class=\"card\" id=\"report\"><h2>Download report</h2>");
    match ran {
        Ok(Ok(r)) => {
            for s in &r.sources {
                let _ = write!(
                    report,
                    "<p><b>{}</b>: found {}, fetched {}, ingested {}, duplicates {}, rejected {}, unchanged {}</p>",
                    esc(&s.source), s.found, s.fetched, s.ingested, s.duplicates, s.rejected, s.unchanged
                );
                for f in &s.files {
                    let _ = write!(
                        report,
                        "<div>{} — {:?}{}</div>",
                        esc(&f.path),
                        f.status,
                        f.reason
                            .as_deref()
                            .map(|r| format!(": {}", esc(r)))
                            .unwrap_or_default()
                    );
                }
                for e in &s.errors {
                    let _ = write!(report, "<p class=\"error\">{}</p>", esc(e));
                }
            }
        }
        Ok(Err(e)) => report.push_str(&error_notice(e)),
        Err(e) => report.push_str(&error_notice(e)),
    }
    report.push_str("</div>");
    sources_page(&state, &signed, &report).await
}
