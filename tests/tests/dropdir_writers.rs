//! Writers that take their time, and names and folders that must not wedge the drop
//! directory: the real server on a real drop directory, against each database.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctdata_tests::{
    both_backends, count_files, eventually, rejected_reasons, Batch, ServerEnv, TestDb,
};

const ROWS: usize = 2_000;
const WAIT: Duration = Duration::from_secs(120);

/// A whole batch of `rows` sightings in `format` (ndjson, json or csv) for `device`.
fn batch(format: &str, device: &str, rows: usize) -> Vec<u8> {
    let batch = Batch::new(device, rows);
    match format {
        "ndjson" => batch.ndjson(),
        "json" => batch.json(),
        _ => batch.csv(),
    }
}

/// Writes `bytes` straight to `path` (no temporary name): the first half, cut inside a
/// row, then a real pause (`wait` returns when the rest may come), then the rest. With
/// `reopen` the writer closes the file in the pause and reopens it to append.
fn slow_write(path: &Path, bytes: &[u8], reopen: bool, wait: impl FnOnce()) {
    let mut half = bytes.len() / 2;
    // Inside a row: a CSV cut right after a line break would look complete.
    while bytes[half - 1] == b'\n' || bytes[half] == b'\n' {
        half += 1;
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&bytes[..half]).unwrap();
    f.flush().unwrap();
    if reopen {
        drop(f);
        wait();
        f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    } else {
        wait();
    }
    f.write_all(&bytes[half..]).unwrap();
}

fn env_with(db: &TestDb, settle: &str, grace: &str) -> ServerEnv {
    let mut env = ServerEnv::new(db);
    env.extra_env.extend([
        ("CTDATA__INGEST__SETTLE_SECS".into(), settle.into()),
        ("CTDATA__INGEST__INCOMPLETE_GRACE_SECS".into(), grace.into()),
    ]);
    env
}

async fn rows_refused(db: &TestDb) -> i64 {
    // Every writer's file holds ROWS sightings; a refused file stores none of them.
    db.scalar("SELECT count(*) FROM rejections WHERE status = 'pending'")
        .await
        * ROWS as i64
}

