//! The channel contract: the same batch, byte for byte, sent through every channel
//! (HTTP upload, FTP upload, a drop into the share, a pull from a remote source, the
//! command line) to the real `ctdata-server`, each into a fresh database, gives the
//! same receipt (apart from the channel, the file name and the time) and stores the
//! same rows. A new channel belongs in this test.

use std::path::Path;
use std::time::Duration;

use chrono::{FixedOffset, TimeZone};
use ctdata_batch::write::{BatchHeader, NdjsonWriter};
use ctdata_batch::Sighting;
use ctdata_tests::ftp::{curl, ftp_url};
use ctdata_tests::{both_backends, eventually, ServerEnv, TestDb};
use serde_json::Value;
use uuid::Uuid;

const DEVICE: &str = "ranger-09";
const NAME: &str = "contract.ndjson";
const ROWS: u128 = 5;

/// One fixed batch: the same batch id, sighting ids and bytes in every run.
fn the_batch() -> Vec<u8> {
    let tz = FixedOffset::east_opt(2 * 3600).unwrap();
    let header = BatchHeader {
        batch_id: Uuid::from_u128(0xc0de_u128 << 64 | 1),
        device_id: DEVICE.to_string(),
        created_at: tz.with_ymd_and_hms(2026, 11, 5, 8, 0, 0).unwrap(),
    };
    let mut w = NdjsonWriter::new(Vec::new(), &header).unwrap();
    for r in 0..ROWS {
        w.push(&Sighting {
            id: Uuid::from_u128(0xc0de_u128 << 64 | (100 + r)),
            observed_at: tz.with_ymd_and_hms(2026, 11, 5, 6, 0, 0).unwrap()
                + chrono::Duration::seconds(r as i64),
            latitude: -19.1 + r as f64 * 1e-4,
            longitude: 16.4,
            altitude: Some(1100.5),
            accuracy: Some(3.0),
            observer: Some("contract".into()),
            species: Some("Giraffa camelopardalis".into()),
            count: Some(3),
            attributes: [("note".to_string(), Value::from("by the pan"))]
                .into_iter()
                .collect(),
        })
        .unwrap();
    }
    w.finish().unwrap()
}

/// What the channel answered and what it stored.
struct Outcome {
    channel: &'static str,
    receipt: Value,
    batches: Vec<Vec<Option<String>>>,
    sightings: Vec<Vec<Option<String>>>,
}

both_backends! {
    every_channel_gives_the_same_receipt_and_rows,
}

async fn every_channel_gives_the_same_receipt_and_rows(db: TestDb) {
    let backend = db.backend;
    let mut outcomes = vec![through_http(db).await];
    for channel in ["ftp", "share", "pull", "cli"] {
        let db = TestDb::new(backend).await.expect("a second database");
        outcomes.push(match channel {
            "ftp" => through_ftp(db).await,
            "share" => through_share(db).await,
            "pull" => through_pull(db).await,
            _ => through_cli(db).await,
        });
    }
    let first = &outcomes[0];
    assert_eq!(first.receipt["status"], "ingested", "{}", first.receipt);
    assert_eq!(first.receipt["sightings"], ROWS as u64);
    assert_eq!(first.sightings.len(), ROWS as usize);
    for o in &outcomes {
        assert_eq!(
            o.receipt["channel"], o.channel,
            "the receipt names its channel"
        );
        assert_eq!(
            comparable(&o.receipt),
            comparable(&first.receipt),
            "receipt by {} differs from the one by {}",
            o.channel,
            first.channel
        );
        assert_eq!(
            o.batches[0].last().cloned().flatten().as_deref(),
            Some(o.channel),
            "the stored batch names its channel"
        );
        let without_channel = |rows: &[Vec<Option<String>>]| -> Vec<Vec<Option<String>>> {
            rows.iter().map(|r| r[..r.len() - 1].to_vec()).collect()
        };
        assert_eq!(
            without_channel(&o.batches),
            without_channel(&first.batches),
            "batch row by {} differs",
            o.channel
        );
        assert_eq!(
            o.sightings, first.sightings,
            "sightings stored by {} differ",
            o.channel
        );
    }
}

/// A receipt without what differs by channel: the channel, the sender's file name
/// (an HTTP body has none, the command line gives a path) and the time.
fn comparable(receipt: &Value) -> Value {
    let mut r = receipt.clone();
    let map = r.as_object_mut().expect("a receipt is an object");
    for key in ["channel", "file", "received_at"] {
        map.remove(key);
    }
    r
}

/// The stored batch (channel last) and sightings, as text.
async fn stored(db: &TestDb) -> (Vec<Vec<Option<String>>>, Vec<Vec<Option<String>>>) {
    let batches = db
        .texts(
            "SELECT d.name, CAST(b.batch_id AS TEXT), b.sha256, b.format, CAST(b.created_at AS TEXT), \
             CAST(b.row_count AS TEXT), CAST(b.inserted AS TEXT), CAST(b.duplicates AS TEXT), \
             CAST(b.cursor_first AS TEXT), CAST(b.cursor_last AS TEXT), CAST(b.sequence AS TEXT), b.channel \
             FROM batches b JOIN devices d ON d.id = b.device_id ORDER BY b.id",
        )
        .await;
    let sightings = db
        .texts(
            "SELECT CAST(s.cursor AS TEXT), CAST(s.id AS TEXT), d.name, CAST(s.observed_at AS TEXT), \
             CAST(s.observed_offset AS TEXT), CAST(s.latitude AS TEXT), CAST(s.longitude AS TEXT), \
             CAST(s.altitude AS TEXT), CAST(s.accuracy AS TEXT), s.observer, s.species, \
             CAST(s.count AS TEXT), CAST(s.attributes AS TEXT) \
             FROM sightings s JOIN devices d ON d.id = s.device_id ORDER BY s.cursor",
        )
        .await;
    assert_eq!(batches.len(), 1, "one batch stored: {batches:?}");
    assert_eq!(db.scalar("SELECT count(*) FROM rejections").await, 0);
    (batches, sightings)
}

