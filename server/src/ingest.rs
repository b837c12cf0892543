//! The one ingest function every channel calls: scan → decide new / duplicate /
//! conflict → load in one transaction, or reject with the precise reason.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;
use ctdata_batch::tracks::Extras;
use ctdata_batch::{DeviceName, Format, Limits, Problem, RejectKind, Rejection, Scan, Sighting};

use crate::cybertracker::CybertrackerSettings;
use crate::db::{
    BatchRecord, Db, LoadResult, NewBatch, NewRejection, RowStream, Skipped, WriteHealth,
};
use crate::metrics::Metrics;
use crate::profile::{self, Phase};
use crate::types::{Channel, RejectionKind};

/// Sightings per message from the parser thread to the database writer.
const CHUNK: usize = 1024;

tokio::task_local! {
    /// Set while the drop directory drains a burst: the per-file lines of stored and
    /// duplicate files drop to debug, and the drop directory logs progress instead.
    pub static BURST: bool;
}

/// A per-file info line, at debug level within a burst. Rejections keep their warning.
macro_rules! per_file {
    ($($arg:tt)+) => {
        if BURST.try_with(|b| *b).unwrap_or(false) {
            tracing::debug!($($arg)+)
        } else {
            tracing::info!($($arg)+)
        }
    };
}

/// One file to ingest and what its surroundings say about it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: PathBuf,
    /// The name the sender gave the file (for reports).
    pub file_name: String,
    pub channel: Channel,
    /// The device the file's location vouches for (its drop-dir subfolder, FTP login…).
    pub device_hint: Option<String>,
    /// Identifies this delivery across a crash and restart (the claimed file's name).
    pub claim_name: Option<String>,
    /// Where the caller keeps the file if it is rejected (recorded with the reason).
    pub rejected_path: Option<String>,
}

/// The receipt is part of the API: the field client reads it too.
pub use ctdata_api::{Receipt, Status};

/// What a delivery that may still be being written came to.
#[derive(Debug)]
pub enum Outcome {
    Decided(Receipt),
    /// Cut short: nothing recorded, the caller may wait for the rest.
    Incomplete(Incomplete),
}

/// A delivery found cut short, with what is known of it, until it is rejected.
#[derive(Debug)]
pub struct Incomplete {
    rejection: Rejection,
    scan: Option<Scan>,
    device: Option<String>,
}

/// Shared, cheap to clone: one per server.
/// The file to ingest is gone before it could be read: another replica that took over
/// its claim has filed it away (a claim listed from a shared folder's stale listing,
/// or a replica that stalled past its lease and went on). Nothing is decided: the
/// file's own decision, receipt and filing are the other replica's; a rejection here
/// would tell the sender a stored batch was refused.
#[derive(Debug)]
pub struct Gone(pub PathBuf);

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is gone before it was read", self.0.display())
    }
}

impl std::error::Error for Gone {}

#[derive(Clone)]
pub struct Ingestor {
    pub db: Db,
    pub metrics: Arc<Metrics>,
    /// Whether the last load could write: `/readyz` and the dashboard report it.
    pub writes: Arc<WriteHealth>,
    limits: Limits,
    default_device: Arc<str>,
    /// Whether a `truncated` rejection may be waiting for a complete delivery to
    /// resolve it; while none is, a stored batch costs no extra statement.
    truncated_pending: Arc<AtomicBool>,
    /// `[formats.cybertracker]`: elements that fill species, count and observer.
    cybertracker: Arc<CybertrackerSettings>,
    /// Where photos inside CyberTracker and CTX batches are stored, and the largest kept.
    attachments: Option<(crate::attachments::AttachmentStore, u64)>,
}

