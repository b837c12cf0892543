//! vsftpd as the reference FTP server: started on a free loopback port with a config of
//! its own, anonymous uploads (with rename) into a folder under the run directory, and
//! killed when dropped. Needs root (vsftpd chroots and drops to the `ftp` user).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub const BINARY: &str = "/usr/sbin/vsftpd";

pub struct Vsftpd {
    child: Child,
    pub addr: SocketAddr,
    /// Where uploads land, as the client names it.
    pub upload_dir: &'static str,
    pub uploads: PathBuf,
}

impl Vsftpd {
    pub fn start(dir: &Path, passive: (u16, u16)) -> anyhow::Result<Vsftpd> {
        anyhow::ensure!(
            Path::new(BINARY).exists(),
            "{BINARY} not found: install the Debian package vsftpd (bench/ftp.sh does)"
        );
        // vsftpd refuses a chroot it can write to: the root is root's, uploads/ the
        // ftp user's.
        let root = dir.join("vsftpd-root");
        let uploads = root.join("uploads");
        std::fs::create_dir_all(&uploads)?;
        set_mode(dir, 0o755)?;
        set_mode(&root, 0o755)?;
        let chown = Command::new("chown")
            .arg("ftp:ftp")
            .arg(&uploads)
            .status()?;
        anyhow::ensure!(
            chown.success(),
            "chown ftp:ftp {} failed",
            uploads.display()
        );
        let port = free_port()?;
        let conf = dir.join("vsftpd.conf");
        std::fs::write(&conf, config(&root, port, passive))?;
        let log = std::fs::File::create(dir.join("vsftpd.log"))?;
        let child = Command::new(BINARY)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting vsftpd")?;
        let mut server = Vsftpd {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            upload_dir: "uploads",
            uploads,
        };
        server.wait_ready(Duration::from_secs(10))?;
        Ok(server)
    }

    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("vsftpd exited at start ({status}); see vsftpd.log in the run folder");
            }
            if TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("vsftpd did not listen on {} within {within:?}", self.addr)
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(root: &Path, port: u16, (pasv_min, pasv_max): (u16, u16)) -> String {
    format!(
        "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\n\
         anonymous_enable=YES\nlocal_enable=NO\nno_anon_password=YES\nanon_root={}\n\
         write_enable=YES\nanon_upload_enable=YES\nanon_mkdir_write_enable=YES\n\
         anon_other_write_enable=YES\nanon_umask=022\n\
         pasv_enable=YES\npasv_min_port={pasv_min}\npasv_max_port={pasv_max}\n\
         port_enable=NO\nconnect_from_port_20=NO\n\
         xferlog_enable=NO\ndirmessage_enable=NO\n\
         seccomp_sandbox=NO\nisolate=NO\nisolate_network=NO\n\
         secure_chroot_dir=/var/run/vsftpd/empty\n",
        root.display()
    )
}

/// A loopback port nobody listens on now (vsftpd takes a number, not a socket).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}
