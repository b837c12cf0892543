//! The local copy of the consolidated sightings (`pull --into local.db`): an SQLite
//! database with the server's sightings columns, kept current by cursor. Each pull is
//! one transaction holding its rows and the new cursor, so the copy is never half
//! updated, and rows are keyed by sighting id, so pulling a range twice changes nothing.

use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sightings (
    id           TEXT PRIMARY KEY,
    cursor       INTEGER NOT NULL,
    device       TEXT NOT NULL,
    batch_id     TEXT NOT NULL,
    observed_at  TEXT,
    problem      TEXT,
    latitude     REAL NOT NULL,
    longitude    REAL NOT NULL,
    altitude     REAL,
    accuracy     REAL,
    observer     TEXT,
    species      TEXT,
    count        INTEGER,
    attributes   TEXT NOT NULL DEFAULT '{}',
    received_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sightings_cursor ON sightings (cursor);
CREATE INDEX IF NOT EXISTS sightings_observed_at ON sightings (observed_at);
CREATE INDEX IF NOT EXISTS sightings_device ON sightings (device, cursor);
CREATE INDEX IF NOT EXISTS sightings_species ON sightings (species, cursor);
CREATE TABLE IF NOT EXISTS pull_cursor (
    server     TEXT PRIMARY KEY,
    cursor     INTEGER NOT NULL,
    pulled_at  TEXT NOT NULL
);
";

const UPSERT: &str = "INSERT INTO sightings (id, cursor, device, batch_id, observed_at, problem,
    latitude, longitude, altitude, accuracy, observer, species, count, attributes, received_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET cursor = excluded.cursor, device = excluded.device,
    batch_id = excluded.batch_id, observed_at = excluded.observed_at,
    problem = excluded.problem, latitude = excluded.latitude, longitude = excluded.longitude,
    altitude = excluded.altitude, accuracy = excluded.accuracy, observer = excluded.observer,
    species = excluded.species, count = excluded.count, attributes = excluded.attributes,
    received_at = excluded.received_at";

pub struct LocalDb {
    conn: SqliteConnection,
    path: String,
}

impl LocalDb {
    /// Opens (creating when missing) the database at `path` and its tables.
    pub async fn open(path: &Path) -> anyhow::Result<LocalDb> {
        let shown = path.display().to_string();
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .with_context(|| format!("cannot open the local database {shown}"))?;
        sqlx::raw_sql(SCHEMA)
            .execute(&mut conn)
            .await
            .with_context(|| {
                format!("{shown} is not a CTData local copy (its tables do not fit)")
            })?;
        Ok(LocalDb { conn, path: shown })
    }

    /// Where the last pull from `server` ended.
    pub async fn cursor(&mut self, server: &str) -> anyhow::Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT cursor FROM pull_cursor WHERE server = ?")
                .bind(server)
                .fetch_optional(&mut self.conn)
                .await?,
        )
    }

    /// Loads an NDJSON export body and moves the cursor to `next`, in one transaction;
    /// returns how many rows the body held.
    pub async fn load(
        &mut self,
        response: reqwest::Response,
        server: &str,
        next: i64,
        progress: &indicatif::ProgressBar,
    ) -> anyhow::Result<u64> {
        let mut tx = self.conn.begin().await?;
        let mut body = response.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        let mut rows = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the download broke off; the local copy is unchanged")?;
            pending.extend_from_slice(&chunk);
            progress.inc(chunk.len() as u64);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                rows += 1;
                upsert(&mut tx, &line, rows).await?;
            }
            progress.set_message(format!("{rows} sightings"));
        }
        if pending.iter().any(|b| !b.is_ascii_whitespace()) {
            bail!("the download ended in the middle of a row; the local copy is unchanged");
        }
        sqlx::query(
            "INSERT INTO pull_cursor (server, cursor, pulled_at) VALUES (?, ?, ?)
             ON CONFLICT (server) DO UPDATE SET cursor = excluded.cursor,
             pulled_at = excluded.pulled_at",
        )
        .bind(server)
        .bind(next)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&mut *tx)
        .await?;
        tx.commit()
            .await
            .with_context(|| format!("cannot write the local database {}", self.path))?;
        Ok(rows)
    }
}

async fn upsert(conn: &mut SqliteConnection, line: &[u8], n: u64) -> anyhow::Result<()> {
    let row: Value = serde_json::from_slice(line)
        .with_context(|| format!("row {n} of the download is not JSON"))?;
    let text = |k: &str| row.get(k).and_then(Value::as_str).map(str::to_string);
    let num = |k: &str| row.get(k).and_then(Value::as_f64);
    let need = |k: &str| text(k).with_context(|| format!("row {n} of the download has no {k}"));
    let attributes = row
        .get("attributes")
        .map_or_else(|| "{}".to_string(), Value::to_string);
    sqlx::query(UPSERT)
        .bind(need("id")?)
        .bind(row.get("cursor").and_then(Value::as_i64).unwrap_or(0))
        .bind(need("device")?)
        .bind(need("batch_id")?)
        .bind(text("observed_at"))
        .bind(text("problem"))
        .bind(num("latitude").with_context(|| format!("row {n} has no latitude"))?)
        .bind(num("longitude").with_context(|| format!("row {n} has no longitude"))?)
        .bind(num("altitude"))
        .bind(num("accuracy"))
        .bind(text("observer"))
        .bind(text("species"))
        .bind(row.get("count").and_then(Value::as_i64))
        .bind(attributes)
        .bind(need("received_at")?)
        .execute(conn)
        .await?;
    Ok(())
}
