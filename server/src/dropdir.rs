//! The `CTData` drop directory as a channel: claim by rename → deliver, crash-safe.
//!
//! Files dropped into the share (and FTP uploads, which the FTP server claims itself)
//! are claimed into `.processing/<device>/` and handed to [`crate::deliver`], which
//! ingests them and files them away; the folders are those of [`crate::layout`].
//! `<device>` is `_` for files delivered at the top level.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::deliver::{Delivered, Deliverer, Filing, Origin, Unfiled};
use crate::ingest::{Ingestor, Receipt, Status, BURST};
use crate::layout::{
    self, claim_head, is_server_folder, parse_claim_name, write_atomic, DROP_DIR_FOLDERS,
    NO_DEVICE, PROCESSING,
};
use crate::profile::{self, Phase};
use crate::types::Channel;

/// Longest claim name: the claim plus `.reason.txt` and a temporary-name prefix and
/// suffix must fit a filesystem's 255-byte name limit.
const CLAIM_MAX: usize = 200;

/// What one pass did.
#[derive(Debug, Default, Clone)]
pub struct StepReport {
    pub receipts: Vec<Receipt>,
    /// Files seen but not yet settled.
    pub waiting: usize,
    /// Files that could not be decided (database unreachable…): kept for the next pass.
    pub errors: usize,
    /// The drop directory itself cannot be read (share unmounted): nothing was done.
    pub unavailable: bool,
    /// Paths a one-shot ingest passed over, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
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
    /// Settled, but in another live replica's share since then: left to it for
    /// [`LEFTOVER_GRACE`].
    others_since: Option<Instant>,
}

/// How long a settled file in another live replica's share is left to that replica
/// before this one takes it: the owner may be busy with a burst of its own, or
/// stalled without having lost its lease yet.
const LEFTOVER_GRACE: Duration = Duration::from_secs(3);
/// Other replicas' leftovers this one takes in one pass at least (see
/// [`DropDir::settled_files`]).
const LEFTOVERS_MIN: usize = 64;
/// How long the replicas' leases read for a pass may serve the next passes too.
const LIVE_FRESH: Duration = Duration::from_secs(1);

/// How the settled files of the shared drop directory are spread over the live
/// replicas, so they claim side by side rather than race for the same files: each
/// file belongs to one of them by rendezvous hashing of its path (relative to the
/// drop directory, which replicas may mount at different places). A replica that
/// joins or leaves moves only its own share. Claims stay atomic renames: the share
/// only says who tries first.
#[derive(Debug, Clone)]
struct Share {
    me: String,
    /// The live replicas, this one among them.
    live: Vec<String>,
    read: Instant,
}

impl Share {
    /// Whether `rel` is this replica's to claim first.
    fn is_mine(&self, rel: &Path) -> bool {
        let owner = self
            .live
            .iter()
            .max_by_key(|r| (rank(r, rel), std::cmp::Reverse(r.as_str())));
        owner.is_none_or(|r| *r == self.me)
    }
}

