//! The web dashboard in a real headless Chromium (WebDriver), against the real
//! `ctdata-server serve` and PostgreSQL; sign-in, sessions and CSRF also with curl.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ctdata_tests::browser::Browser;
use ctdata_tests::web::{self, csrf_of, curl, login_post};
use ctdata_tests::{eventually, fixtures, Backend, ServerEnv, TestDb};

const PASSWORD: &str = "a long enough password";

fn shots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots")
}

/// Both sizes: a 1366×768 laptop and a phone.
fn screenshots(b: &Browser, name: &str) {
    b.screenshot(&shots().join(format!("{name}-1366x768.png")));
    b.set_size(412, 915);
    b.screenshot(&shots().join(format!("{name}-phone.png")));
    b.set_size(1366, 768);
}

fn upload(base: &str, token: &str, file: &Path) -> u16 {
    let auth = format!("Authorization: Bearer {token}");
    let data = format!("@{}", file.display());
    curl(&[
        "-H",
        &auth,
        "--data-binary",
        &data,
        &format!("{base}/api/v1/batches"),
    ])
    .0
}

/// Signs in as alice with curl; returns the session token from Set-Cookie.
fn sign_in(base: &str, password: &str) -> (u16, Option<String>) {
    web::sign_in(base, "alice", password)
}

