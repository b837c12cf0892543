//! The `CTData` drop directory: claim by rename → ingest → archive, crash-safe.
//!
//! Layout inside the drop directory (top level only; the names are reserved):
//! `.processing/<device>/<stamp>-<name>` claimed files, `archive/<date>/<device>/…`
//! ingested ones, `rejected/<device>/…` refused ones with a `.reason.txt` beside them,
//! and `receipts/<device>/<name>.receipt.json` for file-based clients to read back.
//! `<device>` is `_` for files delivered at the top level.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use futures::StreamExt;

use crate::ingest::{channel, Delivery, Ingestor, Receipt, Status};

pub const PROCESSING: &str = ".processing";
pub const ARCHIVE: &str = "archive";
pub const REJECTED: &str = "rejected";
pub const RECEIPTS: &str = "receipts";
/// Folder standing for "no device" in the server's own folders.
const NO_DEVICE: &str = "_";

/// What one pass did.
#[derive(Debug, Default, Clone)]
pub struct StepReport {
    pub receipts: Vec<Receipt>,
    /// Files seen but not yet settled.
    pub waiting: usize,
    /// Files that could not be decided (database unreachable…): kept for the next pass.
    pub errors: usize,
}

impl StepReport {
    pub fn count(&self, status: Status) -> usize {
        self.receipts.iter().filter(|r| r.status == status).count()
    }
}

struct Seen {
    size: u64,
    mtime: Option<SystemTime>,
    since: Instant,
    /// Arrived by rename: complete the moment it appeared.
    renamed: bool,
}

pub struct DropDir {
    root: PathBuf,
    ingestor: Ingestor,
    settle: Duration,
    seen: HashMap<PathBuf, Seen>,
}

