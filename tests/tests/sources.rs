//! Remote sources against a real vsftpd (and a plain folder): the real `ctdata-server`
//! pulls with `download` (or its schedule under `serve`, or the HTTP endpoint), and
//! the database and the remote folder are checked row by row and file by file.

use std::time::Duration;

use ctdata_tests::vsftpd::Vsftpd;
use ctdata_tests::{both_backends, eventually, fixtures, pg, Batch, ServerEnv, TestDb};
use serde_json::Value;

/// An NDJSON batch of `rows` sightings from `device`, with a fresh batch id.
fn batch(device: &str, rows: usize) -> Vec<u8> {
    Batch::new(device, rows).ndjson()
}

/// One `[[sources]]` table for vsftpd, its password in a file beside the config.
fn ftp_source(env: &ServerEnv, ftp: &Vsftpd, name: &str, folder: &str, after: &str) -> String {
    source_with_password(
        env,
        ftp,
        name,
        &ftp.url(folder),
        &ftp.password.clone(),
        after,
    )
}

fn source_with_password(
    env: &ServerEnv,
    ftp: &Vsftpd,
    name: &str,
    url: &str,
    password: &str,
    after: &str,
) -> String {
    let file = env.dir.path().join(format!("{name}.pass"));
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let mut text = format!(
        "[[sources]]\nname = \"{name}\"\nurl = \"{url}\"\nuser = \"{}\"\npassword_file = \"{}\"\n\
         after_download = \"{after}\"\ntimeout_secs = 20\n",
        ftp.user,
        file.display()
    );
    if let Some(cert) = &ftp.cert {
        text.push_str(&format!("tls_ca_file = \"{}\"\n", cert.display()));
    }
    text
}

/// `ctdata.toml` in the environment's folder, which every command reads.
fn configure(env: &ServerEnv, sources: &[String]) {
    std::fs::write(env.dir.path().join("ctdata.toml"), sources.concat()).unwrap();
}

/// `download --json [ARGS]`: the report and whether the command succeeded.
fn download(env: &ServerEnv, args: &[&str]) -> (bool, Value) {
    let mut all = vec!["download", "--json"];
    all.extend_from_slice(args);
    let out = env.command(&all).output().expect("run download");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), report)
}

