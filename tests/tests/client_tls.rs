//! A server with a certificate made the usual way (`openssl req -x509`, which marks it
//! as a CA): the client accepts it when it is given with `--ca-file` (pinned), and
//! explains in words what is wrong otherwise.

use std::path::{Path, PathBuf};

use ctdata_tests::client::Client;
use ctdata_tests::{Backend, ServerEnv, TestDb};

/// `openssl req -x509` as the README recipe gives it; returns (cert, key).
fn openssl_self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .expect("run openssl x509");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("CA:TRUE"),
        "openssl marks it as a CA:\n{text}"
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_made_with_openssl_is_accepted_when_pinned() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let mut env = ServerEnv::new(&db);
    let (cert, key) = openssl_self_signed(env.dir.path(), "server");
    let (other, _) = openssl_self_signed(env.dir.path(), "other");
    env.set("CTDATA__HTTP__TLS_CERT", cert.to_str().unwrap());
    env.set("CTDATA__HTTP__TLS_KEY", key.to_str().unwrap());
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let base = server.http_base();
    assert!(base.starts_with("https://"), "{base}");
    let init = |client: &Client, ca: &Path| {
        client.ok(&[
            "init",
            "--protocol",
            "https",
            "--url",
            &base,
            "--device",
            "ranger-07",
            "--token",
            &token,
            "--ca-file",
            ca.to_str().unwrap(),
        ]);
    };

    // Another certificate in --ca-file: refused, and said in words.
    let client = Client::new();
    init(&client, &other);
    let out = client.run(&["test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("✗ TLS: the secure connection failed: the server presents a CA certificate as its own, and it is not one given with"),
        "{text}"
    );
    client.record(1, "Loxodonta africana");
    let out = client.run(&["send", "--retries", "0"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("presents a CA certificate"), "{stdout}");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 0);

    // The server's own certificate: pinned, so the connection test and a send work.
    init(&client, &cert);
    let text = client.ok(&["test"]);
    assert!(text.contains("✓ TLS"), "{text}");
    assert!(text.contains("all steps passed"), "{text}");
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 1 batch (1 sightings"), "{out}");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 1);
    assert!(server.terminate().success());
}
