//! Overview, Batches (and a batch's sightings) and Rejected.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{Datelike, Duration, Utc};
use serde::Deserialize;

use super::html::{button, esc, given, page, query, select, when};
use super::{failure, require, require_form, CsrfForm};
use crate::db::{BatchListFilter, BatchSummary, SightingQuery};
use crate::http::AppState;

const CHANNELS: [&str; 5] = ["http", "ftp", "share", "pull", "cli"];

macro_rules! guard {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}
pub(super) use guard;

macro_rules! db {
    ($e:expr) => {
        match $e.await {
            Ok(v) => v,
            Err(e) => return super::failure(e),
        }
    };
}
pub(super) use db;

pub async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = guard!(require(&state, &headers).await);
    let db = &state.ingestor.db;
    let now = Utc::now();
    let today = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc();
    let week = today - Duration::days(i64::from(now.weekday().num_days_from_monday()));
    let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH;
    let (b_today, s_today) = db!(db.stored_since(today));
    let (b_week, s_week) = db!(db.stored_since(week));
    let (b_all, s_all) = db!(db.stored_since(epoch));
    let days = db!(db.sightings_per_day(today - Duration::days(29)));
    let last = db!(db.list_batches(&BatchListFilter {
        limit: Some(10),
        ..Default::default()
    }));
    let rejected = db!(db.pending_rejections());
    let devices = db!(db.device_stats());
    let pulls = db!(db.last_pulls());
    let conflict_total = db!(db.conflict_count());
    let conflicts = db!(db.list_conflicts(i64::MAX, super::conflicts::SHOWN));

    let mut body = String::from("<div class=\"cards\" id=\"totals\">");
    for (n, label) in [
        (s_today, "sightings today"),
        (s_week, "sightings this week"),
        (s_all, "sightings in total"),
        (b_today, "batches today"),
        (b_week, "batches this week"),
        (b_all, "batches in total"),
    ] {
        let _ = write!(
            body,
            "<div class=\"card\"><div class=\"n\">{n}</div><div class=\"l\">{label}</div></div>"
        );
    }
    body.push_str("</div><h2>Needs attention</h2><ul class=\"attention\" id=\"attention\">");
    let mut calm = true;
    if let Some(failure) = state.ingestor.writes.check(db).await {
        calm = false;
        let _ = write!(
            body,
            "<li class=\"error\" id=\"write-failure\">{}: uploads are refused until it can write again</li>",
            esc(&failure.to_string())
        );
    }
    if let Some(problem) = state.ingestor.metrics.drop_dir_problem() {
        calm = false;
        let _ = write!(
            body,
            "<li class=\"error\" id=\"drop-dir-problem\">The drop directory cannot be read: {}. Nothing delivered to the share is ingested until it is back.</li>",
            esc(&problem)
        );
    }
    if rejected > 0 {
        calm = false;
        let _ = write!(body, "<li class=\"error\"><a href=\"/rejected?status=pending\">{rejected} rejected file(s)</a> waiting</li>");
    }
    if conflict_total > 0 {
        calm = false;
        body.push_str(&super::conflicts::attention(&conflicts, conflict_total));
    }
    for d in devices.iter().filter(|d| super::manage::stale(&state, d)) {
        calm = false;
        let _ = write!(
            body,
            "<li class=\"warn\">Device <a href=\"/devices\">{}</a> is stale: last seen {}</li>",
            esc(&d.name),
            d.last_seen_at.as_ref().map_or("never".into(), when)
        );
    }
    for p in pulls.iter().filter(|p| p.result != "ok") {
        calm = false;
        let _ = write!(
            body,
            "<li class=\"error\">Source <a href=\"/sources\">{}</a>: last pull failed ({})</li>",
            esc(&p.source),
            esc(p.error.as_deref().unwrap_or("see Sources"))
        );
    }
    if calm {
        body.push_str(
            "<li class=\"ok\">Nothing: no rejected files, sighting conflicts, stale devices or failed pulls.</li>",
        );
    }
    body.push_str("</ul><h2>Sightings stored per day (last 30 days, UTC)</h2>");
    body.push_str(&chart(&days, today));
    body.push_str("<h2>Last 10 batches</h2>");
    body.push_str(&batch_table(&last));
    page(&signed, "/", "Overview", &body).into_response()
}

/// An inline SVG bar chart: one bar per day, days without batches as gaps.
fn chart(days: &[crate::db::DayCount], today: chrono::DateTime<Utc>) -> String {
    let max = days.iter().map(|d| d.sightings).max().unwrap_or(0).max(1);
    let mut svg = String::from("<svg class=\"chart\" id=\"chart\" viewBox=\"0 0 600 160\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"sightings per day\">");
    for i in 0..30 {
        let day = (today - Duration::days(29 - i))
            .format("%Y-%m-%d")
            .to_string();
        let n = days
            .iter()
            .find(|d| d.day == day)
            .map_or(0, |d| d.sightings);
        let h = (n as f64 / max as f64 * 150.0).round();
        let x = i as f64 * 20.0 + 2.0;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"16\" height=\"{h}\"><title>{day}: {n}</title></rect>",
            160.0 - h
        );
    }
    // Labels outside the stretched SVG, so text keeps its shape at any width.
    svg.push_str("</svg><div class=\"axis\">");
    for i in [0, 10, 20, 29] {
        let day = (today - Duration::days(29 - i)).format("%m-%d");
        let _ = write!(svg, "<span>{day}</span>");
    }
    let _ = write!(
        svg,
        "</div><p class=\"l\">Tallest bar: {max} sightings.</p>"
    );
    svg
}