#[tokio::test]
async fn dashboard_in_a_real_browser() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let env = ServerEnv::new(&db);
    env.admin_token();
    let share = tempfile::tempdir().unwrap();
    let folder = share.path().join("CTData");
    std::fs::create_dir_all(folder.join("ranger-06")).unwrap();
    std::fs::copy(
        fixtures().join("good/geojson-basic.geojson"),
        folder.join("ranger-06/a.geojson"),
    )
    .unwrap();
    let config = format!(
        "[[sources]]\nname = \"share\"\nurl = \"{}\"\n",
        folder.display()
    );
    std::fs::write(env.dir.path().join("ctdata.toml"), config).unwrap();
    let server = env.serve().await;
    let base = server.http_base();
    let Some(b) = Browser::start() else {
        return;
    };

    // Sign in: any page sends a stranger to the sign-in form.
    b.goto(&format!("{base}/batches"));
    b.find("#sign-in");
    screenshots(&b, "01-sign-in");
    b.type_into("#name", "alice");
    b.type_into("#password", "wrong password");
    b.click("#sign-in");
    b.wait_text("#login-error", "Wrong name or password");
    b.type_into("#name", "alice");
    b.type_into("#password", PASSWORD);
    b.click("#sign-in");
    b.wait_text("h1", "Overview");
    assert!(b.cookie("ctdata_session").is_some());

    // Register a device: its token is shown once, and works for an upload.
    b.goto(&format!("{base}/devices"));
    b.type_into("#new-device", "ranger-01");
    b.click("#add-device");
    let token = b.text("#token");
    assert!(token.starts_with("ctd_"), "{token}");
    assert_eq!(
        upload(&base, &token, &fixtures().join("good/csv-basic.csv")),
        201
    );
    let bad = fixtures().join("bad/01-truncated-json.json");
    assert_eq!(upload(&base, &token, &bad), 422);
    b.goto(&format!("{base}/devices"));
    b.wait_text("#devices", "ranger-01");
    screenshots(&b, "02-devices");

    // Overview and Batches show the batch.
    b.goto(&format!("{base}/"));
    let totals = b.text("#totals");
    assert!(totals.contains("4\nsightings today"), "{totals}");
    b.wait_text("#batches", "ranger-01");
    b.wait_text("#attention", "1 rejected file");
    screenshots(&b, "03-overview");
    b.goto(&format!("{base}/batches?channel=http"));
    b.wait_text("#batches", "ranger-01");
    screenshots(&b, "04-batches");
    b.click("#batches tbody a");
    b.wait_text("#sightings", "Loxodonta africana");
    screenshots(&b, "05-batch");
    b.goto(&format!("{base}/batches?channel=ftp"));
    b.wait_text("#batches", "No batches.");
    b.goto(&format!("{base}/batches?status=duplicate"));
    b.wait_text("#batches", "No batches.");
    b.goto(&format!("{base}/batches?status=new&device=ranger-01"));
    b.wait_text("#batches", "ranger-01");

    // Rejected: the reason in full; the administrator fixes the file, then reprocesses.
    b.goto(&format!("{base}/rejected"));
    b.wait_text("#rejected", "JSON document ends early");
    screenshots(&b, "06-rejected");
    let stored = db.texts("SELECT stored_path FROM rejections").await;
    let stored = stored[0][0].clone().expect("the rejected file is kept");
    // Download the original: the same bytes as sent.
    let original = b.property("#rejected a.button", "href");
    let session = format!(
        "Cookie: ctdata_session={}",
        b.cookie("ctdata_session").unwrap()
    );
    let (code, _, body) = curl(&["-H", &session, &original]);
    assert_eq!(code, 200);
    assert_eq!(body.as_bytes(), std::fs::read(&bad).unwrap());
    std::fs::copy(
        fixtures().join("good/csv-darwin-core.csv"),
        env.drop_dir().join(stored),
    )
    .unwrap();
    b.click("#rejected button:not(.danger)");
    b.wait_text("#outcome", "stored");
    b.goto(&format!("{base}/rejected"));
    b.wait_text("#rejected", "reprocessed");
    b.click("#rejected button.danger");
    b.wait_text("#rejected", "No rejected files.");
    assert_eq!(db.scalar("SELECT count(*) FROM rejections").await, 0);

    // Sightings: filter by species, the map, a click on a point, the table.
    b.goto(&format!("{base}/sightings"));
    b.type_into("#f-species", "Loxodonta africana");
    b.click("#filter");
    b.wait_text("#sightings", "Loxodonta africana");
    let rows = b.count("#sightings tbody tr");
    let expected = db
        .scalar("SELECT count(*) FROM sightings WHERE species = 'Loxodonta africana'")
        .await as usize;
    assert_eq!(rows, expected);
    assert_eq!(b.count("#map circle"), expected);
    assert_eq!(b.count("#map image"), 0, "no tiles unless configured");
    b.click("#map circle");
    b.wait_text("#detail", "Loxodonta africana");
    screenshots(&b, "07-sightings");

    // Download CSV: exactly the filtered sightings, through the streaming endpoint.
    let href = b.property("#dl-csv", "href");
    assert!(href.contains("species=Loxodonta"), "{href}");
    b.click("#dl-csv");
    let dir = b.download_dir();
    let file = eventually("the CSV download", Duration::from_secs(20), || async {
        let f = std::fs::read_dir(&dir).ok()?.flatten().find(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.ends_with(".crdownload") && !n.starts_with('.')
        })?;
        Some(f.path())
    })
    .await;
    let csv = std::fs::read_to_string(&file).unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let species = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "species")
        .unwrap();
    let records: Vec<_> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), expected, "{csv}");
    assert!(records.iter().all(|r| &r[species] == "Loxodonta africana"));

    // Sources: Download now pulls the folder and reports it.
    b.goto(&format!("{base}/sources"));
    b.wait_text("#sources", "never");
    b.click("#sources button");
    b.wait_text("#report", "ingested 1");
    b.wait_text("#sources", "ok");
    screenshots(&b, "08-sources");
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 3);

    // CSRF: the browser's own session cookie, a form post without the token: refused.
    let cookie = format!(
        "Cookie: ctdata_session={}",
        b.cookie("ctdata_session").unwrap()
    );
    let (code, _, body) = curl(&[
        "-H",
        &cookie,
        "-d",
        "name=ranger-99",
        &format!("{base}/devices"),
    ]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("security token"));
    assert_eq!(
        db.scalar("SELECT count(*) FROM devices WHERE name = 'ranger-99'")
            .await,
        0
    );

    // Revoke: the device's token stops working at once.
    b.goto(&format!("{base}/devices"));
    b.click("form[action='/devices/ranger-01/revoke'] button");
    b.wait_text("#notice", "ranger-01 is revoked");
    assert_eq!(
        upload(&base, &token, &fixtures().join("good/ndjson-basic.ndjson")),
        403
    );

    // Sign out ends the session.
    b.goto(&format!("{base}/"));
    b.click("header button.link");
    b.find("#sign-in");
    let (code, headers, _) = curl(&["-H", &cookie, &format!("{base}/")]);
    assert_eq!(code, 303, "{headers}");
    drop(b);
    assert!(server.terminate().success());
}

