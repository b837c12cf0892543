//! Headless Chromium driven over WebDriver (chromedriver on a free loopback port), with
//! curl as the HTTP client: the real browser the dashboard is used with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::free_port;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    /// The browser's profile and downloads; removed with the browser.
    pub dir: tempfile::TempDir,
}

/// The program's path, if `program` is a path that exists or a name found on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.is_absolute() {
        return p.exists().then(|| p.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn call(method: &str, url: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-X", method, url]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = cmd.output().map_err(|e| format!("run curl: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
    match v.get("value") {
        Some(inner) if inner.get("error").is_some() => Err(inner.to_string()),
        Some(inner) => Ok(inner.clone()),
        None => Ok(v),
    }
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium with a 1366×768 window;
    /// downloads go to `self.download_dir()`. `None` (the caller skips, saying so) when
    /// either is not installed, except under CI, where that fails the test.
    pub fn start() -> Option<Browser> {
        for (program, package) in [
            ("chromedriver", "chromium-driver"),
            ("/usr/bin/chromium", "chromium"),
        ] {
            if which(program).is_none() {
                let why = format!("{program} is not installed (apt-get install {package})");
                assert!(std::env::var_os("CI").is_none(), "CI is set but {why}");
                eprintln!("SKIPPED: {why}");
                return None;
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let downloads = dir.path().join("downloads");
        std::fs::create_dir_all(&downloads).expect("downloads dir");
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (Debian package chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while call("GET", &format!("{base}/status"), None).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = dir.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1366,768",
                    format!("--user-data-dir={}", profile.display())],
                "prefs": {"download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false}
            }
        }}});
        let created = call("POST", &format!("{base}/session"), Some(&caps))
            .unwrap_or_else(|e| panic!("start Chromium: {e}"));
        let session = created["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        Some(Browser {
            driver,
            base,
            session,
            dir,
        })
    }

    pub fn download_dir(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        call(method, &url, body.as_ref())
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element `css` selects, waiting up to 10 s for it to appear.
    pub fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = format!("{}/session/{}/element", self.base, self.session);
            let body = json!({"using": "css selector", "value": css});
            match call("POST", &url, Some(&body)) {
                Ok(v) => return v[ELEMENT].as_str().expect("element id").to_string(),
                Err(e) => assert!(Instant::now() < deadline, "no element {css}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn count(&self, css: &str) -> usize {
        let v = self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array().map_or(0, Vec::len)
    }

    pub fn click(&self, css: &str) {
        self.on_element(css, "POST", "/click", Some(json!({})));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "POST", "/clear", Some(json!({})));
        self.on_element(css, "POST", "/value", Some(json!({ "text": text })));
    }

    /// Sets the file of an `<input type=file>`, as picking it in the file dialog would.
    pub fn choose_file(&self, css: &str, path: &Path) {
        let file = path.display().to_string();
        self.on_element(css, "POST", "/value", Some(json!({ "text": file })));
    }

    /// Runs a command on the element `css` selects. A page that re-renders between
    /// finding the element and using it leaves a stale reference; the element is then
    /// found again, for up to 10 s.
    fn on_element(&self, css: &str, method: &str, what: &str, body: Option<Value>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let id = self.find(css);
            let url = format!("{}/session/{}/element/{id}{what}", self.base, self.session);
            match call(method, &url, body.as_ref()) {
                Ok(v) => return v,
                Err(e) if e.contains("stale element") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("WebDriver {method} {css}{what}: {e}"),
            }
        }
    }

    pub fn text(&self, css: &str) -> String {
        let v = self.on_element(css, "GET", "/text", None);
        v.as_str().unwrap_or_default().to_string()
    }

    pub fn property(&self, css: &str, name: &str) -> String {
        let v = self.on_element(css, "GET", &format!("/property/{name}"), None);
        v.as_str().unwrap_or_default().to_string()
    }

    /// Waits up to 10 s until the text of `css` contains `needle`; returns the text.
    pub fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.text(css);
            if t.contains(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {needle:?}; it shows {t:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        let url = format!("{}/session/{}/cookie/{name}", self.base, self.session);
        let v = call("GET", &url, None).ok()?;
        v["value"].as_str().map(str::to_string)
    }

    pub fn set_size(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    /// Runs `script`, the body of a function whose `arguments` are `args`, in the page;
    /// what it returns.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// A real mouse click (move, press, release) at viewport coordinates.
    pub fn click_at(&self, x: i64, y: i64) {
        let mouse = json!({"actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "duration": 0, "origin": "viewport", "x": x, "y": y},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0}
            ]
        }]});
        self.cmd("POST", "/actions", Some(mouse));
        self.cmd("DELETE", "/actions", None);
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let v = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 screenshot"))
            .expect("decode screenshot");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("screenshot dir");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = call("DELETE", &url, None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
