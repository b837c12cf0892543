//! All database access. One enum over the two backends; SQL both understand alike is
//! written once (`on_pool!`), what differs lives in [`dialect`], and each backend module
//! holds only its own load path. Every ingest goes through [`Db::load_batch`]: one
//! transaction per batch. Rows are decoded by column name and times come back as
//! `DateTime<Utc>` from both.

/// Runs the same expression against whichever pool this is: for SQL that both
/// backends understand alike (parameters `$1, $2, …` in order of first use).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Postgres($pool) => $body,
            Db::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

mod admin;
mod admins;
mod attachments;
mod conflicts;
mod credentials;
mod dashboard;
pub mod dialect;
mod export;
mod health;
mod pg;
mod relay;
mod remap;
mod sources;
mod sqlite;
pub(crate) mod tracks;
mod versions;

pub use admin::{BatchListFilter, BatchSummary, RejectionInfo, MAX_PAGE};
pub use admins::{AdminInfo, AdminTokenInfo, Revoked, TokenChoice};
pub use attachments::{
    AttachmentInfo, CursorFile, LinkedAttachment, NewLink, NewSubmission, StoredMedia,
    SubmissionRow, OPENROSA_XML,
};
pub use conflicts::{ConflictInfo, SightingVersion, Skipped, SkippedId, SKIPPED_LISTED};
pub use credentials::{Change, DeviceInfo};
pub use dashboard::{DayCount, DeviceStats, Session, SightingQuery, SightingRow};
pub use export::{BBox, ExportFilter, ExportRow};
pub use health::{WriteFailure, WriteHealth};
pub use remap::{Remapped, REMAP_VERSION};
pub use sources::{PullRecord, RemoteKey};
pub use sqlite::file_of as sqlite_file;
pub use tracks::{PatrolRow, TrackRow};
pub use versions::Superseded;

use chrono::{DateTime, FixedOffset, Utc};
use ctdata_batch::{Location, Problem, ReadSummary, RejectKind, Rejection, Sighting};
use dialect::DbUuid;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::types::{Channel, RejectionKind};

/// The consolidated database: PostgreSQL in production, SQLite embedded by default.
#[derive(Clone, Debug)]
pub enum Db {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// A batch that is stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BatchRecord {
    #[serde(skip)]
    pub pk: i64,
    pub device: String,
    #[sqlx(try_from = "DbUuid")]
    pub batch_id: Uuid,
    pub sha256: String,
    pub format: String,
    pub channel: Channel,
    #[serde(skip)]
    pub claim_name: Option<String>,
    pub received_at: DateTime<Utc>,
    pub rows: i64,
    pub inserted: i64,
    pub duplicates: i64,
    pub cursor_first: Option<i64>,
    pub cursor_last: Option<i64>,
}

/// What is known about a batch before its rows are loaded.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub device: String,
    pub batch_id: Uuid,
    pub sha256: String,
    pub format: String,
    pub channel: Channel,
    pub file_name: String,
    pub claim_name: Option<String>,
    pub created_at: Option<DateTime<FixedOffset>>,
    /// The device's running number of this batch, when the header gives one.
    pub sequence: Option<i64>,
    /// Track points and patrol events, stored in the batch's transaction.
    pub extras: std::sync::Arc<ctdata_batch::tracks::Extras>,
    /// Files inside the batch, already in the attachment store: recorded and linked to
    /// their sightings in the batch's transaction.
    pub media: std::sync::Arc<Vec<StoredMedia>>,
}

impl NewBatch {
    /// A batch with what every batch has; the optional fields empty. Add the rest with
    /// struct update syntax (`NewBatch { sequence, ..NewBatch::new(…) }`), so a field
    /// added later needs no change where batches are made.
    pub fn new(
        device: impl Into<String>,
        batch_id: Uuid,
        sha256: impl Into<String>,
        format: impl Into<String>,
        channel: Channel,
        file_name: impl Into<String>,
    ) -> NewBatch {
        NewBatch {
            device: device.into(),
            batch_id,
            sha256: sha256.into(),
            format: format.into(),
            channel,
            file_name: file_name.into(),
            claim_name: None,
            created_at: None,
            sequence: None,
            extras: Default::default(),
            media: Default::default(),
        }
    }
}

