//! One load: the one-round-trip path for small files, the COPY path in one
//! transaction, the staging path when some sighting id is stored already, and retries
//! after a deadlock.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use ctdata_batch::{ReadSummary, Rejection, Sighting};
use sqlx::postgres::PgPool;
use sqlx::PgConnection;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::copy::{classify, copy_rows, Copied};
use super::{Ids, ALLOCATED, LOAD_KEY_BASE, SIGHTING_COLUMNS};
use crate::db::dialect::DbUuid;
use crate::db::{
    duplicate_ids_rejection, BatchRecord, LoadResult, NewBatch, RowSource, RowStream, FIND_BATCH,
};

/// Deadlock retries for one load.
const MAX_RETRIES: usize = 5;

pub async fn load_batch(
    pool: &PgPool,
    b: &NewBatch,
    rows: RowSource<'_>,
) -> anyhow::Result<LoadResult> {
    let mut via_staging = false;
    // Two loads sharing sighting ids can deadlock; PostgreSQL cancels one, which waits
    // a little (jittered, so the two do not meet again) and tries again.
    let mut retries = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(200))
        .with_max_times(MAX_RETRIES)
        .with_jitter()
        .build();
    // The one-round-trip function stores sightings only.
    let small = b.extras.is_empty() && b.media.is_empty();
    loop {
        let outcome = if via_staging {
            load_once(pool, b, rows(), true).await
        } else if !small {
            load_once(pool, b, rows(), false).await
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
            Err(e) if is_transient(&e) => {
                let Some(delay) = retries.next() else {
                    return Err(e);
                };
                tracing::debug!(?delay, "load retried: {e}");
                tokio::time::sleep(delay).await;
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
            // Sighting ids are kept unique in `sighting_ids` (migration 0018).
            if matches!(d.table(), Some("sightings" | "sighting_ids")) {
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
    let found = sqlx::query_as(FIND_BATCH)
        .bind(&b.device)
        .bind(DbUuid(b.batch_id))
        .fetch_optional(pool)
        .await?;
    match found {
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
    crate::db::tracks::store_pg(&mut tx, ids.batch, ids.device, &b.extras).await?;
    crate::db::attachments::store_media_pg(&mut tx, ids.batch, &b.media).await?;
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
        let found = sqlx::query_as(FIND_BATCH)
            .bind(&b.device)
            .bind(DbUuid(b.batch_id))
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(existing) = found {
            return Ok(Started::Exists(existing));
        }
        sqlx::query("INSERT INTO devices (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(&b.device)
            .execute(&mut *conn)
            .await?;
    }
    anyhow::bail!("device {:?} could not be added", b.device)
}

/// A concurrent load stored one of the ids this one was about to add.
#[derive(Debug, thiserror::Error)]
#[error("a concurrent load stored a sighting id of this batch first")]
struct ConcurrentIds;

/// Deadlocks, serialization failures and ids a concurrent load stored first: running
/// the same load again will work.
fn is_transient(e: &anyhow::Error) -> bool {
    if e.is::<ConcurrentIds>() {
        return true;
    }
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| match e {
            sqlx::Error::Database(d) => d.code(),
            _ => None,
        })
        .is_some_and(|code| code == "40P01" || code == "40001")
}

enum Staged {
    Done(ctdata_batch::ReadSummary, i64),
    Rejected(ctdata_batch::Rejection),
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
    // `sightings` is partitioned and has no unique index on id to conflict on: the ids
    // stored already are looked up in `sighting_ids`. A concurrent load that stores one
    // of these ids after this statement's snapshot makes it fail with a unique
    // violation once that load commits; the whole load then runs again and skips it.
    let inserted = match sqlx::query(&format!(
        "INSERT INTO sightings ({SIGHTING_COLUMNS}) SELECT {SIGHTING_COLUMNS} FROM staging st \
         WHERE NOT EXISTS (SELECT 1 FROM sighting_ids k WHERE k.id = st.id) ORDER BY ord"
    ))
    .execute(&mut *conn)
    .await
    {
        Ok(done) => done.rows_affected(),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            return Err(ConcurrentIds.into())
        }
        Err(e) => return Err(e.into()),
    };
    // After the insert: a concurrent load's rows that made this one skip an id are
    // committed by now, so each skipped id is compared against what was kept.
    crate::db::conflicts::record_pg(conn, ids.batch).await?;
    Ok(Staged::Done(summary, inserted as i64))
}
