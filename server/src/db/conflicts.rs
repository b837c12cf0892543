//! Sighting ids a batch skipped because they were stored already, and the conflicts
//! among them: the same id with other content. Recorded inside the load's transaction,
//! from its staging table, after the insert that skipped them; read back for receipts,
//! the batch API and the dashboard.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::dialect::{api_time, DbUuid};
use super::Db;

/// Skipped ids kept per batch; the batch's `duplicates` counts them all.
pub const SKIPPED_LISTED: i64 = 100;

/// Content fields compared, as named to the administrator, with their columns. The
/// time is compared as an instant: the offset a device wrote is presentation.
const FIELDS: [(&str, &[&str]); 6] = [
    ("observed_at", &["observed_at"]),
    (
        "location",
        &["latitude", "longitude", "altitude", "accuracy"],
    ),
    ("observer", &["observer"]),
    ("species", &["species"]),
    ("count", &["count"]),
    ("attributes", &["attributes"]),
];

/// SQL naming the fields in which staged row `st` and stored row `s` differ, comma
/// separated ('' when none). `ne` is the backend's NULL-safe "differs" operator;
/// `attributes` its test for the attributes.
fn differs(ne: &str, attributes: &str) -> String {
    let cases: Vec<String> = FIELDS
        .iter()
        .map(|(name, cols)| {
            let test = if *name == "attributes" {
                attributes.to_string()
            } else {
                let t: Vec<String> = cols.iter().map(|c| format!("s.{c} {ne} st.{c}")).collect();
                t.join(" OR ")
            };
            format!("CASE WHEN {test} THEN ',{name}' ELSE '' END")
        })
        .collect();
    format!("substr({}, 2)", cases.join(" || "))
}

const CONTENT: &str = "observed_at, observed_offset, latitude, longitude, altitude, accuracy, \
                       observer, species, count, attributes";

/// Staged rows whose id a stored sighting of another batch holds: after the insert,
/// exactly the rows it skipped.
const SKIPPED_FROM: &str = "FROM staging st JOIN sightings s ON s.id = st.id WHERE s.batch <> $1";

/// Records batch `$1`'s conflicts.
fn conflicts_sql(differs: &str) -> String {
    let st: Vec<String> = CONTENT.split(", ").map(|c| format!("st.{c}")).collect();
    format!(
        "INSERT INTO sighting_conflicts (sighting_id, stored_batch, new_batch, fields, {CONTENT}) \
         SELECT id, stored_batch, $1, fields, {CONTENT} FROM (SELECT st.id, s.batch AS stored_batch, \
         {differs} AS fields, {} {SKIPPED_FROM}) d WHERE fields <> '' ORDER BY stored_batch",
        st.join(", ")
    )
}

/// Records the first ids batch `$1` skipped.
fn skipped_sql() -> String {
    format!(
        "INSERT INTO skipped_sightings (batch, ord, sighting_id) SELECT $1, st.ord, st.id \
         {SKIPPED_FROM} ORDER BY st.ord LIMIT {SKIPPED_LISTED}"
    )
}

/// PostgreSQL: `jsonb` compares by meaning already.
pub async fn record_pg(conn: &mut sqlx::PgConnection, batch: i64) -> sqlx::Result<u64> {
    let differs = differs(
        "IS DISTINCT FROM",
        "s.attributes IS DISTINCT FROM st.attributes",
    );
    let n = sqlx::query(&conflicts_sql(&differs))
        .bind(batch)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query(&skipped_sql())
        .bind(batch)
        .execute(conn)
        .await?;
    Ok(n)
}

/// SQLite keeps attributes as JSON text, whose key order a device may change: text
/// that differs is compared again as a sorted list of every path, type and value.
pub async fn record_sqlite(conn: &mut sqlx::SqliteConnection, batch: i64) -> sqlx::Result<u64> {
    let canon = |t: &str| {
        format!(
            "(SELECT group_concat(k, char(31)) FROM (SELECT fullkey || ':' || type || ':' || \
             coalesce(quote(atom), '') AS k FROM json_tree({t}.attributes) ORDER BY fullkey))"
        )
    };
    let attributes = format!(
        "s.attributes <> st.attributes AND {} IS NOT {}",
        canon("s"),
        canon("st")
    );
    let n = sqlx::query(&conflicts_sql(&differs("IS NOT", &attributes)))
        .bind(batch)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query(&skipped_sql())
        .bind(batch)
        .execute(conn)
        .await?;
    Ok(n)
}

/// Part of the receipt, which the field client reads too.
pub use ctdata_api::{Skipped, SkippedId};

/// One version of a conflicting sighting, and the batch it came in.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SightingVersion {
    pub batch: i64,
    pub batch_id: String,
    pub device: String,
    #[serde(with = "api_time")]
    pub received_at: DateTime<Utc>,
    #[serde(with = "api_time")]
    pub observed_at: DateTime<Utc>,
    pub latitude: f64,
    pub longitude: f64,
    pub altitude: Option<f64>,
    pub accuracy: Option<f64>,
    pub observer: Option<String>,
    pub species: Option<String>,
    pub count: Option<i64>,
    pub attributes: String,
}

