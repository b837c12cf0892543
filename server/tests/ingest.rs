//! In-process ingest tests: the drop directory and the ingest function against a real
//! database of each kind, a fresh one per test.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ctdata_server::db::{Db, ExportFilter};
use ctdata_server::dropdir::{DropDir, StepReport};
use ctdata_server::export::{write_export, ExportFormat};
use ctdata_server::ingest::{Ingestor, Status};
use ctdata_tests::{both_backends, fixtures, Batch, TestDb};
use support::Server;
use tokio_util::sync::CancellationToken;

struct Fixture {
    _server: Server,
    drop_dir: DropDir,
    db: Db,
}

impl Fixture {
    async fn new(test_db: &TestDb) -> Fixture {
        Self::with_settle(test_db, Duration::ZERO).await
    }

    async fn with_settle(test_db: &TestDb, settle: Duration) -> Fixture {
        let server = Server::open(test_db).await;
        Fixture {
            drop_dir: server.drop_dir(settle),
            db: server.db().clone(),
            _server: server,
        }
    }

    fn root(&self) -> PathBuf {
        self.drop_dir.root().to_path_buf()
    }

    /// Copies `src` into the drop directory as `rel`.
    fn deliver(&self, src: &Path, rel: &str) {
        let dest = self.root().join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(src, dest).unwrap();
    }

    fn deliver_bytes(&self, rel: &str, bytes: &[u8]) {
        let dest = self.root().join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, bytes).unwrap();
    }

    async fn pass(&mut self) -> StepReport {
        let report = self
            .drop_dir
            .ingest_once(&CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.errors, 0, "{report:?}");
        report
    }

    async fn export(&self, format: ExportFormat, filter: ExportFilter) -> (String, i64) {
        let mut out = Vec::new();
        let summary = write_export(&self.db, filter, format, &mut out)
            .await
            .unwrap();
        (String::from_utf8(out).unwrap(), summary.next_cursor)
    }

    async fn sightings(&self) -> i64 {
        self.db.totals().await.unwrap().sightings
    }
}

fn good(name: &str) -> PathBuf {
    fixtures().join("good").join(name)
}

fn good_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("good"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 7, "good fixtures missing");
    files
}

/// Export of what a fixture stores, without the fields that differ per run, keys
/// sorted (PostgreSQL's jsonb keeps no key order).
fn stable_ndjson(export: &str) -> String {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().collect())
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }
    export
        .lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("cursor");
            o.remove("received_at");
            format!("{}\n", serde_json::to_string_pretty(&sorted(v)).unwrap())
        })
        .collect()
}

both_backends! {
    golden_files_of_every_format,
    replay_adds_nothing,
    gzip_and_plain_copies_are_one_batch,
    same_batch_id_other_content_is_a_conflict,
    sighting_already_stored_is_counted_as_duplicate,
    duplicate_ids_within_a_file_are_rejected,
    export_since_cursor_returns_only_newer_rows,
    export_formats_parse_back,
    export_filters,
    bad_corpus_is_rejected_with_reasons,
    header_and_folder_must_name_the_same_device,
    claimed_files_are_finished_after_a_crash,
    gzip_bomb_is_refused,
    unsettled_and_temporary_files_wait,
    large_and_small_files_count_stored_ids_alike,
}

async fn golden_files_of_every_format(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    for file in good_files() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        fx.deliver(&file, &format!("ranger-07/{name}"));
        let report = fx.pass().await;
        assert_eq!(report.receipts.len(), 1);
        let receipt = &report.receipts[0];
        assert_eq!(receipt.status, Status::Ingested, "{name}: {receipt:?}");
        assert!(receipt.inserted > 0, "{name}: nothing stored");

        let since = receipt.cursor.unwrap() - receipt.inserted;
        let filter = ExportFilter {
            since,
            ..Default::default()
        };
        let (ndjson, _) = fx.export(ExportFormat::Ndjson, filter).await;
        let actual = stable_ndjson(&ndjson);
        let golden = fixtures().join("golden").join(format!("{name}.ndjson"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
                golden.display()
            )
        });
        assert_eq!(
            actual,
            expected,
            "{name} stored differently from {}",
            golden.display()
        );
    }
    let archived = ctdata_tests::count_files(&fx.root().join("archive"));
    assert_eq!(archived, good_files().len());
    assert_eq!(ctdata_tests::count_files(&fx.root().join(".processing")), 0);
}

