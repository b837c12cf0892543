//! The embedded FTP server refuses what a device must not do: escape its folder (`..`,
//! absolute paths, symlinks), touch another device's files, use active mode, guess
//! tokens, or log in revoked.

use ctdata_tests::ftp::{code, ftplib, ok, stored};
use ctdata_tests::{pg, write_batch, ServerEnv};

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
