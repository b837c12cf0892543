//! The tracks and patrols exports at field scale: 300,000 track points (30 devices ×
//! 10 days × 1,000 points) and 600 patrols, exported over HTTP (GeoJSON, CSV, JSON) and
//! by the command line. Every point and patrol is there exactly once and right, and the
//! real server's peak memory stays far below what holding the exports would take.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use ctdata_tests::httpz::{self, zlib};
use ctdata_tests::smart::{pieces, DEVICE, PATROL};
use ctdata_tests::{both_backends, Backend, TestDb};
use serde_json::Value;
use sqlx::Connection;

const DEVICES: usize = 30;
const DAYS: usize = 10;
const POINTS: usize = 1_000;

/// Runs statements that return nothing.
async fn exec(db: &TestDb, sql: &str) {
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

/// A time of day `day` (0 = 2024-03-01) at `minute`, as each engine stores it.
fn stored_time(db: &TestDb, day: usize, minute: usize) -> String {
    let (h, m) = (minute / 60, minute % 60);
    let t = format!("2024-03-{:02}T{h:02}:{m:02}:00", day + 1);
    match db.backend {
        Backend::Postgres => format!("{t}Z"),
        Backend::Sqlite => format!("{t}.000000Z"),
    }
}

/// As the exports write it.
fn export_time(day: usize, minute: usize) -> String {
    format!(
        "2024-03-{:02}T{:02}:{:02}:00Z",
        day + 1,
        minute / 60,
        minute % 60
    )
}

/// Metres between two points 0.0001° of latitude apart (the step of every track).
fn step() -> f64 {
    6_371_008.8 * (0.0001f64).to_radians()
}

/// Two patrols a device-day: A runs 00:00–05:00; B 06:00–10:00, paused 08:00–09:00.
/// (kind, minute) per patrol, and how many track steps each covers while running.
/// A patrol of each day: its letter, its events (kind, minute) and its running steps.
type DayPatrol = (&'static str, &'static [(&'static str, usize)], usize);

const PATROLS: [DayPatrol; 2] = [
    ("A", &[("NewPatrol", 0), ("StopPatrol", 300)], 300),
    (
        "B",
        &[
            ("NewPatrol", 360),
            ("PausePatrol", 480),
            ("ResumePatrol", 540),
            ("StopPatrol", 600),
        ],
        180,
    ),
];

fn device(n: usize) -> String {
    format!("scale-{n:02}")
}

fn patrol_id(dev: usize, day: usize, which: &str) -> String {
    format!("S-{dev:02}-{day:02}-{which}")
}

async fn seed(db: &TestDb) {
    let names: Vec<String> = (0..DEVICES).map(|d| format!("('{}')", device(d))).collect();
    exec(
        db,
        &format!("INSERT INTO devices (name) VALUES {}", names.join(",")),
    )
    .await;
    // The points: latitude steps south by 0.0001° a minute; altitude counts the minute.
    let tracks = match db.backend {
        Backend::Postgres => format!(
            "INSERT INTO tracks (batch, device_id, recorded_at, latitude, longitude, altitude, \
             accuracy) SELECT (SELECT min(id) FROM batches), d.id, \
             timestamptz '2024-03-01T00:00:00Z' + k * interval '1 day' + i * interval '1 minute', \
             -24.0 - i * 0.0001, 31.0 + d.id * 0.01, 1000.0 + i, 5.0 \
             FROM devices d, generate_series(0, {}) k, generate_series(0, {}) i \
             WHERE d.name LIKE 'scale-%'",
            DAYS - 1,
            POINTS - 1
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}), \
             days(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM days WHERE k < {}) \
             INSERT INTO tracks (batch, device_id, recorded_at, latitude, longitude, altitude, \
             accuracy) SELECT (SELECT min(id) FROM batches), d.id, \
             strftime('%Y-%m-%dT%H:%M:%S', '2024-03-01', '+' || k || ' days', \
             '+' || i || ' minutes') || '.000000Z', \
             -24.0 - i * 0.0001, 31.0 + d.id * 0.01, 1000.0 + i, 5.0 \
             FROM devices d, days, n WHERE d.name LIKE 'scale-%'",
            POINTS - 1,
            DAYS - 1
        ),
    };
    exec(db, &tracks).await;
    let mut events = Vec::new();
    for dev in 0..DEVICES {
        for day in 0..DAYS {
            for (which, kinds, _) in PATROLS {
                for (kind, minute) in kinds {
                    events.push(format!(
                        "('{}', '{}', '{kind}', (SELECT min(id) FROM batches), \
                         (SELECT id FROM devices WHERE name = '{}'), '{}', -24.0, 31.0)",
                        uuid::Uuid::new_v4(),
                        patrol_id(dev, day, which),
                        device(dev),
                        stored_time(db, day, *minute)
                    ));
                }
            }
        }
    }
    exec(
        db,
        &format!(
            "INSERT INTO patrol_events (event_uid, patrol_id, kind, batch, device_id, \
             occurred_at, latitude, longitude) VALUES {}",
            events.join(",")
        ),
    )
    .await;
}

/// GETs `path` into a file with curl (so the test holds no more than it checks).
fn download(base: &str, admin: &str, path: &str, to: &Path) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-f", "-H", &format!("Authorization: Bearer {admin}")])
        .args(["-o", to.to_str().unwrap(), &format!("{base}{path}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{path}: {out:?}");
    std::fs::read_to_string(to).unwrap()
}

fn peak_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

/// Runs `cmd` as the only child of a Python process, which reports its peak memory
/// (`ru_maxrss`, kB): the standard output and the peak.
fn peak_of(cmd: Command) -> (String, u64) {
    let mut py = Command::new("python3");
    py.arg("-c").arg(
        "import resource, subprocess, sys\n\
         r = subprocess.run(sys.argv[1:])\n\
         print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n\
         sys.exit(r.returncode)",
    );
    py.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => py.env(k, v),
            None => py.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        py.current_dir(dir);
    }
    let out = py.stdin(std::process::Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let peak = stderr.trim().lines().last().unwrap().parse().unwrap();
    (String::from_utf8(out.stdout).unwrap(), peak)
}

/// The CSV track export: every point once, in device and time order, with its values.
fn check_track_csv(text: &str) {
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        rows.headers().unwrap(),
        vec![
            "device",
            "time",
            "latitude",
            "longitude",
            "altitude",
            "accuracy"
        ]
    );
    let mut per_device: BTreeMap<String, Vec<csv::StringRecord>> = BTreeMap::new();
    for r in rows.records() {
        let r = r.unwrap();
        if r[0].starts_with("scale-") {
            per_device.entry(r[0].to_string()).or_default().push(r);
        }
    }
    assert_eq!(per_device.len(), DEVICES);
    for (name, rows) in &per_device {
        assert_eq!(rows.len(), DAYS * POINTS, "{name}");
        let lon = &rows[0][3];
        for (n, r) in rows.iter().enumerate() {
            let (day, i) = (n / POINTS, n % POINTS);
            assert_eq!(&r[1], export_time(day, i), "{name} row {n}");
            let lat: f64 = r[2].parse().unwrap();
            assert!(
                (lat - (-24.0 - i as f64 * 0.0001)).abs() < 1e-9,
                "{name} {n}"
            );
            assert_eq!(&r[3], lon, "{name} {n}");
            assert_eq!(r[4].parse::<f64>().unwrap(), 1000.0 + i as f64);
            assert_eq!(&r[5], "5");
        }
    }
}

/// The GeoJSON track export: one LineString per device and day with all its points.
fn check_track_geojson(text: &str) {
    let doc: Value = serde_json::from_str(text).unwrap();
    assert_eq!(doc["type"], "FeatureCollection");
    let features: Vec<&Value> = doc["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["properties"]["device"]
                .as_str()
                .unwrap()
                .starts_with("scale-")
        })
        .collect();
    assert_eq!(features.len(), DEVICES * DAYS);
    let mut seen = BTreeSet::new();
    for f in features {
        let p = &f["properties"];
        let day: usize = p["day"].as_str().unwrap()[8..].parse::<usize>().unwrap() - 1;
        assert!(seen.insert((p["device"].to_string(), day)), "{p}");
        assert_eq!(f["geometry"]["type"], "LineString");
        let coords = f["geometry"]["coordinates"].as_array().unwrap();
        let times = p["times"].as_array().unwrap();
        assert_eq!((coords.len(), times.len()), (POINTS, POINTS), "{p}");
        assert_eq!(p["points"], POINTS);
        assert_eq!(p["start"], export_time(day, 0));
        assert_eq!(p["end"], export_time(day, POINTS - 1));
        for (i, (c, t)) in coords.iter().zip(times).enumerate() {
            assert_eq!(t.as_str().unwrap(), export_time(day, i));
            let lat = c[1].as_f64().unwrap();
            assert!((lat - (-24.0 - i as f64 * 0.0001)).abs() < 1e-9);
            assert_eq!(c[2].as_f64().unwrap(), 1000.0 + i as f64);
        }
        let expected = step() * (POINTS - 1) as f64;
        let got = p["distance_m"].as_f64().unwrap();
        assert!(
            (got - expected).abs() < 0.5,
            "{got} m, expected {expected} m"
        );
    }
}

/// The patrols CSV: every patrol once, with its times, distance and events.
fn check_patrols_csv(text: &str) {
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    let mut got = BTreeMap::new();
    for r in rows.records() {
        let r = r.unwrap();
        assert!(got.insert(r[0].to_string(), r).is_none(), "a patrol twice");
    }
    // The uploaded SMART piece's patrol, with its observation, comes along.
    assert_eq!(got.len(), DEVICES * DAYS * PATROLS.len() + 1);
    assert_eq!(&got[PATROL][1], DEVICE);
    assert_eq!(&got[PATROL][5], "1");
    for dev in 0..DEVICES {
        for day in 0..DAYS {
            for (which, kinds, steps) in PATROLS {
                let r = &got[&patrol_id(dev, day, which)];
                assert_eq!(&r[1], device(dev));
                assert_eq!(&r[2], export_time(day, kinds[0].1));
                assert_eq!(&r[3], export_time(day, kinds[kinds.len() - 1].1));
                let metres: f64 = r[4].parse().unwrap();
                let expected = step() * steps as f64;
                assert!((metres - expected).abs() < 0.5, "{r:?}: {expected} m");
                assert_eq!(&r[5], "0");
                assert_eq!(r[6].parse::<usize>().unwrap(), kinds.len());
            }
        }
    }
}

async fn exports_at_scale(db: TestDb) {
    let env = ctdata_tests::ServerEnv::new(&db);
    let token = env.device_token(DEVICE);
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    // One real SMART upload: the batch the seeded rows hang on, and a patrol with an
    // observation.
    let body = env.dir.path().join("piece1.z");
    std::fs::write(&body, zlib(&serde_json::to_vec(&pieces()[0]).unwrap())).unwrap();
    let (code, r) = httpz::post(&base, DEVICE, &token, &body);
    assert_eq!(code, 201, "{r}");
    seed(&db).await;
    let points = db
        .scalar("SELECT count(*) FROM tracks t JOIN devices d ON d.id = t.device_id WHERE d.name LIKE 'scale-%'")
        .await;
    assert_eq!(points as usize, DEVICES * DAYS * POINTS);
    let before = peak_kb(server.pid());

    let out = env.dir.path().join("out");
    let csv = download(&base, &admin, "/api/v1/tracks?format=csv", &out);
    check_track_csv(&csv);
    let geojson = download(&base, &admin, "/api/v1/tracks", &out);
    check_track_geojson(&geojson);
    let patrols = download(&base, &admin, "/api/v1/patrols", &out);
    check_patrols_csv(&patrols);
    let json: Vec<Value> = serde_json::from_str(&download(
        &base,
        &admin,
        "/api/v1/patrols?format=json",
        &out,
    ))
    .unwrap();
    assert_eq!(json.len(), DEVICES * DAYS * PATROLS.len() + 1);

    // The server read everything and never held an export: 300,000 points held at once
    // (as rows, then as JSON values) took hundreds of MiB.
    let peak = peak_kb(server.pid());
    eprintln!(
        "server peak memory: {before} kB before the exports, {peak} kB after; \
         tracks csv {} bytes, geojson {} bytes",
        csv.len(),
        geojson.len()
    );
    assert!(peak < 120 * 1024, "server peak memory {peak} kB");

    // The dashboard's Patrols page: 100 a page, every patrol once, in id order.
    let (code, session) = ctdata_tests::web::sign_in(&base, "alice", "a long enough password");
    assert_eq!(code, 303);
    let cookie = format!("ctdata_session={}", session.unwrap());
    let mut listed = Vec::new();
    let mut path = "/patrols".to_string();
    for _ in 0..20 {
        let (code, _, page) = ctdata_tests::web::curl(&["-b", &cookie, &format!("{base}{path}")]);
        assert_eq!(code, 200, "{path}");
        let ids: Vec<String> = page
            .split("<tr><td class=\"nowrap\">")
            .skip(1)
            .map(|r| r[..r.find('<').unwrap()].to_string())
            .collect();
        assert!(ids.len() <= 100, "{path}: {} rows", ids.len());
        listed.extend(ids);
        const NEXT: &str = "id=\"next\" href=\"";
        match page.find(NEXT) {
            Some(at) => {
                let rest = &page[at + NEXT.len()..];
                path = rest[..rest.find('"').unwrap()].replace("&amp;", "&");
            }
            None => break,
        }
    }
    let total = DEVICES * DAYS * PATROLS.len() + 1;
    assert_eq!(listed.len(), total, "{listed:?}");
    assert_eq!(listed.iter().collect::<BTreeSet<_>>().len(), total);

    // The command line writes the same bytes, in bounded memory too.
    let file = env.dir.path().join("tracks.csv");
    let cli = env.command(&["tracks", "--format", "csv", "-o", file.to_str().unwrap()]);
    let (_, cli_peak) = peak_of(cli);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), csv);
    let (stdout, patrols_peak) = peak_of(env.command(&["patrols"]));
    assert_eq!(stdout, patrols);
    eprintln!("CLI peak memory: tracks {cli_peak} kB, patrols {patrols_peak} kB");
    assert!(
        cli_peak < 120 * 1024,
        "CLI tracks peak memory {cli_peak} kB"
    );
    drop(server);
}

both_backends!(exports_at_scale);
