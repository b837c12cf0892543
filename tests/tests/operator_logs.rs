//! Log lines an operator can act on, read from the real server's log: which claimed
//! files a restart resumes, who exported how much, and a burst of files summed up
//! instead of one line per file.

use std::time::{Duration, Instant};

use ctdata_tests::{both_backends, eventually, write_batch, Server, ServerEnv, TestDb};

both_backends! {
    a_restart_names_the_claimed_files_it_resumes,
    exports_log_who_and_how_many_rows,
    a_burst_of_files_logs_progress_not_every_file,
    an_export_cut_short_by_the_client_says_so,
}

/// The log lines containing `what`.
fn lines<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

/// Waits up to `limit` for the first log line that contains `what`.
async fn first_line(server: &Server, what: &str, limit: Duration) -> String {
    eventually(&format!("a log line with {what:?}"), limit, || {
        let log = server.log_text();
        async move { lines(&log, what).first().map(|l| l.to_string()) }
    })
    .await
}

async fn a_restart_names_the_claimed_files_it_resumes(db: TestDb) {
    let env = ServerEnv::new(&db);
    // What a crash leaves: files claimed into .processing/ but never decided.
    let claimed = env.drop_dir().join(".processing").join("ranger-01");
    std::fs::create_dir_all(&claimed).unwrap();
    for n in 0..23 {
        let name = format!("20261201T060000000000000{n:06}-left-{n:02}.ndjson");
        write_batch(&claimed.join(name), "ranger-01", 2);
    }
    let server = env.serve().await;
    let line = first_line(
        &server,
        "claimed before the last stop",
        Duration::from_secs(60),
    )
    .await;
    assert!(line.contains("resuming 23 file(s)"), "{line}");
    assert!(
        line.contains("ranger-01/20261201T060000000000000000000-left-00.ndjson"),
        "{line}"
    );
    assert!(line.contains("left-19.ndjson"), "{line}");
    assert!(!line.contains("left-20.ndjson"), "{line}");
    assert!(line.contains("and 3 more"), "{line}");
    eventually(
        "the resumed files to be stored",
        Duration::from_secs(120),
        || async { (db.scalar("SELECT count(*) FROM sightings").await == 46).then_some(()) },
    )
    .await;
    // Resumed once: a later pass finds nothing left behind and says nothing.
    assert_eq!(
        lines(&server.log_text(), "claimed before the last stop").len(),
        1
    );
}

async fn exports_log_who_and_how_many_rows(db: TestDb) {
    let env = ServerEnv::new(&db);
    let admin = env.admin_token();
    let server = env.serve().await;
    let dir = env.drop_dir().join("ranger-02");
    std::fs::create_dir_all(&dir).unwrap();
    write_batch(&dir.join("b.ndjson"), "ranger-02", 3);
    eventually(
        "the batch to be stored",
        Duration::from_secs(60),
        || async { (db.scalar("SELECT count(*) FROM sightings").await == 3).then_some(()) },
    )
    .await;

    let export = server
        .api()
        .get("/api/v1/sightings?format=ndjson", &admin)
        .await;
    assert_eq!(export.status, 200, "{}", export.body);
    let line = first_line(&server, "export sent", Duration::from_secs(30)).await;
    assert!(line.contains("admin alice"), "{line}");
    assert!(line.contains("rows=3"), "{line}");
    assert!(line.contains("bytes="), "{line}");
    assert_eq!(lines(&server.log_text(), "export sent").len(), 1);
    drop(server);

    let file = env.dir.path().join("out.csv");
    let out = env
        .command(&["export", "--format", "csv", "--output"])
        .arg(&file)
        .output()
        .expect("run export");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = lines(&stderr, "export written")
        .first()
        .map(|l| l.to_string())
        .unwrap_or_else(|| panic!("no export line in {stderr}"));
    assert!(line.contains("command line"), "{line}");
    assert!(line.contains("rows=3"), "{line}");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(line.contains(&format!("bytes={size}")), "{line}");
}

async fn a_burst_of_files_logs_progress_not_every_file(db: TestDb) {
    const FILES: usize = 200;
    let env = ServerEnv::new(&db);
    let dir = env.drop_dir().join("ranger-03");
    std::fs::create_dir_all(&dir).unwrap();
    for n in 0..FILES {
        write_batch(&dir.join(format!("b{n:03}.ndjson")), "ranger-03", 1);
    }
    std::fs::write(dir.join("broken.ndjson"), "this is not a batch\n").unwrap();
    let started = Instant::now();
    let server = env.serve().await;
    eventually(
        "the burst to be stored",
        Duration::from_secs(300),
        || async {
            (db.scalar("SELECT count(*) FROM batches").await == FILES as i64).then_some(())
        },
    )
    .await;
    let log = eventually("the burst to be done", Duration::from_secs(60), || {
        let log = server.log_text();
        async move { log.contains("burst of files done").then_some(log) }
    })
    .await;
    let elapsed = started.elapsed().as_secs();
    let per_file = lines(&log, "batch ingested").len();
    let progress = lines(&log, "burst of files").len();
    eprintln!("{per_file} per-file lines, {progress} progress lines in {elapsed}s");
    // Files that settled apart may form a pass too small to count as a burst.
    assert!(per_file < 20, "{per_file} per-file lines for {FILES} files");
    // A start and an end line per burst, and one more for every 5 s it took.
    assert!(
        progress as u64 <= 6 + elapsed / 5,
        "{progress} progress lines in {elapsed}s"
    );
    let done = lines(&log, "burst of files done");
    assert!(done.iter().any(|l| l.contains("rejected=1")), "{done:?}");
    // A rejection still gets its own warning.
    let rejected = lines(&log, "batch rejected");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].contains("broken.ndjson"), "{}", rejected[0]);
}

async fn an_export_cut_short_by_the_client_says_so(db: TestDb) {
    use std::io::{Read, Write};
    // Far more than loopback socket buffers hold, so the server is still sending when
    // the client goes.
    const ROWS: usize = 60_000;
    let env = ServerEnv::new(&db);
    let admin = env.admin_token();
    let server = env.serve().await;
    let dir = env.drop_dir().join("ranger-04");
    std::fs::create_dir_all(&dir).unwrap();
    write_batch(&dir.join("big.ndjson"), "ranger-04", ROWS);
    eventually(
        "the batch to be stored",
        Duration::from_secs(120),
        || async {
            (db.scalar("SELECT count(*) FROM sightings").await == ROWS as i64).then_some(())
        },
    )
    .await;
    let base = server.http_base();
    let addr = base.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        socket,
        "GET /api/v1/sightings?format=ndjson HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 4096];
    let n = socket.read(&mut first).expect("the start of the export");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(socket);
    let line = first_line(&server, "export cut short", Duration::from_secs(30)).await;
    assert!(line.contains("admin alice"), "{line}");
    let rows: u64 = line
        .split("rows=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no row count in {line}"));
    assert!(rows < ROWS as u64, "{line}");
    assert!(lines(&server.log_text(), "export sent").is_empty());
}
