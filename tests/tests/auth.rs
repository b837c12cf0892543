//! Logins under attack, with curl against the real `ctdata-server serve`: password
//! guessing is throttled per name and client (and cannot be reset by an open route),
//! a reverse proxy's clients are told apart, unknown names cost a password check,
//! the sign-in form has its own CSRF token, and pages are neither framed nor cached.

use std::process::Command;
use std::time::Instant;

use ctdata_tests::{both_backends, ServerEnv, TestDb};

const PASSWORD: &str = "a long enough password";

both_backends! {
    guessing_with_healthz_in_between_is_throttled,
    a_failing_device_behind_a_trusted_proxy_locks_out_no_one_else,
    unknown_administrator_names_cost_a_password_check,
    sign_in_form_has_its_own_csrf_token_and_pages_are_not_framed_or_cached,
}

/// Each request's status code and Retry-After (empty when none); `args` may hold
/// several requests split by `--next` (one connection, one process).
fn answers(args: &[String]) -> Vec<(u16, String)> {
    let out = Command::new("curl").args(args).output().expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (code, retry) = l.split_once(' ').unwrap_or((l, ""));
            (
                code.parse().expect("a status code"),
                retry.trim().to_string(),
            )
        })
        .collect()
}

/// One request's options for `batch`.
fn request(url: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %header{retry-after}\\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url.to_string());
    args
}

fn batch_answers(requests: Vec<Vec<String>>) -> Vec<(u16, String)> {
    let mut args = Vec::new();
    for (i, r) in requests.into_iter().enumerate() {
        if i > 0 {
            args.push("--next".to_string());
        }
        args.extend(r);
    }
    answers(&args)
}

