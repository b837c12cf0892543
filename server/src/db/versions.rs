//! Sightings that come again as a newer version (a CyberTracker webhook's edited
//! observation): the newer one replaces the stored row, which is kept whole in
//! `sighting_versions`. The replacement is a new row with a new cursor, so an
//! incremental export (`since`) hands it out again and a full export shows the latest.

use chrono::{DateTime, Utc};
use ctdata_batch::Sighting;
use serde_json::{json, Value};
use uuid::Uuid;

use super::dialect::DbUuid;
use super::Db;

/// What became of a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Superseded {
    /// It replaced the stored sighting, whose version was this (if it had one).
    Replaced(Option<String>),
    /// The stored sighting is this version or a newer one: nothing changed.
    NotNewer(String),
    /// No sighting with this id is stored.
    Missing,
    /// The stored sighting came from another device: it is left alone (a device
    /// replaces only its own sightings).
    OtherDevice,
}

/// The version a stored or incoming sighting carries: a time at `key` in `envelope`.
fn version_of(
    attributes: &serde_json::Map<String, Value>,
    envelope: &str,
    key: &str,
) -> Option<String> {
    attributes
        .get(envelope)?
        .get(key)?
        .as_str()
        .map(str::to_string)
}

fn parsed(v: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v).ok().map(|t| t.to_utc())
}

/// A stored sighting's columns as its replacement reads them: `K` (the batch here, the
/// id in a remap), then observed_at, observed_offset, latitude, longitude, altitude,
/// accuracy, observer, species, count and the attributes as JSON text.
pub(super) type StoredColumns<K> = (
    K,
    DateTime<Utc>,
    i32,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    String,
);

type StoredRow = StoredColumns<i64>;

/// The statement that registers a transaction like a load before it takes a new cursor
/// (see `pg::safe_cursor`): PostgreSQL only.
pub(super) fn register_like_a_load() -> String {
    format!(
        "SELECT pg_advisory_xact_lock_shared({} + {}) FROM sightings_cursor_seq",
        super::pg::LOAD_KEY_BASE,
        super::pg::ALLOCATED
    )
}

