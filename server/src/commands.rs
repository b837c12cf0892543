//! The one-shot commands behind the CLI: ingest for a scheduled task, and export.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db::{BBox, ExportFilter};
use crate::deliver::{Deliverer, Filing, Origin};
use crate::dropdir::{DropDir, StepReport};
use crate::dwca::Publisher;
use crate::export::{write_export_with, ExportFormat, ExportSummary};
use crate::ingest::{Receipt, Status};
use crate::layout::write_atomic;
use crate::serve::open;
use crate::types::{parse_time, Channel};

/// Ingests files in place (they are not moved), or, with no paths, makes one pass over
/// the drop directory (files that have not settled yet are left for the next run).
/// The caller decides the exit code.
pub async fn ingest(
    settings: &Settings,
    paths: &[PathBuf],
    device: Option<&str>,
) -> anyhow::Result<StepReport> {
    let ingestor = open(settings).await?;
    let report = if paths.is_empty() {
        // Two looks, a settle time apart: a file that did not change in between is
        // complete; one that did is left for the next run.
        let settle = settings.ingest.settle_secs;
        let mut drop_dir = DropDir::new(&settings.ingest.drop_dir, ingestor.clone(), settle)?
            .with_incomplete_grace(settings.ingest.incomplete_grace_secs)
            .dating_by_mtime();
        let stop = CancellationToken::new();
        let mut report = drop_dir.ingest_once(&stop).await?;
        anyhow::ensure!(
            !report.unavailable,
            "the drop directory {} cannot be read",
            settings.ingest.drop_dir.display()
        );
        if report.waiting > 0 {
            tokio::time::sleep(settle).await;
            let second = drop_dir.ingest_once(&stop).await?;
            report.receipts.extend(second.receipts);
            report.waiting = second.waiting;
            report.errors += second.errors;
        }
        anyhow::ensure!(
            report.errors == 0,
            "{} file(s) could not be ingested; they stay claimed",
            report.errors
        );
        report
    } else {
        // In-place ingest of the drop directory's own files would race the claim and
        // archive lifecycle (and re-read archive/ and rejected/ every run).
        let drop_dir = std::fs::canonicalize(&settings.ingest.drop_dir).ok();
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        for p in paths {
            let inside = std::fs::canonicalize(p)
                .ok()
                .zip(drop_dir.as_ref())
                .is_some_and(|(p, d)| p.starts_with(d));
            anyhow::ensure!(
                !inside,
                "{} is inside the drop directory: its files are ingested by `serve`, or by \
                 `ctdata-server ingest` without a path",
                p.display()
            );
            collect_files(p, &mut Walk::default(), &mut files, &mut skipped)?;
        }
        for (path, why) in &skipped {
            tracing::warn!(path = %path.display(), "skipped: {why}");
        }
        let deliverer = Deliverer::new(ingestor.clone(), &settings.ingest.drop_dir);
        let mut receipts = Vec::with_capacity(files.len());
        for file in files {
            let origin = Origin {
                channel: Channel::Cli,
                file_name: file.display().to_string(),
                device: device.map(str::to_string),
                claim: None,
                filing: Filing::InPlace,
                relayed_by: None,
            };
            receipts.push(deliverer.deliver(&file, &origin).await?);
        }
        StepReport {
            receipts,
            skipped,
            ..StepReport::default()
        }
    };
    ingestor.db.close().await;
    Ok(report)
}

/// Folders already walked, by device and inode: a symlink back up the tree is seen once.
#[derive(Default)]
struct Walk {
    folders: std::collections::HashSet<(u64, u64)>,
}

/// Regular files below `path`, following symlinks. Whatever is not a regular file or a
/// folder (a FIFO would block the read forever, a socket or device cannot be a batch)
/// and symlinks that lead nowhere or round in a loop are skipped with the reason. A
/// path named on the command line that does not exist is an error.
fn collect_files(
    path: &Path,
    walk: &mut Walk,
    out: &mut Vec<PathBuf>,
    skipped: &mut Vec<(PathBuf, String)>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if walk.folders.is_empty() && e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{}: {e}", path.display())
        }
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(code) if code == nix::libc::ELOOP => "a symlink loop".to_string(),
                _ => format!("cannot be read: {e}"),
            };
            skipped.push((path.to_path_buf(), why));
            return Ok(());
        }
    };
    if meta.is_dir() {
        if !walk.folders.insert((meta.dev(), meta.ino())) {
            let why = "a folder already walked (a symlink loop)".to_string();
            skipped.push((path.to_path_buf(), why));
            return Ok(());
        }
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if crate::dropdir::is_candidate_name(&e.file_name().to_string_lossy()) {
                collect_files(&e.path(), walk, out, skipped)?;
            }
        }
    } else if meta.is_file() {
        out.push(path.to_path_buf());
    } else {
        let why = "not a regular file (a FIFO, socket or device is never a batch)".to_string();
        skipped.push((path.to_path_buf(), why));
    }
    Ok(())
}

