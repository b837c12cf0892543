//! Send on sync at a station PC, as the operator meets it: a handheld's bad export is
//! reported once (not at every scan of `dock --watch`), and a later `dock` does not
//! fail on it again.

use std::time::Duration;

use ctdata_tests::client::{Client, Running};
use ctdata_tests::{both_backends, eventually, Batch, ServerEnv, TestDb};

both_backends! {
    a_bad_file_on_the_handheld_is_reported_once,
    docked_batches_keep_the_handhelds_name_and_are_stored_once,
    reference_files_in_the_live_share_are_never_ingested,
    a_handhelds_csv_docked_at_two_stations_is_stored_once,
    stations_relay_over_ftp_and_the_share,
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

/// `ctdata-server ARGS` in `env`, which must succeed; returns standard output.
fn server_cmd(env: &ServerEnv, args: &[&str]) -> String {
    let out = env.command(args).output().expect("run ctdata-server");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn docked_batches_keep_the_handhelds_name_and_are_stored_once(db: TestDb) {
    let env = ServerEnv::new(&db);
    let station = env.device_token("station-pc");
    server_cmd(
        &env,
        &[
            "device",
            "relay",
            "station-pc",
            "--for",
            "ranger-09,ranger-10",
        ],
    );
    let other = server_cmd(&env, &["device", "add", "station-b", "--relay-for", "*"]);
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    let a = Client::new();
    a.init_https(&base, "station-pc", &station);
    let b = Client::new();
    b.init_https(&base, "station-b", &other);

    // What two handhelds left on the docking folder: their own batch files.
    let synced = tempfile::tempdir().unwrap();
    let dir = synced.path();
    let nine = Batch::new("ranger-09", 3);
    nine.write(&dir.join("ranger-09-day1.ndjson"));
    let eleven = Batch::new("ranger-11", 2);
    eleven.write(&dir.join("ranger-11-day1.ndjson"));
    let shown = dir.display().to_string();

    let out = a.run(&["dock", &shown]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A refused batch is moved aside with its reason (nothing is left pending), as
    // `send` does, and the summary says so.
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("1 rejected"),
        "ranger-11 is refused:\n{stdout}"
    );
    assert!(stdout.contains("as batch relay-ranger-09-"), "{stdout}");
    // ranger-09's batch is stored as ranger-09's, with its own batch id, relayed by the
    // station; ranger-11's is refused with the reason and kept aside.
    let rows = db
        .texts(&format!(
            "SELECT d.name, b.relayed_by FROM batches b JOIN devices d ON d.id = b.device_id \
             WHERE CAST(b.batch_id AS TEXT) = '{}'",
            nine.id()
        ))
        .await;
    assert_eq!(
        rows,
        vec![vec![
            Some("ranger-09".to_string()),
            Some("station-pc".to_string())
        ]]
    );
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 3);
    let rejected: Vec<String> = std::fs::read_dir(a.path("rejected"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let reason = rejected
        .iter()
        .find(|n| n.ends_with(".reason.txt"))
        .unwrap();
    let reason = std::fs::read_to_string(a.path("rejected").join(reason)).unwrap();
    assert!(
        reason.contains("station-pc may relay only for ranger-09,ranger-10")
            && reason.contains("ranger-11"),
        "{reason}"
    );
    let receipt = a
        .batches_in("sent")
        .into_iter()
        .find(|n| n.starts_with("relay-ranger-09"))
        .unwrap();
    let receipt =
        std::fs::read_to_string(a.path("sent").join(format!("{receipt}.receipt.json"))).unwrap();
    assert!(
        receipt.contains("\"relayed_by\": \"station-pc\"")
            && receipt.contains("\"device\": \"ranger-09\""),
        "{receipt}"
    );

    // The administrator's batch list says who relayed it (read with curl).
    let listed = std::process::Command::new("curl")
        .args(["-sS", "--fail", "-H"])
        .arg(format!("Authorization: Bearer {admin}"))
        .arg(format!("{base}/api/v1/batches?device=ranger-09"))
        .output()
        .expect("run curl");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["device"], "ranger-09", "{listed}");
    assert_eq!(listed[0]["relayed_by"], "station-pc", "{listed}");

    // The same handheld docked at a second PC: stored once, still relayed by the first.
    let out = b.run(&["dock", &shown]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("1 already there"), "{stdout}");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 5);
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM batches WHERE CAST(batch_id AS TEXT) = '{}'",
            nine.id()
        ))
        .await,
        1
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM batches WHERE relayed_by = 'station-b'")
            .await,
        1,
        "ranger-11's batch came through station-b, which may relay for any device"
    );

    assert!(server.terminate().success());
}

