//! Mapping stored OpenRosa submissions again (`ctdata-server openrosa remap`): the
//! current submissions of a form, and the replacement of a submission's sightings by
//! the ones its kept XML maps to now. A sighting that changes is replaced by a new row
//! (a new cursor, so an incremental export hands it out again) and its stored row is
//! kept whole in `sighting_versions`, as a CyberTracker edit is.

use chrono::FixedOffset;
use ctdata_batch::Sighting;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::attachments::SubmissionRow;
use super::dialect::DbUuid;
use super::versions::{insert_sighting, register_like_a_load, retire_sighting, StoredColumns};
use super::Db;

/// What a remap did to one submission's sightings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remapped {
    /// Replaced by a new version (the old row kept in `sighting_versions`).
    pub changed: usize,
    /// Mapped to exactly what is stored.
    pub unchanged: usize,
    /// Newly mapped (e.g. a repeat group now mapped to several sightings).
    pub added: usize,
    /// Stored but no longer mapped: kept in `sighting_versions`, removed from the export.
    pub removed: usize,
}

type Row = StoredColumns<DbUuid>;

/// The version label a remap writes into `sighting_versions.version`.
pub const REMAP_VERSION: &str = "openrosa remap";

fn stored(r: &Row) -> anyhow::Result<Sighting> {
    let offset = FixedOffset::east_opt(r.2)
        .ok_or_else(|| anyhow::anyhow!("stored sighting {} has offset {}", r.0 .0, r.2))?;
    let attributes: Map<String, Value> = serde_json::from_str(&r.10)?;
    Ok(Sighting {
        id: r.0 .0,
        observed_at: r.1.with_timezone(&offset),
        latitude: r.3,
        longitude: r.4,
        altitude: r.5,
        accuracy: r.6,
        observer: r.7.clone(),
        species: r.8.clone(),
        count: r.9,
        attributes,
    })
}

/// Same content, as stored: the instant and the offset, every field, the attributes.
fn same(a: &Sighting, b: &Sighting) -> bool {
    a.observed_at == b.observed_at && a.observed_at.offset() == b.observed_at.offset() && a == b
}

impl Db {
    /// The OpenRosa submissions that are current (not replaced by an edit), of form
    /// `form` or of every form, oldest first.
    #[tracing::instrument(skip_all, err)]
    pub async fn current_openrosa_submissions(
        &self,
        form: Option<&str>,
    ) -> sqlx::Result<Vec<SubmissionRow>> {
        const SQL: &str = "SELECT instance_id, device, form_id, xml_sha256, batch, superseded_by, \
             received_at FROM openrosa_submissions WHERE superseded_by IS NULL \
             AND (CAST($1 AS TEXT) IS NULL OR form_id = $1) ORDER BY received_at, instance_id";
        on_pool!(self, p => sqlx::query_as(SQL).bind(form).fetch_all(p).await)
    }

    /// Makes batch `batch`'s sightings `mapped`, in one transaction: an identical one
    /// stays as it is, a changed one is replaced by a new row with its old row kept in
    /// `sighting_versions`, a new one is added and one no longer mapped is kept there
    /// and removed. With `write` false it only counts. Running it twice with the same
    /// `mapped` changes nothing the second time.
    /// `instance_id` must still be current when the transaction runs (an edit that
    /// arrived meanwhile wins: the remap of it fails and changes nothing).
    #[tracing::instrument(skip_all, err, fields(batch))]
    pub async fn remap_batch(
        &self,
        instance_id: &str,
        batch: i64,
        mapped: &[Sighting],
        write: bool,
    ) -> anyhow::Result<Remapped> {
        let select = format!(
            "SELECT id, observed_at, observed_offset, latitude, longitude, altitude, accuracy, \
             observer, species, count, {} AS attributes FROM sightings WHERE batch = $1 \
             ORDER BY cursor",
            self.json_text("attributes")
        );
        let register = register_like_a_load();
        let postgres = matches!(self, Db::Postgres(_));
        let current = format!(
            "SELECT superseded_by FROM openrosa_submissions WHERE instance_id = $1 AND batch = $2{}",
            if postgres { " FOR UPDATE" } else { "" }
        );
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            if postgres && write {
                // Registers like a load, before a new cursor is taken (see pg::safe_cursor).
                sqlx::query(&register).execute(&mut *tx).await?;
            }
            let state: Option<Option<String>> = sqlx::query_scalar(&current)
                .bind(instance_id).bind(batch).fetch_optional(&mut *tx).await?;
            match state {
                None => anyhow::bail!("submission {instance_id} is no longer stored"),
                Some(Some(by)) => anyhow::bail!(
                    "submission {instance_id} was replaced by the edit {by} during the remap"
                ),
                Some(None) => {}
            }
            let rows: Vec<Row> = sqlx::query_as(&select).bind(batch).fetch_all(&mut *tx).await?;
            let old: Vec<Sighting> = rows.iter().map(stored).collect::<anyhow::Result<_>>()?;
            let mut done = Remapped::default();
            let mut retire: Vec<&Sighting> = Vec::new();
            let mut insert: Vec<&Sighting> = Vec::new();
            for s in mapped {
                match old.iter().find(|o| o.id == s.id) {
                    Some(o) if same(o, s) => done.unchanged += 1,
                    Some(o) => {
                        done.changed += 1;
                        retire.push(o);
                        insert.push(s);
                    }
                    None => {
                        done.added += 1;
                        insert.push(s);
                    }
                }
            }
            let wanted: Vec<Uuid> = mapped.iter().map(|s| s.id).collect();
            for o in old.iter().filter(|o| !wanted.contains(&o.id)) {
                done.removed += 1;
                retire.push(o);
            }
            if !write || (retire.is_empty() && insert.is_empty()) {
                return Ok(done);
            }
            for o in &retire {
                let mut content = serde_json::to_value(o)?;
                content["batch"] = Value::from(batch);
                retire_sighting!(tx, o.id, batch, REMAP_VERSION, &content);
            }
            for s in &insert {
                insert_sighting!(tx, batch, *s);
            }
            tx.commit().await?;
            Ok(done)
        })
    }
}
