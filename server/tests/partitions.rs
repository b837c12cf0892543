//! `sightings` partitioned by month of arrival on PostgreSQL (migration 0018): a
//! database migrated from the unpartitioned schema keeps its rows, cursors and ids; a
//! sighting id stored in another month is still a duplicate or a conflict; rows of a
//! month without a partition wait in the default partition and move when it is made;
//! bounding boxes are looked up in the (latitude, longitude) index.

use std::sync::Arc;
use std::time::Duration;

use ctdata_batch::{ReadSummary, Sighting};
use ctdata_server::db::{BBox, Db, ExportFilter, LoadResult, NewBatch, RowStream, SightingQuery};
use ctdata_tests::{both_backends, eventually, Backend, TestDb};
use futures::StreamExt;
use sqlx::Connection;
use tokio::sync::mpsc;
use uuid::Uuid;

fn new_batch(device: &str) -> NewBatch {
    NewBatch {
        device: device.into(),
        batch_id: Uuid::new_v4(),
        sha256: format!("{:064x}", Uuid::new_v4().as_u128()),
        format: "ndjson".into(),
        channel: ctdata_server::types::Channel::Cli,
        file_name: "test.ndjson".into(),
        claim_name: None,
        created_at: None,
        sequence: None,
        extras: Default::default(),
        media: Default::default(),
    }
}

fn stream(rows: Arc<Vec<Sighting>>) -> RowStream {
    let (tx, rx) = mpsc::channel(4);
    let done = tokio::spawn(async move {
        for chunk in rows.chunks(500) {
            let _ = tx.send(chunk.to_vec()).await;
        }
        Ok(ReadSummary {
            rows: rows.len() as u64,
        })
    });
    RowStream { rx, done }
}

async fn load(db: &Db, device: &str, rows: Vec<Sighting>) -> ctdata_server::db::BatchRecord {
    let rows = Arc::new(rows);
    let source = move || stream(rows.clone());
    match db.load_batch(&new_batch(device), &source).await.unwrap() {
        LoadResult::Loaded(record) => record,
        LoadResult::Exists(_) => panic!("expected a new batch, not one stored already"),
        LoadResult::Rejected(r) => panic!("expected a new batch, not a rejection: {}", r.summary),
    }
}

fn rows(n: usize) -> Vec<Sighting> {
    (0..n).map(ctdata_tests::batch::sighting).collect()
}

async fn pg_conn(db: &TestDb) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&db.url).await.expect("connect")
}

async fn open(db: &TestDb) -> Db {
    let d = Db::connect(&db.url, 4).await.expect("connect");
    d.migrate().await.expect("migrate");
    d
}

