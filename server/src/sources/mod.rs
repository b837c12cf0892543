//! Remote sources: the CyberTracker "Download". Each source's folder is listed, new
//! final-named files are fetched into the drop directory under a temporary name,
//! size-checked, fsynced and renamed, then ingested through the one ingest function;
//! only after the ingest committed is the remote file deleted, moved or remembered.
//!
//! A crash at any step loses nothing (the remote file goes last) and adds nothing (a
//! fetched file is named for its remote path, size and time, so a second fetch of it
//! is recognised as the same delivery, and the batch id makes any other copy a
//! duplicate).

mod ftp;
mod remote;
mod report;
mod schedule;

use std::fs;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, AfterDownload, SourceSettings};
use crate::db::{PullRecord, RemoteKey};
use crate::deliver::{Deliverer, Filing, Origin};
use crate::ingest::{Ingestor, Status};
use crate::layout::{self, stamp};
use crate::types::Channel;
use remote::{Remote, RemoteFile, StepError};
pub use report::{describe, DownloadReport, PulledFile, SourceReport};
pub use schedule::spawn_schedules;

/// Pulls the configured sources into the drop directory.
pub struct Puller {
    sources: Vec<SourceSettings>,
    deliverer: Deliverer,
}

impl Puller {
    pub fn db(&self) -> &crate::db::Db {
        &self.deliverer.ingestor.db
    }

    pub fn new(sources: Vec<SourceSettings>, drop_dir: &Path, ingestor: Ingestor) -> Puller {
        Puller {
            sources,
            deliverer: Deliverer::new(ingestor, drop_dir),
        }
    }

    pub fn sources(&self) -> &[SourceSettings] {
        &self.sources
    }

