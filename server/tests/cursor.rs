//! Loads run side by side on PostgreSQL, so cursors are taken in insert order, not
//! commit order. These tests hold one load open in the middle of its COPY while others
//! commit, and check that an incremental export never steps past the open load's rows.

use std::sync::Arc;
use std::time::Duration;

use ctdata_batch::{ReadSummary, Sighting};
use ctdata_server::db::{Db, ExportFilter, LoadResult, NewBatch, RowStream};
use ctdata_tests::{eventually, Backend, TestDb};
use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

/// Test sighting `n` with a long text field, to fill the copy buffer sooner.
fn sighting(n: usize) -> Sighting {
    Sighting {
        observer: Some("a ranger with a long enough name to fill the copy buffer".into()),
        ..ctdata_tests::batch::sighting(n)
    }
}

fn new_batch(device: &str) -> NewBatch {
    NewBatch::new(
        device,
        Uuid::new_v4(),
        format!("{:064x}", rand_u128()),
        "ndjson",
        ctdata_server::types::Channel::Cli,
        "test.ndjson",
    )
}

fn rand_u128() -> u128 {
    Uuid::new_v4().as_u128()
}

/// Rows handed over in two parts: `first` of them at once, the rest only when `gate`
/// opens. With enough rows in the first part, the database has taken their cursors
/// while the load is still open.
fn gated_rows(rows: Arc<Vec<Sighting>>, first: usize, gate: Arc<Semaphore>) -> RowStream {
    let (tx, rx) = mpsc::channel(4);
    let done = tokio::spawn(async move {
        let total = rows.len() as u64;
        let _ = tx.send(rows[..first].to_vec()).await;
        let _ = gate.acquire().await.map(|p| p.forget());
        let _ = tx.send(rows[first..].to_vec()).await;
        Ok(ReadSummary { rows: total })
    });
    RowStream { rx, done }
}

async fn load_now(db: &Db, device: &str, rows: usize) -> i64 {
    let rows = Arc::new((0..rows).map(sighting).collect::<Vec<_>>());
    let open = Arc::new(Semaphore::new(1));
    let source = move || gated_rows(rows.clone(), 0, open.clone());
    match db.load_batch(&new_batch(device), &source).await.unwrap() {
        LoadResult::Loaded(record) => record.inserted,
        _ => panic!("expected a new batch"),
    }
}

async fn export_count(db: &Db, since: i64, until: i64) -> usize {
    db.export(ExportFilter {
        since,
        until: Some(until),
        ..Default::default()
    })
    .map(|row| row.unwrap())
    .count()
    .await
}

