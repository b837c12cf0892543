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
//! Several replicas may share the store (one `CTData` folder on a shared filesystem):
//! a temporary file is named `<uuid>@<replica>.part` by a replica, and a replica
//! starting up removes only its own, and anyone's that has not changed for
//! [`STALE_TMP`] (a crashed replica that never came back), never a file another
//! replica is writing right now.
//!
//! The database side (the `attachments` row and the links from a batch or a sighting to
//! a file under the name the sender gave it) is in `db::attachments`; a channel stores
//! the files first, then links them, and answers only after both.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

/// A temporary file that has not changed for this long is left from a crash, whoever
/// wrote it: a file being written changes at least every 64 KiB, and an upload that
/// stalls is cut off after `http.body_idle_timeout_secs` (a minute by default).
pub const STALE_TMP: Duration = Duration::from_secs(3600);

/// The folder attachments live in; cheap to clone.
#[derive(Debug, Clone)]
pub struct AttachmentStore {
    dir: PathBuf,
    /// The replica whose temporary files these are; by default the one this process
    /// claims files as ([`crate::layout::claiming_replica`]), none when it is alone.
    replica: Option<Arc<str>>,
}

impl AttachmentStore {
    /// The store at `dir`, created when the first file arrives.
    pub fn new(dir: &Path) -> AttachmentStore {
        AttachmentStore {
            dir: dir.to_path_buf(),
            replica: None,
        }
    }

    /// The store as replica `name` writes to it (tests run several in one process).
    pub fn as_replica(mut self, name: &str) -> AttachmentStore {
        self.replica = Some(name.into());
        self
    }

    /// Opens (creating) the store at `dir`, and removes temporary files a crash left:
    /// alone, all of them; as a replica, its own and stale ones (see [`STALE_TMP`]).
    pub fn open(dir: &Path) -> io::Result<AttachmentStore> {
        let store = AttachmentStore::new(dir);
        store.clear_temporary(true, STALE_TMP)?;
        Ok(store)
    }

    /// The replica this store's temporary files are named after, if any.
    fn replica(&self) -> Option<&str> {
        match &self.replica {
            Some(replica) => Some(replica),
            None => crate::layout::claiming_replica(),
        }
    }

    /// Removes the temporary files a crash left (creating the folder): any that has not
    /// changed for `stale` and, at the start (`own`), this process's own: alone every
    /// one, as a replica those named after it (from before its restart). Returns how
    /// many went.
    pub fn clear_temporary(&self, own: bool, stale: Duration) -> io::Result<usize> {
        let tmp = self.dir.join(".tmp");
        std::fs::create_dir_all(&tmp)?;
        let me = self.replica();
        let mut removed = 0;
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let mine = own
                && match me {
                    None => true,
                    Some(me) => tmp_replica(&name) == Some(me),
                };
            let old = || {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .is_some_and(|age| age >= stale)
            };
            if (mine || old()) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
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
        let id = uuid::Uuid::new_v4();
        let name = match self.replica() {
            Some(replica) => format!("{id}@{replica}.part"),
            None => format!("{id}.part"),
        };
        let tmp = self.dir.join(".tmp").join(name);
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

/// The replica a temporary file `<uuid>@<replica>.part` belongs to.
fn tmp_replica(name: &str) -> Option<&str> {
    let (_, replica) = name.strip_suffix(".part")?.split_once('@')?;
    Some(replica)
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

    fn temporary(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(".tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_replica_starting_leaves_the_others_files_in_flight_alone() {
        let dir = tempfile::tempdir().unwrap();
        let r1 = AttachmentStore::new(dir.path()).as_replica("r1");
        let r2 = AttachmentStore::new(dir.path()).as_replica("r2");
        r1.clear_temporary(true, STALE_TMP).unwrap();
        // r1 is receiving a file; r2 crashed while receiving one.
        let mut pending = r1.begin(1 << 20).await.unwrap();
        pending.write(b"half of a photo").await.unwrap();
        let crashed = dir
            .path()
            .join(".tmp")
            .join(format!("{}@r2.part", uuid::Uuid::new_v4()));
        std::fs::write(&crashed, b"cut off").unwrap();
        // A replica that crashed and never came back, long ago; and one before replicas.
        let gone = dir.path().join(".tmp").join("0000@r3.part");
        let untagged = dir.path().join(".tmp").join("1111.part");
        for old in [&gone, &untagged] {
            std::fs::write(old, b"old").unwrap();
            let past = SystemTime::now() - STALE_TMP - Duration::from_secs(60);
            std::fs::File::options()
                .write(true)
                .open(old)
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
        let ones = temporary(dir.path());
        assert_eq!(ones.len(), 4, "{ones:?}");
        assert_eq!(ones.iter().filter(|n| n.ends_with("@r1.part")).count(), 1);

        // r2 starts again: its own file and the stale ones go, r1's stays.
        assert_eq!(r2.clear_temporary(true, STALE_TMP).unwrap(), 3);
        let left = temporary(dir.path());
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].ends_with("@r1.part"), "{left:?}");
        // The periodic sweep removes nothing fresh, not even its own.
        let _own = r2.begin(1 << 20).await.unwrap();
        assert_eq!(r2.clear_temporary(false, STALE_TMP).unwrap(), 0);
        drop(_own);

        pending.write(b" and the rest").await.unwrap();
        let stored = pending.finish().await.unwrap();
        assert_eq!(
            std::fs::read(r2.path(&stored.sha256).unwrap()).unwrap(),
            b"half of a photo and the rest"
        );
        assert!(temporary(dir.path()).is_empty());

        // Alone, a server owns every temporary file there is.
        std::fs::write(dir.path().join(".tmp").join("2222@r1.part"), b"x").unwrap();
        std::fs::write(dir.path().join(".tmp").join("3333.part"), b"x").unwrap();
        AttachmentStore::open(dir.path()).unwrap();
        assert!(temporary(dir.path()).is_empty());
    }
}
