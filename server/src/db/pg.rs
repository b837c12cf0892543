//! PostgreSQL: bulk load with COPY, cursors in commit order.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ctdata_batch::{ReadSummary, Rejection, Sighting};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Row};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{
    duplicate_ids_rejection, export_sql, forward, renderable_time, spawn_rows, BatchRecord,
    ExportFilter, ExportRow, LoadResult, NewBatch, NewRejection, RowSource, RowStream,
};

/// Advisory lock keys from here up register running loads: key = base + the cursor
/// sequence's high-water mark when the load began (see [`safe_cursor`]).
const LOAD_KEY_BASE: &str = "(1::bigint << 62)";

/// The last cursor the sequence has handed out (0 before the first).
const ALLOCATED: &str = "(CASE WHEN is_called THEN last_value ELSE last_value - 1 END)";

/// Deadlock retries for one load.
const MAX_RETRIES: u32 = 5;

/// Bytes handed to COPY at a time.
const COPY_CHUNK: usize = 1 << 20;

const SIGHTING_COLUMNS: &str =
    "id, batch, device_id, observed_at, observed_offset, latitude, longitude, \
                                altitude, accuracy, observer, species, count, attributes";

pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await?)
}

const BATCH_SELECT: &str =
    "SELECT b.id, d.name, b.batch_id, b.sha256, b.format, b.channel, b.claim_name, \
     b.received_at, b.row_count, b.inserted, b.duplicates, b.cursor_first, b.cursor_last \
     FROM batches b JOIN devices d ON d.id = b.device_id";

fn batch_from_row(r: &PgRow) -> sqlx::Result<BatchRecord> {
    Ok(BatchRecord {
        pk: r.try_get(0)?,
        device: r.try_get(1)?,
        batch_id: r.try_get(2)?,
        sha256: r.try_get(3)?,
        format: r.try_get(4)?,
        channel: r.try_get(5)?,
        claim_name: r.try_get(6)?,
        received_at: r.try_get(7)?,
        rows: r.try_get(8)?,
        inserted: r.try_get(9)?,
        duplicates: r.try_get(10)?,
        cursor_first: r.try_get(11)?,
        cursor_last: r.try_get(12)?,
    })
}