/// A stable, well-spread 64-bit score of a replica for a path (FNV-1a and a final
/// mix): the same on every replica, machine and build.
fn rank(replica: &str, rel: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = replica
        .as_bytes()
        .iter()
        .chain(&[0xff])
        .chain(rel.as_os_str().as_bytes());
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A share file that was cut short when taken, put back to be finished.
struct Held {
    size: u64,
    mtime: Option<SystemTime>,
    /// When it last changed, by this server's clock.
    changed: Instant,
}

/// A settled share file about to be claimed, and whether it may still be being written.
struct Take {
    original: PathBuf,
    changed: Instant,
}

/// Files up to this size are loaded many at a time; larger ones
/// [`crate::db::Db::concurrent_loads`] at a time.
const SMALL_FILE: u64 = 1 << 20;

/// More files than this in one pass are a burst: progress lines instead of one per file.
const BURST_FILES: usize = 5;
/// How often a burst logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Claimed files named one by one when resuming after a crash; the rest are counted.
const RESUMED_NAMED: usize = 20;

/// How far a pass through a burst of files got.
struct Progress {
    queued: usize,
    done: usize,
    ingested: usize,
    duplicate: usize,
    rejected: usize,
    errors: usize,
    started: Instant,
    logged: Instant,
}

impl Progress {
    fn new(queued: usize) -> Progress {
        Progress {
            queued,
            done: 0,
            ingested: 0,
            duplicate: 0,
            rejected: 0,
            errors: 0,
            started: Instant::now(),
            logged: Instant::now(),
        }
    }

    fn count(&mut self, result: &anyhow::Result<Processed>) {
        self.done += 1;
        let status = match result {
            Ok(Processed::Decided(r)) | Ok(Processed::RejectedIncomplete(r, ..)) => r.status,
            Ok(Processed::Unfiled(u)) => u.receipt.status,
            Ok(Processed::PutBack(..)) => return,
            // Filed by another replica, which counts it.
            Err(e) if e.is::<crate::ingest::Gone>() => return,
            Err(_) => {
                self.errors += 1;
                return;
            }
        };
        match status {
            Status::Ingested => self.ingested += 1,
            Status::Duplicate => self.duplicate += 1,
            Status::Rejected => self.rejected += 1,
        }
    }

    fn log(&mut self, what: &str) {
        self.logged = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!(
            done = self.done,
            queued = self.queued,
            ingested = self.ingested,
            duplicate = self.duplicate,
            rejected = self.rejected,
            errors = self.errors,
            files_per_sec = format!("{:.1}", self.done as f64 / secs.max(0.001)),
            "{what}"
        );
    }
}

/// What processing one claimed file came to.
enum Processed {
    /// Decided and filed away.
    Decided(Receipt),
    /// Decided; to be filed away with the others of its group.
    Unfiled(Unfiled),
    /// Cut short within the grace: back under its own name.
    PutBack(PathBuf, Held),
    /// Rejected as cut short: watched in `rejected/` (at the first path, with the size
    /// and mtime it was judged by) in case its writer goes on.
    RejectedIncomplete(Receipt, PathBuf, Held, PathBuf),
}

pub struct DropDir {
    root: PathBuf,
    deliverer: Deliverer,
    settle: Duration,
    seen: HashMap<PathBuf, Seen>,
    grace: Duration,
    /// One-shot runs have no memory of earlier looks: a file's mtime dates its last change.
    date_by_mtime: bool,
    /// Share files with a write seen since their last close (inotify), and when.
    writing: HashMap<PathBuf, Instant>,
    held: HashMap<PathBuf, Held>,
    /// Incomplete files rejected: `rejected/` path → (size, mtime, original path).
    rejected_incomplete: HashMap<PathBuf, (u64, Option<SystemTime>, PathBuf)>,
    /// Why the drop directory cannot be read, while it cannot.
    unavailable: Option<String>,
    /// Whether the claims a crash left behind were looked for (once, at the first pass).
    resumes_told: bool,
    /// This server's name among several sharing the database and this folder: claims
    /// naming another replica wait until its lease has run out.
    replica: Option<String>,
    /// Replicas whose claims were last found taken over, so it is said once.
    taken_over: HashSet<String>,
    /// The live replicas as last read, spreading the claims over them.
    share: Option<Share>,
}

impl DropDir {
    pub fn new(root: &Path, ingestor: Ingestor, settle: Duration) -> io::Result<DropDir> {
        for dir in DROP_DIR_FOLDERS {
            fs::create_dir_all(root.join(dir))?;
        }
        Ok(DropDir {
            root: root.to_path_buf(),
            deliverer: Deliverer::new(ingestor, root),
            settle,
            seen: HashMap::new(),
            grace: Duration::ZERO,
            date_by_mtime: false,
            writing: HashMap::new(),
            held: HashMap::new(),
            rejected_incomplete: HashMap::new(),
            unavailable: None,
            resumes_told: false,
            replica: None,
            taken_over: HashSet::new(),
            share: None,
        })
    }

    /// How long a file that is cut short may wait for the rest after its last change.
    pub fn with_incomplete_grace(mut self, grace: Duration) -> DropDir {
        self.grace = grace;
        self
    }

    /// One of several replicas on one database and drop directory: leaves the claims of
    /// the others alone while their lease runs.
    pub fn as_replica(mut self, name: &str) -> DropDir {
        self.replica = Some(name.to_string());
        self
    }

    /// For one-shot runs: date a file's last change by its mtime (when in the past).
    pub fn dating_by_mtime(mut self) -> DropDir {
        self.date_by_mtime = true;
        self
    }

    /// A watcher saw data written to `path`: it is open for writing until closed.
    pub fn note_written(&mut self, path: &Path) {
        self.writing.insert(path.to_path_buf(), Instant::now());
    }

    /// A watcher saw `path` closed after writing.
    pub fn note_closed(&mut self, path: &Path) {
        self.writing.remove(path);
    }

    /// Whether the last pass found the drop directory unreadable.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable.is_some()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A watcher saw `path` renamed into place: it is complete now.
    pub fn note_renamed(&mut self, path: &Path) {
        self.writing.remove(path);
        if let Ok(meta) = fs::symlink_metadata(path) {
            self.seen.insert(path.to_path_buf(), Seen::new(&meta, true));
        }
    }

    /// How long until a waiting file settles (or another replica's leftover is due),
    /// if any is waiting.
    pub fn next_settle(&self) -> Option<Duration> {
        self.seen
            .values()
            .map(|s| match s.others_since {
                Some(since) => LEFTOVER_GRACE.saturating_sub(since.elapsed()),
                None => self.settle.saturating_sub(s.since.elapsed()),
            })
            .min()
    }

    /// One pass: claim every settled file, then ingest everything claimed (including
    /// files claimed before a crash), oldest first, starting no new file once `stop` is cancelled.
    pub async fn ingest_once(&mut self, stop: &CancellationToken) -> anyhow::Result<StepReport> {
        let mut report = StepReport::default();
        if !self.check_available() {
            report.unavailable = true;
            return Ok(report);
        }
        self.requeue_grown_rejections().await;
        if !self.resumes_told {
            self.resumes_told = true;
            self.tell_resumed();
        }
        let mut takes = HashMap::new();
        self.read_share().await;
        // Files claimed earlier are ingested even when the delivery area cannot be read.
        let walked = Instant::now();
        let settled = self.settled_files(&mut report);
        profile::add(Phase::Walk, walked, 1);
        match settled {
            Ok(ready) => {
                for (path, take) in ready {
                    match profile::time(Phase::Claim, || self.claim(&path)) {
                        Ok(claimed) => {
                            if let Some(take) = take {
                                takes.insert(claimed, take);
                            }
                        }
                        // Another replica (or a writer) took it first.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            tracing::debug!(path = %path.display(), "gone before it was claimed")
                        }
                        Err(e) => tracing::warn!(path = %path.display(), "could not claim: {e}"),
                    }
                }
            }
            // Gone since the check above (unmounted mid-pass): reported once, as such.
            Err(_) if !self.check_available() => {
                report.unavailable = true;
                return Ok(report);
            }
            Err(e) => {
                tracing::error!(drop_dir = %self.root.display(), "cannot read the drop directory: {e}");
                report.errors += 1;
            }
        }
        let claimed = match self.claimed_files() {
            Ok(claimed) => claimed,
            Err(_) if !self.check_available() => {
                report.unavailable = true;
                return Ok(report);
            }
            Err(e) => return Err(e.into()),
        };
        let claimed = self.mine(claimed).await;
        profile::time_async(Phase::Durable, self.make_durable(&claimed)).await?;
        let burst = claimed.len() > BURST_FILES;
        let mut progress = burst.then(|| Progress::new(claimed.len()));
        if burst {
            tracing::info!(
                files = claimed.len(),
                "ingesting a burst of files: progress every {}s, each file at debug level",
                PROGRESS_EVERY.as_secs()
            );
        }
        // Of several claims of one sender's file (a name sent again before the first
        // was filed), one per round, oldest first: the later is decided only once the
        // earlier is filed away with its receipt, whichever filing group or path each
        // takes, so the receipt that stays is the later claim's.
        let mut queue = claimed;
        while !queue.is_empty() && !stop.is_cancelled() {
            let (now, later) = one_per_name(queue);
            let failed = self
                .round(now, &takes, burst, &mut progress, &mut report, stop)
                .await?;
            // Claims behind one that failed wait for it (the next pass tries it first).
            let blocked: HashSet<(String, String)> = failed.iter().map(|p| name_key(p)).collect();
            queue = later
                .into_iter()
                .filter(|p| !blocked.contains(&name_key(p)))
                .collect();
        }
        if let Some(p) = &mut progress {
            p.log("burst of files done");
            profile::report(p.done, p.started.elapsed().as_secs_f64());
        }
        Ok(report)
    }

    /// One round of [`DropDir::ingest_once`]: decides `claimed` many at a time and files
    /// the decided files away in groups. Returns the claims that could not be decided
    /// or filed away: they stay claimed, for the next pass.
    async fn round(
        &mut self,
        claimed: Vec<PathBuf>,
        takes: &HashMap<PathBuf, Take>,
        burst: bool,
        progress: &mut Option<Progress>,
        report: &mut StepReport,
        stop: &CancellationToken,
    ) -> anyhow::Result<Vec<PathBuf>> {
        // Many small files are in flight at once, as many HTTP uploads are: each waits
        // on its own commit while the others are read and sent. Large files take one of
        // fewer places, so the rows read ahead for them stay few.
        let db = &self.deliverer.ingestor.db;
        let workers = db.concurrent_small_loads();
        let large = tokio::sync::Semaphore::new(db.concurrent_loads());
        let mut failed = Vec::new();
        let this = &*self;
        let large = &large;
        let mut results = futures::stream::iter(claimed)
            .take_while(|_| std::future::ready(!stop.is_cancelled()))
            .map(|claimed| {
                let take = takes.get(&claimed);
                async move {
                    let size = fs::metadata(&claimed).map_or(0, |m| m.len());
                    let _place = match size > SMALL_FILE {
                        true => large.acquire().await.ok(),
                        false => None,
                    };
                    let result = BURST.scope(burst, this.process(&claimed, take)).await;
                    (claimed, result)
                }
            })
            .buffer_unordered(workers);
        let mut held = Vec::new();
        let mut watch = Vec::new();
        // Decided files are filed away in groups, each group while the next decides:
        // whatever was decided during one group's disk sync makes up the next.
        let mut unfiled: Vec<Unfiled> = Vec::new();
        let mut filing: Option<tokio::task::JoinHandle<(Vec<Unfiled>, anyhow::Result<()>)>> = None;
        let mut finished = false;
        while !finished || filing.is_some() || !unfiled.is_empty() {
            if filing.is_none() && !unfiled.is_empty() {
                let group = std::mem::take(&mut unfiled);
                let deliverer = self.deliverer.clone();
                filing = Some(tokio::task::spawn_blocking(move || {
                    let filed = deliverer.file_away_all(&group);
                    (group, filed)
                }));
            }
            tokio::select! {
                biased;
                done = async { filing.as_mut().expect("a group being filed").await }, if filing.is_some() => {
                    filing = None;
                    let (group, filed) = done?;
                    match filed {
                        Ok(()) => report.receipts.extend(group.into_iter().map(|u| u.receipt)),
                        Err(e) => {
                            tracing::error!(files = group.len(), "filing stored files away failed, will retry: {e:#}");
                            report.errors += group.len();
                            failed.extend(group.into_iter().map(|u| u.file));
                        }
                    }
                }
                next = results.next(), if !finished => {
                    let Some((claimed, result)) = next else {
                        finished = true;
                        continue;
                    };
                    if let Some(p) = progress.as_mut() {
                        p.count(&result);
                        if p.logged.elapsed() >= PROGRESS_EVERY {
                            p.log("ingesting a burst of files");
                        }
                    }
                    match result {
                        Ok(Processed::Decided(receipt)) => report.receipts.push(receipt),
                        Ok(Processed::Unfiled(u)) => unfiled.push(u),
                        Ok(Processed::PutBack(original, h)) => {
                            report.waiting += 1;
                            held.push((original, h));
                        }
                        Ok(Processed::RejectedIncomplete(receipt, at, judged, original)) => {
                            report.receipts.push(receipt);
                            watch.push((at, (judged.size, judged.mtime, original)));
                        }
                        Err(e) if e.is::<crate::ingest::Gone>() => {
                            tracing::info!(file = %claimed.display(), "a claimed file is gone: another replica took it over and filed it");
                        }
                        Err(e) => {
                            tracing::error!(file = %claimed.display(), "ingest failed, will retry: {e:#}");
                            report.errors += 1;
                            failed.push(claimed);
                        }
                    }
                }
            }
        }
        drop(results);
        self.held.extend(held);
        self.rejected_incomplete.extend(watch);
        Ok(failed)
    }

    /// Names the files a crash left claimed in `.processing/`: they are ingested now,
    /// and an operator who wonders what happened to them finds them here.
    fn tell_resumed(&self) {
        let claimed = match self.claimed_files() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(drop_dir = %self.root.display(), "cannot list {PROCESSING}: {e}");
                return;
            }
        };
        if claimed.is_empty() {
            return;
        }
        let mut names: Vec<String> = claimed
            .iter()
            .take(RESUMED_NAMED)
            .map(|p| {
                p.strip_prefix(self.root.join(PROCESSING))
                    .unwrap_or(p)
                    .display()
                    .to_string()
            })
            .collect();
        if claimed.len() > RESUMED_NAMED {
            names.push(format!("and {} more", claimed.len() - RESUMED_NAMED));
        }
        tracing::info!(
            drop_dir = %self.root.display(),
            count = claimed.len(),
            "resuming {} file(s) claimed before the last stop: {}",
            claimed.len(),
            names.join(", ")
        );
    }

    /// Whether the drop directory can be read; reports a change either way once. A
    /// missing drop directory is waited for, never created: that would be a folder on
    /// the disk below an unmounted share.
    fn check_available(&mut self) -> bool {
        let problem = match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => fs::read_dir(&self.root).err().map(|e| e.to_string()),
            Ok(_) => Some("not a directory".to_string()),
            Err(e) => Some(e.to_string()),
        };
        let problem = problem.or_else(|| {
            DROP_DIR_FOLDERS
                .iter()
                .find_map(|dir| match fs::create_dir(self.root.join(dir)) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        Some(format!("cannot create {dir}: {e}"))
                    }
                    _ => None,
                })
        });
        match (&problem, &self.unavailable) {
            (Some(p), None) => tracing::error!(
                drop_dir = %self.root.display(),
                "the drop directory cannot be read ({p}); ingest from it waits until it is back"
            ),
            (None, Some(_)) => {
                tracing::info!(drop_dir = %self.root.display(), "the drop directory is back")
            }
            _ => {}
        }
        let changed = problem != self.unavailable;
        self.unavailable = problem;
        if changed {
            let shown = self
                .unavailable
                .as_ref()
                .map(|p| format!("drop directory {}: {p}", self.root.display()));
            self.deliverer.ingestor.metrics.set_drop_dir_problem(shown);
        }
        self.unavailable.is_none()
    }

    /// A file rejected as cut short whose writer still had it open goes on growing in
    /// `rejected/`: put it back under its own name to be looked at again.
    async fn requeue_grown_rejections(&mut self) {
        let mut grown = Vec::new();
        self.rejected_incomplete
            .retain(|at, (size, mtime, original)| match fs::metadata(at) {
                Err(_) => false,
                Ok(meta) if meta.len() == *size && meta.modified().ok() == *mtime => true,
                Ok(_) => {
                    grown.push((at.clone(), original.clone()));
                    false
                }
            });
        for (at, original) in grown {
            match put_back(&at, &original) {
                Ok(()) => {
                    let name = at.file_name().unwrap_or_default().to_string_lossy();
                    let _ = fs::remove_file(layout::reason_file(&at));
                    let claim = format!("{}/{name}", layout::parent_name(&at));
                    if let Err(e) = self.deliverer.ingestor.db.requeue_rejection(&claim).await {
                        tracing::warn!(claim, "could not mark the rejection requeued: {e}");
                    }
                    tracing::info!(file = %original.display(), "a file rejected as cut short grew: looking at it again");
                }
                Err(e) => tracing::warn!(
                    file = %at.display(),
                    "a file rejected as cut short grew but cannot go back to {}: {e}",
                    original.display()
                ),
            }
        }
    }

    /// Walks the delivery folders and returns files whose size and mtime held still for
    /// the settle time (or that were renamed into place).
    /// A file cut short, or one still open for writing, waits for its writer until it
    /// has not changed for the incomplete grace; then it is taken and decided.
    fn settled_files(
        &mut self,
        report: &mut StepReport,
    ) -> io::Result<Vec<(PathBuf, Option<Take>)>> {
        let mut found = Vec::new();
        walk(&self.root, true, &mut found)?;
        let present: HashSet<&PathBuf> = found.iter().map(|(p, _)| p).collect();
        self.held.retain(|p, _| present.contains(p));
        self.writing.retain(|p, _| present.contains(p));
        let mut ready = Vec::new();
        let mut leftovers = Vec::new();
        let mut still = HashMap::with_capacity(found.len());
        for (path, meta) in found {
            let mut entry = self
                .seen
                .remove(&path)
                .unwrap_or_else(|| self.first_sight(&meta));
            if entry.size != meta.len() || entry.mtime != meta.modified().ok() {
                entry = Seen::new(&meta, false);
            }
            if let Some(held) = self.held.get(&path) {
                if held.size == meta.len() && held.mtime == meta.modified().ok() {
                    if held.changed.elapsed() < self.grace {
                        report.waiting += 1;
                        continue;
                    }
                    // Nothing more came within the grace: decide it as it is.
                    let changed = held.changed;
                    self.held.remove(&path);
                    let take = Take {
                        original: path.clone(),
                        changed,
                    };
                    ready.push((path, Some(take)));
                    continue;
                }
                self.held.remove(&path);
            }
            // An empty file is a writer that has not started yet.
            let open = (meta.len() == 0 || self.writing.contains_key(&path))
                && entry.since.elapsed() < self.grace;
            if !entry.renamed && (open || entry.since.elapsed() < self.settle) {
                report.waiting += 1;
                still.insert(path, entry);
                continue;
            }
            let take = (!entry.renamed).then(|| Take {
                original: path.clone(),
                changed: entry.since,
            });
            let rel = path.strip_prefix(&self.root).unwrap_or(&path);
            match &self.share {
                Some(share) if !share.is_mine(rel) => {
                    let since = *entry.others_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < LEFTOVER_GRACE {
                        still.insert(path, entry);
                        continue;
                    }
                    // Its owner has not taken it in time: this replica may.
                    let order = rank(&share.me, rel);
                    leftovers.push((order, path, take, entry));
                }
                _ => ready.push((path, take)),
            }
        }
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        // Others' leftovers after its own, in an order of this replica's (not by name,
        // in which every replica taking leftovers would go for the same files first),
        // and only its part of them in one pass: their owners, done with what they
        // have in hand, take the rest rather than stand idle while this one works.
        leftovers.sort_by_key(|a| a.0);
        let live = self.share.as_ref().map_or(1, |s| s.live.len());
        let part = leftovers.len().div_ceil(live).max(LEFTOVERS_MIN);
        for (k, (_, path, take, entry)) in leftovers.into_iter().enumerate() {
            match k < part {
                true => ready.push((path, take)),
                false => {
                    still.insert(path, entry);
                }
            }
        }
        self.seen = still;
        Ok(ready)
    }

    fn first_sight(&self, meta: &fs::Metadata) -> Seen {
        let mut seen = Seen::new(meta, false);
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        if let Some(age) = age.filter(|_| self.date_by_mtime) {
            seen.since = Instant::now().checked_sub(age).unwrap_or(seen.since);
        }
        seen
    }

    /// Atomically takes a file out of the delivery area into `.processing/`.
    fn claim(&self, path: &Path) -> io::Result<PathBuf> {
        let rel = path.strip_prefix(&self.root).map_err(io::Error::other)?;
        let mut device = match rel.components().count() {
            1 => NO_DEVICE.to_string(),
            _ => rel
                .iter()
                .next()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        };
        // `<station>/relay/<device>/…`: the station delivers files a handheld recorded.
        let below = rel.iter().skip(1).collect::<PathBuf>();
        if let Some(handheld) = layout::relayed_device(&below).filter(|_| device != NO_DEVICE) {
            device = layout::relay_claim_dir(&handheld, &device);
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        claim_into(&self.root, path, &device, &name, Channel::Share)
    }

    /// FTP uploads are claimed without an fsync, so the client's reply does not wait
    /// for the disk; they are made durable here, before they are ingested. One
    /// `syncfs` covers every file and rename of the pass.
    async fn make_durable(&self, claimed: &[PathBuf]) -> io::Result<()> {
        let from_ftp = claimed.iter().any(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            parse_claim_name(&name).0 == Channel::Ftp
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

    /// Reads which replicas are live (at most every [`LIVE_FRESH`]), for a replica;
    /// while the database cannot say, the last answer stands, or this one alone.
    async fn read_share(&mut self) {
        let Some(me) = self.replica.clone() else {
            return;
        };
        if self
            .share
            .as_ref()
            .is_some_and(|s| s.read.elapsed() < LIVE_FRESH)
        {
            return;
        }
        let live = match crate::replica::Replica::live(&self.deliverer.ingestor.db).await {
            Ok(live) => live.into_iter().collect(),
            Err(e) => {
                tracing::debug!("cannot read the replicas' leases to share new files: {e:#}");
                self.share.take().map(|s| s.live).unwrap_or_default()
            }
        };
        let mut live: Vec<String> = live;
        // Itself, even with its lease run out (its heartbeat failing): it still claims.
        if !live.contains(&me) {
            live.push(me.clone());
        }
        live.sort();
        self.share = Some(Share {
            me,
            live,
            read: Instant::now(),
        });
    }

    /// Of the claimed files, those this server decides: all of them for a lone server;
    /// for a replica its own, those of no replica, and those of replicas whose lease
    /// has run out (taken over). While the database cannot say which leases run, only
    /// its own and those of no replica.
    async fn mine(&mut self, claimed: Vec<PathBuf>) -> Vec<PathBuf> {
        let Some(me) = self.replica.clone() else {
            return claimed;
        };
        let others = claimed.iter().any(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            layout::claim_replica(&name).is_some_and(|r| r != me)
        });
        if !others {
            return claimed;
        }
        // Read now, after the claims were listed, never from an earlier read: a
        // replica that started since has claims here and a lease that runs.
        let live = match crate::replica::Replica::live(&self.deliverer.ingestor.db).await {
            Ok(live) => Some(live),
            Err(e) => {
                tracing::warn!("cannot read the replicas' leases; their claims wait: {e:#}");
                None
            }
        };
        let mut taken = HashSet::new();
        let kept = claimed
            .into_iter()
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                match layout::claim_replica(&name) {
                    None => true,
                    Some(r) if r == me => true,
                    Some(r) => match &live {
                        Some(live) if !live.contains(r) => {
                            taken.insert(r.to_string());
                            true
                        }
                        _ => false,
                    },
                }
            })
            .collect();
        for r in taken.difference(&self.taken_over) {
            tracing::info!(
                replica = r,
                "taking over the files replica {r} claimed: its lease has run out"
            );
        }
        self.taken_over = taken;
        kept
    }

    fn claimed_files(&self) -> io::Result<Vec<PathBuf>> {
        // An entry gone between the listing and its look (filed away by another
        // replica; on a network share the listing may be seconds old) is skipped.
        fn present<T>(r: io::Result<T>) -> io::Result<Option<T>> {
            match r {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        }
        let mut out = Vec::new();
        for dev in fs::read_dir(self.root.join(PROCESSING))? {
            let dev = dev?;
            if !present(dev.file_type())?.is_some_and(|t| t.is_dir()) {
                continue;
            }
            let Some(files) = present(fs::read_dir(dev.path()))? else {
                continue;
            };
            for f in files {
                let Some(f) = present(f)? else { continue };
                // Dot names are the sidecars of cut claim names.
                if present(f.file_type())?.is_some_and(|t| t.is_file())
                    && !f.file_name().to_string_lossy().starts_with('.')
                {
                    out.push(f.path());
                }
            }
        }
        // Stamps sort by claim time: oldest first.
        out.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        Ok(out)
    }

    async fn process(&self, claimed: &Path, take: Option<&Take>) -> anyhow::Result<Processed> {
        let claim_name = claimed
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let device_dir = layout::parent_name(claimed);
        let (channel, original, cut) = parse_claim_name(&claim_name);
        let original = match cut {
            true => fs::read_to_string(sidecar(claimed)).unwrap_or_else(|_| original.to_string()),
            false => original.to_string(),
        };
        let origin = Origin {
            channel,
            file_name: original,
            device: layout::device_of_dir(&device_dir).map(str::to_string),
            claim: Some(format!("{device_dir}/{claim_name}")),
            filing: Filing::DropDirWithReceipt,
            relayed_by: layout::relayer_of_dir(&device_dir).map(str::to_string),
        };
        // What the decision is based on: a writer may go on after it.
        let judged = Held::new(claimed, Instant::now());
        let deliverer = &self.deliverer;
        // A cut claim name's sidecar goes once the file is filed: that one is filed now.
        let wait = take.is_some();
        // A CyberTracker `.OUT` (a password in plain text) is deleted at once, not
        // grouped with the files waiting to be filed away.
        let now = cut || crate::sendcreds::is_send_data(claimed, &origin.file_name);
        // Only a file that may still be written (`take`) waits for the rest: one
        // renamed into place, left claimed by a crash or taken over from a replica is
        // decided now, a cut-off one rejected as truncated.
        let decided = match (now, wait) {
            (true, true) => deliverer.deliver_or_wait(claimed, &origin).await?,
            (true, false) => Delivered::Filed(deliverer.deliver(claimed, &origin).await?),
            (false, _) => deliverer.decide_unfiled(claimed, &origin, wait).await?,
        };
        let cut_short = match decided {
            Delivered::Filed(receipt) if now => {
                if cut {
                    let _ = fs::remove_file(sidecar(claimed));
                }
                return Ok(Processed::Decided(receipt));
            }
            Delivered::Filed(receipt) => {
                return Ok(Processed::Unfiled(Unfiled {
                    file: claimed.to_path_buf(),
                    origin,
                    receipt,
                }))
            }
            Delivered::Incomplete(cut_short) => cut_short,
        };
        let Some(take) = take else {
            unreachable!("only asked to wait for a file that may still be written")
        };
        if take.changed.elapsed() < self.grace {
            match put_back(claimed, &take.original) {
                Ok(()) => {
                    return Ok(Processed::PutBack(
                        take.original.clone(),
                        Held::new(&take.original, take.changed),
                    ))
                }
                Err(e) => tracing::warn!(
                    file = %take.original.display(),
                    "a file cut short cannot go back to wait for the rest: {e}"
                ),
            }
        }
        let receipt = deliverer
            .reject_incomplete(claimed, &origin, cut_short)
            .await?;
        if cut {
            let _ = fs::remove_file(sidecar(claimed));
        }
        let filed_under = layout::device_dir(origin.device.as_deref());
        let at = self
            .root
            .join(layout::rejected_relative(filed_under, &claim_name));
        Ok(Processed::RejectedIncomplete(
            receipt,
            at,
            judged,
            take.original.clone(),
        ))
    }
}

