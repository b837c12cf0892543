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

/// One stored patrol event, with the number of sightings its patrol has.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PatrolRow {
    pub patrol_id: String,
    pub device: String,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub latitude: f64,
    pub longitude: f64,
    /// Sightings whose `event_id` is this patrol (SMART observations carry it).
    pub observations: i64,
}

impl Db {
    /// Track points by device and time, of one device or all, streamed: memory stays
    /// bounded however many points there are.
    pub fn track_points(
        &self,
        device: Option<String>,
    ) -> futures::stream::BoxStream<'static, sqlx::Result<TrackRow>> {
        const SQL: &str = "SELECT d.name AS device, t.recorded_at, t.latitude, t.longitude, \
             t.altitude, t.accuracy FROM tracks t JOIN devices d ON d.id = t.device_id \
             WHERE ($1 IS NULL OR d.name = $1) ORDER BY d.name, t.recorded_at";
        let db = self.clone();
        super::export::spawn_rows(move |tx| async move {
            match &db {
                Db::Postgres(p) => {
                    let Some((mut conn, pid)) = super::export::cancellable(p, &tx).await else {
                        return;
                    };
                    let rows = sqlx::query_as::<_, TrackRow>(SQL)
                        .bind(device)
                        .fetch(&mut *conn);
                    if !super::export::forward(rows, tx).await {
                        super::export::cancel(p, conn, pid).await;
                    }
                }
                Db::Sqlite(p) => {
                    let rows = sqlx::query_as::<_, TrackRow>(SQL).bind(device).fetch(p);
                    super::export::forward(rows, tx).await;
                }
            }
        })
    }

    /// Metres along `device`'s track from `from` to `to` (open: to its last point),
    /// reading the points as a stream.
    #[tracing::instrument(skip_all, err)]
    pub async fn track_length(
        &self,
        device: &str,
        from: DateTime<Utc>,
        to: Option<DateTime<Utc>>,
    ) -> sqlx::Result<f64> {
        use futures::TryStreamExt;
        const SQL: &str = "SELECT t.latitude, t.longitude FROM tracks t \
             JOIN devices d ON d.id = t.device_id WHERE d.name = $1 AND t.recorded_at >= $2 \
             AND ($3 IS NULL OR t.recorded_at <= $3) ORDER BY t.recorded_at";
        on_pool!(self, p => {
            let mut rows = sqlx::query_as::<_, (f64, f64)>(SQL)
                .bind(device)
                .bind(Time(from))
                .bind(to.map(Time))
                .fetch(p);
            let mut length = crate::tracks::PathLength::default();
            while let Some(point) = rows.try_next().await? {
                length.add(point);
            }
            Ok(length.metres())
        })
    }

    /// The events of at most `limit` patrols whose id sorts after `after`, by patrol
    /// and time, each with its patrol's observation count. Read page by page, so no
    /// connection is held while the caller works on a page.
    #[tracing::instrument(skip_all, err)]
    pub async fn patrol_events(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> sqlx::Result<Vec<PatrolRow>> {
        let event = match self {
            Db::Postgres(_) => "attributes->>'event_id'",
            Db::Sqlite(_) => "json_extract(attributes, '$.event_id')",
        };
        let sql = format!(
            "WITH page AS (SELECT DISTINCT patrol_id FROM patrol_events \
             WHERE ($1 IS NULL OR patrol_id > $1) ORDER BY patrol_id LIMIT $2), \
             counts AS (SELECT CAST({event} AS TEXT) AS patrol, count(*) AS n FROM sightings \
             WHERE CAST({event} AS TEXT) IN (SELECT patrol_id FROM page) GROUP BY 1) \
             SELECT e.patrol_id, d.name AS device, e.kind, e.occurred_at, e.latitude, \
             e.longitude, COALESCE(c.n, 0) AS observations FROM patrol_events e \
             JOIN page ON page.patrol_id = e.patrol_id JOIN devices d ON d.id = e.device_id \
             LEFT JOIN counts c ON c.patrol = e.patrol_id ORDER BY e.patrol_id, e.occurred_at, e.id"
        );
        on_pool!(self, p => sqlx::query_as(&sql).bind(after).bind(limit).fetch_all(p).await)
    }
}
