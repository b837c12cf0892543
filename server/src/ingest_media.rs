//! Photos and recordings inside a batch (base64 in a CyberTracker upload, attribute
//! bytes in a CTX) go into the attachment store while the ingestor holds the file,
//! before its batch is loaded: a parser thread hands the bytes over in pieces through a
//! small bounded channel, each file is fsynced at its content address, and what was
//! stored travels in `NewBatch::media`, so the links commit in the batch's own
//! transaction. A share or FTP file is filed away only after that commit, so no file is
//! acknowledged with its media missing, and a resend finds the files already stored.

use std::path::Path;

use ctdata_batch::inline_media::{self, MediaItem, MediaSink};
use ctdata_batch::{Limits, Rejection, Scan};
use tokio::sync::mpsc;

use crate::attachments::{AttachmentStore, PendingAttachment, StoreError};
use crate::db::StoredMedia;

enum Piece {
    Begin,
    Chunk(Vec<u8>),
    End(MediaItem),
}

/// Sends the parser's pieces to the storing task; fails once that task has stopped.
struct Sender(mpsc::Sender<Piece>);

impl Sender {
    fn send(&self, p: Piece) -> std::io::Result<()> {
        self.0
            .blocking_send(p)
            .map_err(|_| std::io::Error::other("the attachment store stopped taking files"))
    }
}

impl MediaSink for Sender {
    fn begin(&mut self) -> std::io::Result<()> {
        self.send(Piece::Begin)
    }
    fn chunk(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.send(Piece::Chunk(bytes.to_vec()))
    }
    fn end(&mut self, item: MediaItem) -> std::io::Result<()> {
        self.send(Piece::End(item))
    }
}

/// Stores every media file of a scanned batch (none for formats without media).
/// `Err` means the store could not write (the file is kept and tried again);
/// `Ok(Err)` that the file is unreadable, as the load would find too.
pub(crate) async fn store_media(
    store: &AttachmentStore,
    limit: u64,
    path: &Path,
    scan: &Scan,
    limits: Limits,
) -> anyhow::Result<Result<Vec<StoredMedia>, Rejection>> {
    if !inline_media::has_media(scan.format) {
        return Ok(Ok(Vec::new()));
    }
    let (tx, mut rx) = mpsc::channel::<Piece>(8);
    let (path, scan) = (path.to_path_buf(), scan.clone());
    let reader = tokio::task::spawn_blocking(move || {
        inline_media::media(&path, &scan, &limits, &mut Sender(tx))
    });
    let mut stored = Vec::new();
    let mut pending: Option<PendingAttachment> = None;
    // A file over `storage.max_attachment_bytes` is left in the archived original only.
    let mut too_large = false;
    let mut failed = None;
    while let Some(piece) = rx.recv().await {
        match piece {
            Piece::Begin => {
                too_large = false;
                match store.begin(limit).await {
                    Ok(p) => pending = Some(p),
                    Err(e) => {
                        failed = Some(anyhow::Error::from(e));
                        break;
                    }
                }
            }
            Piece::Chunk(bytes) => {
                let Some(p) = pending.as_mut() else { continue };
                match p.write(&bytes).await {
                    Ok(()) => {}
                    Err(StoreError::TooLarge(_)) => {
                        too_large = true;
                        pending = None;
                    }
                    Err(StoreError::Io(e)) => {
                        failed = Some(e.into());
                        break;
                    }
                }
            }
            Piece::End(item) => {
                let Some(p) = pending.take() else {
                    if too_large {
                        tracing::warn!(
                            sighting = %item.sighting_id,
                            name = item.name,
                            limit,
                            "an attached file is over storage.max_attachment_bytes: kept in the archived original only"
                        );
                    }
                    continue;
                };
                match p.finish().await {
                    Ok(file) => stored.push(StoredMedia {
                        sighting_id: item.sighting_id,
                        name: item.name,
                        sha256: file.sha256,
                        size: file.size,
                        content_type: item.content_type,
                    }),
                    Err(e) => {
                        failed = Some(e.into());
                        break;
                    }
                }
            }
        }
    }
    // Closing the channel stops the parser at its next piece.
    drop(rx);
    let read = reader.await?;
    if let Some(e) = failed {
        return Err(e.context("storing a batch's attached files"));
    }
    Ok(read.map(|()| stored))
}
