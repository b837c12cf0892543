//! The export query, written once for both engines: filters added with
//! `sqlx::QueryBuilder`, rows decoded by column name, streamed through a short queue.

use chrono::{DateTime, FixedOffset, Utc};
use ctdata_batch::Sighting;
use sqlx::{Database, Encode, QueryBuilder, Type};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::dialect::{DbUuid, StoredTime, Time};
use super::Db;

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

/// Appends ` AND s.longitude >= … AND s.latitude <= …` for a bounding box.
pub(super) fn push_bbox<'a, DB>(qb: &mut QueryBuilder<'a, DB>, b: BBox)
where
    DB: Database,
    f64: Encode<'a, DB> + Type<DB>,
{
    qb.push(" AND s.longitude >= ").push_bind(b.min_lon);
    qb.push(" AND s.latitude >= ").push_bind(b.min_lat);
    qb.push(" AND s.longitude <= ").push_bind(b.max_lon);
    qb.push(" AND s.latitude <= ").push_bind(b.max_lat);
}

impl ExportFilter {
    /// The `WHERE` conditions for the filters in use.
    fn push_conditions<'a, DB>(&self, qb: &mut QueryBuilder<'a, DB>)
    where
        DB: Database,
        i64: Encode<'a, DB> + Type<DB>,
        f64: Encode<'a, DB> + Type<DB>,
        String: Encode<'a, DB> + Type<DB>,
        Time: Encode<'a, DB> + Type<DB>,
    {
        qb.push(" WHERE s.cursor > ").push_bind(self.since);
        if let Some(until) = self.until {
            qb.push(" AND s.cursor <= ").push_bind(until);
        }
        if let Some(t) = self.from {
            qb.push(" AND s.observed_at >= ").push_bind(Time(t));
        }
        if let Some(t) = self.to {
            qb.push(" AND s.observed_at < ").push_bind(Time(t));
        }
        if let Some(d) = &self.device {
            qb.push(" AND d.name = ").push_bind(d.clone());
        }
        if let Some(s) = &self.species {
            qb.push(" AND s.species = ").push_bind(s.clone());
        }
        if let Some(b) = self.bbox {
            push_bbox(qb, b);
        }
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
    /// The files linked to this sighting or its batch (`[{name, sha256, size,
    /// content_type}]` as JSON text), when there are any.
    pub attachments_json: Option<String>,
}

impl ExportRow {
    /// The linked files, each with its download path, when there are any.
    pub fn attachments(&self) -> Option<serde_json::Value> {
        let mut files: Vec<serde_json::Value> =
            serde_json::from_str(self.attachments_json.as_deref()?).ok()?;
        for f in &mut files {
            let url = format!("/api/v1/attachments/{}", f["sha256"].as_str().unwrap_or(""));
            f["url"] = url.into();
        }
        Some(serde_json::Value::Array(files))
    }

    /// The attributes as a JSON object.
    pub fn attributes(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&self.attributes_json).unwrap_or_default()
    }
}

/// A row of the export query, as the database returns it.
#[derive(sqlx::FromRow)]
struct Stored {
    cursor: i64,
    device: String,
    #[sqlx(try_from = "DbUuid")]
    batch_id: Uuid,
    received_at: DateTime<Utc>,
    #[sqlx(try_from = "DbUuid")]
    id: Uuid,
    observed_at: StoredTime,
    observed_offset: i32,
    latitude: f64,
    longitude: f64,
    altitude: Option<f64>,
    accuracy: Option<f64>,
    observer: Option<String>,
    species: Option<String>,
    count: Option<i64>,
    attributes: String,
    attachments: Option<String>,
}

impl From<Stored> for ExportRow {
    fn from(r: Stored) -> ExportRow {
        let (observed_at, problem) = renderable_time(r.observed_at.0, r.observed_offset);
        ExportRow {
            cursor: r.cursor,
            device: r.device,
            batch_id: r.batch_id,
            received_at: r.received_at,
            sighting: Sighting {
                id: r.id,
                observed_at,
                latitude: r.latitude,
                longitude: r.longitude,
                altitude: r.altitude,
                accuracy: r.accuracy,
                observer: r.observer,
                species: r.species,
                count: r.count,
                attributes: Default::default(),
            },
            attributes_json: r.attributes,
            problem,
            attachments_json: r.attachments.filter(|a| a != "[]"),
        }
    }
}

