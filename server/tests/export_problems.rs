//! One unrenderable stored row (written before the year was checked in UTC) never breaks
//! an export: it is exported with its problem named, and every other row still comes.

mod support;

use std::time::Duration;

use ctdata_server::db::{Db, ExportFilter};
use ctdata_server::export::{write_export, ExportFormat};
use ctdata_tests::{both_backends, fixtures, TestDb};
use support::Server;
use tokio_util::sync::CancellationToken;

both_backends! {
    a_year_10000_row_is_exported_with_its_problem,
}

async fn a_year_10000_row_is_exported_with_its_problem(db: TestDb) {
    let server = Server::open(&db).await;
    let store = server.db().clone();
    let mut drop_dir = server.drop_dir(Duration::ZERO);
    let dest = server.drop_root().join("ranger-07/a.json");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(fixtures().join("good/json-basic.json"), &dest).unwrap();
    let report = drop_dir
        .ingest_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.receipts.len(), 1, "{report:?}");
    let total = store.totals().await.unwrap().sightings;
    assert!(total >= 2);

    // What the old validation let through: 9999-12-31T23:59:59-23:59, stored in UTC.
    let sql = match &store {
        Db::Sqlite(_) => {
            "UPDATE sightings SET observed_at = '10000-01-01T23:58:59.000000Z', observed_offset = -86340 \
             WHERE cursor = (SELECT min(cursor) FROM sightings)"
        }
        Db::Postgres(_) => {
            "UPDATE sightings SET observed_at = '10000-01-01 23:58:59+00', observed_offset = -86340 \
             WHERE cursor = (SELECT min(cursor) FROM sightings)"
        }
    };
    match &store {
        Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
        Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
    }
    .unwrap();

    for format in [
        ExportFormat::Ndjson,
        ExportFormat::Csv,
        ExportFormat::Geojson,
    ] {
        let mut out = Vec::new();
        let summary = write_export(&store, ExportFilter::default(), format, &mut out)
            .await
            .unwrap_or_else(|e| panic!("{format:?} export failed: {e:#}"));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            summary.rows as i64, total,
            "{format:?}: every row is exported"
        );
        assert_eq!(
            text.matches("correct or delete this sighting").count(),
            1,
            "{format:?} names the problem once:\n{text}"
        );
        match format {
            ExportFormat::Ndjson => {
                let rows: Vec<serde_json::Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                assert!(rows[0]["observed_at"].is_null(), "{}", rows[0]);
                assert!(rows[1]["observed_at"].is_string());
                assert!(rows[1].get("problem").is_none());
            }
            ExportFormat::Csv => {
                let mut reader = csv::Reader::from_reader(text.as_bytes());
                let records: Vec<csv::StringRecord> =
                    reader.records().map(Result::unwrap).collect();
                assert!(records[0][4].starts_with("problem: "), "{:?}", records[0]);
                chrono::DateTime::parse_from_rfc3339(&records[1][4]).unwrap();
            }
            ExportFormat::Geojson => {
                let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(doc["features"].as_array().unwrap().len() as i64, total);
            }
            ExportFormat::Dwca => unreachable!("a zip, not in this list"),
        }
    }
}