async fn replay_adds_nothing(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    fx.deliver(&good("ndjson-basic.ndjson"), "ranger-07/a.ndjson");
    let first = fx.pass().await.receipts.remove(0);
    assert_eq!(first.status, Status::Ingested);
    let rows = fx.sightings().await;
    for rel in ["ranger-07/a.ndjson", "ranger-07/again.ndjson", "b.ndjson"] {
        fx.deliver(&good("ndjson-basic.ndjson"), rel);
        let again = fx.pass().await.receipts.remove(0);
        assert_eq!(again.status, Status::Duplicate, "{rel}");
        assert_eq!(again.inserted, 0);
        assert_eq!(again.batch_id, first.batch_id);
    }
    assert_eq!(fx.sightings().await, rows);
    let totals = fx.db.totals().await.unwrap();
    assert_eq!((totals.batches, totals.deliveries), (1, 3));
    let receipt: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            fx.root()
                .join("receipts/ranger-07/again.ndjson.receipt.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(receipt["status"], "duplicate");
}

async fn gzip_and_plain_copies_are_one_batch(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    let plain = std::fs::read(good("json-basic.json")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    fx.deliver_bytes("ranger-07/x.json.gz", &gz.finish().unwrap());
    assert_eq!(fx.pass().await.receipts[0].status, Status::Ingested);
    fx.deliver_bytes("ranger-07/x.json", &plain);
    assert_eq!(fx.pass().await.receipts[0].status, Status::Duplicate);
}

async fn same_batch_id_other_content_is_a_conflict(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    fx.deliver(&good("json-basic.json"), "ranger-07/a.json");
    fx.pass().await;
    let rows = fx.sightings().await;
    let text = std::fs::read_to_string(good("json-basic.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["sightings"][0]["count"] = 99.into();
    fx.deliver_bytes("ranger-07/a-edited.json", doc.to_string().as_bytes());
    let r = fx.pass().await.receipts.remove(0);
    assert_eq!(r.status, Status::Rejected);
    let reason = r.reason.unwrap();
    assert!(
        reason.contains("conflict") && reason.contains("different content"),
        "{reason}"
    );
    assert_eq!(fx.sightings().await, rows);
    let reasons = ctdata_tests::rejected_reasons(&fx.root());
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].0.ends_with("a-edited.json") && reasons[0].1.contains("conflict"));
    assert_eq!(
        db.scalar("SELECT count(*) FROM rejections WHERE kind = 'conflict'")
            .await,
        1
    );
}

async fn sighting_already_stored_is_counted_as_duplicate(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    fx.deliver(&good("json-basic.json"), "ranger-07/a.json");
    let first = fx.pass().await.receipts.remove(0);
    let text = std::fs::read_to_string(good("json-basic.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["batch_id"] = uuid::Uuid::new_v4().to_string().into();
    let sightings = doc["sightings"].as_array_mut().unwrap();
    let mut fresh = sightings[0].clone();
    fresh["id"] = uuid::Uuid::new_v4().to_string().into();
    sightings.push(fresh);
    doc["count"] = sightings.len().into();
    fx.deliver_bytes("ranger-07/b.json", doc.to_string().as_bytes());
    let second = fx.pass().await.receipts.remove(0);
    assert_eq!(second.status, Status::Ingested, "{second:?}");
    assert_eq!((second.inserted, second.duplicates), (1, first.sightings));
    assert_eq!(fx.sightings().await, first.sightings + 1);
}

async fn duplicate_ids_within_a_file_are_rejected(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    let bad = std::fs::read_dir(fixtures().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.to_string_lossy().contains("dup-ids") && p.extension().is_some_and(|e| e != "expect")
        })
        .expect("a dup-ids fixture");
    fx.deliver(&bad, "dup.ndjson");
    let r = fx.pass().await.receipts.remove(0);
    assert_eq!(r.status, Status::Rejected);
    let reason = r.reason.unwrap();
    assert!(reason.contains("duplicate sighting id"), "{reason}");
    assert!(reason.contains("field id"), "{reason}");
    assert_eq!(fx.sightings().await, 0);
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 0);
}

async fn export_since_cursor_returns_only_newer_rows(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    fx.deliver(&good("json-basic.json"), "ranger-07/a.json");
    let a = fx.pass().await.receipts.remove(0);
    let (first, cursor) = fx
        .export(ExportFormat::Ndjson, ExportFilter::default())
        .await;
    assert_eq!(first.lines().count() as i64, a.inserted);
    assert_eq!(Some(cursor), a.cursor);

    let (nothing, same) = fx
        .export(
            ExportFormat::Ndjson,
            ExportFilter {
                since: cursor,
                ..Default::default()
            },
        )
        .await;
    assert_eq!((nothing.as_str(), same), ("", cursor));

    fx.deliver(&good("csv-basic.csv"), "ranger-07/b.csv");
    let b = fx.pass().await.receipts.remove(0);
    let (second, next) = fx
        .export(
            ExportFormat::Ndjson,
            ExportFilter {
                since: cursor,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(second.lines().count() as i64, b.inserted);
    assert!(next > cursor);
    for line in second.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            v["batch_id"].as_str().unwrap(),
            b.batch_id.unwrap().to_string()
        );
        assert!(v["cursor"].as_i64().unwrap() > cursor);
    }
}

async fn ingest_all_good(fx: &mut Fixture) -> i64 {
    for file in good_files() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        fx.deliver(&file, &format!("ranger-07/{name}"));
    }
    let report = fx.pass().await;
    assert_eq!(
        report.count(Status::Ingested),
        good_files().len(),
        "{report:?}"
    );
    fx.sightings().await
}

async fn export_formats_parse_back(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    let total = ingest_all_good(&mut fx).await;

    let (csv_text, _) = fx.export(ExportFormat::Csv, ExportFilter::default()).await;
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        ctdata_server::export::CSV_COLUMNS
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len() as i64, total);
    for r in &records {
        let lat: f64 = r[5].parse().unwrap();
        assert!((-90.0..=90.0).contains(&lat));
        chrono::DateTime::parse_from_rfc3339(&r[4]).unwrap();
        if !r[12].is_empty() {
            assert!(serde_json::from_str::<serde_json::Value>(&r[12])
                .unwrap()
                .is_object());
        }
    }

    let (geojson, _) = fx
        .export(ExportFormat::Geojson, ExportFilter::default())
        .await;
    let doc: serde_json::Value = serde_json::from_str(&geojson).unwrap();
    assert_eq!(doc["type"], "FeatureCollection");
    assert!(doc.get("crs").is_none(), "RFC 7946 has no crs member");
    let features = doc["features"].as_array().unwrap();
    assert_eq!(features.len() as i64, total);
    for f in features {
        assert_eq!(f["type"], "Feature");
        assert_eq!(f["geometry"]["type"], "Point");
        let c = f["geometry"]["coordinates"].as_array().unwrap();
        assert!(c.len() == 2 || c.len() == 3);
        let (lon, lat) = (c[0].as_f64().unwrap(), c[1].as_f64().unwrap());
        assert!((-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat));
        assert!(f["properties"].is_object());
    }

    let (ndjson, _) = fx
        .export(ExportFormat::Ndjson, ExportFilter::default())
        .await;
    assert_eq!(ndjson.lines().count() as i64, total);
}