impl Held {
    fn new(path: &Path, changed: Instant) -> Held {
        let meta = fs::metadata(path).ok();
        Held {
            size: meta.as_ref().map_or(0, fs::Metadata::len),
            mtime: meta.and_then(|m| m.modified().ok()),
            changed,
        }
    }
}

/// Which sender file a claim is of, for keeping several claims of one in claim
/// order: its device folder and the name it was sent as (cut, for a cut name).
fn name_key(claimed: &Path) -> (String, String) {
    let claim = claimed.file_name().unwrap_or_default().to_string_lossy();
    let (_, name, _) = parse_claim_name(&claim);
    (layout::parent_name(claimed), name.to_string())
}

/// Splits claims (oldest first) into those to decide now, at most one per sender
/// file, and the later claims of the same files. A file at the top level (no device
/// folder) may be filed under any device, so it goes alone among those of its name.
fn one_per_name(claimed: Vec<PathBuf>) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut devices: HashMap<String, HashSet<String>> = HashMap::new();
    let (mut now, mut later) = (Vec::with_capacity(claimed.len()), Vec::new());
    for path in claimed {
        let (device, name) = name_key(&path);
        let taken = devices.entry(name).or_default();
        let clash = taken.contains(&device)
            || taken.contains(NO_DEVICE)
            || (device == NO_DEVICE && !taken.is_empty());
        if clash {
            later.push(path);
        } else {
            taken.insert(device);
            now.push(path);
        }
    }
    (now, later)
}

