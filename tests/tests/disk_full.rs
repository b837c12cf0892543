//! A full disk under the database never turns an acknowledgement into a lie: the SQLite
//! file, or a PostgreSQL tablespace, lives on a small tmpfs that fills up while batches
//! arrive over HTTP and through the drop directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use ctdata_tests::api::Api;
use ctdata_tests::tmpfs::Tmpfs;
use ctdata_tests::{eventually, pg_admin_url, write_batch, ServerEnv};
use sqlx::Connection;
use uuid::Uuid;

const DEVICE: &str = "ranger-01";
/// Small enough that the space freed holds every batch sent again: SQLite keeps them all
/// in its write-ahead log, which it cannot checkpoint into a full filesystem.
const ROWS: usize = 200;
/// Free space left in the tablespace's filesystem before the first batch.
const PG_ROOM: u64 = 768 * 1024;

/// Writes zeros to `path` until the filesystem is full (or `limit` bytes).
fn fill(path: &Path, limit: usize) {
    let mut f = std::fs::File::create(path).expect("create filler");
    let block = vec![0u8; 16 * 1024];
    let mut written = 0;
    while written < limit {
        if f.write_all(&block).is_err() || f.sync_all().is_err() {
            break;
        }
        written += block.len();
    }
}

/// Status and body; a 503's body is followed by a line `Retry-After: SECONDS`.
async fn post(api: &Api, token: &str, file: &Path) -> (u16, String) {
    let reply = api.post_file(token, file).await;
    let retry = reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok());
    match retry {
        Some(retry) if reply.status == 503 => (
            reply.status,
            format!("{}\nRetry-After: {retry}", reply.body),
        ),
        _ => (reply.status, reply.body),
    }
}

async fn readyz(api: &Api) -> u16 {
    api.get("/readyz", "").await.status
}

/// (batches with this id, their sightings) in the database at `url`.
async fn stored(url: &str, batch_id: Uuid) -> (i64, i64) {
    // A UUID is safe to inline, and one literal suits a TEXT (SQLite) and a UUID column.
    let sql = format!(
        "SELECT count(DISTINCT b.id), count(s.id) FROM batches b LEFT JOIN sightings s ON s.batch = b.id \
         WHERE b.batch_id = '{batch_id}'"
    );
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query_as(&sql)
            .fetch_one(&mut c)
            .await
            .expect("count stored")
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query_as(&sql)
            .fetch_one(&mut c)
            .await
            .expect("count stored")
    }
}

struct Sent {
    id: Uuid,
    file: PathBuf,
    status: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_never_acknowledges_what_it_lost() {
    // 4 MB: SQLite keeps every write of this test in its WAL (it never reaches the
    // 1000-page checkpoint), and the space freed below must hold the re-sent batches
    // and the dropped file (about 280 KB each with the sightings' indexes).
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let env = ServerEnv {
        dir: tempfile::tempdir().expect("temp dir"),
        db_url: format!("sqlite://{}", fs.path().join("ctdata.db").display()),
        extra_env: Vec::new(),
    };
    let token = env.device_token(DEVICE);
    // Room for a few batches, then none; deleting the fillers frees it again.
    fill(&fs.path().join("filler-1"), 2560 * 1024);
    full_disk_scenario(&env, &token, fs.path()).await;
}

/// Sends batches (HTTP and the drop directory) into the database on the tmpfs at `fs`
/// until it is full and beyond, frees the space, sends the failures again, restarts,
/// and checks that nothing acknowledged was lost and nothing re-sent was stored twice.
/// The backend's setup has left room for a few batches only, in `fs`/filler-1.
async fn full_disk_scenario(env: &ServerEnv, token: &str, fs: &Path) {
    let server = env.serve().await;
    let api = server.api();
    let mut sent: Vec<Sent> = Vec::new();
    let mut refusals: Vec<(u16, String)> = Vec::new();
    let new_batch = |n: usize| {
        let file = env.dir.path().join(format!("batch-{n}.ndjson"));
        let id = write_batch(&file, DEVICE, ROWS);
        (id, file)
    };

    // Until the disk is full (bounded: the room left holds far fewer than 40 batches).
    for n in 0..40 {
        let (id, file) = new_batch(n);
        let (status, body) = post(&api, token, &file).await;
        eprintln!("batch {n}: {status} {body}");
        sent.push(Sent { id, file, status });
        if status >= 500 {
            refusals.push((status, body));
            break;
        }
    }
    assert!(
        sent.last().is_some_and(|s| s.status >= 500),
        "the disk never filled up"
    );
    // Take the last free page, then keep sending into the full disk.
    fill(&fs.join("filler-2"), usize::MAX);
    for n in 40..43 {
        let (id, file) = new_batch(n);
        let (status, body) = post(&api, token, &file).await;
        eprintln!("batch {n} (disk full): {status} {body}");
        sent.push(Sent { id, file, status });
        if status >= 500 {
            refusals.push((status, body));
        }
    }
    // A database that refuses writes is a reason to try again later (503 with
    // Retry-After), not a server error (500); nothing of those batches was stored.
    for (status, body) in &refusals {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("\"error\":\"unavailable\""), "{body}");
        assert!(body.ends_with("\nRetry-After: 30"), "{body}");
    }
    let during = readyz(&api).await;
    eprintln!("readyz while the disk is full: {during}");

