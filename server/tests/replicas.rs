//! Replicas' leases and scheduled runs in the database, on both backends: a lease is
//! live until it runs out or is released, a renewal keeps it, and of several replicas
//! asking to run one scheduled job in one period exactly one is told to.

mod support;

use std::time::Duration;

use ctdata_server::replica::{self, Replica};
use ctdata_tests::{both_backends, TestDb};
use support::Server;

both_backends! {
    leases_run_out_unless_renewed_and_a_release_ends_them,
    a_scheduled_job_runs_once_per_period_across_replicas,
}

fn replica(name: &str, lease: Duration) -> Replica {
    Replica {
        name: name.into(),
        lease,
        heartbeat: lease / 4,
    }
}

async fn leases_run_out_unless_renewed_and_a_release_ends_them(db: TestDb) {
    let server = Server::open(&db).await;
    let db = server.db();
    let short = replica("short", Duration::from_millis(1500));
    let long = replica("long", Duration::from_secs(600));
    short.register(db).await.unwrap();
    long.register(db).await.unwrap();
    let live = Replica::live(db).await.unwrap();
    assert!(live.contains("short") && live.contains("long"), "{live:?}");

    // Not renewed: the short lease runs out (waited for, not timed).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while Replica::live(db).await.unwrap().contains("short") {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(Replica::live(db).await.unwrap().contains("long"));
    // A renewal (a heartbeat) makes it live again; a release ends it at once.
    short.renew(db).await.unwrap();
    assert!(Replica::live(db).await.unwrap().contains("short"));
    long.release(db).await.unwrap();
    let live = Replica::live(db).await.unwrap();
    assert!(!live.contains("long") && live.contains("short"), "{live:?}");

    let listed = replica::list(db).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(listed.len(), 2, "{names:?}");
    let long_row = listed.iter().find(|r| r.name == "long").unwrap();
    assert!(!long_row.live());
    assert_eq!(long_row.pid, i64::from(std::process::id()));
}

async fn a_scheduled_job_runs_once_per_period_across_replicas(db: TestDb) {
    let server = Server::open(&db).await;
    let db = server.db();
    let every = Duration::from_secs(3600);
    let replicas: Vec<Replica> = (0..3)
        .map(|i| replica(&format!("r{i}"), Duration::from_secs(60)))
        .collect();
    let mut won = 0;
    for r in &replicas {
        won += usize::from(r.claim_run(db, "pull:field-ftp", every).await.unwrap());
    }
    assert_eq!(won, 1, "one replica runs the job this period");
    // Another job is its own: one replica runs it too.
    assert!(replicas[2]
        .claim_run(db, "pull:other", every)
        .await
        .unwrap());
    // A short period passes (waited for): the job is due again, once.
    let short = Duration::from_millis(500);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut again = 0;
    while again == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never came due"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        for r in &replicas {
            again += usize::from(r.claim_run(db, "pull:field-ftp", short).await.unwrap());
        }
    }
    assert_eq!(again, 1);
}