/// One line per receipt, for people and for logs.
pub fn describe(r: &Receipt) -> String {
    let device = r.device.as_deref().unwrap_or("?");
    match r.status {
        Status::Ingested => format!(
            "ingested  {}: {} sightings from {device} ({} new, {} already stored)",
            r.file, r.sightings, r.inserted, r.duplicates
        ),
        Status::Duplicate => format!(
            "duplicate {}: batch already ingested, nothing added",
            r.file
        ),
        Status::Rejected => format!("REJECTED  {}", r.reason.as_deref().unwrap_or(&r.file)),
    }
}

/// `ctdata-server export`: the doc comments are its `--help`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// csv (RFC 4180, UTF-8), geojson (RFC 7946 FeatureCollection), ndjson, or dwca (a
    /// Darwin Core Archive zip for GBIF, described by the [dwca] settings).
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Only sightings that arrived after this cursor. Default: the number in
    /// --cursor-file if it exists, else 0.
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<i64>,
    /// Only sightings observed at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: Option<DateTime<Utc>>,
    /// Only sightings observed before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to: Option<DateTime<Utc>>,
    /// Only this device's sightings.
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Only this species.
    #[arg(long, value_name = "NAME")]
    pub species: Option<String>,
    /// Only sightings inside minLon,minLat,maxLon,maxLat (WGS 84 degrees).
    #[arg(long, value_name = "BBOX", allow_hyphen_values = true)]
    pub bbox: Option<BBox>,
    /// Write here (complete or not at all) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Read the starting cursor from FILE and store the next one there: repeated runs
    /// export each sighting once.
    #[arg(long, value_name = "FILE")]
    pub cursor_file: Option<PathBuf>,
    /// Write a zip instead: the export as sightings.<format> and every photo, recording
    /// or other file attached to an exported sighting under files/<sighting id>/<name>.
    /// Needs --output; not with --format dwca.
    #[arg(long)]
    pub with_attachments: bool,
}

/// Exports to a file (written under a temporary name, renamed when complete) or stdout,
/// and records the next cursor in `cursor_file` when given.
pub async fn export(settings: &Settings, args: ExportArgs) -> anyhow::Result<ExportSummary> {
    let since = match (args.since, &args.cursor_file) {
        (Some(since), _) => since,
        (None, Some(file)) if file.exists() => read_cursor(file)?,
        _ => 0,
    };
    // A Darwin Core Archive needs its metadata settings: refuse before any work.
    let publisher = match args.format {
        ExportFormat::Dwca => Some(Publisher::new(&settings.dwca)?),
        _ => None,
    };
    if args.with_attachments {
        anyhow::ensure!(
            publisher.is_none(),
            "--with-attachments writes csv, geojson or ndjson with the files; a Darwin Core \
             Archive does not carry them"
        );
        let path = args.output.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--with-attachments writes a zip: name it with --output FILE.zip")
        })?;
        crate::export_zip::check_output(path)?;
    }
    let ingestor = open(settings).await?;
    let filter = ExportFilter {
        since,
        until: Some(ingestor.db.safe_cursor().await?),
        from: args.from,
        to: args.to,
        device: args.device,
        species: args.species,
        bbox: args.bbox,
    };
    let summary = match (&publisher, &args.output) {
        (None, Some(path)) if args.with_attachments => {
            let store = crate::attachments::AttachmentStore::new(
                &settings.storage.attachments_dir(&settings.ingest.drop_dir),
            );
            let tmp = path.with_extension("zip.part");
            let file = std::fs::File::create(&tmp)?;
            let (summary, files, file) =
                crate::export_zip::write_zip(&ingestor.db, &store, filter, args.format, file)
                    .await?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            tracing::info!(
                files,
                "export zip: {} rows and {files} attached files",
                summary.rows
            );
            summary
        }
        (Some(publisher), output) => {
            let (summary, file) = match output {
                Some(path) => {
                    let tmp = path.with_extension("zip.part");
                    let file = std::fs::File::create(&tmp)?;
                    let (file, summary) = publisher.write(&ingestor.db, filter, file).await?;
                    file.sync_all()?;
                    std::fs::rename(&tmp, path)?;
                    (summary, None)
                }
                None => {
                    let (file, summary) = publisher
                        .write(&ingestor.db, filter, tempfile::tempfile()?)
                        .await?;
                    (summary, Some(file))
                }
            };
            if let Some(file) = file {
                let mut out = tokio::io::stdout();
                tokio::io::copy(&mut tokio::fs::File::from_std(file), &mut out).await?;
                out.flush().await?;
            }
            tracing::info!(
                occurrences = summary.rows,
                unnamed = summary.unnamed,
                excluded = summary.excluded,
                generalised = summary.generalised,
                unrenderable = summary.unrenderable,
                "darwin core archive: {} occurrences; left out: {} without a species{}, {} of excluded \
                 species, {} with an unreadable time; {} generalised to a grid",
                summary.rows,
                summary.unnamed,
                if summary.unnamed > 0 { " (dwca.allow_unnamed is off)" } else { "" },
                summary.excluded,
                summary.unrenderable,
                summary.generalised,
            );
            ExportSummary {
                rows: summary.rows,
                bytes: summary.bytes,
                next_cursor: summary.next_cursor,
            }
        }
        (None, Some(path)) => {
            let tmp = path.with_extension(format!("{}.part", args.format.extension()));
            let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(&tmp).await?);
            let mut progress = Progress::on_terminal(true);
            let summary = write_export_with(&ingestor.db, filter, args.format, &mut file, |_| {
                progress.row();
                Ok(())
            })
            .await?;
            progress.done(summary.rows, summary.bytes);
            file.flush().await?;
            file.into_inner().sync_all().await?;
            tokio::fs::rename(&tmp, path).await?;
            summary
        }
        (None, None) => {
            let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
            // Not over the rows themselves when they go to the same terminal.
            let mut progress = Progress::on_terminal(!std::io::stdout().is_terminal());
            let summary = write_export_with(&ingestor.db, filter, args.format, &mut out, |_| {
                progress.row();
                Ok(())
            })
            .await?;
            progress.done(summary.rows, summary.bytes);
            summary
        }
    };
    if let Some(file) = &args.cursor_file {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        write_atomic(dir, &name, format!("{}\n", summary.next_cursor).as_bytes())?;
    }
    // The command line has no account: the system user who ran it is who exported.
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    tracing::info!(
        who = format!("command line, user {user}"),
        format = args.format.extension(),
        rows = summary.rows,
        bytes = summary.bytes,
        output = args
            .output
            .as_ref()
            .map_or("stdout".into(), |p| p.display().to_string()),
        "export written"
    );
    ingestor.db.close().await;
    Ok(summary)
}

