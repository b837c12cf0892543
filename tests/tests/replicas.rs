//! Several servers on one database. PostgreSQL: three replicas share one database and
//! one `CTData` folder while files are dropped and uploaded over HTTP to all three, and
//! one replica after another is killed with SIGKILL and restarted; every batch ends up
//! stored exactly once, nothing stays claimed, and an export paged by cursor during all
//! of it sees every sighting exactly once. SQLite: a second `serve` refuses to start.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctdata_tests::api::Api;
use ctdata_tests::{count_files, eventually, pg, Batch, Server, ServerEnv, TestDb};
use rand::{Rng, SeedableRng};
use reqwest::Method;

const REPLICAS: usize = 3;
/// Kills, one every `KILL_EVERY`: the test's chaos lasts about a minute.
const KILLS: usize = 20;
const KILL_EVERY: Duration = Duration::from_millis(2500);
/// Files dropped into the shared folder, batches uploaded over HTTP (every
/// `UPLOAD_EVERY`-th batch), sightings in each.
const DROPPED: usize = 5_000;
const UPLOADED: usize = 500;
const UPLOAD_EVERY: usize = (DROPPED + UPLOADED) / UPLOADED;
const ROWS: usize = 5;
const DEVICES: usize = 6;

fn replica_env(db: &TestDb, shared: &Path, name: &str) -> ServerEnv {
    let mut env = ServerEnv::new(db);
    env.set("CTDATA__INGEST__DROP_DIR", &shared.display().to_string());
    env.set("CTDATA__REPLICA__NAME", name);
    // Short leases, so a killed replica's claims are taken over within the test.
    env.set("CTDATA__REPLICA__LEASE_SECS", "2");
    env.set("CTDATA__REPLICA__HEARTBEAT_SECS", "0.5");
    env.set("CTDATA__INGEST__SETTLE_SECS", "0.2");
    env
}

fn device(i: usize) -> String {
    format!("ranger-{:02}", i % DEVICES)
}

/// Copies a batch into the shared folder under a temporary name, then renames it.
fn drop_file(src: &Path, shared: &Path, device: &str) {
    let dir = shared.join(device);
    std::fs::create_dir_all(&dir).unwrap();
    let name = src.file_name().unwrap().to_string_lossy().into_owned();
    let part = dir.join(format!("{name}.part"));
    std::fs::copy(src, &part).unwrap();
    std::fs::rename(&part, dir.join(&name)).unwrap();
}

/// Files in `dir` and below that were dropped into the folder (not HTTP bodies).
fn archived_drops(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type().is_ok_and(|t| t.is_dir()) {
            true => archived_drops(&e.path()),
            false => usize::from(e.file_name().to_string_lossy().ends_with(".ndjson")),
        })
        .sum()
}

/// The replicas named by the claims in `processing` (`<stamp>@<replica>-<name>`).
fn claim_holders(processing: &Path) -> HashSet<String> {
    let mut holders = HashSet::new();
    for dev in std::fs::read_dir(processing)
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(dev.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some((_, rest)) = name.split_once('@') {
                if let Some((replica, _)) = rest.split_once('-') {
                    holders.insert(replica.to_string());
                }
            }
        }
    }
    holders
}

/// The bases of the replicas running now.
type Bases = Arc<std::sync::Mutex<Vec<Option<String>>>>;

fn some_base(bases: &Bases, pick: usize) -> Option<String> {
    let live: Vec<String> = bases.lock().unwrap().iter().flatten().cloned().collect();
    (!live.is_empty()).then(|| live[pick % live.len()].clone())
}

