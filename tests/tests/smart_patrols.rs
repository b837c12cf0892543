//! A SMART Mobile device pointed at CTData: one patrol (start, observations, pause,
//! resume, stop, and its track) split over three `CTDATA_…_Patrol-NNNN.json` files,
//! delivered out of order over HTTP (Basic auth, deflate), the share and FTP, one of
//! them twice and one re-exported with its features in another order. Exact sightings
//! (with the `[formats.cybertracker]` mapping applied), track points and the patrol row;
//! nothing twice.

use std::path::Path;
use std::time::Duration;

use ctdata_tests::ftp::{curl, put_by_rename};
use ctdata_tests::httpz::{self, zlib};
use ctdata_tests::smart::{metres, name, pieces, DEVICE, PATROL};
use ctdata_tests::{both_backends, eventually, ServerEnv, TestDb};
use serde_json::{json, Value};

/// POSTs a file as SMART Connect's HTTP upload does: Basic auth, deflated JSON.
fn post(base: &str, token: &str, body: &Path) -> (u16, Value) {
    httpz::post(base, DEVICE, token, body)
}

/// Drops a file into the device's share folder (written beside it, then renamed in)
/// and waits for its receipt.
async fn drop_in(env: &ServerEnv, file_name: &str, bytes: &[u8]) -> Value {
    let tmp = env.dir.path().join(file_name);
    std::fs::write(&tmp, bytes).unwrap();
    let dest = env.drop_dir().join(DEVICE).join(file_name);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::rename(&tmp, &dest).unwrap();
    receipt(env, file_name).await
}

async fn receipt(env: &ServerEnv, file_name: &str) -> Value {
    let path = env
        .drop_dir()
        .join("receipts")
        .join(DEVICE)
        .join(format!("{file_name}.receipt.json"));
    let r: Value = eventually(
        &format!("the receipt of {file_name}"),
        Duration::from_secs(30),
        || async { serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok() },
    )
    .await;
    std::fs::remove_file(&path).unwrap();
    r
}