/// A sighting id that came again with other content: the stored version stays.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConflictInfo {
    pub id: i64,
    pub sighting_id: String,
    #[serde(with = "api_time")]
    pub detected_at: DateTime<Utc>,
    pub differs: Vec<String>,
    pub stored: SightingVersion,
    pub new: SightingVersion,
}

#[derive(sqlx::FromRow)]
struct Counts {
    total: i64,
    conflicts: i64,
}

#[derive(sqlx::FromRow)]
struct SkippedRow {
    #[sqlx(try_from = "DbUuid")]
    id: Uuid,
    fields: Option<String>,
}

/// A conflict's own columns, before its two versions are read.
#[derive(sqlx::FromRow)]
struct Head {
    id: i64,
    sighting_id: String,
    detected_at: DateTime<Utc>,
    fields: String,
}

impl Db {
    /// The sightings batch `batch` (its row id) skipped; `None` when it skipped none.
    #[tracing::instrument(skip_all, err)]
    pub async fn skipped(&self, batch: i64) -> sqlx::Result<Option<Skipped>> {
        const COUNTS: &str = "SELECT b.duplicates AS total, (SELECT count(*) FROM sighting_conflicts c \
                              WHERE c.new_batch = b.id) AS conflicts FROM batches b WHERE b.id = $1";
        let counts: Option<Counts> =
            on_pool!(self, p => sqlx::query_as(COUNTS).bind(batch).fetch_optional(p).await)?;
        let Some(Counts { total, conflicts }) = counts.filter(|c| c.total > 0) else {
            return Ok(None);
        };
        const IDS: &str = "SELECT k.sighting_id AS id, c.fields FROM skipped_sightings k \
                           LEFT JOIN sighting_conflicts c ON c.new_batch = k.batch AND c.sighting_id = k.sighting_id \
                           WHERE k.batch = $1 ORDER BY k.ord";
        let rows: Vec<SkippedRow> =
            on_pool!(self, p => sqlx::query_as(IDS).bind(batch).fetch_all(p).await)?;
        let ids = rows
            .into_iter()
            .map(|r| SkippedId {
                id: r.id,
                differs: split_fields(r.fields.as_deref().unwrap_or("")),
            })
            .collect();
        Ok(Some(Skipped {
            total,
            conflicts,
            ids,
        }))
    }

    /// All conflicts recorded.
    #[tracing::instrument(skip_all, err)]
    pub async fn conflict_count(&self) -> sqlx::Result<i64> {
        const SQL: &str = "SELECT count(*) FROM sighting_conflicts";
        on_pool!(self, p => sqlx::query_scalar(SQL).fetch_one(p).await)
    }

    /// Conflicts, newest first, each with both versions; `before` pages by id.
    #[tracing::instrument(skip_all, err)]
    pub async fn list_conflicts(&self, before: i64, limit: i64) -> sqlx::Result<Vec<ConflictInfo>> {
        // One version of the sighting: `v` its row, `b` its batch, `d` its device.
        let side = |v: &str, b: &str, d: &str| {
            format!(
                "{b}.id AS batch, CAST({b}.batch_id AS TEXT) AS batch_id, {d}.name AS device, \
                 {b}.received_at, {v}.observed_at, {v}.latitude, {v}.longitude, {v}.altitude, \
                 {v}.accuracy, {v}.observer, {v}.species, {v}.count, CAST({v}.attributes AS TEXT) AS attributes"
            )
        };
        const HEADS: &str =
            "SELECT c.id, CAST(c.sighting_id AS TEXT) AS sighting_id, c.detected_at, \
             c.fields FROM sighting_conflicts c WHERE c.id < $1 ORDER BY c.id DESC LIMIT $2";
        let heads: Vec<Head> =
            on_pool!(self, p => sqlx::query_as(HEADS).bind(before).bind(limit).fetch_all(p).await)?;
        let stored_sql = format!(
            "SELECT {} FROM sighting_conflicts c JOIN sightings s ON s.id = c.sighting_id \
             JOIN batches sb ON sb.id = s.batch JOIN devices sd ON sd.id = sb.device_id WHERE c.id = $1",
            side("s", "sb", "sd")
        );
        let new_sql = format!(
            "SELECT {} FROM sighting_conflicts c JOIN batches nb ON nb.id = c.new_batch \
             JOIN devices nd ON nd.id = nb.device_id WHERE c.id = $1",
            side("c", "nb", "nd")
        );
        let mut out = Vec::with_capacity(heads.len());
        for h in heads {
            let stored: SightingVersion =
                on_pool!(self, p => sqlx::query_as(&stored_sql).bind(h.id).fetch_one(p).await)?;
            let new: SightingVersion =
                on_pool!(self, p => sqlx::query_as(&new_sql).bind(h.id).fetch_one(p).await)?;
            out.push(ConflictInfo {
                id: h.id,
                sighting_id: h.sighting_id,
                detected_at: h.detected_at,
                differs: split_fields(&h.fields),
                stored,
                new,
            });
        }
        Ok(out)
    }
}

fn split_fields(fields: &str) -> Vec<String> {
    fields
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}
