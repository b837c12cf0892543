//! A source's remote folder, over FTP(S) or as a local path (a mounted share), behind
//! one interface: list, fetch, delete, move.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::ftp::FtpRemote;
use crate::config::{Place, SourceSettings};

/// A file in the remote folder, as listed.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    /// Path below the source folder, `/`-separated.
    pub rel: String,
    pub size: u64,
    /// Modification time as the remote tells it; with the size, tells a changed file.
    pub modified: String,
}

/// A failed step, in plain words: `connect to host:21: connection refused (…)`.
#[derive(Debug, Clone)]
pub struct StepError {
    pub step: String,
    pub cause: String,
    /// The connection (or folder) cannot be used further: stop this source's pull.
    pub fatal: bool,
}

impl StepError {
    pub fn fatal(step: &str, cause: &str) -> StepError {
        StepError {
            step: step.into(),
            cause: cause.into(),
            fatal: true,
        }
    }

    pub fn recoverable(step: &str, cause: &str) -> StepError {
        StepError {
            fatal: false,
            ..StepError::fatal(step, cause)
        }
    }

    pub fn into_fatal(self) -> StepError {
        StepError {
            fatal: true,
            ..self
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.cause)
    }
}

pub enum Remote {
    Ftp(Box<FtpRemote>),
    Folder(PathBuf),
}

impl Remote {
    pub async fn open(source: &SourceSettings) -> Result<Remote, StepError> {
        let root = match source.url.place() {
            Place::Ftp { .. } => {
                let password = read_password(source)?;
                return Ok(Remote::Ftp(Box::new(
                    FtpRemote::open(source, &password).await?,
                )));
            }
            Place::Folder(root) => root.clone(),
        };
        let step = format!("open the folder {}", root.display());
        let cause = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => "the folder is missing (is the share mounted?)".to_string(),
            _ => fs_cause(&e),
        };
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => match fs::read_dir(&root) {
                Ok(_) => Ok(Remote::Folder(root)),
                Err(e) => Err(StepError::fatal(&step, &cause(e))),
            },
            Ok(_) => Err(StepError::fatal(&step, "it is not a folder")),
            Err(e) => Err(StepError::fatal(&step, &cause(e))),
        }
    }

    pub async fn list(&mut self, skip: Option<&str>) -> Result<Vec<RemoteFile>, StepError> {
        match self {
            Remote::Ftp(ftp) => ftp.list(skip).await,
            Remote::Folder(root) => {
                let (root, skip) = (root.clone(), skip.map(str::to_string));
                tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    walk(&root, "", skip.as_deref(), 0, &mut out)?;
                    out.sort_by(|a, b| a.rel.cmp(&b.rel));
                    Ok(out)
                })
                .await
                .map_err(|e| StepError::fatal("list the folder", &e.to_string()))?
            }
        }
    }

    /// Copies a file to `dest`, fsynced; returns the bytes copied.
    pub async fn fetch(&mut self, f: &RemoteFile, dest: &Path) -> Result<u64, StepError> {
        match self {
            Remote::Ftp(ftp) => ftp.fetch(f, dest).await,
            Remote::Folder(root) => {
                let (from, dest) = (root.join(&f.rel), dest.to_path_buf());
                tokio::task::spawn_blocking(move || {
                    let step = format!("copy {}", from.display());
                    let mut src = fs::File::open(&from)
                        .map_err(|e| StepError::recoverable(&step, &fs_cause(&e)))?;
                    let mut out = fs::File::create(&dest).map_err(|e| {
                        StepError::fatal(&step, &format!("cannot write {}: {e}", dest.display()))
                    })?;
                    let n = io::copy(&mut src, &mut out)
                        .map_err(|e| StepError::recoverable(&step, &fs_cause(&e)))?;
                    out.flush().and_then(|_| out.sync_all()).map_err(|e| {
                        StepError::fatal(&step, &format!("cannot write {}: {e}", dest.display()))
                    })?;
                    Ok(n)
                })
                .await
                .map_err(|e| StepError::fatal("copy", &e.to_string()))?
            }
        }
    }

    pub async fn delete(&mut self, f: &RemoteFile) -> Result<(), StepError> {
        match self {
            Remote::Ftp(ftp) => ftp.delete(f).await,
            Remote::Folder(root) => {
                let path = root.join(&f.rel);
                fs::remove_file(&path).map_err(|e| {
                    StepError::recoverable(&format!("delete {}", path.display()), &fs_cause(&e))
                })
            }
        }
    }

    pub async fn move_to(&mut self, f: &RemoteFile, folder: &str) -> Result<(), StepError> {
        match self {
            Remote::Ftp(ftp) => ftp.move_to(f, folder).await,
            Remote::Folder(root) => {
                let from = root.join(&f.rel);
                let to = root.join(folder.trim_start_matches('/')).join(&f.rel);
                let step = format!("move {} to {}", from.display(), to.display());
                let parent = to.parent().unwrap_or(root);
                fs::create_dir_all(parent)
                    .and_then(|_| fs::rename(&from, &to))
                    .map_err(|e| StepError::recoverable(&step, &fs_cause(&e)))
            }
        }
    }

    pub async fn close(self) {
        if let Remote::Ftp(ftp) = self {
            ftp.close().await;
        }
    }
}

/// The FTP password: first line of `password_file`; none means an anonymous login.
fn read_password(source: &SourceSettings) -> Result<String, StepError> {
    let Some(file) = &source.password_file else {
        return Ok(String::new());
    };
    let text = fs::read_to_string(file).map_err(|e| {
        StepError::fatal(
            &format!("read password_file {}", file.display()),
            &fs_cause(&e),
        )
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Files below `dir` (symlinks and temp names skipped; so is the `skip` folder).
fn walk(
    root: &Path,
    rel: &str,
    skip: Option<&str>,
    depth: usize,
    out: &mut Vec<RemoteFile>,
) -> Result<(), StepError> {
    let dir = root.join(rel);
    let entries = fs::read_dir(&dir).map_err(|e| {
        let err = StepError::fatal(&format!("list {}", dir.display()), &fs_cause(&e));
        if rel.is_empty() {
            err
        } else {
            StepError {
                fatal: false,
                ..err
            }
        }
    });
    let entries = match entries {
        Ok(e) => e,
        Err(e) if !e.fatal => {
            tracing::warn!("skipping a folder: {e}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !crate::dropdir::is_candidate_name(&name) {
            continue;
        }
        if crate::sendcreds::is_out_name(&name) {
            tracing::info!(
                file = name,
                "a CyberTracker .OUT file (a password in plain text) is never fetched"
            );
            continue;
        }
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if meta.is_dir() {
            if depth < 16 && Some(child.as_str()) != skip {
                walk(root, &child, skip, depth + 1, out)?;
            }
        } else if meta.is_file() {
            let modified = meta
                .modified()
                .map(|t| {
                    chrono::DateTime::<chrono::Utc>::from(t)
                        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                })
                .unwrap_or_default();
            out.push(RemoteFile {
                rel: child,
                size: meta.len(),
                modified,
            });
        }
    }
    Ok(())
}

fn fs_cause(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "the folder or file is missing".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}
