//! All database access. One enum over the two backends; each backend module holds its
//! own SQL. Every ingest goes through [`Db::load_batch`]: one transaction per batch.

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

mod admin;
mod admins;
mod conflicts;
mod credentials;
mod dashboard;
mod health;
mod pg;
mod sources;
mod sqlite;

pub use admin::{BatchListFilter, BatchSummary, RejectionInfo, MAX_PAGE};
pub use admins::{AdminInfo, AdminTokenInfo, Revoked, TokenChoice};
pub use conflicts::{ConflictInfo, SightingVersion, Skipped, SkippedId, SKIPPED_LISTED};
pub use credentials::{Change, DeviceInfo};
pub use dashboard::{DayCount, DeviceStats, Session, SightingQuery, SightingRow};
pub use health::{WriteFailure, WriteHealth};
pub use sources::{PullRecord, RemoteKey};

use std::str::FromStr;

use chrono::{DateTime, FixedOffset, Utc};
use ctdata_batch::{Location, Problem, ReadSummary, RejectKind, Rejection, Sighting};
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
#[derive(Debug, Clone, Serialize)]
pub struct BatchRecord {
    #[serde(skip)]
    pub pk: i64,
    pub device: String,
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

/// Filters shared by the CLI export and the HTTP download endpoint.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub since: i64,
    /// Only up to this cursor (inclusive): lets an HTTP download name its next cursor
    /// before the first byte.
    pub until: Option<i64>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub device: Option<String>,
    pub species: Option<String>,
    pub bbox: Option<BBox>,
}

/// `minLon,minLat,maxLon,maxLat` in WGS 84 degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub min_lon: f64,
    pub min_lat: f64,
    pub max_lon: f64,
    pub max_lat: f64,
}

impl std::str::FromStr for BBox {
    type Err = String;
    fn from_str(s: &str) -> Result<BBox, String> {
        let v: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("bbox {s:?} must be four numbers: minLon,minLat,maxLon,maxLat"))?;
        let [min_lon, min_lat, max_lon, max_lat] = v[..] else {
            return Err(format!(
                "bbox {s:?} must be four numbers: minLon,minLat,maxLon,maxLat"
            ));
        };
        if !(min_lon <= max_lon && min_lat <= max_lat) {
            return Err(format!(
                "bbox {s:?}: the minimum must not exceed the maximum"
            ));
        }
        Ok(BBox {
            min_lon,
            min_lat,
            max_lon,
            max_lat,
        })
    }
}

impl ExportFilter {
    /// `WHERE` text for the filters in use, `?` standing for each parameter in the
    /// order the backends bind them: since, until, from, to, device, species, bbox.
    fn conditions(&self) -> String {
        let mut sql = String::from("s.cursor > ?");
        for (present, cond) in [
            (self.until.is_some(), " AND s.cursor <= ?"),
            (self.from.is_some(), " AND s.observed_at >= ?"),
            (self.to.is_some(), " AND s.observed_at < ?"),
            (self.device.is_some(), " AND d.name = ?"),
            (self.species.is_some(), " AND s.species = ?"),
            (
                self.bbox.is_some(),
                " AND s.longitude >= ? AND s.latitude >= ? AND s.longitude <= ? AND s.latitude <= ?",
            ),
        ] {
            if present {
                sql.push_str(cond);
            }
        }
        sql
    }
}

/// The export query; `attributes` is the backend's expression for the JSON as text.
fn export_sql(filter: &ExportFilter, attributes: &str) -> String {
    format!(
        "SELECT s.cursor, d.name, b.batch_id, b.received_at, s.id, s.observed_at, s.observed_offset, s.latitude, \
         s.longitude, s.altitude, s.accuracy, s.observer, s.species, s.count, {attributes} \
         FROM sightings s JOIN batches b ON b.id = s.batch JOIN devices d ON d.id = s.device_id \
         WHERE {} ORDER BY s.cursor",
        filter.conditions()
    )
}

/// Rows per message between the query task and the encoder: one message per row
/// costs a task switch per row.
const EXPORT_CHUNK: usize = 256;

/// Hands decoded rows to the queue, in chunks, until the query ends or the reader goes
/// away.
async fn forward<R>(
    mut rows: impl futures::Stream<Item = sqlx::Result<R>> + Unpin,
    decode: fn(&R) -> sqlx::Result<ExportRow>,
    tx: mpsc::Sender<sqlx::Result<Vec<ExportRow>>>,
) {
    use futures::StreamExt;
    let mut chunk = Vec::with_capacity(EXPORT_CHUNK);
    while let Some(row) = rows.next().await {
        match row.and_then(|r| decode(&r)) {
            Ok(row) => chunk.push(row),
            Err(e) => {
                let _ = tx.send(Ok(std::mem::take(&mut chunk))).await;
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        if chunk.len() == EXPORT_CHUNK && tx.send(Ok(std::mem::take(&mut chunk))).await.is_err() {
            return;
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk)).await;
    }
}

/// One exported sighting with where it came from.
#[derive(Debug, Clone)]
pub struct ExportRow {
    pub cursor: i64,
    pub device: String,
    pub batch_id: Uuid,
    pub received_at: DateTime<Utc>,
    /// Without its attributes: those stay the JSON text the database returned, so a
    /// CSV export need not parse and re-serialise them for every row.
    pub sighting: Sighting,
    pub attributes_json: String,
    /// Why this stored row cannot be rendered as it is (its `observed_at` is then a
    /// placeholder): exported with the problem named rather than ending the export.
    pub problem: Option<String>,
}

impl ExportRow {
    /// The attributes as a JSON object.
    pub fn attributes(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&self.attributes_json).unwrap_or_default()
    }
}

