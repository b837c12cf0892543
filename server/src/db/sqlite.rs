//! SQLite, the embedded default: one writer, WAL, multi-row inserts.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use ctdata_batch::Sighting;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{query::Query, Acquire, Connection, Row, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{
    duplicate_ids_rejection, export_sql, forward, parse_uuid, renderable_time, spawn_rows,
    BatchRecord, ExportFilter, ExportRow, LoadResult, NewBatch, NewRejection, RowSource, RowStream,
};

const SIGHTING_COLUMNS: &str =
    "id, batch, device_id, observed_at, observed_offset, latitude, longitude, \
                                altitude, accuracy, observer, species, count, attributes";
const COLUMN_COUNT: usize = 13;
/// Rows per INSERT statement: 64 × 13 parameters stays far below SQLite's limit.
const ROWS_PER_INSERT: usize = 64;

pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<SqlitePool> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        // FULL: a commit is on disk before the file moves to the archive, even if the
        // power fails right after (NORMAL could roll the last commits back).
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(std::time::Duration::from_secs(30));
    if let Some(parent) = opts.get_filename().parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    Ok(SqlitePoolOptions::new()
        .max_connections(max_connections)
        .after_release(|conn, _| {
            Box::pin(async move {
                // After SQLITE_FULL (or IOERR, NOMEM…) SQLite may roll a transaction back on
                // its own; sqlx's rollback then fails and it still counts the transaction as
                // open, so the next `begin` on this connection would only take a savepoint
                // and its "commit" would write nothing. The ping runs any queued rollback
                // first; a connection still in a transaction afterwards is closed.
                conn.ping().await?;
                Ok(!conn.is_in_transaction())
            })
        })
        .connect_with(opts)
        .await?)
}

/// Fixed-width UTC text, so comparing text compares time.
pub fn utc_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_time(s: &str) -> sqlx::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

const BATCH_SELECT: &str =
    "SELECT b.id, d.name, b.batch_id, b.sha256, b.format, b.channel, b.claim_name, \
     b.received_at, b.row_count, b.inserted, b.duplicates, b.cursor_first, b.cursor_last \
     FROM batches b JOIN devices d ON d.id = b.device_id";

fn batch_from_row(r: &SqliteRow) -> sqlx::Result<BatchRecord> {
    Ok(BatchRecord {
        pk: r.try_get(0)?,
        device: r.try_get(1)?,
        batch_id: parse_uuid(r.try_get(2)?)?,
        sha256: r.try_get(3)?,
        format: r.try_get(4)?,
        channel: r.try_get(5)?,
        claim_name: r.try_get(6)?,
        received_at: parse_time(r.try_get(7)?)?,
        rows: r.try_get(8)?,
        inserted: r.try_get(9)?,
        duplicates: r.try_get(10)?,
        cursor_first: r.try_get(11)?,
        cursor_last: r.try_get(12)?,
    })
}

