//! What a device sees over FTP: its own folder `<drop_dir>/<device>/` as `/`, and
//! nothing else. Complete uploads are handed to the ingest loop the moment they are
//! complete (see [`Handoff`]).

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use unftp_core::storage::{Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend};

use super::auth::Device;
use super::handoff::{Handoff, UPLOAD_PREFIX};
use crate::dropdir::is_candidate_name;

/// One session's view; libunftp makes one per connection and calls `enter` at login.
#[derive(Debug)]
pub struct DeviceFs {
    handoff: Arc<Handoff>,
    data_timeout: Duration,
    /// The device and its folder, once logged in.
    home: Option<(String, PathBuf)>,
}

impl DeviceFs {
    pub fn new(handoff: Arc<Handoff>, data_timeout: Duration) -> DeviceFs {
        DeviceFs {
            handoff,
            data_timeout,
            home: None,
        }
    }

    fn home(&self) -> Result<(&str, &Path)> {
        self.home
            .as_ref()
            .map(|(d, p)| (d.as_str(), p.as_path()))
            .ok_or_else(|| Error::from(ErrorKind::PermissionDenied))
    }

    /// Maps an FTP path onto the device's folder. `..` may not climb above `/`, and no
    /// existing component may be a symlink (it could point anywhere): both are 550.
    fn resolve(&self, path: &Path) -> Result<PathBuf> {
        let (_, root) = self.home()?;
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        for c in path.components() {
            match c {
                Component::Prefix(_) | Component::RootDir => parts.clear(),
                Component::CurDir => {}
                Component::ParentDir => {
                    parts.pop().ok_or_else(|| denied("`..` above the root"))?;
                }
                Component::Normal(n) => parts.push(n),
            }
        }
        let mut full = root.to_path_buf();
        // Once a component is missing, nothing below it exists to be a symlink.
        let mut exists = true;
        for part in parts {
            full.push(part);
            if exists {
                match std::fs::symlink_metadata(&full) {
                    Ok(m) if m.file_type().is_symlink() => return Err(denied("a symlink")),
                    Ok(_) => {}
                    Err(_) => exists = false,
                }
            }
        }
        Ok(full)
    }

    /// `resolve`, refusing the root itself (it may not be deleted or renamed).
    fn resolve_below_root(&self, path: &Path) -> Result<PathBuf> {
        let full = self.resolve(path)?;
        if full == self.home()?.1 {
            return Err(denied("the root folder"));
        }
        Ok(full)
    }

    async fn write_all_from<R: AsyncRead + Unpin>(
        &self,
        mut input: R,
        file: &mut tokio::fs::File,
    ) -> io::Result<u64> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = tokio::time::timeout(self.data_timeout, input.read(&mut buf))
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
            file.write_all(&buf[..n]).await?;
            total += n as u64;
        }
        file.flush().await?;
        Ok(total)
    }
}

fn denied(why: &'static str) -> Error {
    Error::new(ErrorKind::PermissionDenied, why)
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::from(ErrorKind::FileNameNotAllowedError))
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
        let root = self.handoff.device_root(&user.name)?;
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
        let full = self.resolve(path.as_ref())?;
        Ok(Meta(tokio::fs::symlink_metadata(full).await?))
    }

    async fn list<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &Device,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, Meta>>> {
        let full = self.resolve(path.as_ref())?;
        let mut out = Vec::new();
        let mut entries = tokio::fs::read_dir(full).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            // Symlinks lead nowhere a device may go; our own upload temps are not its files.
            if meta.file_type().is_symlink() || is_own_temp(&name) {
                continue;
            }
            out.push(Fileinfo {
                path: entry.path(),
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
        let full = self.resolve(path.as_ref())?;
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(full)
            .await?;
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
        let (device, _) = self.home()?;
        let full = self.resolve_below_root(path.as_ref())?;
        let name = file_name(&full)?;
        if !is_candidate_name(&name) {
            // A temporary name (x.part): written in place, never ingested from here; a
            // client may resume it (REST).
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(start_pos == 0)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&full)
                .await?;
            if start_pos > 0 {
                file.set_len(start_pos).await?;
                file.seek(io::SeekFrom::Start(start_pos)).await?;
            }
            return Ok(self.write_all_from(input, &mut file).await?);
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
        let dir = full.parent().unwrap_or(&full).to_path_buf();
        let temp = dir.join(format!(
            "{UPLOAD_PREFIX}{}-{name}.part",
            crate::dropdir::stamp()
        ));
        let result = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .await?;
            self.write_all_from(input, &mut file).await
        }
        .await;
        match result {
            Ok(n) => {
                self.handoff.complete(device, &temp, &name).await?;
                Ok(n)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(e.into())
            }
        }
    }

    async fn del<P: AsRef<Path> + Send + fmt::Debug>(&self, _user: &Device, path: P) -> Result<()> {
        let full = self.resolve_below_root(path.as_ref())?;
        let meta = tokio::fs::symlink_metadata(&full).await?;
        if !meta.is_file() {
            return Err(Error::from(ErrorKind::PermanentFileNotAvailable));
        }
        Ok(tokio::fs::remove_file(full).await?)
    }

    async fn mkd<P: AsRef<Path> + Send + fmt::Debug>(&self, _user: &Device, path: P) -> Result<()> {
        let full = self.resolve_below_root(path.as_ref())?;
        Ok(tokio::fs::create_dir(full).await?)
    }

    async fn rename<P: AsRef<Path> + Send + fmt::Debug>(
        &self,
        _user: &Device,
        from: P,
        to: P,
    ) -> Result<()> {
        let (device, _) = self.home()?;
        let from = self.resolve_below_root(from.as_ref())?;
        let to = self.resolve_below_root(to.as_ref())?;
        let meta = tokio::fs::symlink_metadata(&from).await?;
        let to_name = file_name(&to)?;
        let onto_folder = tokio::fs::symlink_metadata(&to)
            .await
            .is_ok_and(|m| m.is_dir());
        if meta.is_file() && is_candidate_name(&to_name) && !onto_folder {
            // x.part → x.json: the upload is complete. Whichever folder it names, it
            // is this device's delivery: ingest it now.
            return Ok(self.handoff.complete(device, &from, &to_name).await?);
        }
        Ok(tokio::fs::rename(from, to).await?)
    }

    async fn rmd<P: AsRef<Path> + Send + fmt::Debug>(&self, _user: &Device, path: P) -> Result<()> {
        let full = self.resolve_below_root(path.as_ref())?;
        Ok(tokio::fs::remove_dir(full).await?)
    }

    async fn cwd<P: AsRef<Path> + Send + fmt::Debug>(&self, _user: &Device, path: P) -> Result<()> {
        let full = self.resolve(path.as_ref())?;
        let meta = tokio::fs::symlink_metadata(full).await?;
        if meta.is_dir() {
            Ok(())
        } else {
            Err(Error::from(ErrorKind::PermanentDirectoryNotAvailable))
        }
    }
}
