//! Locked-out logins, with real clients against the real `ctdata-server serve`: an FTP
//! device locked out after wrong tokens is told so and for how long (Python's ftplib),
//! and one administrator guessed at from 49 addresses is limited per account, while
//! the right password from an address that has not failed still gets in (curl).

use std::process::Command;
use std::time::Instant;

use ctdata_tests::ftp::{code, ftplib, ok};
use ctdata_tests::ServerEnv;
use ctdata_tests::{pg, self_signed};

const BAD: &str = "ctd_0000000000000000000000000000000000000000000000000000000000000000";

/// The reply text of a refused operation, all lines.
fn said(r: &serde_json::Value) -> String {
    r["err"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_out_ftp_device_is_told_so_and_for_how_long() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let (cert, key) = self_signed(env.dir.path());
    env.extra_env.extend([
        ("CTDATA__FTP__MAX_LOGIN_FAILURES".into(), "3".into()),
        ("CTDATA__FTP__LOCKOUT_SECS".into(), "300".into()),
        ("CTDATA__FTP__TLS_CERT".into(), cert.display().to_string()),
        ("CTDATA__FTP__TLS_KEY".into(), key.display().to_string()),
    ]);
    let token = env.device_token("ranger-07");
    let other = env.device_token("ranger-08");
    let server = env.serve().await;
    let port = server.ftp_port();

    let r = ftplib(
        port,
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

    // Over TLS nothing can be added to the encrypted stream: the same fixed reply, and
    // the session is not garbled (another device logs in over TLS afterwards).
    let r = ftplib(
        port,
        true,
        serde_json::json!([["login", "ranger-07", token], ["login", "ranger-08", other]]),
    );
    eprintln!("ftplib over TLS saw: {r:?}");
    assert_eq!(said(&r[0]), "530 Authentication failed", "{r:?}");
    assert!(ok(&r[1]), "{r:?}");
    assert!(server.log_text().contains("Locked out for"));
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