async fn find_batch_on(
    conn: &mut PgConnection,
    device: &str,
    batch_id: Uuid,
) -> sqlx::Result<Option<BatchRecord>> {
    let sql = format!("{BATCH_SELECT} WHERE d.name = $1 AND b.batch_id = $2");
    let row = sqlx::query(&sql)
        .bind(device)
        .bind(batch_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(batch_from_row).transpose()
}

pub async fn find_batch(
    pool: &PgPool,
    device: &str,
    batch_id: Uuid,
) -> sqlx::Result<Option<BatchRecord>> {
    let mut conn = pool.acquire().await?;
    find_batch_on(&mut conn, device, batch_id).await
}

pub async fn load_batch(
    pool: &PgPool,
    b: &NewBatch,
    rows: RowSource<'_>,
) -> anyhow::Result<LoadResult> {
    let mut via_staging = false;
    let mut attempt = 0;
    loop {
        let outcome = if via_staging {
            load_once(pool, b, rows(), true).await
        } else {
            match load_small(pool, b, rows()).await {
                Ok(Small::Done(attempt)) => Ok(attempt),
                Ok(Small::Copy(stream)) => load_once(pool, b, stream, false).await,
                Ok(Small::IdsExist(stream)) => {
                    via_staging = true;
                    load_once(pool, b, stream, true).await
                }
                Err(e) => Err(e),
            }
        };
        match outcome {
            Ok(Attempt::Finished(result)) => return Ok(*result),
            // Some sighting id is stored already: take the slower path that skips it.
            Ok(Attempt::IdsExist) => via_staging = true,
            Err(e) if attempt < MAX_RETRIES && is_transient(&e) => {
                // Two loads sharing sighting ids can deadlock; PostgreSQL cancels one.
                attempt += 1;
                tracing::debug!(attempt, "load retried: {e}");
                let jitter = rand::random::<u64>() % 20;
                tokio::time::sleep(Duration::from_millis(10 * attempt as u64 + jitter)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

enum Attempt {
    Finished(Box<LoadResult>),
    IdsExist,
}

/// Files of at most this many sightings are stored with one call of `ctdata_load`
/// (migration 0006): one round trip instead of five, which is what many devices
/// uploading small batches at once wait on.
const SMALL_ROWS: usize = 2048;

enum Small {
    Done(Attempt),
    /// Not for the one-round-trip path: the rows (those read so far, then the rest) for
    /// the COPY path.
    Copy(RowStream),
    /// Some sighting id is stored already: the rows, for the staging path.
    IdsExist(RowStream),
}

/// The one-round-trip path for a small file. A larger file, invalid rows or an id
/// repeated within the file go to the COPY path, which makes the same checks in the
/// same order as for any other file.
async fn load_small(pool: &PgPool, b: &NewBatch, mut stream: RowStream) -> anyhow::Result<Small> {
    let mut all: Vec<Sighting> = Vec::new();
    while let Some(chunk) = stream.rx.recv().await {
        all.extend(chunk);
        if all.len() > SMALL_ROWS {
            return Ok(Small::Copy(chain(all, stream)));
        }
    }
    let summary = match stream.done.await? {
        Ok(summary) => summary,
        Err(rejection) => return Ok(Small::Copy(replay(all, Err(rejection)))),
    };
    let mut seen = std::collections::HashSet::with_capacity(all.len());
    if !all.iter().all(|s| seen.insert(s.id)) {
        return Ok(Small::Copy(replay(all, Ok(summary))));
    }
    let columns = Columns::from(&all[..]);
    let result: sqlx::Result<Option<SmallLoad>> = bind_batch(
        sqlx::query_as(
            "SELECT batch, received_at, inserted, cursor_first, cursor_last FROM ctdata_load(\
             $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
        ),
        b,
    )
    .bind(&columns.ids)
    .bind(&columns.observed_at)
    .bind(&columns.offsets)
    .bind(&columns.latitudes)
    .bind(&columns.longitudes)
    .bind(&columns.altitudes)
    .bind(&columns.accuracies)
    .bind(&columns.observers)
    .bind(&columns.species)
    .bind(&columns.counts)
    .bind(&columns.attributes)
    .fetch_optional(pool)
    .await;
    let stored = match result {
        Ok(Some(stored)) => stored,
        // The device has this batch already; or a concurrent delivery of it committed
        // first (unique_violation on the batch).
        Ok(None) => return exists(pool, b).await.map(Small::Done),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            if d.table() == Some("sightings") {
                return Ok(Small::IdsExist(replay(all, Ok(summary))));
            }
            return exists(pool, b).await.map(Small::Done);
        }
        Err(e) => {
            return match classify(e)? {
                Copied::Rejected(r) => finished(LoadResult::Rejected(r)).map(Small::Done),
                _ => unreachable!(
                    "unique violations are handled above and classify never finishes a load"
                ),
            }
        }
    };
    let rows_total = summary.rows as i64;
    finished(LoadResult::Loaded(BatchRecord {
        pk: stored.batch,
        device: b.device.clone(),
        batch_id: b.batch_id,
        sha256: b.sha256.clone(),
        format: b.format.clone(),
        channel: b.channel,
        claim_name: b.claim_name.clone(),
        received_at: stored.received_at,
        rows: rows_total,
        inserted: stored.inserted,
        duplicates: rows_total - stored.inserted,
        cursor_first: stored.cursor_first,
        cursor_last: stored.cursor_last,
    }))
    .map(Small::Done)
}

/// The rows read ahead, then the rest of `rest`, as one stream.
fn chain(ahead: Vec<Sighting>, mut rest: RowStream) -> RowStream {
    let (tx, rx) = mpsc::channel(4);
    let done = tokio::spawn(async move {
        if tx.send(ahead).await.is_ok() {
            while let Some(chunk) = rest.rx.recv().await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        }
        drop(rest.rx);
        match rest.done.await {
            Ok(result) => result,
            Err(e) => panic!("the batch reader failed: {e}"),
        }
    });
    RowStream { rx, done }
}

/// Rows read whole, and how reading them ended, as a stream again.
fn replay(all: Vec<Sighting>, result: Result<ReadSummary, Rejection>) -> RowStream {
    let (tx, rx) = mpsc::channel(1);
    let done = tokio::spawn(async move {
        let _ = tx.send(all).await;
        result
    });
    RowStream { rx, done }
}

type PgQueryAs<'q, O> = sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>;

/// Binds what is known of a batch as `$1`..`$9`: device name, batch id, sha256, format,
/// channel, file name, claim name, created_at, sequence.
fn bind_batch<'q, O>(q: PgQueryAs<'q, O>, b: &'q NewBatch) -> PgQueryAs<'q, O> {
    q.bind(&b.device)
        .bind(b.batch_id)
        .bind(&b.sha256)
        .bind(&b.format)
        .bind(b.channel)
        .bind(&b.file_name)
        .bind(&b.claim_name)
        .bind(b.created_at)
        .bind(b.sequence)
}

/// The stored batch a load found in its way.
async fn exists(pool: &PgPool, b: &NewBatch) -> anyhow::Result<Attempt> {
    match find_batch(pool, &b.device, b.batch_id).await? {
        Some(record) => finished(LoadResult::Exists(record)),
        None => anyhow::bail!(
            "batch {} of device {} was reported stored but is not there",
            b.batch_id,
            b.device
        ),
    }
}

#[derive(sqlx::FromRow)]
struct SmallLoad {
    batch: i64,
    received_at: DateTime<Utc>,
    inserted: i64,
    cursor_first: Option<i64>,
    cursor_last: Option<i64>,
}

/// A small file's sightings as one array per column, for `ctdata_load`. Times and
/// attributes go as text, as COPY would send them, so both paths store the same values.
#[derive(Default)]
struct Columns {
    ids: Vec<Uuid>,
    observed_at: Vec<String>,
    offsets: Vec<i32>,
    latitudes: Vec<f64>,
    longitudes: Vec<f64>,
    altitudes: Vec<Option<f64>>,
    accuracies: Vec<Option<f64>>,
    observers: Vec<Option<String>>,
    species: Vec<Option<String>>,
    counts: Vec<Option<i64>>,
    attributes: Vec<String>,
}

impl From<&[Sighting]> for Columns {
    fn from(all: &[Sighting]) -> Columns {
        let mut c = Columns::default();
        for s in all {
            c.ids.push(s.id);
            c.observed_at.push(s.observed_at.to_rfc3339());
            c.offsets.push(s.observed_at.offset().local_minus_utc());
            c.latitudes.push(s.latitude);
            c.longitudes.push(s.longitude);
            c.altitudes.push(s.altitude);
            c.accuracies.push(s.accuracy);
            c.observers.push(s.observer.clone());
            c.species.push(s.species.clone());
            c.counts.push(s.count);
            c.attributes
                .push(serde_json::to_string(&s.attributes).unwrap_or_else(|_| "{}".into()));
        }
        c
    }
}

/// One try in one transaction: register the load, write the batch row, COPY the rows,
/// fill in the counts. Five round trips on the fast path, and no lock that other
/// batches wait for.
async fn load_once(
    pool: &PgPool,
    b: &NewBatch,
    rows: RowStream,
    via_staging: bool,
) -> anyhow::Result<Attempt> {
    let mut tx = pool.begin().await?;
    let ids = match start_batch(&mut tx, b).await? {
        Started::New(ids) => ids,
        Started::Exists(record) => return finished(LoadResult::Exists(record)),
    };
    let (summary, inserted) = if via_staging {
        match load_via_staging(&mut tx, &ids, rows).await? {
            Staged::Rejected(r) => return finished(LoadResult::Rejected(r)),
            Staged::Done(summary, n) => (summary, n),
        }
    } else {
        match copy_rows(&mut tx, "sightings", SIGHTING_COLUMNS, &ids, None, rows).await? {
            Copied::Rejected(r) => return finished(LoadResult::Rejected(r)),
            Copied::Done(summary, n) => (summary, n),
            Copied::UniqueViolation => return Ok(Attempt::IdsExist),
        }
    };
    let rows_total = summary.rows as i64;
    let (received_at, cursor_first, cursor_last): (DateTime<Utc>, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "WITH c AS (SELECT min(cursor) AS lo, max(cursor) AS hi FROM sightings WHERE batch = $1), \
             seen AS (UPDATE devices SET last_seen_at = now() WHERE id = $5) \
             UPDATE batches b SET row_count = $2, inserted = $3, duplicates = $4, cursor_first = c.lo, \
             cursor_last = c.hi FROM c WHERE b.id = $1 RETURNING b.received_at, b.cursor_first, b.cursor_last",
        )
        .bind(ids.batch)
        .bind(rows_total)
        .bind(inserted)
        .bind(rows_total - inserted)
        .bind(ids.device)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    finished(LoadResult::Loaded(BatchRecord {
        pk: ids.batch,
        device: b.device.clone(),
        batch_id: b.batch_id,
        sha256: b.sha256.clone(),
        format: b.format.clone(),
        channel: b.channel,
        claim_name: b.claim_name.clone(),
        received_at,
        rows: rows_total,
        inserted,
        duplicates: rows_total - inserted,
        cursor_first,
        cursor_last,
    }))
}

fn finished(result: LoadResult) -> anyhow::Result<Attempt> {
    Ok(Attempt::Finished(Box::new(result)))
}

enum Started {
    New(Ids),
    Exists(BatchRecord),
}

/// Registers the load (see [`safe_cursor`]) and inserts the batch row. A concurrent
/// delivery of the same batch makes the insert wait for it; once it committed, this
/// one reports the stored batch instead.
async fn start_batch(conn: &mut PgConnection, b: &NewBatch) -> anyhow::Result<Started> {
    let sql = format!(
        "WITH reg AS (SELECT pg_advisory_xact_lock_shared({LOAD_KEY_BASE} + {ALLOCATED}) AS l FROM sightings_cursor_seq), \
         dev AS (SELECT id FROM devices WHERE name = $1) \
         INSERT INTO batches (device_id, batch_id, sha256, format, channel, file_name, claim_name, created_at, \
         sequence, row_count, inserted, duplicates) SELECT dev.id, $2, $3, $4, $5, $6, $7, $8, $9, 0, 0, 0 FROM dev, reg \
         ON CONFLICT (device_id, batch_id) DO NOTHING RETURNING id, device_id"
    );
    // At most twice: the second time after adding a device seen for the first time.
    for _ in 0..2 {
        let inserted: Option<(i64, i64)> = bind_batch(sqlx::query_as(&sql), b)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some((batch, device)) = inserted {
            return Ok(Started::New(Ids { batch, device }));
        }
        if let Some(existing) = find_batch_on(conn, &b.device, b.batch_id).await? {
            return Ok(Started::Exists(existing));
        }
        sqlx::query("INSERT INTO devices (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(&b.device)
            .execute(&mut *conn)
            .await?;
    }
    anyhow::bail!("device {:?} could not be added", b.device)
}

/// Deadlocks and serialization failures: running the same load again will work.
fn is_transient(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| match e {
            sqlx::Error::Database(d) => d.code(),
            _ => None,
        })
        .is_some_and(|code| code == "40P01" || code == "40001")
}

/// The highest cursor an export may hand out now: every sighting at or below it has
/// committed, and no load still running can add one there.
///
/// Loads run concurrently, so cursors (taken from a sequence during COPY) are not in
/// commit order. Each load registers before it takes any cursor, with an advisory lock
/// whose key holds the sequence's high-water mark at that moment; all its cursors lie
/// above it. Reading the sequence first and the registrations second means a load that
/// took a cursor at or below the mark is either seen registered or already committed.
pub async fn safe_cursor(pool: &PgPool) -> sqlx::Result<i64> {
    let mut conn = pool.acquire().await?;
    let allocated: i64 =
        sqlx::query_scalar(&format!("SELECT {ALLOCATED} FROM sightings_cursor_seq"))
            .fetch_one(&mut *conn)
            .await?;
    let running: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT min(((classid::bigint << 32) | objid::bigint) - {LOAD_KEY_BASE}) FROM pg_locks \
         WHERE locktype = 'advisory' AND objsubid = 1 AND classid::bigint >= ({LOAD_KEY_BASE} >> 32) \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ))
    .fetch_one(&mut *conn)
    .await?;
    Ok(running.map_or(allocated, |r| r.min(allocated)).max(0))
}

struct Ids {
    batch: i64,
    device: i64,
}

enum Copied {
    Done(ctdata_batch::ReadSummary, i64),
    Rejected(ctdata_batch::Rejection),
    UniqueViolation,
}

enum Staged {
    Done(ctdata_batch::ReadSummary, i64),
    Rejected(ctdata_batch::Rejection),
}

/// COPYs every row of `stream` into `table`; with `ordinal`, also the row's position.
async fn copy_rows(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    ids: &Ids,
    ordinal: Option<&str>,
    mut stream: RowStream,
) -> anyhow::Result<Copied> {
    let cols = match ordinal {
        Some(o) => format!("{o}, {columns}"),
        None => columns.to_string(),
    };
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} ({cols}) FROM STDIN"))
        .await?;
    let mut buf = String::with_capacity(COPY_CHUNK * 2);
    let mut n: i64 = 0;
    let mut send_err = None;
    while let Some(chunk) = stream.rx.recv().await {
        for s in &chunk {
            if ordinal.is_some() {
                let _ = write!(buf, "{n}\t");
            }
            encode_row(&mut buf, s, ids);
            n += 1;
        }
        if buf.len() >= COPY_CHUNK {
            if let Err(e) = copy.send(std::mem::take(&mut buf).into_bytes()).await {
                send_err = Some(e);
                break;
            }
            buf.reserve(COPY_CHUNK * 2);
        }
    }
    if let Some(e) = send_err {
        drop(stream.rx);
        let _ = stream.done.await;
        return classify(e);
    }
    match stream.done.await? {
        Err(rejection) => {
            copy.abort("batch rejected").await.ok();
            Ok(Copied::Rejected(rejection))
        }
        Ok(summary) => {
            if !buf.is_empty() {
                if let Err(e) = copy.send(buf.into_bytes()).await {
                    return classify(e);
                }
            }
            match copy.finish().await {
                Ok(count) => Ok(Copied::Done(summary, count as i64)),
                Err(e) => classify(e),
            }
        }
    }
}

/// A unique violation sends the load down the staging path; a value PostgreSQL cannot
/// store (SQLSTATE classes 22 "data exception" and 54 "program limit exceeded") rejects
/// the file, since retrying would fail the same way forever; anything else is the
/// database's trouble, not the file's, and is retried later.
fn classify(e: sqlx::Error) -> anyhow::Result<Copied> {
    let sqlx::Error::Database(d) = &e else {
        return Err(e.into());
    };
    if d.is_unique_violation() {
        return Ok(Copied::UniqueViolation);
    }
    let code = d.code().unwrap_or_default();
    if !(code.starts_with("22") || code.starts_with("54")) {
        return Err(e.into());
    }
    let pg = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
    let place = pg.and_then(|pg| pg.r#where());
    // The context names our tables and statements: of use to us, not to the sender.
    tracing::debug!(
        sqlstate = code.as_ref(),
        detail = pg.and_then(|pg| pg.detail()).unwrap_or("-"),
        place = place.unwrap_or("-"),
        "PostgreSQL refused a value: {}",
        d.message()
    );
    Ok(Copied::Rejected(ctdata_batch::Rejection {
        kind: ctdata_batch::RejectKind::InvalidRows,
        summary: refusal(d.message(), place),
        problems: vec![],
        total_problems: 1,
    }))
}

/// The reason a sender reads for a value PostgreSQL refused: the sighting (counting
/// from 1), the field and the value, taken from the COPY context
/// `COPY <table>, line <n>, column <field>: "<value>"`, and nothing else of it.
fn refusal(message: &str, place: Option<&str>) -> String {
    // Context lines run innermost first (a jsonb value's own parse position, say);
    // the COPY line is the one that points into the sender's file.
    let copy = place
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("COPY "))
        .unwrap_or_default();
    // The value may hold ", " itself: split only as far as the field name.
    let mut at = Vec::new();
    let rest = copy.split_once(", ").map_or("", |(_, r)| r);
    if let Some(rest) = rest.strip_prefix("line ") {
        let (line, rest) = rest.split_once(", ").unwrap_or((rest, ""));
        at.push(format!("sighting {}", line.trim()));
        if let Some(column) = rest.strip_prefix("column ") {
            match column.split_once(": ") {
                Some((field, value)) => at.push(format!("field {field}, value {value}")),
                None => at.push(format!("field {column}")),
            }
        }
    }
    if at.is_empty() {
        format!("the database refused a value: {message}")
    } else {
        format!(
            "{}: the database refused the value: {message}",
            at.join(", ")
        )
    }
}

/// The slow path: stage the file's rows, refuse ids used twice within it, then insert
/// what is new and count the rest as duplicates.
async fn load_via_staging(
    conn: &mut PgConnection,
    ids: &Ids,
    stream: RowStream,
) -> anyhow::Result<Staged> {
    sqlx::query(
        "CREATE TEMP TABLE staging ON COMMIT DROP AS SELECT 0::bigint AS ord, * FROM sightings WITH NO DATA",
    )
    .execute(&mut *conn)
    .await?;
    let summary =
        match copy_rows(conn, "staging", SIGHTING_COLUMNS, ids, Some("ord"), stream).await? {
            Copied::Done(summary, _) => summary,
            Copied::Rejected(r) => return Ok(Staged::Rejected(r)),
            Copied::UniqueViolation => anyhow::bail!("staging table has no unique constraint"),
        };
    let dups: Vec<(Uuid, Vec<i64>)> = sqlx::query_as(
        "SELECT id, array_agg(ord ORDER BY ord) FROM staging GROUP BY id HAVING count(*) > 1 \
         ORDER BY min(ord) LIMIT 50",
    )
    .fetch_all(&mut *conn)
    .await?;
    if !dups.is_empty() {
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT id FROM staging GROUP BY id HAVING count(*) > 1) d",
        )
        .fetch_one(&mut *conn)
        .await?;
        return Ok(Staged::Rejected(duplicate_ids_rejection(
            dups,
            total as u64,
        )));
    }
    let inserted = sqlx::query(&format!(
        "INSERT INTO sightings ({SIGHTING_COLUMNS}) SELECT {SIGHTING_COLUMNS} FROM staging ORDER BY ord \
         ON CONFLICT (id) DO NOTHING"
    ))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // After the insert: a concurrent load's rows that made this one skip an id are
    // committed by now, so each skipped id is compared against what was kept.
    super::conflicts::record_pg(conn, ids.batch).await?;
    Ok(Staged::Done(summary, inserted as i64))
}

