//! Administrators managed, not just added (`admin list/remove/passwd/token --revoke`,
//! and the dashboard's Account page), device names unique in any letter case, and
//! the field client's token kept off the command line.

use std::io::Write;
use std::process::{Output, Stdio};

use ctdata_tests::api::{send, Api};
use ctdata_tests::client::Client;
use ctdata_tests::{both_backends, Backend, ServerEnv, TestDb};
use reqwest::Method;
use Auth::{Basic, Bearer};

const PASSWORD: &str = "a long enough password";
const NEW_PASSWORD: &str = "another long password";

both_backends! {
    administrators_are_listed_removed_and_their_tokens_revoked,
    the_dashboard_account_page_changes_the_password_and_revokes_own_tokens,
    device_names_are_unique_in_any_case_and_old_twins_survive_the_migration,
    init_reads_the_token_from_standard_input,
}

fn with_stdin(env: &ServerEnv, args: &[&str], input: &str) -> Output {
    let mut child = env
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

enum Auth<'a> {
    Bearer(&'a str),
    /// `name:password`
    Basic(&'a str),
}

/// The status of GET /api/v1/devices with these credentials.
async fn status(api: &Api, auth: Auth<'_>) -> u16 {
    let request = api.request(Method::GET, "/api/v1/devices");
    let request = match auth {
        Auth::Bearer(token) => request.bearer_auth(token),
        Auth::Basic(pair) => {
            let (name, password) = pair.split_once(':').expect("name:password");
            request.basic_auth(name, Some(password))
        }
    };
    send(request).await.status
}

async fn administrators_are_listed_removed_and_their_tokens_revoked(db: TestDb) {
    let env = ServerEnv::new(&db);
    let first = env.admin_token();
    let run = |args: &[&str]| env.command(args).output().unwrap();
    let token = |name: &str| {
        let out = run(&["admin", "token", name]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (second, third) = (token("alice"), token("alice"));
    let server = env.serve().await;
    let api = server.api();

    let list = text(&run(&["admin", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("alice") && l.trim_end().ends_with(" 3")),
        "{list}"
    );
    // Tokens are listed by their first characters only.
    let tokens = text(&run(&["admin", "token", "alice", "--list"]));
    assert!(
        tokens.contains(&first[..12]) && tokens.contains(&third[..12]),
        "{tokens}"
    );
    assert!(!tokens.contains(&first[..20]), "{tokens}");

    // A prefix that fits several tokens revokes none and says so.
    let out = run(&["admin", "token", "alice", "--revoke", "ctd_"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("3 active API tokens"), "{}", text(&out));
    let out = run(&["admin", "token", "alice", "--revoke", &first[..12]]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&api, Bearer(&first)).await, 401);
    assert_eq!(status(&api, Bearer(&second)).await, 200);
    // The whole token works as its own prefix.
    let out = run(&["admin", "token", "alice", "--revoke", &second]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&api, Bearer(&second)).await, 401);

    // A new password: the old one stops working.
    let out = with_stdin(
        &env,
        &["admin", "passwd", "alice"],
        &format!("{NEW_PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let old = format!("alice:{PASSWORD}");
    let new = format!("alice:{NEW_PASSWORD}");
    assert_eq!(status(&api, Basic(&old)).await, 401);
    assert_eq!(status(&api, Basic(&new)).await, 200);
    let out = with_stdin(
        &env,
        &["admin", "passwd", "nobody"],
        &format!("{NEW_PASSWORD}\n"),
    );
    assert!(
        text(&out).contains("no administrator named nobody"),
        "{}",
        text(&out)
    );

    let out = run(&["admin", "token", "alice", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&api, Bearer(&third)).await, 401);

    let out = run(&["admin", "remove", "alice"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&api, Basic(&new)).await, 401);
    assert!(!text(&run(&["admin", "list"])).contains("alice"));
    assert_eq!(db.scalar("SELECT count(*) FROM admin_tokens").await, 0);
    assert!(server.terminate().success());
}

/// The dashboard as a browser uses it (curl with a cookie jar): the status and body.
fn curl_body(args: &[&str]) -> (u16, String) {
    let (code, _, body) = ctdata_tests::web::curl(args);
    (code, body)
}

async fn the_dashboard_account_page_changes_the_password_and_revokes_own_tokens(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.admin_token();
    let out = with_stdin(&env, &["admin", "add", "bob"], &format!("{PASSWORD}\n"));
    assert!(out.status.success());
    let out = env.command(&["admin", "token", "bob"]).output().unwrap();
    let bobs = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let server = env.serve().await;
    let base = server.http_base();
    let api = server.api();

    let jar = tempfile::NamedTempFile::new().unwrap();
    let jar = jar.path().to_str().unwrap();
    let (_, page) = curl_body(&["-c", jar, &format!("{base}/login")]);
    let form = format!(
        "name=alice&password={}&csrf={}",
        PASSWORD.replace(' ', "+"),
        ctdata_tests::web::csrf_of(&page)
    );
    let (code, _) = curl_body(&["-b", jar, "-c", jar, "-d", &form, &format!("{base}/login")]);
    assert_eq!(code, 303);

    // Her own tokens, by their first characters; not bob's.
    let account = format!("{base}/account");
    let (code, page) = curl_body(&["-b", jar, &account]);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains(&token[..12]) && !page.contains(&bobs[..12]),
        "{page}"
    );
    let csrf = ctdata_tests::web::csrf_of(&page);

    // Bob's token cannot be revoked from alice's page, even by its id.
    let bob_id = db
        .scalar("SELECT t.id FROM admin_tokens t JOIN admins a ON a.id = t.admin_id WHERE a.name = 'bob'")
        .await;
    let mine = db
        .scalar("SELECT t.id FROM admin_tokens t JOIN admins a ON a.id = t.admin_id WHERE a.name = 'alice'")
        .await;
    let revoke = |id: i64| format!("{base}/account/tokens/{id}/revoke");
    let (_, page) = curl_body(&["-b", jar, "-d", &format!("csrf={csrf}"), &revoke(bob_id)]);
    assert!(page.contains("no such active token"), "{page}");
    assert_eq!(status(&api, Bearer(&bobs)).await, 200);
    // Without the form's CSRF token nothing happens; with it, her token is revoked.
    let (code, _) = curl_body(&["-b", jar, "-d", "csrf=", &revoke(mine)]);
    assert_eq!(code, 403);
    assert_eq!(status(&api, Bearer(&token)).await, 200);
    let (code, page) = curl_body(&["-b", jar, "-d", &format!("csrf={csrf}"), &revoke(mine)]);
    assert_eq!(code, 200);
    assert!(page.contains("is revoked"), "{page}");
    assert_eq!(status(&api, Bearer(&token)).await, 401);

    // The password: the current one first.
    let change = |current: &str| {
        format!(
            "csrf={csrf}&current={}&new={}&again={}",
            current.replace(' ', "+"),
            NEW_PASSWORD.replace(' ', "+"),
            NEW_PASSWORD.replace(' ', "+")
        )
    };
    let password = format!("{base}/account/password");
    let (code, page) = curl_body(&["-b", jar, "-d", &change("wrong password"), &password]);
    assert_eq!(code, 401, "{page}");
    let (code, page) = curl_body(&["-b", jar, "-d", &change(PASSWORD), &password]);
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Password changed"), "{page}");
    assert_eq!(status(&api, Basic(&format!("alice:{PASSWORD}"))).await, 401);
    assert_eq!(
        status(&api, Basic(&format!("alice:{NEW_PASSWORD}"))).await,
        200
    );
    // The session that made the change goes on.
    let (code, _) = curl_body(&["-b", jar, &account]);
    assert_eq!(code, 200);
    assert!(server.terminate().success());
}

/// Runs SQL statements on the test database.
async fn execute(db: &TestDb, sql: &str) {
    use sqlx::Connection;
    match db.backend {
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut c).await.expect(sql);
        }
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut c).await.expect(sql);
        }
    }
}

async fn device_names_are_unique_in_any_case_and_old_twins_survive_the_migration(db: TestDb) {
    let env = ServerEnv::new(&db);
    let lower = env.device_token("ranger-09");
    let other = env.device_token("fieldpc");

    // A name that differs only in case is refused, saying which device it collides with.
    let out = env
        .command(&["device", "add", "Ranger-09"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("differs only in letter case from the existing device ranger-09"),
        "{said}"
    );

    // A database from before the rule with two such devices: the migration keeps both.
    execute(
        &db,
        "DROP INDEX devices_registered_name_any_case; \
         ALTER TABLE devices DROP COLUMN case_twin; \
         ALTER TABLE admin_tokens DROP COLUMN token_prefix; \
         DELETE FROM _sqlx_migrations WHERE version = 8; \
         UPDATE devices SET name = 'RANGER-09' WHERE name = 'fieldpc';",
    )
    .await;
    let out = env.command(&["migrate"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        db.scalar("SELECT count(*) FROM devices WHERE lower(name) = 'ranger-09'")
            .await,
        2
    );
    let server = env.serve().await;
    for (token, name) in [(&lower, "ranger-09"), (&other, "RANGER-09")] {
        let body = server.api().get("/api/v1/whoami", token).await.body;
        assert!(body.contains(&format!("\"{name}\"")), "{body}");
    }
    // A third spelling still may not join them.
    let out = env
        .command(&["device", "add", "Ranger-09"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(server.terminate().success());
}

async fn init_reads_the_token_from_standard_input(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-01");
    let server = env.serve().await;
    let base = server.http_base();
    let client = Client::new();
    let mut init = client.command(&[
        "init",
        "--protocol",
        "https",
        "--url",
        &base,
        "--device",
        "ranger-01",
        "--token-stdin",
    ]);
    let mut child = init
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What `ps` shows of it: no token.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains("ctd_"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{token}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    client.record(1, "Panthera leo");
    client.ok(&["send"]);
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 1);

    // An empty standard input is an error that says so, and writes nothing.
    let empty = Client::new();
    let out = empty
        .command(&[
            "init",
            "--protocol",
            "https",
            "--url",
            &base,
            "--device",
            "ranger-01",
            "--token-stdin",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("--token-stdin"), "{}", text(&out));
    assert!(server.terminate().success());
}