/// The SQL of [`BatchRecord`] for one device's batch: `$1` the device, `$2` the batch id.
const FIND_BATCH: &str = "SELECT b.id AS pk, d.name AS device, b.batch_id, b.sha256, b.format, \
     b.channel, b.claim_name, b.received_at, b.row_count AS rows, b.inserted, b.duplicates, \
     b.cursor_first, b.cursor_last FROM batches b JOIN devices d ON d.id = b.device_id \
     WHERE d.name = $1 AND b.batch_id = $2";

/// One more delivery of a stored batch.
#[derive(Debug, Clone, Copy)]
pub struct NewDelivery<'a> {
    pub channel: Channel,
    pub file_name: &'a str,
    pub claim_name: Option<&'a str>,
}

/// A file refused as a whole.
#[derive(Debug, Clone)]
pub struct NewRejection {
    pub file_name: String,
    pub stored_path: Option<String>,
    pub claim_name: Option<String>,
    pub device: Option<String>,
    pub batch_id: Option<Uuid>,
    pub sha256: Option<String>,
    pub channel: Channel,
    pub kind: RejectionKind,
    pub reason: String,
    pub problems: serde_json::Value,
}

pub enum LoadResult {
    Loaded(BatchRecord),
    /// The batch is stored already, by an earlier delivery or a concurrent one that won.
    Exists(BatchRecord),
    Rejected(Rejection),
}

/// The valid sightings of one file, in chunks, from a parser running on a blocking
/// thread. `done` says whether the whole file was valid.
pub struct RowStream {
    pub rx: mpsc::Receiver<Vec<Sighting>>,
    pub done: JoinHandle<Result<ReadSummary, Rejection>>,
}

/// Opens the same rows again: loading falls back to a second, slower pass when the
/// fast path meets a sighting id that is already stored.
pub type RowSource<'a> = &'a (dyn Fn() -> RowStream + Send + Sync);

/// Row counts, for tests and status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, sqlx::FromRow)]
pub struct Totals {
    pub sightings: i64,
    pub batches: i64,
    pub deliveries: i64,
    pub rejections: i64,
}

/// How many months after this one have their `sightings` partition made in advance.
pub const PARTITIONS_AHEAD: i32 = 2;

