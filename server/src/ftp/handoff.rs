//! From a complete FTP upload to the ingest loop, with no settle delay and nothing lost
//! in a crash.
//!
//! A complete upload is claimed straight into `.processing/<device>/<stamp>.ftp-<name>`
//! (one rename, so the share scanner never sees it under a final name and cannot take
//! it as a share delivery), and the ingest loop is woken. The claim name carries the
//! channel, so a file claimed just before a crash is ingested after the restart as
//! `ftp` like any other claimed file: nothing in memory needs to survive.
//!
//! Durability: the ingest loop syncs the filesystem before it ingests FTP claims
//! (`DropDir::make_durable`), so nothing is ingested that a power cut could take back.
//! The client's reply does not wait for that unless `ftp.fsync_before_reply` is set,
//! which fsyncs the file and the folder first (two disk flushes per file: on our
//! disk ~13 ms, ~80 files/s).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::dropdir::is_candidate_name;
use crate::layout::{claim_name, is_server_folder, PROCESSING};
use crate::types::Channel;

/// Hidden name prefix of an upload of a final name still being written.
pub const UPLOAD_PREFIX: &str = ".ctdata-upload-";

#[derive(Debug)]
pub struct Handoff {
    pub drop_dir: PathBuf,
    pub wake: Arc<Notify>,
    pub fsync_before_reply: bool,
    /// For the relay rights of stations uploading into `relay/<device>/`.
    pub db: crate::db::Db,
}

impl Handoff {
    /// The device's folder in the drop directory, created at first login. It must be a
    /// plain folder: a symlink planted there (over the share) would lead elsewhere.
    pub fn device_root(&self, device: &str) -> io::Result<PathBuf> {
        let root = self.drop_dir.join(device);
        match fs::create_dir(&root) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let meta = fs::symlink_metadata(&root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a plain folder; refusing it as an FTP root",
                    root.display()
                ),
            ));
        }
        Ok(root)
    }

    /// `temp` in the opened folder `dir` (a complete upload) is `device`'s delivery
    /// `name` (`device` is a relay claim folder for a relayed file): claim it and wake
    /// the ingest loop. Acting on the opened folder, not a
    /// path, so a symlink swapped in above it cannot redirect the claim.
    pub async fn complete(
        &self,
        device: &str,
        dir: OwnedFd,
        temp: &OsStr,
        name: &str,
    ) -> io::Result<()> {
        let sync = self.fsync_before_reply;
        let (root, temp, device, name) = (
            self.drop_dir.clone(),
            temp.to_os_string(),
            device.to_string(),
            name.to_string(),
        );
        let claimed = tokio::task::spawn_blocking(move || {
            if sync {
                let file = nix::fcntl::openat(
                    &dir,
                    temp.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                fs::File::from(file).sync_all()?;
            }
            let into = root.join(PROCESSING).join(&device);
            fs::create_dir_all(&into)?;
            let into_dir = fs::File::open(&into)?;
            // A claim name that carries the channel, so a restart still sees it.
            let claim = claim_name(Channel::Ftp, &name);
            nix::fcntl::renameat(&dir, temp.as_os_str(), &into_dir, claim.as_str())?;
            if sync {
                into_dir.sync_all()?;
            }
            Ok::<_, io::Error>(into.join(claim))
        })
        .await
        .map_err(io::Error::other)??;
        tracing::debug!(file = %claimed.display(), "FTP upload complete, queued for ingest");
        self.wake.notify_one();
        Ok(())
    }
}

/// Deletes unfinished uploads in the device folders that were last written more than
/// `age` ago: every temporary name (`*.part`, `*.tmp`, `*~`, dotfiles… — what the
/// drop directory never ingests), our own hidden ones included. Returns how many went.
pub fn remove_stale_parts(drop_dir: &Path, age: Duration) -> usize {
    let Ok(devices) = fs::read_dir(drop_dir) else {
        return 0;
    };
    let mut removed = 0;
    for dev in devices.flatten() {
        let name = dev.file_name().to_string_lossy().into_owned();
        if is_server_folder(&name) || name.starts_with('.') {
            continue;
        }
        if dev.file_type().is_ok_and(|t| t.is_dir()) {
            removed += sweep(&dev.path(), age, 0);
        }
    }
    removed
}

fn sweep(dir: &Path, age: Duration, depth: usize) -> usize {
    // Bounded: device folders are shallow; a deep tree is not ours to walk.
    if depth > 8 {
        return 0;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_dir() {
            removed += sweep(&entry.path(), age, depth + 1);
        } else if meta.is_file() && !is_candidate_name(&name) {
            let idle = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok());
            if idle.is_some_and(|idle| idle >= age) && fs::remove_file(entry.path()).is_ok() {
                tracing::info!(file = %entry.path().display(), "removed an unfinished upload left untouched for ftp.stale_part_secs");
                removed += 1;
            }
        }
    }
    removed
}
