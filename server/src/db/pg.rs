//! PostgreSQL: bulk load with COPY, cursors in commit order.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use ctdata_batch::Sighting;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Acquire, PgConnection, Row};
use uuid::Uuid;

use super::{
    duplicate_ids_rejection, export_sql, forward, spawn_rows, with_offset, BatchRecord,
    ExportFilter, ExportRow, LoadResult, NewBatch, NewRejection, RowSource, RowStream,
};

/// Held for the whole load transaction: serialising ingests makes cursor order equal
/// commit order, so an export `since` a cursor can never miss a late commit.
const INGEST_LOCK: i64 = 0x4354_4441_5441; // "CTDATA"

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
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INGEST_LOCK)
        .execute(&mut *tx)
        .await?;
    if let Some(existing) = find_batch_on(&mut tx, &b.device, b.batch_id).await? {
        return Ok(LoadResult::Exists(existing));
    }
    let device_pk: i64 = sqlx::query_scalar(
        "INSERT INTO devices (name, last_seen_at) VALUES ($1, now()) \
         ON CONFLICT (name) DO UPDATE SET last_seen_at = now() RETURNING id",
    )
    .bind(&b.device)
    .fetch_one(&mut *tx)
    .await?;
    let batch_pk: i64 = sqlx::query_scalar(
        "INSERT INTO batches (device_id, batch_id, sha256, format, channel, file_name, claim_name, created_at, \
         row_count, inserted, duplicates) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, 0) RETURNING id",
    )
    .bind(device_pk)
    .bind(b.batch_id)
    .bind(&b.sha256)
    .bind(&b.format)
    .bind(&b.channel)
    .bind(&b.file_name)
    .bind(&b.claim_name)
    .bind(b.created_at)
    .fetch_one(&mut *tx)
    .await?;
    let ids = Ids {
        batch: batch_pk,
        device: device_pk,
    };

    // Fast path: COPY straight into the table. A sighting id that exists already (or
    // twice in this file) aborts it; then the rows go through a staging table instead.
    let mut fast = tx.begin().await?;
    let (summary, inserted) =
        match copy_rows(&mut fast, "sightings", SIGHTING_COLUMNS, &ids, None, rows()).await? {
            Copied::Rejected(r) => return Ok(LoadResult::Rejected(r)),
            Copied::Done(summary, n) => {
                fast.commit().await?;
                (summary, n)
            }
            Copied::UniqueViolation => {
                fast.rollback().await?;
                match load_via_staging(&mut tx, &ids, rows()).await? {
                    Staged::Rejected(r) => return Ok(LoadResult::Rejected(r)),
                    Staged::Done(summary, n) => (summary, n),
                }
            }
        };
    let record_sql =
        "WITH c AS (SELECT min(cursor) AS lo, max(cursor) AS hi FROM sightings WHERE batch = $1) \
         UPDATE batches b SET row_count = $2, inserted = $3, duplicates = $4, cursor_first = c.lo, cursor_last = c.hi \
         FROM c WHERE b.id = $1 RETURNING b.id";
    let rows_total = summary.rows as i64;
    sqlx::query(record_sql)
        .bind(batch_pk)
        .bind(rows_total)
        .bind(inserted)
        .bind(rows_total - inserted)
        .fetch_one(&mut *tx)
        .await?;
    let record = find_batch_on(&mut tx, &b.device, b.batch_id)
        .await?
        .expect("batch row just written");
    tx.commit().await?;
    Ok(LoadResult::Loaded(record))
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
    let context = d
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|pg| pg.r#where())
        .map(|w| format!(" ({w}: counting sightings from 1)"))
        .unwrap_or_default();
    Ok(Copied::Rejected(ctdata_batch::Rejection {
        kind: ctdata_batch::RejectKind::InvalidRows,
        summary: format!("the database refused a value: {}{context}", d.message()),
        problems: vec![],
        total_problems: 1,
    }))
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
    .bind(&r.channel)
    .bind(&r.kind)
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
    Ok(ExportRow {
        cursor: r.try_get(0)?,
        device: r.try_get(1)?,
        batch_id: r.try_get(2)?,
        received_at: r.try_get(3)?,
        sighting: Sighting {
            id: r.try_get(4)?,
            observed_at: with_offset(observed, r.try_get(6)?),
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
    })
}
