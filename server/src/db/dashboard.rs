//! The web dashboard's queries: sessions, counts from `batches` (never a count over
//! `sightings`), and sightings pages by keyset on the cursor, each with a LIMIT.

use chrono::{DateTime, Utc};
use serde::Serialize;

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
    pub last_seen_at: Option<String>,
    pub last_batch: Option<String>,
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
    pub observed_at: String,
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

enum Arg {
    I(i64),
    F(f64),
    S(String),
}

/// SQLite stores times as `…T…Z` text: a parameter in the same form compares right.
fn time_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl Db {
    /// A text time parameter as the column's type.
    fn time_param(&self, n: usize) -> String {
        match self {
            Db::Postgres(_) => format!("CAST(${n} AS TIMESTAMPTZ)"),
            Db::Sqlite(_) => format!("${n}"),
        }
    }

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
        let sql = format!(
            "SELECT count(*), CAST(COALESCE(sum(inserted), 0) AS BIGINT) FROM batches \
             WHERE received_at >= {}",
            self.time_param(1)
        );
        on_pool!(self, p => sqlx::query_as(&sql).bind(time_text(since)).fetch_one(p).await)
    }

    /// Sightings stored per UTC day since `since`.
    #[tracing::instrument(skip_all, err)]
    pub async fn sightings_per_day(&self, since: DateTime<Utc>) -> sqlx::Result<Vec<DayCount>> {
        let day = match self {
            Db::Postgres(_) => "to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            Db::Sqlite(_) => "substr(received_at, 1, 10)",
        };
        let sql = format!(
            "SELECT {day} AS day, CAST(sum(inserted) AS BIGINT) AS sightings FROM batches \
             WHERE received_at >= {} GROUP BY 1 ORDER BY 1",
            self.time_param(1)
        );
        on_pool!(self, p => sqlx::query_as(&sql).bind(time_text(since)).fetch_all(p).await)
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn pending_rejections(&self) -> sqlx::Result<i64> {
        const SQL: &str = "SELECT count(*) FROM rejections WHERE status = 'pending'";
        on_pool!(self, p => sqlx::query_scalar(SQL).fetch_one(p).await)
    }

    /// Every device with its batch and sighting totals (from `batches`).
    #[tracing::instrument(skip_all, err)]
    pub async fn device_stats(&self) -> sqlx::Result<Vec<DeviceStats>> {
        let sql = format!(
            "SELECT d.name, {} AS last_seen_at, {} AS last_batch, COALESCE(s.batches, 0) AS batches, \
             COALESCE(s.sightings, 0) AS sightings, (d.token_hash IS NOT NULL) AS registered, \
             (d.revoked_at IS NOT NULL) AS revoked FROM devices d LEFT JOIN \
             (SELECT device_id, count(*) AS batches, CAST(sum(inserted) AS BIGINT) AS sightings, \
              max(received_at) AS last_batch FROM batches GROUP BY device_id) s ON s.device_id = d.id \
             ORDER BY d.name",
            self.rfc3339("d.last_seen_at"),
            self.rfc3339("s.last_batch")
        );
        on_pool!(self, p => sqlx::query_as(&sql).fetch_all(p).await)
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
        let mut clauses = Vec::new();
        let mut args = Vec::new();
        let mut add = |clause: &dyn Fn(usize) -> String, arg: Arg| {
            args.push(arg);
            clauses.push(clause(args.len()));
        };
        // With a time range, newest observed first: the observed_at index finds the
        // range at once, where walking the cursor backwards could pass over most rows
        // (cursor and observation time need not agree).
        let by_time = q.from.is_some() || q.to.is_some();
        if let Some(b) = q.before {
            if by_time {
                let at = |n| format!("(SELECT observed_at FROM sightings WHERE cursor = ${n})");
                add(
                    &|n| {
                        format!(
                            "s.observed_at <= {} AND (s.observed_at, s.cursor) < ({}, ${n})",
                            at(n),
                            at(n)
                        )
                    },
                    Arg::I(b),
                );
            } else {
                add(&|n| format!("s.cursor < ${n}"), Arg::I(b));
            }
        }
        if let Some(b) = q.batch {
            add(&|n| format!("s.batch = ${n}"), Arg::I(b));
        }
        if let Some(d) = &q.device {
            add(
                &|n| format!("s.device_id = (SELECT id FROM devices WHERE name = ${n})"),
                Arg::S(d.clone()),
            );
        }
        if let Some(s) = &q.species {
            add(&|n| format!("s.species = ${n}"), Arg::S(s.clone()));
        }
        if let Some(t) = q.from {
            add(
                &|n| format!("s.observed_at >= {}", self.time_param(n)),
                Arg::S(time_text(t)),
            );
        }
        if let Some(t) = q.to {
            add(
                &|n| format!("s.observed_at < {}", self.time_param(n)),
                Arg::S(time_text(t)),
            );
        }
        if let Some(b) = q.bbox {
            add(&|n| format!("s.longitude >= ${n}"), Arg::F(b.min_lon));
            add(&|n| format!("s.latitude >= ${n}"), Arg::F(b.min_lat));
            add(&|n| format!("s.longitude <= ${n}"), Arg::F(b.max_lon));
            add(&|n| format!("s.latitude <= ${n}"), Arg::F(b.max_lat));
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT s.cursor, d.name AS device, s.batch, {} AS observed_at, s.latitude, s.longitude, \
             s.species, s.count, s.observer FROM sightings s JOIN devices d ON d.id = s.device_id \
             {filter} ORDER BY {} LIMIT {}",
            self.rfc3339("s.observed_at"),
            if by_time { "s.observed_at DESC, s.cursor DESC" } else { "s.cursor DESC" },
            q.limit.clamp(1, 5000)
        );
        on_pool!(self, p => {
            let mut query = sqlx::query_as(&sql);
            for a in args {
                query = match a {
                    Arg::I(v) => query.bind(v),
                    Arg::F(v) => query.bind(v),
                    Arg::S(v) => query.bind(v),
                };
            }
            query.fetch_all(p).await
        })
    }

    /// Forgets a rejection (its files are removed by the caller).
    #[tracing::instrument(skip_all, err)]
    pub async fn delete_rejection(&self, id: i64) -> sqlx::Result<()> {
        const SQL: &str = "DELETE FROM rejections WHERE id = $1";
        on_pool!(self, p => sqlx::query(SQL).bind(id).execute(p).await.map(|_| ()))
    }
}