#[tokio::test]
async fn sign_in_sessions_expire_and_forms_need_their_token() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let env = ServerEnv::new(&db);
    env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();

    // A wrong password: 401, the form again, no cookie.
    let (code, token) = sign_in(&base, "not the password");
    assert_eq!((code, token), (401, None));
    let (code, token) = sign_in(&base, PASSWORD);
    assert_eq!(code, 303);
    let token = token.expect("a session cookie");
    let (_, headers, _) = login_post(&base, "name=alice&password=a+long+enough+password");
    let set_cookie = headers
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains("Secure"), "plain HTTP: no Secure flag");
    // Only the token's SHA-256 is stored.
    let hashes = db.texts("SELECT token_hash FROM sessions").await;
    assert!(hashes
        .iter()
        .all(|h| h[0].as_deref() != Some(token.as_str())));

    let cookie = format!("Cookie: ctdata_session={token}");
    let (code, _, page) = curl(&["-H", &cookie, &format!("{base}/devices")]);
    assert_eq!(code, 200);
    let csrf = csrf_of(&page);
    // Without the token, or with another: 403, nothing changes. With it: done.
    let url = format!("{base}/devices");
    for form in [
        "name=ranger-50".to_string(),
        format!("name=ranger-50&csrf={}", "0".repeat(64)),
    ] {
        let (code, _, _) = curl(&["-H", &cookie, "-d", &form, &url]);
        assert_eq!(code, 403, "{form}");
    }
    assert_eq!(db.scalar("SELECT count(*) FROM devices").await, 0);
    let (code, _, page) = curl(&[
        "-H",
        &cookie,
        "-d",
        &format!("name=ranger-50&csrf={csrf}"),
        &url,
    ]);
    assert_eq!(code, 200);
    assert!(page.contains("id=\"token\">ctd_"), "{page}");
    // A form without any session is refused too.
    let (code, _, _) = curl(&["-d", &format!("name=ranger-51&csrf={csrf}"), &url]);
    assert_eq!(code, 403);

    // A time range pages newest observed first, with the same filters on every page.
    let token = env.device_token("ranger-02");
    assert_eq!(
        upload(&base, &token, &fixtures().join("good/csv-basic.csv")),
        201
    );
    let range = "from=2024-05-03T04:30:00Z&to=2024-05-04";
    let (code, _, page) = curl(&["-H", &cookie, &format!("{base}/sightings?{range}")]);
    assert_eq!(code, 200);
    let shown: Vec<&str> = page.split("<tr id=\"s").skip(1).collect();
    let expected = db
        .scalar("SELECT count(*) FROM sightings WHERE observed_at >= '2024-05-03T04:30:00Z' AND observed_at < '2024-05-04'")
        .await;
    assert!(
        expected > 0 && expected < 4,
        "the fixture spans the range edge"
    );
    assert_eq!(shown.len() as i64, expected, "{page}");
    let times: Vec<&str> = shown
        .iter()
        .map(|r| r.split("<td>").nth(2).unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest observed first: {times:?}"
    );
    assert!(page.contains(
        "href=\"/api/v1/sightings?format=csv&amp;excel_safe=true&amp;from=2024-05-03T04%3A30%3A00Z&amp;to=2024-05-04\""
    ));

    // The session expires: the page sends the browser back to the sign-in form.
    let expired = db
        .scalar("WITH u AS (UPDATE sessions SET expires_at = 0 RETURNING 1) SELECT count(*) FROM u")
        .await;
    assert!(expired >= 1);
    let (code, headers, _) = curl(&["-H", &cookie, &format!("{base}/devices")]);
    assert_eq!(code, 303);
    assert!(
        headers.to_lowercase().contains("location: /login"),
        "{headers}"
    );
    let (code, _, _) = curl(&["-H", &cookie, &format!("{base}/api/v1/sightings")]);
    assert_eq!(code, 401, "an expired session does not download either");
    assert!(server.terminate().success());
}