/// DataTracker's "move to local" against the live server folder: a species list in the
/// device's `reference/` folder stays out of the database, and the client fetches it.
async fn reference_files_in_the_live_share_are_never_ingested(db: TestDb) {
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let share = env.drop_dir();
    let reference = share.join("ranger-07").join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    // Valid sightings as CSV: in the device folder it would be a batch.
    std::fs::write(reference.join("species.csv"), csv(3, "reference")).unwrap();
    std::fs::create_dir_all(share.join("reference")).unwrap();
    std::fs::write(share.join("reference").join("keyset.csv"), csv(2, "top")).unwrap();
    let client = Client::new();
    client.init_share(&share, "ranger-07", &[]);
    client.record(1, "Loxodonta africana");
    client.ok(&["send"]);
    eventually(
        "the batch to be stored",
        Duration::from_secs(30),
        || async { (db.scalar("SELECT count(*) FROM sightings").await == 1).then_some(()) },
    )
    .await;
    let out = client.ok(&["compare"]);
    assert!(out.contains("  reference/species.csv  "), "{out}");
    client.ok(&["fetch", "reference/species.csv"]);
    assert_eq!(
        std::fs::read_to_string(client.path("inbox/species.csv")).unwrap(),
        csv(3, "reference")
    );
    assert!(!reference.join("species.csv").exists());
    // A second delivery shows the loop ran again after the reference files were there.
    client.record(1, "Syncerus caffer");
    client.ok(&["send"]);
    eventually("the second batch", Duration::from_secs(30), || async {
        (db.scalar("SELECT count(*) FROM sightings").await == 2).then_some(())
    })
    .await;
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 2);
    assert!(share.join("reference").join("keyset.csv").is_file());
    assert!(server.terminate().success());
}

/// `(device, relayed_by, channel)` of every batch, in a stable order.
async fn relays(db: &TestDb) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = db
        .texts(
            "SELECT d.name, b.relayed_by, b.channel FROM batches b \
             JOIN devices d ON d.id = b.device_id",
        )
        .await
        .into_iter()
        .map(|r| {
            let v = |i: usize| r[i].clone().unwrap_or_else(|| "-".into());
            (v(0), v(1), v(2))
        })
        .collect();
    rows.sort();
    rows
}

/// The reason of the one batch `client` moved to its `rejected/`.
fn client_rejection(client: &Client) -> String {
    let reasons: Vec<_> = std::fs::read_dir(client.path("rejected"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".reason.txt"))
        .collect();
    assert_eq!(reasons.len(), 1, "one batch refused");
    std::fs::read_to_string(reasons[0].path()).unwrap()
}