impl Ingestor {
    /// The limits every file is read with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn new(db: Db, limits: Limits, default_device: &str) -> Ingestor {
        Ingestor {
            db,
            metrics: Arc::default(),
            writes: Arc::default(),
            limits,
            default_device: default_device.into(),
            truncated_pending: Arc::new(AtomicBool::new(true)),
            cybertracker: Arc::default(),
            attachments: None,
        }
    }

    /// Stores the media inside batches in `store` (files up to `limit` bytes each).
    pub fn with_attachments(
        mut self,
        store: crate::attachments::AttachmentStore,
        limit: u64,
    ) -> Ingestor {
        self.attachments = Some((store, limit));
        self
    }

    /// The `[formats.cybertracker]` mapping this ingestor applies.
    pub fn cybertracker_mapping(&self) -> &CybertrackerSettings {
        &self.cybertracker
    }

    /// Reads CyberTracker and SMART uploads with this element → field mapping.
    pub fn with_cybertracker(mut self, mapping: CybertrackerSettings) -> Ingestor {
        self.cybertracker = Arc::new(mapping);
        self
    }

    /// Ingests one file exactly once. `Err` means the server could not decide (the
    /// database is down, say): the caller keeps the file and tries again later.
    #[tracing::instrument(skip_all, err, fields(file = %d.file_name, channel = %d.channel))]
    pub async fn ingest(&self, d: &Delivery) -> anyhow::Result<Receipt> {
        match self.ingest_or_wait(d, false).await? {
            Outcome::Decided(receipt) => Ok(receipt),
            Outcome::Incomplete(_) => unreachable!("only asked to wait for a file when allowed to"),
        }
    }

    /// Like [`Ingestor::ingest`], but with `wait_if_incomplete` a file that is cut short
    /// (it may still be being written) is neither stored nor rejected.
    pub async fn ingest_or_wait(
        &self,
        d: &Delivery,
        wait_if_incomplete: bool,
    ) -> anyhow::Result<Outcome> {
        let started = std::time::Instant::now();
        let outcome = self.decide(d, wait_if_incomplete).await?;
        if let Outcome::Decided(receipt) = &outcome {
            self.metrics.ingested(receipt, started.elapsed());
            if receipt.status != Status::Rejected {
                profile::time_async(Phase::After, self.resolve_superseded(receipt)).await?;
            } else if receipt.kind.as_deref() == Some(RejectionKind::TRUNCATED.as_str()) {
                self.truncated_pending.store(true, Ordering::SeqCst);
            }
        }
        Ok(outcome)
    }

    /// A complete delivery supersedes the device's earlier truncated copies of the same
    /// file name or batch id: those rejections need no one's attention any more.
    async fn resolve_superseded(&self, r: &Receipt) -> anyhow::Result<()> {
        let (Some(device), Some(batch_id)) = (&r.device, r.batch_id) else {
            return Ok(());
        };
        if !self.truncated_pending.load(Ordering::SeqCst) {
            return Ok(());
        }
        let resolved = self.db.resolve_truncated(device, &r.file, batch_id).await?;
        if resolved > 0 {
            tracing::info!(
                device,
                file = r.file,
                resolved,
                "truncated copies superseded by a complete delivery"
            );
        }
        let left = self.db.truncated_pending().await?;
        self.truncated_pending.store(left, Ordering::SeqCst);
        Ok(())
    }

    /// Rejects a delivery that stayed cut short as `truncated`, whatever part of it
    /// showed the cut.
    pub async fn reject_incomplete(
        &self,
        d: &Delivery,
        cut: Incomplete,
    ) -> anyhow::Result<Receipt> {
        let receipt = self
            .reject_as(
                d,
                cut.scan.as_ref(),
                cut.device.as_deref(),
                cut.rejection,
                RejectionKind::TRUNCATED,
            )
            .await?;
        self.truncated_pending.store(true, Ordering::SeqCst);
        Ok(receipt)
    }

    /// Refuses a delivery without reading it (its name alone rules it out).
    pub async fn refuse(
        &self,
        d: &Delivery,
        kind: RejectionKind,
        summary: String,
    ) -> anyhow::Result<Receipt> {
        self.reject_as(d, None, None, header_rejection(summary), kind)
            .await
    }

    async fn decide(&self, d: &Delivery, wait_if_incomplete: bool) -> anyhow::Result<Outcome> {
        let path = d.path.clone();
        let limits = self.limits;
        let scan = profile::time_async(
            Phase::Scan,
            tokio::task::spawn_blocking(move || ctdata_batch::scan(&path, &limits)),
        )
        .await?;
        let scan = match scan {
            Ok(scan) => scan,
            Err(rejection)
                // Opened again, not looked up: a network mount may still list (and
                // stat from its cache) a file the file server no longer has.
                if rejection.kind == RejectKind::Io
                    && matches!(
                        std::fs::File::open(&d.path),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound
                    ) =>
            {
                return Err(Gone(d.path.clone()).into())
            }
            Err(rejection) if wait_if_incomplete && incomplete(&rejection, None, &d.path) => {
                return Ok(Outcome::Incomplete(Incomplete {
                    rejection,
                    scan: None,
                    device: None,
                }))
            }
            Err(rejection) => {
                return self
                    .reject(d, None, None, rejection)
                    .await
                    .map(Outcome::Decided)
            }
        };
        let device = match self.device_for(d, &scan) {
            // Device names are one in any letter case (as at registration): a batch
            // naming "Ranger-1" belongs to the device "ranger-1", never to a new one.
            Ok(device) => {
                let stored = self.db.device_name_any_case(&device);
                (profile::time_async(Phase::Device, stored).await?).unwrap_or(device)
            }
            Err((rejection, kind)) => {
                return self
                    .reject_as(d, Some(&scan), None, rejection, kind)
                    .await
                    .map(Outcome::Decided)
            }
        };
        // Track points and patrol events go into the same transaction as the sightings.
        let extras = match self.extras(&d.path, &scan).await? {
            Ok(extras) => Arc::new(extras),
            Err(rejection) => {
                return self
                    .reject(d, Some(&scan), Some(&device), rejection)
                    .await
                    .map(Outcome::Decided)
            }
        };
        // Media files are in the store, durably, before the batch that links them commits.
        let media = match &self.attachments {
            Some((store, limit)) => {
                let stored =
                    crate::ingest_media::store_media(store, *limit, &d.path, &scan, self.limits);
                match stored.await? {
                    Ok(media) => Arc::new(media),
                    Err(rejection) => {
                        return self
                            .reject(d, Some(&scan), Some(&device), rejection)
                            .await
                            .map(Outcome::Decided)
                    }
                }
            }
            None => Arc::default(),
        };
        let batch = NewBatch {
            claim_name: d.claim_name.clone(),
            created_at: scan.created_at,
            sequence: scan.sequence.map(|n| n.min(i64::MAX as u64) as i64),
            extras: extras.clone(),
            media,
            ..NewBatch::new(
                device.clone(),
                scan.batch_id,
                scan.sha256.clone(),
                scan.format.as_str(),
                d.channel,
                d.file_name.clone(),
            )
        };
        // The load itself finds a batch stored before (or by a concurrent delivery that
        // won the race), before it reads a single row.
        let source = || self.rows(&d.path, &scan);
        let loaded = profile::time_async(Phase::Load, self.db.load_batch(&batch, &source)).await;
        match &loaded {
            Ok(_) => self.writes.succeeded(),
            Err(e) => self.writes.failed(e),
        }
        let receipt = match loaded? {
            LoadResult::Loaded(record) => {
                let mut r = receipt(Status::Ingested, d, &record);
                r.skipped = self.skipped(&record).await?;
                if scan.deleted > 0 || scan.no_position > 0 {
                    r.not_stored = Some(ctdata_api::NotStored {
                        deleted: scan.deleted,
                        no_position: scan.no_position,
                    });
                }
                if scan.deleted > 0 {
                    per_file!(
                        device,
                        batch_id = %record.batch_id,
                        deleted = scan.deleted,
                        "records not stored as sightings: deleted on the device"
                    );
                }
                if scan.no_position > 0 {
                    tracing::warn!(
                        device,
                        batch_id = %record.batch_id,
                        no_position = scan.no_position,
                        "records not stored as sightings: saved without a GPS fix (no latitude and \
                         longitude); they are kept in the archived original"
                    );
                }
                let conflicts = r.skipped.as_ref().map_or(0, |s| s.conflicts);
                per_file!(
                    device,
                    batch_id = %record.batch_id,
                    rows = record.rows,
                    inserted = record.inserted,
                    duplicates_skipped = record.duplicates,
                    conflicts,
                    "batch ingested"
                );
                if conflicts > 0 {
                    let first = r
                        .skipped
                        .iter()
                        .flat_map(|s| &s.ids)
                        .find(|i| !i.differs.is_empty());
                    tracing::warn!(
                        device,
                        batch_id = %record.batch_id,
                        conflicts,
                        first = ?first.map(|i| (i.id, i.differs.join(","))),
                        "sighting ids stored before arrived with other content; the stored versions were kept"
                    );
                }
                r
            }
            LoadResult::Rejected(rejection)
                if wait_if_incomplete && incomplete(&rejection, Some(&scan), &d.path) =>
            {
                return Ok(Outcome::Incomplete(Incomplete {
                    rejection,
                    scan: Some(scan),
                    device: Some(device),
                }));
            }
            LoadResult::Rejected(rejection) => {
                self.reject(d, Some(&scan), Some(&device), rejection)
                    .await?
            }
            LoadResult::Exists(existing) => self.seen_before(d, &scan, existing).await?,
        };
        Ok(Outcome::Decided(with_extras(receipt, &scan, &extras)))
    }

    /// The same device and batch id arrived before: a duplicate, a conflict, or our own
    /// interrupted attempt at this very file.
    async fn seen_before(
        &self,
        d: &Delivery,
        scan: &Scan,
        existing: BatchRecord,
    ) -> anyhow::Result<Receipt> {
        if existing.sha256 != scan.sha256 {
            let rejection = Rejection {
                kind: RejectKind::Header,
                summary: format!(
                    "conflict: batch {} from device {} was already received on {} with different content \
                     (sha256 {}, this file {}); a corrected batch needs a new batch_id",
                    existing.batch_id,
                    existing.device,
                    existing.received_at.format("%Y-%m-%d %H:%M UTC"),
                    short(&existing.sha256),
                    short(&scan.sha256),
                ),
                problems: vec![],
                total_problems: 1,
            };
            return self
                .reject_as(
                    d,
                    Some(scan),
                    Some(&existing.device),
                    rejection,
                    RejectionKind::Conflict,
                )
                .await;
        }
        if d.claim_name.is_some() && existing.claim_name == d.claim_name {
            let mut r = receipt(Status::Ingested, d, &existing);
            r.skipped = self.skipped(&existing).await?;
            return Ok(r);
        }
        let delivery = crate::db::NewDelivery {
            channel: d.channel,
            file_name: &d.file_name,
            claim_name: d.claim_name.as_deref(),
        };
        self.db.record_delivery(&existing, &delivery).await?;
        per_file!(device = existing.device, batch_id = %existing.batch_id, "duplicate delivery, nothing added");
        Ok(receipt(Status::Duplicate, d, &existing))
    }

    /// What a stored batch skipped, for its receipt.
    async fn skipped(&self, b: &BatchRecord) -> anyhow::Result<Option<Skipped>> {
        if b.duplicates == 0 {
            return Ok(None);
        }
        Ok(self.db.skipped(b.pk).await?)
    }

    /// Which device a file belongs to: its header, its location, or the default, and
    /// header and location must agree.
    fn device_for(&self, d: &Delivery, scan: &Scan) -> Result<String, (Rejection, RejectionKind)> {
        if let Some(hint) = &d.device_hint {
            if let Err(e) = hint.parse::<DeviceName>() {
                let why = format!("the folder name {e}");
                return Err((header_rejection(why), RejectKind::Header.into()));
            }
        }
        match (&scan.device_id, &d.device_hint) {
            (Some(claimed), Some(hint)) if !claimed.eq_ignore_ascii_case(hint) => {
                let why = format!(
                    "the batch says device_id {claimed:?} but it was delivered as device {hint:?}; a device \
                     may only send its own batches (a station PC that handhelds are docked at may relay for them \
                     when the administrator allows it: `ctdata-server device relay NAME --for DEVICES`)"
                );
                Err((header_rejection(why), RejectionKind::DeviceMismatch))
            }
            (_, Some(hint)) => Ok(hint.clone()),
            (Some(claimed), None) => Ok(claimed.clone()),
            (None, None) => Ok(self.default_device.to_string()),
        }
    }

    /// The file's track points and patrol events (none for most formats).
    async fn extras(&self, path: &Path, scan: &Scan) -> anyhow::Result<Result<Extras, Rejection>> {
        if !matches!(scan.format, Format::Cybertracker | Format::Ctx) {
            return Ok(Ok(Extras::default()));
        }
        let (path, scan, limits) = (path.to_path_buf(), scan.clone(), self.limits);
        let extras = move || ctdata_batch::tracks::extras(&path, &scan, &limits);
        Ok(tokio::task::spawn_blocking(extras).await?)
    }

    /// Starts a parser on a blocking thread that streams valid rows in chunks.
    fn rows(&self, path: &Path, scan: &Scan) -> RowStream {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Sighting>>(16);
        let (path, scan, limits) = (path.to_path_buf(), scan.clone(), self.limits);
        // CyberTracker uploads, SMART files and CyberTracker Classic CTX files alike.
        let cybertracker = matches!(scan.format, Format::Cybertracker | Format::Ctx);
        let mapping =
            (cybertracker && !self.cybertracker.is_empty()).then(|| self.cybertracker.clone());
        let done = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(CHUNK);
            let result = ctdata_batch::read(&path, &scan, &limits, |mut s| {
                if let Some(m) = &mapping {
                    m.apply(&mut s);
                }
                chunk.push(s);
                if chunk.len() == CHUNK && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            if result.is_ok() && !chunk.is_empty() {
                let _ = tx.blocking_send(chunk);
            }
            result
        });
        RowStream { rx, done }
    }

    async fn reject(
        &self,
        d: &Delivery,
        scan: Option<&Scan>,
        device: Option<&str>,
        rejection: Rejection,
    ) -> anyhow::Result<Receipt> {
        let kind = rejection.kind.into();
        self.reject_as(d, scan, device, rejection, kind).await
    }

    async fn reject_as(
        &self,
        d: &Delivery,
        scan: Option<&Scan>,
        device: Option<&str>,
        rejection: Rejection,
        kind: RejectionKind,
    ) -> anyhow::Result<Receipt> {
        // Where the file came from outranks what it claims: a receipt for a file that
        // names another device goes back to the sender, not to the device it names.
        let device = device
            .map(str::to_string)
            .or_else(|| d.device_hint.clone())
            .or_else(|| scan.and_then(|s| s.device_id.clone()));
        let reason = format!("{}: {}", d.file_name, rejection);
        // A problem quotes the bad value, which may hold the very NUL that got the file
        // refused; no database stores that in text.
        let printable = |s: &str| s.replace('\0', "\\0");
        let problems: Vec<Problem> = rejection
            .problems
            .iter()
            .map(|p| Problem {
                at: p.at.clone(),
                field: p.field.as_deref().map(printable),
                value: p.value.as_deref().map(printable),
                message: printable(&p.message),
            })
            .collect();
        self.db
            .record_rejection(&NewRejection {
                file_name: d.file_name.clone(),
                stored_path: d.rejected_path.clone(),
                claim_name: d.claim_name.clone(),
                device: device.clone(),
                batch_id: scan.map(|s| s.batch_id),
                sha256: scan.map(|s| s.sha256.clone()),
                channel: d.channel,
                kind,
                reason: reason.clone(),
                problems: serde_json::to_value(problems)?,
            })
            .await?;
        // The first problem is what an operator reads first; the rest is in the reason.
        let first = rejection.problems.first().map(|p| p.to_string());
        tracing::warn!(
            file = d.file_name,
            device = device.as_deref().unwrap_or("-"),
            channel = %d.channel,
            claim = d.claim_name.as_deref().unwrap_or("-"),
            kind = %kind,
            first_problem = first.as_deref().unwrap_or("-"),
            "batch rejected: {}",
            rejection.summary
        );
        Ok(Receipt {
            device,
            batch_id: scan.map(|s| s.batch_id),
            format: scan.map(|s| s.format.as_str().to_string()),
            sha256: scan.map(|s| s.sha256.clone()),
            reason: Some(reason),
            kind: Some(kind.to_string()),
            ..Receipt::new(Status::Rejected, d.file_name.clone(), d.channel.to_string())
        })
    }
}