async fn export_filters(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    let total = ingest_all_good(&mut fx).await;
    let (all, _) = fx
        .export(ExportFormat::Ndjson, ExportFilter::default())
        .await;
    let rows: Vec<serde_json::Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let species = rows[0]["species"].as_str().unwrap().to_string();
    let want = rows
        .iter()
        .filter(|r| r["species"] == species.as_str())
        .count();
    let filter = ExportFilter {
        species: Some(species.clone()),
        ..Default::default()
    };
    let (some, _) = fx.export(ExportFormat::Ndjson, filter).await;
    assert_eq!(some.lines().count(), want);
    assert!(want as i64 <= total);

    let mut times: Vec<chrono::DateTime<chrono::Utc>> = rows
        .iter()
        .map(|r| {
            chrono::DateTime::parse_from_rfc3339(r["observed_at"].as_str().unwrap())
                .unwrap()
                .to_utc()
        })
        .collect();
    times.sort();
    let mid = times[times.len() / 2];
    let before = times.iter().filter(|t| **t < mid).count();
    let (early, _) = fx
        .export(
            ExportFormat::Ndjson,
            ExportFilter {
                to: Some(mid),
                ..Default::default()
            },
        )
        .await;
    let (late, _) = fx
        .export(
            ExportFormat::Ndjson,
            ExportFilter {
                from: Some(mid),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(early.lines().count(), before);
    assert_eq!(late.lines().count(), times.len() - before);

    let (none, _) = fx
        .export(
            ExportFormat::Ndjson,
            ExportFilter {
                device: Some("ranger-99".into()),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(none, "");
}

async fn bad_corpus_is_rejected_with_reasons(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(fixtures().join("bad")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "expect") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let stem = name.split('.').next().unwrap().to_string();
        let expect = std::fs::read_to_string(fixtures().join("bad").join(format!("{stem}.expect")))
            .unwrap_or_else(|_| panic!("{name} has no .expect file"));
        cases.push((name, path, expect.trim_end_matches('\n').to_string()));
    }
    cases.sort();
    assert!(cases.len() >= 25, "only {} bad files", cases.len());
    for (name, path, expect) in &cases {
        fx.deliver(path, &format!("ranger-07/{name}"));
        let r = fx.pass().await.receipts.remove(0);
        assert_eq!(r.status, Status::Rejected, "{name} was not rejected: {r:?}");
        let reason = r.reason.clone().unwrap();
        assert!(
            reason.contains(expect.as_str()),
            "{name}: expected {expect:?} in\n{reason}"
        );
        assert!(
            reason.starts_with(name.as_str()),
            "reason must name the file: {reason}"
        );
    }
    assert_eq!(fx.sightings().await, 0, "a rejected file stored rows");
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM rejections").await,
        cases.len() as i64
    );
    let reasons = ctdata_tests::rejected_reasons(&fx.root());
    assert_eq!(reasons.len(), cases.len());
    for (name, _, expect) in &cases {
        let (_, text) = reasons
            .iter()
            .find(|(f, _)| f.ends_with(name.as_str()))
            .expect(name);
        assert!(text.contains(expect.as_str()), "{name}.reason.txt: {text}");
    }
    // Still working after all that.
    fx.deliver(&good("json-basic.json"), "ranger-07/ok.json");
    assert_eq!(fx.pass().await.receipts[0].status, Status::Ingested);
}

async fn header_and_folder_must_name_the_same_device(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    fx.deliver(&good("json-basic.json"), "ranger-08/a.json");
    let r = fx.pass().await.receipts.remove(0);
    assert_eq!(r.status, Status::Rejected);
    let reason = r.reason.clone().unwrap();
    assert!(
        reason.contains("\"ranger-07\"") && reason.contains("\"ranger-08\""),
        "{reason}"
    );
    assert_eq!(fx.sightings().await, 0);
    // The verdict goes back to the sender, not to the device the file names.
    assert_eq!(r.device.as_deref(), Some("ranger-08"));
    assert!(fx
        .root()
        .join("receipts/ranger-08/a.json.receipt.json")
        .exists());
    assert!(!fx.root().join("receipts/ranger-07").exists());
    // The same file at the top level belongs to the device its header names.
    fx.deliver(&good("json-basic.json"), "a.json");
    let r = fx.pass().await.receipts.remove(0);
    assert_eq!(
        (r.status, r.device.as_deref()),
        (Status::Ingested, Some("ranger-07"))
    );
}

async fn claimed_files_are_finished_after_a_crash(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    // Claimed, then the process died before ingesting.
    fx.deliver(
        &good("json-basic.json"),
        ".processing/ranger-07/20260101T000000000000000000001-a.json",
    );
    // Claimed and committed, then the process died before archiving.
    let claimed = fx
        .root()
        .join(".processing/ranger-07/20260101T000000000000000000002-b.ndjson");
    fx.deliver(
        &good("ndjson-basic.ndjson"),
        ".processing/ranger-07/20260101T000000000000000000002-b.ndjson",
    );
    let ingestor = Ingestor::new(fx.db.clone(), ctdata_batch::Limits::default(), "unassigned");
    let delivery = ctdata_server::ingest::Delivery {
        path: claimed.clone(),
        file_name: "b.ndjson".into(),
        channel: ctdata_server::types::Channel::Share,
        device_hint: Some("ranger-07".into()),
        claim_name: Some("ranger-07/20260101T000000000000000000002-b.ndjson".into()),
        rejected_path: None,
    };
    assert_eq!(
        ingestor.ingest(&delivery).await.unwrap().status,
        Status::Ingested
    );
    let before = fx.sightings().await;

    let report = fx.pass().await;
    let mut statuses: Vec<_> = report
        .receipts
        .iter()
        .map(|r| (r.file.as_str(), r.status))
        .collect();
    // Small files are decided several at once: the report lists them as they finish.
    statuses.sort_by_key(|(file, _)| *file);
    assert_eq!(
        statuses,
        [("a.json", Status::Ingested), ("b.ndjson", Status::Ingested)]
    );
    assert_eq!(
        fx.db.totals().await.unwrap().deliveries,
        0,
        "a recovery is not a duplicate delivery"
    );
    assert!(fx.sightings().await > before);
    assert_eq!(ctdata_tests::count_files(&fx.root().join(".processing")), 0);
    assert_eq!(ctdata_tests::count_files(&fx.root().join("archive")), 2);
}

async fn gzip_bomb_is_refused(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    // 512 MiB of zeros squeezes into about half a megabyte.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..512 {
        std::io::Write::write_all(&mut gz, &zeros).unwrap();
    }
    fx.deliver_bytes("ranger-07/bomb.ndjson.gz", &gz.finish().unwrap());
    let r = fx.pass().await.receipts.remove(0);
    assert_eq!(r.status, Status::Rejected);
    assert!(r.reason.as_deref().unwrap().contains("ratio"), "{r:?}");
    assert_eq!(fx.sightings().await, 0);
}

async fn unsettled_and_temporary_files_wait(db: TestDb) {
    // A settle time no test run will reach: only a rename can make a file ready.
    let mut fx = Fixture::with_settle(&db, Duration::from_secs(3600)).await;
    fx.deliver(&good("csv-basic.csv"), "ranger-07/being-written.csv");
    for temp in ["x.json.part", ".hidden.json", "y.json.tmp", "z.json~"] {
        fx.deliver(&good("json-basic.json"), &format!("ranger-07/{temp}"));
    }
    let report = fx.pass().await;
    assert!(report.receipts.is_empty(), "{report:?}");
    assert_eq!(
        report.waiting, 1,
        "only the file written in place is waiting to settle"
    );
    assert!(fx.root().join("ranger-07/being-written.csv").exists());

    // Renamed into place: complete at once.
    let part = fx.root().join("ranger-07/x.json.part");
    let done = fx.root().join("ranger-07/x.json");
    std::fs::rename(&part, &done).unwrap();
    fx.drop_dir.note_renamed(&done);
    let report = fx.pass().await;
    assert_eq!(report.receipts.len(), 1);
    assert_eq!(report.receipts[0].file, "x.json");
    assert_eq!(report.waiting, 1);
}

/// NDJSON of one sighting per id, for `device`, with a tab in a text field.
fn ndjson_with_ids(device: &str, ids: &[uuid::Uuid]) -> Vec<u8> {
    Batch::with_ids(device, ids)
        .each(|_, s| s.observer = Some("tab\there".into()))
        .ndjson()
}

/// Small files are stored in one round trip on PostgreSQL and large ones by COPY (with
/// a staging table once an id is stored already): both count ids stored by another
/// batch as duplicates, refuse an id repeated within the file, and give each batch its
/// own contiguous cursors.
async fn large_and_small_files_count_stored_ids_alike(db: TestDb) {
    let mut fx = Fixture::new(&db).await;
    let ids: Vec<uuid::Uuid> = (0..6000).map(|_| uuid::Uuid::new_v4()).collect();
    // 3,000 new rows (large), then 20 rows of which 10 are stored (small), then 3,000
    // rows of which 1,000 are stored (large).
    fx.deliver_bytes(
        "ranger-07/a.ndjson",
        &ndjson_with_ids("ranger-07", &ids[..3000]),
    );
    let a = fx.pass().await.receipts.remove(0);
    assert_eq!(
        (a.status, a.inserted, a.duplicates),
        (Status::Ingested, 3000, 0)
    );
    fx.deliver_bytes(
        "ranger-07/b.ndjson",
        &ndjson_with_ids("ranger-07", &ids[2990..3010]),
    );
    let b = fx.pass().await.receipts.remove(0);
    assert_eq!(
        (b.status, b.inserted, b.duplicates),
        (Status::Ingested, 10, 10)
    );
    fx.deliver_bytes(
        "ranger-07/c.ndjson",
        &ndjson_with_ids("ranger-07", &ids[2000..5000]),
    );
    let c = fx.pass().await.receipts.remove(0);
    assert_eq!(
        (c.status, c.inserted, c.duplicates),
        (Status::Ingested, 1990, 1010)
    );
    assert_eq!(fx.sightings().await, 5000);
    assert_eq!(a.cursor, Some(3000));
    assert_eq!(b.cursor.map(|n| n > 3000), Some(true));
    // Each batch's cursors are contiguous and its counts are on record.
    let rows = db
        .texts(
            "SELECT CAST(b.inserted AS TEXT), CAST(b.duplicates AS TEXT), \
             CAST(b.cursor_last - b.cursor_first + 1 AS TEXT), CAST(count(s.cursor) AS TEXT) \
             FROM batches b JOIN sightings s ON s.batch = b.id GROUP BY b.id ORDER BY b.id",
        )
        .await;
    let got: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
        .collect();
    let want = |v: [&str; 4]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    assert_eq!(
        got,
        [
            want(["3000", "0", "3000", "3000"]),
            want(["10", "10", "10", "10"]),
            want(["1990", "1010", "1990", "1990"])
        ]
    );
    // Text with a tab in it came through both paths unchanged.
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM sightings WHERE observer = '{}'",
            "tab\there"
        ))
        .await,
        5000
    );

    // An id twice within a small file and within a large one: refused, nothing stored.
    let mut twice: Vec<uuid::Uuid> = ids[5000..5010].to_vec();
    twice.push(ids[5003]);
    fx.deliver_bytes("ranger-07/d.ndjson", &ndjson_with_ids("ranger-07", &twice));
    let mut twice: Vec<uuid::Uuid> = ids[5010..6000].to_vec();
    twice.extend_from_slice(&ids[5010..6000]);
    twice.extend((0..1500).map(|_| uuid::Uuid::new_v4()));
    fx.deliver_bytes("ranger-07/e.ndjson", &ndjson_with_ids("ranger-07", &twice));
    let report = fx.pass().await;
    assert_eq!(report.receipts.len(), 2);
    for r in &report.receipts {
        assert_eq!(r.status, Status::Rejected, "{r:?}");
        let reason = r.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("duplicate sighting id"), "{reason}");
    }
    assert_eq!(fx.sightings().await, 5000);
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 3);
}
