//! The HTTP ingest API over real HTTP, with curl as the client.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ctdata_tests::{both_backends, fixtures, ServerEnv, TestDb};

fn good(name: &str) -> std::path::PathBuf {
    fixtures().join("good").join(name)
}

fn bad(prefix: &str) -> std::path::PathBuf {
    std::fs::read_dir(fixtures().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && !name.ends_with(".expect")
        })
        .unwrap_or_else(|| panic!("no bad fixture {prefix}"))
}

/// POSTs `file` with curl; returns the status and the JSON body.
fn post(base: &str, auth: &[&str], file: &Path, extra: &[&str]) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .args(auth)
        .args(extra)
        .arg(format!("{base}/api/v1/batches"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (code.trim().parse().unwrap(), json)
}

fn device_token(env: &ServerEnv, name: &str) -> String {
    let out = env.command(&["device", "add", name]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

both_backends! {
    upload_statuses_over_real_http,
}

async fn upload_statuses_over_real_http(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = device_token(&env, "ranger-07");
    let other = device_token(&env, "ranger-08");
    let revoked = device_token(&env, "ranger-09");
    assert!(env
        .command(&["device", "revoke", "ranger-09"])
        .status()
        .unwrap()
        .success());
    let server = env.serve().await;
    let base = server.http_base();
    let bearer = format!("Authorization: Bearer {token}");
    let auth = ["-H", bearer.as_str()];

    let health = Command::new("curl")
        .args(["-sf", &format!("{base}/readyz")])
        .output()
        .unwrap();
    assert!(health.status.success());

    // Credentials.
    assert_eq!(post(&base, &[], &good("json-basic.json"), &[]).0, 401);
    assert_eq!(
        post(
            &base,
            &["-H", "Authorization: Bearer ctd_wrong"],
            &good("json-basic.json"),
            &[]
        )
        .0,
        401
    );
    let revoked_auth = format!("Authorization: Bearer {revoked}");
    assert_eq!(
        post(&base, &["-H", &revoked_auth], &good("json-basic.json"), &[]).0,
        403
    );
    // ranger-08 posting a batch that says it is ranger-07's.
    let other_auth = format!("Authorization: Bearer {other}");
    let (code, body) = post(&base, &["-H", &other_auth], &good("json-basic.json"), &[]);
    assert_eq!(code, 403, "{body}");

    // Stored (Basic NAME:TOKEN, as older field software sends it), then replayed.
    let basic = format!("ranger-07:{token}");
    let (code, body) = post(&base, &["-u", &basic], &good("json-basic.json"), &[]);
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"], "ingested");
    assert!(body["inserted"].as_i64().unwrap() > 0 && body["cursor"].as_i64().is_some());
    let (code, body) = post(&base, &auth, &good("json-basic.json"), &[]);
    assert_eq!((code, body["status"].as_str()), (200, Some("duplicate")));

    // Same batch id, other content.
    let edited = env.dir.path().join("edited.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good("json-basic.json")).unwrap()).unwrap();
    doc["sightings"][0]["count"] = 99.into();
    std::fs::write(&edited, doc.to_string()).unwrap();
    let (code, body) = post(&base, &auth, &edited, &[]);
    assert_eq!(code, 409, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("conflict"));

    // Invalid rows, unknown format, gzip, a gzip bomb.
    let (code, body) = post(&base, &auth, &bad("12-"), &[]);
    assert_eq!(code, 422, "{body}");
    assert!(body["reason"]
        .as_str()
        .unwrap()
        .contains("line 3, field latitude"));
    assert_eq!(post(&base, &auth, &bad("25-"), &[]).0, 415);
    let (code, body) = post(
        &base,
        &auth,
        &good("ndjson-basic.ndjson.gz"),
        &["-H", "Content-Encoding: gzip"],
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = post(&base, &auth, &bad("33-"), &["-H", "Content-Encoding: gzip"]);
    assert_eq!(code, 413, "{body}");
    assert_eq!(
        post(
            &base,
            &auth,
            &good("csv-basic.csv"),
            &["-H", "Content-Encoding: br"]
        )
        .0,
        415
    );

    let http_rows = db
        .scalar("SELECT count(*) FROM batches WHERE channel = 'http'")
        .await;
    assert_eq!(http_rows, 2);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_slow_headers_are_cut() {
    let db = TestDb::new(ctdata_tests::Backend::Sqlite).await.unwrap();
    let mut env = ServerEnv::new(&db);
    env.extra_env = vec![
        ("CTDATA__HTTP__MAX_BODY_BYTES".into(), "100000".into()),
        ("CTDATA__HTTP__HEADER_READ_TIMEOUT_SECS".into(), "1".into()),
    ];
    let token = device_token(&env, "ranger-07");
    let server = env.serve().await;
    let base = server.http_base();

    let big = env.dir.path().join("big.csv");
    std::fs::write(&big, vec![b'x'; 200_000]).unwrap();
    let bearer = format!("Authorization: Bearer {token}");
    let (code, body) = post(&base, &["-H", &bearer], &big, &[]);
    assert_eq!(code, 413, "{body}");
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 0);

    // Slowloris: half a request and then silence. The server must hang up.
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"POST /api/v1/batches HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = match stream.read(&mut buf) {
        Ok(_) => true,
        Err(e) => panic!("the server kept a silent connection open: {e}"),
    };
    assert!(closed);
    eprintln!("slow connection closed after {:?}", started.elapsed());
    assert!(server.terminate().success());
}