async fn sequence_value(db: &Db) -> i64 {
    let Db::Postgres(pool) = db else {
        unreachable!()
    };
    sqlx::query_scalar("SELECT last_value FROM sightings_cursor_seq")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn export_never_steps_past_a_load_still_running() {
    let Some(test_db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let db = Db::connect(&test_db.url, 8).await.unwrap();
    db.migrate().await.unwrap();
    assert_eq!(load_now(&db, "early", 10).await, 10);
    let before = db.safe_cursor().await.unwrap();
    assert_eq!(before, 10, "with nothing running, every stored row is safe");

    // A big load takes its first 20,000 cursors, then waits.
    let slow_rows = Arc::new((0..25_000).map(sighting).collect::<Vec<_>>());
    let gate = Arc::new(Semaphore::new(0));
    let slow = {
        let (db, rows, gate) = (db.clone(), slow_rows.clone(), gate.clone());
        tokio::spawn(async move {
            let source = move || gated_rows(rows.clone(), 20_000, gate.clone());
            db.load_batch(&new_batch("slow"), &source).await.unwrap()
        })
    };
    eventually(
        "the open load to take cursors",
        Duration::from_secs(30),
        || {
            let db = db.clone();
            async move { (sequence_value(&db).await > before + 10_000).then_some(()) }
        },
    )
    .await;

    // Meanwhile a small load starts later and commits first, with higher cursors.
    assert_eq!(load_now(&db, "quick", 5).await, 5);
    let safe = db.safe_cursor().await.unwrap();
    assert_eq!(
        safe, before,
        "the safe cursor must stay below the open load's rows"
    );
    assert_eq!(export_count(&db, before, safe).await, 0);

    gate.add_permits(1);
    match slow.await.unwrap() {
        LoadResult::Loaded(record) => assert_eq!(record.inserted, 25_000),
        _ => panic!("expected the slow batch to load"),
    }
    let last = db.safe_cursor().await.unwrap();
    assert_eq!(
        export_count(&db, safe, last).await,
        25_005,
        "every row after the earlier safe cursor arrives in the next export"
    );
    assert_eq!(db.totals().await.unwrap().sightings, 25_015);
}

#[tokio::test]
async fn concurrent_loads_of_one_batch_store_it_once() {
    let Some(test_db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let db = Db::connect(&test_db.url, 8).await.unwrap();
    db.migrate().await.unwrap();
    let rows = Arc::new((0..2_000).map(sighting).collect::<Vec<_>>());
    let batch = new_batch("twice");
    let gate = Arc::new(Semaphore::new(0));
    let mut loads = Vec::new();
    for _ in 0..4 {
        let (db, rows, gate, batch) = (db.clone(), rows.clone(), gate.clone(), batch.clone());
        loads.push(tokio::spawn(async move {
            let source = move || gated_rows(rows.clone(), 1_000, gate.clone());
            db.load_batch(&batch, &source).await.unwrap()
        }));
    }
    gate.add_permits(16);
    let (mut loaded, mut existing) = (0, 0);
    for load in loads {
        match load.await.unwrap() {
            LoadResult::Loaded(r) => {
                loaded += 1;
                assert_eq!(r.inserted, 2_000);
            }
            LoadResult::Exists(r) => {
                existing += 1;
                assert_eq!(r.inserted, 2_000);
            }
            LoadResult::Rejected(r) => panic!("rejected: {}", r.summary),
        }
    }
    assert_eq!((loaded, existing), (1, 3));
    assert_eq!(db.totals().await.unwrap().sightings, 2_000);
}

#[tokio::test]
async fn loads_that_deadlock_on_shared_sighting_ids_both_finish() {
    let Some(test_db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let db = Db::connect(&test_db.url, 8).await.unwrap();
    db.migrate().await.unwrap();
    // Two batches with the same 20,000 sighting ids, halves swapped: each stores its
    // first half, then (gate open) reaches the other's uncommitted rows. PostgreSQL
    // cancels one of them, and that one must be run again.
    let ids: Vec<Sighting> = (0..20_000).map(sighting).collect();
    let swapped: Vec<Sighting> = ids[10_000..]
        .iter()
        .chain(&ids[..10_000])
        .cloned()
        .collect();
    let gate = Arc::new(Semaphore::new(0));
    let mut loads = Vec::new();
    for (device, rows) in [("north", ids), ("south", swapped)] {
        let (db, rows, gate) = (db.clone(), Arc::new(rows), gate.clone());
        loads.push(tokio::spawn(async move {
            let source = move || gated_rows(rows.clone(), 10_000, gate.clone());
            db.load_batch(&new_batch(device), &source).await.unwrap()
        }));
    }
    eventually("both first halves stored", Duration::from_secs(30), || {
        let db = db.clone();
        async move { (sequence_value(&db).await >= 20_000).then_some(()) }
    })
    .await;
    gate.add_permits(64);
    let mut inserted = 0;
    for load in loads {
        match load.await.unwrap() {
            LoadResult::Loaded(r) => inserted += r.inserted,
            _ => panic!("expected both batches to load"),
        }
    }
    assert_eq!(inserted, 20_000, "each sighting is stored once");
    assert_eq!(db.totals().await.unwrap().sightings, 20_000);
}
