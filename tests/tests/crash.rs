//! kill -9 at random moments while the real server ingests a stream of files; after a
//! final restart every batch is stored exactly once and nothing is left half-done.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ctdata_tests::{both_backends, count_files, Batch, ServerEnv, TestDb};
use rand::{Rng, SeedableRng};

const FILES: usize = 60;
const ROWS_PER_FILE: usize = 2_000;
const CRASHES: usize = 12;

/// Writes `FILES` NDJSON batches from several devices into `dir` (outside the drop
/// directory) and returns their paths.
fn make_batches(dir: &Path) -> Vec<PathBuf> {
    (0..FILES)
        .map(|i| {
            let device = format!("ranger-{:02}", i % 5);
            let path = dir.join(format!("{device}-{i:03}.ndjson"));
            Batch::new(&device, ROWS_PER_FILE).write(&path);
            path
        })
        .collect()
}

fn deliver(src: &Path, drop_dir: &Path) {
    let name = src.file_name().unwrap().to_string_lossy().into_owned();
    let device = name
        .split_once('-')
        .and_then(|(_, rest)| rest.split_once('-'))
        .map(|(n, _)| format!("ranger-{n}"))
        .unwrap();
    let dest_dir = drop_dir.join(device);
    std::fs::create_dir_all(&dest_dir).unwrap();
    let part = dest_dir.join(format!("{name}.part"));
    std::fs::copy(src, &part).unwrap();
    std::fs::rename(&part, dest_dir.join(&name)).unwrap();
}

both_backends! {
    kill_9_at_random_moments_loses_and_duplicates_nothing,
}

async fn kill_9_at_random_moments_loses_and_duplicates_nothing(db: TestDb) {
    let env = ServerEnv::new(&db);
    let source = tempfile::tempdir().unwrap();
    let batches = make_batches(source.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC7DA7A);
    let mut next = 0;
    let mut interrupted = 0;
    for round in 0..CRASHES {
        let server = env.serve().await;
        // Keep deliveries arriving while the server works, then pull the plug.
        let burst = rng.gen_range(2..8).min(FILES - next);
        for src in &batches[next..next + burst] {
            deliver(src, &env.drop_dir());
        }
        next += burst;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..400))).await;
        server.crash();
        // What the kill interrupted (reported, not asserted: where a kill lands depends
        // on the machine's speed).
        let claimed = count_files(&env.drop_dir().join(".processing"));
        interrupted += usize::from(claimed > 0);
        eprintln!("crash {round}: {next} files delivered, {claimed} left claimed");
    }
    eprintln!("{interrupted} of {CRASHES} kills left claimed files to recover");
    for src in &batches[next..] {
        deliver(src, &env.drop_dir());
    }

    let server = env.serve().await;
    let archive = env.drop_dir().join("archive");
    let done = tokio::time::timeout(Duration::from_secs(180), async {
        while count_files(&archive) < FILES && count_files(&env.drop_dir().join("rejected")) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "not all archived; server log:\n{}",
        server.log_text()
    );
    assert!(server.terminate().success());

    let expected = (FILES * ROWS_PER_FILE) as i64;
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, expected);
    assert_eq!(
        db.scalar("SELECT count(DISTINCT id) FROM sightings").await,
        expected
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM batches").await,
        FILES as i64
    );
    assert_eq!(
        db.scalar("SELECT CAST(coalesce(sum(inserted), 0) AS BIGINT) FROM batches")
            .await,
        expected
    );
    assert_eq!(db.scalar("SELECT count(*) FROM rejections").await, 0);
    assert_eq!(count_files(&archive), FILES, "each file archived once");
    assert_eq!(
        count_files(&env.drop_dir().join(".processing")),
        0,
        "nothing left claimed"
    );
    // Each batch's cursor range holds exactly its rows (on PostgreSQL, loads run side
    // by side, so ranges of different batches may overlap).
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM batches b WHERE b.inserted <> (SELECT count(*) FROM sightings s \
             WHERE s.batch = b.id AND s.cursor BETWEEN b.cursor_first AND b.cursor_last)"
        )
        .await,
        0
    );
}
