//! The field client over FTP through a poor link (tests/src/link.rs, which carries the
//! passive data connections too): a large import gets home exactly once through a link
//! that cuts every connection, each connection resuming the server's `NAME.part` where
//! it ends; and a client killed mid-upload resumes from the `.part` after a restart
//! instead of starting again.
//!
//! Scaled for CI like the HTTPS tests in client_link.rs: 40,000 sightings (about 10 MB
//! of NDJSON, gzipped on the way) through cuts every second at 200 kB/s. The issue's
//! size runs with `CTDATA_LINK_ROWS=200000 CTDATA_LINK_CUT_SECS=3`.

use std::time::Duration;

use ctdata_tests::client::{import_file, wire_bytes, Client};
use ctdata_tests::ftp::wait_for_batches;
use ctdata_tests::link::{Conditions, Link};
use ctdata_tests::{both_backends, eventually, ServerEnv, TestDb};

both_backends! {
    large_import_arrives_once_over_ftp_through_a_cutting_link,
    a_killed_ftp_send_resumes_from_the_part,
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An FTP client through `link` to the server's embedded FTP server.
fn client_through(link: &Link, token: &str) -> Client {
    let client = Client::new();
    client.ok(&[
        "init",
        "--protocol",
        "ftp",
        "--url",
        &format!("ftp://127.0.0.1:{}/", link.port()),
        "--device",
        "ranger-07",
        "--token",
        token,
    ]);
    client
}

/// The names in the device's folder on the server (what is left of uploads).
fn left_on_server(env: &ServerEnv) -> Vec<String> {
    std::fs::read_dir(env.drop_dir().join("ranger-07"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn large_import_arrives_once_over_ftp_through_a_cutting_link(db: TestDb) {
    let rows: usize = env_or("CTDATA_LINK_ROWS", 40_000);
    let cut: f64 = env_or("CTDATA_LINK_CUT_SECS", 1.0);
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let target = format!("127.0.0.1:{}", server.ftp_port()).parse().unwrap();
    let link = Link::ftp(
        target,
        Conditions {
            cut_after: Some(Duration::from_secs_f64(cut)),
            bytes_per_sec: Some(200_000),
            ..Default::default()
        },
    );
    let client = client_through(&link, &token);
    let dir = tempfile::tempdir().unwrap();
    let (file, raw) = import_file(dir.path(), rows);
    client.ok(&["import", file.to_str().unwrap()]);
    let batches = client.batches_in("outbox").len();
    let started = std::time::Instant::now();
    let out = client.run(&["send"]);
    let took = started.elapsed();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plural = if batches == 1 { "" } else { "es" };
    assert!(
        summary.contains(&format!("sent {batches} batch{plural} ({rows} sightings")),
        "{summary}"
    );
    println!(
        "{rows} sightings ({raw} bytes) over FTP through cuts every {cut} s at 200 kB/s: \
         {:.1} s, wire/raw {:.3}, link up {} bytes, {} connections, {} cut",
        took.as_secs_f64(),
        wire_bytes(&summary) as f64 / raw as f64,
        link.up_bytes(),
        link.connections(),
        link.cuts()
    );
    // About 1.2 MB gzipped at 200 kB/s: six seconds. One send opens one FTP session
    // unless a cut ends it, so every further control connection is a resume.
    assert!(
        link.connections() >= 4,
        "only {} connections: no resumes needed",
        link.connections()
    );
    // gzip on the wire, the bytes cut and sent again included (these test sightings,
    // each with a random id, compress less than field data).
    let wire = wire_bytes(&summary);
    assert!(wire * 3 <= raw, "{wire} bytes on the wire for {raw} raw");
    assert!(
        link.up_bytes() * 3 <= raw,
        "{} bytes crossed the link",
        link.up_bytes()
    );
    // Each batch stored once, by one delivery: no batch was handed over twice.
    wait_for_batches(&db, batches).await;
    let stored = eventually(
        "every sighting stored",
        Duration::from_secs(120),
        || async {
            let n = db.scalar("SELECT COUNT(*) FROM sightings").await;
            (n >= rows as i64).then_some(n)
        },
    )
    .await;
    assert_eq!(stored, rows as i64);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM batches").await,
        batches as i64
    );
    // A batch handed over again would be recorded as a further delivery.
    assert_eq!(db.scalar("SELECT COUNT(*) FROM deliveries").await, 0);
    assert_eq!(
        db.scalar(
            "SELECT COUNT(*) FROM batches WHERE channel = 'ftp' AND file_name LIKE '%.ndjson.gz'"
        )
        .await,
        batches as i64
    );
    // Nothing is left of the uploads on either side.
    let status = client.ok(&["status"]);
    assert!(status.contains("pending: 0 batches"), "{status}");
    let left = left_on_server(&env);
    assert!(left.is_empty(), "left in the device's folder: {left:?}");
    let outbox: Vec<_> = std::fs::read_dir(client.path("outbox"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(outbox.is_empty(), "left in outbox/: {outbox:?}");
}

async fn a_killed_ftp_send_resumes_from_the_part(db: TestDb) {
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let target = format!("127.0.0.1:{}", server.ftp_port()).parse().unwrap();
    let link = Link::ftp(
        target,
        Conditions {
            bytes_per_sec: Some(200_000),
            ..Default::default()
        },
    );
    let client = client_through(&link, &token);
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = import_file(dir.path(), 40_000);
    client.ok(&["import", file.to_str().unwrap()]);
    let name = client.batches_in("outbox").pop().expect("one batch");
    let part = env
        .drop_dir()
        .join("ranger-07")
        .join(format!("{name}.gz.part"));

    // Killed while the batch is on its way.
    let mut child = client.command(&["send"]).spawn().unwrap();
    let held = eventually(
        "part of the batch on the server",
        Duration::from_secs(60),
        || {
            let len = std::fs::metadata(&part)
                .map(|m| m.len())
                .ok()
                .filter(|&n| n >= 300_000);
            std::future::ready(len)
        },
    )
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    // The cut upload is kept on the server for the next try, and nothing is stored yet.
    // (The link still delivers what it holds of the piece in flight: wait for that.)
    let mut kept = 0;
    let kept = eventually(
        "the cut upload kept as NAME.gz.part",
        Duration::from_secs(30),
        || {
            std::thread::sleep(Duration::from_millis(500));
            let now = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            let stable = now > 0 && now == kept;
            kept = now;
            std::future::ready(stable.then_some(now))
        },
    )
    .await;
    assert!(kept >= held, "{kept} < {held}");
    let before = link.up_bytes();
    assert_eq!(db.scalar("SELECT COUNT(*) FROM batches").await, 0);
    let length = std::fs::metadata(client.path("outbox").join(format!(".{name}.gz")))
        .expect("the compressed batch is kept beside it")
        .len();

    assert!(
        kept < length,
        "the whole batch arrived before the kill: nothing to resume"
    );
    // After the restart the upload goes on where the server's copy ends.
    let out = client.run(&["send"]);
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        summary.contains("sent 1 batch (40000 sightings"),
        "{summary}"
    );
    // Only what the server lacked went again.
    let wire = wire_bytes(&summary);
    assert!(
        wire + kept <= length,
        "{wire} bytes sent again of {length}, the server held {kept}"
    );
    // Both sends together put well under twice the file on the link.
    let total = link.up_bytes();
    assert!(
        total < length + length / 2,
        "{total} bytes crossed the link for a {length}-byte file ({before} before the kill)"
    );
    wait_for_batches(&db, 1).await;
    let stored = eventually("every sighting stored", Duration::from_secs(60), || async {
        let n = db.scalar("SELECT COUNT(*) FROM sightings").await;
        (n >= 40_000).then_some(n)
    })
    .await;
    assert_eq!(stored, 40_000);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM batches").await, 1);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM deliveries").await, 0);
    assert!(!part.exists());
    assert!(left_on_server(&env).is_empty());
}

/// Over FTPS too (the link cannot carry FTPS's data connections: their ports are in the
/// encrypted answers): a cut upload left on the server as `NAME.gz.part` is resumed with
/// `REST` + `STOR` from its size, not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftps_resumes_a_part_left_on_the_server() {
    let Some(db) = TestDb::new(ctdata_tests::Backend::Postgres).await else {
        return;
    };
    let mut env = ServerEnv::new(&db);
    let cert = env.enable_ftps();
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let client = Client::new();
    let init = |port: u16| {
        client.ok(&[
            "init",
            "--protocol",
            "ftps",
            "--url",
            &format!("ftps://127.0.0.1:{port}/"),
            "--device",
            "ranger-07",
            "--token",
            &token,
            "--ca-file",
            cert.to_str().unwrap(),
        ]);
    };
    // A send to a port nobody listens on leaves the compressed batch beside it.
    init(ctdata_tests::free_port());
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = import_file(dir.path(), 5_000);
    client.ok(&["import", file.to_str().unwrap()]);
    let name = client.batches_in("outbox").pop().expect("one batch");
    let out = client.run(&["send", "--retries", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let gz = std::fs::read(client.path("outbox").join(format!(".{name}.gz"))).unwrap();
    // The first half arrived before a cut.
    let half = gz.len() / 2;
    let folder = env.drop_dir().join("ranger-07");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(format!("{name}.gz.part")), &gz[..half]).unwrap();

    init(server.ftp_port());
    let summary = client.ok(&["send"]);
    assert!(
        summary.contains("sent 1 batch (5000 sightings"),
        "{summary}"
    );
    assert_eq!(wire_bytes(&summary), (gz.len() - half) as u64, "{summary}");
    wait_for_batches(&db, 1).await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM sightings").await, 5_000);
    assert!(left_on_server(&env).is_empty());
}
