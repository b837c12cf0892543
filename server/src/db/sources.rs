//! What the server remembers about its remote sources: files already handled, and
//! each pull's outcome (for the dashboard). Same SQL on both backends.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::dialect::{api_time, Time};
use super::Db;

/// A remote file as the listing shows it; the same file while all three hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKey<'a> {
    pub source: &'a str,
    pub path: &'a str,
    pub size: i64,
    pub modified: &'a str,
}

/// One pull of a source, as recorded.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PullRecord {
    pub source: String,
    pub trigger: String,
    #[serde(with = "api_time")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "api_time")]
    pub finished_at: DateTime<Utc>,
    pub found: i64,
    pub fetched: i64,
    pub ingested: i64,
    pub duplicates: i64,
    pub rejected: i64,
    pub errors: i64,
    /// `ok` or `error`.
    pub result: String,
    /// The first error, in words.
    pub error: Option<String>,
}

impl Db {
    /// How an unchanged remote file was handled before (`stored`, `duplicate`,
    /// `rejected`), if it was.
    #[tracing::instrument(skip_all, err)]
    pub async fn source_file_outcome(&self, key: &RemoteKey<'_>) -> sqlx::Result<Option<String>> {
        const SQL: &str = "SELECT outcome FROM source_files \
                           WHERE source = $1 AND remote_path = $2 AND size = $3 AND modified = $4";
        on_pool!(self, p => sqlx::query_scalar(SQL)
            .bind(key.source).bind(key.path).bind(key.size).bind(key.modified)
            .fetch_optional(p).await)
    }

    /// Remembers that a remote file's ingest committed.
    #[tracing::instrument(skip_all, err)]
    pub async fn remember_source_file(
        &self,
        key: &RemoteKey<'_>,
        sha256: Option<&str>,
        outcome: &str,
    ) -> sqlx::Result<()> {
        let sql = format!(
            "INSERT INTO source_files (source, remote_path, size, modified, sha256, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (source, remote_path) DO UPDATE SET \
             size = $3, modified = $4, sha256 = $5, outcome = $6, handled_at = {}",
            self.now_sql()
        );
        on_pool!(self, p => sqlx::query(&sql)
            .bind(key.source).bind(key.path).bind(key.size).bind(key.modified).bind(sha256).bind(outcome)
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Forgets a remote file that was deleted or moved away.
    #[tracing::instrument(skip_all, err)]
    pub async fn forget_source_file(&self, source: &str, path: &str) -> sqlx::Result<()> {
        const SQL: &str = "DELETE FROM source_files WHERE source = $1 AND remote_path = $2";
        on_pool!(self, p => sqlx::query(SQL).bind(source).bind(path).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Records one pull of a source (its `finished_at` is when it is recorded).
    #[tracing::instrument(skip_all, err, fields(source = r.source))]
    pub async fn record_pull(&self, r: &PullRecord) -> sqlx::Result<()> {
        const SQL: &str =
            "INSERT INTO source_pulls (source, trigger, started_at, found, fetched, ingested, \
                           duplicates, rejected, errors, result, error) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
        on_pool!(self, p => sqlx::query(SQL)
            .bind(&r.source).bind(&r.trigger).bind(Time(r.started_at)).bind(r.found).bind(r.fetched)
            .bind(r.ingested).bind(r.duplicates).bind(r.rejected).bind(r.errors).bind(&r.result)
            .bind(&r.error)
            .execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// The latest pull of every source that was ever pulled.
    #[tracing::instrument(skip_all, err)]
    pub async fn last_pulls(&self) -> sqlx::Result<Vec<PullRecord>> {
        const SQL: &str = "SELECT source, trigger, started_at, finished_at, found, fetched, ingested, duplicates, rejected, \
             errors, result, error FROM source_pulls \
             WHERE id IN (SELECT max(id) FROM source_pulls GROUP BY source) ORDER BY source";
        on_pool!(self, p => sqlx::query_as(SQL).fetch_all(p).await)
    }
}