async fn find_batch_on(
    conn: &mut SqliteConnection,
    device: &str,
    batch_id: Uuid,
) -> sqlx::Result<Option<BatchRecord>> {
    let sql = format!("{BATCH_SELECT} WHERE d.name = ? AND b.batch_id = ?");
    let row = sqlx::query(&sql)
        .bind(device)
        .bind(batch_id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(batch_from_row).transpose()
}

pub async fn find_batch(
    pool: &SqlitePool,
    device: &str,
    batch_id: Uuid,
) -> sqlx::Result<Option<BatchRecord>> {
    let mut conn = pool.acquire().await?;
    find_batch_on(&mut conn, device, batch_id).await
}

pub async fn load_batch(
    pool: &SqlitePool,
    b: &NewBatch,
    rows: RowSource<'_>,
) -> anyhow::Result<LoadResult> {
    let mut conn = pool.acquire().await?;
    let result = match load_on(&mut conn, b, rows).await {
        Ok(LoadResult::Loaded(record)) => verify_committed(&mut conn, &record)
            .await
            .map(|()| LoadResult::Loaded(record)),
        other => other,
    };
    if result.is_err() {
        // Whatever failed may have rolled the transaction back behind sqlx's back: this
        // connection's idea of its transaction state cannot be trusted any more.
        conn.close_on_drop();
    }
    result
}

/// Proves a load's commit reached the database before anyone is told so: `BEGIN` fails
/// while the connection is still inside a transaction (the "commit" then only released
/// a savepoint), and outside one the batch row can only be seen once it is committed.
async fn verify_committed(conn: &mut SqliteConnection, record: &BatchRecord) -> anyhow::Result<()> {
    sqlx::query("BEGIN")
        .execute(&mut *conn)
        .await
        .map_err(|e| anyhow::anyhow!("the load's commit left a transaction open: {e}"))?;
    let stored: Option<(i64, i64)> =
        sqlx::query_as("SELECT row_count, inserted FROM batches WHERE id = ?")
            .bind(record.pk)
            .fetch_optional(&mut *conn)
            .await?;
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    anyhow::ensure!(
        stored == Some((record.rows, record.inserted)),
        "batch {} of device {} is not in the database after its commit",
        record.batch_id,
        record.device
    );
    Ok(())
}

async fn load_on(
    conn: &mut SqliteConnection,
    b: &NewBatch,
    rows: RowSource<'_>,
) -> anyhow::Result<LoadResult> {
    let mut tx = Connection::begin(conn).await?;
    // Write first: it takes SQLite's write lock before anything is read, so a second
    // writer waits (busy_timeout) instead of failing on a stale snapshot.
    let now = utc_text(Utc::now());
    let device_pk: i64 = sqlx::query_scalar(
        "INSERT INTO devices (name, last_seen_at) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET last_seen_at = ?2 RETURNING id",
    )
    .bind(&b.device)
    .bind(&now)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(existing) = find_batch_on(&mut tx, &b.device, b.batch_id).await? {
        return Ok(LoadResult::Exists(existing));
    }
    let batch_pk: i64 = sqlx::query_scalar(
        "INSERT INTO batches (device_id, batch_id, sha256, format, channel, file_name, claim_name, created_at, \
         received_at, sequence, row_count, inserted, duplicates) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0) RETURNING id",
    )
    .bind(device_pk)
    .bind(b.batch_id.to_string())
    .bind(&b.sha256)
    .bind(&b.format)
    .bind(b.channel)
    .bind(&b.file_name)
    .bind(&b.claim_name)
    .bind(b.created_at.map(|t| t.to_rfc3339()))
    .bind(&now)
    .bind(b.sequence)
    .fetch_one(&mut *tx)
    .await?;
    let ids = (batch_pk, device_pk);

    let mut fast = Acquire::begin(&mut *tx).await?;
    let (summary, inserted) = match insert_rows(&mut fast, "sightings", false, ids, rows()).await? {
        Inserted::Rejected(r) => return Ok(LoadResult::Rejected(r)),
        Inserted::Done(summary, n) => {
            fast.commit().await?;
            (summary, n)
        }
        Inserted::UniqueViolation => {
            fast.rollback().await?;
            match load_via_staging(&mut tx, ids, rows()).await? {
                Inserted::Done(summary, n) => (summary, n),
                Inserted::Rejected(r) => return Ok(LoadResult::Rejected(r)),
                Inserted::UniqueViolation => {
                    anyhow::bail!("staging table has no unique constraint")
                }
            }
        }
    };
    let total = summary.rows as i64;
    sqlx::query(
        "UPDATE batches SET row_count = ?2, inserted = ?3, duplicates = ?4, \
         cursor_first = (SELECT min(cursor) FROM sightings WHERE batch = ?1), \
         cursor_last = (SELECT max(cursor) FROM sightings WHERE batch = ?1) WHERE id = ?1",
    )
    .bind(batch_pk)
    .bind(total)
    .bind(inserted)
    .bind(total - inserted)
    .execute(&mut *tx)
    .await?;
    let record = find_batch_on(&mut tx, &b.device, b.batch_id)
        .await?
        .expect("batch row just written");
    tx.commit().await?;
    Ok(LoadResult::Loaded(record))
}

enum Inserted {
    Done(ctdata_batch::ReadSummary, i64),
    Rejected(ctdata_batch::Rejection),
    UniqueViolation,
}

/// Inserts every row of `stream` into `table` (`staging` also gets each row's position).
async fn insert_rows(
    conn: &mut SqliteConnection,
    table: &str,
    staging: bool,
    ids: (i64, i64),
    mut stream: RowStream,
) -> anyhow::Result<Inserted> {
    let mut n: i64 = 0;
    let mut inserted: i64 = 0;
    while let Some(chunk) = stream.rx.recv().await {
        for part in chunk.chunks(ROWS_PER_INSERT) {
            let sql = insert_sql(table, staging, part.len());
            let mut q = sqlx::query(&sql);
            for s in part {
                if staging {
                    q = q.bind(n);
                }
                q = bind_sighting(q, s, ids);
                n += 1;
            }
            match q.execute(&mut *conn).await {
                Ok(r) => inserted += r.rows_affected() as i64,
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                    drop(stream.rx);
                    let _ = stream.done.await;
                    return Ok(Inserted::UniqueViolation);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(match stream.done.await? {
        Ok(summary) => Inserted::Done(summary, inserted),
        Err(r) => Inserted::Rejected(r),
    })
}

fn insert_sql(table: &str, staging: bool, rows: usize) -> String {
    let per_row = COLUMN_COUNT + usize::from(staging);
    let one = format!("({})", vec!["?"; per_row].join(","));
    let cols = if staging {
        format!("ord, {SIGHTING_COLUMNS}")
    } else {
        SIGHTING_COLUMNS.to_string()
    };
    format!(
        "INSERT INTO {table} ({cols}) VALUES {}",
        vec![one; rows].join(",")
    )
}

fn bind_sighting<'q>(
    q: Query<'q, Sqlite, SqliteArguments<'q>>,
    s: &Sighting,
    (batch, device): (i64, i64),
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    q.bind(s.id.to_string())
        .bind(batch)
        .bind(device)
        .bind(utc_text(s.observed_at.with_timezone(&Utc)))
        .bind(s.observed_at.offset().local_minus_utc())
        .bind(s.latitude)
        .bind(s.longitude)
        .bind(s.altitude)
        .bind(s.accuracy)
        .bind(s.observer.clone())
        .bind(s.species.clone())
        .bind(s.count)
        .bind(serde_json::to_string(&s.attributes).unwrap_or_else(|_| "{}".into()))
}

async fn load_via_staging(
    conn: &mut SqliteConnection,
    ids: (i64, i64),
    stream: RowStream,
) -> anyhow::Result<Inserted> {
    sqlx::query("DROP TABLE IF EXISTS temp.staging")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "CREATE TEMP TABLE staging (ord INTEGER, id TEXT, batch INTEGER, device_id INTEGER, observed_at TEXT, \
         observed_offset INTEGER, latitude REAL, longitude REAL, altitude REAL, accuracy REAL, observer TEXT, \
         species TEXT, count INTEGER, attributes TEXT)",
    )
    .execute(&mut *conn)
    .await?;
    let summary = match insert_rows(conn, "temp.staging", true, ids, stream).await? {
        Inserted::Done(summary, _) => summary,
        other => return Ok(other),
    };
    let dups: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, group_concat(ord) FROM (SELECT id, ord FROM staging ORDER BY ord) GROUP BY id \
         HAVING count(*) > 1 ORDER BY min(ord) LIMIT 50",
    )
    .fetch_all(&mut *conn)
    .await?;
    if !dups.is_empty() {
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT id FROM staging GROUP BY id HAVING count(*) > 1)",
        )
        .fetch_one(&mut *conn)
        .await?;
        let mut parsed = Vec::with_capacity(dups.len());
        for (id, ords) in dups {
            let ords = ords.split(',').filter_map(|o| o.parse().ok()).collect();
            parsed.push((parse_uuid(&id)?, ords));
        }
        return Ok(Inserted::Rejected(duplicate_ids_rejection(
            parsed,
            total as u64,
        )));
    }
    let inserted = sqlx::query(&format!(
        "INSERT OR IGNORE INTO sightings ({SIGHTING_COLUMNS}) SELECT {SIGHTING_COLUMNS} FROM staging ORDER BY ord"
    ))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    super::conflicts::record_sqlite(conn, ids.0).await?;
    sqlx::query("DROP TABLE temp.staging")
        .execute(&mut *conn)
        .await?;
    Ok(Inserted::Done(summary, inserted as i64))
}

