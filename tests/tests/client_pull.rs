//! A secondary keeping a copy of the consolidated data, as a station operator runs it
//! against the real server on both backends: `init --download-token` alone, a cursor
//! per format, `pull --into local.db` (read back with the sqlite3 tool), `--since`,
//! `--all`, `sync now`, and `autosend --pull-into`.

use std::path::Path;
use std::time::Duration;

use ctdata_tests::client::{Client, Running};
use ctdata_tests::{both_backends, eventually, ServerEnv, TestDb};

both_backends! {
    a_secondary_keeps_a_local_copy_current,
    pull_and_export_show_progress_on_a_terminal,
}

/// One value from the local copy, read with the sqlite3 command-line tool.
fn sqlite3(db: &Path, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn inbox(c: &Client) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(c.path("inbox"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

async fn a_secondary_keeps_a_local_copy_current(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-07");
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();

    // --download-token without --download-url: downloads go to the upload URL.
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
        "--download-token",
        &admin,
    ]);
    let config = std::fs::read_to_string(client.path("config.toml")).unwrap();
    assert!(config.contains("[download]"), "{config}");
    client.record(2, "Loxodonta africana");
    client.ok(&["send"]);

    // Each format has its own cursor: CSV first does not make GeoJSON miss rows.
    let out = client.ok(&["pull", "--format", "csv"]);
    assert!(out.contains("pulled"), "{out}");
    let out = client.ok(&["pull", "--format", "geojson"]);
    assert!(
        out.contains("pulled"),
        "a CSV pull must not eat GeoJSON's rows: {out}"
    );
    let geojson = inbox(&client)
        .into_iter()
        .find(|n| n.ends_with(".geojson"))
        .unwrap();
    let text = std::fs::read_to_string(client.path("inbox").join(&geojson)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["features"].as_array().unwrap().len(), 2);
    let out = client.ok(&["pull", "--format", "csv"]);
    assert!(out.contains("nothing new"), "{out}");
    // --all starts again from the beginning; --since from a given cursor.
    let out = client.ok(&["pull", "--format", "csv", "--all"]);
    assert!(out.contains("pulled"), "{out}");
    let first = db
        .scalar("SELECT min(cursor) FROM sightings")
        .await
        .to_string();
    let out = client.ok(&["pull", "--format", "ndjson", "--since", &first]);
    assert!(out.contains("pulled"), "{out}");
    let ndjson = inbox(&client)
        .into_iter()
        .find(|n| n.ends_with(".ndjson"))
        .unwrap();
    let text = std::fs::read_to_string(client.path("inbox").join(&ndjson)).unwrap();
    assert_eq!(
        text.lines().count(),
        1,
        "only the row after {first}: {text}"
    );

    // The local copy: created on the first pull, then only what is new.
    let local = client.home.path().join("copy").join("local.db");
    std::fs::create_dir_all(local.parent().unwrap()).unwrap();
    let local_arg = local.to_str().unwrap();
    let out = client.ok(&["pull", "--into", local_arg]);
    assert!(out.contains("pulled 2 sightings"), "{out}");
    assert_eq!(sqlite3(&local, "SELECT count(*) FROM sightings"), "2");
    assert_eq!(
        sqlite3(
            &local,
            "SELECT DISTINCT device || '|' || species FROM sightings"
        ),
        "ranger-07|Loxodonta africana"
    );
    let out = client.ok(&["pull", "--into", local_arg]);
    assert!(out.contains("nothing new"), "{out}");
    client.record(1, "Syncerus caffer");
    client.ok(&["send"]);
    let out = client.ok(&["pull", "--into", local_arg]);
    assert!(
        out.contains("pulled 1 sightings"),
        "only the new row: {out}"
    );
    assert_eq!(sqlite3(&local, "SELECT count(*) FROM sightings"), "3");
    // Idempotent: everything again adds nothing and changes nothing.
    let before = sqlite3(
        &local,
        "SELECT group_concat(id || cursor, ',') FROM sightings",
    );
    let out = client.ok(&["pull", "--into", local_arg, "--all"]);
    assert!(out.contains("pulled 3 sightings"), "{out}");
    assert_eq!(sqlite3(&local, "SELECT count(*) FROM sightings"), "3");
    assert_eq!(
        sqlite3(
            &local,
            "SELECT group_concat(id || cursor, ',') FROM sightings"
        ),
        before
    );
    let server_ids = db
        .texts("SELECT CAST(id AS TEXT) FROM sightings ORDER BY 1")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        sqlite3(
            &local,
            "SELECT group_concat(id, ',') FROM (SELECT id FROM sightings ORDER BY id)"
        ),
        server_ids
    );

    // sync now: send, then pull, in one go.
    client.record(1, "Panthera leo");
    let out = client.ok(&["sync", "now", "--into", local_arg]);
    assert!(out.contains("sent 1 batch"), "{out}");
    assert!(out.contains("pulled 1 sightings"), "{out}");
    assert_eq!(
        sqlite3(
            &local,
            "SELECT count(*) FROM sightings WHERE species = 'Panthera leo'"
        ),
        "1"
    );

    // autosend --pull-into: another device's data reaches the copy on the timer.
    let (other, _) = Client::sending_to(&env, &server, "ranger-10");
    other.record(2, "Acinonyx jubatus");
    other.ok(&["send"]);
    let autosend = Running::start(
        &client,
        &["autosend", "--every", "200ms", "--pull-into", local_arg],
    );
    eventually(
        "autosend to pull the cheetahs",
        Duration::from_secs(30),
        || async {
            (sqlite3(
                &local,
                "SELECT count(*) FROM sightings WHERE device = 'ranger-10'",
            ) == "2")
                .then_some(())
        },
    )
    .await;
    let (status, output) = autosend.terminate().await;
    assert!(status.success(), "{output}");
    assert!(output.contains("pulled 2 sightings"), "{output}");
    assert!(server.terminate().success());
}

