//! Track points and SMART patrol events: stored inside a batch's load transaction,
//! read back for the tracks and patrols exports.

use chrono::{DateTime, Utc};
use ctdata_batch::tracks::Extras;
use serde::Serialize;
use sqlx::{PgConnection, SqliteConnection};

use super::dialect::{DbUuid, Time};
use super::Db;

const TRACK_SQL: &str = "INSERT INTO tracks (batch, device_id, recorded_at, latitude, longitude, \
     altitude, accuracy) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (device_id, recorded_at) DO NOTHING";
const EVENT_SQL: &str = "INSERT INTO patrol_events (event_uid, patrol_id, kind, batch, device_id, \
     occurred_at, latitude, longitude, leg, attributes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     ON CONFLICT (event_uid) DO NOTHING";

/// The same statements on either engine's connection (the SQL is shared; only the
/// connection type differs).
macro_rules! store {
    ($conn:expr, $batch:expr, $device:expr, $x:expr) => {{
        for p in &$x.track {
            sqlx::query(TRACK_SQL)
                .bind($batch)
                .bind($device)
                .bind(Time(p.time.with_timezone(&Utc)))
                .bind(p.latitude)
                .bind(p.longitude)
                .bind(p.altitude)
                .bind(p.accuracy)
                .execute(&mut *$conn)
                .await?;
        }
        for e in &$x.patrol_events {
            sqlx::query(EVENT_SQL)
                .bind(DbUuid(e.id))
                .bind(&e.patrol_id)
                .bind(&e.kind)
                .bind($batch)
                .bind($device)
                .bind(Time(e.time.with_timezone(&Utc)))
                .bind(e.latitude)
                .bind(e.longitude)
                .bind(e.leg)
                .bind(sqlx::types::Json(&e.attributes))
                .execute(&mut *$conn)
                .await?;
        }
        Ok(())
    }};
}

pub(super) async fn store_pg(
    conn: &mut PgConnection,
    batch: i64,
    device: i64,
    x: &Extras,
) -> sqlx::Result<()> {
    store!(conn, batch, device, x)
}

pub(super) async fn store_sqlite(
    conn: &mut SqliteConnection,
    batch: i64,
    device: i64,
    x: &Extras,
) -> sqlx::Result<()> {
    store!(conn, batch, device, x)
}

/// One stored track point.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TrackRow {
    pub device: String,
    pub recorded_at: DateTime<Utc>,
    pub latitude: f64,
    pub longitude: f64,
    pub altitude: Option<f64>,
    pub accuracy: Option<f64>,
}

/// One stored patrol event.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PatrolRow {
    pub patrol_id: String,
    pub device: String,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub latitude: f64,
    pub longitude: f64,
}

impl Db {
    /// Track points by device and time, of one device or all.
    #[tracing::instrument(skip_all, err)]
    pub async fn track_points(&self, device: Option<&str>) -> sqlx::Result<Vec<TrackRow>> {
        const SQL: &str = "SELECT d.name AS device, t.recorded_at, t.latitude, t.longitude, \
             t.altitude, t.accuracy FROM tracks t JOIN devices d ON d.id = t.device_id \
             WHERE ($1 IS NULL OR d.name = $1) ORDER BY d.name, t.recorded_at";
        on_pool!(self, p => sqlx::query_as(SQL).bind(device).fetch_all(p).await)
    }

    /// Patrol events by patrol and time.
    #[tracing::instrument(skip_all, err)]
    pub async fn patrol_events(&self) -> sqlx::Result<Vec<PatrolRow>> {
        const SQL: &str =
            "SELECT e.patrol_id, d.name AS device, e.kind, e.occurred_at, e.latitude, \
             e.longitude FROM patrol_events e JOIN devices d ON d.id = e.device_id \
             ORDER BY e.patrol_id, e.occurred_at, e.id";
        on_pool!(self, p => sqlx::query_as(SQL).fetch_all(p).await)
    }

    /// How many sightings each patrol has (SMART observations carry it as `event_id`).
    #[tracing::instrument(skip_all, err)]
    pub async fn observations_per_patrol(&self) -> sqlx::Result<Vec<(String, i64)>> {
        let event = match self {
            Db::Postgres(_) => "attributes->>'event_id'",
            Db::Sqlite(_) => "json_extract(attributes, '$.event_id')",
        };
        let sql = format!(
            "SELECT CAST({event} AS TEXT) AS patrol, count(*) AS n FROM sightings \
             WHERE {event} IS NOT NULL GROUP BY 1"
        );
        on_pool!(self, p => sqlx::query_as(&sql).fetch_all(p).await)
    }
}