/// A CTData JSON batch of one sighting from `device`, numbered `sequence`.
fn numbered_batch(dir: &Path, device: &str, sequence: u64) -> PathBuf {
    let path = dir.join(format!("{device}-{sequence}.json"));
    let body = serde_json::json!({
        "ctdata_batch": 1,
        "batch_id": uuid::Uuid::new_v4().to_string(),
        "device_id": device,
        "created_at": "2026-11-01T06:00:00+02:00",
        "sequence": sequence,
        "count": 1,
        "sightings": [{
            "id": uuid::Uuid::new_v4().to_string(),
            "observed_at": "2026-11-01T05:58:00+02:00",
            "latitude": -24.1,
            "longitude": 31.2,
            "species": "Panthera leo"
        }]
    });
    std::fs::write(&path, body.to_string()).unwrap();
    path
}

ctdata_tests::both_backends! {
    devices_page_lists_batch_numbers_that_never_arrived,
}

async fn devices_page_lists_batch_numbers_that_never_arrived(db: TestDb) {
    let env = ServerEnv::new(&db);
    env.admin_token();
    let north = env.device_token("north");
    let south = env.device_token("south");
    let server = env.serve().await;
    let base = server.http_base();
    let dir = tempfile::tempdir().unwrap();
    // north sends 2, 4, 5 and 9 (1, 3 and 6–8 never arrive); south sends 1 and 2.
    for n in [2, 4, 5, 9, 4] {
        let code = upload(&base, &north, &numbered_batch(dir.path(), "north", n));
        assert!(code == 201, "upload {n}: {code}");
    }
    for n in [1, 2] {
        assert_eq!(
            upload(&base, &south, &numbered_batch(dir.path(), "south", n)),
            201
        );
    }
    // A number that is not a positive whole number is refused, and says why.
    let bad = numbered_batch(dir.path(), "south", 3);
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace("\"sequence\":3", "\"sequence\":0");
    std::fs::write(&bad, text).unwrap();
    let auth = format!("Authorization: Bearer {south}");
    let (code, _, body) = curl(&[
        "-H",
        &auth,
        "--data-binary",
        &format!("@{}", bad.display()),
        &format!("{base}/api/v1/batches"),
    ]);
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("sequence must be a whole number of 1 or more"),
        "{body}"
    );

    let (_, token) = sign_in(&base, PASSWORD);
    let cookie = format!("Cookie: ctdata_session={}", token.expect("a session"));
    let (code, _, page) = curl(&["-H", &cookie, &format!("{base}/devices")]);
    assert_eq!(code, 200);
    let row = |name: &str| {
        let at = page
            .find(&format!("<td>{name}</td>"))
            .expect("a row per device");
        page[at..at + page[at..].find("</tr>").unwrap()].to_string()
    };
    assert!(
        row("north").contains("1, 3, 6–8 (5 batches)"),
        "{}",
        row("north")
    );
    assert!(
        row("south").contains("<td class=\"gaps\">none</td>"),
        "{}",
        row("south")
    );
}

/// A tile server on loopback: answers every request with a small PNG and records the
/// paths asked for.
fn tile_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use base64::Engine;
    use std::io::{BufRead, BufReader, Write};
    let png = base64::engine::general_purpose::STANDARD
        .decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1_000) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            if let Some(path) = line.split_whitespace().nth(1) {
                record.lock().unwrap().push(path.to_string());
            }
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                png.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&png);
        }
    });
    (port, seen)
}