/// Runs `program ARGS` under `script` (util-linux), which gives it a pseudo-terminal,
/// with the environment and folder of `like`; returns what the terminal showed.
fn on_terminal(like: &std::process::Command, program: &Path, args: &[&str]) -> String {
    let line = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null());
    for (k, v) in like.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    if let Some(dir) = like.get_current_dir() {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("run script (util-linux)");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{line}:\n{screen}");
    screen
}

/// `ctdata pull` (into a file and into a local database) and `ctdata-server export`
/// show their progress on a terminal, and print nothing of it when piped.
async fn pull_and_export_show_progress_on_a_terminal(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-07");
    let admin = env.admin_token();
    let server = env.serve().await;
    let client = Client::new();
    client.ok(&[
        "init",
        "--protocol",
        "https",
        "--url",
        &server.http_base(),
        "--device",
        "ranger-07",
        "--token",
        &token,
        "--download-token",
        &admin,
    ]);
    let mut csv = String::from("observed_at,latitude,longitude,species\n");
    for i in 0..500 {
        csv += &format!(
            "2024-05-03T06:{:02}:{:02}+02:00,-24.4,31.8,Loxodonta africana\n",
            i / 60,
            i % 60
        );
    }
    let file = client.path("day.csv");
    std::fs::write(&file, csv).unwrap();
    client.ok(&["import", &file.display().to_string()]);
    client.ok(&["send"]);

    let bin = ctdata_tests::client::client_bin();
    let home = client.home.path().display().to_string();
    let plain = std::process::Command::new("true");
    let screen = on_terminal(&plain, &bin, &["--home", &home, "pull", "--format", "csv"]);
    assert!(
        screen.contains("pulling") && screen.contains("received") && screen.contains("pulled"),
        "{screen}"
    );
    let local = client.path("local.db").display().to_string();
    let screen = on_terminal(&plain, &bin, &["--home", &home, "pull", "--into", &local]);
    assert!(screen.contains("500 sightings"), "{screen}");
    assert!(screen.contains("pulled 500 sightings into"), "{screen}");
    // Piped: the result line only.
    let out = client.run(&["pull", "--format", "ndjson"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("pulling"), "{stderr}");

    let export = env.command(&[]);
    let screen = on_terminal(
        &export,
        &ctdata_tests::server_bin(),
        &["export", "--format", "csv", "--output", "all.csv"],
    );
    assert!(
        screen.contains("exporting: ") && screen.contains("rows/s"),
        "{screen}"
    );
    assert!(screen.contains("exported 500 rows ("), "{screen}");
    let out = env
        .command(&["export", "--format", "csv", "--output", "again.csv"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("exporting:"));
    assert!(server.terminate().success());
}
