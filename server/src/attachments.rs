//! The attachment store: photos, audio, video and signatures that come with sightings,
//! kept once by content. A file lives at `<dir>/ab/cd/<sha256>` (the first two byte
//! pairs of its SHA-256 as folders, so no folder grows past 65,536 entries).
//!
//! Files are streamed: each chunk is hashed and written to a temporary file under
//! `<dir>/.tmp/` as it arrives, then fsynced and renamed to its content address, and the
//! folder fsynced, before [`PendingAttachment::finish`] returns. Nothing is held whole in
//! memory, and a file that is already stored is not written twice. A crash leaves at
//! most a temporary file, which [`AttachmentStore::open`] clears.
//!
//! The database side (the `attachments` row and the links from a batch or a sighting to
//! a file under the name the sender gave it) is in `db::attachments`; a channel stores
//! the files first, then links them, and answers only after both.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A file that is in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAttachment {
    /// Lowercase hex SHA-256 of the content: its address.
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file passed the limit (in bytes) given for it.
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The folder attachments live in; cheap to clone.
#[derive(Debug, Clone)]
pub struct AttachmentStore {
    dir: PathBuf,
}

impl AttachmentStore {
    /// The store at `dir`, created when the first file arrives.
    pub fn new(dir: &Path) -> AttachmentStore {
        AttachmentStore {
            dir: dir.to_path_buf(),
        }
    }

    /// Opens (creating) the store at `dir`, and removes temporary files a crash left.
    pub fn open(dir: &Path) -> io::Result<AttachmentStore> {
        let tmp = dir.join(".tmp");
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(AttachmentStore::new(dir))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the file with this SHA-256 is (or would be) kept; `None` when `sha256` is
    /// not 64 lowercase hex digits, so a caller's text never names another path.
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        let valid = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| self.dir.join(&sha256[..2]).join(&sha256[2..4]).join(sha256))
    }

    /// Starts a file that is written chunk by chunk; at most `limit` bytes are taken.
    pub async fn begin(&self, limit: u64) -> io::Result<PendingAttachment> {
        let tmp = self
            .dir
            .join(".tmp")
            .join(format!("{}.part", uuid::Uuid::new_v4()));
        let file = match tokio::fs::File::create(&tmp).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tokio::fs::create_dir_all(tmp.parent().expect("a folder")).await?;
                tokio::fs::File::create(&tmp).await?
            }
            other => other?,
        };
        Ok(PendingAttachment {
            store: self.clone(),
            tmp,
            file: Some(tokio::io::BufWriter::with_capacity(64 * 1024, file)),
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// Stores everything `reader` gives, up to `limit` bytes.
    pub async fn store_stream<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        limit: u64,
    ) -> Result<StoredAttachment, StoreError> {
        let mut pending = self.begin(limit).await?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            pending.write(&buf[..n]).await?;
        }
        Ok(pending.finish().await?)
    }
}

/// A file being written; dropped unfinished, its temporary file is removed.
pub struct PendingAttachment {
    store: AttachmentStore,
    tmp: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl PendingAttachment {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(StoreError::TooLarge(self.limit));
        }
        self.hasher.update(chunk);
        let file = self.file.as_mut().expect("not finished");
        file.write_all(chunk).await?;
        Ok(())
    }

    /// Makes the file durable at its content address and says what it is.
    pub async fn finish(mut self) -> io::Result<StoredAttachment> {
        let mut file = self.file.take().expect("finished once");
        file.flush().await?;
        let file = file.into_inner();
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let dest = self.store.path(&sha256).expect("a hex digest");
        let tmp = self.tmp.clone();
        let size = self.size;
        let file = file.into_std().await;
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            if dest.exists() {
                // Stored before (the same bytes): the earlier copy was made durable then.
                drop(file);
                return std::fs::remove_file(&tmp);
            }
            file.sync_all()?;
            drop(file);
            let folder = dest.parent().expect("a folder");
            std::fs::create_dir_all(folder)?;
            std::fs::rename(&tmp, &dest)?;
            std::fs::File::open(folder)?.sync_all()?;
            // The ab/ and ab/cd/ entries themselves must survive a crash too.
            if let Some(up) = folder.parent() {
                std::fs::File::open(up)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)??;
        Ok(StoredAttachment { sha256, size })
    }
}

impl Drop for PendingAttachment {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_by_content_once_and_refuses_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = AttachmentStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let a = store.store_stream(&data[..], 1 << 20).await.unwrap();
        let b = store.store_stream(&data[..], 1 << 20).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.size, data.len() as u64);
        assert_eq!(a.sha256, hex::encode(Sha256::digest(&data)));
        let path = store.path(&a.sha256).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(path.starts_with(dir.path().join(&a.sha256[..2]).join(&a.sha256[2..4])));
        match store.store_stream(&data[..], 1000).await {
            Err(StoreError::TooLarge(1000)) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Neither copy nor the refused one left a temporary file behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(),
            0
        );
        assert!(store.path("../../etc/passwd").is_none());
        assert!(store.path(&a.sha256.to_uppercase()).is_none());
    }
}