pub async fn record_delivery(
    pool: &SqlitePool,
    b: &BatchRecord,
    channel: &str,
    file_name: &str,
    claim_name: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO deliveries (batch, sha256, channel, file_name, claim_name) VALUES (?, ?, ?, ?, ?) \
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

pub async fn record_rejection(pool: &SqlitePool, r: &NewRejection) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO rejections (file_name, stored_path, claim_name, device, batch_id, sha256, channel, kind, \
         reason, problems) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (claim_name) DO UPDATE SET stored_path = excluded.stored_path, kind = excluded.kind, \
         reason = excluded.reason, problems = excluded.problems RETURNING id",
    )
    .bind(&r.file_name)
    .bind(&r.stored_path)
    .bind(&r.claim_name)
    .bind(&r.device)
    .bind(r.batch_id.map(|b| b.to_string()))
    .bind(&r.sha256)
    .bind(r.channel)
    .bind(r.kind)
    .bind(&r.reason)
    .bind(r.problems.to_string())
    .fetch_one(pool)
    .await
}

pub fn export(
    pool: SqlitePool,
    f: ExportFilter,
) -> futures::stream::BoxStream<'static, sqlx::Result<ExportRow>> {
    let sql = export_sql(&f, "s.attributes");
    spawn_rows(move |tx| async move {
        let mut q = sqlx::query(&sql).bind(f.since);
        if let Some(until) = f.until {
            q = q.bind(until);
        }
        if let Some(t) = f.from {
            q = q.bind(utc_text(t));
        }
        if let Some(t) = f.to {
            q = q.bind(utc_text(t));
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

fn export_row(r: &SqliteRow) -> sqlx::Result<ExportRow> {
    let attrs: String = r.try_get(14)?;
    let observed: String = r.try_get(5)?;
    let (observed_at, problem) =
        renderable_time(parse_time(&observed).map_err(|_| observed), r.try_get(6)?);
    Ok(ExportRow {
        cursor: r.try_get(0)?,
        device: r.try_get(1)?,
        batch_id: parse_uuid(r.try_get(2)?)?,
        received_at: parse_time(r.try_get(3)?)?,
        sighting: Sighting {
            id: parse_uuid(r.try_get(4)?)?,
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
