//! Batches (and a batch's sightings) and Rejected (download, reprocess, delete).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::session::{NoFields, Signed, SignedForm};
use super::view::{filters, given, message, render, Frame, Notice, PageResult, Pager, Select};
use crate::db::{BatchListFilter, BatchSummary, RejectionInfo, SightingQuery};
use crate::http::AppState;

const CHANNELS: [&str; crate::types::Channel::ALL.len()] = crate::types::Channel::ALL_NAMES;

/// Rows on a page.
pub const PAGE: i64 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    device: Option<String>,
    channel: Option<String>,
    status: Option<String>,
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "batches.html")]
struct BatchesPage<'a> {
    frame: Frame<'a>,
    device: String,
    channel: Select,
    status: Select,
    rows: Vec<BatchSummary>,
    pager: Pager,
}

pub async fn batches(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let (device, channel, status) = (given(&q.device), given(&q.channel), given(&q.status));
    let filter = BatchListFilter {
        device: device.clone(),
        channel: channel.clone(),
        status: status.clone(),
        before: q.before,
        limit: Some(PAGE),
    };
    let rows = state.ingestor.db.list_batches(&filter).await?;
    let keep = [
        ("device", device.clone()),
        ("channel", channel.clone()),
        ("status", status.clone()),
    ];
    let page = BatchesPage {
        frame: signed.frame("/batches", "Batches"),
        device: device.unwrap_or_default(),
        channel: Select::new("channel", &CHANNELS, channel.as_deref()),
        status: Select::new("status", &["new", "duplicate"], status.as_deref()),
        pager: Pager::new("/batches", &keep).after(rows.last().map(|b| b.id), full(&rows)),
        rows,
    };
    Ok(render(StatusCode::OK, page))
}

/// A page as long as it may be: there may be more.
fn full<T>(rows: &[T]) -> bool {
    rows.len() as i64 == PAGE
}

#[derive(Template)]
#[template(path = "batch.html")]
struct BatchPage<'a> {
    frame: Frame<'a>,
    b: BatchSummary,
    rows: Vec<super::view::TableRow>,
    pager: Pager,
    /// Photos and other files that came with the batch.
    files: Vec<crate::db::LinkedAttachment>,
}

pub async fn batch(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<i64>,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let db = &state.ingestor.db;
    let filter = BatchListFilter {
        before: Some(id.saturating_add(1)),
        limit: Some(1),
        ..Default::default()
    };
    let found = db.list_batches(&filter).await?;
    let Some(b) = found.into_iter().find(|b| b.id == id) else {
        let why = format!("There is no batch {id}.");
        return Ok(message(StatusCode::NOT_FOUND, "Not found", &why));
    };
    let rows = db
        .sightings_page(&SightingQuery {
            batch: Some(id),
            before: q.before,
            limit: PAGE,
            ..Default::default()
        })
        .await?;
    let files = db.batch_attachments(id).await?;
    let pager =
        Pager::new(format!("/batches/{id}"), &[]).after(rows.last().map(|r| r.cursor), full(&rows));
    let rows = super::view::table_rows(db, rows).await?;
    let page = BatchPage {
        frame: signed.frame("/batches", format!("Batch {id}")),
        files,
        b,
        pager,
        rows,
    };
    Ok(render(StatusCode::OK, page))
}

#[derive(Template)]
#[template(path = "rejected.html")]
struct RejectedPage<'a> {
    frame: Frame<'a>,
    device: String,
    status: Select,
    rows: Vec<RejectionInfo>,
    pager: Pager,
}

pub async fn rejected(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let (device, status) = (given(&q.device), given(&q.status));
    let filter = BatchListFilter {
        device: device.clone(),
        status: status.clone(),
        before: q.before,
        limit: Some(PAGE),
        ..Default::default()
    };
    let rows = state.ingestor.db.list_rejections(&filter).await?;
    let keep = [("device", device.clone()), ("status", status.clone())];
    let statuses = ["pending", "reprocessed", "resolved"];
    let page = RejectedPage {
        frame: signed.frame("/rejected", "Rejected files"),
        device: device.unwrap_or_default(),
        status: Select::new("status", &statuses, status.as_deref()),
        pager: Pager::new("/rejected", &keep).after(rows.last().map(|r| r.id), full(&rows)),
        rows,
    };
    Ok(render(StatusCode::OK, page))
}

/// The original file as it was refused.
pub async fn rejected_file(
    State(state): State<AppState>,
    _: Signed,
    Path(id): Path<i64>,
) -> PageResult {
    let r = state.ingestor.db.rejection(id).await?;
    let Some(stored) = r.and_then(|r| r.stored_path) else {
        let why = format!("Rejection {id} kept no file.");
        return Ok(message(StatusCode::NOT_FOUND, "Not found", &why));
    };
    let name = std::path::Path::new(&stored)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(match tokio::fs::read(state.drop_dir.join(&stored)).await {
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
        Err(e) => {
            let why = format!("{stored} cannot be read: {e}");
            message(StatusCode::GONE, "Gone", &why)
        }
    })
}

#[derive(Template)]
#[template(path = "reprocess.html")]
struct ReprocessPage<'a> {
    frame: Frame<'a>,
    outcome: Notice,
}

pub async fn reprocess(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    SignedForm { signed, .. }: SignedForm<NoFields>,
) -> Response {
    tracing::info!(admin = signed.admin, id, "dashboard reprocess");
    let mut outcome = match crate::http::admin::reprocess_rejection(&state, id).await {
        Ok(r) if matches!(r.status, crate::ingest::Status::Rejected) => Notice::error(format!(
            "Refused again: {}",
            r.reason.as_deref().unwrap_or("")
        )),
        Ok(r) => Notice::ok(format!(
            "{} stored: {} sightings, {} new, {} duplicates.",
            r.file, r.sightings, r.inserted, r.duplicates
        )),
        Err(e) => Notice::error(e),
    };
    outcome.id = "outcome";
    let page = ReprocessPage {
        frame: signed.frame("/rejected", format!("Reprocess {id}")),
        outcome,
    };
    render(StatusCode::OK, page)
}

pub async fn delete_rejected(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    SignedForm { signed, .. }: SignedForm<NoFields>,
) -> PageResult {
    let db = &state.ingestor.db;
    if let Some(stored) = db.rejection(id).await?.and_then(|r| r.stored_path) {
        if let Err((p, e)) = state.deliverer().layout.remove_rejected(&stored) {
            return Err(format!("cannot delete {}: {e}", p.display()).into());
        }
    }
    db.delete_rejection(id).await?;
    tracing::info!(admin = signed.admin, id, "dashboard deleted a rejection");
    Ok(Redirect::to("/rejected").into_response())
}