/// Rows per message between the query task and the encoder: one message per row
/// costs a task switch per row.
const EXPORT_CHUNK: usize = 256;

impl Db {
    /// Streams matching sightings in cursor order, without buffering them.
    pub fn export(
        &self,
        filter: ExportFilter,
    ) -> futures::stream::BoxStream<'static, sqlx::Result<ExportRow>> {
        let db = self.clone();
        spawn_rows(move |tx| async move {
            // Only a database that holds attachments pays for looking them up per row.
            let any: sqlx::Result<bool> = on_pool!(&db, p => sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM attachment_links)").fetch_one(p).await);
            let attachments = match any {
                Ok(true) => db.attachments_of_row(),
                Ok(false) => "NULL".to_string(),
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let select = db.export_select(&attachments);
            match &db {
                Db::Postgres(p) => {
                    let Some((mut conn, pid)) = cancellable(p, &tx).await else {
                        return;
                    };
                    let mut qb = QueryBuilder::new(select);
                    filter.push_conditions(&mut qb);
                    qb.push(" ORDER BY s.cursor");
                    let whole = forward(qb.build_query_as::<Stored>().fetch(&mut *conn), tx).await;
                    if !whole {
                        cancel(p, conn, pid).await;
                    }
                }
                Db::Sqlite(p) => {
                    let mut qb = QueryBuilder::new(select);
                    filter.push_conditions(&mut qb);
                    qb.push(" ORDER BY s.cursor");
                    forward(qb.build_query_as::<Stored>().fetch(p), tx).await;
                }
            }
        })
    }
}

/// A PostgreSQL connection of the pool for one streamed query, and its backend's pid,
/// so that the query can be cancelled when its reader goes away (see [`cancel`]).
/// `None` once the error is sent to `tx`.
pub(super) async fn cancellable<T>(
    pool: &sqlx::PgPool,
    tx: &mpsc::Sender<sqlx::Result<Vec<T>>>,
) -> Option<(sqlx::pool::PoolConnection<sqlx::Postgres>, i32)> {
    let got = async {
        let mut conn = pool.acquire().await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await?;
        Ok::<_, sqlx::Error>((conn, pid))
    }
    .await;
    match got {
        Ok(got) => Some(got),
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            None
        }
    }
}

/// Stops a streamed query whose reader went away (a download given up, a client cut
/// off): without this PostgreSQL runs it to the end and the connection reads every
/// remaining row before it can serve again (seconds at millions of rows, on a
/// connection the pool lacks meanwhile). The connection is closed, not reused.
pub(super) async fn cancel(
    pool: &sqlx::PgPool,
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    pid: i32,
) {
    let cancelled = sqlx::query_scalar::<_, bool>("SELECT pg_cancel_backend($1)")
        .bind(pid)
        .fetch_one(pool)
        .await;
    match cancelled {
        Ok(true) => tracing::info!(
            backend = pid,
            "the reader of a streamed query went away: query cancelled"
        ),
        Ok(false) => tracing::info!(
            backend = pid,
            "the reader of a streamed query went away; the query had ended"
        ),
        Err(e) => tracing::warn!(
            backend = pid,
            "the reader of a streamed query went away; cancelling it failed, closing its connection: {e}"
        ),
    }
    use sqlx::Connection;
    let _ = conn.detach().close().await;
}

impl Db {
    fn export_select(&self, attachments: &str) -> String {
        format!(
            "SELECT s.cursor, d.name AS device, b.batch_id, b.received_at, s.id, s.observed_at, \
             s.observed_offset, s.latitude, s.longitude, s.altitude, s.accuracy, s.observer, \
             s.species, s.count, {} AS attributes, {attachments} AS attachments \
             FROM sightings s JOIN batches b ON b.id = s.batch JOIN devices d ON d.id = s.device_id",
            self.json_text("s.attributes")
        )
    }