/// Moves `from` back to `to` unless something else now has that name (a writer that
/// reopened it by name): a hard link cannot replace a file, a plain rename could.
fn put_back(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => fs::remove_file(from),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        // Some shares have no hard links: the small window of a plain rename it is.
        Err(_) if !to.exists() => fs::rename(from, to),
        Err(e) => Err(e),
    }
}

/// Holds the full sender name of a claim whose name was cut to fit.
fn sidecar(claimed: &Path) -> PathBuf {
    let name = claimed.file_name().unwrap_or_default().to_string_lossy();
    claimed.with_file_name(format!(".{name}.name"))
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
            others_since: None,
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
    channel: Channel,
) -> io::Result<PathBuf> {
    let dir = root.join(PROCESSING).join(device);
    fs::create_dir_all(&dir)?;
    let head = claim_head(channel);
    // A long sender name is cut to keep the claim (and the names made from it) within
    // the filesystem's limit; the whole name waits in a sidecar for the database.
    let room = CLAIM_MAX - head.len() - layout::CUT_TAG.len() - 2;
    let dest = if name.len() + head.len() < CLAIM_MAX {
        dir.join(format!("{head}-{name}"))
    } else {
        let mut end = room;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let dest = dir.join(format!("{head}.{}-{}", layout::CUT_TAG, &name[..end]));
        let side = sidecar(&dest);
        write_atomic(
            &dir,
            &side.file_name().unwrap_or_default().to_string_lossy(),
            name.as_bytes(),
        )?;
        dest
    };
    fs::rename(path, &dest)?;
    Ok(dest)
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
/// `reference/` folders at any level, temporary names, and symlinks (which could point
/// anywhere).
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
        if meta.is_dir() && crate::layout::is_reference_folder(&name) {
            continue;
        } else if meta.is_dir() {
            walk(&entry.path(), false, out)?;
        } else if meta.is_file() {
            out.push((entry.path(), meta));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(me: &str, live: &[&str]) -> Share {
        Share {
            me: me.into(),
            live: live.iter().map(|r| r.to_string()).collect(),
            read: Instant::now(),
        }
    }

    fn paths() -> Vec<PathBuf> {
        (0..3000)
            .map(|i| PathBuf::from(format!("ranger-{:02}/batch-{i:05}.json", i % 7)))
            .collect()
    }

    #[test]
    fn every_file_has_one_owner_and_a_leaving_replica_moves_only_its_share() {
        let all = ["r0", "r1", "r2"];
        let owner = |live: &[&str], p: &Path| -> Vec<String> {
            live.iter()
                .filter(|me| share(me, live).is_mine(p))
                .map(|me| me.to_string())
                .collect()
        };
        let mut counts = HashMap::new();
        for p in paths() {
            let three = owner(&all, &p);
            assert_eq!(three.len(), 1, "{} is owned by {three:?}", p.display());
            *counts.entry(three[0].clone()).or_insert(0) += 1;
            // r1 gone: its files spread over the others, the others' stay put.
            let two = owner(&["r0", "r2"], &p);
            assert_eq!(two.len(), 1);
            if three[0] != "r1" {
                assert_eq!(two, three, "{} moved", p.display());
            }
            // Alone, everything is its own.
            assert!(share("r1", &["r1"]).is_mine(&p));
        }
        // About a third each (3000 files: far from the bounds by chance).
        for r in all {
            let n = counts[r];
            assert!(
                (800..=1200).contains(&n),
                "{r} owns {n} of 3000: {counts:?}"
            );
        }
    }

    #[test]
    fn claims_of_one_sender_file_go_one_per_round_in_claim_order() {
        let p = |s: &str| PathBuf::from(format!("/d/.processing/{s}"));
        let claimed = vec![
            p("ranger-01/20261203T010101000000001000001-a.json"),
            p("ranger-02/20261203T010101000000002000002-a.json"),
            p("ranger-01/20261203T010101000000003000003.ftp-a.json"),
            p("ranger-01/20261203T010101000000004000004-b.json"),
            p("_/20261203T010101000000005000005-b.json"),
            p("_/20261203T010101000000006000006-c.json"),
            p("ranger-03/20261203T010101000000007000007-c.json"),
        ];
        let (now, later) = one_per_name(claimed.clone());
        let pick =
            |ks: &[usize]| -> Vec<PathBuf> { ks.iter().map(|&k| claimed[k].clone()).collect() };
        assert_eq!(now, pick(&[0, 1, 3, 5]));
        assert_eq!(later, pick(&[2, 4, 6]));
        let (now, later) = one_per_name(later);
        assert_eq!(now, pick(&[2, 4, 6]));
        assert!(later.is_empty());
    }

    /// One name sent again and again, each copy claimed before any is decided, the
    /// earliest the largest (the slowest to decide): the receipt that stays is the last
    /// claim's, whichever filing group each copy fell into.
    /// A drop directory `<dir>/CTData` on `db`, settling at once.
    async fn drop_dir_in(db: &ctdata_tests::TestDb, dir: &Path) -> DropDir {
        let root = dir.join("CTData");
        let mut settings = crate::config::Settings::default();
        settings.database.url = crate::config::SecretUrl::new(&db.url);
        settings.ingest.drop_dir = root.clone();
        let ingestor = crate::serve::open(&settings).await.unwrap();
        DropDir::new(&root, ingestor, Duration::ZERO).unwrap()
    }

    async fn the_last_claim_of_a_name_keeps_its_receipt(db: ctdata_tests::TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let mut drop_dir = drop_dir_in(&db, dir.path()).await;
        let root = drop_dir.root().to_path_buf();
        const COPIES: usize = 6;
        let mut ids = Vec::new();
        for copy in 0..COPIES {
            let rows = 40 * (COPIES - copy) * (COPIES - copy);
            let sightings: Vec<uuid::Uuid> = (0..rows).map(|_| uuid::Uuid::new_v4()).collect();
            let batch = ctdata_tests::Batch::with_ids("ranger-01", &sightings);
            let at = root.join("ranger-01").join("patrol.json");
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            ids.push(batch.write(&at));
            claim_into(&root, &at, "ranger-01", "patrol.json", Channel::Share).unwrap();
            // Another device's file of the same name is not held back.
            let other = root.join("ranger-02").join("patrol.json");
            std::fs::create_dir_all(other.parent().unwrap()).unwrap();
            ctdata_tests::Batch::with_ids("ranger-02", &[uuid::Uuid::new_v4()]).write(&other);
            claim_into(&root, &other, "ranger-02", "patrol.json", Channel::Share).unwrap();
        }
        let report = drop_dir
            .ingest_once(&CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.errors, 0);
        assert_eq!(report.count(Status::Ingested), 2 * COPIES, "{report:?}");
        let receipt = root
            .join("receipts")
            .join("ranger-01")
            .join(layout::receipt_file_name("patrol.json"));
        let receipt: Receipt = serde_json::from_slice(&fs::read(&receipt).unwrap()).unwrap();
        assert_eq!(receipt.batch_id, ids.last().copied(), "{ids:?}");
        // In the report too, the copies of the one file come in claim order.
        let order: Vec<_> = report
            .receipts
            .iter()
            .filter(|r| r.device.as_deref() == Some("ranger-01"))
            .map(|r| r.batch_id.unwrap())
            .collect();
        assert_eq!(order, ids);
        assert!(drop_dir.claimed_files().unwrap().is_empty());
    }

    ctdata_tests::both_backends!(the_last_claim_of_a_name_keeps_its_receipt);

    /// A claim that another replica filed away while this one was about to decide it
    /// (it took the claim over from this one, stalled past its lease, or this one
    /// listed the claims from a network share's stale cache): nothing is decided here,
    /// no rejection is recorded and no receipt written.
    async fn a_claim_filed_by_another_replica_is_not_rejected(db: ctdata_tests::TestDb) {
        let dir = tempfile::tempdir().unwrap();
        let drop_dir = drop_dir_in(&db, dir.path()).await;
        let root = drop_dir.root().to_path_buf();
        let at = root.join("ranger-01").join("patrol.json");
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        ctdata_tests::Batch::new("ranger-01", 3).write(&at);
        let claimed = claim_into(&root, &at, "ranger-01", "patrol.json", Channel::Share).unwrap();
        // The other replica's filing: the claim moves away before this one reads it.
        let elsewhere = dir.path().join("filed.json");
        fs::rename(&claimed, &elsewhere).unwrap();
        let gone = drop_dir.process(&claimed, None).await;
        assert!(
            gone.as_ref().is_err_and(|e| e.is::<crate::ingest::Gone>()),
            "{:?}",
            gone.err()
        );
        assert_eq!(db.scalar("SELECT count(*) FROM rejections").await, 0);
        assert!(!root.join("receipts").join("ranger-01").exists());
        assert!(elsewhere.exists());
    }

    ctdata_tests::both_backends!(a_claim_filed_by_another_replica_is_not_rejected);
}