impl Db {
    /// Connects (creating an SQLite file and its folder when missing).
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            pg::connect(url, max_connections).await.map(Db::Postgres)
        } else if url.starts_with("sqlite:") {
            sqlite::connect(url, max_connections).await.map(Db::Sqlite)
        } else {
            anyhow::bail!(
                "database.url must start with sqlite:// or postgres://, got {:?}",
                crate::config::redact_url(url)
            )
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// How many batches from the drop directory are worth loading at once. On
    /// PostgreSQL a second one overlaps its file reading with the first one's COPY.
    /// SQLite has one writer, and a second load would only wait for its lock.
    /// How many small files (whose rows fit a single round trip) the drop directory
    /// loads at once: on PostgreSQL as many as the pool holds, so their commits share
    /// WAL flushes as concurrent HTTP uploads do; SQLite writes one at a time anyway.
    pub fn concurrent_small_loads(&self) -> usize {
        match self {
            Db::Postgres(p) => (p.options().get_max_connections() as usize).max(2),
            Db::Sqlite(_) => 1,
        }
    }

    pub fn concurrent_loads(&self) -> usize {
        match self {
            Db::Postgres(_) => 2,
            Db::Sqlite(_) => 1,
        }
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Db::Postgres(p) => sqlx::migrate!("../migrations/postgres").run(p).await?,
            Db::Sqlite(p) => sqlx::migrate!("../migrations/sqlite").run(p).await?,
        }
        Ok(())
    }

    /// PostgreSQL: makes the monthly partitions of `sightings` for this month and the
    /// next [`PARTITIONS_AHEAD`] (migration 0018), and returns how many it made. Rows
    /// of a month without a partition wait in the default partition and move when it is
    /// made, so a failure here never fails an ingest; it is tried again every hour.
    /// SQLite does not partition: 0.
    #[tracing::instrument(skip_all, err)]
    pub async fn prepare_partitions(&self) -> sqlx::Result<i32> {
        match self {
            Db::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT ctdata_sighting_partitions(now(), now() + make_interval(months => $1))",
                )
                .bind(PARTITIONS_AHEAD)
                .fetch_one(p)
                .await
            }
            Db::Sqlite(_) => Ok(0),
        }
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn find_batch(
        &self,
        device: &str,
        batch_id: Uuid,
    ) -> sqlx::Result<Option<BatchRecord>> {
        on_pool!(self, p => sqlx::query_as(FIND_BATCH)
            .bind(device).bind(DbUuid(batch_id)).fetch_optional(p).await)
    }

    /// Stores a batch and all its sightings in one transaction, or nothing.
    #[tracing::instrument(skip_all, err, fields(device = %batch.device, batch_id = %batch.batch_id))]
    pub async fn load_batch(
        &self,
        batch: &NewBatch,
        rows: RowSource<'_>,
    ) -> anyhow::Result<LoadResult> {
        match self {
            Db::Postgres(p) => pg::load_batch(p, batch, rows).await,
            Db::Sqlite(p) => sqlite::load_batch(p, batch, rows).await,
        }
    }

    /// Records one more delivery of a stored batch; a second call with the same claim
    /// name changes nothing.
    #[tracing::instrument(skip_all, err)]
    pub async fn record_delivery(
        &self,
        batch: &BatchRecord,
        d: &NewDelivery<'_>,
    ) -> sqlx::Result<()> {
        const SQL: &str = "INSERT INTO deliveries (batch, sha256, channel, file_name, claim_name) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (claim_name) DO NOTHING";
        on_pool!(self, p => sqlx::query(SQL)
            .bind(batch.pk).bind(&batch.sha256).bind(d.channel).bind(d.file_name).bind(d.claim_name)
            .execute(p).await.map(drop))
    }

    /// Records a rejection; a second call with the same claim name updates the first.
    #[tracing::instrument(skip_all, err)]
    pub async fn record_rejection(&self, r: &NewRejection) -> sqlx::Result<i64> {
        const SQL: &str = "INSERT INTO rejections (file_name, stored_path, claim_name, device, batch_id, \
             sha256, channel, kind, reason, problems) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (claim_name) DO UPDATE SET stored_path = excluded.stored_path, \
             kind = excluded.kind, reason = excluded.reason, problems = excluded.problems RETURNING id";
        on_pool!(self, p => sqlx::query_scalar(SQL)
            .bind(&r.file_name).bind(&r.stored_path).bind(&r.claim_name).bind(&r.device)
            .bind(r.batch_id.map(DbUuid)).bind(&r.sha256).bind(r.channel).bind(r.kind)
            .bind(&r.reason).bind(sqlx::types::Json(&r.problems))
            .fetch_one(p).await)
    }

    /// The highest cursor an export may hand out now: every sighting at or below it has
    /// committed, and nothing can commit there later. SQLite has one writer, so that is
    /// simply the newest cursor; PostgreSQL runs loads side by side (see `pg::safe_cursor`).
    #[tracing::instrument(skip_all, err)]
    pub async fn safe_cursor(&self) -> sqlx::Result<i64> {
        match self {
            Db::Postgres(p) => pg::safe_cursor(p).await,
            Db::Sqlite(p) => {
                sqlx::query_scalar("SELECT CAST(coalesce(max(cursor), 0) AS BIGINT) FROM sightings")
                    .fetch_one(p)
                    .await
            }
        }
    }

    /// Row counts of the main tables.
    #[tracing::instrument(skip_all, err)]
    pub async fn totals(&self) -> sqlx::Result<Totals> {
        const SQL: &str = "SELECT (SELECT count(*) FROM sightings) AS sightings, \
             (SELECT count(*) FROM batches) AS batches, (SELECT count(*) FROM deliveries) AS deliveries, \
             (SELECT count(*) FROM rejections) AS rejections";
        on_pool!(self, p => sqlx::query_as(SQL).fetch_one(p).await)
    }

    pub async fn close(&self) {
        match self {
            Db::Postgres(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
        }
    }
}

/// The rejection for a file that uses one sighting id more than once.
fn duplicate_ids_rejection(dups: Vec<(Uuid, Vec<i64>)>, total: u64) -> Rejection {
    let problems = dups
        .into_iter()
        .map(|(id, rows)| {
            let rows: Vec<String> = rows.iter().map(|r| (r + 1).to_string()).collect();
            Problem {
                at: Location {
                    line: None,
                    path: Some(format!("sightings {}", rows.join(", "))),
                },
                field: Some("id".into()),
                value: Some(id.to_string()),
                message: "duplicate sighting id within one file: every sighting needs its own id"
                    .into(),
            }
        })
        .collect();
    Rejection {
        kind: RejectKind::InvalidRows,
        summary: format!("{total} sighting id(s) appear more than once in this file"),
        problems,
        total_problems: total,
    }
}

/// A stored UUID as text, parsed.
fn parse_uuid(s: &str) -> sqlx::Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}
