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

use std::path::Path;

use anyhow::Context;

use crate::ingest::{Delivery, Incomplete, Ingestor, Outcome, Receipt, Status};
use crate::layout::{self, write_atomic, Layout, MAX_NAME_BYTES};
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

    async fn decide(
        &self,
        file: &Path,
        origin: &Origin,
        wait_if_incomplete: bool,
    ) -> anyhow::Result<Delivered> {
        if crate::sendcreds::is_send_data(file, &origin.file_name) {
            return Ok(Delivered::Filed(self.discard_send_data(file, origin)));
        }
        let delivery = self.delivery(file, origin);
        let receipt = if origin.filing == Filing::DropDirWithReceipt
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
        self.file_away(file, origin, &receipt)?;
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
            status: Status::Rejected,
            file: origin.file_name.clone(),
            channel,
            device: origin.device.clone(),
            batch_id: None,
            format: None,
            sha256: None,
            sightings: 0,
            inserted: 0,
            duplicates: 0,
            cursor: None,
            received_at: chrono::Utc::now(),
            reason: Some(format!(
                "{}: a CyberTracker .OUT file (the sender's URL, user and password in plain text) is never \
                 ingested or kept; it was deleted unread",
                origin.file_name
            )),
            kind: Some(kind.to_string()),
            skipped: None,
            track_points: None,
            patrol_events: None,
            relayed_by: None,
            not_stored: None,
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

    /// Writes the receipt (when the sender reads it from the share), then moves the
    /// decided file to `archive/<date>/<device>/` when stored (or stored before), or to
    /// `rejected/<device>/` with its reason beside it when refused. The file keeps its
    /// claim name, which is also how the rejection row finds it.
    fn file_away(&self, file: &Path, origin: &Origin, receipt: &Receipt) -> anyhow::Result<()> {
        if origin.filing == Filing::InPlace {
            return Ok(());
        }
        if origin.filing == Filing::DropDirWithReceipt && origin.file_name.len() <= MAX_NAME_BYTES {
            if let Some(device) = &receipt.device {
                let name = layout::receipt_file_name(&origin.file_name);
                let bytes = serde_json::to_vec_pretty(receipt)?;
                write_atomic(&self.layout.receipts(device), &name, &bytes)
                    .context("write the receipt")?;
            }
        }
        let device_dir = layout::device_dir(origin.device.as_deref());
        let claim = file.file_name().unwrap_or_default().to_string_lossy();
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
