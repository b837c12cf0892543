//! `ctdata-server openrosa remap`: maps every current OpenRosa submission again from
//! its kept XML with the `[[openrosa.forms]]` mappings as they are now, so a mapping
//! fixed after the forms arrived applies to them too. Sightings keep their ids (they
//! come from the instanceID) and their attachments; a changed one is replaced by a new
//! version, the old one kept in `sighting_versions`. One transaction per submission.

use std::fmt::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::attachments::AttachmentStore;
use crate::config::Settings;
use crate::db::{Db, SubmissionRow};

/// What a remap found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemapReport {
    pub dry_run: bool,
    /// Current submissions read.
    pub submissions: usize,
    /// Submissions whose sightings changed (or would).
    pub submissions_changed: usize,
    pub sightings_changed: usize,
    pub sightings_unchanged: usize,
    pub sightings_added: usize,
    pub sightings_removed: usize,
    pub failed: Vec<RemapFailure>,
}

/// A submission that could not be mapped again; its sightings stay as they were.
#[derive(Debug, Clone, Serialize)]
pub struct RemapFailure {
    pub instance_id: String,
    pub form_id: String,
    pub reason: String,
}

/// Remaps the current submissions of `form` (or of every form).
pub async fn remap(
    settings: &Settings,
    db: &Db,
    form: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<RemapReport> {
    let store = AttachmentStore::new(&settings.storage.attachments_dir(&settings.ingest.drop_dir));
    let mut report = RemapReport {
        dry_run,
        ..RemapReport::default()
    };
    for sub in db.current_openrosa_submissions(form).await? {
        report.submissions += 1;
        match one(settings, db, &store, &sub, dry_run).await {
            Ok(done) => {
                if done.changed + done.added + done.removed > 0 {
                    report.submissions_changed += 1;
                }
                report.sightings_changed += done.changed;
                report.sightings_unchanged += done.unchanged;
                report.sightings_added += done.added;
                report.sightings_removed += done.removed;
            }
            Err(e) => report.failed.push(RemapFailure {
                instance_id: sub.instance_id.clone(),
                form_id: sub.form_id.clone(),
                reason: format!("{e:#}"),
            }),
        }
    }
    Ok(report)
}

async fn one(
    settings: &Settings,
    db: &Db,
    store: &AttachmentStore,
    sub: &SubmissionRow,
    dry_run: bool,
) -> anyhow::Result<crate::db::Remapped> {
    let path = store.path(&sub.xml_sha256).ok_or_else(|| {
        anyhow::anyhow!("the stored XML name {:?} is not a SHA-256", sub.xml_sha256)
    })?;
    let xml = tokio::fs::read(&path)
        .await
        .map_err(|e| anyhow::anyhow!("the kept XML {} cannot be read: {e}", path.display()))?;
    let actual = hex::encode(Sha256::digest(&xml));
    if actual != sub.xml_sha256 {
        anyhow::bail!(
            "the kept XML {} is damaged: its SHA-256 is {actual}, not {}",
            path.display(),
            sub.xml_sha256
        );
    }
    let text = std::str::from_utf8(&xml)
        .map_err(|e| anyhow::anyhow!("the kept XML {} is not UTF-8: {e}", path.display()))?;
    let (parsed, doc) = crate::openrosa::identify(text).map_err(anyhow::Error::msg)?;
    if parsed.instance_id != sub.instance_id {
        anyhow::bail!(
            "the kept XML {} names instanceID {}, not {}",
            path.display(),
            parsed.instance_id,
            sub.instance_id
        );
    }
    let mapped = crate::openrosa::sightings(&doc, &parsed, settings.openrosa.form(&parsed.form_id))
        .map_err(anyhow::Error::msg)?;
    db.remap_batch(&sub.instance_id, sub.batch, &mapped, !dry_run)
        .await
}

/// The report as lines of text: the counts, then one line per failed submission.
pub fn describe(r: &RemapReport) -> String {
    let mut out = String::new();
    let verb = if r.dry_run { "would change" } else { "changed" };
    let _ = writeln!(
        out,
        "{} submission(s) read, {} {verb}; sightings: {} {verb}, {} unchanged, {} added, {} \
         removed; {} submission(s) failed{}",
        r.submissions,
        r.submissions_changed,
        r.sightings_changed,
        r.sightings_unchanged,
        r.sightings_added,
        r.sightings_removed,
        r.failed.len(),
        if r.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
    for f in &r.failed {
        let _ = writeln!(
            out,
            "failed    {} (form {}): {}",
            f.instance_id, f.form_id, f.reason
        );
    }
    out
}