/// Each pause twice, the descriptor kept open and closed/reopened, all at once.
async fn writers_pausing(db: TestDb, pauses: &[u64]) {
    let env = env_with(&db, "0.5", "120");
    let drop_dir = env.drop_dir();
    let mut writers = Vec::new();
    for (i, &pause) in pauses.iter().enumerate() {
        for reopen in [false, true] {
            let format = ["ndjson", "json", "csv"][(2 * i + usize::from(reopen)) % 3];
            let device = format!("writer-{pause}s-{}", if reopen { "reopen" } else { "open" });
            let dir = drop_dir.join(&device);
            std::fs::create_dir_all(&dir).unwrap();
            writers.push((
                dir.join(format!("field.{format}")),
                batch(format, &device, ROWS),
                reopen,
                pause,
            ));
        }
    }
    let server = env.serve().await;
    let n = writers.len() as i64;
    let started = Instant::now();
    let handles: Vec<_> = writers
        .into_iter()
        .map(|(path, bytes, reopen, pause)| {
            tokio::task::spawn_blocking(move || {
                slow_write(&path, &bytes, reopen, || {
                    std::thread::sleep(Duration::from_secs(pause))
                })
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    eventually("every writer's batch stored", WAIT, || async {
        (db.scalar("SELECT count(*) FROM batches").await == n).then_some(())
    })
    .await;
    let refused = rows_refused(&db).await;
    eprintln!(
        "{n} writers pausing {pauses:?} s: {} rows stored, {refused} rows refused, {:?}",
        db.scalar("SELECT count(*) FROM sightings").await,
        started.elapsed()
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM sightings").await,
        n * ROWS as i64
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM rejections").await,
        0,
        "{}",
        server.log_text()
    );
    assert!(rejected_reasons(&drop_dir).is_empty());
    // A claimed file moves to the archive just after its batch commits: wait for that
    // (a file left behind still fails the test).
    let processing = drop_dir.join(".processing");
    eventually("every claimed file archived", WAIT, || async {
        (count_files(&processing) == 0).then_some(())
    })
    .await;
}

both_backends! {
    writers_pausing_1s_and_5s_are_waited_for,
    a_writer_pausing_35s_is_waited_for,
    a_cut_file_is_rejected_after_the_grace_and_taken_back_when_it_grows,
    a_complete_delivery_resolves_the_truncated_one,
    long_file_names_are_claimed_or_refused_with_a_reason,
    a_vanished_drop_directory_is_reported_once_and_recovered,
}

async fn writers_pausing_1s_and_5s_are_waited_for(db: TestDb) {
    writers_pausing(db, &[1, 5]).await;
}

async fn a_writer_pausing_35s_is_waited_for(db: TestDb) {
    writers_pausing(db, &[35]).await;
}

/// With a short grace the same rule shows both ends: a file still cut short when the
/// grace ends is rejected as `truncated`; if its writer then goes on (the descriptor was
/// still open, so it writes into the rejected file), the file is taken back and stored,
/// and its rejection no longer waits for anyone.
async fn a_cut_file_is_rejected_after_the_grace_and_taken_back_when_it_grows(db: TestDb) {
    let env = env_with(&db, "0.3", "2");
    let drop_dir = env.drop_dir();
    std::fs::create_dir_all(drop_dir.join("ranger-07")).unwrap();
    let _server = env.serve().await;

    // Never finished: rejected once the grace is over, as truncated (a CSV cut in a row).
    let cut = batch("csv", "ranger-07", 50);
    std::fs::write(
        drop_dir.join("ranger-07/never.csv"),
        &cut[..cut.len() / 2 + 3],
    )
    .unwrap();

    let bytes = batch("ndjson", "ranger-07", ROWS);
    let path = drop_dir.join("ranger-07/late.ndjson");
    let reasons = drop_dir.clone();
    tokio::task::spawn_blocking(move || {
        slow_write(&path, &bytes, false, || {
            let deadline = Instant::now() + WAIT;
            while !rejected_reasons(&reasons)
                .iter()
                .any(|(f, _)| f.ends_with("late.ndjson"))
            {
                assert!(Instant::now() < deadline, "late.ndjson was never rejected");
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    })
    .await
    .unwrap();
    eventually("the grown file stored", WAIT, || async {
        (db.scalar("SELECT count(*) FROM sightings").await == ROWS as i64).then_some(())
    })
    .await;
    let rows = db
        .texts("SELECT file_name, kind, status FROM rejections ORDER BY file_name")
        .await;
    let row = |f: &str, k: &str, s: &str| {
        vec![
            Some(f.to_string()),
            Some(k.to_string()),
            Some(s.to_string()),
        ]
    };
    assert_eq!(
        rows,
        vec![
            row("late.ndjson", "truncated", "reprocessed"),
            row("never.csv", "truncated", "pending")
        ]
    );
    let left = rejected_reasons(&drop_dir);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].0.ends_with("never.csv"));
}

/// Delivers by rename (complete the moment it appears: no waiting).
fn deliver_by_rename(bytes: &[u8], dest: &Path) {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let part = dest.with_extension("part");
    std::fs::write(&part, bytes).unwrap();
    std::fs::rename(&part, dest).unwrap();
}

async fn a_complete_delivery_resolves_the_truncated_one(db: TestDb) {
    let env = env_with(&db, "0.3", "120");
    let drop_dir = env.drop_dir();
    // Watched from the start, so the renames are seen (a file in a folder created
    // later is judged by settling: a cut one would wait for the grace).
    std::fs::create_dir_all(drop_dir.join("ranger-07")).unwrap();
    let _server = env.serve().await;
    let whole = batch("ndjson", "ranger-07", 100);
    deliver_by_rename(
        &whole[..whole.len() / 2],
        &drop_dir.join("ranger-07/day.ndjson"),
    );
    eventually("the cut copy rejected", WAIT, || async {
        (db.scalar(
            "SELECT count(*) FROM rejections WHERE kind = 'truncated' AND status = 'pending'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    deliver_by_rename(&whole, &drop_dir.join("ranger-07/day.ndjson"));
    eventually("the complete copy stored", WAIT, || async {
        (db.scalar("SELECT count(*) FROM sightings").await == 100).then_some(())
    })
    .await;
    eventually("the cut copy resolved", WAIT, || async {
        (db.scalar("SELECT count(*) FROM rejections WHERE status = 'resolved'")
            .await
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM rejections WHERE status = 'pending'")
            .await,
        0
    );
}

async fn long_file_names_are_claimed_or_refused_with_a_reason(db: TestDb) {
    let env = env_with(&db, "0.3", "120");
    let drop_dir = env.drop_dir();
    let _server = env.serve().await;
    let name = |len: usize| format!("{}.ndjson", "n".repeat(len - ".ndjson".len()));
    let accepted = [205, 215, 224, 237];
    for len in accepted {
        deliver_by_rename(
            &batch("ndjson", "ranger-07", 10),
            &drop_dir.join("ranger-07").join(name(len)),
        );
    }
    for len in [238, 255] {
        // Written in place: a rename from `.part` would need 5 more bytes than allowed.
        std::fs::write(
            drop_dir.join("ranger-07").join(name(len)),
            batch("ndjson", "ranger-07", 10),
        )
        .unwrap();
    }
    eventually("every long name decided", WAIT, || async {
        let stored = db.scalar("SELECT count(*) FROM batches").await;
        let refused = db.scalar("SELECT count(*) FROM rejections").await;
        (stored == 4 && refused == 2).then_some(())
    })
    .await;
    let mut stored: Vec<usize> = db
        .texts("SELECT file_name FROM batches")
        .await
        .into_iter()
        .map(|r| r[0].as_ref().unwrap().len())
        .collect();
    stored.sort();
    assert_eq!(stored, accepted, "the full names are kept");
    for len in accepted {
        assert!(drop_dir
            .join("receipts/ranger-07")
            .join(format!("{}.receipt.json", name(len)))
            .exists());
    }
    let refused = db
        .texts("SELECT kind, reason, file_name FROM rejections")
        .await;
    for r in &refused {
        assert_eq!(r[0].as_deref(), Some("file_name"));
        assert!(r[1].as_deref().unwrap().contains("at most 237"), "{r:?}");
        assert!([238, 255].contains(&r[2].as_ref().unwrap().len()));
    }
    assert_eq!(rejected_reasons(&drop_dir).len(), 2);
    // The receipt and the reason are written just before the file moves.
    let processing = drop_dir.join(".processing");
    eventually("every claimed file filed away", WAIT, || async {
        (count_files(&processing) == 0).then_some(())
    })
    .await;
}

fn ready_status(base: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("{base}/readyz"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn error_lines(log: &str) -> usize {
    log.lines().filter(|l| l.contains("ERROR")).count()
}

/// An unmounted share: the folder is gone. One error, `/readyz` says why, and when the
/// folder is back everything works again without a restart.
async fn a_vanished_drop_directory_is_reported_once_and_recovered(db: TestDb) {
    let env = env_with(&db, "0.3", "120");
    let drop_dir = env.drop_dir();
    let server = env.serve().await;
    let base = server.http_base();
    assert_eq!(ready_status(&base), "200");
    let away = env.dir.path().join("unmounted");
    std::fs::rename(&drop_dir, &away).unwrap();
    eventually("/readyz to report the drop directory", WAIT, || async {
        (ready_status(&base) == "503").then_some(())
    })
    .await;
    // A measuring window, not a wait for something: how many errors the outage costs.
    let before = error_lines(&server.log_text());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = error_lines(&server.log_text()) - before;
    eprintln!("error lines in 3 s with the drop directory gone: {during} ({before} before)");
    assert!(before <= 2 && during == 0, "{}", server.log_text());

    std::fs::rename(&away, &drop_dir).unwrap();
    eventually("/readyz ready again", WAIT, || async {
        (ready_status(&base) == "200").then_some(())
    })
    .await;
    assert!(server.log_text().contains("the drop directory is back"));
    deliver_by_rename(
        &batch("ndjson", "ranger-07", 10),
        &drop_dir.join("ranger-07/after.ndjson"),
    );
    eventually("a delivery after the return stored", WAIT, || async {
        (db.scalar("SELECT count(*) FROM batches").await == 1).then_some(())
    })
    .await;
}

/// `ingest PATH` on a folder holding a FIFO and symlink loops: the batch beside them
/// is ingested, the rest skipped with a reason, and the command ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_command_skips_fifos_and_symlink_loops() {
    let db = TestDb::new(ctdata_tests::Backend::Sqlite)
        .await
        .expect("sqlite");
    let env = ServerEnv::new(&db);
    let src = tempfile::tempdir().unwrap();
    let dir: PathBuf = src.path().join("export");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("good.ndjson"), batch("ndjson", "ranger-07", 10)).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.join("pipe.ndjson"))
        .status()
        .unwrap();
    assert!(fifo.success());
    std::os::unix::fs::symlink("self.json", dir.join("self.json")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("up")).unwrap();
    let mut child = env
        .command(&["ingest", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("ingest PATH did not finish");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(status.success());
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 10);
    let skipped = |what: &str, why: &str| {
        stdout
            .lines()
            .any(|l| l.starts_with("skipped") && l.contains(what) && l.contains(why))
    };
    assert!(skipped("pipe.ndjson", "not a regular file"), "{stdout}");
    assert!(skipped("self.json", "symlink loop"), "{stdout}");
    assert!(skipped("/up/export", "symlink loop"), "{stdout}");
}
