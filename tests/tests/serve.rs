//! The real `ctdata-server` binary watching a real drop directory, against a real
//! database of each kind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ctdata_tests::{
    both_backends, count_files, eventually, fixtures, rejected_reasons, Batch, ServerEnv, TestDb,
};

const WAIT: Duration = Duration::from_secs(60);

fn good(name: &str) -> PathBuf {
    fixtures().join("good").join(name)
}

/// Delivers like a careful client: write under a temporary name, then rename.
fn deliver_by_rename(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let part = dest.with_extension("part");
    std::fs::copy(src, &part).unwrap();
    std::fs::rename(&part, dest).unwrap();
}

async fn wait_archived(env: &ServerEnv, n: usize) {
    let archive = env.drop_dir().join("archive");
    eventually(&format!("{n} file(s) archived"), WAIT, || async {
        (count_files(&archive) >= n).then_some(())
    })
    .await;
}

fn run(env: &ServerEnv, args: &[&str]) -> std::process::Output {
    let out = env.command(args).output().expect("run ctdata-server");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

both_backends! {
    serve_ingests_deliveries_and_export_follows_the_cursor,
    serve_survives_the_bad_corpus,
    ingest_command_for_scheduled_tasks,
    sigterm_finishes_the_file_in_hand,
}

async fn serve_ingests_deliveries_and_export_follows_the_cursor(db: TestDb) {
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let drop_dir = env.drop_dir();

    // Renamed into place, and written in place (taken once it settles).
    deliver_by_rename(
        &good("ndjson-basic.ndjson"),
        &drop_dir.join("ranger-07/a.ndjson"),
    );
    std::fs::copy(good("csv-basic.csv"), drop_dir.join("field-export.csv")).unwrap();
    wait_archived(&env, 2).await;
    let first_rows = db.scalar("SELECT count(*) FROM sightings").await;
    assert!(first_rows > 0);

    let cursor_file = env.dir.path().join("export.cursor");
    let out_file = env.dir.path().join("out.csv");
    let export = |out: &Path| {
        run(
            &env,
            &[
                "export",
                "--format",
                "csv",
                "--cursor-file",
                cursor_file.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
        )
    };
    let out = export(&out_file);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("exported {first_rows} sightings"))
    );
    let csv_rows = csv::Reader::from_path(&out_file).unwrap().records().count() as i64;
    assert_eq!(csv_rows, first_rows);

    deliver_by_rename(&good("json-basic.json"), &drop_dir.join("ranger-07/b.json"));
    wait_archived(&env, 3).await;
    let total = db.scalar("SELECT count(*) FROM sightings").await;
    let second = env.dir.path().join("out2.csv");
    assert!(export(&second).status.success());
    let new_rows = csv::Reader::from_path(&second).unwrap().records().count() as i64;
    assert_eq!(
        new_rows,
        total - first_rows,
        "the second export must hold only the new rows"
    );

    let receipt = drop_dir.join("receipts/ranger-07/b.json.receipt.json");
    let receipt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(receipt).unwrap()).unwrap();
    assert_eq!(receipt["status"], "ingested");

    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM must end the server cleanly: {status:?}"
    );
}

async fn serve_survives_the_bad_corpus(db: TestDb) {
    let env = ServerEnv::new(&db);
    // Watched from the start: a rename into a folder made a moment before can be missed
    // by inotify, and a cut-short file judged by settling waits ingest.incomplete_grace_secs.
    std::fs::create_dir_all(env.drop_dir().join("ranger-07")).unwrap();
    let mut server = env.serve().await;
    let mut n = 0;
    for entry in std::fs::read_dir(fixtures().join("bad")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "expect") {
            continue;
        }
        deliver_by_rename(
            &path,
            &env.drop_dir()
                .join("ranger-07")
                .join(path.file_name().unwrap()),
        );
        n += 1;
    }
    let rejected = env.drop_dir().join("rejected");
    eventually("every bad file rejected", WAIT, || async {
        (rejected_reasons(&env.drop_dir()).len() == n).then_some(())
    })
    .await;
    assert_eq!(
        count_files(&rejected),
        2 * n,
        "each rejected file has its reason beside it"
    );
    assert!(server.child.try_wait().unwrap().is_none(), "server died");
    deliver_by_rename(
        &good("json-basic.json"),
        &env.drop_dir().join("ranger-07/ok.json"),
    );
    wait_archived(&env, 1).await;
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 1);
    assert_eq!(db.scalar("SELECT count(*) FROM rejections").await, n as i64);
    assert!(server.terminate().success());
}

async fn ingest_command_for_scheduled_tasks(db: TestDb) {
    let env = ServerEnv::new(&db);
    // In place: files are read, not moved.
    let good_file = good("geojson-basic.geojson");
    let out = run(
        &env,
        &[
            "ingest",
            "--device",
            "ranger-09",
            good_file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ingested"), "{stdout}");
    assert!(good_file.exists());
    let rows = db.scalar("SELECT count(*) FROM sightings").await;
    assert!(rows > 0);
    let again = run(
        &env,
        &[
            "ingest",
            "--device",
            "ranger-09",
            good_file.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("duplicate"));

    let bad = std::fs::read_dir(fixtures().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "csv"))
        .unwrap();
    let out = run(&env, &["ingest", bad.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a rejected file must fail the scheduled task"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("REJECTED"));

    // No paths: one pass over the drop directory. It looks twice, settle_secs apart, so
    // a file that is complete is taken in the same run.
    deliver_by_rename(
        &good("json-basic.json"),
        &env.drop_dir().join("ranger-07/x.json"),
    );
    let out = run(&env, &["ingest"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 still being written"));
    assert_eq!(count_files(&env.drop_dir().join("archive")), 1);
    let inside = env.drop_dir().join("ranger-07");
    let out = run(&env, &["ingest", inside.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is inside the drop directory"));
    assert!(db.scalar("SELECT count(*) FROM sightings").await > rows);
}

#[test]
fn default_config_and_help() {
    let out = std::process::Command::new(ctdata_tests::server_bin())
        .arg("default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[database]") && text.contains("drop_dir"));
    let help = std::process::Command::new(ctdata_tests::server_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for cmd in ["serve", "ingest", "export", "migrate", "default-config"] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
}

async fn sigterm_finishes_the_file_in_hand(db: TestDb) {
    let env = ServerEnv::new(&db);
    let big = env.dir.path().join("big.ndjson");
    const ROWS: i64 = 200_000;
    Batch::new("ranger-07", ROWS as usize).write(&big);

    let server = env.serve().await;
    deliver_by_rename(&big, &env.drop_dir().join("ranger-07/big.ndjson"));
    let processing = env.drop_dir().join(".processing");
    let archive = env.drop_dir().join("archive");
    // Stop it while the file is claimed (or, on a fast machine, already done).
    eventually("the file to be claimed", WAIT, || async {
        (count_files(&processing) + count_files(&archive) > 0).then_some(())
    })
    .await;
    let mid_file = count_files(&archive) == 0;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    // Where the signal landed is reported, not asserted (it depends on machine speed);
    // either way the file must be complete below.
    eprintln!(
        "SIGTERM arrived {}",
        if mid_file {
            "while the file was in hand"
        } else {
            "after the file was done"
        }
    );
    assert_eq!(
        count_files(&archive),
        1,
        "the file in hand is finished before exit"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, ROWS);
}