/// An export's progress on a terminal (standard error): the rows written so far and
/// the rate, redrawn a few times a second; nothing when standard error is not a
/// terminal (piped, logged, run by a timer).
struct Progress {
    shown: bool,
    rows: u64,
    started: std::time::Instant,
    drawn: std::time::Instant,
}

impl Progress {
    /// How often the line is redrawn.
    const EVERY: std::time::Duration = std::time::Duration::from_millis(200);

    fn on_terminal(wanted: bool) -> Progress {
        let now = std::time::Instant::now();
        Progress {
            shown: wanted && std::io::stderr().is_terminal(),
            rows: 0,
            started: now,
            drawn: now,
        }
    }

    fn rate(&self, n: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        format!("{:.0}", n as f64 / secs)
    }

    fn row(&mut self) {
        self.rows += 1;
        if self.shown && (self.rows == 1 || self.drawn.elapsed() >= Self::EVERY) {
            self.drawn = std::time::Instant::now();
            eprint!(
                "\r\x1b[2Kexporting: {} rows, {} rows/s",
                self.rows,
                self.rate(self.rows)
            );
        }
    }

    fn done(&self, rows: u64, bytes: u64) {
        if self.shown {
            eprintln!(
                "\r\x1b[2Kexported {rows} rows ({bytes} bytes) in {:.1} s, {} rows/s",
                self.started.elapsed().as_secs_f64(),
                self.rate(rows)
            );
        }
    }
}

fn read_cursor(file: &Path) -> anyhow::Result<i64> {
    let text = std::fs::read_to_string(file)?;
    text.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "{}: expected a cursor number, found {:?}",
            file.display(),
            text.trim()
        )
    })
}

/// Writes a stream of chunks to `path` (complete or not at all: into `PATH.part`,
/// renamed when whole) or to stdout. Returns the bytes written.
pub async fn write_chunks(
    path: Option<&Path>,
    chunks: impl futures::Stream<Item = std::io::Result<bytes::Bytes>>,
) -> anyhow::Result<u64> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut chunks = std::pin::pin!(chunks);
    let mut bytes = 0;
    let Some(path) = path else {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            out.write_all(&chunk).await?;
            bytes += chunk.len() as u64;
        }
        out.flush().await?;
        return Ok(bytes);
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    let written = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            f.write_all(&chunk).await?;
            bytes += chunk.len() as u64;
        }
        f.sync_all().await?;
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::from(e).context(format!("writing {}", path.display())));
    }
    Ok(bytes)
}
