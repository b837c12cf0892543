//! The one delivery pipeline every channel calls: ingest a received file, then file it
//! away (`archive/` when stored, `rejected/` with its reason when refused) and, for
//! senders that read receipts from the share, write its receipt.
//!
//! A channel only receives (an HTTP body, an FTP upload, a share file, a pulled file,
//! a path on the command line) and says where the file came from in an [`Origin`].
//!
//! The order is the guarantee: the ingest commits first, then the receipt is written,
//! then the file moves. A crash in between leaves the file where it was, and the next
//! attempt at it is recognised by its claim (or its batch id) and adds nothing.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::ingest::{Delivery, Incomplete, Ingestor, Outcome, Receipt, Status};
use crate::layout::{self, write_atomic, Layout, MAX_NAME_BYTES};
use crate::profile::{self, Phase};
use crate::types::{Channel, RejectionKind};

/// Where a file came from and where it goes once decided.
#[derive(Debug, Clone)]
pub struct Origin {
    pub channel: Channel,
    /// The name the sender gave the file (for receipts and reports).
    pub file_name: String,
    /// The device the file's location vouches for (its folder, the HTTP or FTP login);
    /// it is also the folder the file is filed under.
    pub device: Option<String>,
    /// Identifies this delivery across a crash and restart.
    pub claim: Option<String>,
    pub filing: Filing,
    /// Send on sync over FTP or the share: the station that delivered this file of
    /// `device` (from its `relay/<device>/` folder). The delivery is refused unless
    /// the station may relay for `device`; stored, the batch records it, and the
    /// receipt goes to the station's `receipts/` folder.
    pub relayed_by: Option<String>,
}

/// What happens to a file once it is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filing {
    /// Moved into the drop directory's `archive/` or `rejected/`.
    DropDir,
    /// As [`Filing::DropDir`], and the receipt is written to `receipts/<device>/` for
    /// senders that read it there (nobody waits for an answer on a share or FTP).
    DropDirWithReceipt,
    /// Left where it is (the command line's in-place ingest).
    InPlace,
}

/// What a delivery that may still be being written came to.
#[derive(Debug)]
pub enum Delivered {
    Filed(Receipt),
    /// Cut short: nothing recorded and the file not moved; the caller may wait for
    /// the rest, or file it as cut short with [`Deliverer::reject_incomplete`].
    Incomplete(Incomplete),
}

/// A decided file waiting to be filed away with others.
#[derive(Debug)]
pub struct Unfiled {
    pub file: PathBuf,
    pub origin: Origin,
    pub receipt: Receipt,
}

/// The ingest and the drop directory it files into; cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    pub ingestor: Ingestor,
    pub layout: Layout,
}

impl Deliverer {
    pub fn new(ingestor: Ingestor, drop_dir: &Path) -> Deliverer {
        Deliverer {
            ingestor,
            layout: Layout::new(drop_dir),
        }
    }

    /// Ingests `file` exactly once and files it away. `Err` means the server could not
    /// decide (the database is down, the disk full): the file stays where it is, for
    /// the channel to keep and try again, or to drop if its sender will send again.
    pub async fn deliver(&self, file: &Path, origin: &Origin) -> anyhow::Result<Receipt> {
        match self.decide(file, origin, false).await? {
            Delivered::Filed(receipt) => Ok(receipt),
            Delivered::Incomplete(_) => {
                unreachable!("only asked to wait for a file when allowed to")
            }
        }
    }

    /// Like [`Deliverer::deliver`], but a file that is cut short (it may still be being
    /// written) is neither stored nor rejected, and stays where it is.
    pub async fn deliver_or_wait(&self, file: &Path, origin: &Origin) -> anyhow::Result<Delivered> {
        self.decide(file, origin, true).await
    }

    /// Rejects a file that stayed cut short as `truncated`, and files it away.
    pub async fn reject_incomplete(
        &self,
        file: &Path,
        origin: &Origin,
        cut: Incomplete,
    ) -> anyhow::Result<Receipt> {
        let delivery = self.delivery(file, origin);
        let receipt = self.ingestor.reject_incomplete(&delivery, cut).await?;
        self.file_away(file, origin, &receipt)?;
        Ok(receipt)
    }

    /// Like [`Deliverer::deliver_or_wait`], but a decided file is left where it is:
    /// the caller files it away later with [`Deliverer::file_away_all`], together with
    /// others, so a burst of small files shares one disk sync for its receipts.
    pub async fn decide_unfiled(
        &self,
        file: &Path,
        origin: &Origin,
        wait_if_incomplete: bool,
    ) -> anyhow::Result<Delivered> {
        self.decide_and(file, origin, wait_if_incomplete, false)
            .await
    }

    async fn decide(
        &self,
        file: &Path,
        origin: &Origin,
        wait_if_incomplete: bool,
    ) -> anyhow::Result<Delivered> {
        self.decide_and(file, origin, wait_if_incomplete, true)
            .await
    }