    // A drop-directory file in the same window: it must not be archived as ingested.
    let drop_file = env.dir.path().join("dropped.ndjson");
    let drop_id = write_batch(&drop_file, DEVICE, ROWS);
    let device_dir = env.drop_dir().join(DEVICE);
    std::fs::create_dir_all(&device_dir).expect("device folder");
    std::fs::rename(&drop_file, device_dir.join("dropped.ndjson")).expect("drop the file");
    let receipt_path = env
        .drop_dir()
        .join("receipts")
        .join(DEVICE)
        .join("dropped.ndjson.receipt.json");
    eventually(
        "the drop-directory file to be tried",
        Duration::from_secs(120),
        || async {
            let log = server.log_text();
            (receipt_path.exists()
                || log
                    .lines()
                    .any(|l| l.contains("dropped.ndjson") && l.contains("ERROR")))
            .then_some(())
        },
    )
    .await;
    let receipt_during_full = receipt_path.exists();

    // Free the space: the server recovers without a restart.
    std::fs::remove_file(fs.join("filler-2")).expect("free space");
    std::fs::remove_file(fs.join("filler-1")).expect("free space");
    // Bounded retries rather than `eventually`: the counts below are printed even when
    // the server never recovers.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut resent = Vec::new();
    for s in sent.iter().filter(|s| s.status >= 300) {
        while std::time::Instant::now() < deadline {
            let (status, body) = post(&api, token, &s.file).await;
            eprintln!("re-sent {}: {status} {body}", s.id);
            if matches!(status, 200 | 201) {
                resent.push(s.id);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut ready_again = false;
    while !ready_again && std::time::Instant::now() < deadline {
        ready_again = readyz(&api).await == 200;
    }
    while !receipt_path.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let receipt: serde_json::Value = std::fs::read(&receipt_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let status = server.terminate();
    assert!(status.success(), "{status}");

    // A restart finds everything that was acknowledged.
    let server = env.serve().await;
    let ready_after_restart = readyz(&server.api()).await;
    let status = server.terminate();
    assert!(status.success(), "{status}");

    let acknowledged: Vec<&Sent> = sent.iter().filter(|s| s.status == 201).collect();
    let mut lost = Vec::new();
    for s in &acknowledged {
        if stored(&env.db_url, s.id).await != (1, ROWS as i64) {
            lost.push(s.id);
        }
    }
    let drop_stored = stored(&env.db_url, drop_id).await;
    eprintln!(
        "acknowledged {} of {} batches; lost {} of them; receipt for the dropped file while the \
         disk was full: {receipt_during_full} (stored now: {drop_stored:?}); readyz while full: {during}",
        acknowledged.len(),
        sent.len(),
        lost.len(),
    );
    assert!(lost.is_empty(), "acknowledged with 201 but lost: {lost:?}");
    assert_eq!(ready_after_restart, 200);
    assert_eq!(receipt["status"], "ingested", "{receipt}");
    assert_eq!(drop_stored, (1, ROWS as i64), "the dropped file's batch");
    let failed = sent.iter().filter(|s| s.status >= 300).count();
    assert!(
        ready_again,
        "/readyz never said ready again after space was freed"
    );
    assert_eq!(
        resent.len(),
        failed,
        "every failed batch is taken when sent again"
    );
    for id in &resent {
        assert_eq!(
            stored(&env.db_url, *id).await,
            (1, ROWS as i64),
            "re-sent {id}"
        );
    }
    assert_eq!(
        during, 503,
        "/readyz must say not ready while the database refuses writes"
    );
}

/// A fresh database whose default tablespace lives on a tmpfs; dropped, with the
/// tablespace, before the tmpfs is unmounted.
struct PgOnTmpfs {
    fs: Tmpfs,
    name: String,
    url: String,
}

impl PgOnTmpfs {
    /// `None` (with a visible SKIPPED) when not root, or PostgreSQL is unreachable
    /// outside CI.
    async fn create(size: &str) -> Option<PgOnTmpfs> {
        let id = |flag: &str| {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("run id");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        if uid.is_empty() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but there is no postgres user"
            );
            eprintln!("SKIPPED: no local postgres user to own a tablespace");
            return None;
        }
        let fs = Tmpfs::mount_with(&format!("size={size},uid={uid},gid={gid},mode=0700"))?;
        // The server and the checks use the test role; only a superuser makes tablespaces.
        let admin = pg_admin_url();
        if let Err(e) = sqlx::PgConnection::connect(&admin).await {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but PostgreSQL at {admin} is unreachable: {e}"
            );
            eprintln!("SKIPPED: PostgreSQL at {admin} is unreachable ({e}); set CTDATA_TEST_PG");
            return None;
        }
        // The tablespace folder must be empty; the fillers go next to it.
        let location = fs.path().join("tablespace");
        std::fs::create_dir(&location).expect("tablespace folder");
        std::os::unix::fs::chown(
            &location,
            Some(uid.parse().expect("uid")),
            Some(gid.parse().expect("gid")),
        )
        .expect("chown the tablespace folder");
        let name = format!("ctdata_full_{}", Uuid::new_v4().simple());
        let (base, _) = admin
            .rsplit_once('/')
            .expect("CTDATA_TEST_PG ends with /DATABASE");
        let user = sqlx::postgres::PgConnectOptions::from_str(&admin)
            .expect("CTDATA_TEST_PG")
            .get_username()
            .to_string();
        let this = PgOnTmpfs {
            fs,
            url: format!("{base}/{name}"),
            name,
        };
        let created = as_postgres(&format!(
            "CREATE TABLESPACE {0} LOCATION '{1}';\n\
             CREATE DATABASE {0} OWNER \"{user}\" TABLESPACE {0};",
            this.name,
            location.display()
        ));
        if let Err(e) = created {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but the tablespace cannot be created: {e}"
            );
            eprintln!("SKIPPED: cannot create a tablespace as the postgres user: {e}");
            return None;
        }
        Some(this)
    }
}

/// Runs `sql` with psql as the `postgres` system user: the superuser that Debian's
/// PostgreSQL lets in through its socket without a password.
fn as_postgres(sql: &str) -> Result<(), String> {
    use std::process::Stdio;
    let mut child = Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c"])
        .arg("psql -q -X -v ON_ERROR_STOP=1 -p 5432 -d postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run su: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(sql.as_bytes())
        .map_err(|e| format!("write to psql: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("run psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for PgOnTmpfs {
    fn drop(&mut self) {
        // Each on its own: a database never created must not keep its tablespace.
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", self.name),
            format!("DROP TABLESPACE IF EXISTS {};", self.name),
        ] {
            if let Err(e) = as_postgres(&sql) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_on_a_full_tablespace_never_acknowledges_what_it_lost() {
    // A new database copies its template (several MB) into the tablespace.
    let Some(pg) = PgOnTmpfs::create("24m").await else {
        return;
    };
    let env = ServerEnv {
        dir: tempfile::tempdir().expect("temp dir"),
        db_url: pg.url.clone(),
        extra_env: Vec::new(),
    };
    let token = env.device_token(DEVICE);
    // Fill it all, then give back room for a few batches.
    let filler = pg.fs.path().join("filler-1");
    fill(&filler, usize::MAX);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .expect("open filler");
    let len = f.metadata().expect("filler size").len();
    f.set_len(len.saturating_sub(PG_ROOM))
        .expect("shrink filler");
    drop(f);
    full_disk_scenario(&env, &token, pg.fs.path()).await;
}
