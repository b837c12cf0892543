//! The remote folder as a list of files, for DataTracker-style assisted sync
//! (`compare`, `push`, `fetch`) and `sync purge --remote`: the device's folder in a
//! share, or the batch folder of an FTP site.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::config::{Config, Protocol};
use crate::ftp;
use crate::home::sync_dir;
use crate::send::Outcome;
use crate::share;

pub fn sha256(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// The folder beside a device's batches that the server never ingests.
pub const REFERENCE: &str = "reference";

pub enum Remote {
    Share(PathBuf),
    Ftp(ftp::Session),
}

impl Remote {
    pub fn open(config: &Config) -> anyhow::Result<Remote> {
        let fail = |why: String| anyhow::anyhow!("{}: {why}", config.upload.url);
        match config.upload.protocol {
            Protocol::Share => Ok(Remote::Share(
                share::device_dir(&config.upload, &config.device).map_err(fail)?,
            )),
            Protocol::Ftp | Protocol::Ftps => Ok(Remote::Ftp(
                ftp::open(config).map_err(|e| fail(e.to_string()))?,
            )),
            Protocol::Https => bail!(
                "the HTTP API keeps no folder to compare with: compare, push, fetch and \
                 `purge --remote` work with share, ftp and ftps (over https use send and pull)"
            ),
        }
    }

    /// Visible files and their sizes; temporary `.part` uploads are left out.
    pub fn list(&mut self) -> anyhow::Result<Vec<(String, u64)>> {
        let mut files = match self {
            Remote::Share(dir) => {
                let mut found = Vec::new();
                for name in crate::home::list_files(dir)? {
                    found.push((name.clone(), std::fs::metadata(dir.join(&name))?.len()));
                }
                // Reference files (KeySets, species lists), which the server never
                // ingests, listed as `reference/NAME`.
                let reference = dir.join(REFERENCE);
                if reference.is_dir() {
                    for name in crate::home::list_files(&reference)? {
                        let size = std::fs::metadata(reference.join(&name))?.len();
                        found.push((format!("{REFERENCE}/{name}"), size));
                    }
                }
                found
            }
            Remote::Ftp(s) => ftp::list(s)?,
        };
        files.retain(|(n, _)| !n.starts_with('.') && !n.ends_with(".part"));
        files.sort();
        Ok(files)
    }

    /// Uploads through a temporary name, as a send does.
    pub fn put(&mut self, path: &Path, name: &str) -> anyhow::Result<()> {
        let outcome = match self {
            Remote::Share(dir) => share::put_into(dir, path, name),
            Remote::Ftp(s) => ftp::put(s, path, name),
        };
        match outcome {
            Outcome::Delivered { .. } => Ok(()),
            Outcome::Refused(why) | Outcome::Retry(why) | Outcome::Stop(why) => bail!(why),
        }
    }

    /// Downloads `name` into `dir` as `as_name` (temporary name, fsync, rename);
    /// returns its size.
    pub fn get(&mut self, name: &str, dir: &Path, as_name: &str) -> anyhow::Result<u64> {
        let tmp = dir.join(format!(".{as_name}.tmp"));
        let mut file = File::create(&tmp)?;
        let got = match self {
            Remote::Share(from) => std::io::copy(&mut File::open(from.join(name))?, &mut file)?,
            Remote::Ftp(s) => ftp::get(s, name, &mut file)?,
        };
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, dir.join(as_name))?;
        sync_dir(dir)?;
        Ok(got)
    }

    /// How `name` there compares with the local file `here`: by content hash where the
    /// remote can be read as a file (a share), else by size and modification time (FTP
    /// offers no content hash), and the verdict says which.
    pub fn compare(&mut self, name: &str, size: u64, here: &Path) -> anyhow::Result<String> {
        let local_size = std::fs::metadata(here)?.len();
        if local_size != size {
            return Ok(format!("DIFFERENT: {local_size} bytes here, {size} there"));
        }
        match self {
            Remote::Share(dir) => {
                let (a, b) = (sha256(here)?, sha256(&dir.join(name))?);
                Ok(if a == b {
                    "same content (size and SHA-256)".to_string()
                } else {
                    "DIFFERENT content (same size, other SHA-256)".to_string()
                })
            }
            Remote::Ftp(s) => {
                let mine: chrono::DateTime<chrono::Utc> =
                    std::fs::metadata(here)?.modified()?.into();
                let mine = mine.naive_utc().format("%Y-%m-%d %H:%M:%S");
                Ok(match ftp::modified(s, name) {
                    Some(t) => format!(
                        "same size; modified {mine} here, {} there (FTP gives no content \
                         hash: compared by size and time)",
                        t.format("%Y-%m-%d %H:%M:%S")
                    ),
                    None => "same size (FTP gives no content hash nor time here: compared by \
                             size only)"
                        .to_string(),
                })
            }
        }
    }

    pub fn delete(&mut self, name: &str) -> anyhow::Result<()> {
        match self {
            Remote::Share(dir) => {
                std::fs::remove_file(dir.join(name))?;
                Ok(sync_dir(dir)?)
            }
            Remote::Ftp(s) => Ok(ftp::delete(s, name)?),
        }
    }

    pub fn close(self) {
        if let Remote::Ftp(s) = self {
            ftp::quit(s);
        }
    }
}
