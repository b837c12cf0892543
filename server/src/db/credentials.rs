//! Devices' and administrators' credentials. The SQL is the same on both backends
//! (parameters `$1, $2, …` in order of first use, which SQLite binds by position too);
//! only "now" differs ([`Db::now_sql`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::dialect::api_time;
use super::Db;

/// One line of `device list`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeviceInfo {
    pub name: String,
    #[serde(with = "api_time")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "api_time::option")]
    pub last_seen_at: Option<DateTime<Utc>>,
    pub batches: i64,
    pub sightings: i64,
    pub registered: bool,
    #[serde(with = "api_time::option")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What changing a credential found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Done,
    /// No such device or administrator.
    Unknown,
    /// Refused: already registered (add), or revoked (rotate).
    Refused,
}

impl Db {
    /// Registers a device with its token hash. A device first seen through the drop
    /// directory (no credentials yet) is registered in place; one that already has
    /// credentials is refused (rotate it instead). A revoked device can be added again.
    #[tracing::instrument(skip_all, err, fields(device = name))]
    pub async fn register_device(&self, name: &str, token_hash: &str) -> sqlx::Result<Change> {
        let now = self.now_sql();
        let sql = format!(
            "INSERT INTO devices (name, token_hash, registered_at, token_rotated_at) VALUES ($1, $2, {now}, {now}) \
             ON CONFLICT (name) DO UPDATE SET token_hash = $2, registered_at = {now}, token_rotated_at = {now}, \
             revoked_at = NULL WHERE devices.token_hash IS NULL OR devices.revoked_at IS NOT NULL RETURNING id"
        );
        let id: Option<i64> = on_pool!(self, p => sqlx::query_scalar(&sql).bind(name).bind(token_hash).fetch_optional(p).await?);
        Ok(if id.is_some() {
            Change::Done
        } else {
            Change::Refused
        })
    }

    /// Another device whose name differs from `name` only in letter case, if any.
    #[tracing::instrument(skip_all, err, fields(device = name))]
    pub async fn device_case_twin(&self, name: &str) -> sqlx::Result<Option<String>> {
        const SQL: &str = "SELECT name FROM devices WHERE lower(name) = lower($1) AND name <> $1 \
                           ORDER BY id LIMIT 1";
        on_pool!(self, p => sqlx::query_scalar(SQL).bind(name).fetch_optional(p).await)
    }

    /// The device a batch naming `name` belongs to, given that names are one in any letter
    /// case: a registered device first (the one spelled `name` if several differ only in
    /// case), else one spelled `name`, else the oldest. `None` when no device has the name
    /// in any case.
    #[tracing::instrument(skip_all, err, fields(device = name))]
    pub async fn device_name_any_case(&self, name: &str) -> sqlx::Result<Option<String>> {
        const SQL: &str = "SELECT name FROM devices WHERE lower(name) = lower($1) \
                           ORDER BY (token_hash IS NOT NULL) DESC, (name = $1) DESC, id LIMIT 1";
        on_pool!(self, p => sqlx::query_scalar(SQL).bind(name).fetch_optional(p).await)
    }

    /// Replaces a registered device's token: the old one stops working at once.
    #[tracing::instrument(skip_all, err, fields(device = name))]
    pub async fn rotate_device(&self, name: &str, token_hash: &str) -> sqlx::Result<Change> {
        let sql = format!(
            "UPDATE devices SET token_hash = $2, token_rotated_at = {} \
             WHERE name = $1 AND token_hash IS NOT NULL AND revoked_at IS NULL RETURNING id",
            self.now_sql()
        );
        let id: Option<i64> = on_pool!(self, p => sqlx::query_scalar(&sql).bind(name).bind(token_hash).fetch_optional(p).await?);
        self.change_or_why(name, id).await
    }

    /// Revokes a device: its token stops working; its data stays.
    #[tracing::instrument(skip_all, err, fields(device = name))]
    pub async fn revoke_device(&self, name: &str) -> sqlx::Result<Change> {
        let sql = format!(
            "UPDATE devices SET revoked_at = {} WHERE name = $1 AND revoked_at IS NULL RETURNING id",
            self.now_sql()
        );
        let id: Option<i64> =
            on_pool!(self, p => sqlx::query_scalar(&sql).bind(name).fetch_optional(p).await?);
        self.change_or_why(name, id).await
    }