    async fn decide_and(
        &self,
        file: &Path,
        origin: &Origin,
        wait_if_incomplete: bool,
        file_away: bool,
    ) -> anyhow::Result<Delivered> {
        if crate::sendcreds::is_send_data(file, &origin.file_name) {
            return Ok(Delivered::Filed(self.discard_send_data(file, origin)));
        }
        let delivery = self.delivery(file, origin);
        let refused_relay = match (&origin.relayed_by, &origin.device) {
            (Some(by), Some(device)) => match self.ingestor.db.relay_for(by).await? {
                Some(rule) if crate::relay::covers(&rule, device) => None,
                rule => Some(crate::relay::refusal(by, rule.as_deref(), device)),
            },
            _ => None,
        };
        let mut receipt = if let Some(why) = refused_relay {
            self.ingestor
                .refuse(&delivery, RejectionKind::DeviceMismatch, why)
                .await?
        } else if origin.filing == Filing::DropDirWithReceipt
            && origin.file_name.len() > MAX_NAME_BYTES
        {
            let why = format!(
                "the file name is {} bytes long; at most {MAX_NAME_BYTES} are accepted (the receipt beside it \
                 must fit the filesystem's 255-byte limit): send it under a shorter name",
                origin.file_name.len()
            );
            self.ingestor
                .refuse(&delivery, RejectionKind::FileName, why)
                .await?
        } else {
            match self
                .ingestor
                .ingest_or_wait(&delivery, wait_if_incomplete)
                .await?
            {
                Outcome::Decided(receipt) => receipt,
                Outcome::Incomplete(cut) => return Ok(Delivered::Incomplete(cut)),
            }
        };
        if let (Some(by), Some(batch_id), false) = (
            &origin.relayed_by,
            receipt.batch_id,
            receipt.status == Status::Rejected,
        ) {
            // After the commit, before the receipt: a crash in between leaves the file
            // claimed, and its next attempt (a duplicate) records the relay then.
            self.ingestor.db.mark_relayed(batch_id, by).await?;
            receipt.relayed_by = self.ingestor.db.relayed_by(batch_id).await?;
        }
        if file_away {
            self.file_away(file, origin, &receipt)?;
        }
        Ok(Delivered::Filed(receipt))
    }

    /// A CyberTracker `.OUT` file: deleted unread (left alone when the command line
    /// names it in place: the operator's own file), nothing recorded, no receipt.
    fn discard_send_data(&self, file: &Path, origin: &Origin) -> Receipt {
        let channel = origin.channel.to_string();
        let device = origin.device.as_deref();
        if origin.filing == Filing::InPlace {
            tracing::warn!(
                channel,
                file = origin.file_name,
                "not ingesting a CyberTracker .OUT file: it holds the sender's password in plain text"
            );
        } else {
            crate::sendcreds::discard(file, &channel, device, &origin.file_name);
        }
        let kind = RejectionKind::Batch(ctdata_batch::RejectKind::UnknownFormat);
        Receipt {
            device: origin.device.clone(),
            reason: Some(format!(
                "{}: a CyberTracker .OUT file (the sender's URL, user and password in plain text) is never \
                 ingested or kept; it was deleted unread",
                origin.file_name
            )),
            kind: Some(kind.to_string()),
            ..Receipt::new(Status::Rejected, origin.file_name.clone(), channel)
        }
    }

    /// What the ingest needs to know of a file from `origin`.
    fn delivery(&self, file: &Path, origin: &Origin) -> Delivery {
        let claim = file.file_name().unwrap_or_default().to_string_lossy();
        let device_dir = layout::device_dir(origin.device.as_deref());
        Delivery {
            path: file.to_path_buf(),
            file_name: origin.file_name.clone(),
            channel: origin.channel,
            device_hint: origin.device.clone(),
            claim_name: origin.claim.clone(),
            rejected_path: (origin.filing != Filing::InPlace)
                .then(|| layout::rejected_relative(device_dir, &claim)),
        }
    }

    /// Where the receipt of a file from `origin` goes, if it gets one.
    fn receipt_path(&self, origin: &Origin, receipt: &Receipt) -> Option<(PathBuf, String)> {
        if origin.filing != Filing::DropDirWithReceipt || origin.file_name.len() > MAX_NAME_BYTES {
            return None;
        }
        // A relayed file's receipt goes to the station that delivered it.
        let device = origin.relayed_by.as_ref().or(receipt.device.as_ref())?;
        Some((
            self.layout.receipts(device),
            layout::receipt_file_name(&origin.file_name),
        ))
    }