async fn outcome(channel: &'static str, db: &TestDb, receipt: Value) -> Outcome {
    let (batches, sightings) = stored(db).await;
    Outcome {
        channel,
        receipt,
        batches,
        sightings,
    }
}

/// The receipt a file-based sender reads back from `receipts/<device>/`.
async fn receipt_file(env: &ServerEnv) -> Value {
    let path = env
        .drop_dir()
        .join("receipts")
        .join(DEVICE)
        .join(format!("{NAME}.receipt.json"));
    eventually("the receipt file", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&path).ok()?;
        serde_json::from_str(&text).ok()
    })
    .await
}

fn write_batch(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, the_batch()).unwrap();
}

async fn through_http(db: TestDb) -> Outcome {
    let env = ServerEnv::new(&db);
    let token = env.device_token(DEVICE);
    let server = env.serve().await;
    let file = env.dir.path().join(NAME);
    write_batch(&file);
    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{}/api/v1/batches", server.http_base()),
    ]);
    assert!(out.status.success(), "{out:?}");
    let receipt: Value = serde_json::from_slice(&out.stdout).expect("a JSON receipt");
    outcome("http", &db, receipt).await
}

async fn through_ftp(db: TestDb) -> Outcome {
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let token = env.device_token(DEVICE);
    let server = env.serve().await;
    let file = env.dir.path().join(NAME);
    write_batch(&file);
    let url = ftp_url(server.ftp_port(), DEVICE, &token, &format!("/{NAME}"));
    let out = curl(&["-T", &file.display().to_string(), &url]);
    assert!(out.status.success(), "{out:?}");
    let receipt = receipt_file(&env).await;
    outcome("ftp", &db, receipt).await
}

async fn through_share(db: TestDb) -> Outcome {
    let env = ServerEnv::new(&db);
    let _server = env.serve().await;
    // Written beside the share, then renamed in: a file appears complete.
    let file = env.dir.path().join(NAME);
    write_batch(&file);
    let dest = env.drop_dir().join(DEVICE).join(NAME);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::rename(&file, &dest).unwrap();
    let receipt = receipt_file(&env).await;
    outcome("share", &db, receipt).await
}

async fn through_pull(db: TestDb) -> Outcome {
    let env = ServerEnv::new(&db);
    let site = env.dir.path().join("site");
    write_batch(&site.join(DEVICE).join(NAME));
    let source = format!(
        "[[sources]]\nname = \"site\"\nurl = \"{}\"\nafter_download = \"delete\"\n",
        site.display()
    );
    std::fs::write(env.dir.path().join("ctdata.toml"), source).unwrap();
    let out = env
        .command(&["download", "--json"])
        .output()
        .expect("run download");
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let pulled = &report["sources"][0]["files"][0];
    assert_eq!(pulled["path"], format!("{DEVICE}/{NAME}"), "{report:#}");
    // A pulled file's receipt is not sent anywhere: the ingest's own record of it is
    // what `download` reports from. The full receipt is rebuilt from what it stored.
    let receipt = stored_receipt(&db, "pull", pulled).await;
    outcome("pull", &db, receipt).await
}

async fn through_cli(db: TestDb) -> Outcome {
    let env = ServerEnv::new(&db);
    let file = env.dir.path().join("field").join(NAME);
    write_batch(&file);
    let out = env
        .command(&["ingest", "--json", &file.display().to_string()])
        .output()
        .expect("run ingest");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let receipt: Value = serde_json::from_str(text.lines().next().expect("one receipt line"))
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    outcome("cli", &db, receipt).await
}

/// The receipt of a pulled file: its status and batch id as `download` reported them,
/// the rest as the database holds it (what every other receipt is made from).
async fn stored_receipt(db: &TestDb, channel: &str, pulled: &Value) -> Value {
    let row = db
        .texts(
            "SELECT d.name, CAST(b.batch_id AS TEXT), b.format, b.sha256, CAST(b.row_count AS TEXT), \
             CAST(b.inserted AS TEXT), CAST(b.duplicates AS TEXT), CAST(b.cursor_last AS TEXT) \
             FROM batches b JOIN devices d ON d.id = b.device_id",
        )
        .await
        .remove(0);
    let text = |i: usize| row[i].clone().unwrap_or_default();
    let number = |i: usize| text(i).parse::<i64>().unwrap();
    assert_eq!(pulled["batch_id"], text(1), "{pulled}");
    serde_json::json!({
        "status": pulled["status"],
        "file": NAME,
        "channel": channel,
        "device": text(0),
        "batch_id": text(1),
        "format": text(2),
        "sha256": text(3),
        "sightings": number(4),
        "inserted": number(5),
        "duplicates": number(6),
        "cursor": number(7),
    })
}
