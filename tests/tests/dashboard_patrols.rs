//! The dashboard's Patrols page in a real headless Chromium: the empty state, then a SMART
//! patrol delivered in three pieces over HTTP (Basic auth, as SMART Connect posts) shown
//! as one row with its start, end, duration, distance and observations; its sightings
//! link and the tracks and patrols downloads. Screenshots at 1366×768 and 390 px wide.

use std::path::{Path, PathBuf};

use ctdata_tests::browser::Browser;
use ctdata_tests::ftp::curl;
use ctdata_tests::smart::{metres, name, pieces, DEVICE, PATROL};
use ctdata_tests::ServerEnv;
use ctdata_tests::{both_backends, TestDb};
use serde_json::{json, Value};

const PASSWORD: &str = "a long enough password";

fn shot(b: &Browser, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    b.screenshot(&dir.join(format!("{name}-1366x768.png")));
    b.set_size(390, 844);
    b.screenshot(&dir.join(format!("{name}-390.png")));
    b.set_size(1366, 768);
}

/// The body of `url` fetched with the browser's session cookie, and its status.
fn fetch(url: &str, session: &str) -> (u16, String) {
    let out = curl(&[
        "-b",
        &format!("ctdata_session={session}"),
        "-w",
        "\n%{http_code}",
        url,
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn cells(b: &Browser, table: &str) -> Vec<Vec<String>> {
    let script = "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]\
                  .map(r => [...r.cells].map(c => c.innerText.trim()));";
    serde_json::from_value(b.execute(script, json!([table]))).unwrap()
}

async fn patrols_page(db: TestDb) {
    let env = ServerEnv::new(&db);
    std::fs::write(
        env.dir.path().join("ctdata.toml"),
        "[formats.cybertracker]\nspecies = [\"animal\"]\ncount = [\"Number of animals\"]\n",
    )
    .unwrap();
    env.admin_token();
    let token = env.device_token(DEVICE);
    let server = env.serve().await;
    let base = server.http_base();
    let Some(b) = Browser::start() else {
        return;
    };
    let backend = match db.backend {
        ctdata_tests::Backend::Sqlite => "sqlite",
        ctdata_tests::Backend::Postgres => "postgres",
    };

    b.goto(&format!("{base}/login"));
    b.type_into("#name", "alice");
    b.type_into("#password", PASSWORD);
    b.click("#sign-in");
    b.wait_text("h1", "Overview");
    let session = b.cookie("ctdata_session").expect("session cookie");

    // Before any patrol: the page says so and what would fill it, reached from the menu.
    b.click("nav a[href='/patrols']");
    b.wait_text("h1", "Patrols");
    b.wait_text(
        "#no-patrols",
        "No patrols yet: SMART Mobile devices send them",
    );
    assert_eq!(b.count("#patrols"), 0);
    shot(&b, &format!("12-patrols-empty-{backend}"));

    // The three pieces, the last one first.
    let dir = tempfile::tempdir().unwrap();
    for (n, piece) in pieces().iter().enumerate().rev() {
        let path: PathBuf = dir.path().join(name(n + 1));
        std::fs::write(&path, serde_json::to_vec(piece).unwrap()).unwrap();
        let out = curl(&[
            "-u",
            &format!("{DEVICE}:{token}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", path.display()),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/api/v1/batches"),
        ]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "piece {n}");
    }

    b.goto(&format!("{base}/patrols"));
    b.wait_text("#patrols", PATROL);
    assert_eq!(b.count("#no-patrols"), 0);
    let km = (metres((31.505, -24.905), (31.510, -24.910))
        + metres((31.603, -24.953), (31.610, -24.960)))
        / 1000.0;
    assert_eq!(
        cells(&b, "#patrols"),
        [[
            PATROL,
            DEVICE,
            "2024-06-02 05:00:00",
            "2024-06-02 06:45:00",
            "1 h 45 min",
            &format!("{km:.2}"),
            "2",
            "during this patrol",
        ]]
    );
    shot(&b, &format!("13-patrols-{backend}"));

    // The downloads work with the dashboard session and carry the patrol and its track.
    let href = |id: &str| b.property(&format!("#{id}"), "href");
    let (code, csv) = fetch(&href("dl-patrols-csv"), &session);
    assert_eq!(code, 200, "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("{PATROL},{DEVICE},")),
        "{csv}"
    );
    let (code, json) = fetch(&href("dl-patrols-json"), &session);
    assert_eq!(code, 200, "{json}");
    let patrols: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(patrols[0]["observations"], 2, "{json}");
    let (code, geojson) = fetch(&href("dl-tracks-geojson"), &session);
    assert_eq!(code, 200, "{geojson}");
    let tracks: Value = serde_json::from_str(&geojson).unwrap();
    assert_eq!(tracks["features"][0]["properties"]["device"], DEVICE);
    let (code, points) = fetch(&href("dl-tracks-csv"), &session);
    assert_eq!(code, 200, "{points}");
    assert!(
        points.starts_with("device,time,latitude,longitude"),
        "{points}"
    );
    assert_eq!(points.lines().count(), 6, "{points}");

    // Without the session cookie the same links are refused.
    assert_eq!(fetch(&href("dl-tracks-csv"), "not-a-session").0, 401);

    // Its sightings: the device's, from the start to the stop.
    b.click("#patrols tbody a");
    b.wait_text("h1", "Sightings");
    assert_eq!(b.property("#f-device", "value"), DEVICE);
    let rows = b.wait_text("#sightings", "Loxodonta africana");
    assert!(rows.contains("Diceros bicornis"), "{rows}");
    assert_eq!(b.count("#sightings tbody tr"), 2, "{rows}");
}

both_backends!(patrols_page);