/// The Web Mercator tile holding a point at zoom `z`, worked out here independently.
fn tile_of(lon: f64, lat: f64, z: u32) -> (i64, i64) {
    let n = f64::from(1u32 << z);
    let lat = lat.to_radians();
    let x = ((lon + 180.0) / 360.0 * n).floor() as i64;
    let y = ((1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / std::f64::consts::PI) / 2.0 * n).floor()
        as i64;
    (x, y)
}

#[tokio::test]
async fn sightings_map_draws_the_configured_tiles_under_the_points() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let mut env = ServerEnv::new(&db);
    // A tile URL that is not one is refused with the reason, by every command.
    env.extra_env.push((
        "CTDATA__HTTP__MAP_TILE_URL".into(),
        "ftp://tiles.example.org/map.png".into(),
    ));
    let out = env.command(&["migrate"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.map_tile_url") && err.contains("{z}, {x} and {y}"),
        "{err}"
    );
    let (port, seen) = tile_server();
    env.extra_env = vec![
        (
            "CTDATA__HTTP__MAP_TILE_URL".into(),
            format!("http://127.0.0.1:{port}/tiles/{{z}}/{{x}}/{{y}}.png"),
        ),
        (
            "CTDATA__HTTP__MAP_TILE_ATTRIBUTION".into(),
            "Station tiles".into(),
        ),
    ];
    env.admin_token();
    let token = env.device_token("ranger-01");
    let server = env.serve().await;
    let base = server.http_base();
    assert_eq!(
        upload(&base, &token, &fixtures().join("good/csv-basic.csv")),
        201
    );
    let points: Vec<(f64, f64)> = db
        .texts("SELECT CAST(longitude AS TEXT), CAST(latitude AS TEXT) FROM sightings")
        .await
        .into_iter()
        .map(|r| {
            let v = |i: usize| r[i].as_deref().unwrap().parse::<f64>().unwrap();
            (v(0), v(1))
        })
        .collect();
    assert!(!points.is_empty());

    let Some(b) = Browser::start() else {
        return;
    };
    b.goto(&format!("{base}/sightings"));
    b.type_into("#name", "alice");
    b.type_into("#password", PASSWORD);
    b.click("#sign-in");
    b.wait_text("h1", "Overview");
    b.goto(&format!("{base}/sightings"));
    b.wait_text("#attribution", "Station tiles");
    assert_eq!(b.count("#map circle"), points.len());
    let images = b.count("#map image");
    assert!((1..=20).contains(&images), "{images} tiles");

    // The browser fetched the tiles, all at one zoom, and they cover every point.
    let asked: Vec<(u32, i64, i64)> = eventually(
        "the browser to fetch every tile",
        Duration::from_secs(30),
        || {
            let seen = seen.clone();
            async move {
                let paths = seen.lock().unwrap().clone();
                let tiles: Vec<(u32, i64, i64)> = paths
                    .iter()
                    .filter_map(|p| {
                        let rest = p.strip_prefix("/tiles/")?.strip_suffix(".png")?;
                        let mut it = rest.split('/');
                        Some((
                            it.next()?.parse().ok()?,
                            it.next()?.parse().ok()?,
                            it.next()?.parse().ok()?,
                        ))
                    })
                    .collect();
                (tiles.len() >= images).then_some(tiles)
            }
        },
    )
    .await;
    let z = asked[0].0;
    assert!(asked.iter().all(|t| t.0 == z), "{asked:?}");
    assert!(z > 3, "zoomed in on the points, not the world: {asked:?}");
    for (lon, lat) in &points {
        let (x, y) = tile_of(*lon, *lat, z);
        assert!(
            asked.contains(&(z, x, y)),
            "the tile under {lon},{lat} ({z}/{x}/{y}) was not fetched: {asked:?}"
        );
    }
    b.click("#map circle");
    b.wait_text("#detail", "ranger-01");
    screenshots(&b, "09-sightings-tiles");
    drop(server);
}

