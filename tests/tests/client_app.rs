//! `ctdata app`, the ranger's window, in a real headless Chromium against the real
//! `ctdata-server`: every control, a failing connection, a send of 10,000 sightings
//! seen in progress over a slow loopback link, and the run's key (curl).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ctdata_tests::batch::Batch;
use ctdata_tests::browser::Browser;
use ctdata_tests::client::Client;
use ctdata_tests::link::{Conditions, Link};
use ctdata_tests::{both_backends, eventually, free_port, Backend, ServerEnv, TestDb};

fn shots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/app-screenshots")
}

/// The viewport at a laptop's width and at a phone's (390 px), with `id` in view.
fn screenshots(b: &Browser, name: &str, id: &str) {
    let show = format!("document.getElementById('{id}').scrollIntoView({{block: 'start'}})");
    b.execute(&show, serde_json::json!([]));
    b.screenshot(&shots().join(format!("{name}-1366x768.png")));
    b.set_size(390, 844);
    b.execute(&show, serde_json::json!([]));
    b.screenshot(&shots().join(format!("{name}-390.png")));
    b.set_size(1366, 768);
}

/// A running `ctdata app --no-browser` and the address it printed.
struct App {
    child: Child,
    url: String,
    base: String,
    key: String,
    _out: tempfile::TempDir,
}

