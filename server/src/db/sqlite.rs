//! SQLite, the embedded default: one writer, WAL, multi-row inserts.

use std::str::FromStr;

use chrono::Utc;
use ctdata_batch::Sighting;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{query::Query, Acquire, Connection, Sqlite, SqliteConnection, SqlitePool};

use super::dialect::{utc_text, DbUuid};
use super::{
    duplicate_ids_rejection, parse_uuid, BatchRecord, LoadResult, NewBatch, RowSource, RowStream,
    FIND_BATCH,
};

const SIGHTING_COLUMNS: &str =
    "id, batch, device_id, observed_at, observed_offset, latitude, longitude, \
                                altitude, accuracy, observer, species, count, attributes";
const COLUMN_COUNT: usize = 13;
/// Rows per INSERT statement: 64 × 13 parameters stays far below SQLite's limit.
const ROWS_PER_INSERT: usize = 64;

/// The database file a `sqlite:` URL names.
pub fn file_of(url: &str) -> anyhow::Result<std::path::PathBuf> {
    Ok(SqliteConnectOptions::from_str(url)?
        .get_filename()
        .to_path_buf())
}

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
    let found = sqlx::query_as(FIND_BATCH)
        .bind(&b.device)
        .bind(DbUuid(b.batch_id))
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(existing) = found {
        return Ok(LoadResult::Exists(existing));
    }
    let batch_pk: i64 = sqlx::query_scalar(
        "INSERT INTO batches (device_id, batch_id, sha256, format, channel, file_name, claim_name, created_at, \
         received_at, sequence, row_count, inserted, duplicates) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0) RETURNING id",
    )
    .bind(device_pk)
    .bind(DbUuid(b.batch_id))
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
    super::tracks::store_sqlite(&mut tx, batch_pk, device_pk, &b.extras).await?;
    super::attachments::store_media_sqlite(&mut tx, batch_pk, &b.media).await?;
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
    let record: BatchRecord = sqlx::query_as(FIND_BATCH)
        .bind(&b.device)
        .bind(DbUuid(b.batch_id))
        .fetch_one(&mut *tx)
        .await?;
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
