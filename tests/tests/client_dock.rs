//! Send on sync at a station PC, as the operator meets it: a handheld's bad export is
//! reported once (not at every scan of `dock --watch`), and a later `dock` does not
//! fail on it again.

use std::time::Duration;

use ctdata_tests::client::{Client, Running};
use ctdata_tests::{both_backends, eventually, ServerEnv, TestDb};

both_backends! {
    a_bad_file_on_the_handheld_is_reported_once,
}

fn csv(rows: usize, tag: &str) -> String {
    let mut s = String::from("observed_at,latitude,longitude,species,notes\n");
    for i in 0..rows {
        s += &format!("2024-05-03T06:{i:02}:00+02:00,-24.4,31.8,Loxodonta africana,{tag}\n");
    }
    s
}

const BAD: &str = "observed_at,latitude,longitude\n2024-05-03T06:00:00+02:00,-124.4,31.8\n";

async fn a_bad_file_on_the_handheld_is_reported_once(db: TestDb) {
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let (client, _) = Client::sending_to(&env, &server, "station-pc");
    let synced = tempfile::tempdir().unwrap();
    let dir = synced.path();
    std::fs::write(dir.join("good.csv"), csv(2, "a")).unwrap();
    std::fs::write(dir.join("broken.csv"), BAD).unwrap();
    let shown = dir.display().to_string();

    // First time: the good file goes, the bad one is named with its line, exit 1.
    let out = client.run(&["dock", &shown]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("sent 1 batch (2 sightings"), "{stdout}");
    assert!(
        stderr.contains("broken.csv") && stderr.contains("line 2"),
        "{stderr}"
    );

    // Again: the bad file was reported; nothing else is wrong, so exit 0.
    let out = client.run(&["dock", &shown]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("1 file(s) reported before"), "{stderr}");
    assert!(!stderr.contains("not taken:"), "{stderr}");

    // --watch: a new bad file is reported once however many scans see it; a fixed
    // version of it (new content) is taken.
    let watch = Running::start(&client, &["dock", &shown, "--watch", "--interval", "100ms"]);
    std::fs::write(dir.join("day2.csv"), BAD.replace("-124.4", "-125.0")).unwrap();
    eventually(
        "day2.csv to be reported",
        Duration::from_secs(30),
        || async { client.log_text().contains("day2.csv").then_some(()) },
    )
    .await;
    // Later files are taken, so scans went on after the report.
    for n in 0..3 {
        std::fs::write(dir.join(format!("later{n}.csv")), csv(1, &format!("l{n}"))).unwrap();
        let want = 3 + n as i64;
        eventually(
            "the later file to arrive",
            Duration::from_secs(30),
            || async { (db.scalar("SELECT count(*) FROM sightings").await == want).then_some(()) },
        )
        .await;
    }
    std::fs::write(dir.join("day2.csv"), csv(1, "fixed")).unwrap();
    eventually(
        "the fixed day2.csv to arrive",
        Duration::from_secs(30),
        || async { (db.scalar("SELECT count(*) FROM sightings").await == 6).then_some(()) },
    )
    .await;
    let (status, output) = watch.terminate().await;
    assert!(status.success(), "{output}");
    let log = client.log_text();
    assert_eq!(
        log.matches("not taken: ").count(),
        2,
        "broken.csv once, the bad day2.csv once:\n{log}"
    );
    assert_eq!(
        output.matches("day2.csv").count(),
        2,
        "reported, then taken:\n{output}"
    );
    assert!(server.terminate().success());
}
