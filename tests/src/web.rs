//! The dashboard as curl sees it: requests with their status, headers and body, and
//! signing in as a browser does (the sign-in page first, for its login CSRF cookie and
//! field).

use std::process::Command;

/// curl with extra arguments: the status, the response headers and the body.
pub fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap();
    let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        code.trim().parse().unwrap(),
        headers.to_string(),
        body.to_string(),
    )
}

/// The value of the page's CSRF form field.
pub fn csrf_of(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    body[at..at + 64].to_string()
}

/// Posts the sign-in form (`form` without its CSRF field) as a browser would.
pub fn login_post(base: &str, form: &str) -> (u16, String, String) {
    let jar = tempfile::NamedTempFile::new().unwrap();
    let jar = jar.path().to_str().unwrap();
    let (_, _, page) = curl(&["-c", jar, &format!("{base}/login")]);
    let form = format!("{form}&csrf={}", csrf_of(&page));
    curl(&["-b", jar, "-d", &form, &format!("{base}/login")])
}

/// Signs in; the status and the session token from Set-Cookie, if one was set.
pub fn sign_in(base: &str, name: &str, password: &str) -> (u16, Option<String>) {
    let form = format!("name={name}&password={}", password.replace(' ', "+"));
    let (code, headers, _) = login_post(base, &form);
    let token = headers.lines().find_map(|l| {
        let v = l.strip_prefix("set-cookie: ctdata_session=")?;
        Some(v.split(';').next()?.to_string())
    });
    (code, token)
}
