//! What the server and the client leave behind: log lines a file name cannot forge, a
//! rejected file downloadable whatever its name, credentials kept off the dashboard,
//! files and folders private to their owner. Against the real binaries.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ctdata_tests::client::client_bin;
use ctdata_tests::{both_backends, eventually, Backend, Batch, ServerEnv, TestDb};

const PASSWORD: &str = "a long enough password";

/// Signs in; the session cookie.
fn session(base: &str) -> String {
    let (code, token) = ctdata_tests::web::sign_in(base, "alice", PASSWORD);
    assert_eq!(code, 303);
    format!("ctdata_session={}", token.expect("a session cookie"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

async fn control_characters_in_file_names_are_escaped(db: TestDb) {
    let env = ServerEnv::new(&db);
    env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    // A device drops a broken file whose name carries a forged log line and a
    // terminal escape.
    let name = "evil\n2026-12-02T00:00:00Z ERROR forged line\x1b[2J.csv";
    std::fs::write(env.drop_dir().join(name), "not,a\nbatch\n").unwrap();
    eventually(
        "the file to be rejected",
        Duration::from_secs(30),
        || async {
            let n = db.scalar("SELECT COUNT(*) FROM rejections").await;
            (n > 0).then_some(())
        },
    )
    .await;
    let id = db.scalar("SELECT MAX(id) FROM rejections").await;

    let log = server.log_text();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-12-02T00:00:00Z ERROR forged")),
        "a file name forged a log line:\n{log}"
    );
    assert!(!log.contains('\x1b'), "a terminal escape reached the log");
    assert!(
        log.contains("forged line"),
        "the rejection is logged:\n{log}"
    );

    let cookie = session(&base);
    // The rejection is recorded first, then the file is moved into rejected/ (with
    // others of its burst): until then the page says the file is not there yet.
    let api = server.api();
    let reply = eventually("the rejected file", Duration::from_secs(30), || async {
        let reply = api.page(&format!("/rejected/{id}/file"), &cookie).await;
        (reply.status != 410).then_some(reply)
    })
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "not,a\nbatch\n");
    let disposition = reply
        .header("content-disposition")
        .expect("a Content-Disposition header");
    assert!(
        disposition.contains("evil%0A2026-12-02T00%3A00%3A00Z%20ERROR%20forged%20line%1B"),
        "{disposition}"
    );
}

async fn source_credentials_are_redacted_on_the_dashboard(db: TestDb) {
    let env = ServerEnv::new(&db);
    env.admin_token();
    // Read from ./ctdata.toml: the server runs in the environment's folder.
    std::fs::write(
        env.dir.path().join("ctdata.toml"),
        "[[sources]]\nname = \"station\"\nurl = \"ftp://cam:hunter2secret@127.0.0.1:9/CTData\"\n",
    )
    .unwrap();
    let server = env.serve().await;
    let base = server.http_base();
    let cookie = session(&base);
    let reply = server.api().page("/sources", &cookie).await;
    assert_eq!(reply.status, 200);
    let page = reply.body;
    assert!(page.contains("station"), "{page}");
    assert!(
        !page.contains("hunter2secret"),
        "the password is on the page"
    );
    assert!(page.contains("ftp://cam:***@127.0.0.1:9/CTData"), "{page}");
    assert!(!server.log_text().contains("hunter2secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_files_and_folders_are_private() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let mut env = ServerEnv::new(&db);
    // A database the server creates itself, in a data folder it creates.
    let data = env.dir.path().join("data");
    env.db_url = format!("sqlite://{}", data.join("ctdata.db").display());
    let token = env.device_token("cam-1");
    let server = env.serve().await;
    let reply = server
        .api()
        .post_batch(&token, Batch::new("cam-1", 2).ndjson())
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    drop(server);

    assert_eq!(mode(&data), 0o700, "the data folder");
    assert_eq!(mode(&data.join("ctdata.db")), 0o600, "the database");
    let archive = env.drop_dir().join("archive");
    assert_eq!(mode(&archive), 0o700, "the archive folder");
    let mut archived = Vec::new();
    let mut stack = vec![archive];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                stack.push(path);
            } else {
                archived.push(path);
            }
        }
    }
    assert!(!archived.is_empty());
    for file in archived {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_home_and_state_are_private() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let env = ServerEnv::new(&db);
    let token = env.device_token("cam-2");
    let server = env.serve().await;
    let home = env.dir.path().join("client-home");
    let ctdata = |args: &[&str]| {
        let out = Command::new(client_bin())
            .arg("--home")
            .arg(&home)
            .args(args)
            .env_remove("CTDATA_HOME")
            .output()
            .expect("run ctdata");
        assert!(
            out.status.success(),
            "ctdata {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let base = server.http_base();
    ctdata(&[
        "init",
        "--protocol",
        "https",
        "--url",
        &base,
        "--device",
        "cam-2",
        "--token",
        &token,
    ]);
    ctdata(&[
        "record",
        "--species",
        "Lion",
        "--lat",
        "-24",
        "--lon",
        "31.5",
        "--count",
        "1",
    ]);
    ctdata(&["send"]);
    assert_eq!(mode(&home), 0o700, "the client's home");
    for entry in std::fs::read_dir(&home).unwrap() {
        let path = entry.unwrap().path();
        let expected = if path.is_dir() { 0o700 } else { mode(&path) };
        assert_eq!(mode(&path), expected, "{}", path.display());
    }
    assert_eq!(mode(&home.join("config.toml")), 0o600);
    assert_eq!(mode(&home.join("state.json")), 0o600);
}

both_backends!(
    control_characters_in_file_names_are_escaped,
    source_credentials_are_redacted_on_the_dashboard
);