fn batch_table(rows: &[BatchSummary]) -> String {
    let mut t = String::from(
        "<div class=\"scroll\"><table id=\"batches\"><thead><tr><th>Id</th><th>Device</th><th>Received (UTC)</th>\
         <th>Channel</th><th>File</th><th class=\"num\">Rows</th><th class=\"num\">New</th>\
         <th class=\"num\">Duplicates</th></tr></thead><tbody>",
    );
    for b in rows {
        let _ = write!(
            t,
            "<tr><td><a href=\"/batches/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&b.device),
            when(&b.received_at),
            esc(&b.channel),
            esc(&b.file_name),
            b.sightings,
            b.inserted,
            b.duplicates,
            id = b.id
        );
    }
    if rows.is_empty() {
        t.push_str("<tr><td colspan=\"8\">No batches.</td></tr>");
    }
    t.push_str("</tbody></table></div>");
    t
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    device: Option<String>,
    channel: Option<String>,
    status: Option<String>,
    before: Option<i64>,
}

const PAGE: i64 = 50;

pub async fn batches(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let signed = guard!(require(&state, &headers).await);
    let (device, channel, status) = (given(&q.device), given(&q.channel), given(&q.status));
    let filter = BatchListFilter {
        device: device.clone(),
        channel: channel.clone(),
        status: status.clone(),
        before: q.before,
        limit: Some(PAGE),
    };
    let rows = db!(state.ingestor.db.list_batches(&filter));
    let mut body = format!(
        "<form class=\"filters\" method=\"get\" action=\"/batches\"><label>Device \
         <input name=\"device\" id=\"f-device\" value=\"{}\"></label><label>Channel {}</label>\
         <label>Status {}</label><button>Filter</button></form>",
        esc(device.as_deref().unwrap_or("")),
        select("channel", &CHANNELS, channel.as_deref()),
        select("status", &["new", "duplicate"], status.as_deref()),
    );
    body.push_str(&batch_table(&rows));
    let keep = [("device", device), ("channel", channel), ("status", status)];
    body.push_str(&pager(
        "/batches",
        &keep,
        rows.last().map(|b| b.id),
        rows.len() as i64 == PAGE,
    ));
    page(&signed, "/batches", "Batches", &body).into_response()
}

/// First page / Next page links that keep the filters.
pub(super) fn pager(
    path: &str,
    keep: &[(&str, Option<String>)],
    last: Option<i64>,
    more: bool,
) -> String {
    let base = esc(&query(keep));
    let sep = if base.is_empty() { "" } else { "&amp;" };
    let mut s = format!("<div class=\"pager\"><a href=\"{path}?{base}\">First page</a>");
    if let (Some(last), true) = (last, more) {
        let _ = write!(
            s,
            "<a id=\"next\" href=\"{path}?{base}{sep}before={last}\">Next page</a>"
        );
    }
    s.push_str("</div>");
    s
}

pub async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<ListQuery>,
) -> Response {
    let signed = guard!(require(&state, &headers).await);
    let db = &state.ingestor.db;
    let filter = BatchListFilter {
        before: Some(id.saturating_add(1)),
        limit: Some(1),
        ..Default::default()
    };
    let found = db!(db.list_batches(&filter));
    let Some(b) = found.into_iter().find(|b| b.id == id) else {
        return (
            StatusCode::NOT_FOUND,
            super::html::message_page("Not found", &format!("There is no batch {id}.")),
        )
            .into_response();
    };
    let rows = db!(db.sightings_page(&SightingQuery {
        batch: Some(id),
        before: q.before,
        limit: PAGE,
        ..Default::default()
    }));
    let mut body = format!(
        "<div class=\"scroll\"><table><tbody><tr><th>Device</th><td>{}</td></tr><tr><th>Batch id</th><td>{}</td></tr>\
         <tr><th>File</th><td>{}</td></tr><tr><th>Channel</th><td>{}</td></tr><tr><th>Format</th><td>{}</td></tr>\
         <tr><th>Received (UTC)</th><td>{}</td></tr><tr><th>Rows / new / duplicates</th><td>{} / {} / {}</td></tr>\
         <tr><th>SHA-256</th><td>{}</td></tr></tbody></table></div><h2>Its sightings</h2>",
        esc(&b.device), esc(&b.batch_id), esc(&b.file_name), esc(&b.channel), esc(&b.format),
        when(&b.received_at), b.sightings, b.inserted, b.duplicates, esc(&b.sha256)
    );
    body.push_str(&super::sightings::table(&rows));
    body.push_str(&pager(
        &format!("/batches/{id}"),
        &[],
        rows.last().map(|r| r.cursor),
        rows.len() as i64 == PAGE,
    ));
    page(&signed, "/batches", &format!("Batch {id}"), &body).into_response()
}

