//! What the administrator looks at: batches and rejections, newest first, paged by id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::dialect::api_time;
use super::Db;
use crate::types::{Channel, RejectionKind, RejectionStatus};

/// Largest page the API hands out.
pub const MAX_PAGE: i64 = 500;

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchListFilter {
    pub device: Option<String>,
    pub channel: Option<String>,
    /// Batches: `new` (added sightings) or `duplicate` (added none); rejections:
    /// `pending`, `reprocessed`, `resolved` (a truncated copy superseded by a complete
    /// delivery).
    pub status: Option<String>,
    /// Only rows with an id below this (the previous page's last id).
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

impl BatchListFilter {
    fn limit(&self) -> i64 {
        self.limit.unwrap_or(100).clamp(1, MAX_PAGE)
    }

    fn before(&self) -> i64 {
        self.before.unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BatchSummary {
    pub id: i64,
    pub device: String,
    pub batch_id: String,
    pub channel: String,
    pub format: String,
    pub file_name: String,
    #[serde(with = "api_time")]
    pub received_at: DateTime<Utc>,
    pub sightings: i64,
    pub inserted: i64,
    pub duplicates: i64,
    pub sha256: String,
    pub cursor_last: Option<i64>,
    /// The station device that delivered this batch for `device` (send on sync).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relayed_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RejectionInfo {
    pub id: i64,
    pub file_name: String,
    #[serde(skip)]
    #[schema(ignore)]
    pub claim_name: Option<String>,
    pub stored_path: Option<String>,
    pub device: Option<String>,
    pub channel: Channel,
    #[schema(value_type = String)]
    pub kind: RejectionKind,
    pub reason: String,
    #[serde(with = "api_time")]
    pub received_at: DateTime<Utc>,
    pub status: RejectionStatus,
}

impl Db {
    #[tracing::instrument(skip_all, err)]
    pub async fn list_batches(&self, f: &BatchListFilter) -> sqlx::Result<Vec<BatchSummary>> {
        const SQL: &str = "SELECT b.id, d.name AS device, CAST(b.batch_id AS TEXT) AS batch_id, b.channel, \
             b.format, b.file_name, b.received_at, b.row_count AS sightings, b.inserted, b.duplicates, \
             b.sha256, b.cursor_last, b.relayed_by FROM batches b JOIN devices d ON d.id = b.device_id \
             WHERE b.id < $1 AND ($2 IS NULL OR d.name = $2) AND ($3 IS NULL OR b.channel = $3) \
             AND ($4 IS NULL OR ($4 = 'new' AND b.inserted > 0) OR ($4 = 'duplicate' AND b.inserted = 0)) \
             ORDER BY b.id DESC LIMIT $5";
        on_pool!(self, p => sqlx::query_as(SQL)
            .bind(f.before())
            .bind(&f.device)
            .bind(&f.channel)
            .bind(&f.status)
            .bind(f.limit())
            .fetch_all(p)
            .await)
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn list_rejections(&self, f: &BatchListFilter) -> sqlx::Result<Vec<RejectionInfo>> {
        const SQL: &str = "SELECT id, file_name, claim_name, stored_path, device, channel, kind, reason, \
             received_at, status FROM rejections WHERE id < $1 AND ($2 IS NULL OR device = $2) \
             AND ($3 IS NULL OR channel = $3) AND ($4 IS NULL OR status = $4) ORDER BY id DESC LIMIT $5";
        on_pool!(self, p => sqlx::query_as(SQL)
            .bind(f.before())
            .bind(&f.device)
            .bind(&f.channel)
            .bind(&f.status)
            .bind(f.limit())
            .fetch_all(p)
            .await)
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn rejection(&self, id: i64) -> sqlx::Result<Option<RejectionInfo>> {
        const SQL: &str =
            "SELECT id, file_name, claim_name, stored_path, device, channel, kind, reason, \
             received_at, status FROM rejections WHERE id = $1";
        on_pool!(self, p => sqlx::query_as(SQL).bind(id).fetch_optional(p).await)
    }

    /// Marks a rejection as dealt with (`reprocessed`).
    #[tracing::instrument(skip_all, err)]
    pub async fn set_rejection_status(&self, id: i64, status: RejectionStatus) -> sqlx::Result<()> {
        const SQL: &str = "UPDATE rejections SET status = $2 WHERE id = $1";
        on_pool!(self, p => sqlx::query(SQL).bind(id).bind(status).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Marks the device's pending `truncated` rejections of this file name or batch id
    /// `resolved`: a complete delivery superseded them. A file rejected before its
    /// device was known (top of the drop directory) matches by name.
    #[tracing::instrument(skip_all, err)]
    pub async fn resolve_truncated(
        &self,
        device: &str,
        file_name: &str,
        batch_id: uuid::Uuid,
    ) -> sqlx::Result<u64> {
        let batch_id_text = self.uuid_text("batch_id");
        let sql = format!(
            "UPDATE rejections SET status = 'resolved' WHERE status = 'pending' AND kind = 'truncated' \
             AND ((file_name = $2 AND (device = $1 OR device IS NULL)) OR (device = $1 AND {batch_id_text} = $3))"
        );
        let batch_id = batch_id.to_string();
        on_pool!(self, p => sqlx::query(&sql).bind(device).bind(file_name).bind(&batch_id).execute(p).await.map(|r| r.rows_affected()))
    }

    /// Whether any `truncated` rejection is still pending.
    #[tracing::instrument(skip_all, err)]
    pub async fn truncated_pending(&self) -> sqlx::Result<bool> {
        const SQL: &str =
            "SELECT EXISTS (SELECT 1 FROM rejections WHERE status = 'pending' AND kind = 'truncated')";
        on_pool!(self, p => sqlx::query_scalar(SQL).fetch_one(p).await)
    }

    /// A rejected file that went back to be looked at again (it grew: its writer was
    /// not done) leaves its rejection dealt with.
    #[tracing::instrument(skip_all, err)]
    pub async fn requeue_rejection(&self, claim_name: &str) -> sqlx::Result<()> {
        const SQL: &str =
            "UPDATE rejections SET status = 'reprocessed' WHERE claim_name = $1 AND status = 'pending'";
        on_pool!(self, p => sqlx::query(SQL).bind(claim_name).execute(p).await.map(|_| ()))
    }
}