/// `count` sightings as a CSV batch: a jittered grid of `cols` columns over the box
/// `(lon0, lat0)`–`(lon1, lat1)`, as sightings spread over a park are, from a fixed seed.
fn spread_batch(
    path: &Path,
    (lon0, lat0, lon1, lat1): (f64, f64, f64, f64),
    cols: usize,
    count: usize,
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let rows = count.div_ceil(cols);
    let (dx, dy) = ((lon1 - lon0) / cols as f64, (lat1 - lat0) / rows as f64);
    let mut csv = String::from("id,observed_at,latitude,longitude,species,count\n");
    for i in 0..count {
        let (c, r) = ((i % cols) as f64, (i / cols) as f64);
        let lon = lon0 + (c + 0.5 + rng.gen_range(-0.25..0.25)) * dx;
        let lat = lat0 + (r + 0.5 + rng.gen_range(-0.25..0.25)) * dy;
        let minute = i % 1440;
        csv.push_str(&format!(
            "{},2026-10-{:02}T{:02}:{:02}:00Z,{lat:.6},{lon:.6},Syncerus caffer,{}\n",
            uuid::Uuid::new_v4(),
            1 + i / 1440,
            minute / 60,
            minute % 60,
            1 + i % 7
        ));
    }
    std::fs::write(path, csv).unwrap();
}

/// For every dot of the map: is it the element at its own centre, and does a click
/// there show its sighting? Also its radius on screen, and whether the empty parts of
/// the map (12 px or more from every centre) are free of dots.
const CHECK_MAP: &str = r#"
const map = document.getElementById('map');
map.scrollIntoView();
const detail = document.getElementById('detail');
const circles = [...map.querySelectorAll('circle')];
const out = {total: circles.length, outside: 0, hidden: [], wrong: [], centres: []};
for (const c of circles) {
  const r = c.getBoundingClientRect();
  const x = r.left + r.width / 2, y = r.top + r.height / 2;
  const want = '#' + c.parentNode.getAttribute('href').slice(2);
  out.centres.push([x, y, want]);
  if (x < 0 || y < 0 || x >= innerWidth || y >= innerHeight) { out.outside++; continue; }
  const hit = document.elementFromPoint(x, y);
  if (hit !== c) {
    out.hidden.push([want, hit && hit.closest('a') ? hit.closest('a').getAttribute('href') : String(hit && hit.tagName)]);
    continue;
  }
  hit.dispatchEvent(new MouseEvent('click', {bubbles: true, cancelable: true, clientX: x, clientY: y}));
  const shown = detail.firstChild ? detail.firstChild.textContent : '';
  if (shown !== want) out.wrong.push([want, shown]);
}
out.radius = circles.length ? circles[0].getBoundingClientRect().width / 2 : 0;
const box = map.getBoundingClientRect();
out.empty = 0; out.emptyCovered = 0;
for (let x = box.left + 4; x < box.right - 4; x += 9) {
  for (let y = box.top + 4; y < Math.min(box.bottom, innerHeight) - 4; y += 9) {
    if (out.centres.some(([cx, cy]) => Math.hypot(cx - x, cy - y) < 12)) continue;
    out.empty++;
    const hit = document.elementFromPoint(x, y);
    if (hit && hit.tagName === 'circle') out.emptyCovered++;
  }
}
return out;
"#;

