//! The HTTP ingest API over real HTTP, with curl as the client.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ctdata_tests::{both_backends, fixtures, Batch, ServerEnv, TestDb};

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

both_backends! {
    upload_statuses_over_real_http,
    download_endpoint_streams_and_follows_the_cursor,
    sixty_four_clients_upload_overlapping_batches,
    admin_lists_and_reprocess_after_the_cause_is_fixed,
}

async fn upload_statuses_over_real_http(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-07");
    let other = env.device_token("ranger-08");
    let revoked = env.device_token("ranger-09");
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

    let metrics = Command::new("curl")
        .args(["-sf", &format!("{base}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8(metrics.stdout).unwrap();
    for line in [
        "ctdata_batches_ingested_total{channel=\"http\"} 2",
        "ctdata_duplicate_deliveries_total{channel=\"http\"} 1",
        "ctdata_rejected_total{channel=\"http\",kind=\"conflict\"} 1",
        "ctdata_rejected_total{channel=\"http\",kind=\"too_large\"} 1",
        "ctdata_ingest_seconds_count ",
    ] {
        assert!(
            metrics.contains(line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_slow_headers_are_cut() {
    let db = TestDb::new(ctdata_tests::Backend::Sqlite).await.unwrap();
    let mut env = ServerEnv::new(&db);
    env.extra_env = vec![
        ("CTDATA__HTTP__MAX_BODY_BYTES".into(), "400000".into()),
        ("CTDATA__HTTP__HEADER_READ_TIMEOUT_SECS".into(), "1".into()),
        ("CTDATA__HTTP__BODY_IDLE_TIMEOUT_SECS".into(), "1".into()),
    ];
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let base = server.http_base();

    let big = env.dir.path().join("big.csv");
    std::fs::write(&big, vec![b'x'; 500_000]).unwrap();
    let bearer = format!("Authorization: Bearer {token}");
    let (code, body) = post(&base, &["-H", &bearer], &big, &[]);
    assert_eq!(code, 413, "{body}");
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 0);

    // A gzip bomb well under the body limit: 256 MiB of zeros in ~250 KB. It is refused
    // while inflating, and the server's memory never holds the inflated data.
    let bomb = env.dir.path().join("bomb.ndjson.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&bomb).unwrap(),
        flate2::Compression::best(),
    );
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap();
    assert!(
        std::fs::metadata(&bomb).unwrap().len() < 400_000,
        "the bomb must pass the body limit"
    );
    let (code, body) = post(
        &base,
        &["-H", &bearer],
        &bomb,
        &["-H", "Content-Encoding: gzip"],
    );
    assert!(code == 413, "{code} {body}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    assert!(
        peak_kb < 100 * 1024,
        "server peak memory {peak_kb} kB after a gzip bomb"
    );

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

    // Headers on time, then a body that stalls: 408, and nothing stored.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /api/v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n{{\"ctdata"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 0);
    assert!(server.terminate().success());
}

/// GETs a download with curl; returns status, response headers and the body file.
fn download(base: &str, auth: &[&str], query: &str, out: &Path) -> (u16, String) {
    let headers = out.with_extension("headers");
    let result = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(out)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "%{http_code}"])
        .args(auth)
        .arg(format!("{base}/api/v1/sightings?{query}"))
        .output()
        .expect("run curl");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let code = String::from_utf8(result.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (code, std::fs::read_to_string(headers).unwrap())
}

fn header_value(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Python's own csv and json modules read what the server wrote.
fn python(script: &str, file: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const COUNT_CSV: &str = "import csv,sys; print(len(list(csv.DictReader(open(sys.argv[1], newline='', encoding='utf-8')))))";
const CHECK_GEOJSON: &str = "import json,sys\nd=json.load(open(sys.argv[1]))\nassert d['type']=='FeatureCollection'\nfor f in d['features']:\n  assert f['type']=='Feature' and f['geometry']['type']=='Point'\n  lon,lat=f['geometry']['coordinates'][:2]\n  assert -180<=lon<=180 and -90<=lat<=90\nprint(len(d['features']))";

async fn download_endpoint_streams_and_follows_the_cursor(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-07");
    // alice's password is "a long enough password".
    let api_token = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    let device_auth = format!("Authorization: Bearer {token}");
    assert_eq!(
        post(&base, &["-H", &device_auth], &good("json-basic.json"), &[]).0,
        201
    );
    assert_eq!(
        post(
            &base,
            &["-H", &device_auth],
            &good("ndjson-basic.ndjson"),
            &[]
        )
        .0,
        201
    );
    let stored = db.scalar("SELECT count(*) FROM sightings").await;

    let out = env.dir.path().join("all.csv");
    let basic = ["-u", "alice:a long enough password"];
    let (code, headers) = download(&base, &basic, "format=csv", &out);
    assert_eq!(code, 200, "{headers}");
    assert!(header_value(&headers, "content-disposition")
        .unwrap()
        .contains("attachment; filename="));
    let next: i64 = header_value(&headers, "ctdata-next-cursor")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(python(COUNT_CSV, &out).parse::<i64>().unwrap(), stored);

    let bearer = format!("Authorization: Bearer {api_token}");
    let geo = env.dir.path().join("all.geojson");
    let (code, _) = download(&base, &["-H", &bearer], "format=geojson", &geo);
    assert_eq!(code, 200);
    assert_eq!(python(CHECK_GEOJSON, &geo).parse::<i64>().unwrap(), stored);

    // Incremental: nothing new, then only the new batch.
    let (_, headers) = download(
        &base,
        &["-H", &bearer],
        &format!("format=csv&since={next}"),
        &out,
    );
    assert_eq!(python(COUNT_CSV, &out), "0");
    assert_eq!(
        header_value(&headers, "ctdata-next-cursor").unwrap(),
        next.to_string()
    );
    assert_eq!(
        post(&base, &["-H", &device_auth], &good("csv-basic.csv"), &[]).0,
        201
    );
    let (_, headers) = download(
        &base,
        &["-H", &bearer],
        &format!("format=ndjson&since={next}"),
        &out,
    );
    let added = db.scalar("SELECT count(*) FROM sightings").await - stored;
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count() as i64,
        added
    );
    assert!(
        header_value(&headers, "ctdata-next-cursor")
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > next
    );

    let metrics = Command::new("curl")
        .args(["-sf", &format!("{base}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8(metrics.stdout).unwrap();
    let exported: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ctdata_export_bytes_total "))
        .expect("export bytes counted")
        .parse()
        .unwrap();
    assert!(exported > 0);

    // Filters, and who may download.
    download(&base, &["-H", &bearer], "format=csv&bbox=0,0,1,1", &out);
    assert_eq!(python(COUNT_CSV, &out), "0");
    assert_eq!(
        download(&base, &["-H", &bearer], "format=csv&bbox=1,2", &out).0,
        400
    );
    assert_eq!(
        download(&base, &["-H", &bearer], "format=xlsx", &out).0,
        400
    );
    // A device not listed in http.read_devices is told so.
    assert_eq!(
        download(&base, &["-H", &device_auth], "format=csv", &out).0,
        403
    );
    assert_eq!(
        download(&base, &["-u", "alice:wrong password"], "format=csv", &out).0,
        401
    );
    assert_eq!(download(&base, &[], "format=csv", &out).0, 401);
    assert!(server.terminate().success());
}

/// NDJSON batches for `device`; `overlap` re-sends the sightings of another batch under
/// a new batch id (a device that lost track of what it sent).
fn concurrent_batches(dir: &Path) -> Vec<(String, std::path::PathBuf, Vec<uuid::Uuid>)> {
    let mut made: Vec<(String, std::path::PathBuf, Vec<uuid::Uuid>)> = Vec::new();
    for i in 0..20 {
        let device = format!("ranger-{:02}", i % 4);
        let ids: Vec<uuid::Uuid> = if i >= 16 {
            // Half new sightings, half already in batch i-16 of the same device.
            let earlier = &made[i - 16].2;
            earlier[..25]
                .iter()
                .copied()
                .chain((0..25).map(|_| uuid::Uuid::new_v4()))
                .collect()
        } else {
            (0..50).map(|_| uuid::Uuid::new_v4()).collect()
        };
        let path = dir.join(format!("batch-{i:02}.ndjson"));
        Batch::with_ids(&device, &ids).write(&path);
        made.push((device, path, ids));
    }
    made
}

async fn sixty_four_clients_upload_overlapping_batches(db: TestDb) {
    let env = ServerEnv::new(&db);
    let tokens: std::collections::HashMap<String, String> = (0..4)
        .map(|d| {
            let name = format!("ranger-{d:02}");
            let token = env.device_token(&name);
            (name, token)
        })
        .collect();
    let batches = concurrent_batches(env.dir.path());
    let server = env.serve().await;
    let base = server.http_base();

    // 64 clients, 4 uploads each, every batch sent by many clients at once.
    let codes: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..64)
            .map(|client| {
                let (base, batches, tokens) = (&base, &batches, &tokens);
                scope.spawn(move || {
                    (0..4)
                        .map(|k| {
                            let (device, path, _) = &batches[(client * 7 + k * 5) % batches.len()];
                            let auth = format!("Authorization: Bearer {}", tokens[device]);
                            post(base, &["-H", &auth], path, &[]).0
                        })
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(codes.len(), 256);
    assert!(codes.iter().all(|c| *c == 200 || *c == 201), "{codes:?}");
    assert_eq!(
        codes.iter().filter(|c| **c == 201).count(),
        batches.len(),
        "each batch stored once"
    );

    let unique: std::collections::HashSet<uuid::Uuid> =
        batches.iter().flat_map(|b| b.2.iter().copied()).collect();
    assert_eq!(
        db.scalar("SELECT count(*) FROM sightings").await,
        unique.len() as i64
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM batches").await,
        batches.len() as i64
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM deliveries").await,
        256 - batches.len() as i64
    );
    assert_eq!(
        db.scalar("SELECT CAST(sum(duplicates) AS BIGINT) FROM batches")
            .await,
        4 * 25
    );
    assert!(server.terminate().success());
}

/// `curl` a JSON API call; returns status and body.
fn call(method: &str, url: &str, auth: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            "-H",
            auth,
            url,
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

async fn admin_lists_and_reprocess_after_the_cause_is_fixed(db: TestDb) {
    let mut env = ServerEnv::new(&db);
    let token = env.device_token("ranger-07");
    let admin = format!("Authorization: Bearer {}", env.admin_token());
    // A limit too small for the batch: it is refused as too large.
    env.extra_env = vec![("CTDATA__INGEST__MAX_FILE_BYTES".into(), "500".into())];
    let server = env.serve().await;
    let base = server.http_base();
    let device_auth = format!("Authorization: Bearer {token}");
    let (code, body) = post(&base, &["-H", &device_auth], &good("json-basic.json"), &[]);
    assert_eq!(code, 413, "{body}");
    assert_eq!(
        post(&base, &["-H", &device_auth], &good("csv-basic.csv"), &[]).0,
        413
    );
    assert!(server.terminate().success());

    // The administrator raises the limit and reprocesses the file from rejected/.
    env.extra_env.clear();
    let server = env.serve().await;
    let base = server.http_base();
    let (code, list) = call(
        "GET",
        &format!("{base}/api/v1/rejected?status=pending"),
        &admin,
    );
    assert_eq!(code, 200);
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["kind"], "too_large");
    assert!(list[0]["reason"].as_str().unwrap().contains("upload"));
    let first = list[1]["id"].as_i64().unwrap();
    let (code, receipt) = call(
        "POST",
        &format!("{base}/api/v1/rejected/{first}/reprocess"),
        &admin,
    );
    assert_eq!(code, 201, "{receipt}");
    assert_eq!(receipt["status"], "ingested");
    assert_eq!(receipt["channel"], "http");
    let (code, _) = call(
        "POST",
        &format!("{base}/api/v1/rejected/{first}/reprocess"),
        &admin,
    );
    assert_eq!(code, 409, "a reprocessed file cannot be reprocessed twice");
    assert_eq!(
        call(
            "POST",
            &format!("{base}/api/v1/rejected/999999/reprocess"),
            &admin
        )
        .0,
        404
    );
    let (_, pending) = call(
        "GET",
        &format!("{base}/api/v1/rejected?status=pending"),
        &admin,
    );
    assert_eq!(pending.as_array().unwrap().len(), 1);

    let (code, batches) = call(
        "GET",
        &format!("{base}/api/v1/batches?device=ranger-07&limit=10"),
        &admin,
    );
    assert_eq!(code, 200);
    assert_eq!(batches.as_array().unwrap().len(), 1);
    assert_eq!(batches[0]["sightings"], receipt["sightings"]);
    // A query parameter that does not parse is a client error with the API's error body.
    let (code, error) = call(
        "GET",
        &format!("{base}/api/v1/conflicts?limit=many"),
        &admin,
    );
    assert_eq!(code, 400, "{error}");
    assert_eq!(error["error"], "bad_request", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("limit"),
        "{error}"
    );
    let (code, devices) = call("GET", &format!("{base}/api/v1/devices"), &admin);
    assert_eq!(code, 200);
    assert_eq!(devices[0]["name"], "ranger-07");
    assert_eq!(devices[0]["batches"], 1);
    assert_eq!(
        call("GET", &format!("{base}/api/v1/devices"), &device_auth).0,
        401
    );
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let db = TestDb::new(ctdata_tests::Backend::Sqlite).await.unwrap();
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let base = server.http_base();
    let out = Command::new("curl")
        .args(["-sf", &format!("{base}/api/v1/openapi.json")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    documented.sort();
    let expected = [
        ("DELETE", "/api/v1/uploads/{id}"),
        ("GET", "/api/v1/attachments/{sha256}"),
        ("GET", "/api/v1/batches"),
        ("GET", "/api/v1/batches/{id}"),
        ("GET", "/api/v1/conflicts"),
        ("GET", "/api/v1/devices"),
        ("GET", "/api/v1/patrols"),
        ("GET", "/api/v1/rejected"),
        ("GET", "/api/v1/sightings"),
        ("GET", "/api/v1/tracks"),
        ("GET", "/api/v1/uploads/{id}"),
        ("GET", "/api/v1/whoami"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("HEAD", "/api/v1/uploads/{id}"),
        ("OPTIONS", "/api/v1/uploads"),
        ("PATCH", "/api/v1/uploads/{id}"),
        ("POST", "/api/v1/admin/download"),
        ("POST", "/api/v1/batches"),
        ("POST", "/api/v1/rejected/{id}/reprocess"),
        ("POST", "/api/v1/uploads"),
        ("POST", "/api/v1/webhooks/cybertracker"),
        ("POST", "/api/v1/webhooks/cybertracker/{token}"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    // Every documented operation is served (anything but 404/405, without credentials).
    for (method, path) in &documented {
        let url = format!(
            "{base}{}",
            path.replace("{id}", "1")
                .replace("{token}", "x")
                .replace("{sha256}", &"0".repeat(64))
        );
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                method,
                &url,
            ])
            .output()
            .unwrap();
        let code: u16 = String::from_utf8(out.stdout).unwrap().parse().unwrap();
        assert!(
            code != 404 && code != 405,
            "{method} {path} is documented but answers {code}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["device_token"].is_object());
    assert!(doc["components"]["schemas"]["Receipt"].is_object());
    assert!(doc["components"]["schemas"]["DownloadReport"].is_object());
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_from_one_address_are_slowed_down() {
    let db = TestDb::new(ctdata_tests::Backend::Sqlite).await.unwrap();
    let env = ServerEnv::new(&db);
    let token = env.admin_token();
    let server = env.serve().await;
    let url = format!("{}/api/v1/devices", server.http_base());
    let status = |auth: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-w",
                "%{http_code}",
                "-H",
                auth,
                &url,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let code: u16 = text[text.len() - 3..].parse().unwrap();
        (code, text)
    };
    let good = format!("Authorization: Bearer {token}");
    assert_eq!(status(&good).0, 200);
    for _ in 0..5 {
        assert_eq!(status("Authorization: Bearer ctd_guess").0, 401);
    }
    let (code, headers) = status("Authorization: Bearer ctd_guess");
    assert_eq!(code, 429, "{headers}");
    assert!(
        headers.to_ascii_lowercase().contains("retry-after:"),
        "{headers}"
    );
    // Guesses lock out the guessed (unknown) tokens, not the device whose token is
    // right: failures are counted per name, and a name locked does not lock another.
    assert_eq!(status(&good).0, 200);
    assert!(server.terminate().success());
}
