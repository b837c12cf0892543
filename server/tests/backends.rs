//! The same deliveries to a server on SQLite and one on PostgreSQL answer the same API
//! calls identically: devices, batches, sightings, rejections, conflicts, the CSV
//! export, and the pull history. Only server-made times differ in value; each is
//! replaced by its shape, so a time written in another format on one backend fails.
//!
//! Attributes are compared by meaning, not text: PostgreSQL stores them as `jsonb` and
//! prints `{"a": 1}` with its own key order, SQLite keeps the device's text. Making the
//! text identical would cost a parse per exported row; not done yet.

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use ctdata_batch::write::{BatchHeader, NdjsonWriter};
use ctdata_batch::Sighting;
use ctdata_server::db::{Db, PullRecord};
use ctdata_tests::{Backend, ServerEnv, TestDb};
use serde_json::Value;
use uuid::Uuid;

/// (status, body) of a curl request with a bearer token; `upload` posts that file.
fn call(url: &str, token: &str, upload: Option<&Path>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"));
    if let Some(file) = upload {
        cmd.arg("--data-binary").arg(format!("@{}", file.display()));
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn sighting(n: u128, species: &str, tz: FixedOffset) -> Sighting {
    Sighting {
        id: Uuid::from_u128(0x5157_0000 + n),
        observed_at: tz.with_ymd_and_hms(2026, 11, 3, 6, n as u32, 7).unwrap(),
        latitude: -19.5 + n as f64 / 100.0,
        longitude: 16.25,
        altitude: Some(1100.5),
        accuracy: None,
        observer: Some("T. Mokoena".into()),
        species: Some(species.into()),
        count: Some(n as i64),
        attributes: serde_json::from_value(serde_json::json!({"note": format!("n{n}")})).unwrap(),
    }
}

/// The batch files, byte for byte the same for both servers: the second one repeats a
/// sighting id of the first with another species (a conflict).
fn write_batches(dir: &Path) -> Vec<std::path::PathBuf> {
    let tz = FixedOffset::east_opt(2 * 3600).unwrap();
    let batches = [
        (
            1u128,
            vec![
                sighting(1, "Loxodonta africana", tz),
                sighting(2, "Pica pica", tz),
            ],
        ),
        (
            2,
            vec![
                sighting(2, "Corvus corax", tz),
                sighting(3, "Pica pica", tz),
            ],
        ),
    ];
    batches
        .into_iter()
        .map(|(n, rows)| {
            let file = dir.join(format!("batch-{n}.ndjson"));
            let header = BatchHeader {
                batch_id: Uuid::from_u128(0xba7c_0000 + n),
                device_id: "ranger-07".into(),
                created_at: tz.with_ymd_and_hms(2026, 11, 3, 8, n as u32, 0).unwrap(),
            };
            let out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
            let mut w = NdjsonWriter::new(out, &header).unwrap();
            for s in &rows {
                w.push(s).unwrap();
            }
            use std::io::Write;
            w.finish().unwrap().flush().unwrap();
            file
        })
        .collect()
}

/// A time the server made (within a day of now) as its shape: digits as `d`, the
/// fraction's length left out (a CSV export writes as many digits as it needs).
fn shape(s: &str) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    if (Utc::now() - t.with_timezone(&Utc)).num_hours().abs() > 24 {
        return None;
    }
    let mut out = String::new();
    let mut in_fraction = false;
    for c in s.chars() {
        match c {
            '.' => {
                in_fraction = true;
                out.push_str(".f");
            }
            c if c.is_ascii_digit() => {
                if !in_fraction {
                    out.push('d');
                }
            }
            c => {
                in_fraction = false;
                out.push(c);
            }
        }
    }
    Some(format!("<time {out}>"))
}

/// Server times become their shape; row ids and cursors become `<id>`: PostgreSQL
/// sequences skip the values a rolled-back attempt took (a load that met a stored
/// sighting id retries through a staging table), SQLite's do not.
fn normalise(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Some(sh) = shape(s) {
                *s = sh;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let numbered =
                    ["id", "batch", "cursor", "cursor_first", "cursor_last"].contains(&k.as_str());
                if numbered && v.is_i64() {
                    *v = Value::String("<id>".into());
                } else if let (true, Value::String(text)) = (k == "attributes", &mut *v) {
                    // By meaning: PostgreSQL prints jsonb its own way (see below).
                    *v = serde_json::from_str(text).unwrap_or_else(|_| text.as_str().into());
                } else if let (true, Value::String(path)) = (k == "stored_path", &mut *v) {
                    // Named after the moment the upload was claimed, and on PostgreSQL
                    // after the replica that claimed it (`<stamp>@<replica>-…`).
                    if let Some((head, rest)) = path.split_once('@') {
                        let tail = rest.split_once('-').map_or("", |(_, t)| t);
                        *path = format!("{head}-{tail}");
                    }
                    *path = path.replace(|c: char| c.is_ascii_digit(), "d");
                } else {
                    normalise(v);
                }
            }
        }
        _ => {}
    }
}

fn json(body: &str) -> Value {
    let mut v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    normalise(&mut v);
    v
}

