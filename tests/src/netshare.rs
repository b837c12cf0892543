//! One folder seen through several network mounts, as replicas on different hosts see
//! one NFS or SMB share: an OpenSSH server on a free loopback port exports a temporary
//! folder over SFTP, and each mount is an `sshfs` (FUSE) client of its own, with that
//! client's own attribute and directory caches. What a network share does to a server,
//! this does too: another client's changes come with no change notification and show
//! only when the cache expires, and a rename is one atomic request to the file server.
//! Root only; unmounted and stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NetShare {
    dir: tempfile::TempDir,
    sshd: Child,
    mounts: Vec<PathBuf>,
}

/// `None` (with a visible SKIPPED) where the share cannot be made; under `CI` that fails.
fn unavailable(why: &str) -> Option<NetShare> {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but a network share cannot be made: {why}"
    );
    eprintln!("SKIPPED: {why}");
    None
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

impl NetShare {
    /// The exported folder and `mounts` sshfs mounts of it.
    pub fn new(mounts: usize) -> Option<NetShare> {
        let uid = Command::new("id").arg("-u").output().expect("run id");
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return unavailable("a network share needs root (sshd, FUSE mounts)");
        }
        for tool in ["/usr/sbin/sshd", "/usr/bin/sshfs", "/usr/bin/ssh-keygen"] {
            if !Path::new(tool).exists() {
                return unavailable(&format!(
                    "{tool} is missing (apt-get install openssh-server sshfs; test.sh does)"
                ));
            }
        }
        if !Path::new("/dev/fuse").exists() {
            return unavailable("no /dev/fuse: FUSE mounts are not possible here");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let at = |name: &str| dir.path().join(name);
        std::fs::create_dir(at("export")).unwrap();
        for key in ["host_key", "user_key"] {
            if let Err(e) = run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", ""])
                .arg("-f")
                .arg(at(key)))
            {
                return unavailable(&e);
            }
        }
        std::fs::copy(at("user_key.pub"), at("authorized_keys")).unwrap();
        let port = crate::free_port();
        std::fs::write(
            at("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 StrictModes no\nSubsystem sftp internal-sftp\nPidFile {}\n",
                at("host_key").display(),
                at("authorized_keys").display(),
                at("sshd.pid").display(),
            ),
        )
        .unwrap();
        // sshd wants its privilege-separation folder.
        let _ = std::fs::create_dir_all("/run/sshd");
        let sshd = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(at("sshd_config"))
            .arg("-E")
            .arg(at("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        let mut share = NetShare {
            sshd,
            mounts: Vec::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on 127.0.0.1:{port}: {}",
                std::fs::read_to_string(share.dir.path().join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for i in 0..mounts {
            let mount = share.dir.path().join(format!("mount{i}"));
            std::fs::create_dir(&mount).unwrap();
            // Attributes and listings cached for 3 s, as an NFS client revalidates a
            // folder it reads often (sshfs would keep them 20 s).
            let options = format!(
                "IdentityFile={},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,port={port},\
                 cache_timeout=3",
                share.dir.path().join("user_key").display()
            );
            let mounted = run(Command::new("sshfs")
                .arg(format!(
                    "root@127.0.0.1:{}",
                    share.dir.path().join("export").display()
                ))
                .arg(&mount)
                .arg("-o")
                .arg(options));
            if let Err(e) = mounted {
                return unavailable(&e);
            }
            share.mounts.push(mount);
        }
        Some(share)
    }

    /// Mount `i` of the exported folder.
    pub fn mount(&self, i: usize) -> &Path {
        &self.mounts[i]
    }

    /// The exported folder itself, as the file server sees it.
    pub fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }
}

impl Drop for NetShare {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = Command::new("fusermount")
                .arg("-u")
                .arg("-z")
                .arg(m)
                .status();
        }
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}