    /// Files away a group of decided files (see [`Deliverer::decide_unfiled`]) as
    /// [`Deliverer::file_away`] files one, with one disk sync for all their receipts:
    /// every receipt (and rejection reason) is written under a temporary name, one
    /// `syncfs` makes them all durable, then each is renamed into place, then each file
    /// moves. The order per file stays commit, receipt, move; a crash anywhere in
    /// between leaves the files claimed, to be filed by the next attempt. `Err` leaves
    /// the files not yet moved where they are.
    pub fn file_away_all(&self, group: &[Unfiled]) -> anyhow::Result<()> {
        let mut notes: Vec<(PathBuf, PathBuf, Vec<u8>)> = Vec::new();
        // In claim order (claim names start with their stamp), not in the order the
        // decisions finished: of one name sent twice, the later claim's receipt stays.
        let mut ordered: Vec<&Unfiled> = group.iter().collect();
        ordered.sort_by(|a, b| a.file.file_name().cmp(&b.file.file_name()));
        for u in ordered {
            if u.origin.filing == Filing::InPlace {
                continue;
            }
            if let Some((dir, name)) = self.receipt_path(&u.origin, &u.receipt) {
                let bytes = serde_json::to_vec_pretty(&u.receipt)?;
                notes.push((dir, name.into(), bytes));
            }
            if u.receipt.status == Status::Rejected {
                let device_dir = layout::device_dir(u.origin.device.as_deref());
                let claim = u.file.file_name().unwrap_or_default().to_string_lossy();
                let reason = u.receipt.reason.as_deref().unwrap_or("rejected");
                notes.push((
                    self.layout.rejected(device_dir),
                    layout::reason_file_name(&claim).into(),
                    format!("{reason}\n").into_bytes(),
                ));
            }
        }
        // Two files of one group with the same receipt name (one sender sending the
        // same name twice): the later claim's receipt is the one that stays, as when
        // filed one by one in claim order.
        let mut last: std::collections::HashMap<PathBuf, usize> = Default::default();
        for (i, (dir, name, _)) in notes.iter().enumerate() {
            last.insert(dir.join(name), i);
        }
        let started = std::time::Instant::now();
        let mut written = Vec::with_capacity(notes.len());
        for (i, (dir, name, bytes)) in notes.iter().enumerate() {
            let at = dir.join(name);
            if last.get(&at) != Some(&i) {
                continue;
            }
            std::fs::create_dir_all(dir).context("create the receipt's folder")?;
            let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
            std::fs::write(&tmp, bytes).context("write a receipt")?;
            written.push((tmp, at));
        }
        if !written.is_empty() {
            let fd = std::fs::File::open(self.layout.root()).context("open the drop directory")?;
            nix::unistd::syncfs(&fd).context("sync the receipts to disk")?;
            for (tmp, at) in &written {
                std::fs::rename(tmp, at).context("put a receipt in place")?;
            }
        }
        profile::add(Phase::Receipt, started, written.len() as u64);
        let started = std::time::Instant::now();
        for u in group {
            if u.origin.filing == Filing::InPlace {
                continue;
            }
            let device_dir = layout::device_dir(u.origin.device.as_deref());
            let claim = u.file.file_name().unwrap_or_default().to_string_lossy();
            let dir = match u.receipt.status {
                Status::Rejected => self.layout.rejected(device_dir),
                Status::Ingested | Status::Duplicate => self.layout.archive(device_dir),
            };
            layout::move_file(&u.file, &dir.join(&*claim)).context("file the batch away")?;
        }
        profile::add(Phase::File, started, group.len() as u64);
        Ok(())
    }

    /// Writes the receipt (when the sender reads it from the share), then moves the
    /// decided file to `archive/<date>/<device>/` when stored (or stored before), or to
    /// `rejected/<device>/` with its reason beside it when refused. The file keeps its
    /// claim name, which is also how the rejection row finds it.
    fn file_away(&self, file: &Path, origin: &Origin, receipt: &Receipt) -> anyhow::Result<()> {
        if origin.filing == Filing::InPlace {
            return Ok(());
        }
        if let Some((dir, name)) = self.receipt_path(origin, receipt) {
            let bytes = serde_json::to_vec_pretty(receipt)?;
            profile::time(Phase::Receipt, || write_atomic(&dir, &name, &bytes))
                .context("write the receipt")?;
        }
        let device_dir = layout::device_dir(origin.device.as_deref());
        let claim = file.file_name().unwrap_or_default().to_string_lossy();
        let _filing = profile::Timer::new(Phase::File);
        match receipt.status {
            Status::Rejected => {
                let dir = self.layout.rejected(device_dir);
                let reason = receipt.reason.as_deref().unwrap_or("rejected");
                write_atomic(
                    &dir,
                    &layout::reason_file_name(&claim),
                    format!("{reason}\n").as_bytes(),
                )
                .context("write the rejection's reason")?;
                layout::move_file(file, &dir.join(&*claim)).context("move to rejected")?;
            }
            Status::Ingested | Status::Duplicate => {
                let dir = self.layout.archive(device_dir);
                layout::move_file(file, &dir.join(&*claim)).context("move to the archive")?;
            }
        }
        Ok(())
    }
}
