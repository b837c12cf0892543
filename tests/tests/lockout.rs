//! Locked-out logins, with real clients against the real `ctdata-server serve`: an FTP
//! device locked out after wrong tokens is told so and for how long (Python's ftplib),
//! and one administrator guessed at from 49 addresses is limited per account, while
//! the right password from an address that has not failed still gets in (curl).

use std::process::Command;
use std::time::Instant;

use ctdata_tests::client::Client;
use ctdata_tests::ftp::{code, ftplib, ok};
use ctdata_tests::{pg, self_signed};
use ctdata_tests::{Server, ServerEnv, TestDb};

const BAD: &str = "ctd_0000000000000000000000000000000000000000000000000000000000000000";

/// The reply text of a refused operation, all lines.
fn said(r: &serde_json::Value) -> String {
    r["err"].as_str().unwrap_or_default().to_string()
}

/// A server with FTP, a lockout after three failures, and devices ranger-07 and
/// ranger-08 (their tokens); with a certificate when `tls`. The environment owns the
/// server's folder: keep it for as long as the server runs.
async fn lockout_server(db: &TestDb, tls: bool) -> (ServerEnv, Server, String, String) {
    let mut env = ServerEnv::new(db);
    env.enable_ftp();
    env.set("CTDATA__FTP__MAX_LOGIN_FAILURES", "3");
    env.set("CTDATA__FTP__LOCKOUT_SECS", "300");
    if tls {
        let (cert, key) = self_signed(env.dir.path());
        env.set("CTDATA__FTP__TLS_CERT", &cert.display().to_string());
        env.set("CTDATA__FTP__TLS_KEY", &key.display().to_string());
    }
    let token = env.device_token("ranger-07");
    let other = env.device_token("ranger-08");
    let server = env.serve().await;
    (env, server, token, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_out_ftp_device_is_told_so_and_for_how_long() {
    let Some(db) = pg().await else { return };
    let (_env, server, token, other) = lockout_server(&db, false).await;
    let r = ftplib(
        server.ftp_port(),
        false,
        serde_json::json!([
            ["login", "ranger-07", BAD],
            ["login", "ranger-07", BAD],
            ["login", "ranger-07", BAD],
            ["login", "ranger-07", token],
            ["login", "ranger-08", other],
        ]),
    );
    eprintln!("ftplib saw: {r:?}");
    for (i, res) in r.iter().take(4).enumerate() {
        assert_eq!(code(res), "530", "login {i}: {r:?}");
    }
    // A wrong token before the limit is just refused.
    for res in &r[..2] {
        assert!(!said(res).contains("Locked out"), "{r:?}");
    }
    // The failure that reaches the limit, and the right token afterwards, are told why
    // and for how long, ahead of libunftp's own final line.
    for res in &r[2..4] {
        let text = said(res);
        assert!(
            text.starts_with(
                "530-Locked out for 5 more minutes after 3 failed logins for this name \
                 from this address"
            ),
            "{text}"
        );
        assert!(text.ends_with("\n530 Authentication failed"), "{text}");
    }
    assert!(ok(&r[4]), "another device is not locked out: {r:?}");
    assert!(server.terminate().success());
}

/// On a server that offers FTPS, a device locked out over TLS gets only libunftp's fixed
/// line (nothing can be added to the encrypted stream) and its connection stays sound;
/// the same device over plain FTP is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ftps_on_offer_only_plain_sessions_get_the_line_and_none_is_garbled() {
    let Some(db) = pg().await else { return };
    let (_env, server, token, other) = lockout_server(&db, true).await;
    let port = server.ftp_port();
    // Three refusals on one TLS connection, then another device logs in on it.
    let ops = serde_json::json!([
        ["login", "ranger-07", BAD],
        ["again", "ranger-07", BAD],
        ["again", "ranger-07", BAD],
        ["again", "ranger-08", other],
    ]);
    let mut r = ftplib(port, true, ops.clone());
    // libunftp 0.24 queues its switch to TLS before it answers AUTH TLS with 234, and
    // its control loop (an unbiased select) may read the client's TLS hello as an FTP
    // command first; the client then sees "wrong version number" at once. That race
    // is libunftp's and random; a line of ours in the TLS stream would garble every
    // attempt, so a second or third attempt tells the two apart.
    for _ in 0..2 {
        if !said(&r[0]).contains("WRONG_VERSION_NUMBER") {
            break;
        }
        eprintln!("libunftp's AUTH TLS race, trying again: {r:?}");
        r = ftplib(port, true, ops.clone());
    }
    eprintln!("ftplib over TLS saw: {r:?}");
    for res in &r[..3] {
        assert_eq!(said(res), "530 Authentication failed", "{r:?}");
    }
    assert!(
        ok(&r[3]),
        "the TLS session is sound after the lockout: {r:?}"
    );

    let r = ftplib(
        port,
        false,
        serde_json::json!([["login", "ranger-07", token]]),
    );
    assert!(
        said(&r[0]).starts_with("530-Locked out for 5 more minutes"),
        "{r:?}"
    );
    assert!(server.terminate().success());
}

const PASSWORD: &str = "a long enough password";

/// Each request's status code and Retry-After (empty when none), for requests split
/// by `--next` in one curl process from local address `from`.
fn answers(from: &str, requests: &[Vec<String>]) -> Vec<(u16, String)> {
    let mut args: Vec<String> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if i > 0 {
            args.push("--next".into());
        }
        args.extend(
            [
                "-s",
                "--interface",
                from,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %header{retry-after}\\n",
            ]
            .map(String::from),
        );
        args.extend(r.iter().cloned());
    }
    let out = Command::new("curl").args(&args).output().expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (code, retry) = l.split_once(' ').unwrap_or((l, ""));
            (code.parse().expect("a status code"), retry.trim().into())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_administrator_guessed_from_many_addresses_is_limited_per_account() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    env.admin_token();
    let server = env.serve().await;
    let devices = format!("{}/api/v1/devices", server.http_base());
    let guess = |n: usize| {
        vec![
            "-u".to_string(),
            format!("alice:wrong {n}"),
            devices.clone(),
        ]
    };

    // Six guesses from each of 127.0.0.2 … 127.0.0.50, one address after another. Per
    // address alone, five of each six would be checked (245 in all).
    const ROUNDS: usize = 6;
    let started = Instant::now();
    let (mut checked, mut refused) = (0, 0);
    for host in 2..=50 {
        let from = format!("127.0.0.{host}");
        let got = answers(&from, &(0..ROUNDS).map(guess).collect::<Vec<_>>());
        assert_eq!(got.len(), ROUNDS, "{from}: {got:?}");
        for (status, retry) in got {
            match status {
                401 => checked += 1,
                429 => {
                    refused += 1;
                    let secs: u64 = retry.parse().expect("a Retry-After in seconds");
                    assert!((1..=300).contains(&secs), "{secs}");
                }
                other => panic!("{from}: {other}"),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} guesses for one administrator from 49 addresses in {secs:.1} s: {checked} checked \
         (401), {refused} refused (429)",
        49 * ROUNDS
    );
    // Ten failures from any address put the account under attack; from then on each
    // address gets one guess a minute (its first). (A slow machine may take more than
    // one minute.)
    let minutes = (secs / 60.0).ceil().max(1.0) as usize;
    assert!(
        checked <= minutes * (10 + 49),
        "{checked} of {} guesses checked",
        49 * ROUNDS
    );

    // Meanwhile the right password from an address that has not failed gets in at once;
    // from one that failed a moment ago it waits at most a minute (Retry-After).
    let right = vec![
        "-u".to_string(),
        format!("alice:{PASSWORD}"),
        devices.clone(),
    ];
    let got = answers("127.0.0.51", std::slice::from_ref(&right));
    assert_eq!(got[0].0, 200, "{got:?}");
    let got = answers("127.0.0.50", std::slice::from_ref(&right));
    assert_eq!(got[0].0, 429, "{got:?}");
    let retry: u64 = got[0].1.parse().expect("a Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(server.terminate().success());
}

/// The field client's connection test tells a locked-out ranger that it is a lockout,
/// not a wrong token, and keeps saying so when the right token is tried too soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_field_client_says_the_device_is_locked_out() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    env.set("CTDATA__FTP__MAX_LOGIN_FAILURES", "3");
    env.set("CTDATA__FTP__LOCKOUT_SECS", "300");
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let url = format!("ftp://127.0.0.1:{}/", server.ftp_port());
    let client = Client::new();
    let init = |secret: &str| {
        client.ok(&[
            "init",
            "--protocol",
            "ftp",
            "--url",
            &url,
            "--device",
            "ranger-07",
            "--user",
            "ranger-07",
            "--token",
            secret,
        ]);
    };
    let test = || {
        let out = client.run(&["test"]);
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    init("not-the-token");
    for attempt in 1..=2 {
        let text = test();
        assert!(
            text.contains("✗ log in: the FTP server refused user"),
            "{attempt}: {text}"
        );
        assert!(!text.contains("has locked out"), "{attempt}: {text}");
    }
    let text = test();
    assert!(
        text.contains("✗ log in: the FTP server has locked out user \"ranger-07\"")
            && text.contains("Locked out for 5 more minutes"),
        "{text}"
    );
    init(&token);
    let text = test();
    assert!(text.contains("has locked out user"), "{text}");
    drop(server);
}