    async fn change_or_why(&self, name: &str, id: Option<i64>) -> sqlx::Result<Change> {
        if id.is_some() {
            return Ok(Change::Done);
        }
        let exists: Option<i64> = on_pool!(self, p => sqlx::query_scalar("SELECT id FROM devices WHERE name = $1").bind(name).fetch_optional(p).await?);
        Ok(if exists.is_some() {
            Change::Refused
        } else {
            Change::Unknown
        })
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn list_devices(&self) -> sqlx::Result<Vec<DeviceInfo>> {
        const SQL: &str = "SELECT d.name, d.created_at, d.last_seen_at, \
             (SELECT count(*) FROM batches b WHERE b.device_id = d.id) AS batches, \
             (SELECT count(*) FROM sightings s WHERE s.device_id = d.id) AS sightings, \
             (d.token_hash IS NOT NULL) AS registered, d.revoked_at \
             FROM devices d ORDER BY d.name";
        on_pool!(self, p => sqlx::query_as(SQL).fetch_all(p).await)
    }

    /// The device a token belongs to, and whether it is revoked.
    #[tracing::instrument(skip_all, err)]
    pub async fn device_token_state(
        &self,
        token_hash: &str,
    ) -> sqlx::Result<Option<(String, bool)>> {
        const SQL: &str = "SELECT name, revoked_at IS NOT NULL FROM devices WHERE token_hash = $1";
        on_pool!(self, p => sqlx::query_as(SQL).bind(token_hash).fetch_optional(p).await)
    }

    /// Adds an administrator; `Refused` when the name is taken.
    #[tracing::instrument(skip_all, err, fields(admin = name))]
    pub async fn add_admin(&self, name: &str, password_hash: &str) -> sqlx::Result<Change> {
        const SQL: &str = "INSERT INTO admins (name, password_hash) VALUES ($1, $2) \
                           ON CONFLICT (name) DO NOTHING RETURNING id";
        let id: Option<i64> = on_pool!(self, p => sqlx::query_scalar(SQL).bind(name).bind(password_hash).fetch_optional(p).await?);
        Ok(if id.is_some() {
            Change::Done
        } else {
            Change::Refused
        })
    }

    #[tracing::instrument(skip_all, err, fields(admin = name))]
    pub async fn admin_password_hash(&self, name: &str) -> sqlx::Result<Option<String>> {
        const SQL: &str = "SELECT password_hash FROM admins WHERE name = $1";
        on_pool!(self, p => sqlx::query_scalar(SQL).bind(name).fetch_optional(p).await)
    }

    /// Stores a new API token for an administrator.
    #[tracing::instrument(skip_all, err, fields(admin = name))]
    pub async fn add_admin_token(
        &self,
        name: &str,
        token_hash: &str,
        token_prefix: &str,
    ) -> sqlx::Result<Change> {
        const SQL: &str = "INSERT INTO admin_tokens (admin_id, token_hash, token_prefix) \
                           SELECT id, $2, $3 FROM admins WHERE name = $1";
        let done = on_pool!(self, p => sqlx::query(SQL).bind(name).bind(token_hash).bind(token_prefix).execute(p).await?.rows_affected());
        Ok(if done == 1 {
            Change::Done
        } else {
            Change::Unknown
        })
    }

    /// The administrator an unrevoked API token belongs to.
    #[tracing::instrument(skip_all, err)]
    pub async fn admin_for_token(&self, token_hash: &str) -> sqlx::Result<Option<String>> {
        const SQL: &str = "SELECT a.name FROM admin_tokens t JOIN admins a ON a.id = t.admin_id \
                           WHERE t.token_hash = $1 AND t.revoked_at IS NULL";
        on_pool!(self, p => sqlx::query_scalar(SQL).bind(token_hash).fetch_optional(p).await)
    }
}