impl DropDir {
    pub fn new(root: &Path, ingestor: Ingestor, settle: Duration) -> io::Result<DropDir> {
        for dir in [PROCESSING, ARCHIVE, REJECTED, RECEIPTS] {
            fs::create_dir_all(root.join(dir))?;
        }
        Ok(DropDir {
            root: root.to_path_buf(),
            ingestor,
            settle,
            seen: HashMap::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A watcher saw `path` renamed into place: it is complete now.
    pub fn note_renamed(&mut self, path: &Path) {
        if let Ok(meta) = fs::symlink_metadata(path) {
            self.seen.insert(path.to_path_buf(), Seen::new(&meta, true));
        }
    }

    /// How long until a waiting file settles, if any is waiting.
    pub fn next_settle(&self) -> Option<Duration> {
        self.seen
            .values()
            .map(|s| self.settle.saturating_sub(s.since.elapsed()))
            .min()
    }

    /// One pass: claim every settled file, then ingest everything claimed (including
    /// files claimed before a crash), oldest first, starting no new file once `stop` is set.
    pub async fn ingest_once(&mut self, stop: &AtomicBool) -> anyhow::Result<StepReport> {
        let mut report = StepReport::default();
        // Files claimed earlier are ingested even when the delivery area cannot be read.
        match self.settled_files(&mut report) {
            Ok(ready) => {
                for path in ready {
                    if let Err(e) = self.claim(&path) {
                        tracing::warn!(path = %path.display(), "could not claim: {e}");
                    }
                }
            }
            Err(e) => {
                tracing::error!(drop_dir = %self.root.display(), "cannot read the drop directory: {e}");
                report.errors += 1;
            }
        }
        // While one file holds the database's ingest lock, the next is read and hashed
        // and the last one's receipt written, so the database never waits on us.
        let workers = self.ingestor.db.concurrent_loads();
        let claimed = self.claimed_files()?;
        self.make_durable(&claimed).await?;
        let this = &*self;
        let mut results = futures::stream::iter(claimed)
            .take_while(|_| std::future::ready(!stop.load(Ordering::SeqCst)))
            .map(|claimed| async move {
                let result = this.process(&claimed).await;
                (claimed, result)
            })
            .buffered(workers);
        while let Some((claimed, result)) = results.next().await {
            match result {
                Ok(receipt) => report.receipts.push(receipt),
                Err(e) => {
                    tracing::error!(file = %claimed.display(), "ingest failed, will retry: {e:#}");
                    report.errors += 1;
                }
            }
        }
        Ok(report)
    }

    /// Walks the delivery folders and returns files whose size and mtime held still for
    /// the settle time (or that were renamed into place).
    fn settled_files(&mut self, report: &mut StepReport) -> io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        walk(&self.root, true, &mut found)?;
        let mut ready = Vec::new();
        let mut still = HashMap::with_capacity(found.len());
        for (path, meta) in found {
            let mut entry = self
                .seen
                .remove(&path)
                .unwrap_or_else(|| Seen::new(&meta, false));
            if entry.size != meta.len() || entry.mtime != meta.modified().ok() {
                entry = Seen::new(&meta, false);
            }
            if entry.renamed || entry.since.elapsed() >= self.settle {
                ready.push(path);
            } else {
                report.waiting += 1;
                still.insert(path, entry);
            }
        }
        self.seen = still;
        ready.sort();
        Ok(ready)
    }

    /// Atomically takes a file out of the delivery area into `.processing/`.
    fn claim(&self, path: &Path) -> io::Result<PathBuf> {
        let rel = path.strip_prefix(&self.root).map_err(io::Error::other)?;
        let device = match rel.components().count() {
            1 => NO_DEVICE.to_string(),
            _ => rel
                .iter()
                .next()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        claim_into(&self.root, path, &device, &name, channel::SHARE)
    }

    /// FTP uploads are claimed without an fsync, so the client's reply does not wait
    /// for the disk; they are made durable here, before they are ingested. One
    /// `syncfs` covers every file and rename of the pass.
    async fn make_durable(&self, claimed: &[PathBuf]) -> io::Result<()> {
        let from_ftp = claimed.iter().any(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            parse_claim_name(&name).0 == channel::FTP
        });
        if !from_ftp {
            return Ok(());
        }
        let dir = self.root.join(PROCESSING);
        tokio::task::spawn_blocking(move || {
            let fd = fs::File::open(&dir)?;
            nix::unistd::syncfs(&fd).map_err(io::Error::from)
        })
        .await
        .map_err(io::Error::other)?
    }

    fn claimed_files(&self) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for dev in fs::read_dir(self.root.join(PROCESSING))? {
            let dev = dev?;
            if !dev.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(dev.path())? {
                let f = f?;
                if f.file_type()?.is_file() {
                    out.push(f.path());
                }
            }
        }
        // Stamps sort by claim time: oldest first.
        out.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        Ok(out)
    }

    async fn process(&self, claimed: &Path) -> anyhow::Result<Receipt> {
        let claim_name = claimed
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let device_dir = claimed
            .parent()
            .and_then(Path::file_name)
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (channel, original) = parse_claim_name(&claim_name);
        let original = original.to_string();
        let delivery = Delivery {
            path: claimed.to_path_buf(),
            file_name: original.clone(),
            channel: channel.into(),
            device_hint: (device_dir != NO_DEVICE).then(|| device_dir.clone()),
            claim_name: Some(format!("{device_dir}/{claim_name}")),
            rejected_path: Some(rejected_path(&device_dir, &claim_name)),
        };
        let receipt = self.ingestor.ingest(&delivery).await?;
        if let Some(device) = &receipt.device {
            let dir = self.root.join(RECEIPTS).join(device);
            write_atomic(
                &dir,
                &format!("{original}.receipt.json"),
                &serde_json::to_vec_pretty(&receipt)?,
            )?;
        }
        file_away(&self.root, claimed, &device_dir, &receipt)?;
        Ok(receipt)
    }
}

/// Where a decided file ends: `archive/<date>/<device>/` when stored (or already
/// stored), `rejected/<device>/` with its reason beside it when refused. The file keeps
/// its claim name, which is also how the rejection row finds it.
pub fn file_away(
    root: &Path,
    claimed: &Path,
    device_dir: &str,
    receipt: &Receipt,
) -> anyhow::Result<()> {
    let claim_name = claimed.file_name().unwrap_or_default().to_string_lossy();
    match receipt.status {
        Status::Rejected => {
            let dir = root.join(REJECTED).join(device_dir);
            let reason = receipt.reason.as_deref().unwrap_or("rejected");
            write_atomic(
                &dir,
                &format!("{claim_name}.reason.txt"),
                format!("{reason}\n").as_bytes(),
            )?;
            move_file(claimed, &dir.join(&*claim_name))?;
        }
        Status::Ingested | Status::Duplicate => {
            let day = Utc::now().format("%Y-%m-%d").to_string();
            let dir = root.join(ARCHIVE).join(day).join(device_dir);
            move_file(claimed, &dir.join(&*claim_name))?;
        }
    }
    Ok(())
}

/// The drop-directory path a rejected file is kept at (recorded with the rejection).
pub fn rejected_path(device_dir: &str, claim_name: &str) -> String {
    Path::new(REJECTED)
        .join(device_dir)
        .join(claim_name)
        .to_string_lossy()
        .into_owned()
}

impl Seen {
    /// Settling is timed by this server's clock from the first sight of a size and
    /// mtime: a file's mtime comes from whoever wrote it (a share's clock may be behind,
    /// a client may set it), so its age proves nothing.
    fn new(meta: &fs::Metadata, renamed: bool) -> Seen {
        Seen {
            size: meta.len(),
            mtime: meta.modified().ok(),
            since: Instant::now(),
            renamed,
        }
    }
}

/// Claims `path` for `device` into `.processing/<device>/<stamp><tag>-<name>`. The
/// tag names the channel (none for the share), so a file claimed before a crash is
/// ingested after the restart with the channel it came by.
pub fn claim_into(
    root: &Path,
    path: &Path,
    device: &str,
    name: &str,
    channel: &str,
) -> io::Result<PathBuf> {
    let dir = root.join(PROCESSING).join(device);
    fs::create_dir_all(&dir)?;
    let tag = match channel {
        channel::SHARE => String::new(),
        other => format!(".{other}"),
    };
    let dest = dir.join(format!("{}{tag}-{name}", stamp()));
    fs::rename(path, &dest)?;
    Ok(dest)
}

/// The channel and the sender's file name in a claim name `<stamp>[.<channel>]-<name>`.
fn parse_claim_name(claim_name: &str) -> (&str, &str) {
    let Some((head, name)) = claim_name.split_once('-') else {
        return (channel::SHARE, claim_name);
    };
    match head.split_once('.') {
        Some((_, tag)) if tag == channel::FTP => (channel::FTP, name),
        _ => (channel::SHARE, name),
    }
}

/// Whether a top-level name in the drop directory is one of the server's own folders.
pub fn is_server_folder(name: &str) -> bool {
    [
        PROCESSING,
        ARCHIVE,
        REJECTED,
        RECEIPTS,
        crate::sources::PULLING,
    ]
    .contains(&name)
}

/// Whether a device name would be one of the server's folders on some filesystem
/// (a case-insensitive share makes `Archive` the archive): such a name never becomes a
/// device, or its FTP root would be the server's folder.
pub fn is_reserved_name(name: &str) -> bool {
    [
        PROCESSING,
        ARCHIVE,
        REJECTED,
        RECEIPTS,
        crate::http::INCOMING,
    ]
    .iter()
    .any(|f| f.eq_ignore_ascii_case(name))
}

/// Whether a name is a finished delivery rather than a transfer in progress or a
/// hidden file.
pub fn is_candidate_name(name: &str) -> bool {
    !(name.starts_with('.')
        || name.ends_with(".part")
        || name.ends_with(".tmp")
        || name.ends_with('~')
        || name.ends_with(".partial")
        || name.ends_with(".filepart"))
}

/// Regular files below `dir`, skipping the server's folders at the top level,
/// temporary names, and symlinks (which could point anywhere).
fn walk(dir: &Path, top: bool, out: &mut Vec<(PathBuf, fs::Metadata)>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if top => return Err(e),
        Err(e) => {
            // One unreadable folder (a lost+found, another user's upload folder) must
            // not stop every other delivery.
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(folder = %dir.display(), "skipping a folder that cannot be read: {e}");
            }
            return Ok(());
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_candidate_name(&name) || (top && is_server_folder(&name)) {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if meta.is_dir() {
            walk(&entry.path(), false, out)?;
        } else if meta.is_file() {
            out.push((entry.path(), meta));
        }
    }
    Ok(())
}

/// A claim name prefix that sorts by time and never repeats within a process.
pub fn stamp() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    format!("{}{seq:06}", Utc::now().format("%Y%m%dT%H%M%S%9f"))
}

/// Write to a temporary name, fsync, rename: readers never see half a file.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))
}

/// Moves a processed file; another process finishing it first is not an error.
///
/// No directory fsync: a rename lost to a power cut only brings the file back to be
/// looked at again, and the batch id (or claim name) makes that a no-op. What must be
/// durable is the commit, which precedes every move.
fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !from.exists() => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_carry_the_channel() {
        let c = |name| parse_claim_name(name);
        assert_eq!(
            c("20261122T101010123456789000001-a-b.json"),
            ("share", "a-b.json")
        );
        assert_eq!(
            c("20261122T101010123456789000001.ftp-x.json"),
            ("ftp", "x.json")
        );
        assert_eq!(
            c("20261122T101010123456789000001.zz-x.json"),
            ("share", "x.json")
        );
        assert!(is_reserved_name("Archive") && is_reserved_name("RECEIPTS"));
        assert!(!is_reserved_name("archive2") && !is_server_folder("Archive"));
    }
}