/// A handheld's CSV names no device: docked under its folder (`DIR/ranger-09/`) or with
/// `--device`, it is relayed as the handheld's, and its batch id comes from its content,
/// so the same file docked at two station PCs is stored once.
async fn a_handhelds_csv_docked_at_two_stations_is_stored_once(db: TestDb) {
    let env = ServerEnv::new(&db);
    let station = env.device_token("station-pc");
    server_cmd(
        &env,
        &["device", "relay", "station-pc", "--for", "ranger-09"],
    );
    let second = server_cmd(&env, &["device", "add", "station-b", "--relay-for", "*"]);
    let lacking = env.device_token("station-c");
    let server = env.serve().await;
    let base = server.http_base();
    let (a, b, c) = (Client::new(), Client::new(), Client::new());
    a.init_https(&base, "station-pc", &station);
    b.init_https(&base, "station-b", &second);
    c.init_https(&base, "station-c", &lacking);

    let synced = tempfile::tempdir().unwrap();
    let handheld = synced.path().join("ranger-09");
    std::fs::create_dir_all(&handheld).unwrap();
    std::fs::write(handheld.join("day1.csv"), csv(3, "nine")).unwrap();
    let shown = synced.path().display().to_string();

    let stdout = a.ok(&["dock", &shown, "--by-folder"]);
    assert!(stdout.contains("as batch relay-ranger-09-"), "{stdout}");
    assert!(stdout.contains("sent 1 batch (3 sightings"), "{stdout}");
    let once = vec![(
        "ranger-09".to_string(),
        "station-pc".to_string(),
        "http".to_string(),
    )];
    assert_eq!(relays(&db).await, once);
    let receipt = std::fs::read_dir(a.path("sent"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".csv"))
        .expect("the relayed CSV in sent/");
    let receipt =
        std::fs::read_to_string(a.path("sent").join(format!("{receipt}.receipt.json"))).unwrap();
    assert!(
        receipt.contains("\"relayed_by\": \"station-pc\""),
        "{receipt}"
    );

    // The same file at a second station: already there, nothing added.
    let stdout = b.ok(&["dock", &shown, "--by-folder"]);
    assert!(stdout.contains("1 already there"), "{stdout}");
    assert_eq!(relays(&db).await, once);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 3);

    // A station that may not relay: 403, the batch set aside with the reason, nothing
    // stored. Here the handheld is named with --device (a flat dock folder).
    let flat = tempfile::tempdir().unwrap();
    std::fs::write(flat.path().join("day2.csv"), csv(2, "nine-2")).unwrap();
    let flat_shown = flat.path().display().to_string();
    let out = c.run(&["dock", &flat_shown, "--device", "ranger-09"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 rejected"), "{stdout}");
    let reason = client_rejection(&c);
    assert!(
        reason.starts_with("403")
            && reason.contains("station-c may not relay for other devices")
            && reason.contains("ranger-09")
            && reason.contains("ctdata-server device relay station-c --for ranger-09"),
        "{reason}"
    );
    assert_eq!(relays(&db).await, once);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 3);

    // A station's own CSV (no handheld named) is still its own.
    let own = tempfile::tempdir().unwrap();
    std::fs::write(own.path().join("mine.csv"), csv(1, "own")).unwrap();
    a.ok(&["dock", &own.path().display().to_string()]);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 4);
    assert!(relays(&db)
        .await
        .contains(&("station-pc".into(), "-".into(), "http".into())));
    assert!(server.terminate().success());
}

