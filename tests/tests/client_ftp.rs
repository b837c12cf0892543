//! The field client sending over FTP and FTPS to Debian's vsftpd (a real FTP site as
//! CyberTracker devices use), and its connection test against it.
//!
//! A minimal vsftpd launcher lives here (anonymous uploads into `CTData/`, loopback
//! only); the shared harness is getting a fuller one on another branch.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ctdata_tests::client::Client;
use ctdata_tests::eventually;

struct Vsftpd {
    child: Child,
    port: u16,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// vsftpd on 127.0.0.1 with an anonymous, writable `CTData/`; FTPS when `tls` names a
/// certificate and key.
async fn vsftpd(tls: Option<(&Path, &Path)>) -> Option<Vsftpd> {
    if !Path::new("/usr/sbin/vsftpd").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but vsftpd is not installed"
        );
        eprintln!("SKIPPED: vsftpd is not installed");
        return None;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("site");
    std::fs::create_dir_all(root.join("CTData")).unwrap();
    // vsftpd refuses a writable anonymous root; the folder inside it takes uploads.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(root.join("CTData"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = free_port();
    let mut conf = format!(
        "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\nlisten_port={port}\n\
         background=NO\nanonymous_enable=YES\nno_anon_password=YES\nanon_root={}\n\
         local_enable=NO\nwrite_enable=YES\nanon_upload_enable=YES\n\
         anon_mkdir_write_enable=YES\nanon_other_write_enable=YES\n\
         anon_world_readable_only=NO\nanon_umask=022\nseccomp_sandbox=NO\n\
         secure_chroot_dir=/var/run/vsftpd/empty\nxferlog_enable=NO\n\
         pasv_address=127.0.0.1\n",
        root.display()
    );
    if let Some((cert, key)) = tls {
        conf += &format!(
            "ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\n\
             force_anon_data_ssl=YES\nrequire_ssl_reuse=NO\nssl_ciphers=HIGH\n\
             rsa_cert_file={}\nrsa_private_key_file={}\n",
            cert.display(),
            key.display()
        );
    }
    let conf_path = dir.path().join("vsftpd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new("/usr/sbin/vsftpd")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .spawn()
        .expect("start vsftpd");
    eventually("vsftpd to listen", Duration::from_secs(30), || async {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    })
    .await;
    Some(Vsftpd {
        child,
        port,
        root,
        _dir: dir,
    })
}

fn init_ftp(client: &Client, url: &str, extra: &[&str]) {
    let protocol = url.split("://").next().unwrap();
    let mut args = vec![
        "init",
        "--protocol",
        protocol,
        "--url",
        url,
        "--device",
        "ranger-07",
        "--user",
        "anonymous",
        "--token",
        "field@example.org",
    ];
    args.extend_from_slice(extra);
    client.ok(&args);
}

fn uploaded(site: &Vsftpd) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(site.root.join("CTData"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_ftp_into_the_ctdata_folder_of_vsftpd() {
    let Some(site) = vsftpd(None).await else {
        return;
    };
    let client = Client::new();
    init_ftp(&client, &format!("ftp://127.0.0.1:{}/", site.port), &[]);
    let test = client.ok(&["test"]);
    for step in [
        "✓ connect",
        "✓ FTP greeting",
        "✓ log in",
        "✓ find the CTData folder: batches go to /CTData",
        "✓ write and delete a probe file",
    ] {
        assert!(test.contains(step), "{step}:\n{test}");
    }
    client.record(3, "Loxodonta africana");
    client.ok(&["seal"]);
    client.record(1, "Syncerus caffer");
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 2 batches (4 sightings"), "{out}");
    let sent = client.batches_in("sent");
    assert_eq!(uploaded(&site), sent, "renamed into place, no .part left");
    for name in &sent {
        let there = std::fs::read(site.root.join("CTData").join(name)).unwrap();
        let here = std::fs::read(client.path("sent").join(name)).unwrap();
        assert_eq!(there, here, "{name} arrived whole");
    }

    // Assisted sync with the site: a reference file comes down, the list says so.
    std::fs::write(site.root.join("CTData/reference.csv"), "species\nLeo\n").unwrap();
    let out = client.ok(&["compare"]);
    assert!(out.contains("only there (3):"), "{out}");
    assert!(out.contains("  reference.csv  12 bytes"), "{out}");
    client.ok(&["fetch", "reference.csv"]);
    assert_eq!(
        std::fs::read_to_string(client.path("inbox/reference.csv")).unwrap(),
        "species\nLeo\n"
    );
    assert!(!site.root.join("CTData/reference.csv").exists());
    client.ok(&["push", "reference.csv"]);
    assert!(site.root.join("CTData/reference.csv").exists());
    assert!(!client.path("inbox/reference.csv").exists());

    // A login the site refuses, and a port nobody listens on: the cause, in words.
    client.ok(&[
        "init",
        "--protocol",
        "ftp",
        "--url",
        &format!("ftp://127.0.0.1:{}/", site.port),
        "--device",
        "ranger-07",
        "--token",
        "wrong",
    ]);
    let out = client.run(&["test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✗ log in: the FTP server refused user \"ranger-07\""),
        "{text}"
    );
    assert!(text.contains("530"), "{text}");
    init_ftp(&client, &format!("ftp://127.0.0.1:{}/", free_port()), &[]);
    let out = client.run(&["test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("✗ connect: "), "{text}");
    assert!(text.contains("refused the connection"), "{text}");
    client.record(1, "Panthera leo");
    let out = client.run(&["send", "--retries", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(client.batches_in("outbox").len(), 1, "kept for later");

    // A folder that is not there.
    init_ftp(
        &client,
        &format!("ftp://127.0.0.1:{}/missing", site.port),
        &[],
    );
    let text = String::from_utf8_lossy(&client.run(&["test"]).stdout).into_owned();
    assert!(
        text.contains("✗ find the CTData folder: folder /missing is not there"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_ftps_with_the_sites_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let Some(site) = vsftpd(Some((&cert, &key))).await else {
        return;
    };
    let client = Client::new();
    let url = format!("ftps://localhost:{}/", site.port);
    init_ftp(&client, &url, &[]);
    let out = client.run(&["test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("✗ TLS (AUTH TLS)"), "{text}");
    assert!(text.contains("--ca-file"), "{text}");

    init_ftp(&client, &url, &["--ca-file", cert.to_str().unwrap()]);
    let test = client.ok(&["test"]);
    assert!(test.contains("✓ TLS (AUTH TLS)"), "{test}");
    assert!(test.contains("✓ write and delete a probe file"), "{test}");
    client.record(2, "Loxodonta africana");
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 1 batch (2 sightings"), "{out}");
    assert_eq!(uploaded(&site), client.batches_in("sent"));
}