/// One line of COPY text format.
fn encode_row(buf: &mut String, s: &Sighting, ids: &Ids) {
    let _ = write!(
        buf,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t",
        s.id,
        ids.batch,
        ids.device,
        s.observed_at.to_rfc3339(),
        s.observed_at.offset().local_minus_utc(),
        s.latitude,
        s.longitude
    );
    opt_num(buf, s.altitude);
    opt_num(buf, s.accuracy);
    opt_text(buf, s.observer.as_deref());
    opt_text(buf, s.species.as_deref());
    opt_num(buf, s.count);
    let attrs = serde_json::to_string(&s.attributes).unwrap_or_else(|_| "{}".into());
    escape(buf, &attrs);
    buf.push('\n');
}

fn opt_num(buf: &mut String, v: Option<impl std::fmt::Display>) {
    match v {
        Some(v) => {
            let _ = write!(buf, "{v}\t");
        }
        None => buf.push_str("\\N\t"),
    }
}

fn opt_text(buf: &mut String, v: Option<&str>) {
    match v {
        Some(v) => {
            escape(buf, v);
            buf.push('\t');
        }
        None => buf.push_str("\\N\t"),
    }
}

/// COPY text format escapes: backslash, and the delimiter / row characters.
fn escape(buf: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
    }
}

