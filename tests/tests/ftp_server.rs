//! The embedded FTP/FTPS server with real clients: curl, Python's ftplib and lftp
//! upload into the real `ctdata-server serve`; escapes, other devices' files, active
//! mode, lockout, TLS and revoked devices are refused.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ctdata_tests::{both_backends, eventually, write_batch, Backend, ServerEnv, TestDb};
use serde_json::Value;

/// Runs FTP operations with Python's ftplib and returns one result per operation:
/// `{"ok": …}` or `{"err": "550 …"}`. `login` opens a fresh connection each time.
const FTPLIB: &str = r#"
import ftplib, io, json, os, sys
port, tls, ops = int(sys.argv[1]), sys.argv[2] == "tls", json.loads(sys.argv[3])
ftp = None
def run(op):
    global ftp
    kind, a = op[0], op[1:]
    if kind == "login":
        if ftp is not None:
            ftp.close()
        ftp = (ftplib.FTP_TLS if tls else ftplib.FTP)()
        ftp.connect("127.0.0.1", port, timeout=20)
        r = ftp.login(a[0], a[1])
        if tls:
            ftp.prot_p()
        return r
    if kind == "stor":
        with open(a[0], "rb") as f:
            return ftp.storbinary("STOR " + a[1], f)
    if kind == "stor_then_die":
        # Sends half of the file, then dies the hard way mid-transfer.
        data = open(a[0], "rb").read()
        conn = ftp.transfercmd("STOR " + a[1])
        conn.sendall(data[: len(data) // 2])
        print(json.dumps([{"ok": "half sent"}]), flush=True)
        os.kill(os.getpid(), 9)
    if kind == "stor_then_stall":
        # Sends half of the file, then nothing, keeping the connection open.
        data = open(a[0], "rb").read()
        conn = ftp.transfercmd("STOR " + a[1])
        conn.sendall(data[: len(data) // 2])
        return ftp.getresp()
    if kind == "idle":
        import time
        time.sleep(float(a[0]))
        return ftp.sendcmd("NOOP")
    if kind == "rename":
        return ftp.rename(a[0], a[1])
    if kind == "retr":
        buf = io.BytesIO()
        ftp.retrbinary("RETR " + a[0], buf.write)
        return buf.getvalue().decode("latin-1")
    if kind == "list":
        lines = []
        ftp.retrlines("LIST " + a[0] if a else "LIST", lines.append)
        return lines
    if kind == "cmd":
        return ftp.sendcmd(a[0])
    if kind == "cwd":
        return ftp.cwd(a[0])
    if kind == "mkd":
        return ftp.mkd(a[0])
    if kind == "delete":
        return ftp.delete(a[0])
    if kind == "active":
        ftp.set_pasv(False)
        return "active"
    raise ValueError(kind)
out = []
for op in ops:
    try:
        out.append({"ok": run(op)})
    except ftplib.all_errors as e:
        out.append({"err": str(e)})
print(json.dumps(out))
"#;

fn ftplib(port: u16, tls: bool, ops: Value) -> Vec<Value> {
    let out = Command::new("python3")
        .args(["-c", FTPLIB, &port.to_string()])
        .arg(if tls { "tls" } else { "plain" })
        .arg(ops.to_string())
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    match serde_json::from_str::<Value>(last) {
        Ok(Value::Array(results)) => results,
        _ => panic!(
            "ftplib script failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn ok(r: &Value) -> bool {
    r.get("ok").is_some()
}

/// The reply code of a refused operation.
fn code(r: &Value) -> String {
    r["err"].as_str().unwrap_or("").chars().take(3).collect()
}

fn ftp_url(port: u16, user: &str, token: &str, path: &str) -> String {
    format!("ftp://{user}:{token}@127.0.0.1:{port}{path}")
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl")
}

/// `(device, channel, file_name)` of every stored batch, in arrival order.
async fn stored(db: &TestDb) -> Vec<(String, String, String)> {
    db.texts(
        "SELECT d.name, b.channel, b.file_name FROM batches b JOIN devices d ON d.id = b.device_id ORDER BY b.id",
    )
    .await
    .into_iter()
    .map(|r| {
        let t = |i: usize| r[i].clone().unwrap_or_default();
        (t(0), t(1), t(2))
    })
    .collect()
}

async fn wait_for_batches(db: &TestDb, n: usize) -> Vec<(String, String, String)> {
    eventually(
        &format!("{n} stored batches"),
        Duration::from_secs(60),
        || async {
            let rows = stored(db).await;
            (rows.len() >= n).then_some(rows)
        },
    )
    .await
}

both_backends! {
    curl_ftplib_and_lftp_uploads_are_ingested_as_ftp,
}

async fn curl_ftplib_and_lftp_uploads_are_ingested_as_ftp(db: TestDb) {
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let port = server.ftp_port();
    let dir = env.dir.path();

    // curl: STOR of the final name into /CTData/, creating the folder.
    let a = dir.join("a.ndjson");
    write_batch(&a, "ranger-07", 3);
    let out = curl(&[
        "--ftp-create-dirs",
        "-T",
        &a.display().to_string(),
        &ftp_url(port, "ranger-07", &token, "/CTData/a.ndjson"),
    ]);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = wait_for_batches(&db, 1).await;
    assert_eq!(
        rows[0],
        ("ranger-07".into(), "ftp".into(), "a.ndjson".into())
    );

    // ftplib: upload to .part, then rename into place.
    let b = dir.join("b.ndjson");
    write_batch(&b, "ranger-07", 4);
    let r = ftplib(
        port,
        false,
        serde_json::json!([
            ["login", "ranger-07", token],
            ["stor", b.display().to_string(), "b.ndjson.part"],
            ["rename", "b.ndjson.part", "b.ndjson"],
        ]),
    );
    assert!(r.iter().all(ok), "{r:?}");
    let rows = wait_for_batches(&db, 2).await;
    assert_eq!(
        rows[1],
        ("ranger-07".into(), "ftp".into(), "b.ndjson".into())
    );

    // lftp, with its own temporary-name-then-rename convention.
    let c = dir.join("c.ndjson");
    write_batch(&c, "ranger-07", 5);
    let script = format!(
        "set ftp:ssl-allow no; set xfer:use-temp-file yes; set net:max-retries 1; \
         open -u ranger-07,{token} -p {port} 127.0.0.1; mkdir -f CTData; put {} -o CTData/c.ndjson; bye",
        c.display()
    );
    let out = Command::new("lftp")
        .args(["-c", &script])
        .output()
        .expect("run lftp (Debian package lftp)");
    assert!(
        out.status.success(),
        "lftp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = wait_for_batches(&db, 3).await;
    assert_eq!(
        rows[2],
        ("ranger-07".into(), "ftp".into(), "c.ndjson".into())
    );
    let sightings = db.scalar("SELECT COUNT(*) FROM sightings").await;
    assert_eq!(sightings, 12);
    // Nothing left behind in the device's folder but the folder it made.
    let left: Vec<String> = std::fs::read_dir(env.drop_dir().join("ranger-07/CTData"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(server.terminate().success());
}

async fn pg() -> Option<TestDb> {
    TestDb::new(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_get_550_and_leak_nothing() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let token = env.device_token("ranger-07");
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP-SECRET-BYTES").unwrap();
    let root = env.drop_dir().join("ranger-07");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("peek")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("link.part")).unwrap();
    let server = env.serve().await;
    let port = server.ftp_port();
    let local = env.dir.path().join("x.ndjson");
    write_batch(&local, "ranger-07", 1);
    let depth = "../".repeat(12);

    let r = ftplib(
        port,
        false,
        serde_json::json!([
            ["login", "ranger-07", token],
            ["retr", "../outside/secret.txt"],
            ["retr", format!("/{depth}etc/passwd")],
            ["retr", outside.join("secret.txt").display().to_string()],
            ["retr", "peek/secret.txt"],
            ["retr", "link.part"],
            ["list", "peek"],
            ["list", ".."],
            ["cmd", "CWD .."],
            ["cwd", "peek"],
            ["stor", local.display().to_string(), "peek/x.part"],
            ["stor", local.display().to_string(), "../x.part"],
            ["delete", "../ranger-07/link.part/../../outside/secret.txt"],
            ["list", "/"],
        ]),
    );
    assert!(ok(&r[0]), "{r:?}");
    for (i, res) in r.iter().enumerate().take(13).skip(1) {
        assert_eq!(code(res), "550", "operation {i}: {res:?}");
    }
    let listing = r[13]["ok"].as_array().expect("listing").clone();
    assert!(listing.is_empty(), "symlinks are not listed: {listing:?}");
    // CDUP at the root stays at the root.
    let r2 = ftplib(
        port,
        false,
        serde_json::json!([
            ["login", "ranger-07", token],
            ["cmd", "CDUP"],
            ["cmd", "PWD"],
            ["retr", "peek/secret.txt"]
        ]),
    );
    assert!(
        r2[2]["ok"].as_str().unwrap_or_default().contains("\"/\""),
        "{r2:?}"
    );
    assert_eq!(code(&r2[3]), "550", "{r2:?}");
    let all = serde_json::to_string(&r).unwrap();
    assert!(!all.contains("TOP-SECRET"), "{all}");
    assert!(!all.contains("root:"), "{all}");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "TOP-SECRET-BYTES"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert!(!env.drop_dir().join("x.part").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_list_read_or_overwrite_another_devices_files() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let a = env.device_token("ranger-07");
    let b = env.device_token("ranger-08");
    let server = env.serve().await;
    let port = server.ftp_port();
    let mine = env.dir.path().join("mine.part");
    std::fs::write(&mine, "B-OWN-BYTES").unwrap();
    let theirs = env.dir.path().join("theirs.part");
    std::fs::write(&theirs, "A-WAS-HERE").unwrap();

    let r = ftplib(
        port,
        false,
        serde_json::json!([
            ["login", "ranger-08", b],
            ["stor", mine.display().to_string(), "keep.part"]
        ]),
    );
    assert!(r.iter().all(ok), "{r:?}");
    let r = ftplib(
        port,
        false,
        serde_json::json!([
            ["login", "ranger-07", a],
            ["list", "../ranger-08"],
            ["retr", "../ranger-08/keep.part"],
            ["retr", "/ranger-08/keep.part"],
            [
                "stor",
                theirs.display().to_string(),
                "../ranger-08/keep.part"
            ],
            ["rename", "../ranger-08/keep.part", "stolen.part"],
            ["delete", "../ranger-08/keep.part"],
            ["cwd", "/../ranger-08"],
            ["list", "/"],
        ]),
    );
    assert!(ok(&r[0]), "{r:?}");
    for (i, res) in r.iter().enumerate().take(8).skip(1) {
        assert_eq!(code(res), "550", "operation {i}: {res:?}");
    }
    assert!(!serde_json::to_string(&r).unwrap().contains("B-OWN"));
    assert!(r[8]["ok"].as_array().unwrap().is_empty(), "{r:?}");
    let kept = env.drop_dir().join("ranger-08/keep.part");
    assert_eq!(std::fs::read_to_string(kept).unwrap(), "B-OWN-BYTES");
    // B still has its file, and may do as it likes with it.
    let r = ftplib(
        port,
        false,
        serde_json::json!([
            ["login", "ranger-08", b],
            ["retr", "keep.part"],
            ["delete", "keep.part"]
        ]),
    );
    assert_eq!(r[1]["ok"], "B-OWN-BYTES", "{r:?}");
    assert!(ok(&r[2]), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_mode_is_refused() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let local = env.dir.path().join("x.ndjson");
    write_batch(&local, "ranger-07", 1);
    let r = ftplib(
        server.ftp_port(),
        false,
        serde_json::json!([
            ["login", "ranger-07", token],
            ["cmd", "PORT 127,0,0,1,39,16"],
            ["cmd", "EPRT |1|127.0.0.1|10000|"],
            ["active"],
            ["stor", local.display().to_string(), "x.ndjson"],
        ]),
    );
    assert!(ok(&r[0]), "{r:?}");
    for i in [1, 2, 4] {
        assert!(code(&r[i]).starts_with('5'), "operation {i}: {r:?}");
    }
    assert!(stored(&db).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_tokens_lock_the_name_and_address_out() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    env.extra_env.extend([
        (
            "CTDATA__FTP__MAX_LOGIN_FAILURES".to_string(),
            "3".to_string(),
        ),
        ("CTDATA__FTP__LOCKOUT_SECS".to_string(), "300".to_string()),
    ]);
    let token = env.device_token("ranger-07");
    let other = env.device_token("ranger-08");
    let server = env.serve().await;
    let bad = "ctd_0000000000000000000000000000000000000000000000000000000000000000";
    let r = ftplib(
        server.ftp_port(),
        false,
        serde_json::json!([
            ["login", "ranger-07", token],
            ["login", "ranger-07", bad],
            ["login", "ranger-07", bad],
            ["login", "ranger-07", bad],
            ["login", "ranger-07", token],
            ["login", "ranger-08", other],
        ]),
    );
    assert!(ok(&r[0]), "the right token works before: {r:?}");
    for (i, res) in r.iter().enumerate().take(5).skip(1) {
        assert_eq!(code(res), "530", "login {i}: {res:?}");
    }
    assert!(ok(&r[5]), "another device is not locked out: {r:?}");
    assert!(server.log_text().contains("locked out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_devices_and_borrowed_tokens_cannot_log_in() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let revoked = env.device_token("ranger-09");
    let other = env.device_token("ranger-08");
    let status = env
        .command(&["device", "revoke", "ranger-09"])
        .status()
        .unwrap();
    assert!(status.success());
    let server = env.serve().await;
    let r = ftplib(
        server.ftp_port(),
        false,
        serde_json::json!([
            ["login", "ranger-09", revoked],
            ["login", "ranger-09", other]
        ]),
    );
    assert_eq!(code(&r[0]), "530", "{r:?}");
    assert_eq!(code(&r[1]), "530", "{r:?}");
    assert!(server.log_text().contains("the device is revoked"));
    // The server's own folders can never be device names, in any letter case.
    for name in ["archive", "Rejected", "RECEIPTS"] {
        let out = env.command(&["device", "add", name]).output().unwrap();
        assert!(!out.status.success(), "{name} was accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));
    }
}

/// A self-signed certificate for 127.0.0.1, as PEM files.
fn self_signed(dir: &Path) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_refuses_plain_logins_and_ftps_uploads_work() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let (cert, key) = self_signed(env.dir.path());
    env.extra_env.extend([
        ("CTDATA__FTP__TLS_CERT".to_string(), cert),
        ("CTDATA__FTP__TLS_KEY".to_string(), key),
        ("CTDATA__FTP__REQUIRE_TLS".to_string(), "true".to_string()),
    ]);
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let port = server.ftp_port();
    let local = env.dir.path().join("t.ndjson");
    write_batch(&local, "ranger-07", 2);

    let r = ftplib(
        port,
        false,
        serde_json::json!([["login", "ranger-07", token]]),
    );
    assert!(
        code(&r[0]).starts_with('5'),
        "a plain login went through: {r:?}"
    );
    let out = curl(&[
        "-T",
        &local.display().to_string(),
        &ftp_url(port, "ranger-07", &token, "/plain.ndjson"),
    ]);
    assert!(!out.status.success(), "curl uploaded without TLS");

    // ftplib over TLS logs in and lists. (Its uploads end in an error on libunftp:
    // libunftp closes a STOR data connection without a TLS close_notify, which
    // Python's ssl module reports, though the file arrived whole.)
    let r = ftplib(
        port,
        true,
        serde_json::json!([["login", "ranger-07", token], ["list", "/"]]),
    );
    assert!(r.iter().all(ok), "{r:?}");
    // curl over TLS: upload to .part, then rename (post-transfer quote commands).
    let out = curl(&[
        "--ssl-reqd",
        "-k",
        "-T",
        &local.display().to_string(),
        "-Q",
        "-RNFR t.ndjson.part",
        "-Q",
        "-RNTO t.ndjson",
        &ftp_url(port, "ranger-07", &token, "/t.ndjson.part"),
    ]);
    assert!(
        out.status.success(),
        "curl over FTPS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = env.dir.path().join("u.ndjson");
    write_batch(&other, "ranger-07", 2);
    let out = curl(&[
        "--ssl-reqd",
        "-k",
        "--ftp-create-dirs",
        "-T",
        &other.display().to_string(),
        &ftp_url(port, "ranger-07", &token, "/CTData/u.ndjson"),
    ]);
    assert!(
        out.status.success(),
        "curl over FTPS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = wait_for_batches(&db, 2).await;
    let names: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(names, ["t.ndjson", "u.ndjson"]);
    assert!(rows.iter().all(|r| r.1 == "ftp" && r.0 == "ranger-07"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dying_mid_upload_never_causes_an_ingest_and_stale_parts_go() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    env.extra_env
        .push(("CTDATA__FTP__STALE_PART_SECS".to_string(), "3".to_string()));
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let port = server.ftp_port();
    let big = env.dir.path().join("big.ndjson");
    write_batch(&big, "ranger-07", 2000);

    let r = ftplib(
        port,
        false,
        serde_json::json!([
            ["login", "ranger-07", token],
            [
                "stor_then_die",
                big.display().to_string(),
                "big.ndjson.part"
            ]
        ]),
    );
    assert_eq!(r[0]["ok"], "half sent", "{r:?}");
    let part = env.drop_dir().join("ranger-07/big.ndjson.part");
    let half = std::fs::metadata(&big).unwrap().len() / 2;
    eventually(
        "the half upload on disk",
        Duration::from_secs(30),
        || async {
            std::fs::metadata(&part)
                .ok()
                .filter(|m| m.len() == half)
                .map(|_| ())
        },
    )
    .await;

    // A complete upload afterwards is ingested; the half one never is.
    let good = env.dir.path().join("good.ndjson");
    write_batch(&good, "ranger-07", 1);
    let r = ftplib(
        port,
        false,
        serde_json::json!([
            ["login", "ranger-07", token],
            ["stor", good.display().to_string(), "good.ndjson.part"],
            ["rename", "good.ndjson.part", "good.ndjson"],
        ]),
    );
    assert!(r.iter().all(ok), "{r:?}");
    let rows = wait_for_batches(&db, 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, "good.ndjson");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM rejections").await, 0);

    eventually(
        "the stale .part to be removed",
        Duration::from_secs(60),
        || async { (!part.exists()).then_some(()) },
    )
    .await;
    assert_eq!(stored(&db).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_claimed_before_a_crash_is_ingested_as_ftp_after_the_restart() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    // What the FTP server leaves when killed right after claiming a complete upload.
    let claimed = env.drop_dir().join(".processing/ranger-07");
    std::fs::create_dir_all(&claimed).unwrap();
    write_batch(
        &claimed.join("20261122T101010000000000000001.ftp-late.ndjson"),
        "ranger-07",
        2,
    );
    let server = env.serve().await;
    let rows = wait_for_batches(&db, 1).await;
    assert_eq!(
        rows[0],
        ("ranger-07".into(), "ftp".into(), "late.ndjson".into())
    );
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_and_idle_sessions_time_out() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    env.extra_env.extend([
        (
            "CTDATA__FTP__DATA_TIMEOUT_SECS".to_string(),
            "1".to_string(),
        ),
        (
            "CTDATA__FTP__IDLE_TIMEOUT_SECS".to_string(),
            "2".to_string(),
        ),
    ]);
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let file = env.dir.path().join("slow.ndjson");
    write_batch(&file, "ranger-07", 200);
    let r = ftplib(
        server.ftp_port(),
        false,
        serde_json::json!([
            ["login", "ranger-07", token],
            ["stor_then_stall", file.display().to_string(), "slow.ndjson"],
            ["login", "ranger-07", token],
            ["idle", "4"],
        ]),
    );
    assert!(
        code(&r[1]).starts_with('4'),
        "the stalled upload was not cut: {r:?}"
    );
    // The server closes an idle session with "221 Session timed out", which ftplib
    // reads as the answer to its late NOOP.
    let idle = serde_json::to_string(&r[3]).unwrap();
    assert!(
        r[3].get("err").is_some() || idle.contains("timed out"),
        "the idle session stayed open: {r:?}"
    );
    // The cut upload of a final name left nothing to ingest and nothing behind.
    let left = std::fs::read_dir(env.drop_dir().join("ranger-07"))
        .unwrap()
        .count();
    assert_eq!(left, 0);
    assert!(stored(&db).await.is_empty());
}