fn receipt(status: Status, d: &Delivery, b: &BatchRecord) -> Receipt {
    let duplicate = status == Status::Duplicate;
    Receipt {
        device: Some(b.device.clone()),
        batch_id: Some(b.batch_id),
        format: Some(b.format.clone()),
        sha256: Some(b.sha256.clone()),
        sightings: b.rows,
        inserted: if duplicate { 0 } else { b.inserted },
        duplicates: if duplicate { b.rows } else { b.duplicates },
        cursor: b.cursor_last,
        received_at: if duplicate { Utc::now() } else { b.received_at },
        ..Receipt::new(status, d.file_name.clone(), d.channel.to_string())
    }
}

/// A CyberTracker upload's receipt says how many track points and patrol events it had;
/// a CTX's how many waypoints (it has no patrol events).
fn with_extras(mut r: Receipt, scan: &Scan, extras: &Extras) -> Receipt {
    if r.status == Status::Rejected {
        return r;
    }
    match scan.format {
        Format::Cybertracker => {
            r.track_points = Some(extras.track.len() as i64);
            r.patrol_events = Some(extras.patrol_events.len() as i64);
        }
        Format::Ctx => r.track_points = Some(extras.track.len() as i64),
        _ => {}
    }
    r
}

/// Whether a file failed because it ends early, as one still being written does: a
/// missing trailer, a JSON document or count cut short, or a CSV whose last row is
/// cut (a broken row with no line break after it).
fn incomplete(rejection: &Rejection, scan: Option<&Scan>, path: &Path) -> bool {
    let plain_csv = scan.is_some_and(|s| s.format == Format::Csv && !s.gzip);
    match rejection.kind {
        RejectKind::Truncated => true,
        RejectKind::Syntax | RejectKind::InvalidRows if plain_csv => !ends_with_line_break(path),
        _ => false,
    }
}

fn ends_with_line_break(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut last = [0u8; 1];
    std::fs::File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::End(-1))?;
            f.read_exact(&mut last)
        })
        .is_ok_and(|()| last[0] == b'\n')
}

fn header_rejection(summary: String) -> Rejection {
    Rejection {
        kind: RejectKind::Header,
        summary,
        problems: vec![],
        total_problems: 1,
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
