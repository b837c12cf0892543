//! What a device sees over FTP: its own folder `<drop_dir>/<device>/` as `/`, and
//! nothing else (resolved by the kernel beneath the opened folder: see `beneath`). Complete uploads are handed to the ingest loop the moment they are
//! complete (see [`Handoff`]).

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use nix::fcntl::OFlag;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use unftp_core::storage::{Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend};

use super::auth::Device;
use super::beneath::{remove_at, Rel, Root};
use super::control::{self, Control, Held};
use super::handoff::{Handoff, UPLOAD_PREFIX};
use crate::dropdir::is_candidate_name;

/// One session's view; libunftp makes one per connection and calls `enter` at login.
#[derive(Debug)]
pub struct DeviceFs {
    handoff: Arc<Handoff>,
    limits: Limits,
    /// The session's control connection (none in the server built to check settings).
    control: Option<Arc<Control>>,
    /// The device and its folder, once logged in.
    home: Option<(String, Root)>,
}

/// What one device may upload.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub data_timeout: Duration,
    pub max_file_bytes: u64,
    pub device_quota_bytes: u64,
}

impl DeviceFs {
    pub fn new(handoff: Arc<Handoff>, limits: Limits, control: Option<Arc<Control>>) -> DeviceFs {
        DeviceFs {
            handoff,
            limits,
            control,
            home: None,
        }
    }

    fn home(&self) -> Result<(&str, &Root)> {
        self.home
            .as_ref()
            .map(|(d, r)| (d.as_str(), r))
            .ok_or_else(|| Error::from(ErrorKind::PermissionDenied))
    }

    /// An FTP path as a path below the device's folder (`..` may not climb above `/`).
    fn resolve(&self, path: &Path) -> Result<(&Root, Rel)> {
        let (_, root) = self.home()?;
        Ok((root, Rel::parse(path).map_err(fs_error)?))
    }

    /// Copies the upload into `file`, counting from `start` bytes: cut off when it
    /// passes the per-file limit or the device's quota (`used` is what the folder
    /// held before).
    async fn write_all_from<R: AsyncRead + Unpin>(
        &self,
        mut input: R,
        file: &mut tokio::fs::File,
        start: u64,
        used: u64,
    ) -> Result<u64> {
        let limits = self.limits;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = tokio::time::timeout(limits.data_timeout, input.read(&mut buf))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the upload sent nothing for ftp.data_timeout_secs",
                    )
                })??;
            if n == 0 {
                break;
            }
            total += n as u64;
            if start + total > limits.max_file_bytes {
                return Err(over("the file is larger than ftp.max_file_bytes"));
            }
            if used + total > limits.device_quota_bytes {
                return Err(over(
                    "the device's folder would pass ftp.device_quota_bytes",
                ));
            }
            file.write_all(&buf[..n]).await?;
        }
        file.flush().await?;
        Ok(total)
    }

    /// The `.processing/` folder a complete upload at `rel` is claimed into: the
    /// device's own, or for `relay/<device>/…` a relay claim folder, when this device
    /// may relay for that one (refused with 550 otherwise, the reason in the log).
    async fn claim_dir(&self, device: &str, rel: &Rel) -> Result<String> {
        let Some(handheld) =
            crate::layout::relayed_device(rel.path()).filter(|h| !h.eq_ignore_ascii_case(device))
        else {
            return Ok(device.to_string());
        };
        let rule = self
            .handoff
            .db
            .relay_for(device)
            .await
            .map_err(|e| Error::new(ErrorKind::LocalError, e))?;
        match rule {
            Some(rule) if crate::relay::covers(&rule, &handheld) => {
                Ok(crate::layout::relay_claim_dir(&handheld, device))
            }
            rule => {
                let why = crate::relay::refusal(device, rule.as_deref(), &handheld);
                tracing::warn!(device, relay_for = handheld, "FTP upload refused: {why}");
                Err(Error::new(ErrorKind::PermissionDenied, why))
            }
        }
    }

    /// Hands off the uploads whose 226 the client has heard: this call is for a
    /// later command, so it has.
    async fn release(&self) -> Result<()> {
        if let Some(control) = &self.control {
            control::hand_off(&self.handoff, control.take_confirmed()).await?;
        }
        Ok(())
    }

    /// Bytes the device's folder holds now (symlinks not followed).
    async fn used(&self) -> u64 {
        let Ok((_, root)) = self.home() else {
            return 0;
        };
        let path = root.path.clone();
        tokio::task::spawn_blocking(move || folder_bytes(&path, 0))
            .await
            .unwrap_or(0)
    }
}

fn over(why: &'static str) -> Error {
    tracing::warn!("FTP upload refused: {why}");
    Error::new(ErrorKind::ExceededStorageAllocationError, why)
}

