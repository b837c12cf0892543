//! A download given up half way (the client cut off, the browser closed) must not leave
//! its query running on PostgreSQL: the server cancels it and closes that connection,
//! instead of reading every remaining row before the connection can serve again
//! (seconds at millions of rows, with a pool connection lost meanwhile).

use std::sync::Arc;
use std::time::Duration;

use ctdata_batch::{ReadSummary, Sighting};
use ctdata_server::db::{Db, ExportFilter, LoadResult, NewBatch, RowStream};
use ctdata_tests::{eventually, TestDb};
use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

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
    let db = Db::connect(&test_db.url, 4).await.expect("connect");
    db.migrate().await.expect("migrate");
    // Far more rows than the export's queue holds (8 chunks of 256).
    let rows: Arc<Vec<Sighting>> =
        Arc::new((0..20_000).map(ctdata_tests::batch::sighting).collect());
    let batch = NewBatch::new(
        "ranger-01",
        Uuid::new_v4(),
        format!("{:064x}", Uuid::new_v4().as_u128()),
        "ndjson",
        ctdata_server::types::Channel::Cli,
        "test.ndjson",
    );
    let source = move || stream(rows.clone());
    match db.load_batch(&batch, &source).await.unwrap() {
        LoadResult::Loaded(r) => assert_eq!(r.inserted, 20_000),
        _ => panic!("expected a new batch"),
    }

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