pub async fn record_delivery(
    pool: &PgPool,
    b: &BatchRecord,
    channel: &str,
    file_name: &str,
    claim_name: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO deliveries (batch, sha256, channel, file_name, claim_name) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (claim_name) DO NOTHING",
    )
    .bind(b.pk)
    .bind(&b.sha256)
    .bind(channel)
    .bind(file_name)
    .bind(claim_name)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn record_rejection(pool: &PgPool, r: &NewRejection) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO rejections (file_name, stored_path, claim_name, device, batch_id, sha256, channel, kind, \
         reason, problems) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (claim_name) DO UPDATE SET stored_path = EXCLUDED.stored_path, kind = EXCLUDED.kind, \
         reason = EXCLUDED.reason, problems = EXCLUDED.problems RETURNING id",
    )
    .bind(&r.file_name)
    .bind(&r.stored_path)
    .bind(&r.claim_name)
    .bind(&r.device)
    .bind(r.batch_id)
    .bind(&r.sha256)
    .bind(r.channel)
    .bind(r.kind)
    .bind(&r.reason)
    .bind(&r.problems)
    .fetch_one(pool)
    .await
}

pub fn export(
    pool: PgPool,
    f: ExportFilter,
) -> futures::stream::BoxStream<'static, sqlx::Result<ExportRow>> {
    // PostgreSQL numbers its parameters: `?` becomes $1, $2, …
    let mut sql = String::new();
    for (i, part) in export_sql(&f, "s.attributes::text").split('?').enumerate() {
        if i > 0 {
            let _ = write!(sql, "${i}");
        }
        sql.push_str(part);
    }
    spawn_rows(move |tx| async move {
        let mut q = sqlx::query(&sql).bind(f.since);
        if let Some(until) = f.until {
            q = q.bind(until);
        }
        if let Some(t) = f.from {
            q = q.bind(t);
        }
        if let Some(t) = f.to {
            q = q.bind(t);
        }
        if let Some(d) = f.device {
            q = q.bind(d);
        }
        if let Some(s) = f.species {
            q = q.bind(s);
        }
        if let Some(b) = f.bbox {
            q = q
                .bind(b.min_lon)
                .bind(b.min_lat)
                .bind(b.max_lon)
                .bind(b.max_lat);
        }
        forward(q.fetch(&pool), export_row, tx).await;
    })
}