fn folder_bytes(dir: &Path, depth: usize) -> u64 {
    // Device folders are shallow; a deep tree is not ours to walk.
    if depth > 8 {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match std::fs::symlink_metadata(e.path()) {
            Ok(m) if m.is_dir() => folder_bytes(&e.path(), depth + 1),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

fn fs_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Error::new(ErrorKind::PermissionDenied, e),
        io::ErrorKind::NotFound => Error::new(ErrorKind::PermanentFileNotAvailable, e),
        _ => Error::from(e),
    }
}

fn denied(why: &'static str) -> Error {
    Error::new(ErrorKind::PermissionDenied, why)
}

fn file_name(rel: &Rel) -> Result<String> {
    rel.name()
        .map(|n| n.to_string_lossy().into_owned())
        .map_err(|_| Error::from(ErrorKind::FileNameNotAllowedError))
}

/// Whether a name is one the server writes while an upload of a final name runs.
fn is_own_temp(name: &str) -> bool {
    name.starts_with(UPLOAD_PREFIX)
}

#[derive(Debug)]
pub struct Meta(std::fs::Metadata);

impl Metadata for Meta {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn is_dir(&self) -> bool {
        self.0.is_dir()
    }
    fn is_file(&self) -> bool {
        self.0.is_file()
    }
    fn is_symlink(&self) -> bool {
        self.0.file_type().is_symlink()
    }
    fn modified(&self) -> Result<SystemTime> {
        self.0.modified().map_err(Error::from)
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
}

#[async_trait]
impl StorageBackend<Device> for DeviceFs {
    type Metadata = Meta;

    fn enter(&mut self, user: &Device) -> io::Result<()> {
        let root = Root::open(&self.handoff.device_root(&user.name)?)?;
        self.home = Some((user.name.clone(), root));
        Ok(())
    }

    fn supported_features(&self) -> u32 {
        unftp_core::storage::FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &Device,
        path: P,
    ) -> Result<Meta> {
        self.release().await?;
        let (root, rel) = self.resolve(path.as_ref())?;
        Ok(Meta(root.stat(&rel).map_err(fs_error)?))
    }

    async fn list<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &Device,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, Meta>>> {
        self.release().await?;
        let (root, rel) = self.resolve(path.as_ref())?;
        let mut out = Vec::new();
        for (name, meta) in root.list(&rel).map_err(fs_error)? {
            // Symlinks lead nowhere a device may go; our own upload temps are not its files.
            if meta.file_type().is_symlink() || is_own_temp(&name.to_string_lossy()) {
                continue;
            }
            out.push(Fileinfo {
                path: PathBuf::from(name),
                metadata: Meta(meta),
            });
        }
        Ok(out)
    }

    async fn get<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &Device,
        path: P,
        start_pos: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        self.release().await?;
        let (root, rel) = self.resolve(path.as_ref())?;
        // O_NONBLOCK: a FIFO planted over the share must not hang the open.
        let fd = root
            .open_at(
                &rel,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
                0,
            )
            .map_err(fs_error)?;
        let file = std::fs::File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(Error::from(ErrorKind::PermanentFileNotAvailable));
        }
        let mut file = tokio::fs::File::from_std(file);
        if start_pos > 0 {
            file.seek(io::SeekFrom::Start(start_pos)).await?;
        }
        Ok(Box::new(file))
    }

    async fn put<
        P: AsRef<Path> + Send + fmt::Debug,
        R: AsyncRead + Send + Sync + Unpin + 'static,
    >(
        &self,
        _user: &Device,
        input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64> {
        self.release().await?;
        let (device, _) = self.home()?;
        let (root, rel) = self.resolve(path.as_ref())?;
        let name = file_name(&rel)?;
        if crate::sendcreds::is_out_name(&name) {
            // A CyberTracker .OUT (a password in plain text): read off the wire into
            // nothing, so not a byte of it reaches the disk.
            let mut input = input;
            let n = tokio::io::copy(&mut input, &mut tokio::io::sink()).await?;
            crate::sendcreds::discarded("ftp", Some(device), &name);
            return Ok(n);
        }
        let used = self.used().await;
        if !is_candidate_name(&name) {
            // A temporary name (x.part): written in place, never ingested from here; a
            // client may resume it (REST).
            let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW;
            if start_pos == 0 {
                flags |= OFlag::O_TRUNC;
            }
            let fd = root.open_at(&rel, flags, 0o644).map_err(fs_error)?;
            let mut file = tokio::fs::File::from_std(std::fs::File::from(fd));
            let before = file.metadata().await?.len();
            if start_pos > 0 {
                file.set_len(start_pos).await?;
                file.seek(io::SeekFrom::Start(start_pos)).await?;
            }
            // The bytes it replaces are not counted twice against the quota.
            let used = used.saturating_sub(before);
            let written = self
                .write_all_from(input, &mut file, start_pos, used + start_pos)
                .await;
            if written
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ExceededStorageAllocationError)
            {
                // Kept, it would hold the quota for nothing; a cut connection's part is
                // kept for the client to resume.
                drop(file);
                let _ = root.remove(&rel, false);
            }
            return written;
        }
        // A final name: written under a hidden name beside it, so nobody (the share
        // scanner included) sees half a file under the final name; complete, it goes
        // straight to the ingest queue.
        if start_pos > 0 {
            return Err(Error::new(
                ErrorKind::PermanentFileNotAvailable,
                "resume only uploads to a temporary name (x.part)",
            ));
        }
        let claim_dir = self.claim_dir(device, &rel).await?;
        let (parent, _) = rel.split().map_err(fs_error)?;
        let dir = root.dir(&parent).map_err(fs_error)?;
        let temp = format!("{UPLOAD_PREFIX}{}-{name}.part", crate::layout::stamp());
        let fd = root
            .open_at(
                &parent.join(&temp),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                0o644,
            )
            .map_err(fs_error)?;
        let mut file = tokio::fs::File::from_std(std::fs::File::from(fd));
        let mut written = self.write_all_from(input, &mut file, 0, used).await;
        if written.is_ok() && self.handoff.fsync_before_reply {
            written = file
                .sync_all()
                .await
                .map(|_| 0)
                .map_err(Error::from)
                .and(written);
        }
        drop(file);
        let n = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = remove_at(&dir, OsStr::new(&temp), false);
                return Err(e);
            }
        };
        let held = Held::new(&claim_dir, dir, temp, name, n);
        let Some(control) = &self.control else {
            control::hand_off(&self.handoff, vec![held]).await?;
            return Ok(n);
        };
        // The end of the data is the end of the file only if the client is still
        // there to hear the 226: held until it shows it was (see `control`).
        if !control.client_present() {
            held.incomplete("the client left before the upload was answered");
            return Err(Error::new(
                ErrorKind::ConnectionClosed,
                "the client left before the upload was answered",
            ));
        }
        control.hold(held);
        Ok(n)
    }

    async fn del<P: AsRef<Path> + Send + fmt::Debug>(&self, _user: &Device, path: P) -> Result<()> {
        self.release().await?;
        let (root, rel) = self.resolve(path.as_ref())?;
        if rel.is_root() {
            return Err(denied("the root folder"));
        }
        if !root.stat(&rel).map_err(fs_error)?.is_file() {
            return Err(Error::from(ErrorKind::PermanentFileNotAvailable));
        }
        Ok(root.remove(&rel, false).map_err(fs_error)?)
    }

    async fn mkd<P: AsRef<Path> + Send + fmt::Debug>(&self, _user: &Device, path: P) -> Result<()> {
        self.release().await?;
        let (root, rel) = self.resolve(path.as_ref())?;
        Ok(root.create_dir(&rel).map_err(fs_error)?)
    }

    async fn rename<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &Device,
        from: P,
        to: P,
    ) -> Result<()> {
        self.release().await?;
        let (device, _) = self.home()?;
        let (root, from) = self.resolve(from.as_ref())?;
        let (_, to) = self.resolve(to.as_ref())?;
        if from.is_root() || to.is_root() {
            return Err(denied("the root folder"));
        }
        let meta = root.stat(&from).map_err(fs_error)?;
        let to_name = file_name(&to)?;
        let onto_folder = root.stat(&to).is_ok_and(|m| m.is_dir());
        if meta.is_file() && crate::sendcreds::is_out_name(&to_name) {
            root.remove(&from, false).map_err(fs_error)?;
            crate::sendcreds::discarded("ftp", Some(device), &to_name);
            return Ok(());
        }
        if meta.is_file() && is_candidate_name(&to_name) && !onto_folder {
            // x.part → x.json: the upload is complete. Whichever folder it names, it
            // is this device's delivery (or, into `relay/<device>/`, one it relays):
            // ingest it now.
            let claim_dir = self.claim_dir(device, &to).await?;
            let (parent, from_name) = from.split().map_err(fs_error)?;
            let dir = root.dir(&parent).map_err(fs_error)?;
            return Ok(self
                .handoff
                .complete(&claim_dir, dir, from_name, &to_name)
                .await?);
        }
        Ok(root.rename(&from, &to).map_err(fs_error)?)
    }

    async fn rmd<P: AsRef<Path> + Send + fmt::Debug>(&self, _user: &Device, path: P) -> Result<()> {
        self.release().await?;
        let (root, rel) = self.resolve(path.as_ref())?;
        Ok(root.remove(&rel, true).map_err(fs_error)?)
    }

    async fn cwd<P: AsRef<Path> + Send + fmt::Debug>(&self, _user: &Device, path: P) -> Result<()> {
        self.release().await?;
        let (root, rel) = self.resolve(path.as_ref())?;
        root.dir(&rel).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => fs_error(e),
            _ => Error::from(ErrorKind::PermanentDirectoryNotAvailable),
        })?;
        Ok(())
    }
}