pub async fn rejected(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let signed = guard!(require(&state, &headers).await);
    let (device, status) = (given(&q.device), given(&q.status));
    let filter = BatchListFilter {
        device: device.clone(),
        status: status.clone(),
        before: q.before,
        limit: Some(PAGE),
        ..Default::default()
    };
    let rows = db!(state.ingestor.db.list_rejections(&filter));
    let mut body = format!(
        "<form class=\"filters\" method=\"get\" action=\"/rejected\"><label>Device \
         <input name=\"device\" value=\"{}\"></label><label>Status {}</label><button>Filter</button></form>\
         <div class=\"scroll\"><table id=\"rejected\"><thead><tr><th>File</th><th>Device</th><th>When (UTC)</th>\
         <th>Channel</th><th>Reason</th><th>Status</th><th></th></tr></thead><tbody>",
        esc(device.as_deref().unwrap_or("")),
        select("status", &["pending", "reprocessed", "resolved"], status.as_deref())
    );
    for r in &rows {
        let mut actions = String::new();
        if r.stored_path.is_some() {
            let _ = write!(
                actions,
                "<a class=\"button\" href=\"/rejected/{}/file\">Download</a>",
                r.id
            );
        }
        if r.status == "pending" {
            actions.push_str(&button(
                &signed,
                &format!("/rejected/{}/reprocess", r.id),
                "Reprocess",
                "",
            ));
        }
        actions.push_str(&button(
            &signed,
            &format!("/rejected/{}/delete", r.id),
            "Delete",
            "danger",
        ));
        let _ = write!(
            body,
            "<tr id=\"r{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><pre class=\"reason\">{}</pre></td>\
             <td>{}</td><td><div class=\"actions\">{actions}</div></td></tr>",
            r.id, esc(&r.file_name), esc(r.device.as_deref().unwrap_or("?")), when(&r.received_at),
            esc(&r.channel), esc(&r.reason), esc(&r.status)
        );
    }
    if rows.is_empty() {
        body.push_str("<tr><td colspan=\"7\">No rejected files.</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    body.push_str(&pager(
        "/rejected",
        &[("device", device), ("status", status)],
        rows.last().map(|r| r.id),
        rows.len() as i64 == PAGE,
    ));
    page(&signed, "/rejected", "Rejected files", &body).into_response()
}

/// The original file as it was refused.
pub async fn rejected_file(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    guard!(require(&state, &headers).await);
    let r = db!(state.ingestor.db.rejection(id));
    let Some(stored) = r.and_then(|r| r.stored_path) else {
        return (
            StatusCode::NOT_FOUND,
            super::html::message_page("Not found", &format!("Rejection {id} kept no file.")),
        )
            .into_response();
    };
    let name = std::path::Path::new(&stored)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match tokio::fs::read(state.drop_dir.join(&stored)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    crate::hygiene::attachment(&name),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (
            StatusCode::GONE,
            super::html::message_page("Gone", &format!("{stored} cannot be read: {e}")),
        )
            .into_response(),
    }
}

pub async fn reprocess(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let signed = guard!(require_form(&state, &headers, f.csrf.as_deref()).await);
    tracing::info!(admin = signed.admin, id, "dashboard reprocess");
    let body = match crate::http::admin::reprocess_rejection(&state, id).await {
        Ok(r) => {
            let outcome = match r.status {
                crate::ingest::Status::Rejected => format!("<p class=\"error\" id=\"outcome\">Refused again: {}</p>", esc(r.reason.as_deref().unwrap_or(""))),
                _ => format!("<p class=\"ok\" id=\"outcome\">{} stored: {} sightings, {} new, {} duplicates.</p>", esc(&r.file), r.sightings, r.inserted, r.duplicates),
            };
            outcome
        }
        Err(e) => format!(
            "<p class=\"error\" id=\"outcome\">{}</p>",
            esc(&e.to_string())
        ),
    };
    let body = format!("{body}<p><a href=\"/rejected\">Back to rejected files</a></p>");
    page(&signed, "/rejected", &format!("Reprocess {id}"), &body).into_response()
}

pub async fn delete_rejected(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let signed = guard!(require_form(&state, &headers, f.csrf.as_deref()).await);
    let db = &state.ingestor.db;
    if let Some(stored) = db!(db.rejection(id)).and_then(|r| r.stored_path) {
        let path = state.drop_dir.join(&stored);
        for p in [
            path.clone(),
            path.with_file_name(format!(
                "{}.reason.txt",
                path.file_name().unwrap_or_default().to_string_lossy()
            )),
        ] {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return failure(format!("cannot delete {}: {e}", p.display()));
                }
            }
        }
    }
    db!(db.delete_rejection(id));
    tracing::info!(admin = signed.admin, id, "dashboard deleted a rejection");
    Redirect::to("/rejected").into_response()
}