fn export_row(r: &PgRow) -> sqlx::Result<ExportRow> {
    let observed: DateTime<Utc> = r.try_get(5)?;
    let attrs: String = r.try_get(14)?;
    let (observed_at, problem) = renderable_time(Ok(observed), r.try_get(6)?);
    Ok(ExportRow {
        cursor: r.try_get(0)?,
        device: r.try_get(1)?,
        batch_id: r.try_get(2)?,
        received_at: r.try_get(3)?,
        sighting: Sighting {
            id: r.try_get(4)?,
            observed_at,
            latitude: r.try_get(7)?,
            longitude: r.try_get(8)?,
            altitude: r.try_get(9)?,
            accuracy: r.try_get(10)?,
            observer: r.try_get(11)?,
            species: r.try_get(12)?,
            count: r.try_get(13)?,
            attributes: Default::default(),
        },
        attributes_json: attrs,
        problem,
    })
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// A value our parser lets through but PostgreSQL refuses, sent the way a load sends
    /// it (COPY into a staging table): the reason names the sighting and the field, and
    /// none of the table, the statement or PostgreSQL's internal detail.
    #[tokio::test]
    async fn a_refused_value_names_the_sighting_and_field_not_the_sql() {
        let Some(db) = ctdata_tests::TestDb::new(ctdata_tests::Backend::Postgres).await else {
            return;
        };
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        sqlx::query("CREATE TEMP TABLE staging (ord bigint, species text, attributes jsonb)")
            .execute(&mut conn)
            .await
            .expect("staging table");
        let mut copy = conn
            .copy_in_raw("COPY staging (ord, species, attributes) FROM STDIN")
            .await
            .expect("copy");
        // The second row's attributes hold an escaped NUL, which jsonb cannot store.
        let rows = "0\tpica\t{}\n1\tcorvus\t{\"n\": 1, \"note\": \"a\\\\u0000b\"}\n";
        let err = match copy.send(rows.as_bytes()).await {
            Ok(_) => copy
                .finish()
                .await
                .expect_err("PostgreSQL refuses \\u0000 in jsonb"),
            Err(e) => e,
        };
        let Ok(Copied::Rejected(r)) = classify(err) else {
            panic!("a refused value rejects the file");
        };
        assert!(r.summary.contains("sighting 2"), "{}", r.summary);
        assert!(
            r.summary
                .contains(r#"field attributes, value "{"n": 1, "note""#),
            "{}",
            r.summary
        );
        for internal in ["COPY", "staging", "line 2", "cannot be converted"] {
            assert!(!r.summary.contains(internal), "{internal} in {}", r.summary);
        }
    }
}
