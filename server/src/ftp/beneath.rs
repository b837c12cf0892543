//! Paths beneath a device's folder, resolved by the kernel.
//!
//! Checking a path for symlinks and then opening it lets anyone who can place
//! symlinks in the folder (a share-mounted drop directory) swap a folder for a link
//! in between, and read or write outside. Every operation here therefore starts from
//! an open descriptor of the device's folder and resolves the rest with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): the kernel refuses any step outside or
//! through a symlink at the moment it opens, so there is no window to race.
//! Changes (create, delete, rename) act on a name inside an opened parent folder.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// A device's folder, held open for the session.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    pub path: PathBuf,
}

/// A path below the root as the kernel should resolve it: plain names, no `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rel(PathBuf);

impl Rel {
    /// An FTP path (absolute, or relative to `/`) as names below the root. `..` may
    /// not climb above `/`.
    pub fn parse(path: &Path) -> io::Result<Rel> {
        let mut parts: Vec<&OsStr> = Vec::new();
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
        Ok(Rel(parts.iter().collect()))
    }

    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    /// The names below the root, as a relative path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The last name, or an error for the root itself.
    pub fn name(&self) -> io::Result<&OsStr> {
        self.0.file_name().ok_or_else(|| denied("the root folder"))
    }

    /// The folder holding this entry, and its name.
    pub fn split(&self) -> io::Result<(Rel, &OsStr)> {
        let name = self.name()?;
        let parent = self.0.parent().unwrap_or(Path::new("")).to_path_buf();
        Ok((Rel(parent), name))
    }

    pub fn join(&self, name: impl AsRef<Path>) -> Rel {
        Rel(self.0.join(name))
    }

    fn for_kernel(&self) -> &Path {
        if self.is_root() {
            Path::new(".")
        } else {
            &self.0
        }
    }
}

pub fn denied(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why.to_string())
}

/// A refusal by the resolver (a symlink, a way outside) is a permission problem, so
/// the client gets 550 rather than "local error".
fn resolved(e: Errno) -> io::Error {
    match e {
        Errno::ELOOP => denied("a symlink"),
        Errno::EXDEV => denied("outside the device's folder"),
        other => io::Error::from(other),
    }
}

impl Root {
    /// Opens `path` (the device's folder; must not be a symlink itself).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => denied("the device's folder is not a plain folder"),
            other => io::Error::from(other),
        })?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens `rel` with `flags`; no step may be a symlink or leave the root.
    pub fn open_at(&self, rel: &Rel, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        openat2(&self.fd, rel.for_kernel(), how).map_err(resolved)
    }

    /// The entry itself, symlinks included (as symlinks: never followed).
    pub fn stat(&self, rel: &Rel) -> io::Result<Metadata> {
        // O_PATH | O_NOFOLLOW on a trailing symlink yields the link itself.
        let fd = self.open_at(rel, OFlag::O_PATH | OFlag::O_NOFOLLOW, 0)?;
        File::from(fd).metadata()
    }

    /// The folder `rel`, opened for `*at` calls on names inside it.
    pub fn dir(&self, rel: &Rel) -> io::Result<OwnedFd> {
        self.open_at(rel, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
    }

    /// The names in folder `rel` with what each is (not following symlinks).
    pub fn list(&self, rel: &Rel) -> io::Result<Vec<(OsString, Metadata)>> {
        let fd = self.open_at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(io::Error::from)?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(io::Error::from)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                use std::os::unix::ffi::OsStrExt;
                names.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        let mut out = Vec::new();
        for name in names {
            // Gone since, or a symlink the resolver refuses to stat: not listed.
            if let Ok(meta) = self.stat(&rel.join(&name)) {
                out.push((name, meta));
            }
        }
        Ok(out)
    }

    pub fn create_dir(&self, rel: &Rel) -> io::Result<()> {
        let (parent, name) = rel.split()?;
        let dir = self.dir(&parent)?;
        nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o755))
            .map_err(io::Error::from)
    }

    /// Removes the file (`folder` false) or empty folder `rel`.
    pub fn remove(&self, rel: &Rel, folder: bool) -> io::Result<()> {
        let (parent, name) = rel.split()?;
        let dir = self.dir(&parent)?;
        remove_at(&dir, name, folder)
    }

    pub fn rename(&self, from: &Rel, to: &Rel) -> io::Result<()> {
        let (from_parent, from_name) = from.split()?;
        let (to_parent, to_name) = to.split()?;
        let (a, b) = (self.dir(&from_parent)?, self.dir(&to_parent)?);
        nix::fcntl::renameat(&a, from_name, &b, to_name).map_err(io::Error::from)
    }
}

pub fn remove_at(dir: impl AsFd, name: &OsStr, folder: bool) -> io::Result<()> {
    use nix::unistd::UnlinkatFlags;
    let how = if folder {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    nix::unistd::unlinkat(dir, name, how).map_err(io::Error::from)
}
