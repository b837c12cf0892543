//! HTTPS (rustls) with the real binary: a self-signed certificate made for the test,
//! curl as the client.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ctdata_tests::{fixtures, self_signed, Backend, ServerEnv, TestDb};

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl")
}

/// Runs `serve`, which must refuse to start; returns its output.
fn refused_start(env: &ServerEnv) -> Output {
    let mut child = env
        .command(&["serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ctdata-server");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the server started anyway:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "serve exited 0");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_https_and_refuses_plain_http() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let mut env = ServerEnv::new(&db);
    let cert = env.enable_https();
    env.set("CTDATA__HTTP__HEADER_READ_TIMEOUT_SECS", "1");
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let base = server.http_base();
    assert!(
        base.starts_with("https://127.0.0.1:"),
        "{base}\n{}",
        server.log_text()
    );
    let cacert = cert.display().to_string();

    let ready = curl(&["-f", "--cacert", &cacert, &format!("{base}/readyz")]);
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );

    // The batch, stored over TLS.
    let file = fixtures().join("good").join("json-basic.json");
    let bearer = format!("Authorization: Bearer {token}");
    let data = format!("@{}", file.display());
    let url = format!("{base}/api/v1/batches");
    let out = curl(&[
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--cacert",
        &cacert,
        "-H",
        &bearer,
        "--data-binary",
        &data,
        &url,
    ]);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code.trim(), "201", "{body}");
    let receipt: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(receipt["status"], "ingested", "{body}");
    assert!(receipt["inserted"].as_i64().unwrap() > 0, "{body}");

    // HTTP/2 by ALPN works too (the replay is a duplicate).
    let out = curl(&[
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        "--cacert",
        &cacert,
        "-H",
        &bearer,
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");

    // A client that does not trust the certificate gives up.
    let untrusted = curl(&["-f", &format!("{base}/healthz")]);
    assert!(
        !untrusted.status.success(),
        "curl trusted a self-signed cert"
    );

    // Plain HTTP on the same port gets no answer.
    let plain_base = base.replacen("https://", "http://", 1);
    let plain = curl(&["-f", &format!("{plain_base}/healthz")]);
    assert!(
        !plain.status.success(),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("ok"));

    // A client that connects and never starts the handshake is dropped after the
    // header-read timeout (1 s here), not held forever.
    let addr = base.trim_start_matches("https://").to_string();
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle
        .read(&mut buf)
        .expect("the server closes a silent connection");
    assert_eq!(n, 0, "expected the server to close the connection");
    assert!(started.elapsed() < Duration::from_secs(10));

    // And the server still serves after all that.
    let again = curl(&["-f", "--cacert", &cacert, &format!("{base}/healthz")]);
    assert!(again.status.success());

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_or_broken_tls_settings_stop_the_start() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let mut env = ServerEnv::new(&db);
    let (cert, _key) = self_signed(env.dir.path());
    let cert_env = (
        "CTDATA__HTTP__TLS_CERT".to_string(),
        cert.display().to_string(),
    );

    // A certificate without its key.
    env.extra_env = vec![cert_env.clone()];
    let out = refused_start(&env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http.tls_key"), "{stderr}");

    // A key file that holds no key: the message names the file.
    let junk = env.dir.path().join("junk-key.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    env.extra_env = vec![
        cert_env,
        (
            "CTDATA__HTTP__TLS_KEY".to_string(),
            junk.display().to_string(),
        ),
    ];
    let out = refused_start(&env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("http.tls_key") && stderr.contains("junk-key.pem"),
        "{stderr}"
    );
}