fn get(base: &str, admin: &str, path: &str) -> String {
    let out = curl(&[
        "-f",
        "-H",
        &format!("Authorization: Bearer {admin}"),
        &format!("{base}{path}"),
    ]);
    assert!(out.status.success(), "{path}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

async fn patrol_in_pieces(db: TestDb) {
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    std::fs::write(
        env.dir.path().join("ctdata.toml"),
        "[formats.cybertracker]\nspecies = [\"animal\"]\ncount = [\"Number of animals\"]\n\
         observer = [\"SMART_Employees\"]\n",
    )
    .unwrap();
    let token = env.device_token(DEVICE);
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    let [one, two, three] = pieces().map(|p| serde_json::to_vec(&p).unwrap());

    // The last piece first, over HTTP.
    let body = env.dir.path().join("piece3.z");
    std::fs::write(&body, zlib(&three)).unwrap();
    let (code, r) = post(&base, &token, &body);
    assert_eq!(code, 201, "{r}");
    assert_eq!(
        (
            &r["format"],
            &r["sightings"],
            &r["track_points"],
            &r["patrol_events"]
        ),
        (&json!("cybertracker"), &json!(0), &json!(1), &json!(1)),
        "{r}"
    );

    // The first piece through the share.
    let r = drop_in(&env, &name(1), &one).await;
    assert_eq!(
        (
            &r["status"],
            &r["sightings"],
            &r["track_points"],
            &r["patrol_events"]
        ),
        (&json!("ingested"), &json!(1), &json!(2), &json!(1)),
        "{r}"
    );

    // The middle piece over FTP.
    let local = env.dir.path().join("piece2.json");
    std::fs::write(&local, &two).unwrap();
    put_by_rename(server.ftp_port(), DEVICE, &token, &local, &name(2));
    let r = receipt(&env, &name(2)).await;
    assert_eq!(
        (
            &r["status"],
            &r["channel"],
            &r["sightings"],
            &r["track_points"],
            &r["patrol_events"]
        ),
        (
            &json!("ingested"),
            &json!("ftp"),
            &json!(1),
            &json!(2),
            &json!(2)
        ),
        "{r}"
    );

    // The last piece again, through the share: a duplicate.
    let r = drop_in(&env, &name(3), &three).await;
    assert_eq!(r["status"], "duplicate", "{r}");

    // The middle piece re-exported with its features in another order: a new batch
    // whose sighting, track points and events are all stored already.
    let mut again = pieces()[1].clone();
    again["features"].as_array_mut().unwrap().reverse();
    let r = drop_in(&env, &name(4), &serde_json::to_vec(&again).unwrap()).await;
    assert_eq!(
        (&r["status"], &r["inserted"], &r["duplicates"]),
        (&json!("ingested"), &json!(0), &json!(1)),
        "{r}"
    );

    for (table, n) in [("sightings", 2), ("tracks", 5), ("patrol_events", 4)] {
        let sql = format!("SELECT count(*) FROM {table}");
        assert_eq!(db.scalar(&sql).await, n, "{table}");
    }

    // The sightings, with the mapping applied and the patrol as event_id.
    let rows: Vec<Value> = get(&base, &admin, "/api/v1/sightings?format=ndjson")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut got: Vec<_> = rows
        .iter()
        .map(|r| {
            let a = &r["attributes"];
            (
                r["observed_at"].as_str().unwrap().to_string(),
                r["species"].clone(),
                r["count"].clone(),
                r["observer"].clone(),
                a["event_id"].clone(),
                a["Age class"].clone(),
                a.get("Animal").is_some(),
                a["cybertracker"]["appName"].clone(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            (
                "2024-06-02T05:20:00+00:00".to_string(),
                json!("Diceros bicornis"),
                json!(2),
                json!("T. Nkosi"),
                json!(PATROL),
                json!("Adult"),
                false,
                json!("SMART Mobile")
            ),
            (
                "2024-06-02T06:10:00+00:00".to_string(),
                json!("Loxodonta africana"),
                json!(14),
                json!("T. Nkosi"),
                json!(PATROL),
                json!("Adult"),
                false,
                json!("SMART Mobile")
            ),
        ]
    );

    // The track: one LineString for the device's day, in time order.
    let track: Value = serde_json::from_str(&get(&base, &admin, "/api/v1/tracks")).unwrap();
    let features = track["features"].as_array().unwrap();
    assert_eq!(features.len(), 1, "{track}");
    let f = &features[0];
    assert_eq!(f["geometry"]["type"], "LineString");
    assert_eq!(
        f["geometry"]["coordinates"],
        json!([
            [31.505, -24.905],
            [31.51, -24.91],
            [31.6, -24.95],
            [31.603, -24.953],
            [31.61, -24.96]
        ])
    );
    assert_eq!(
        (
            &f["properties"]["device"],
            &f["properties"]["day"],
            &f["properties"]["points"]
        ),
        (&json!(DEVICE), &json!("2024-06-02"), &json!(5))
    );
    let csv = get(&base, &admin, "/api/v1/tracks?format=csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[..2],
        [
            "device,time,latitude,longitude,altitude,accuracy",
            "smart-01,2024-06-02T05:10:00Z,-24.905,31.505,,5"
        ]
    );
    assert_eq!(lines.len(), 6);

    // The patrol, merged from all three pieces: the pause's drive is left out.
    let distance =
        metres((31.505, -24.905), (31.510, -24.910)) + metres((31.603, -24.953), (31.610, -24.960));
    let patrols = get(&base, &admin, "/api/v1/patrols");
    let rows: Vec<Vec<String>> = patrols
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{patrols}");
    assert_eq!(
        rows[0],
        [
            "patrol_id",
            "device",
            "start",
            "end",
            "distance_m",
            "observations",
            "events"
        ]
    );
    let row = &rows[1];
    assert_eq!(
        row[..4],
        [
            PATROL,
            DEVICE,
            "2024-06-02T05:00:00Z",
            "2024-06-02T06:45:00Z"
        ]
    );
    let got: f64 = row[4].parse().unwrap();
    assert!(
        (got - distance).abs() < 0.5,
        "{got} m, expected {distance} m"
    );
    assert_eq!(row[5..], ["2", "4"]);

    // The command line gives the same patrol row.
    let out = env.command(&["patrols"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), patrols);
}

/// What is spoilt, how, and the path and field the refusal must name.
type Case = (&'static str, fn(&mut Value), &'static str, &'static str);

async fn bad_pieces_store_nothing(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token(DEVICE);
    let server = env.serve().await;
    let base = server.http_base();
    let body = env.dir.path().join("bad.z");
    let cases: [Case; 4] = [
        (
            "no id",
            |d| {
                d["features"][2]["properties"]
                    .as_object_mut()
                    .unwrap()
                    .remove("id");
            },
            "features[2].properties.id",
            "field id",
        ),
        (
            "no dateTime",
            |d| {
                d["features"][1]["properties"]
                    .as_object_mut()
                    .unwrap()
                    .remove("dateTime");
            },
            "features[1].properties.dateTime",
            "field dateTime",
        ),
        (
            "no offset",
            |d| d["features"][0]["properties"]["dateTime"] = json!("2024-06-02T05:00:00"),
            "features[0].properties.dateTime",
            "field dateTime",
        ),
        (
            "a MultiPoint",
            |d| {
                d["features"][3]["geometry"] =
                    json!({"type": "MultiPoint", "coordinates": [[31.5, -24.9]]})
            },
            "features[3].geometry.type",
            "field geometry",
        ),
    ];
    for (what, spoil, path, field) in cases {
        let mut doc = pieces()[0].clone();
        spoil(&mut doc);
        std::fs::write(&body, zlib(doc.to_string().as_bytes())).unwrap();
        let (code, r) = post(&base, &token, &body);
        assert_eq!(code, 422, "{what}: {r}");
        let reason = r["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(path) && reason.contains(field),
            "{what}: {r}"
        );
    }
    std::fs::write(&body, zlib(b"<kml><Placemark/></kml>")).unwrap();
    let (code, r) = post(&base, &token, &body);
    assert_eq!((code, &r["kind"]), (415, &json!("unknown_format")), "{r}");
    for table in ["sightings", "tracks", "patrol_events", "batches"] {
        let sql = format!("SELECT count(*) FROM {table}");
        assert_eq!(db.scalar(&sql).await, 0, "{table}");
    }
}

both_backends!(patrol_in_pieces, bad_pieces_store_nothing);
