//! `ctdata-server device …` and `admin …` as an administrator's script runs them.

use std::io::Write;
use std::process::Stdio;

use ctdata_tests::{both_backends, ServerEnv, TestDb};

both_backends! {
    device_and_admin_commands,
}

async fn device_and_admin_commands(db: TestDb) {
    let env = ServerEnv::new(&db);
    let run = |args: &[&str]| env.command(args).output().expect("run ctdata-server");

    // The token alone goes to stdout, so `TOKEN=$(ctdata-server device add NAME)` works.
    let out = run(&["device", "add", "ranger-07"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.trim();
    assert_eq!(stdout.lines().count(), 1);
    assert!(token.starts_with("ctd_") && token.len() == 68, "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown only now"));

    let again = run(&["device", "add", "ranger-07"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already registered"));

    let rotated = run(&["device", "rotate", "ranger-07"]);
    assert!(rotated.status.success());
    assert_ne!(String::from_utf8(rotated.stdout).unwrap().trim(), token);
    assert!(run(&["device", "revoke", "ranger-07"]).status.success());
    let list = String::from_utf8(run(&["device", "list"]).stdout).unwrap();
    assert!(
        list.lines()
            .any(|l| l.starts_with("ranger-07") && l.contains("revoked")),
        "{list}"
    );

    // The password comes from standard input when it is not a terminal.
    let mut child = env
        .command(&["admin", "add", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long enough password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = db
        .texts("SELECT password_hash FROM admins WHERE name = 'alice'")
        .await;
    assert!(stored[0][0].as_deref().unwrap().starts_with("$argon2id$"));

    let out = run(&["admin", "token", "alice"]);
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .starts_with("ctd_"));
    assert!(!run(&["admin", "token", "bob"]).status.success());
}