fn batch(requests: Vec<Vec<String>>) -> Vec<u16> {
    batch_answers(requests)
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

/// How many failures the throttle can let through in `secs`: five free ones, then
/// one more per doubling wait (1 s, 2 s, 4 s …), however fast the machine is.
fn allowed_failures(secs: f64) -> usize {
    5 + (secs + 1.0).log2().ceil() as usize + 1
}

fn add_admin(env: &ServerEnv, name: &str) {
    use std::io::Write;
    let mut child = env
        .command(&["admin", "add", name])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// The attack: 200 wrong administrator passwords, each followed by an
/// unauthenticated `GET /healthz` (which used to clear the count).
async fn guessing_with_healthz_in_between_is_throttled(db: TestDb) {
    let env = ServerEnv::new(&db);
    env.admin_token();
    add_admin(&env, "bob");
    let server = env.serve().await;
    let base = server.http_base();
    let devices = format!("{base}/api/v1/devices");
    let healthz = format!("{base}/healthz");

    let (alice, bob) = (format!("alice:{PASSWORD}"), format!("bob:{PASSWORD}"));
    let mut requests = Vec::new();
    for i in 0..200 {
        let guess = format!("alice:wrong password {i}");
        requests.push(request(&devices, &["-u", &guess]));
        requests.push(request(&healthz, &[]));
    }
    // Then, at once: the right password does not unlock the name from this address
    // either, while another administrator there is not locked out.
    requests.push(request(&devices, &["-u", &alice]));
    requests.push(request(&devices, &["-u", &bob]));
    requests.push(request(&devices, &["-u", "bob:wrong"]));
    requests.push(request(&devices, &["-u", &bob]));
    let started = Instant::now();
    let got = batch_answers(requests);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(got.len(), 404, "{got:?}");
    let guesses: Vec<u16> = got[..400].iter().step_by(2).map(|a| a.0).collect();
    assert!(got[..400].iter().skip(1).step_by(2).all(|a| a.0 == 200));
    let checked = guesses.iter().filter(|c| **c == 401).count();
    let throttled = guesses.iter().filter(|c| **c == 429).count();
    assert_eq!(checked + throttled, 200, "{guesses:?}");
    assert!(
        checked <= allowed_failures(secs),
        "{checked} passwords checked in {secs:.1} s: {guesses:?}"
    );
    eprintln!(
        "200 guesses in {secs:.1} s: {checked} checked (401), {throttled} refused (429); \
         at most {} guesses checked in the first minute",
        allowed_failures(60.0)
    );
    let after: Vec<u16> = got[400..].iter().map(|a| a.0).collect();
    assert_eq!(after, vec![429, 200, 401, 200]);
    let retry: u64 = got[400].1.parse().expect("a Retry-After in seconds");
    assert!((1..=300).contains(&retry), "{retry}");
    assert!(server.terminate().success());
}

/// Behind a reverse proxy (here: curl on 127.0.0.1, listed in http.trusted_proxies,
/// sending X-Forwarded-For) one device with a wrong token must not lock out the
/// others or the administrator.
async fn a_failing_device_behind_a_trusted_proxy_locks_out_no_one_else(db: TestDb) {
    let env = ServerEnv::new(&db);
    let admin = env.admin_token();
    let good = env.device_token("ranger-01");
    env.device_token("ranger-02");
    std::fs::write(
        env.dir.path().join("ctdata.toml"),
        "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .unwrap();
    let server = env.serve().await;
    let base = server.http_base();
    let whoami = format!("{base}/api/v1/whoami");
    let devices = format!("{base}/api/v1/devices");
    let from = |ip: &str| format!("X-Forwarded-For: {ip}");
    let (bad_client, good_client) = (from("192.0.2.2"), from("192.0.2.1"));

    // The bad device keeps trying its old token; and, from the good device's own
    // address, some software sends a token that matches nothing.
    let mut requests = Vec::new();
    for _ in 0..20 {
        requests.push(request(
            &whoami,
            &["-H", &bad_client, "-u", "ranger-02:ctd_old_token"],
        ));
    }
    for _ in 0..20 {
        requests.push(request(
            &whoami,
            &[
                "-H",
                &good_client,
                "-H",
                "Authorization: Bearer ctd_unknown",
            ],
        ));
    }
    let bad_bearer = format!("Authorization: Bearer {good}");
    requests.push(request(&whoami, &["-H", &good_client, "-H", &bad_bearer]));
    requests.push(request(
        &whoami,
        &["-H", &good_client, "-u", &format!("ranger-01:{good}")],
    ));
    let admin_auth = format!("Authorization: Bearer {admin}");
    requests.push(request(&devices, &["-H", &bad_client, "-H", &admin_auth]));
    requests.push(request(
        &devices,
        &["-H", &good_client, "-u", &format!("alice:{PASSWORD}")],
    ));
    let started = Instant::now();
    let got = batch(requests);
    let allowed = allowed_failures(started.elapsed().as_secs_f64());
    assert_eq!(got.len(), 44, "{got:?}");
    let bad = &got[..20];
    let unknown = &got[20..40];
    for tries in [bad, unknown] {
        let failed = tries.iter().filter(|c| **c == 401).count();
        assert!(failed <= allowed && tries.contains(&429), "{got:?}");
        assert!(tries.iter().all(|c| [401, 429].contains(c)), "{got:?}");
    }
    assert_eq!(&got[40..], &[200, 200, 200, 200], "{got:?}");

    // The header is believed only from the listed proxy: a client elsewhere cannot
    // claim a fresh address per guess. (Every guess here comes straight from
    // 127.0.0.2, not a trusted proxy, each claiming another address.)
    let mut requests = Vec::new();
    for i in 0..20 {
        let claim = from(&format!("198.51.100.{i}"));
        requests.push(request(
            &whoami,
            &[
                "--interface",
                "127.0.0.2",
                "-H",
                &claim,
                "-u",
                "ranger-02:ctd_old_token",
            ],
        ));
    }
    let started = Instant::now();
    let got = batch(requests);
    let failed = got.iter().filter(|c| **c == 401).count();
    assert!(
        failed <= allowed_failures(started.elapsed().as_secs_f64()) && got.contains(&429),
        "{got:?}"
    );
    assert!(server.terminate().success());
}

fn password_checks(base: &str) -> i64 {
    let out = Command::new("curl")
        .args(["-s", &format!("{base}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("ctdata_password_checks_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A login as a name that does not exist takes a password check like a real one, so
/// its timing does not tell which administrator names exist.
async fn unknown_administrator_names_cost_a_password_check(db: TestDb) {
    let env = ServerEnv::new(&db);
    env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    let devices = format!("{base}/api/v1/devices");
    let before = password_checks(&base);
    let got = batch(vec![
        request(&devices, &["-u", "nobody:some password"]),
        request(&devices, &["-u", "alice:wrong password"]),
    ]);
    assert_eq!(got, vec![401, 401]);
    assert_eq!(
        password_checks(&base) - before,
        2,
        "the unknown name and the known one each cost one check"
    );
    // The sign-in form, too.
    let jar = tempfile::NamedTempFile::new().unwrap();
    let jar = jar.path().to_str().unwrap();
    let page = curl_text(&["-c", jar, &format!("{base}/login")]);
    let form = format!("name=nobody&password=x&csrf={}", csrf_of(&page));
    let got = batch(vec![request(
        &format!("{base}/login"),
        &["-b", jar, "-d", &form],
    )]);
    assert_eq!(got, vec![401]);
    assert_eq!(password_checks(&base) - before, 3);
    assert!(server.terminate().success());
}

fn curl_text(args: &[&str]) -> String {
    let out = Command::new("curl").arg("-s").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn csrf_of(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    body[at..at + 64].to_string()
}

/// Status and headers (lower case) of one request.
fn head(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

async fn sign_in_form_has_its_own_csrf_token_and_pages_are_not_framed_or_cached(db: TestDb) {
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let base = server.http_base();
    let login = format!("{base}/login");

    // No administrator yet: the sign-in page says how to make the first one.
    let page = curl_text(&[&login]);
    assert!(page.contains("ctdata-server admin add NAME"), "{page}");
    let token = env.admin_token();
    let page = curl_text(&[&login]);
    assert!(!page.contains("id=\"no-admin\""), "{page}");

    // Another site's form posts the right fields but cannot have our cookie: refused,
    // and nobody is signed in. Nor does a cookie with a field that differs pass.
    let form = format!("name=alice&password={}", PASSWORD.replace(' ', "+"));
    let (code, headers) = head(&["-d", &form, &login]);
    assert_eq!(code, 403, "{headers}");
    assert!(!headers.contains("ctdata_session="), "{headers}");
    let jar = tempfile::NamedTempFile::new().unwrap();
    let jar = jar.path().to_str().unwrap();
    let page = curl_text(&["-c", jar, &login]);
    let forged = format!("{form}&csrf={}", "0".repeat(64));
    let (code, _) = head(&["-b", jar, "-d", &forged, &login]);
    assert_eq!(code, 403);
    // From our own page: signed in.
    let good = format!("{form}&csrf={}", csrf_of(&page));
    let (code, headers) = head(&["-b", jar, "-c", jar, "-d", &good, &login]);
    assert_eq!(code, 303, "{headers}");
    assert!(headers.contains("set-cookie: ctdata_session="), "{headers}");

    // Dashboard pages and API answers: never framed, never stored.
    let bearer = format!("Authorization: Bearer {token}");
    let devices = format!("{base}/api/v1/devices");
    let overview = format!("{base}/");
    for args in [
        vec![login.as_str()],
        vec!["-b", jar, &overview],
        vec!["-H", &bearer, &devices],
    ] {
        let (code, headers) = head(&args);
        assert_eq!(code, 200, "{args:?}: {headers}");
        assert!(headers.contains("x-frame-options: deny"), "{headers}");
        assert!(
            headers.contains("content-security-policy: frame-ancestors 'none'"),
            "{headers}"
        );
        assert!(headers.contains("cache-control: no-store"), "{headers}");
    }
    assert!(server.terminate().success());
}
