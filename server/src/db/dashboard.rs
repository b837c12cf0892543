//! The web dashboard's queries: sessions, counts from `batches` (never a count over
//! `sightings`), and sightings pages by keyset on the cursor, each with a LIMIT.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::QueryBuilder;

use super::dialect::{api_time, Time};
use super::export::push_bbox;
use super::Db;

/// A signed-in administrator.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    pub admin: String,
    pub csrf: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeviceStats {
    pub name: String,
    #[serde(with = "api_time::option")]
    pub last_seen_at: Option<DateTime<Utc>>,
    #[serde(with = "api_time::option")]
    pub last_batch: Option<DateTime<Utc>>,
    pub batches: i64,
    pub sightings: i64,
    pub registered: bool,
    pub revoked: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DayCount {
    pub day: String,
    pub sightings: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SightingRow {
    pub cursor: i64,
    pub device: String,
    pub batch: i64,
    #[serde(with = "api_time")]
    pub observed_at: DateTime<Utc>,
    pub latitude: f64,
    pub longitude: f64,
    pub species: Option<String>,
    pub count: Option<i64>,
    pub observer: Option<String>,
}

/// Filters of the Sightings page and a batch's detail page.
#[derive(Debug, Clone, Default)]
pub struct SightingQuery {
    pub batch: Option<i64>,
    pub device: Option<String>,
    pub species: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub bbox: Option<super::BBox>,
    /// The previous page's last cursor: only rows after it in the page's order
    /// (stored order, or observed order when a time range is given).
    pub before: Option<i64>,
    pub limit: i64,
}

impl Db {
    #[tracing::instrument(skip_all, err)]
    pub async fn create_session(
        &self,
        token_hash: &str,
        admin: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> sqlx::Result<()> {
        // Old sign-ins go when new ones come, so the table stays small.
        const PURGE: &str = "DELETE FROM sessions WHERE expires_at < $1";
        const SQL: &str = "INSERT INTO sessions (token_hash, admin, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)";
        on_pool!(self, p => {
            sqlx::query(PURGE).bind(now).execute(p).await?;
            sqlx::query(SQL).bind(token_hash).bind(admin).bind(csrf).bind(now).bind(expires_at)
                .execute(p).await.map(|_| ())
        })
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn session(&self, token_hash: &str) -> sqlx::Result<Option<Session>> {
        const SQL: &str = "SELECT admin, csrf, expires_at FROM sessions WHERE token_hash = $1";
        on_pool!(self, p => sqlx::query_as(SQL).bind(token_hash).fetch_optional(p).await)
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn delete_session(&self, token_hash: &str) -> sqlx::Result<()> {
        const SQL: &str = "DELETE FROM sessions WHERE token_hash = $1";
        on_pool!(self, p => sqlx::query(SQL).bind(token_hash).execute(p).await.map(|_| ()))
    }

    /// Batches and sightings stored since `since`.
    #[tracing::instrument(skip_all, err)]
    pub async fn stored_since(&self, since: DateTime<Utc>) -> sqlx::Result<(i64, i64)> {
        const SQL: &str =
            "SELECT count(*), CAST(COALESCE(sum(inserted), 0) AS BIGINT) FROM batches \
             WHERE received_at >= $1";
        on_pool!(self, p => sqlx::query_as(SQL).bind(Time(since)).fetch_one(p).await)
    }

    /// Sightings stored per UTC day since `since`.
    #[tracing::instrument(skip_all, err)]
    pub async fn sightings_per_day(&self, since: DateTime<Utc>) -> sqlx::Result<Vec<DayCount>> {
        let sql = format!(
            "SELECT {} AS day, CAST(sum(inserted) AS BIGINT) AS sightings FROM batches \
             WHERE received_at >= $1 GROUP BY 1 ORDER BY 1",
            self.utc_day("received_at")
        );
        on_pool!(self, p => sqlx::query_as(&sql).bind(Time(since)).fetch_all(p).await)
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn pending_rejections(&self) -> sqlx::Result<i64> {
        const SQL: &str = "SELECT count(*) FROM rejections WHERE status = 'pending'";
        on_pool!(self, p => sqlx::query_scalar(SQL).fetch_one(p).await)
    }

    /// Every device with its batch and sighting totals (from `batches`).
    #[tracing::instrument(skip_all, err)]
    pub async fn device_stats(&self) -> sqlx::Result<Vec<DeviceStats>> {
        const SQL: &str =
            "SELECT d.name, d.last_seen_at, s.last_batch, COALESCE(s.batches, 0) AS batches, \
             COALESCE(s.sightings, 0) AS sightings, (d.token_hash IS NOT NULL) AS registered, \
             (d.revoked_at IS NOT NULL) AS revoked FROM devices d LEFT JOIN \
             (SELECT device_id, count(*) AS batches, CAST(sum(inserted) AS BIGINT) AS sightings, \
              max(received_at) AS last_batch FROM batches GROUP BY device_id) s ON s.device_id = d.id \
             ORDER BY d.name";
        on_pool!(self, p => sqlx::query_as(SQL).fetch_all(p).await)
    }

    /// Runs of batch sequence numbers each device skipped, `(device, first, last)` in
    /// order: numbers below the highest received that never arrived. Reads `batches`
    /// only.
    #[tracing::instrument(skip_all, err)]
    pub async fn sequence_gaps(&self) -> sqlx::Result<Vec<(String, i64, i64)>> {
        const SQL: &str = "SELECT d.name, g.lo, g.hi FROM ( \
             SELECT device_id, sequence + 1 AS lo, next - 1 AS hi FROM ( \
               SELECT device_id, sequence, lead(sequence) OVER (PARTITION BY device_id ORDER BY sequence) AS next \
               FROM (SELECT DISTINCT device_id, sequence FROM batches WHERE sequence IS NOT NULL) x) y \
             WHERE next > sequence + 1 \
             UNION ALL \
             SELECT device_id, 1 AS lo, min(sequence) - 1 AS hi FROM batches WHERE sequence IS NOT NULL \
             GROUP BY device_id HAVING min(sequence) > 1) g \
           JOIN devices d ON d.id = g.device_id ORDER BY d.name, g.lo";
        on_pool!(self, p => sqlx::query_as(SQL).fetch_all(p).await)
    }

    /// One page of sightings, newest stored first.
    #[tracing::instrument(skip_all, err)]
    pub async fn sightings_page(&self, q: &SightingQuery) -> sqlx::Result<Vec<SightingRow>> {
        on_pool!(self, p => {
            let mut qb = QueryBuilder::new("");
            push_page(&mut qb, q);
            qb.build_query_as().fetch_all(p).await
        })
    }

    /// The plan the database picks for [`Db::sightings_page`] with `q`: PostgreSQL's
    /// `EXPLAIN` lines, or SQLite's `EXPLAIN QUERY PLAN` details. For tests and the
    /// bench, which check that a bounding box is looked up in an index.
    pub async fn explain_sightings_page(&self, q: &SightingQuery) -> sqlx::Result<Vec<String>> {
        match self {
            Db::Postgres(p) => {
                let mut qb = QueryBuilder::new("EXPLAIN ");
                push_page(&mut qb, q);
                qb.build_query_scalar().fetch_all(p).await
            }
            Db::Sqlite(p) => {
                let mut qb = QueryBuilder::new("EXPLAIN QUERY PLAN ");
                push_page(&mut qb, q);
                let rows: Vec<(i64, i64, i64, String)> = qb.build_query_as().fetch_all(p).await?;
                Ok(rows.into_iter().map(|r| r.3).collect())
            }
        }
    }

    /// Forgets a rejection (its files are removed by the caller).
    #[tracing::instrument(skip_all, err)]
    pub async fn delete_rejection(&self, id: i64) -> sqlx::Result<()> {
        const SQL: &str = "DELETE FROM rejections WHERE id = $1";
        on_pool!(self, p => sqlx::query(SQL).bind(id).execute(p).await.map(|_| ()))
    }
}

/// Appends the query of one page of sightings to `qb`.
fn push_page<'a, DB>(qb: &mut QueryBuilder<'a, DB>, q: &SightingQuery)
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    f64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Time: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    // With a time range, newest observed first: the observed_at index finds the
    // range at once, where walking the cursor backwards could pass over most rows
    // (cursor and observation time need not agree).
    let by_time = q.from.is_some() || q.to.is_some();
    qb.push(
        "SELECT s.cursor, d.name AS device, s.batch, s.observed_at, s.latitude, s.longitude, \
         s.species, s.count, s.observer FROM sightings s JOIN devices d ON d.id = s.device_id \
         WHERE 1 = 1",
    );
    if let Some(b) = q.before {
        if by_time {
            let at = "(SELECT observed_at FROM sightings WHERE cursor = ";
            qb.push(" AND s.observed_at <= ")
                .push(at)
                .push_bind(b)
                .push(")");
            qb.push(" AND (s.observed_at, s.cursor) < (")
                .push(at)
                .push_bind(b);
            qb.push("), ").push_bind(b).push(")");
        } else {
            qb.push(" AND s.cursor < ").push_bind(b);
        }
    }
    if let Some(b) = q.batch {
        qb.push(" AND s.batch = ").push_bind(b);
    }
    if let Some(d) = &q.device {
        qb.push(" AND s.device_id = (SELECT id FROM devices WHERE name = ")
            .push_bind(d.clone())
            .push(")");
    }
    if let Some(s) = &q.species {
        qb.push(" AND s.species = ").push_bind(s.clone());
    }
    if let Some(t) = q.from {
        qb.push(" AND s.observed_at >= ").push_bind(Time(t));
    }
    if let Some(t) = q.to {
        qb.push(" AND s.observed_at < ").push_bind(Time(t));
    }
    if let Some(b) = q.bbox {
        push_bbox(qb, b);
    }
    qb.push(if by_time {
        " ORDER BY s.observed_at DESC, s.cursor DESC"
    } else {
        " ORDER BY s.cursor DESC"
    });
    qb.push(" LIMIT ").push_bind(q.limit.clamp(1, 5000));
}