/// Uploads `path` to any running replica until one answers 201 or 200 (a killed
/// replica's connection fails; the batch id makes a repeat a duplicate).
async fn upload(bases: &Bases, token: &str, path: &Path, seed: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempt = seed;
    loop {
        assert!(
            Instant::now() < deadline,
            "{} never uploaded",
            path.display()
        );
        attempt += 1;
        let Some(base) = some_base(bases, attempt) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let request = Api::new(&base)
            .request(Method::POST, "/api/v1/batches")
            .bearer_auth(token)
            .body(std::fs::read(path).unwrap());
        // A killed replica drops the connection: try another.
        if let Some((status, body)) = answer(request).await {
            match status {
                200 | 201 => return,
                s if s >= 500 => {}
                s => panic!("upload of {} answered {s}: {body}", path.display()),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `request`; `None` when the connection fails or stalls (a killed replica).
async fn answer(request: reqwest::RequestBuilder) -> Option<(u16, String)> {
    let response = tokio::time::timeout(Duration::from_secs(20), request.send())
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .ok()?
        .ok()?;
    Some((status, body))
}

/// Pages through the export by cursor (`since`) from any running replica; returns
/// every sighting id seen, in order, and the next cursor.
async fn export_page(base: &str, admin: &str, since: i64) -> Option<(Vec<String>, i64)> {
    let path = format!("/api/v1/sightings?format=ndjson&since={since}");
    let request = Api::new(base)
        .request(Method::GET, &path)
        .bearer_auth(admin);
    let response = tokio::time::timeout(Duration::from_secs(20), request.send())
        .await
        .ok()?
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let next: i64 = response
        .headers()
        .get("CTData-Next-Cursor")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    // A replica killed mid-answer cuts the body: the page is read again.
    let body = tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .ok()?
        .ok()?;
    let ids = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("an NDJSON row");
            v["id"].as_str().expect("a sighting id").to_string()
        })
        .collect();
    Some((ids, next))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_killed_in_turn_store_every_batch_once() {
    let Some(db) = pg().await else { return };
    let root = tempfile::tempdir().unwrap();
    let shared = root.path().join("CTData");
    let source = root.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    let envs: Vec<ServerEnv> = (0..REPLICAS)
        .map(|i| replica_env(&db, &shared, &format!("r{i}")))
        .collect();
    let tokens: HashMap<String, String> = (0..DEVICES)
        .map(|i| (device(i), envs[0].device_token(&device(i))))
        .collect();
    let admin = envs[0].admin_token();

    let mut servers: Vec<Option<Server>> = Vec::new();
    for env in &envs {
        servers.push(Some(env.serve().await));
    }
    let bases: Bases = Arc::new(std::sync::Mutex::new(
        servers
            .iter()
            .map(|s| s.as_ref().map(Server::http_base))
            .collect(),
    ));
    // Readiness names the replica.
    for (i, s) in servers.iter().enumerate() {
        let reply = s.as_ref().unwrap().api().get("/readyz", "").await;
        assert_eq!(reply.body.trim(), format!("ready: replica r{i}"));
    }

    // Files dropped and batches uploaded all through the chaos.
    let batches: Vec<(PathBuf, String, bool)> = (0..DROPPED + UPLOADED)
        .map(|i| {
            let dev = device(i);
            let path = source.join(format!("b{i:04}.ndjson"));
            Batch::new(&dev, ROWS).write(&path);
            (path, dev, i % UPLOAD_EVERY == UPLOAD_EVERY - 1)
        })
        .collect();
    let uploaded = batches.iter().filter(|b| b.2).count();
    let dropped = batches.len() - uploaded;
    let chaos = Duration::from_millis(KILL_EVERY.as_millis() as u64 * KILLS as u64);
    let done_sending = Arc::new(AtomicBool::new(false));
    let sender = {
        let (bases, tokens, shared, batches) = (
            bases.clone(),
            tokens.clone(),
            shared.clone(),
            batches.clone(),
        );
        let done = done_sending.clone();
        tokio::spawn(async move {
            let pause = chaos.mul_f64(0.8) / batches.len() as u32;
            for (k, (path, dev, over_http)) in batches.iter().enumerate() {
                match over_http {
                    true => upload(&bases, &tokens[dev], path, k).await,
                    false => drop_file(path, &shared, dev),
                }
                tokio::time::sleep(pause).await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    // An export paged by cursor while all this happens: it must never skip a sighting
    // committed late behind a higher cursor, nor repeat one.
    let exported = {
        let (bases, admin, done) = (bases.clone(), admin.clone(), done_sending.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut since = 0;
            let mut k = 0;
            while !done.load(Ordering::SeqCst) {
                k += 1;
                if let Some(base) = some_base(&bases, k) {
                    if let Some((ids, next)) = export_page(&base, &admin, since).await {
                        seen.extend(ids);
                        since = next;
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            (seen, since)
        })
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED_0018);
    for kill in 0..KILLS {
        tokio::time::sleep(KILL_EVERY).await;
        let victim = rng.gen_range(0..REPLICAS);
        bases.lock().unwrap()[victim] = None;
        servers[victim].take().unwrap().crash();
        let claimed = count_files(&shared.join(".processing"));
        eprintln!("kill {kill}: replica r{victim} killed, {claimed} file(s) claimed now");
        let restarted = envs[victim].serve().await;
        bases.lock().unwrap()[victim] = Some(restarted.http_base());
        servers[victim] = Some(restarted);
    }
    tokio::time::timeout(Duration::from_secs(300), sender)
        .await
        .expect("every batch sent in time")
        .unwrap();
    let (mut seen, mut since) = exported.await.unwrap();

    let total = (dropped + uploaded) as i64;
    let logs = || {
        servers
            .iter()
            .flatten()
            .map(|s| s.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let stored = eventually(
        "every batch stored and every dropped file filed away",
        Duration::from_secs(180),
        || {
            let (db, shared) = (&db, &shared);
            async move {
                let batches = db.scalar("SELECT count(*) FROM batches").await;
                let archived = archived_drops(&shared.join("archive"));
                let claimed = count_files(&shared.join(".processing"));
                (batches == total && archived >= dropped && claimed == 0).then_some(batches)
            }
        },
    )
    .await;
    assert_eq!(stored, total, "{}", logs());
    assert_eq!(
        db.scalar("SELECT count(*) FROM rejections").await,
        0,
        "{}",
        logs()
    );
    let rows = total * ROWS as i64;
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, rows);
    assert_eq!(
        db.scalar("SELECT count(DISTINCT id) FROM sightings").await,
        rows
    );
    assert_eq!(
        db.scalar("SELECT CAST(coalesce(sum(inserted), 0) AS BIGINT) FROM batches")
            .await,
        rows
    );
    // Each dropped file was filed away once, under one claim: no file archived twice
    // (HTTP bodies are archived too, as `<stamp>-upload`; a retried upload twice).
    assert_eq!(archived_drops(&shared.join("archive")), dropped);
    assert_eq!(
        count_files(&shared.join(".processing")),
        0,
        "nothing left claimed"
    );
    assert_eq!(count_files(&shared.join("rejected")), 0);

    // The export, picked up where it stopped, ends with every sighting exactly once.
    let base = servers[0].as_ref().unwrap().http_base();
    loop {
        let (ids, next) = export_page(&base, &admin, since)
            .await
            .expect("an export page");
        if ids.is_empty() {
            break;
        }
        seen.extend(ids);
        since = next;
    }
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "the export repeated a sighting");
    assert_eq!(seen.len() as i64, rows, "the export skipped sightings");

    // The dashboard's replica list and the metrics name the replicas.
    let metrics = Api::new(&base).get("/metrics", "").await;
    assert!(
        metrics
            .body
            .contains("ctdata_replica_info{replica=\"r0\"} 1"),
        "{}",
        metrics.body
    );
    // The overview lists every replica with its heartbeat (a session made on one
    // replica is good on all: sessions live in the database).
    let (code, session) = ctdata_tests::web::sign_in(
        &servers[1].as_ref().unwrap().http_base(),
        "alice",
        "a long enough password",
    );
    assert_eq!(code, 303, "sign-in");
    let cookie = format!("ctdata_session={}", session.expect("a session cookie"));
    let overview = Api::new(&base).page("/", &cookie).await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    let table = overview
        .body
        .split("id=\"replicas\"")
        .nth(1)
        .expect("the replicas table");
    for r in ["r0", "r1", "r2"] {
        assert!(table.contains(&format!("<td>{r}</td>")), "{table}");
    }
    assert!(table.contains("held until"), "{table}");
    let listed = db
        .texts("SELECT name FROM replicas ORDER BY name")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(listed, vec!["r0", "r1", "r2"]);
    for s in servers.into_iter().flatten() {
        assert!(s.terminate().success());
    }
    // A clean stop gives the lease up.
    assert_eq!(
        db.scalar("SELECT count(*) FROM replicas WHERE lease_until > now()")
            .await,
        0
    );
}

/// Two replicas on two network mounts of one share (sshfs, each mount with its own
/// caches and no change notifications for the other's writes, as NFS and SMB clients
/// have), files written through a third mount as a laptop on the share writes them, and
/// the replicas killed with SIGKILL and restarted in turn: every file is stored once,
/// filed away once, and nothing stays claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_network_mounts_of_one_share_store_every_file_once() {
    const FILES: usize = 400;
    const KILLS: usize = 6;
    let Some(db) = pg().await else { return };
    let Some(share) = ctdata_tests::netshare::NetShare::new(3) else {
        return;
    };
    let envs: Vec<ServerEnv> = (0..2)
        .map(|i| replica_env(&db, share.mount(i), &format!("n{i}")))
        .collect();
    for i in 0..DEVICES {
        envs[0].device_token(&device(i));
    }
    let mut servers: Vec<Option<Server>> = Vec::new();
    for env in &envs {
        servers.push(Some(env.serve().await));
    }
    let source = tempfile::tempdir().unwrap();
    let batches: Vec<(PathBuf, String)> = (0..FILES)
        .map(|i| {
            let path = source.path().join(format!("n{i:04}.ndjson"));
            Batch::new(&device(i), ROWS).write(&path);
            (path, device(i))
        })
        .collect();
    let laptop = share.mount(2).to_path_buf();
    let writer = tokio::task::spawn_blocking(move || {
        for (path, dev) in &batches {
            drop_file(path, &laptop, dev);
            std::thread::sleep(Duration::from_millis(40));
        }
    });
    // Each kill lands while the victim holds claims: the file server's side of
    // `.processing` is watched for a claim naming it. After every other kill the
    // victim stays down past its lease, so the other replica takes its claims over;
    // otherwise it comes back at once and resumes them itself.
    let export = share.export();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while kills < KILLS && Instant::now() < deadline {
        let holders = claim_holders(&export.join(".processing"));
        let Some(victim) = (0..servers.len()).find(|i| holders.contains(&format!("n{i}"))) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        servers[victim].take().unwrap().crash();
        let claimed = count_files(&export.join(".processing"));
        let away = kills % 2 == 1;
        eprintln!(
            "kill {kills}: replica n{victim} killed holding claims ({claimed} file(s) claimed now){}",
            if away { ", back after its lease" } else { "" }
        );
        if away {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        servers[victim] = Some(envs[victim].serve().await);
        kills += 1;
    }
    assert_eq!(kills, KILLS, "kills that found the victim holding claims");
    writer.await.unwrap();

    // Checked on the file server's side of the share, past every client's cache.
    let logs = || {
        servers
            .iter()
            .flatten()
            .map(Server::log_text)
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let stored = eventually(
        "every file stored and filed away",
        Duration::from_secs(180),
        || {
            let (db, export) = (&db, &export);
            async move {
                let batches = db.scalar("SELECT count(*) FROM batches").await;
                let archived = archived_drops(&export.join("archive"));
                let claimed = count_files(&export.join(".processing"));
                (batches == FILES as i64 && archived >= FILES && claimed == 0).then_some(batches)
            }
        },
    )
    .await;
    assert_eq!(stored, FILES as i64, "{}", logs());
    let rejections = db
        .texts("SELECT claim_name, kind, reason FROM rejections ORDER BY id")
        .await;
    assert!(rejections.is_empty(), "{rejections:?}\n{}", logs());
    let rows = (FILES * ROWS) as i64;
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, rows);
    assert_eq!(
        db.scalar("SELECT count(DISTINCT id) FROM sightings").await,
        rows
    );
    assert_eq!(
        archived_drops(&export.join("archive")),
        FILES,
        "each file filed once"
    );
    assert_eq!(count_files(&export.join("rejected")), 0);
    let took_over = logs().matches("taking over the files replica").count();
    eprintln!("claims of a killed replica taken over {took_over} time(s)");
    for s in servers.into_iter().flatten() {
        assert!(s.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_sqlite_database_refuses_to_start() {
    let db = TestDb::new(ctdata_tests::Backend::Sqlite)
        .await
        .expect("sqlite");
    let first_env = ServerEnv::new(&db);
    let first = first_env.serve().await;
    let second_env = ServerEnv::new(&db);
    let out = second_env
        .command(&["serve"])
        .output()
        .expect("run a second serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another ctdata-server serve is already using the SQLite database")
            && err.contains(&format!("pid {}", first.pid())),
        "{err}"
    );
    // The first one is unharmed, and once it stops another may start.
    assert_eq!(first.api().get("/readyz", "").await.status, 200);
    assert!(first.terminate().success());
    let again = second_env.serve().await;
    assert!(again.terminate().success());
}
