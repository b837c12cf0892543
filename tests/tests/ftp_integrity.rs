//! What reaches the database over FTP is only what a client finished sending: a
//! client killed mid-upload leaves nothing ingested and its complete re-send is stored
//! once; symlink races cannot read outside a device's folder; size limits and the
//! quota hold; files left under temporary names are swept.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctdata_tests::ftp::{ftplib, ok, stored};
use ctdata_tests::{both_backends, count_files, eventually, write_batch, ServerEnv, TestDb};
use serde_json::Value;

const CLIENT: &str = include_str!("../src/ftp_cut.py");

fn python(port: u16, user: &str, token: &str, args: &[String]) -> Value {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", CLIENT])
        .arg(args[0].as_str())
        .args([&port.to_string(), user, token])
        .args(&args[1..]);
    let out = cmd.output().expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "client failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A CSV with no ids (they are derived from the content) and `rows` rows.
fn write_csv(path: &Path, rows: usize) {
    let mut text = String::from("observed_at,latitude,longitude,observer,species,count\n");
    for n in 0..rows {
        text.push_str(&format!(
            "2026-11-03T06:{:02}:{:02}+02:00,{:.5},31.88210,T. Mokoena,Loxodonta africana,{}\n",
            n / 60 % 60,
            n % 60,
            -24.0 - n as f64 * 1e-4,
            n % 7 + 1
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// Byte offset just after the `n`th newline.
fn line_end(bytes: &[u8], n: usize) -> usize {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map(|(i, _)| i + 1)
        .expect("enough lines")
}

/// The hidden files the server keeps uploads under, with their sizes.
fn own_temps(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".ctdata-upload-")
        })
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .collect()
}

both_backends! {
    a_killed_upload_is_never_stored_and_its_resend_is_stored_once,
    an_upload_answered_226_survives_a_shutdown_that_cuts_its_session,
}

async fn a_killed_upload_is_never_stored_and_its_resend_is_stored_once(db: TestDb) {
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let port = server.ftp_port();
    let folder = env.drop_dir().join("ranger-07");
    let csv = env.dir.path().join("field.csv");
    write_csv(&csv, 2000);
    let nd = env.dir.path().join("field.ndjson");
    write_batch(&nd, "ranger-07", 1500);
    let (csv_bytes, nd_bytes) = (std::fs::read(&csv).unwrap(), std::fs::read(&nd).unwrap());
    // Inside the observer of row 700 ("T. Mok"), at line ends, inside NDJSON rows.
    let observer = |row: usize| {
        let start = line_end(&csv_bytes, row);
        start
            + csv_bytes[start..]
                .windows(3)
                .position(|w| w == b"T. ")
                .unwrap()
            + 6
    };
    let cuts = [
        (&csv, "field.csv", observer(700), "kill"),
        (&csv, "field.csv", line_end(&csv_bytes, 1200), "kill"),
        (&csv, "field.csv", observer(1500), "rst"),
        (&csv, "field.csv", line_end(&csv_bytes, 1800), "ctl_rst"),
        (&nd, "field.ndjson", line_end(&nd_bytes, 1000), "kill"),
        (&nd, "field.ndjson", line_end(&nd_bytes, 400) + 17, "kill"),
        (&nd, "field.ndjson", line_end(&nd_bytes, 1400), "ctl_rst"),
    ];
    let outcomes = || async {
        let done = db.scalar("SELECT COUNT(*) FROM batches").await
            + db.scalar("SELECT COUNT(*) FROM rejections").await;
        (done, own_temps(&folder))
    };
    for (local, remote, n, how) in cuts {
        let before = outcomes().await;
        let args = [
            "cut".to_string(),
            local.display().to_string(),
            remote.to_string(),
            n.to_string(),
            how.to_string(),
        ];
        let sent = python(port, "ranger-07", &token, &args);
        assert_eq!(sent["sent"], n, "{sent}");
        if how == "rst" {
            continue; // a reset data connection is an error on either side: no trace
        }
        // The server is done with the cut upload once it was stored or rejected, or
        // kept under a temporary name with every byte the client sent.
        eventually(
            &format!("the server to finish the {how} cut at {n} of {remote}"),
            Duration::from_secs(30),
            || async {
                let now = outcomes().await;
                let kept = now.1.iter().filter(|s| **s == n as u64).count()
                    > before.1.iter().filter(|s| **s == n as u64).count();
                (now.0 > before.0 || kept).then_some(())
            },
        )
        .await;
    }
    // The client tries again and this time finishes both files.
    let r = ftplib(
        port,
        false,
        serde_json::json!([
            ["login", "ranger-07", token],
            ["stor", csv.display().to_string(), "field.csv"],
            ["stor", nd.display().to_string(), "field.ndjson"],
        ]),
    );
    assert!(r.iter().all(ok), "{r:?}");
    eventually("both files stored", Duration::from_secs(60), || async {
        let names: Vec<String> = stored(&db).await.into_iter().map(|r| r.2).collect();
        let processing = count_files(&env.drop_dir().join(".processing"));
        (names.iter().any(|n| n == "field.csv")
            && names.iter().any(|n| n == "field.ndjson")
            && processing == 0)
            .then_some(())
    })
    .await;
    let sightings = db.scalar("SELECT COUNT(*) FROM sightings").await;
    let batches = db.scalar("SELECT COUNT(*) FROM batches").await;
    let pending = db
        .scalar("SELECT COUNT(*) FROM rejections WHERE status = 'pending'")
        .await;
    eprintln!("after 7 cut uploads and 2 complete ones: {sightings} sightings, {batches} batches, {pending} pending rejections");
    assert_eq!(sightings, 2000 + 1500, "exactly the rows of the two files");
    assert_eq!(batches, 2);
    assert_eq!(pending, 0);
    // Logged from the server's own tasks: read once all six lines are out.
    eventually(
        "six incomplete uploads logged",
        Duration::from_secs(10),
        || async {
            (server.log_text().matches("incomplete FTP upload").count() >= 6).then_some(())
        },
    )
    .await;
    let log = server.log_text();
    assert_eq!(log.matches("incomplete FTP upload").count(), 6, "{log}");
    // Left under their temporary names for the stale sweep, and not listed.
    assert_eq!(own_temps(&folder).len(), 6);
    let r = ftplib(
        port,
        false,
        serde_json::json!([["login", "ranger-07", token], ["list", "/"]]),
    );
    assert_eq!(r[1]["ok"], serde_json::json!([]), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_race_reads_nothing_outside_the_device_folder() {
    let db = TestDb::new(ctdata_tests::Backend::Sqlite).await.unwrap();
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let token = env.device_token("ranger-07");
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP-SECRET-BYTES").unwrap();
    let folder = env.drop_dir().join("ranger-07");
    let inside = folder.join("real");
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::write(inside.join("secret.txt"), "harmless").unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("link")).unwrap();
    let server = env.serve().await;

    // Someone with write access to the share keeps swapping `d` between a real
    // folder and a symlink to `outside`.
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, folder) = (stop.clone(), folder.clone());
        std::thread::spawn(move || {
            let d = folder.join("d");
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                for spare in ["real", "link"] {
                    let _ = std::fs::rename(folder.join(spare), &d);
                    let _ = std::fs::rename(&d, folder.join(spare));
                }
            }
        })
    };
    let args: Vec<String> = ["race", "20", "20000", "d/secret.txt", "/d/secret.txt"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let result = python(server.ftp_port(), "ranger-07", &token, &args);
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    let read: Vec<String> = serde_json::from_value(result["read"].clone()).unwrap();
    eprintln!("race: {} attempts, read {read:?}", result["attempts"]);
    assert!(result["attempts"].as_u64().unwrap() > 100, "{result}");
    assert!(
        !read.iter().any(|r| r.contains("TOP-SECRET")),
        "read outside the device's folder: {result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uploads_and_a_full_quota_get_552_and_leave_nothing() {
    let db = TestDb::new(ctdata_tests::Backend::Sqlite).await.unwrap();
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    env.extra_env.extend([
        (
            "CTDATA__FTP__MAX_FILE_BYTES".to_string(),
            "100000".to_string(),
        ),
        (
            "CTDATA__FTP__DEVICE_QUOTA_BYTES".to_string(),
            "300000".to_string(),
        ),
    ]);
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let (big, small) = (env.dir.path().join("big"), env.dir.path().join("small"));
    std::fs::write(&big, vec![b'x'; 150_000]).unwrap();
    std::fs::write(&small, vec![b'y'; 90_000]).unwrap();
    let (big, small) = (big.display().to_string(), small.display().to_string());
    let r = ftplib(
        server.ftp_port(),
        false,
        serde_json::json!([
            ["login", "ranger-07", token],
            ["stor", big, "big.ndjson"],
            ["stor", big, "big.part"],
            ["stor", small, "p1.part"],
            ["stor", small, "p2.part"],
            ["stor", small, "p3.part"],
            ["stor", small, "p4.part"],
            ["list", "/"],
        ]),
    );
    assert!(ok(&r[0]), "{r:?}");
    for i in [1, 2, 6] {
        assert!(!ok(&r[i]), "operation {i} was accepted: {r:?}");
    }
    for i in [3, 4, 5] {
        assert!(ok(&r[i]), "operation {i}: {r:?}");
    }
    let folder = env.drop_dir().join("ranger-07");
    let mut left: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["p1.part", "p2.part", "p3.part"]);
    assert!(stored(&db).await.is_empty());
    eventually("the refusal logged", Duration::from_secs(10), || async {
        server
            .log_text()
            .contains("ftp.device_quota_bytes")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_left_under_any_temporary_name_are_swept() {
    let db = TestDb::new(ctdata_tests::Backend::Sqlite).await.unwrap();
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    env.extra_env
        .push(("CTDATA__FTP__STALE_PART_SECS".to_string(), "2".to_string()));
    let folder = env.drop_dir().join("ranger-07");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    let names = ["a.part", "b.tmp", "c~", ".d", "sub/e.filepart", "big.tmp"];
    for name in names {
        std::fs::write(folder.join(name), "unfinished").unwrap();
    }
    // 1.2 GB left by an abandoned upload (sparse: no disk needed).
    std::fs::File::options()
        .write(true)
        .open(folder.join("big.tmp"))
        .unwrap()
        .set_len(1_200_000_000)
        .unwrap();
    let _server = env.serve().await;
    eventually(
        "every temporary name swept",
        Duration::from_secs(60),
        || async { names.iter().all(|n| !folder.join(n).exists()).then_some(()) },
    )
    .await;
    assert!(folder.join("sub").is_dir(), "folders stay");
}

/// A client that heard its 226 and stays connected is held until it says more; a
/// shutdown that cuts its session must still ingest the upload (at the next start).
async fn an_upload_answered_226_survives_a_shutdown_that_cuts_its_session(db: TestDb) {
    use std::io::BufRead;
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let nd = env.dir.path().join("held.ndjson");
    write_batch(&nd, "ranger-07", 300);
    let mut client = Command::new("python3")
        .args([
            "-c",
            CLIENT,
            "hold",
            &server.ftp_port().to_string(),
            "ranger-07",
        ])
        .arg(&token)
        .arg(&nd)
        .args(["held.ndjson", "120"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut line = String::new();
    std::io::BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("226"), "the upload was not answered: {line}");
    assert!(server.terminate().success());
    let _ = client.kill();
    let _ = client.wait();
    let _server = env.serve().await;
    eventually(
        "the acknowledged upload stored",
        Duration::from_secs(60),
        || async { (db.scalar("SELECT COUNT(*) FROM sightings").await == 300).then_some(()) },
    )
    .await;
}
