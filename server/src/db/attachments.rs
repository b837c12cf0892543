//! Attachments (the `attachments` row of a stored file and the links from batches and
//! sightings to it) and OpenRosa submissions (one row per instanceID, and the edits that
//! replace one).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Db;

/// A stored file as a batch (or one of its sightings) names it.
#[derive(Debug, Clone)]
pub struct NewLink<'a> {
    /// `None` links the file to the whole batch.
    pub sighting_id: Option<uuid::Uuid>,
    pub name: &'a str,
    pub sha256: &'a str,
}

/// What the database knows of a stored file.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttachmentInfo {
    pub sha256: String,
    pub size: i64,
    pub content_type: String,
}

/// A file linked to a sighting (directly or through its batch), for exports and pages.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LinkedAttachment {
    #[serde(skip)]
    pub sighting_id: String,
    pub name: String,
    pub sha256: String,
    pub size: i64,
    pub content_type: String,
}

/// The name an OpenRosa submission's own XML is linked under in its batch.
pub const OPENROSA_XML: &str = "xml_submission_file";

/// A file of the sighting at `cursor`, for a dashboard table.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CursorFile {
    pub cursor: i64,
    pub name: String,
    pub sha256: String,
    pub content_type: String,
}

impl CursorFile {
    /// Whether the browser may show it as a thumbnail.
    pub fn is_image(&self) -> bool {
        self.content_type.starts_with("image/") && self.content_type != "image/svg+xml"
    }
}

/// A stored OpenRosa submission.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SubmissionRow {
    pub instance_id: String,
    pub device: String,
    pub form_id: String,
    pub xml_sha256: String,
    pub batch: i64,
    pub superseded_by: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// A new OpenRosa submission, recorded once its batch is stored.
#[derive(Debug, Clone)]
pub struct NewSubmission<'a> {
    pub instance_id: &'a str,
    pub device: &'a str,
    pub form_id: &'a str,
    pub form_version: Option<&'a str>,
    pub xml_sha256: &'a str,
    pub batch: i64,
    pub deprecated_id: Option<&'a str>,
}

impl Db {
    /// Records a file that is in the store; recording it again changes nothing.
    #[tracing::instrument(skip_all, err)]
    pub async fn record_attachment(
        &self,
        sha256: &str,
        size: u64,
        content_type: &str,
    ) -> sqlx::Result<()> {
        const SQL: &str =
            "INSERT INTO attachments (sha256, size, content_type) VALUES ($1, $2, $3) \
             ON CONFLICT (sha256) DO NOTHING";
        on_pool!(self, p => sqlx::query(SQL)
            .bind(sha256).bind(size as i64).bind(content_type).execute(p).await.map(drop))
    }