fn counts(report: &Value, source: usize) -> [u64; 6] {
    let s = &report["sources"][source];
    [
        "found",
        "fetched",
        "ingested",
        "duplicates",
        "rejected",
        "unchanged",
    ]
    .map(|k| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_mode_ingests_then_removes_the_remote_files() {
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    ftp.put("ranger-01/a.ndjson", &batch("ranger-01", 10));
    ftp.put("ranger-02/b.ndjson", &batch("ranger-02", 20));
    ftp.put("c.ndjson", &batch("ranger-03", 30));
    // Transfers still in progress, by their names: never taken.
    ftp.put("ranger-01/d.ndjson.part", b"{\"half");
    ftp.put("ranger-02/e.tmp", b"{\"half");
    configure(&env, &[ftp_source(&env, &ftp, "site", "CTData", "delete")]);

    let (ok, report) = download(&env, &[]);
    assert!(ok, "{report:#}");
    assert_eq!(counts(&report, 0), [3, 3, 3, 0, 0, 0], "{report:#}");
    assert_eq!(ftp.files(), ["ranger-01/d.ndjson.part", "ranger-02/e.tmp"]);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 60);
    let by_device = db
        .texts("SELECT d.name, b.channel FROM batches b JOIN devices d ON d.id = b.device_id ORDER BY 1")
        .await;
    let expected: Vec<Vec<Option<String>>> = ["ranger-01", "ranger-02", "ranger-03"]
        .iter()
        .map(|d| vec![Some(d.to_string()), Some("pull".to_string())])
        .collect();
    assert_eq!(by_device, expected);
    assert_eq!(
        ctdata_tests::count_files(&env.drop_dir().join("archive")),
        3
    );
    // The pull is on record for the dashboard.
    let pulls = db
        .texts("SELECT source, trigger, result, CAST(ingested AS TEXT) FROM source_pulls")
        .await;
    assert_eq!(
        pulls,
        [[
            Some("site".into()),
            Some("cli".into()),
            Some("ok".into()),
            Some("3".into())
        ]]
    );

    // Nothing left to do: a second Download finds nothing new.
    let (ok, report) = download(&env, &[]);
    assert!(ok);
    assert_eq!(counts(&report, 0), [0, 0, 0, 0, 0, 0]);
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_mode_moves_into_the_processed_folder() {
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    ftp.put("ranger-01/a.ndjson", &batch("ranger-01", 5));
    ftp.put("b.ndjson", &batch("ranger-09", 5));
    configure(
        &env,
        &[ftp_source(&env, &ftp, "site", "CTData", "move:processed")],
    );

    let (ok, report) = download(&env, &[]);
    assert!(ok, "{report:#}");
    assert_eq!(counts(&report, 0), [2, 2, 2, 0, 0, 0]);
    assert_eq!(
        ftp.files(),
        ["processed/b.ndjson", "processed/ranger-01/a.ndjson"]
    );
    // The processed folder is not taken for new deliveries.
    let (_, report) = download(&env, &[]);
    assert_eq!(counts(&report, 0), [0, 0, 0, 0, 0, 0]);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_mode_fetches_each_file_once_until_it_changes() {
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    ftp.put("ranger-01/a.ndjson", &batch("ranger-01", 5));
    ftp.put("ranger-01/b.ndjson", &batch("ranger-01", 6));
    configure(&env, &[ftp_source(&env, &ftp, "site", "CTData", "keep")]);

    let (ok, report) = download(&env, &[]);
    assert!(ok, "{report:#}");
    assert_eq!(counts(&report, 0), [2, 2, 2, 0, 0, 0]);
    assert_eq!(ftp.files(), ["ranger-01/a.ndjson", "ranger-01/b.ndjson"]);
    for _ in 0..2 {
        let (ok, report) = download(&env, &[]);
        assert!(ok);
        assert_eq!(counts(&report, 0), [2, 0, 0, 0, 0, 2], "{report:#}");
    }
    // The device replaces one file with a new batch: only that one is fetched.
    ftp.put("ranger-01/b.ndjson", &batch("ranger-01", 7));
    let (_, report) = download(&env, &[]);
    assert_eq!(counts(&report, 0), [2, 1, 1, 0, 0, 1], "{report:#}");
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 3);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 18);
    assert_eq!(ftp.files(), ["ranger-01/a.ndjson", "ranger-01/b.ndjson"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delivered_before_is_a_duplicate() {
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    let bytes = batch("ranger-04", 12);
    // Delivered first by another channel (the CLI), then found on the FTP site too.
    let local = env.dir.path().join("first.ndjson");
    std::fs::write(&local, &bytes).unwrap();
    let out = env
        .command(&["ingest", local.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ftp.put("ranger-04/again.ndjson", &bytes);
    configure(&env, &[ftp_source(&env, &ftp, "site", "CTData", "delete")]);

    let (ok, report) = download(&env, &[]);
    assert!(ok, "{report:#}");
    assert_eq!(counts(&report, 0), [1, 1, 0, 1, 0, 0]);
    assert_eq!(report["sources"][0]["files"][0]["status"], "duplicate");
    assert!(
        ftp.files().is_empty(),
        "a duplicate is handled like any other file"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 1);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 12);
    assert_eq!(
        db.scalar("SELECT count(*) FROM deliveries WHERE channel = 'pull'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_rejected_with_its_reason_then_handled_per_mode() {
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    let bad = std::fs::read(fixtures().join("bad/02-json-count-mismatch.json")).unwrap();
    ftp.put("ranger-05/bad.json", &bad);
    ftp.put("ranger-05/good.ndjson", &batch("ranger-05", 3));
    ftp.put_in("Kept", "ranger-05/bad.json", &bad);
    configure(
        &env,
        &[
            ftp_source(&env, &ftp, "deleting", "CTData", "delete"),
            ftp_source(&env, &ftp, "keeping", "Kept", "keep"),
        ],
    );

    let (ok, report) = download(&env, &[]);
    assert!(ok, "a rejected file is not a connection error: {report:#}");
    assert_eq!(counts(&report, 0), [2, 2, 1, 0, 1, 0], "{report:#}");
    assert_eq!(counts(&report, 1), [1, 1, 0, 0, 1, 0], "{report:#}");
    let files = report["sources"][0]["files"].as_array().unwrap();
    let rejected = files.iter().find(|f| f["status"] == "rejected").unwrap();
    assert_eq!(rejected["path"], "ranger-05/bad.json");
    let reason = rejected["reason"].as_str().unwrap();
    assert!(
        reason.contains("declares count 3 but contains 2"),
        "{reason}"
    );
    // Filed away like a drop-directory rejection: the file with its reason beside it.
    let reasons = ctdata_tests::rejected_reasons(&env.drop_dir());
    assert_eq!(reasons.len(), 2);
    assert!(reasons.iter().all(|(_, r)| r.contains("declares count 3")));
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM rejections WHERE channel = 'pull' AND device = 'ranger-05'"
        )
        .await,
        2
    );
    // delete: gone from the site; keep: stays, and is not fetched (nor refused) again.
    assert!(ftp.files().is_empty(), "{:?}", ftp.files());
    assert!(ftp.home().join("Kept/ranger-05/bad.json").exists());
    let (ok, report) = download(&env, &[]);
    assert!(ok);
    assert_eq!(counts(&report, 1), [1, 0, 0, 0, 0, 1], "{report:#}");
    assert_eq!(db.scalar("SELECT count(*) FROM rejections").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_pull_then_restart_loses_and_duplicates_nothing() {
    const FILES: usize = 40;
    const ROWS: usize = 1_500;
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    for i in 0..FILES {
        let device = format!("ranger-{:02}", i % 4);
        ftp.put(&format!("{device}/b{i:03}.ndjson"), &batch(&device, ROWS));
    }
    let mut source = ftp_source(&env, &ftp, "site", "CTData", "delete");
    source.push_str("poll_every = \"1s\"\n");
    configure(&env, &[source]);

    // Crash the server while its schedule is pulling, three times, each a little later.
    for round in 1..=3 {
        let server = env.serve().await;
        let target = (round * FILES / 5) as i64;
        eventually("some batches pulled", Duration::from_secs(120), || async {
            (db.scalar("SELECT count(*) FROM batches").await >= target).then_some(())
        })
        .await;
        server.crash();
        let stored = db.scalar("SELECT count(*) FROM batches").await;
        assert!(
            stored < FILES as i64,
            "the pull finished before the crash: {stored}"
        );
    }

    let (ok, report) = download(&env, &[]);
    assert!(ok, "{report:#}");
    assert!(ftp.files().is_empty(), "{:?}", ftp.files());
    assert_eq!(
        db.scalar("SELECT count(*) FROM batches").await,
        FILES as i64
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM sightings").await,
        (FILES * ROWS) as i64
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM (SELECT batch_id FROM batches GROUP BY batch_id HAVING count(*) > 1) d")
            .await,
        0
    );
    assert_eq!(db.scalar("SELECT count(*) FROM rejections").await, 0);
    // Nothing half-done is left behind in the drop directory.
    assert_eq!(
        ctdata_tests::count_files(&env.drop_dir().join(".pulling/site")),
        0
    );
    // A file archived before a crash and fetched again afterwards is archived twice.
    assert!(ctdata_tests::count_files(&env.drop_dir().join("archive")) >= FILES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_file_that_cannot_be_deleted_is_reported_and_not_fetched_again() {
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    ftp.put("ranger-10/a.ndjson", &batch("ranger-10", 4));
    // The device's folder belongs to root: the FTP user may read it but not delete in it.
    let folder = ftp.ctdata().join("ranger-10");
    std::os::unix::fs::chown(&folder, Some(0), Some(0)).unwrap();
    configure(&env, &[ftp_source(&env, &ftp, "site", "CTData", "delete")]);

    for fetched in [1, 0] {
        let (ok, report) = download(&env, &[]);
        assert!(!ok);
        assert_eq!(
            counts(&report, 0),
            [1, fetched, fetched, 0, 0, 0],
            "{report:#}"
        );
        let error = report["sources"][0]["errors"][0].as_str().unwrap();
        assert!(
            error.contains("delete /CTData/ranger-10/a.ndjson")
                && error.contains("permission denied"),
            "{error}"
        );
    }
    assert_eq!(ftp.files(), ["ranger-10/a.ndjson"]);
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 1);
    // Once the permission is fixed, the delete goes through without another download.
    ftp.put("ranger-10/.fix", b"");
    let (ok, report) = download(&env, &[]);
    assert!(ok, "{report:#}");
    assert_eq!(counts(&report, 0), [1, 0, 0, 0, 0, 0]);
    assert_eq!(ftp.files(), ["ranger-10/.fix"]);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_pulls_on_schedule_and_stops_with_sigterm() {
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    ftp.put("ranger-11/a.ndjson", &batch("ranger-11", 3));
    let mut source = ftp_source(&env, &ftp, "site", "CTData", "delete");
    source.push_str("poll_every = \"1s\"\n");
    configure(&env, &[source]);
    let server = env.serve().await;
    let wait = Duration::from_secs(60);
    eventually("the first scheduled pull", wait, || async {
        (db.scalar("SELECT count(*) FROM batches").await == 1).then_some(())
    })
    .await;
    // A file that arrives later is taken by a later tick.
    ftp.put("ranger-11/b.ndjson", &batch("ranger-11", 4));
    eventually("a later scheduled pull", wait, || async {
        (db.scalar("SELECT count(*) FROM batches").await == 2).then_some(())
    })
    .await;
    let log = server.log_text();
    assert!(server.terminate().success(), "{log}");
    assert!(ftp.files().is_empty());
    assert!(
        db.scalar("SELECT count(*) FROM source_pulls WHERE trigger = 'schedule' AND result = 'ok'")
            .await
            >= 2
    );
}

both_backends! {
    a_folder_source_works_like_an_ftp_site,
}

async fn a_folder_source_works_like_an_ftp_site(db: TestDb) {
    let env = ServerEnv::new(&db);
    let share = tempfile::tempdir().unwrap();
    let folder = share.path().join("CTData");
    std::fs::create_dir_all(folder.join("ranger-06")).unwrap();
    std::fs::write(folder.join("ranger-06/a.ndjson"), batch("ranger-06", 4)).unwrap();
    std::fs::write(folder.join("ranger-06/b.ndjson.part"), b"{").unwrap();
    let source = format!(
        "[[sources]]\nname = \"share\"\nurl = \"{}\"\nafter_download = \"move:done\"\n",
        folder.display()
    );
    configure(&env, &[source]);
    let (ok, report) = download(&env, &["--source", "share"]);
    assert!(ok, "{report:#}");
    assert_eq!(counts(&report, 0), [1, 1, 1, 0, 0, 0]);
    assert!(folder.join("done/ranger-06/a.ndjson").exists());
    assert!(folder.join("ranger-06/b.ndjson.part").exists());
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 4);
    let (_, report) = download(&env, &[]);
    assert_eq!(counts(&report, 0), [0, 0, 0, 0, 0, 0]);

    // A share that is not mounted is named as such.
    let missing = share.path().join("not-mounted");
    let source = format!(
        "[[sources]]\nname = \"gone\"\nurl = \"{}\"\n",
        missing.display()
    );
    configure(&env, &[source]);
    let (ok, report) = download(&env, &[]);
    assert!(!ok);
    let error = report["sources"][0]["errors"][0].as_str().unwrap();
    assert!(
        error.contains("open the folder") && error.contains("the folder is missing"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftps_source_with_a_trusted_certificate_and_without() {
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start_tls()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    ftp.put("ranger-07/a.ndjson", &batch("ranger-07", 8));
    let trusted = ftp_source(&env, &ftp, "tls", "CTData", "delete");
    let untrusted = trusted
        .replace("name = \"tls\"", "name = \"untrusted\"")
        .lines()
        .filter(|l| !l.starts_with("tls_ca_file"))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    configure(&env, &[untrusted, trusted]);

    let (ok, report) = download(&env, &[]);
    assert!(!ok);
    let errors = report["sources"][0]["errors"].to_string();
    assert!(errors.contains("TLS handshake failed"), "{errors}");
    assert_eq!(counts(&report, 1), [1, 1, 1, 0, 0, 0], "{report:#}");
    assert!(ftp.files().is_empty());
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 8);
}

/// A port nothing listens on: bound, then closed.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_reports_name_the_cause_and_the_command_fails() {
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    ftp.put("ranger-08/a.ndjson", &batch("ranger-08", 2));
    let refused = format!("ftp://127.0.0.1:{}/CTData", closed_port());
    let password = ftp.password.clone();
    configure(
        &env,
        &[
            source_with_password(&env, &ftp, "refused", &refused, &password, "keep"),
            source_with_password(
                &env,
                &ftp,
                "wrongpw",
                &ftp.url("CTData"),
                "not-the-password",
                "keep",
            ),
            ftp_source(&env, &ftp, "nofolder", "NoSuchFolder", "keep"),
            ftp_source(&env, &ftp, "fine", "CTData", "keep"),
            // A reserved name that never resolves (RFC 6761).
            "[[sources]]\nname = \"nohost\"\nurl = \"ftp://nosuch.invalid/CTData\"\ntimeout_secs = 10\n"
                .to_string(),
        ],
    );

    let (ok, report) = download(&env, &[]);
    assert!(!ok, "any error fails the command");
    let error = |i: usize| {
        report["sources"][i]["errors"][0]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        error(0).contains("connect to 127.0.0.1") && error(0).contains("connection refused"),
        "{}",
        error(0)
    );
    assert!(
        error(1).contains("log in as") && error(1).contains("login incorrect"),
        "{}",
        error(1)
    );
    assert!(
        error(2).contains("open the folder /NoSuchFolder") && error(2).contains("missing"),
        "{}",
        error(2)
    );
    assert!(report["sources"][3]["errors"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(counts(&report, 3), [1, 1, 1, 0, 0, 0]);
    // Without a resolver at hand the lookup may time out instead: either way the step
    // and the cause are named.
    assert!(
        error(4).contains("connect to nosuch.invalid:21")
            && (error(4).contains("host not found") || error(4).contains("timed out")),
        "{}",
        error(4)
    );

    // Readable without --json, and the exit code says it failed.
    let out = env
        .command(&["download", "--source", "wrongpw"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("wrongpw (ftp://127.0.0.1:") && text.contains("error: log in as"),
        "{text}"
    );
    assert!(!text.contains("not-the-password"));
    // An unknown source is refused by name.
    let out = env
        .command(&["download", "--source", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no source is named \"nope\""));
    let recorded = db
        .texts("SELECT source, result FROM source_pulls WHERE source = 'wrongpw'")
        .await;
    assert_eq!(recorded.len(), 2);
    assert!(recorded.iter().all(|r| r[1].as_deref() == Some("error")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_download_needs_an_admin_and_returns_the_report() {
    let (Some(db), Some(ftp)) = (pg().await, Vsftpd::start()) else {
        return;
    };
    let env = ServerEnv::new(&db);
    ftp.put("ranger-09/a.ndjson", &batch("ranger-09", 3));
    configure(
        &env,
        &[
            ftp_source(&env, &ftp, "site", "CTData", "delete"),
            source_with_password(
                &env,
                &ftp,
                "wrongpw",
                &ftp.url("CTData"),
                "nope-nope",
                "keep",
            ),
        ],
    );
    let token = env.admin_token();
    let server = env.serve().await;
    let api = server.api();
    let post = |query: &str, token: &str| {
        let (api, path, token) = (
            api.clone(),
            format!("/api/v1/admin/download{query}"),
            token.to_string(),
        );
        async move {
            let reply = api.post(&path, &token).await;
            (reply.status, reply.json())
        }
    };

    let (code, body) = post("", "").await;
    assert_eq!((code, body["error"].as_str()), (401, Some("unauthorized")));
    let device = env.device_token("ranger-09");
    let (code, _) = post("", &device).await;
    assert_eq!(code, 401, "a device token is not an administrator's");

    let (code, body) = post("?source=site", &token).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(counts(&body, 0), [1, 1, 1, 0, 0, 0], "{body:#}");
    assert_eq!(body["sources"].as_array().unwrap().len(), 1);

    let (code, body) = post("", &token).await;
    assert_eq!(code, 200);
    assert_eq!(body["ok"], false);
    let errors = body["sources"][1]["errors"].to_string();
    assert!(errors.contains("login incorrect"), "{errors}");

    let (code, body) = post("?source=nope", &token).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 3);
    assert!(server.terminate().success());
}