/// The partition that holds sighting `id`.
async fn partition_of(db: &TestDb, id: Uuid) -> String {
    let rows = db
        .texts(&format!(
            "SELECT tableoid::regclass::text FROM sightings WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(rows.len(), 1, "sighting {id} stored once: {rows:?}");
    rows[0][0].clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrated_database_keeps_its_rows() {
    let Some(test_db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    // The schema as it was before 0018, with rows from two months.
    let mut before = sqlx::migrate!("../migrations/postgres");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 18)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let mut conn = pg_conn(&test_db).await;
    before.run(&mut conn).await.expect("migrations up to 0017");
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    sqlx::query("INSERT INTO devices (name) VALUES ('ranger-01')")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO batches (device_id, batch_id, sha256, format, channel, file_name, received_at, \
         row_count, inserted, duplicates) VALUES \
         (1, gen_random_uuid(), 'a', 'ndjson', 'cli', 'a.ndjson', '2025-03-05T10:00:00Z', 2, 2, 0), \
         (1, gen_random_uuid(), 'b', 'ndjson', 'cli', 'b.ndjson', '2025-05-20T10:00:00Z', 1, 1, 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (n, (id, batch)) in ids.iter().zip([1, 1, 2]).enumerate() {
        sqlx::query(
            "INSERT INTO sightings (id, batch, device_id, observed_at, latitude, longitude, species) \
             VALUES ($1, $2, 1, '2025-01-01T06:00:00Z', $3, 31.5, 'Loxodonta africana')",
        )
        .bind(id)
        .bind(batch as i64)
        .bind(-24.0 + n as f64)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    drop(conn);

    let db = open(&test_db).await;
    assert_eq!(db.totals().await.unwrap().sightings, 3);
    assert_eq!(test_db.scalar("SELECT count(*) FROM sighting_ids").await, 3);
    assert_eq!(partition_of(&test_db, ids[0]).await, "sightings_y2025m03");
    assert_eq!(partition_of(&test_db, ids[2]).await, "sightings_y2025m05");
    // The old table is gone, the new one is partitioned.
    assert_eq!(
        test_db
            .scalar("SELECT count(*) FROM pg_class WHERE relname = 'sightings_0017'")
            .await,
        0
    );
    assert_eq!(
        test_db
            .scalar(
                "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'sightings'::regclass"
            )
            .await,
        1
    );

    // The export sees the old rows in cursor order, and new rows come after them.
    let exported: Vec<(i64, Uuid)> = db
        .export(ExportFilter::default())
        .map(|r| r.map(|r| (r.cursor, r.sighting.id)).unwrap())
        .collect()
        .await;
    assert_eq!(exported, vec![(1, ids[0]), (2, ids[1]), (3, ids[2])]);
    let mut again = rows(2);
    again[0].id = ids[0];
    let record = load(&db, "ranger-01", again).await;
    assert_eq!((record.inserted, record.duplicates), (1, 1));
    assert!(record.cursor_first > Some(3), "{:?}", record.cursor_first);
    assert_eq!(db.totals().await.unwrap().sightings, 4);
}

both_backends! {
    id_stored_in_another_month_is_a_duplicate_or_conflict,
}

/// An id first stored months ago (another partition on PostgreSQL) arrives again: with
/// the same content a duplicate, with other content a conflict; through the
/// one-round-trip path (small file) and the COPY path (large file) alike.
async fn id_stored_in_another_month_is_a_duplicate_or_conflict(test_db: TestDb) {
    let db = open(&test_db).await;
    let first = rows(3);
    let old = load(&db, "ranger-01", first.clone()).await;
    assert_eq!(old.inserted, 3);
    if test_db.backend == Backend::Postgres {
        // Stored in January 2025, a month without a partition: the rows wait in the
        // default partition until the month's partition is made, then move into it.
        test_db
            .scalar("WITH u AS (UPDATE sightings SET received_at = '2025-01-15T00:00:00Z' RETURNING 1) SELECT count(*) FROM u")
            .await;
        assert_eq!(
            partition_of(&test_db, first[0].id).await,
            "sightings_default"
        );
        assert_eq!(
            test_db
                .scalar(
                    "SELECT CAST(ctdata_sighting_partitions('2025-01-15', '2025-01-15') AS BIGINT)"
                )
                .await,
            1
        );
        assert_eq!(
            partition_of(&test_db, first[0].id).await,
            "sightings_y2025m01"
        );
        assert_eq!(test_db.scalar("SELECT count(*) FROM sighting_ids").await, 3);
    }

    // Small file: the same first sighting (a duplicate), the second edited (a
    // conflict), one new.
    let mut small = rows(3);
    small[0] = first[0].clone();
    small[1] = Sighting {
        species: Some("Panthera leo".into()),
        ..first[1].clone()
    };
    let r = load(&db, "ranger-01", small).await;
    assert_eq!((r.inserted, r.duplicates), (1, 2));

    // Large file (COPY path): the third again, edited, among 3000 new ones.
    let mut large = rows(3000);
    large[1500] = Sighting {
        count: Some(7),
        ..first[2].clone()
    };
    let r = load(&db, "ranger-02", large).await;
    assert_eq!((r.inserted, r.duplicates), (2999, 1));

    let conflicts = db.list_conflicts(i64::MAX, 10).await.unwrap();
    let mut found: Vec<(String, Vec<String>)> = conflicts
        .iter()
        .map(|c| (c.sighting_id.clone(), c.differs.clone()))
        .collect();
    found.sort();
    let mut expected = vec![
        (first[1].id.to_string(), vec!["species".to_string()]),
        (first[2].id.to_string(), vec!["count".to_string()]),
    ];
    expected.sort();
    assert_eq!(found, expected);
    assert_eq!(db.totals().await.unwrap().sightings, 3 + 1 + 2999);
    if test_db.backend == Backend::Postgres {
        assert_eq!(
            test_db.scalar("SELECT count(*) FROM sighting_ids").await,
            3 + 1 + 2999
        );
        assert_eq!(
            test_db
                .scalar("SELECT count(*) FROM sightings GROUP BY id ORDER BY 1 DESC LIMIT 1")
                .await,
            1
        );
    }
}

/// A small box over many stored sightings: the dashboard page and the export look
/// it up in the (latitude, longitude) index, not by reading every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounding_box_uses_the_lat_lon_index() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let Some(test_db) = TestDb::new(backend).await else {
            continue;
        };
        let db = open(&test_db).await;
        // 20,000 sightings on a 200 × 100 grid over southern Africa.
        let grid: Vec<Sighting> = (0..20_000)
            .map(|n| Sighting {
                latitude: -35.0 + (n / 200) as f64 * 0.2,
                longitude: 10.0 + (n % 200) as f64 * 0.2,
                ..ctdata_tests::batch::sighting(n)
            })
            .collect();
        load(&db, "ranger-01", grid).await;
        if backend == Backend::Postgres {
            let mut conn = pg_conn(&test_db).await;
            sqlx::query("ANALYZE sightings")
                .execute(&mut conn)
                .await
                .unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&test_db.url).await.unwrap();
            sqlx::query("ANALYZE").execute(&mut conn).await.unwrap();
        }
        let bbox = BBox {
            min_lon: 20.0,
            min_lat: -25.0,
            max_lon: 21.0,
            max_lat: -24.0,
        };
        let page = db
            .explain_sightings_page(&SightingQuery {
                bbox: Some(bbox),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        let export = db
            .explain_export(&ExportFilter {
                bbox: Some(bbox),
                ..Default::default()
            })
            .await
            .unwrap();
        for (what, plan) in [("dashboard page", page), ("export", export)] {
            let text = plan.join("\n");
            eprintln!("{backend:?} {what}:\n{text}");
            match backend {
                Backend::Postgres => {
                    // The partition holding the rows (this month's) is read through
                    // its (latitude, longitude) index, and no partition is read whole.
                    assert!(
                        text.contains("latitude_longitude_idx"),
                        "{what}: no lat/lon index in\n{text}"
                    );
                    let month = test_db
                        .texts("SELECT DISTINCT tableoid::regclass::text FROM sightings")
                        .await;
                    let month = month[0][0].clone().unwrap();
                    assert!(
                        !text.contains(&format!("Seq Scan on {month}")),
                        "{what}: {month} read whole in\n{text}"
                    );
                }
                Backend::Sqlite => assert!(
                    text.contains("sightings_lat_lon"),
                    "{what}: no lat/lon index in\n{text}"
                ),
            }
        }
    }
}

// ---- An abandoned export ------------------------------------------------------------
// A download given up half way (the client cut off, the browser closed) must not leave
// its query running on PostgreSQL: the server cancels it and closes that connection,
// instead of reading every remaining row before the connection can serve again
// (seconds at millions of rows, with a pool connection lost meanwhile).

/// Backends of the test database other than the asking one whose (last) query is the
/// export's or the track export's: a pooled connection that finished or drained its
/// query stays listed, idle, with that query's text.
async fn export_backends(db: &TestDb) -> i64 {
    db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() \
         AND (query LIKE '%ORDER BY s.cursor%' OR query LIKE '%FROM tracks t JOIN devices%')",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_export_is_cancelled_and_its_connection_closed() {
    let Some(test_db) = ctdata_tests::pg().await else {
        return;
    };
    let db = open(&test_db).await;
    // Far more rows than the export's queue holds (8 chunks of 256).
    assert_eq!(load(&db, "ranger-01", rows(20_000)).await.inserted, 20_000);

    // A reader that takes a few rows and goes away.
    let mut export = db.export(ExportFilter::default());
    for _ in 0..10 {
        export.next().await.expect("a row").expect("a good row");
    }
    drop(export);
    eventually(
        "the abandoned export's connection to be gone",
        Duration::from_secs(30),
        || async { (export_backends(&test_db).await == 0).then_some(()) },
    )
    .await;

    // A reader that reads to the end leaves its connection in the pool, as before.
    let all = db.export(ExportFilter::default()).count().await;
    assert_eq!(all, 20_000);
    assert_eq!(export_backends(&test_db).await, 1);
    // The pool still serves.
    let again = db.export(ExportFilter::default()).take(5).count().await;
    assert_eq!(again, 5);
    db.close().await;
}