    /// Links recorded files to batch `batch` (its `pk`) in one transaction. A name that
    /// is linked already keeps its first file, so linking again changes nothing; except
    /// that a file carried over from `carried_from` (the batch of the submission an edit
    /// replaces, see [`Db::record_openrosa_submission`]) gives way to the edit's own
    /// file of that name, which may come in a later POST than the carrying one.
    #[tracing::instrument(skip_all, err)]
    pub async fn link_attachments(
        &self,
        batch: i64,
        links: &[NewLink<'_>],
        carried_from: Option<i64>,
    ) -> sqlx::Result<()> {
        const SQL: &str = "INSERT INTO attachment_links (batch, sighting_id, name, sha256) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (batch, sighting_id, name) DO NOTHING";
        // The link is the carried one when the replaced batch has that very file under
        // that name; the edit's own file of that name then takes its place.
        const RETAKEN: &str = "UPDATE attachment_links SET sha256 = $4 \
             WHERE batch = $1 AND sighting_id = $2 AND name = $3 AND sha256 <> $4 \
             AND EXISTS (SELECT 1 FROM attachment_links o WHERE o.batch = $5 \
               AND o.sighting_id = $2 AND o.name = $3 AND o.sha256 = attachment_links.sha256)";
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for l in links {
                let sighting = l.sighting_id.map(|s| s.to_string()).unwrap_or_default();
                if let Some(old) = carried_from.filter(|old| *old != batch) {
                    sqlx::query(RETAKEN).bind(batch).bind(&sighting).bind(l.name).bind(l.sha256)
                        .bind(old).execute(&mut *tx).await?;
                }
                sqlx::query(SQL).bind(batch).bind(sighting).bind(l.name).bind(l.sha256)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn attachment(&self, sha256: &str) -> sqlx::Result<Option<AttachmentInfo>> {
        const SQL: &str = "SELECT sha256, size, content_type FROM attachments WHERE sha256 = $1";
        on_pool!(self, p => sqlx::query_as(SQL).bind(sha256).fetch_optional(p).await)
    }

    /// The names linked to batch `batch`, with their files.
    #[tracing::instrument(skip_all, err)]
    pub async fn batch_attachments(&self, batch: i64) -> sqlx::Result<Vec<LinkedAttachment>> {
        const SQL: &str = "SELECT l.sighting_id, l.name, a.sha256, a.size, a.content_type \
             FROM attachment_links l JOIN attachments a ON a.sha256 = l.sha256 \
             WHERE l.batch = $1 ORDER BY l.name, l.sighting_id";
        on_pool!(self, p => sqlx::query_as(SQL).bind(batch).fetch_all(p).await)
    }

    /// The files of each of `sightings`: linked to it, or to its batch. `sighting_id`
    /// of each answer says which sighting it belongs to.
    #[tracing::instrument(skip_all, err)]
    pub async fn sighting_attachments(
        &self,
        sightings: &[uuid::Uuid],
    ) -> sqlx::Result<Vec<LinkedAttachment>> {
        if sightings.is_empty() {
            return Ok(Vec::new());
        }
        let id = self.uuid_text("s.id");
        let marks: Vec<String> = (1..=sightings.len()).map(|i| format!("${i}")).collect();
        let list = marks.join(", ");
        let sql = format!(
            "SELECT {id} AS sighting_id, l.name, a.sha256, a.size, a.content_type \
             FROM sightings s JOIN attachment_links l ON l.batch = s.batch \
               AND (l.sighting_id = '' OR l.sighting_id = {id}) \
             JOIN attachments a ON a.sha256 = l.sha256 \
             WHERE s.id IN ({list}) ORDER BY s.cursor, l.name"
        );
        on_pool!(self, p => {
            let mut q = sqlx::query_as(&sql);
            for s in sightings {
                q = q.bind(super::dialect::DbUuid(*s));
            }
            q.fetch_all(p).await
        })
    }

    /// The files of the sightings at `cursors` (linked to each, or to its batch), for
    /// the dashboard's tables; an OpenRosa submission's own XML is left out.
    #[tracing::instrument(skip_all, err)]
    pub async fn files_by_cursor(&self, cursors: &[i64]) -> sqlx::Result<Vec<CursorFile>> {
        if cursors.is_empty() {
            return Ok(Vec::new());
        }
        let id = self.uuid_text("s.id");
        let marks: Vec<String> = (2..=cursors.len() + 1).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT s.cursor, l.name, a.sha256, a.content_type \
             FROM sightings s JOIN attachment_links l ON l.batch = s.batch \
               AND (l.sighting_id = '' OR l.sighting_id = {id}) \
             JOIN attachments a ON a.sha256 = l.sha256 \
             WHERE l.name <> $1 AND s.cursor IN ({}) ORDER BY s.cursor, l.name",
            marks.join(", ")
        );
        on_pool!(self, p => {
            let mut q = sqlx::query_as(&sql).bind(OPENROSA_XML);
            for c in cursors {
                q = q.bind(*c);
            }
            q.fetch_all(p).await
        })
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn openrosa_submission(
        &self,
        instance_id: &str,
    ) -> sqlx::Result<Option<SubmissionRow>> {
        const SQL: &str = "SELECT instance_id, device, form_id, xml_sha256, batch, superseded_by, \
             received_at FROM openrosa_submissions WHERE instance_id = $1";
        on_pool!(self, p => sqlx::query_as(SQL).bind(instance_id).fetch_optional(p).await)
    }

    /// Records a submission whose batch is stored. When it replaces an earlier one
    /// (`deprecated_id`), in the same transaction: the earlier sightings move to
    /// `openrosa_superseded_sightings`, the earlier files are linked to the new batch
    /// under their names (unless it names them itself), and the earlier submission is
    /// marked superseded. Recording the same submission again changes nothing.
    #[tracing::instrument(skip_all, err)]
    pub async fn record_openrosa_submission(&self, s: &NewSubmission<'_>) -> sqlx::Result<()> {
        const INSERT: &str = "INSERT INTO openrosa_submissions (instance_id, device, form_id, \
             form_version, xml_sha256, batch, deprecated_id) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (instance_id) DO NOTHING";
        // Only the device's own submission: another device cannot retire its sightings.
        const OLD: &str =
            "SELECT batch FROM openrosa_submissions WHERE instance_id = $1 AND device = $2";
        const KEEP: &str = "INSERT INTO openrosa_superseded_sightings (id, instance_id, superseded_by, \
             batch, observed_at, observed_offset, latitude, longitude, altitude, accuracy, observer, \
             species, count, attributes) SELECT id, $1, $2, batch, observed_at, observed_offset, \
             latitude, longitude, altitude, accuracy, observer, species, count, attributes \
             FROM sightings WHERE batch = $3 ON CONFLICT (id) DO NOTHING";
        const DROP: &str = "DELETE FROM sightings WHERE batch = $1";
        const CARRY: &str = "INSERT INTO attachment_links (batch, sighting_id, name, sha256) \
             SELECT $1, '', name, sha256 FROM attachment_links WHERE batch = $2 \
             AND name NOT IN (SELECT name FROM attachment_links WHERE batch = $1) \
             ON CONFLICT (batch, sighting_id, name) DO NOTHING";
        const MARK: &str =
            "UPDATE openrosa_submissions SET superseded_by = $1 WHERE instance_id = $2";
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(INSERT)
                .bind(s.instance_id).bind(s.device).bind(s.form_id).bind(s.form_version)
                .bind(s.xml_sha256).bind(s.batch).bind(s.deprecated_id)
                .execute(&mut *tx).await?;
            if let Some(old) = s.deprecated_id {
                let old_batch: Option<i64> = sqlx::query_scalar(OLD).bind(old).bind(s.device)
                    .fetch_optional(&mut *tx).await?;
                if let Some(old_batch) = old_batch.filter(|b| *b != s.batch) {
                    sqlx::query(KEEP).bind(old).bind(s.instance_id).bind(old_batch)
                        .execute(&mut *tx).await?;
                    sqlx::query(DROP).bind(old_batch).execute(&mut *tx).await?;
                    sqlx::query(CARRY).bind(s.batch).bind(old_batch).execute(&mut *tx).await?;
                    sqlx::query(MARK).bind(s.instance_id).bind(old).execute(&mut *tx).await?;
                }
            }
            tx.commit().await
        })
    }
}

/// A file put in the attachment store while its batch was read (a photo inside a
/// CyberTracker upload or a CTX), linked to its sighting in the batch's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMedia {
    pub sighting_id: uuid::Uuid,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
}