impl App {
    async fn start(client: &Client) -> App {
        let out = tempfile::tempdir().unwrap();
        let printed = out.path().join("app.out");
        let child = client
            .command(&["app", "--no-browser"])
            .stdout(std::fs::File::create(&printed).unwrap())
            .stderr(std::fs::File::create(out.path().join("app.err")).unwrap())
            .spawn()
            .expect("start ctdata app");
        let url = eventually("the app's address", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&printed).unwrap_or_default();
            let url = text
                .lines()
                .find_map(|l| l.strip_prefix("ctdata app: open "))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string);
            std::future::ready(url)
        })
        .await;
        let (base, key) = url.split_once("/?key=").expect("key in the address");
        App {
            base: base.to_string(),
            key: key.to_string(),
            url: url.clone(),
            child,
            _out: out,
        }
    }

    /// Waits for the program to end by itself; its exit status.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let child = &mut self.child;
        eventually("the app to stop", Duration::from_secs(30), || {
            std::future::ready(child.try_wait().unwrap())
        })
        .await
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `secs` until `css` shows `needle`; its text.
fn wait_for(b: &Browser, css: &str, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let t = b.text(css);
        if t.contains(needle) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed {needle:?}; it shows {t:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn select(b: &Browser, id: &str, value: &str) {
    let script = "const e = document.getElementById(arguments[0]); e.value = arguments[1]; \
                  e.dispatchEvent(new Event('change'));";
    b.execute(script, serde_json::json!([id, value]));
}

fn settings(b: &Browser, url: &str, device: &str, token: &str) {
    select(b, "s-protocol", "https");
    b.type_into("#s-url", url);
    b.type_into("#s-device", device);
    b.type_into("#s-token", token);
    b.click("#save-settings");
    wait_for(b, "#settings-msg", "Saved: device ranger-07", 20);
}

async fn sightings(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM sightings").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_of_the_window_in_chromium() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let client = Client::new();
    let mut app = App::start(&client).await;
    let Some(b) = Browser::start() else { return };
    b.goto(&app.url);

    // First start: nothing set up; the page says so in words.
    wait_for(&b, "#setup-problem", "ctdata init", 10);
    screenshots(&b, "01-first-start", "send-card");

    // Settings pointing at a port nothing listens on: the test names the failing step.
    let dead = format!("http://127.0.0.1:{}", free_port());
    settings(&b, &dead, "ranger-07", &token);
    b.click("#test-btn");
    let steps = wait_for(&b, "#test-steps", "does not work", 30);
    assert!(steps.contains("✓resolve host"), "{steps}");
    assert!(steps.contains("✗connect"), "{steps}");
    assert!(steps.contains("refused the connection"), "{steps}");
    screenshots(&b, "02-test-failed", "test-btn");

    // The right address; the saved token is kept when the field is left empty.
    b.type_into("#s-url", &server.http_base());
    b.click("#save-settings");
    wait_for(&b, "#settings-msg", "Saved: device ranger-07", 20);
    b.click("#test-btn");
    let steps = wait_for(&b, "#test-steps", "The connection works", 30);
    assert!(steps.contains("✓log in"), "{steps}");
    assert!(!steps.contains('✗'), "{steps}");
    let config = std::fs::read_to_string(client.path("config.toml")).unwrap();
    assert!(config.contains(&token), "the token was kept");
    assert!(
        !config.contains("[download]"),
        "download is the same as upload"
    );

    // Download settings of their own, then back to "same as upload".
    b.click("#d-same");
    b.type_into("#d-url", &server.http_base());
    b.type_into("#d-token", "download-token-1");
    b.click("#save-settings");
    wait_for(&b, "#settings-msg", "downloads come from", 20);
    let config = std::fs::read_to_string(client.path("config.toml")).unwrap();
    assert!(config.contains("[download]") && config.contains("download-token-1"));
    b.click("#d-same");
    b.click("#save-settings");
    wait_for(&b, "#settings-msg", "Saved: device ranger-07", 20);
    let config = std::fs::read_to_string(client.path("config.toml")).unwrap();
    assert!(!config.contains("[download]"), "{config}");

    // Record a sighting: the time is filled in; position, species and the rest typed.
    assert!(!b.property("#r-at", "value").is_empty(), "time prefilled");
    b.type_into("#r-lat", "-24.0123");
    b.type_into("#r-lon", "31.4567");
    b.type_into("#r-species", "Panthera leo");
    b.type_into("#r-count", "3");
    b.type_into("#r-observer", "T. Mokoena");
    b.type_into("#r-notes", "by the river");
    b.click("#record-btn");
    wait_for(&b, "#record-msg", "Saved", 20);
    let recent = wait_for(&b, "#recent", "Panthera leo", 10);
    assert!(recent.contains("by the river") && recent.contains("not sent yet"));
    // A bad latitude is refused in words, nothing recorded.
    b.type_into("#r-lat", "124");
    b.click("#record-btn");
    wait_for(&b, "#record-msg", "not a latitude", 20);

    // Import a CSV from another tool.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("patrol-north.csv");
    std::fs::write(&csv, Batch::new("ranger-07", 5).csv()).unwrap();
    b.choose_file("#import-file", &csv);
    b.click("#import-btn");
    let said = wait_for(&b, "#import-msg", "5 sightings", 20);
    assert!(said.starts_with("patrol-north.csv"), "{said}");
    // The same file again is recognised.
    b.click("#import-btn");
    wait_for(&b, "#import-msg", "already imported", 20);
    // A batch the server will refuse (a latitude of 91), left in the outbox by hand.
    let bad = Batch::new("ranger-07", 2).each(|i, s| {
        if i == 1 {
            s.latitude = 91.0
        }
    });
    std::fs::write(client.path("outbox/000090-bad.ndjson"), bad.ndjson()).unwrap();
    wait_for(&b, "#pending", "Batch 90 (2 sightings)", 10);
    screenshots(&b, "03-waiting", "send-card");

    // Tap to send: stored, one refused with the server's reason.
    b.click("#send");
    let result = wait_for(&b, "#send-result", "Sent: 6 sightings in 2 batches", 60);
    assert!(result.contains("stored by the server"), "{result}");
    assert!(result.contains("1 batch refused"), "{result}");
    let refused = wait_for(&b, "#refused", "Batch 90", 10);
    assert!(refused.contains("422"), "{refused}");
    assert!(refused.contains("91"), "{refused}");
    let sent = wait_for(&b, "#sent", "stored by the server: 5 new sightings", 10);
    assert!(sent.contains("1 new sightings"), "{sent}");
    assert_eq!(sightings(&db).await, 6);
    wait_for(&b, "#pending", "Nothing is waiting", 10);
    screenshots(&b, "04-sent", "send-card");
    screenshots(&b, "05-lists", "recent");

    // The server goes away: the next send fails and the batch waits, with the cause.
    assert!(server.terminate().success());
    b.type_into("#r-lat", "-24.1");
    b.type_into("#r-species", "Syncerus caffer");
    b.click("#record-btn");
    wait_for(&b, "#record-msg", "Saved", 20);
    b.click("#send");
    let result = wait_for(&b, "#send-result", "Not sent", 60);
    assert!(result.contains("1 batch waiting"), "{result}");
    let why = b.text("#send-detail");
    assert!(why.contains("connection refused"), "{why}");
    let pending = wait_for(&b, "#pending", "not sent: the last try failed", 10);
    assert!(pending.contains("connection refused"), "{pending}");
    screenshots(&b, "06-send-failed", "send-card");

    // Auto-send on: it tries at once, says when, and when it tries next.
    select(&b, "autosend-every", "1m");
    b.click("#autosend-on");
    wait_for(&b, "#autosend-msg", "auto-send is on: every 1m", 20);
    wait_for(&b, "#autosend-info", "On, every minute", 30);
    let info = wait_for(&b, "#autosend-info", "failed", 30);
    assert!(info.starts_with("On, every minute"), "{info}");
    assert!(info.contains("Last try: today"), "{info}");
    assert!(info.contains("Next try: today"), "{info}");
    screenshots(&b, "07-autosend", "autosend-info");
    b.click("#autosend-on");
    wait_for(&b, "#autosend-info", "Off", 30);
    assert!(client.log_text().contains("autosend stopped"));

    // Sync off and on.
    b.click("#sync-toggle");
    wait_for(&b, "#sync-state", "Sync is off", 20);
    b.click("#sync-toggle");
    wait_for(&b, "#sync-state", "Sync is on", 20);

    // Delete: the confirmation names the unsent batch; Cancel keeps it.
    b.click("#purge-btn");
    let asked = b.text("#purge-text");
    assert!(
        asked.contains("deletes 1 unsent batch (1 sighting)"),
        "{asked}"
    );
    assert_eq!(b.text("#purge-yes"), "Yes, delete 1 unsent batch");
    screenshots(&b, "08-purge-confirm", "purge-confirm");
    b.click("#purge-no");
    assert_eq!(client.batches_in("outbox").len(), 1);
    b.click("#purge-btn");
    b.click("#purge-yes");
    wait_for(&b, "#sync-msg", "Deleted", 30);
    assert!(client.batches_in("outbox").is_empty());
    wait_for(&b, "#pending", "Nothing is waiting", 10);

    // Close from the page: the program ends.
    b.click("#quit");
    wait_for(&b, "#stopped", "CTData has stopped", 10);
    assert!(app.exited().await.success());
}

/// A POST without this run's key, from another origin or to another host name is
/// refused; the page itself needs the key too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_page_with_the_runs_key_can_drive_it() {
    let share = tempfile::tempdir().unwrap();
    let client = Client::new();
    client.init_share(share.path(), "ranger-07", &[]);
    let mut app = App::start(&client).await;
    let curl = |args: &[&str]| -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.parse().expect("status"), body.to_string())
    };
    let record = format!("{}/api/record", app.base);
    let body = r#"{"lat":"-24.1","lon":"31.5","species":"Panthera leo"}"#;
    let key = format!("x-ctdata-key: {}", app.key);
    let json = "content-type: application/json";

    assert_eq!(curl(&[&format!("{}/", app.base)]).0, 403);
    assert_eq!(curl(&[&format!("{}/?key=wrong", app.base)]).0, 403);
    assert_eq!(curl(&[&app.url]).0, 200);

    let (code, said) = curl(&["-H", json, "-d", body, &record]);
    assert_eq!(code, 403, "{said}");
    assert!(said.contains("key"), "{said}");
    let wrong = "x-ctdata-key: 0000";
    assert_eq!(curl(&["-H", json, "-H", wrong, "-d", body, &record]).0, 403);
    let evil = "Origin: http://evil.example";
    let (code, said) = curl(&["-H", json, "-H", &key, "-H", evil, "-d", body, &record]);
    assert_eq!(code, 403, "{said}");
    assert!(said.contains("another site"), "{said}");
    // DNS rebinding: the right key, but the browser thinks it talks to another host.
    let port = app.base.rsplit(':').next().unwrap();
    let host = format!("Host: rebound.example:{port}");
    assert_eq!(
        curl(&["-H", json, "-H", &key, "-H", &host, "-d", body, &record]).0,
        403
    );
    assert!(!client.path("open.ndjson").exists(), "nothing recorded");
    let purge = format!("{}/api/purge", app.base);
    assert_eq!(curl(&["-H", json, "-d", r#"{"unsent":0}"#, &purge]).0, 403);
    assert_eq!(
        curl(&["-X", "POST", &format!("{}/api/quit", app.base)]).0,
        403
    );

    // The page's own call: recorded.
    let own = format!("Origin: {}", app.base);
    let (code, said) = curl(&["-H", json, "-H", &key, "-H", &own, "-d", body, &record]);
    assert_eq!(code, 200, "{said}");
    let open = std::fs::read_to_string(client.path("open.ndjson")).unwrap();
    assert_eq!(open.lines().count(), 1);
    // A purge whose confirmation named another number deletes nothing.
    let (code, said) = curl(&["-H", json, "-H", &key, "-d", r#"{"unsent":0}"#, &purge]);
    assert_eq!(code, 409, "{said}");
    assert!(said.contains("now 1 unsent"), "{said}");
    assert!(client.path("open.ndjson").exists());

    let quit = format!("{}/api/quit", app.base);
    assert_eq!(curl(&["-X", "POST", "-H", &key, &quit]).0, 200);
    assert!(app.exited().await.success());
}

/// The progress bar's value and maximum.
fn bar(b: &Browser) -> (f64, f64) {
    let v = b.execute(
        "const e = document.getElementById('send-bar'); return [e.value, e.max];",
        serde_json::json!([]),
    );
    (v[0].as_f64().unwrap_or(-1.0), v[1].as_f64().unwrap_or(-1.0))
}

both_backends!(ten_thousand_sightings_show_their_progress_then_the_receipt);

async fn ten_thousand_sightings_show_their_progress_then_the_receipt(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let target = server
        .http_base()
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    // Long notes make the batch some megabytes: more than the sockets between the
    // client and the held relay can buffer, so the held bytes show as part-way.
    let notes = "seen at the waterhole, moving north; ".repeat(12);
    let field = Batch::new("ranger-07", 10_000).each(|_, s| {
        s.attributes
            .insert("notes".into(), serde_json::Value::String(notes.clone()));
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("field-day.ndjson");
    std::fs::write(&file, field.ndjson()).unwrap();
    // A slow link (64 kB/s each way): the upload goes in resumable pieces, each
    // acknowledged by the server, so the page shows the acknowledged bytes part-way
    // for as long as the link stays slow; the test then lifts the limit.
    let slow = Conditions {
        bytes_per_sec: Some(64 * 1024),
        ..Conditions::default()
    };
    let link = Link::new(target, slow);
    let client = Client::new();
    client.init_https(
        &format!("http://127.0.0.1:{}", link.port()),
        "ranger-07",
        &token,
    );
    let app = App::start(&client).await;
    let Some(b) = Browser::start() else { return };
    b.goto(&app.url);
    b.choose_file("#import-file", &file);
    b.click("#import-btn");
    wait_for(&b, "#import-msg", "10000 sightings", 60);
    let sealed = client.batches_in("outbox");
    assert_eq!(sealed.len(), 1, "{sealed:?}");
    let total = std::fs::metadata(client.path("outbox").join(&sealed[0]))
        .unwrap()
        .len();

    b.click("#send");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (value, max) = loop {
        let (value, max) = bar(&b);
        if value > 0.0 && value < max {
            break (value, max);
        }
        assert!(
            Instant::now() < deadline,
            "the bar never showed acknowledged bytes part-way: {value} of {max}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The bar counts the bytes that go on the wire: the gzipped batch, never more
    // than the batch itself.
    assert!(max as u64 <= total, "{max} of a {total}-byte batch");
    let shown = b.text("#send-status");
    assert!(shown.contains(" of "), "{shown} ({value} of {max})");
    assert_eq!(b.text("#send").trim(), "Sending…");
    screenshots(&b, "09-sending", "send-card");

    link.set(Conditions::default());
    let result = wait_for(&b, "#send-result", "Sent: 10000 sightings", 180);
    assert!(result.contains("stored by the server"), "{result}");
    wait_for(&b, "#sent", "stored by the server: 10000 new sightings", 10);
    assert_eq!(sightings(&db).await, 10_000);
    screenshots(&b, "10-stored", "send-card");
    assert!(server.terminate().success());
}