/// Relayed over the server's FTP server and over the share: the station puts the
/// handheld's file into `relay/ranger-09/` of its own folder; stored as ranger-09's
/// with the station recorded, and refused (550 over FTP, a rejection with its reason
/// on the share) when the station may not relay for it.
async fn stations_relay_over_ftp_and_the_share(db: TestDb) {
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let station = env.device_token("station-pc");
    server_cmd(
        &env,
        &["device", "relay", "station-pc", "--for", "ranger-09"],
    );
    let lacking = env.device_token("station-c");
    server_cmd(
        &env,
        &["device", "add", "station-s", "--relay-for", "ranger-09"],
    );
    let server = env.serve().await;
    let url = format!("ftp://127.0.0.1:{}/", server.ftp_port());
    let ftp = |device: &str, token: &str| {
        let client = Client::new();
        client.ok(&[
            "init",
            "--protocol",
            "ftp",
            "--url",
            &url,
            "--device",
            device,
            "--user",
            device,
            "--token",
            token,
        ]);
        client
    };
    let (a, c) = (ftp("station-pc", &station), ftp("station-c", &lacking));
    let share = env.drop_dir();
    let (s, t) = (Client::new(), Client::new());
    s.init_share(&share, "station-s", &[]);
    t.init_share(&share, "station-t", &[]);

    let synced = tempfile::tempdir().unwrap();
    let handheld = synced.path().join("ranger-09");
    std::fs::create_dir_all(&handheld).unwrap();
    std::fs::write(handheld.join("day1.csv"), csv(3, "nine")).unwrap();
    let shown = synced.path().display().to_string();

    // Over FTP.
    let stdout = a.ok(&["dock", &shown, "--by-folder"]);
    assert!(stdout.contains("sent 1 batch (3 sightings"), "{stdout}");
    let by_ftp = (
        "ranger-09".to_string(),
        "station-pc".to_string(),
        "ftp".to_string(),
    );
    eventually(
        "the FTP relay to be stored",
        Duration::from_secs(30),
        || async { (relays(&db).await == vec![by_ftp.clone()]).then_some(()) },
    )
    .await;

    // Over the share: the same file is stored once; another is stored, relayed by
    // station-s, and its receipt is in station-s's receipts folder.
    s.ok(&["dock", &shown, "--by-folder"]);
    std::fs::write(handheld.join("day2.csv"), csv(2, "nine-2")).unwrap();
    let stdout = s.ok(&["dock", &shown, "--by-folder"]);
    assert!(stdout.contains("sent 1 batch (2 sightings"), "{stdout}");
    let by_share = (
        "ranger-09".to_string(),
        "station-s".to_string(),
        "share".to_string(),
    );
    // The relay is recorded just after the batch commits: wait for both.
    let both = vec![by_ftp.clone(), by_share.clone()];
    eventually(
        "the share relay to be stored",
        Duration::from_secs(30),
        || async {
            let stored = db.scalar("SELECT count(*) FROM sightings").await == 5;
            (stored && relays(&db).await == both).then_some(())
        },
    )
    .await;
    let receipts = share.join("receipts").join("station-s");
    eventually("station-s's receipts", Duration::from_secs(30), || async {
        (ctdata_tests::count_files(&receipts) == 2).then_some(())
    })
    .await;

    // Without the right: 550 over FTP, the batch set aside with the reason.
    let out = c.run(&["dock", &shown, "--by-folder"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 rejected"), "{stdout}");
    let reasons: Vec<String> = std::fs::read_dir(c.path("rejected"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".reason.txt"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(reasons.len(), 2);
    for reason in reasons {
        assert!(
            reason.contains("550")
                && reason.contains("ctdata-server device relay station-c --for ranger-09"),
            "{reason}"
        );
    }
    assert!(
        server
            .log_text()
            .contains("station-c may not relay for other devices"),
        "the server's log says why"
    );
    // On the share: rejected, with the reason beside the file and in the receipt.
    std::fs::write(handheld.join("day3.csv"), csv(1, "nine-3")).unwrap();
    t.ok(&[
        "dock",
        &handheld.display().to_string(),
        "--device",
        "ranger-09",
    ]);
    let reason = eventually("the share refusal", Duration::from_secs(30), || async {
        ctdata_tests::rejected_reasons(&share)
            .into_iter()
            .map(|(_, r)| r)
            .find(|r| r.contains("station-t"))
    })
    .await;
    assert!(
        reason.contains("station-t may not relay for other devices")
            && reason.contains("ranger-09"),
        "{reason}"
    );
    assert!(ctdata_tests::count_files(&share.join("receipts").join("station-t")) >= 1);
    assert_eq!(relays(&db).await, vec![by_ftp, by_share]);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 5);
    assert!(server.terminate().success());
}