const RECORD_SQL: &str =
    "INSERT INTO attachments (sha256, size, content_type) VALUES ($1, $2, $3) \
     ON CONFLICT (sha256) DO NOTHING";
/// Only a sighting this batch stored gets the link: one that was stored before (a
/// resend inside a new batch) keeps the link of the batch that stored it.
const LINK_SQL: &str = "INSERT INTO attachment_links (batch, sighting_id, name, sha256) \
     SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM sightings WHERE batch = $1 AND id = $5) \
     ON CONFLICT (batch, sighting_id, name) DO NOTHING";

/// The same statements on either engine's connection.
macro_rules! store_media {
    ($conn:expr, $batch:expr, $media:expr) => {{
        for m in $media {
            sqlx::query(RECORD_SQL)
                .bind(&m.sha256)
                .bind(m.size as i64)
                .bind(&m.content_type)
                .execute(&mut *$conn)
                .await?;
            sqlx::query(LINK_SQL)
                .bind($batch)
                .bind(m.sighting_id.to_string())
                .bind(&m.name)
                .bind(&m.sha256)
                .bind(super::dialect::DbUuid(m.sighting_id))
                .execute(&mut *$conn)
                .await?;
        }
        Ok(())
    }};
}

pub(super) async fn store_media_pg(
    conn: &mut sqlx::PgConnection,
    batch: i64,
    media: &[StoredMedia],
) -> sqlx::Result<()> {
    store_media!(conn, batch, media)
}

pub(super) async fn store_media_sqlite(
    conn: &mut sqlx::SqliteConnection,
    batch: i64,
    media: &[StoredMedia],
) -> sqlx::Result<()> {
    store_media!(conn, batch, media)
}