    /// Pulls every source (or only `only`) now, one after the other. `Err` only for
    /// an unknown source name.
    pub async fn download(
        &self,
        only: Option<&str>,
        trigger: &str,
    ) -> anyhow::Result<DownloadReport> {
        let chosen: Vec<&SourceSettings> = self
            .sources
            .iter()
            .filter(|s| only.is_none_or(|n| n == s.name))
            .collect();
        if let Some(name) = only {
            anyhow::ensure!(
                !chosen.is_empty(),
                "no source is named {name:?}; configured: {}",
                self.sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let never = CancellationToken::new();
        let mut sources = Vec::with_capacity(chosen.len());
        for source in chosen {
            sources.push(self.pull(source, trigger, &never).await);
        }
        Ok(DownloadReport {
            ok: sources.iter().all(|s| s.errors.is_empty()),
            sources,
        })
    }

    /// One pull of one source; records it in the database. Stops between files once
    /// `stop` is set.
    pub async fn pull(
        &self,
        source: &SourceSettings,
        trigger: &str,
        stop: &CancellationToken,
    ) -> SourceReport {
        let started = Utc::now();
        let mut report = SourceReport {
            source: source.name.clone(),
            url: redact_url(&source.url),
            ..SourceReport::default()
        };
        match self.lock(source).await {
            Ok(_lock) => {
                if let Err(e) = self.pull_locked(source, stop, &mut report).await {
                    report.errors.push(e.to_string());
                }
            }
            Err(e) => report.errors.push(e.to_string()),
        }
        for e in &report.errors {
            tracing::warn!(source = source.name, "pull: {e}");
        }
        tracing::info!(
            source = source.name,
            found = report.found,
            fetched = report.fetched,
            ingested = report.ingested,
            duplicates = report.duplicates,
            rejected = report.rejected,
            errors = report.errors.len(),
            "source pulled"
        );
        let record = PullRecord {
            source: source.name.clone(),
            trigger: trigger.into(),
            started_at: started,
            finished_at: Utc::now(),
            found: report.found as i64,
            fetched: report.fetched as i64,
            ingested: report.ingested as i64,
            duplicates: report.duplicates as i64,
            rejected: report.rejected as i64,
            errors: report.errors.len() as i64,
            result: if report.errors.is_empty() {
                "ok"
            } else {
                "error"
            }
            .into(),
            error: report.errors.first().cloned(),
        };
        if let Err(e) = self.deliverer.ingestor.db.record_pull(&record).await {
            report
                .errors
                .push(format!("record the pull in the database: {e}"));
        }
        report
    }

    /// One pull of a source at a time, across tasks and processes (`serve`'s schedule
    /// and a `download` command): a lock file in the pulling folder. The lock goes
    /// with the process, so a crash never leaves a source locked.
    async fn lock(&self, source: &SourceSettings) -> Result<fs::File, StepError> {
        let path = self.deliverer.layout.pull_lock(&source.name);
        let dir = path.parent().unwrap_or(&path).to_path_buf();
        let step = "take the source's lock";
        fs::create_dir_all(&dir)
            .map_err(|e| StepError::fatal(step, &format!("{}: {e}", dir.display())))?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StepError::fatal(step, &format!("{}: {e}", path.display())))?;
        // A pull in progress elsewhere is waited for, up to the source's timeout.
        let deadline = std::time::Instant::now() + source.timeout();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StepError::fatal(
                        step,
                        "another pull of this source is still running",
                    ))
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(StepError::fatal(step, &e.to_string()))
                }
            }
        }
    }

    async fn pull_locked(
        &self,
        source: &SourceSettings,
        stop: &CancellationToken,
        report: &mut SourceReport,
    ) -> Result<(), StepError> {
        let after = source.after_download.clone();
        // Files fetched before a crash: their remote copies are still there (those go
        // only after the archive), so fetching afresh is both safe and simpler.
        let work = self.deliverer.layout.pulling(&source.name);
        let _ = fs::remove_dir_all(&work);
        let mut remote = Remote::open(source).await?;
        let skip = match &after {
            AfterDownload::Move(folder) if !folder.starts_with('/') => {
                Some(folder.trim_matches('/').to_string())
            }
            _ => None,
        };
        let files = match remote.list(skip.as_deref()).await {
            Ok(files) => files,
            Err(e) => {
                remote.close().await;
                return Err(e);
            }
        };
        report.found = files.len() as u64;
        for file in files {
            if stop.is_cancelled() {
                report.errors.push(
                    "stopped: the server is shutting down; the rest waits for the next pull".into(),
                );
                break;
            }
            match self
                .pull_file(source, &after, &mut remote, &work, &file, report)
                .await
            {
                Ok(()) => {}
                Err(e) if e.fatal => {
                    report.errors.push(e.to_string());
                    break;
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        remote.close().await;
        let _ = fs::remove_dir_all(&work);
        Ok(())
    }

    async fn pull_file(
        &self,
        source: &SourceSettings,
        after: &AfterDownload,
        remote: &mut Remote,
        work: &Path,
        file: &RemoteFile,
        report: &mut SourceReport,
    ) -> Result<(), StepError> {
        let db = &self.deliverer.ingestor.db;
        let key = RemoteKey {
            source: &source.name,
            path: &file.rel,
            size: file.size as i64,
            modified: &file.modified,
        };
        let database = |e: sqlx::Error| StepError::fatal("database", &e.to_string());
        if db
            .source_file_outcome(&key)
            .await
            .map_err(database)?
            .is_some()
        {
            if *after == AfterDownload::Keep {
                report.unchanged += 1;
                return Ok(());
            }
            // Stored before, but the delete or move did not happen: finish it.
            return self.finish_remote(source, after, remote, file).await;
        }

        // Where the drop directory would take it from: the top folder names the device.
        let (device_dir, name) = match file.rel.split_once('/') {
            Some((device, _)) => (
                device.to_string(),
                file.rel.rsplit('/').next().unwrap_or_default().to_string(),
            ),
            None => (layout::NO_DEVICE.to_string(), file.rel.clone()),
        };
        let dir = work.join(&device_dir);
        let local_step = |e: std::io::Error| {
            StepError::fatal(
                "prepare the drop directory",
                &format!("{}: {e}", dir.display()),
            )
        };
        fs::create_dir_all(&dir).map_err(local_step)?;
        let claim = format!("{}-{name}", stamp());
        let part = dir.join(format!(".{claim}.part"));
        let got = remote.fetch(file, &part).await;
        let got = match got {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
        };
        if got != file.size {
            let _ = fs::remove_file(&part);
            return Err(StepError::recoverable(
                &format!("download {}", file.rel),
                &format!(
                    "received {got} bytes but the listing said {}: the file is probably still being written; \
                     it is fetched again next time",
                    file.size
                ),
            ));
        }
        let local = dir.join(&claim);
        fs::rename(&part, &local).map_err(local_step)?;
        report.fetched += 1;

        let origin = Origin {
            channel: Channel::Pull,
            file_name: name,
            device: layout::device_of_dir(&device_dir).map(str::to_string),
            claim: Some(format!(
                "pull/{}/{}@{}/{}",
                source.name, file.rel, file.size, file.modified
            )),
            filing: Filing::DropDir,
            relayed_by: None,
        };
        let receipt =
            self.deliverer.deliver(&local, &origin).await.map_err(|e| {
                StepError::fatal(&format!("ingest {}", file.rel), &format!("{e:#}"))
            })?;
        let outcome = match receipt.status {
            Status::Ingested => {
                report.ingested += 1;
                "stored"
            }
            Status::Duplicate => {
                report.duplicates += 1;
                "duplicate"
            }
            Status::Rejected => {
                report.rejected += 1;
                "rejected"
            }
        };
        report.files.push(PulledFile {
            path: file.rel.clone(),
            status: receipt.status,
            batch_id: receipt.batch_id,
            reason: receipt.reason.clone(),
        });
        db.remember_source_file(&key, receipt.sha256.as_deref(), outcome)
            .await
            .map_err(database)?;
        self.finish_remote(source, after, remote, file).await
    }

    /// Deletes or moves a remote file whose ingest committed (nothing for `keep`).
    async fn finish_remote(
        &self,
        source: &SourceSettings,
        after: &AfterDownload,
        remote: &mut Remote,
        file: &RemoteFile,
    ) -> Result<(), StepError> {
        match after {
            AfterDownload::Keep => return Ok(()),
            AfterDownload::Delete => remote.delete(file).await?,
            AfterDownload::Move(folder) => remote.move_to(file, folder).await?,
        }
        self.deliverer
            .ingestor
            .db
            .forget_source_file(&source.name, &file.rel)
            .await
            .map_err(|e| StepError::fatal("database", &e.to_string()))
    }
}