/// Keeps stored sighting `$id` whole in `sighting_versions` (`$content` as JSON, under
/// `$batch` and `$version`) and deletes its row; on either engine's transaction `$tx`.
macro_rules! retire_sighting {
    ($tx:expr, $id:expr, $batch:expr, $version:expr, $content:expr) => {{
        sqlx::query(
            "INSERT INTO sighting_versions (sighting_id, batch, version, content) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind($crate::db::dialect::DbUuid($id))
        .bind($batch)
        .bind($version)
        .bind(sqlx::types::Json($content))
        .execute(&mut *$tx)
        .await?;
        sqlx::query("DELETE FROM sightings WHERE id = $1")
            .bind($crate::db::dialect::DbUuid($id))
            .execute(&mut *$tx)
            .await?;
    }};
}
pub(super) use retire_sighting;

/// Stores sighting `$s` as a row of batch `$batch` (its device's), with a new cursor;
/// on either engine's transaction `$tx`.
macro_rules! insert_sighting {
    ($tx:expr, $batch:expr, $s:expr) => {{
        let s: &ctdata_batch::Sighting = $s;
        sqlx::query(
            "INSERT INTO sightings (id, batch, device_id, observed_at, observed_offset, \
             latitude, longitude, altitude, accuracy, observer, species, count, attributes) \
             SELECT $1, $2, device_id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 \
             FROM batches WHERE id = $2",
        )
        .bind($crate::db::dialect::DbUuid(s.id))
        .bind($batch)
        .bind($crate::db::dialect::Time(s.observed_at.to_utc()))
        .bind(s.observed_at.offset().local_minus_utc())
        .bind(s.latitude)
        .bind(s.longitude)
        .bind(s.altitude)
        .bind(s.accuracy)
        .bind(&s.observer)
        .bind(&s.species)
        .bind(s.count)
        .bind(sqlx::types::Json(&s.attributes))
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(super) use insert_sighting;

impl Db {
    /// Replaces sighting `s.id` by `s` when `s`'s version (`attributes[envelope][key]`,
    /// an RFC 3339 time) is newer than the stored one's, in one transaction; `batch` is
    /// the batch that brought `s`. The conflict the load recorded for this arrival is
    /// resolved by it and removed. `files`: the (name, sha256) of each file `s` brought
    /// itself (hashed from its bytes), which replace the earlier version's of that name;
    /// the earlier version's other files follow the sighting.
    #[tracing::instrument(skip_all, err, fields(id = %s.id))]
    pub async fn supersede(
        &self,
        s: &Sighting,
        files: &[(String, String)],
        envelope: &str,
        key: &str,
        batch: i64,
    ) -> anyhow::Result<Superseded> {
        let Some(new_version) = version_of(&s.attributes, envelope, key) else {
            anyhow::bail!("the new version of {} has no {envelope}.{key}", s.id);
        };
        let new_time = parsed(&new_version);
        let select = format!(
            "SELECT batch, observed_at, observed_offset, latitude, longitude, altitude, accuracy, \
             observer, species, count, {} AS attributes FROM sightings WHERE id = $1",
            self.json_text("attributes")
        );
        // Whose it is; on PostgreSQL the row is locked too: two edits of one sighting at
        // once, the second waits for the first and then sees its version (SQLite writes
        // one transaction at a time anyway).
        let owner = format!(
            "SELECT (SELECT device_id FROM batches WHERE id = s.batch) = \
             (SELECT device_id FROM batches WHERE id = $2) FROM sightings s WHERE s.id = $1{}",
            if matches!(self, Db::Postgres(_)) {
                " FOR UPDATE"
            } else {
                ""
            }
        );
        let register = register_like_a_load();
        let postgres = matches!(self, Db::Postgres(_));
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            if postgres {
                // Registers like a load, before the new cursor is taken (see pg::safe_cursor).
                sqlx::query(&register).execute(&mut *tx).await?;
            }
            let same_device: Option<Option<bool>> = sqlx::query_scalar(&owner)
                .bind(DbUuid(s.id))
                .bind(batch)
                .fetch_optional(&mut *tx)
                .await?;
            match same_device {
                None => return Ok(Superseded::Missing),
                Some(Some(true)) => {}
                Some(_) => return Ok(Superseded::OtherDevice),
            }
            let row: Option<StoredRow> = sqlx::query_as(&select)
                .bind(DbUuid(s.id))
                .fetch_optional(&mut *tx)
                .await?;
            let Some(old) = row else {
                return Ok(Superseded::Missing);
            };
            let old_attributes: serde_json::Map<String, Value> = serde_json::from_str(&old.10)?;
            let old_version = version_of(&old_attributes, envelope, key);
            let newer = match (old_version.as_deref().and_then(parsed), new_time) {
                (Some(old), Some(new)) => new > old,
                (None, Some(_)) => true,
                _ => false,
            };
            if !newer {
                return Ok(Superseded::NotNewer(old_version.unwrap_or_default()));
            }
            let content = stored_json(s.id, &old, old_attributes);
            retire_sighting!(tx, s.id, old.0, &old_version, &content);
            insert_sighting!(tx, batch, s);
            // The sighting now lives in `batch`, where its files must be linked too:
            // the new version's own (put in the store when its batch was read, but not
            // linked then, the sighting being stored already), then the earlier
            // version's under names the new one does not use.
            let id = s.id.to_string();
            for (name, sha256) in files {
                sqlx::query(LINK_OWN_MEDIA).bind(batch).bind(&id).bind(name).bind(sha256)
                    .execute(&mut *tx).await?;
            }
            // A name the edit sent is its own even when the store did not take the file
            // (over storage.max_attachment_bytes): the earlier file is not shown as it.
            let earlier: Vec<(String, String)> = sqlx::query_as(EARLIER_MEDIA)
                .bind(old.0).bind(&id).fetch_all(&mut *tx).await?;
            for (name, sha256) in earlier.iter().filter(|(n, _)| !files.iter().any(|(f, _)| f == n)) {
                sqlx::query(CARRY_MEDIA).bind(batch).bind(&id).bind(name).bind(sha256)
                    .execute(&mut *tx).await?;
            }
            sqlx::query("DELETE FROM sighting_conflicts WHERE sighting_id = $1 AND new_batch = $2")
                .bind(DbUuid(s.id))
                .bind(batch)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Superseded::Replaced(old_version))
        })
    }

    /// How many earlier versions of a sighting are kept.
    #[tracing::instrument(skip_all, err)]
    pub async fn sighting_versions(&self, id: Uuid) -> sqlx::Result<i64> {
        on_pool!(self, p => sqlx::query_scalar(
            "SELECT count(*) FROM sighting_versions WHERE sighting_id = $1")
            .bind(DbUuid(id)).fetch_one(p).await)
    }
}

/// A file the new version of a sighting lists, if it is in the store: linked under its
/// name, in place of an earlier version's file of that name.
const LINK_OWN_MEDIA: &str = "INSERT INTO attachment_links (batch, sighting_id, name, sha256) \
     SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM attachments WHERE sha256 = $4) \
     ON CONFLICT (batch, sighting_id, name) DO UPDATE SET sha256 = excluded.sha256";
/// The earlier version's files, linked in its batch (`$1`) to the sighting (`$2`).
const EARLIER_MEDIA: &str =
    "SELECT name, sha256 FROM attachment_links WHERE batch = $1 AND sighting_id = $2";
/// One of them, following the sighting to `$1`.
const CARRY_MEDIA: &str = "INSERT INTO attachment_links (batch, sighting_id, name, sha256) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (batch, sighting_id, name) DO NOTHING";

fn stored_json(id: Uuid, r: &StoredRow, attributes: serde_json::Map<String, Value>) -> Value {
    json!({
        "id": id, "batch": r.0, "observed_at": r.1, "observed_offset": r.2, "latitude": r.3,
        "longitude": r.4, "altitude": r.5, "accuracy": r.6, "observer": r.7, "species": r.8,
        "count": r.9, "attributes": attributes,
    })
}