/// Checks the map as the browser shows it; returns the dots' radius in pixels.
fn check_map(b: &Browser, expected: usize, db_rows: &[(i64, f64, f64)]) -> f64 {
    let out = b.execute(CHECK_MAP, serde_json::json!([]));
    let total = out["total"].as_u64().unwrap() as usize;
    assert_eq!(total, expected);
    assert_eq!(out["outside"], 0, "the whole map is on the screen");
    let hidden = out["hidden"].as_array().unwrap();
    assert!(
        hidden.is_empty(),
        "{} of {total} dots are covered at their centre by another, e.g. {:?}",
        hidden.len(),
        &hidden[..hidden.len().min(5)]
    );
    let wrong = out["wrong"].as_array().unwrap();
    assert!(
        wrong.is_empty(),
        "a click on the centre of {} of {total} dots showed another sighting, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(out["empty"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(out["emptyCovered"], 0, "dots spill over empty map: {out}");
    let radius = out["radius"].as_f64().unwrap();
    assert!(
        (2.0..=6.0).contains(&radius),
        "a dot's radius is {radius} px"
    );

    // Real mouse clicks on the centres of dots across the map show their sightings,
    // as stored.
    let centres = out["centres"].as_array().unwrap();
    for c in centres.iter().step_by(total.div_ceil(15)) {
        let (x, y, want) = (
            c[0].as_f64().unwrap(),
            c[1].as_f64().unwrap(),
            c[2].as_str().unwrap(),
        );
        b.execute(
            "document.getElementById('detail').textContent = ''",
            serde_json::json!([]),
        );
        b.click_at(x.round() as i64, y.round() as i64);
        let shown = b.wait_text("#detail", &format!("{want}\n"));
        let cursor: i64 = want[1..].parse().unwrap();
        let (_, lat, lon) = db_rows
            .iter()
            .find(|r| r.0 == cursor)
            .expect("a stored sighting");
        assert!(
            shown.contains(&format!("{lat:.5}, {lon:.5}")),
            "dot {want} showed {shown:?}"
        );
    }
    radius
}

#[tokio::test]
async fn sightings_map_shows_every_point_at_park_scale() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let env = ServerEnv::new(&db);
    env.admin_token();
    let park = env.device_token("park");
    let pan = env.device_token("pan");
    let server = env.serve().await;
    let base = server.http_base();
    let dir = tempfile::tempdir().unwrap();
    // 2,000 sightings over a 1.5° × 1° park, and 262 around a pan in a 0.1° box.
    let file = dir.path().join("park.csv");
    spread_batch(&file, (31.2, -25.0, 32.7, -24.0), 50, 2000);
    assert_eq!(upload(&base, &park, &file), 201);
    let file = dir.path().join("pan.csv");
    spread_batch(&file, (33.0, -24.5, 33.1, -24.4), 18, 262);
    assert_eq!(upload(&base, &pan, &file), 201);
    let stored: Vec<(i64, f64, f64)> = db
        .texts("SELECT CAST(cursor AS TEXT), CAST(latitude AS TEXT), CAST(longitude AS TEXT) FROM sightings")
        .await
        .into_iter()
        .map(|r| {
            let v = |i: usize| r[i].as_deref().unwrap().to_string();
            (v(0).parse().unwrap(), v(1).parse().unwrap(), v(2).parse().unwrap())
        })
        .collect();
    assert_eq!(stored.len(), 2262);

    let Some(b) = Browser::start() else {
        return;
    };
    b.goto(&format!("{base}/sightings"));
    b.type_into("#name", "alice");
    b.type_into("#password", PASSWORD);
    b.click("#sign-in");
    b.wait_text("h1", "Overview");

    b.goto(&format!("{base}/sightings?device=park"));
    b.wait_text("h2", "Map: the newest 2000 points");
    let park_radius = check_map(&b, 2000, &stored);
    b.execute(
        "document.getElementById('map').scrollIntoView()",
        serde_json::json!([]),
    );
    b.screenshot(&shots().join("10-sightings-park-1366x768.png"));

    b.goto(&format!("{base}/sightings?device=pan"));
    b.wait_text("h2", "Map: 262 point(s)");
    let pan_radius = check_map(&b, 262, &stored);
    b.execute(
        "document.getElementById('map').scrollIntoView()",
        serde_json::json!([]),
    );
    b.screenshot(&shots().join("11-sightings-small-box-1366x768.png"));
    assert!(
        (park_radius - pan_radius).abs() < 0.5,
        "a dot is {park_radius} px at park scale, {pan_radius} px on a 0.1° box"
    );
    drop(b);
    assert!(server.terminate().success());
}
