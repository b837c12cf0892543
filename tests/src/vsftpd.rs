//! A real vsftpd (Debian's package) for tests and benchmarks: on a free loopback port,
//! with a temporary configuration, a temporary system user with a random password
//! whose home (chrooted, so it is `/` over FTP) holds a `CTData` folder, and optionally
//! explicit FTPS with a fresh self-signed certificate. Stopped, and the user removed,
//! on drop.
//!
//! vsftpd authenticates local users through PAM, so the user must exist in the system
//! databases: creating it needs root (as in CI). Without root or vsftpd, [`Vsftpd::start`]
//! returns `None` outside CI (the caller skips) and fails in CI.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct Vsftpd {
    pub port: u16,
    pub user: String,
    pub password: String,
    /// With FTPS: the server's certificate (PEM), for the client to trust.
    pub cert: Option<PathBuf>,
    home: tempfile::TempDir,
    conf: tempfile::TempDir,
    uid: u32,
    child: Child,
}

impl Vsftpd {
    /// Plain FTP.
    pub fn start() -> Option<Vsftpd> {
        Self::launch(false)
    }

    /// Explicit FTPS (AUTH TLS), TLS required for logins and data.
    pub fn start_tls() -> Option<Vsftpd> {
        Self::launch(true)
    }

    fn launch(tls: bool) -> Option<Vsftpd> {
        let binary = Path::new("/usr/sbin/vsftpd");
        let is_root = run_output("id", &["-u"]).trim() == "0";
        if !binary.exists() || !is_root {
            let why = if is_root {
                "vsftpd is not installed (apt-get install vsftpd)"
            } else {
                "creating the FTP test user needs root"
            };
            assert!(std::env::var_os("CI").is_none(), "CI is set but {why}");
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let home = tempfile::tempdir().expect("temp dir");
        let conf = tempfile::tempdir().expect("temp dir");
        let user = format!("ctdftp{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let password = uuid::Uuid::new_v4().simple().to_string();
        create_user(&user, &password, home.path());
        let uid: u32 = run_output("id", &["-u", &user])
            .trim()
            .parse()
            .expect("uid");
        std::fs::create_dir_all(home.path().join("CTData")).expect("CTData");
        chown_tree(home.path(), uid);

        let cert = tls.then(|| crate::self_signed(conf.path()));
        let empty = conf.path().join("empty");
        std::fs::create_dir_all(&empty).expect("secure_chroot_dir");
        let port = free_port();
        let mut text = format!(
            "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\n\
             anonymous_enable=NO\nlocal_enable=YES\nwrite_enable=YES\nlocal_umask=022\n\
             chroot_local_user=YES\nallow_writeable_chroot=YES\nsecure_chroot_dir={}\n\
             pasv_enable=YES\npasv_address=127.0.0.1\nport_enable=NO\nseccomp_sandbox=NO\n\
             pam_service_name=vsftpd\nuserlist_enable=NO\nxferlog_enable=NO\n\
             delay_failed_login=0\nmax_login_fails=100\nmax_per_ip=0\nmax_clients=0\n",
            empty.display()
        );
        if let Some((cert, key)) = &cert {
            text.push_str(&format!(
                "ssl_enable=YES\nrsa_cert_file={}\nrsa_private_key_file={}\nforce_local_logins_ssl=YES\n\
                 force_local_data_ssl=YES\nrequire_ssl_reuse=NO\nssl_ciphers=HIGH\n",
                cert.display(),
                key.display()
            ));
        }
        let file = conf.path().join("vsftpd.conf");
        std::fs::write(&file, text).expect("vsftpd.conf");
        let log = std::fs::File::create(conf.path().join("vsftpd.log")).expect("log");
        let child = Command::new(binary)
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start vsftpd");
        let server = Vsftpd {
            port,
            user,
            password,
            cert: cert.map(|(cert, _)| cert),
            home,
            conf,
            uid,
            child,
        };
        server.wait_ready();
        Some(server)
    }

    /// Polls until the server greets on its port.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("220") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "vsftpd did not start on port {}: {}",
                self.port,
                std::fs::read_to_string(self.conf.path().join("vsftpd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The user's home: `/` over FTP.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The `CTData` folder on disk (`/CTData` over FTP).
    pub fn ctdata(&self) -> PathBuf {
        self.home.path().join("CTData")
    }

    /// `ftp://127.0.0.1:PORT/FOLDER` (`ftps://` with TLS).
    pub fn url(&self, folder: &str) -> String {
        let scheme = if self.cert.is_some() { "ftps" } else { "ftp" };
        format!(
            "{scheme}://127.0.0.1:{}/{}",
            self.port,
            folder.trim_start_matches('/')
        )
    }

    /// Writes a file below `CTData` as if a device had uploaded it (owned by the FTP user).
    pub fn put(&self, rel: &str, bytes: &[u8]) {
        self.put_in("CTData", rel, bytes);
    }

    /// Writes a file below another top folder of the FTP user's home.
    pub fn put_in(&self, folder: &str, rel: &str, bytes: &[u8]) {
        let path = self.home.path().join(folder).join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("folders");
        std::fs::write(&path, bytes).expect("write");
        chown_tree(self.home.path(), self.uid);
    }

    /// Files below `CTData`, relative, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect(&self.ctdata(), "", &mut out);
        out.sort();
        out
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // -f: a session process of the user may still be closing.
        for _ in 0..50 {
            let out = Command::new("userdel").args(["-f", &self.user]).output();
            if out.is_ok_and(|o| o.status.success()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn create_user(user: &str, password: &str, home: &Path) {
    // useradd takes a lock on the user databases: tests running at once retry.
    let mut last = String::new();
    for _ in 0..100 {
        let out = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", "-d"])
            .arg(home)
            .arg(user)
            .output()
            .expect("run useradd");
        if out.status.success() {
            last.clear();
            break;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(last.is_empty(), "useradd {user} failed: {last}");
    for _ in 0..100 {
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run chpasswd");
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(format!("{user}:{password}\n").as_bytes())
            .expect("password");
        drop(stdin);
        let out = child.wait_with_output().expect("chpasswd");
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(30));
    }
    panic!("chpasswd for {user} failed: {last}");
}

fn chown_tree(path: &Path, uid: u32) {
    let _ = std::os::unix::fs::lchown(path, Some(uid), None);
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                chown_tree(&e.path(), uid);
            } else {
                let _ = std::os::unix::fs::lchown(e.path(), Some(uid), None);
            }
        }
    }
}

fn collect(dir: &Path, rel: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect(&e.path(), &child, out);
        } else {
            out.push(child);
        }
    }
}

fn run_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
