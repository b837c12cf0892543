//! The client's data directory: folders, locks, crash-safe file writes and the send log.
//!
//! Layout: `config.toml`, `state.json`, `open.ndjson` (the batch being recorded),
//! `outbox/` (sealed batches waiting to go), `sent/` (delivered, with receipts),
//! `rejected/` (refused by the server, with `.reason.txt`), `inbox/` (what `pull`
//! brought), `docked/` (sources taken by `dock --move`), `ctdata.log` (one line per send
//! attempt), `.staging/` (files uploaded in `ctdata app` while they are imported), and
//! the lock files `.state.lock`, `.send.lock`, `.autosend.lock`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

pub const OUTBOX: &str = "outbox";
pub const SENT: &str = "sent";
pub const REJECTED: &str = "rejected";
pub const INBOX: &str = "inbox";
pub const DOCKED: &str = "docked";

#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    /// `--home` / `CTDATA_HOME`, else the platform's data directory
    /// (`~/.local/share/ctdata` on Linux, `%APPDATA%\CTData\ctdata\data` on Windows).
    pub fn locate(flag: Option<PathBuf>) -> anyhow::Result<Home> {
        let root = match flag {
            Some(dir) => dir,
            None => directories::ProjectDirs::from("org", "CTData", "ctdata")
                .context("no home directory to keep the client's data in: pass --home DIR")?
                .data_dir()
                .to_path_buf(),
        };
        Ok(Home { root })
    }

    /// Creates the folders (idempotent).
    pub fn create(&self) -> anyhow::Result<()> {
        for dir in [OUTBOX, SENT, REJECTED, INBOX, DOCKED] {
            let path = self.root.join(dir);
            create_private_dir(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        Ok(())
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn open_batch(&self) -> PathBuf {
        self.root.join("open.ndjson")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("ctdata.log")
    }

    /// Waits for the lock on `name` (held until the returned file is dropped).
    pub fn lock(&self, name: &str) -> anyhow::Result<File> {
        let file = self.lock_file(name)?;
        file.lock()
            .with_context(|| format!("cannot lock {}", self.root.join(name).display()))?;
        Ok(file)
    }

    /// The lock on `name` if nobody holds it, else `None`.
    pub fn try_lock(&self, name: &str) -> anyhow::Result<Option<File>> {
        let file = self.lock_file(name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", self.root.join(name).display()))
            }
        }
    }

    fn lock_file(&self, name: &str) -> anyhow::Result<File> {
        create_private_dir(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))?;
        let path = self.root.join(name);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// Appends one line to the send log. The log is for people: a failure to write it
    /// is reported on stderr but never stops a send.
    pub fn log(&self, line: &str) {
        let stamp = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%:z");
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .and_then(|mut f| writeln!(f, "{stamp} {line}"));
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", self.log_path().display());
        }
    }
}

/// Creates `dir` and any missing parents, only their owner may open them (0700): the
/// client's folders hold unsent sightings, its token and state. Folders that exist keep
/// their modes (`--home` may name one shared on purpose).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content:
/// a temporary file beside it, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_as(path, bytes, false)
}

/// [`write_atomic`] for a file only its owner may read (it holds a token): private
/// from its first byte, not after the rename.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_as(path, bytes, true)
}

fn write_atomic_as(path: &Path, bytes: &[u8], private: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let _ = fs::remove_file(&tmp);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes a rename or a new file in `dir` durable. Windows has no directory handles to
/// sync; its renames are journaled by NTFS.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Moves `from` into folder `to_dir` under the same name, durably.
pub fn move_into(from: &Path, to_dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(to_dir)?;
    let to = to_dir.join(from.file_name().unwrap_or_default());
    fs::rename(from, &to)?;
    sync_dir(to_dir)?;
    if let Some(parent) = from.parent() {
        sync_dir(parent)?;
    }
    Ok(to)
}

/// Sorted names of the regular, non-hidden files in `dir` (none if it is missing).
pub fn list_files(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.file_type()?.is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