/// Row counts, for tests and status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Totals {
    pub sightings: i64,
    pub batches: i64,
    pub deliveries: i64,
    pub rejections: i64,
}

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

    #[tracing::instrument(skip_all, err)]
    pub async fn find_batch(
        &self,
        device: &str,
        batch_id: Uuid,
    ) -> sqlx::Result<Option<BatchRecord>> {
        match self {
            Db::Postgres(p) => pg::find_batch(p, device, batch_id).await,
            Db::Sqlite(p) => sqlite::find_batch(p, device, batch_id).await,
        }
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

    #[tracing::instrument(skip_all, err)]
    pub async fn record_delivery(
        &self,
        batch: &BatchRecord,
        channel: Channel,
        file_name: &str,
        claim: Option<&str>,
    ) -> sqlx::Result<()> {
        let channel = channel.as_str();
        match self {
            Db::Postgres(p) => pg::record_delivery(p, batch, channel, file_name, claim).await,
            Db::Sqlite(p) => sqlite::record_delivery(p, batch, channel, file_name, claim).await,
        }
    }

    /// Records a rejection; a second call with the same claim name updates the first.
    #[tracing::instrument(skip_all, err)]
    pub async fn record_rejection(&self, r: &NewRejection) -> sqlx::Result<i64> {
        match self {
            Db::Postgres(p) => pg::record_rejection(p, r).await,
            Db::Sqlite(p) => sqlite::record_rejection(p, r).await,
        }
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
        const SQL: &str =
            "SELECT (SELECT count(*) FROM sightings), (SELECT count(*) FROM batches), \
                           (SELECT count(*) FROM deliveries), (SELECT count(*) FROM rejections)";
        let (sightings, batches, deliveries, rejections) = match self {
            Db::Postgres(p) => sqlx::query_as(SQL).fetch_one(p).await?,
            Db::Sqlite(p) => sqlx::query_as(SQL).fetch_one(p).await?,
        };
        Ok(Totals {
            sightings,
            batches,
            deliveries,
            rejections,
        })
    }

    /// Streams matching sightings in cursor order, without buffering them.
    pub fn export(
        &self,
        filter: ExportFilter,
    ) -> futures::stream::BoxStream<'static, sqlx::Result<ExportRow>> {
        match self {
            Db::Postgres(p) => pg::export(p.clone(), filter),
            Db::Sqlite(p) => sqlite::export(p.clone(), filter),
        }
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

/// Runs a query on its own task and hands its rows over a short queue, so the stream
/// owns everything it borrows and memory stays bounded however many rows there are.
fn spawn_rows<F, Fut>(produce: F) -> futures::stream::BoxStream<'static, sqlx::Result<ExportRow>>
where
    F: FnOnce(mpsc::Sender<sqlx::Result<Vec<ExportRow>>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(produce(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    })
    .flat_map(|chunk| {
        let rows: Vec<sqlx::Result<ExportRow>> = match chunk {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(rows)
    })
    .boxed()
}

fn parse_uuid(s: &str) -> sqlx::Result<Uuid> {
    Uuid::from_str(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// A stored observed time an export can render, or the placeholder and the problem: rows
/// stored before the years were checked in UTC can hold the year 10000.
fn renderable_time(
    stored: Result<DateTime<Utc>, String>,
    offset_secs: i32,
) -> (DateTime<FixedOffset>, Option<String>) {
    use chrono::Datelike;
    match stored {
        Ok(t) if (1..=9999).contains(&t.year()) => (with_offset(t, offset_secs), None),
        Ok(t) => (
            with_offset(DateTime::UNIX_EPOCH, 0),
            Some(format!(
                "stored observed_at is in the year {} (UTC); valid years are 1 to 9999: correct or delete this sighting",
                t.year()
            )),
        ),
        Err(raw) => (
            with_offset(DateTime::UNIX_EPOCH, 0),
            Some(format!(
                "stored observed_at {raw:?} is not a timestamp between the years 1 and 9999 (UTC): \
                 correct or delete this sighting"
            )),
        ),
    }
}

/// Rebuilds a device-local timestamp from UTC and the stored offset.
fn with_offset(utc: DateTime<Utc>, offset_secs: i32) -> DateTime<FixedOffset> {
    let offset = FixedOffset::east_opt(offset_secs)
        .unwrap_or(FixedOffset::east_opt(0).expect("zero offset"));
    utc.with_timezone(&offset)
}
