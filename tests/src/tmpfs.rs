//! A small filesystem of its own for a test that fills the disk: a tmpfs mounted on a
//! temporary folder (root only), unmounted when dropped.

use std::path::Path;
use std::process::Command;

pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// A tmpfs of `size` (e.g. "4m"); `None` (with a visible SKIPPED) where mounting is
    /// not possible, which under `CI` fails instead.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        Self::mount_with(&format!("size={size}"))
    }

    /// A tmpfs with these mount options (e.g. "size=4m,nr_inodes=64").
    pub fn mount_with(options: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().expect("run id");
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("SKIPPED: needs root to mount a tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but mounting a tmpfs failed: {why}"
            );
            eprintln!("SKIPPED: cannot mount a tmpfs: {why}");
            return None;
        }
        Some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