    /// The plan the database picks for [`Db::export`] with `filter` (files not looked
    /// up): PostgreSQL's `EXPLAIN` lines, or SQLite's `EXPLAIN QUERY PLAN` details.
    pub async fn explain_export(&self, filter: &ExportFilter) -> sqlx::Result<Vec<String>> {
        let select = self.export_select("NULL");
        match self {
            Db::Postgres(p) => {
                let mut qb = QueryBuilder::new(format!("EXPLAIN {select}"));
                filter.push_conditions(&mut qb);
                qb.push(" ORDER BY s.cursor");
                qb.build_query_scalar().fetch_all(p).await
            }
            Db::Sqlite(p) => {
                let mut qb = QueryBuilder::new(format!("EXPLAIN QUERY PLAN {select}"));
                filter.push_conditions(&mut qb);
                qb.push(" ORDER BY s.cursor");
                let rows: Vec<(i64, i64, i64, String)> = qb.build_query_as().fetch_all(p).await?;
                Ok(rows.into_iter().map(|r| r.3).collect())
            }
        }
    }

    /// The files of export row `s` as a JSON array text: linked to the sighting, or to
    /// its whole batch; the raw OpenRosa XML is left out (it is the source, not a file
    /// the observer attached).
    fn attachments_of_row(&self) -> String {
        let from = format!(
            "FROM attachment_links l JOIN attachments a ON a.sha256 = l.sha256 \
             WHERE l.batch = s.batch AND (l.sighting_id = '' OR l.sighting_id = {}) \
             AND l.name <> 'xml_submission_file'",
            self.uuid_text("s.id")
        );
        match self {
            Db::Postgres(_) => format!(
                "(SELECT json_agg(json_build_object('name', l.name, 'sha256', l.sha256, \
                 'size', a.size, 'content_type', a.content_type) ORDER BY l.name)::text {from})"
            ),
            Db::Sqlite(_) => format!(
                "(SELECT json_group_array(json_object('name', x.name, 'sha256', x.sha256, \
                 'size', x.size, 'content_type', x.content_type)) \
                 FROM (SELECT l.name, l.sha256, a.size, a.content_type {from} ORDER BY l.name) AS x)"
            ),
        }
    }
}

/// Hands decoded rows to the queue, in chunks, until the query ends or the reader goes
/// away; false when the reader went away before the query ended.
pub(super) async fn forward<S, T: From<S>>(
    mut rows: impl futures::Stream<Item = sqlx::Result<S>> + Unpin,
    tx: mpsc::Sender<sqlx::Result<Vec<T>>>,
) -> bool {
    use futures::StreamExt;
    let mut chunk = Vec::with_capacity(EXPORT_CHUNK);
    loop {
        // A reader that goes away is noticed at once, also while a selective query
        // scans many rows between two matches.
        let row = tokio::select! {
            row = rows.next() => row,
            _ = tx.closed() => return false,
        };
        let Some(row) = row else { break };
        match row {
            Ok(row) => chunk.push(T::from(row)),
            Err(e) => {
                let _ = tx.send(Ok(std::mem::take(&mut chunk))).await;
                let _ = tx.send(Err(e)).await;
                return true;
            }
        }
        if chunk.len() == EXPORT_CHUNK && tx.send(Ok(std::mem::take(&mut chunk))).await.is_err() {
            return false;
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk)).await;
    }
    true
}

/// Runs a query on its own task and hands its rows over a short queue, so the stream
/// owns everything it borrows and memory stays bounded however many rows there are.
pub(super) fn spawn_rows<T, F, Fut>(
    produce: F,
) -> futures::stream::BoxStream<'static, sqlx::Result<T>>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<sqlx::Result<Vec<T>>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(produce(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    })
    .flat_map(|chunk| {
        let rows: Vec<sqlx::Result<T>> = match chunk {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(rows)
    })
    .boxed()
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
