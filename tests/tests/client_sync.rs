//! The field client's unattended and bulk paths, real binary against the real server on
//! PostgreSQL: autosend through an outage, a server error (503) retried, dock (send on
//! sync), import, pull, and `kill -9` of a send at random moments.

use std::time::Duration;

use ctdata_tests::client::{Client, Running};
use ctdata_tests::{eventually, pg, ServerEnv, TestDb};
use rand::Rng;

async fn wait_for_sightings(db: &TestDb, n: i64) {
    eventually(
        &format!("{n} sightings in the database"),
        Duration::from_secs(60),
        || async { (db.scalar("SELECT count(*) FROM sightings").await == n).then_some(()) },
    )
    .await;
}

/// A CSV export as a handheld would leave it; `tag` makes the content unique.
fn csv(rows: usize, tag: &str) -> String {
    let mut s = String::from("observed_at,latitude,longitude,species,notes\n");
    for i in 0..rows {
        s += &format!("2024-05-03T06:{i:02}:00+02:00,-24.4,31.8,Loxodonta africana,{tag}\n");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autosend_delivers_after_an_outage_and_stops_on_sigterm() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    let server = env.serve().await;
    let (client, _) = Client::sending_to(&env, &server, "ranger-07");
    let base = server.http_base();
    assert!(server.terminate().success());
    client.record(2, "Loxodonta africana");

    let autosend = Running::start(
        &client,
        &[
            "autosend",
            "--every",
            "1s",
            "--retry-min",
            "100ms",
            "--retry-max",
            "400ms",
        ],
    );
    eventually("two failed attempts", Duration::from_secs(30), || async {
        (client
            .log_text()
            .matches("autosend: attempt failed")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    let status = client.ok(&["status"]);
    assert!(status.contains("autosend: running"), "{status}");
    assert!(status.contains("failed sends in a row"), "{status}");
    assert!(client.log_text().contains("connection refused"));

    let port = base.rsplit(':').next().unwrap().to_string();
    env.extra_env
        .push(("CTDATA__HTTP__BIND".into(), format!("127.0.0.1:{port}")));
    let server = env.serve().await;
    wait_for_sightings(&db, 2).await;
    eventually("an empty outbox", Duration::from_secs(30), || async {
        client.batches_in("outbox").is_empty().then_some(())
    })
    .await;
    client.record(1, "Syncerus caffer");
    wait_for_sightings(&db, 3).await;

    let (status, output) = autosend.terminate().await;
    assert!(status.success(), "{output}");
    assert!(output.contains("autosend stopped"), "{output}");
    assert!(client.log_text().contains("autosend stopped"));
    assert!(client.ok(&["status"]).contains("autosend: not running"));
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 2);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dock_takes_each_file_once_and_watches_for_new_ones() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let (client, _) = Client::sending_to(&env, &server, "dock-pc");
    let synced = tempfile::tempdir().unwrap();
    let dir = synced.path();
    std::fs::create_dir(dir.join("day2")).unwrap();
    std::fs::write(dir.join("day1.csv"), csv(3, "a")).unwrap();
    std::fs::write(dir.join("day2/export.csv"), csv(2, "b")).unwrap();
    std::fs::write(dir.join("readme.txt"), "not a batch").unwrap();
    let shown = dir.display().to_string();

    let out = client.ok(&["dock", &shown]);
    assert_eq!(out.matches("dock: took").count(), 2, "{out}");
    assert!(out.contains("sent 2 batches (5 sightings"), "{out}");
    wait_for_sightings(&db, 5).await;

    // The same folder again, and a copy under another name: nothing new.
    std::fs::copy(dir.join("day1.csv"), dir.join("day1-copy.csv")).unwrap();
    let out = client.ok(&["dock", &shown]);
    assert!(!out.contains("dock: took"), "{out}");
    assert!(out.contains("sent 0 batches"), "{out}");
    assert!(dir.join("day1.csv").exists(), "sources are left alone");
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 2);

    let watch = Running::start(
        &client,
        &["dock", &shown, "--watch", "--move", "--interval", "200ms"],
    );
    std::fs::write(dir.join(".day3.csv.part"), csv(4, "c")).unwrap();
    std::fs::rename(dir.join(".day3.csv.part"), dir.join("day3.csv")).unwrap();
    wait_for_sightings(&db, 9).await;
    eventually(
        "the docked files to be moved",
        Duration::from_secs(30),
        || async {
            (!dir.join("day3.csv").exists() && !dir.join("day1.csv").exists()).then_some(())
        },
    )
    .await;
    let kept = std::fs::read_dir(client.path("docked")).unwrap().count();
    assert_eq!(kept, 4, "every taken source is kept in docked/");
    let (status, output) = watch.terminate().await;
    assert!(status.success(), "{output}");
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 3);
    assert!(dir.join("readme.txt").exists());
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_bad_files_by_line_and_takes_good_ones_once() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let (client, _) = Client::sending_to(&env, &server, "ranger-07");
    let files = tempfile::tempdir().unwrap();
    let good = files.path().join("good.csv");
    std::fs::write(&good, csv(2, "good")).unwrap();
    let bad = files.path().join("bad.csv");
    std::fs::write(
        &bad,
        "observed_at,latitude,longitude\n2024-05-03T06:00:00+02:00,-124.4,31.8\n",
    )
    .unwrap();
    let out = client.run(&["import", good.to_str().unwrap(), bad.to_str().unwrap()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("good.csv: batch 000001-"), "{stdout}");
    assert!(stderr.contains("bad.csv"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(stderr.contains("latitude"), "{stderr}");
    let again = client.ok(&["import", good.to_str().unwrap()]);
    assert!(again.contains("already imported as 000001-"), "{again}");
    client.ok(&["send"]);
    wait_for_sightings(&db, 2).await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_downloads_only_what_is_new() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-07");
    let station_token = env.device_token("station-pc");
    let admin = env.admin_token();
    std::fs::write(
        env.dir.path().join("ctdata.toml"),
        "[http]\nread_devices = [\"station-pc\"]\n",
    )
    .unwrap();
    let server = env.serve().await;
    let base = server.http_base();
    let client = Client::new();
    client.ok(&[
        "init",
        "--protocol",
        "https",
        "--url",
        &base,
        "--device",
        "ranger-07",
        "--token",
        &token,
        "--download-url",
        &base,
        "--download-token",
        &admin,
    ]);
    let inbox = |c: &Client| {
        let mut names: Vec<String> = std::fs::read_dir(c.path("inbox"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let rows = |name: &str| {
        let text = std::fs::read_to_string(client.path("inbox").join(name)).unwrap();
        text.lines().filter(|l| l.contains("observed_at")).count()
    };
    client.record(2, "Loxodonta africana");
    client.ok(&["send"]);
    let out = client.ok(&["pull", "--format", "ndjson"]);
    assert!(out.contains("pulled"), "{out}");
    let first = inbox(&client);
    assert_eq!(first.len(), 1);
    assert_eq!(rows(&first[0]), 2);

    client.record(1, "Syncerus caffer");
    client.ok(&["send"]);
    client.ok(&["pull", "--format", "ndjson"]);
    let both = inbox(&client);
    assert_eq!(both.len(), 2, "{both:?}");
    let second = both.iter().find(|n| !first.contains(n)).unwrap();
    assert_eq!(rows(second), 1, "only the new row");
    let out = client.ok(&["pull", "--format", "ndjson"]);
    assert!(out.contains("nothing new"), "{out}");

    // A device may read only when the administrator lists it in http.read_devices.
    let not_listed = Client::new();
    not_listed.init_https(&base, "ranger-07", &token);
    let out = not_listed.run(&["pull"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("device ranger-07 may not download sightings"),
        "{stderr}"
    );
    let station = Client::new();
    station.init_https(&base, "station-pc", &station_token);
    let out = station.ok(&["pull", "--format", "csv"]);
    assert!(out.contains("pulled"), "{out}");
    let pulled = inbox(&station);
    let text = std::fs::read_to_string(station.path("inbox").join(&pulled[0])).unwrap();
    assert_eq!(
        text.lines().count(),
        1 + 3,
        "a header and every row:\n{text}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 3);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_killed_at_random_moments_loses_and_duplicates_nothing() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let (client, _) = Client::sending_to(&env, &server, "ranger-07");
    // Each round seals one more batch, so every kill lands among batches in flight.
    const ROUNDS: usize = 15;
    const BATCHES: usize = ROUNDS + 5;
    for i in 0..5 {
        client.record(2, &format!("species {i}"));
        client.ok(&["seal"]);
    }
    let mut rng = rand::thread_rng();
    for i in 5..BATCHES {
        client.record(2, &format!("species {i}"));
        client.ok(&["seal"]);
        let mut child = client
            .command(&["send"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..60)));
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = client.ok(&["send"]);
    assert!(out.contains("nothing pending"), "{out}");
    assert!(client.batches_in("outbox").is_empty());
    assert_eq!(client.batches_in("sent").len(), BATCHES);
    assert_eq!(
        db.scalar("SELECT count(*) FROM batches").await,
        BATCHES as i64
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM sightings").await,
        2 * BATCHES as i64
    );
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_is_retried_and_the_batch_kept_until_it_goes() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let (client, _) = Client::sending_to(&env, &server, "ranger-07");
    client.record(2, "Loxodonta africana");

    // The server's database goes away: the server answers 503.
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let admin = ctdata_tests::pg_admin_url();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let out = client.run(&["send", "--retries", "2", "--retry-delay", "50ms"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("1 batch pending"), "{stdout}");
    assert!(stdout.contains("503"), "{stdout}");
    let log = client.log_text();
    assert!(
        log.contains("try 1 failed") && log.contains("try 2 failed"),
        "{log}"
    );
    assert_eq!(client.batches_in("outbox").len(), 1);

    sqlx::raw_sql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut conn)
        .await
        .unwrap();
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 1 batch (2 sightings"), "{out}");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 2);
    assert!(server.terminate().success());
}