fn csv_cells(body: &str) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(body.as_bytes());
    r.records()
        .enumerate()
        .map(|(line, rec)| {
            rec.unwrap()
                .iter()
                .enumerate()
                .map(|(column, c)| match (line, column) {
                    // The cursor column.
                    (1.., 0) => "<id>".to_string(),
                    // The attributes, by meaning (see below).
                    (1.., 12) => serde_json::from_str::<Value>(c).unwrap().to_string(),
                    _ => shape(c).unwrap_or_else(|| c.to_string()),
                })
                .collect()
        })
        .collect()
}

/// Every answer of one server, in order, normalised.
async fn answers(db: &TestDb) -> Vec<(String, Value)> {
    let env = ServerEnv::new(db);
    let admin = env.admin_token();
    let device = env.device_token("ranger-07");
    let server = env.serve().await;
    let base = server.http_base();
    let mut out = Vec::new();

    for file in write_batches(env.dir.path()) {
        let (status, body) = call(&format!("{base}/api/v1/batches"), &device, Some(&file));
        out.push((format!("upload {} {status}", file.display()), json(&body)));
    }
    let junk = env.dir.path().join("junk.ndjson");
    std::fs::write(&junk, "{\"not\": \"a batch\"}\n").unwrap();
    let (status, body) = call(&format!("{base}/api/v1/batches"), &device, Some(&junk));
    out.push((format!("upload junk {status}"), json(&body)));

    for path in [
        "/api/v1/devices",
        "/api/v1/batches",
        "/api/v1/rejected",
        "/api/v1/conflicts",
    ] {
        let (status, body) = call(&format!("{base}{path}"), &admin, None);
        assert_eq!(status, 200, "{path}: {body}");
        out.push((path.to_string(), json(&body)));
    }
    let batches = &out.iter().find(|(p, _)| p == "/api/v1/batches").unwrap().1;
    assert_eq!(batches.as_array().map(Vec::len), Some(2), "{batches}");
    let (status, body) = call(&format!("{base}/api/v1/batches?limit=1"), &admin, None);
    assert_eq!(status, 200, "{body}");
    let newest = serde_json::from_str::<Value>(&body).unwrap()[0]["id"].clone();
    let (status, body) = call(&format!("{base}/api/v1/batches/{newest}"), &admin, None);
    assert_eq!(status, 200, "{body}");
    out.push(("/api/v1/batches/{newest}".into(), json(&body)));

    let (status, body) = call(&format!("{base}/api/v1/sightings?format=csv"), &admin, None);
    assert_eq!(status, 200, "{body}");
    let cells = csv_cells(&body);
    assert_eq!(cells.len(), 4, "a header and three sightings: {body}");
    assert_eq!(cells[0][0], "cursor", "{body}");
    out.push(("csv".into(), serde_json::to_value(cells).unwrap()));
    for format in ["ndjson", "geojson"] {
        let (status, body) = call(
            &format!("{base}/api/v1/sightings?format={format}"),
            &admin,
            None,
        );
        assert_eq!(status, 200, "{body}");
        let lines: Vec<Value> = if format == "ndjson" {
            body.lines().map(json).collect()
        } else {
            vec![json(&body)]
        };
        out.push((format.into(), Value::Array(lines)));
    }
    assert!(server.terminate().success());

    // The pull history is the dashboard's: read it through the db layer.
    let db = Db::connect(&db.url, 2).await.unwrap();
    let started = Utc::now() - chrono::Duration::seconds(3);
    for (source, result) in [("camp-share", "ok"), ("hq-ftp", "error")] {
        let record = PullRecord {
            source: source.into(),
            trigger: "schedule".into(),
            started_at: started,
            finished_at: Utc::now(),
            found: 3,
            fetched: 2,
            ingested: 1,
            duplicates: 1,
            rejected: 0,
            errors: i64::from(result == "error"),
            result: result.into(),
            error: (result == "error").then(|| "connection refused".into()),
        };
        db.record_pull(&record).await.unwrap();
    }
    let mut pulls = serde_json::to_value(db.last_pulls().await.unwrap()).unwrap();
    normalise(&mut pulls);
    out.push(("pulls".into(), pulls));
    let mut devices = serde_json::to_value(db.device_stats().await.unwrap()).unwrap();
    normalise(&mut devices);
    out.push(("device stats".into(), devices));
    db.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_answer_alike() {
    let Some(pg) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let sqlite = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let on_sqlite = answers(&sqlite).await;
    let on_pg = answers(&pg).await;
    assert_eq!(on_sqlite.len(), on_pg.len());
    for ((what, a), (_, b)) in on_sqlite.iter().zip(&on_pg) {
        let what = what.replace(&*std::env::temp_dir().to_string_lossy(), "");
        assert_eq!(
            a,
            b,
            "{what}: SQLite answered\n{}\nPostgreSQL answered\n{}",
            serde_json::to_string_pretty(a).unwrap(),
            serde_json::to_string_pretty(b).unwrap()
        );
    }
    // The answers carry server times, in the one API format.
    let text = serde_json::to_string(&on_pg).unwrap();
    assert!(
        text.contains("<time dddd-dd-ddTdd:dd:dd.fZ>"),
        "no server time found: {text}"
    );
}
