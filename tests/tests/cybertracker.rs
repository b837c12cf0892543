//! A CyberTracker Classic device pointed at CTData: its HTTPZ upload (a GeoJSON
//! FeatureCollection, deflated, HTTP Basic auth with the device name and token) sent by
//! curl to the real server, and the same file dropped into the share. Exact sightings,
//! a resend is a duplicate, a bad feature is refused by index and field.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ctdata_tests::ftp::curl;
use ctdata_tests::httpz::{self, zlib};
use ctdata_tests::{both_backends, eventually, ServerEnv, TestDb};
use flate2::write::DeflateEncoder;
use serde_json::{json, Value};

const DEVICE: &str = "ct-classic-01";
const PHOTO: &str = "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/2Q==";

/// The upload as documented: braced GUIDs, UTC times, a waypoint, an inline photo.
fn upload() -> Value {
    let props = |id: &str, time: &str, lon: f64, lat: f64| {
        json!({"id": id, "deviceId": "{0D6A9B12-3C4E-4F50-8A61-7B2C9D0E1F23}",
               "dateTime": time, "latitude": lat, "longitude": lon, "ctVersion": "3.520",
               "dbName": "Kruger Rangers", "appName": "CyberTracker"})
    };
    let feature = |props: Value, lon: f64, lat: f64| {
        json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
               "properties": props})
    };
    let mut elephant = props(
        "{6F1C2A44-0B7E-4C5D-9A31-2E8F7D6C5B4A}",
        "2024-05-01T04:32:10Z",
        31.59012,
        -24.99312,
    );
    elephant["altitude"] = json!(312.5);
    elephant["accuracy"] = json!(4.0);
    elephant["sighting"] =
        json!({"Species": "Loxodonta africana", "Count": "3", "Behaviour": "Feeding"});
    let waypoint = props(
        "{1A2B3C4D-5E6F-4A8B-9C0D-1E2F3A4B5C6D}",
        "2024-05-01T04:40:00Z",
        31.5911,
        -24.9925,
    );
    let mut lion = props(
        "{9E8D7C6B-5A49-4382-B1A0-F9E8D7C6B5A4}",
        "2024-05-01T05:02:45Z",
        31.6002,
        -24.9871,
    );
    lion["sighting"] = json!({"species": "Panthera leo", "count": 2, "observer": "T. Nkosi", "Photo": PHOTO,
               "Sketch": sketch().1});
    json!({"type": "FeatureCollection", "features": [
        feature(elephant, 31.59012, -24.99312),
        feature(waypoint, 31.5911, -24.9925),
        feature(lion, 31.6002, -24.9871),
    ]})
}

/// The sightings the upload must store, as the NDJSON export shows them (without
/// cursor, batch id and receipt time).
fn expected() -> Vec<Value> {
    let meta = json!({"cybertracker": {"deviceId": "0d6a9b12-3c4e-4f50-8a61-7b2c9d0e1f23",
                      "ctVersion": "3.520", "dbName": "Kruger Rangers", "appName": "CyberTracker"}});
    let with = |extra: Value| {
        let mut m = meta.as_object().unwrap().clone();
        m.extend(extra.as_object().unwrap().clone());
        Value::Object(m)
    };
    vec![
        json!({"id": "6f1c2a44-0b7e-4c5d-9a31-2e8f7d6c5b4a", "device": DEVICE,
               "observed_at": "2024-05-01T04:32:10+00:00", "latitude": -24.99312,
               "longitude": 31.59012, "altitude": 312.5, "accuracy": 4.0, "observer": null,
               "species": "Loxodonta africana", "count": 3,
               "attributes": with(json!({"Behaviour": "Feeding"}))}),
        json!({"id": "9e8d7c6b-5a49-4382-b1a0-f9e8d7c6b5a4", "device": DEVICE,
               "observed_at": "2024-05-01T05:02:45+00:00", "latitude": -24.9871,
               "longitude": 31.6002, "altitude": null, "accuracy": null, "observer": "T. Nkosi",
               "species": "Panthera leo", "count": 2, "attributes": with(json!({"Photo": listing("Photo", &photo(), "image/jpeg"),
                                         "Sketch": listing("Sketch", &sketch().0, "image/png")})),
               "attachments": lion_files()}),
    ]
}

/// A PNG of 150,000 bytes as a `data:` URI wrapped at 76 characters, as MIME writes
/// it: decoded in several pieces on the way into the store.
fn sketch() -> (Vec<u8>, String) {
    use base64::Engine;
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..150_000u32 - 8).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    (
        bytes,
        format!("data:image/png;base64,{}", lines.join("\r\n")),
    )
}

/// The photo's bytes.
fn photo() -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(PHOTO)
        .unwrap()
}

/// The files the lion sighting links, as the export lists them (by name).
fn lion_files() -> Value {
    let (photo, sketch) = (photo(), sketch().0);
    let file = |name: &str, bytes: &[u8], ty: &str| {
        let sha = sha256_hex(bytes);
        json!({"name": name, "sha256": sha, "size": bytes.len(), "content_type": ty,
               "url": format!("/api/v1/attachments/{sha}")})
    };
    json!([
        file("Photo", &photo, "image/jpeg"),
        file("Sketch", &sketch, "image/png")
    ])
}

/// What the sighting keeps of an inline file, in its attributes, beside the link.
fn listing(name: &str, bytes: &[u8], ty: &str) -> Value {
    let sha = sha256_hex(bytes);
    json!({"name": name, "type": ty, "size": bytes.len(), "sha256": sha,
           "kept": "in the attachment store (by sha256) and the batch's archived original"})
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn raw_deflate(bytes: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// POSTs `body` as CyberTracker does: Basic auth, JSON, `Content-Encoding: deflate`.
/// Returns the status and the JSON answer.
fn post(base: &str, token: &str, body: &Path) -> (u16, Value) {
    httpz::post(base, DEVICE, token, body)
}

/// The stored sightings in cursor order, as the export gives them.
async fn stored(base: &str, admin: &str) -> Vec<Value> {
    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {admin}"),
        &format!("{base}/api/v1/sightings?format=ndjson"),
    ]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            for k in ["cursor", "batch_id", "received_at"] {
                m.remove(k);
            }
            v
        })
        .collect()
}

async fn httpz_upload(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token(DEVICE);
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    let text = serde_json::to_vec_pretty(&upload()).unwrap();

    let body = env.dir.path().join("upload.z");
    std::fs::write(&body, zlib(&text)).unwrap();
    let (code, receipt) = post(&base, &token, &body);
    assert_eq!(code, 201, "{receipt}");
    assert_eq!(
        (
            &receipt["format"],
            &receipt["sightings"],
            &receipt["inserted"]
        ),
        (&json!("cybertracker"), &json!(2), &json!(2)),
        "{receipt}"
    );
    assert_eq!(receipt["track_points"], 1, "{receipt}");
    assert_eq!(stored(&base, &admin).await, expected());
    fetch_files(&env, &base, &admin);
    // The waypoint is a track point, not a sighting.
    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {admin}"),
        &format!("{base}/api/v1/tracks?format=csv"),
    ]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "device,time,latitude,longitude,altitude,accuracy\n\
         ct-classic-01,2024-05-01T04:40:00Z,-24.9925,31.5911,,\n"
    );

    // The same upload again, raw deflate this time: the content decides, a duplicate.
    std::fs::write(&body, raw_deflate(&text)).unwrap();
    let (code, again) = post(&base, &token, &body);
    assert_eq!(
        (code, &again["status"]),
        (200, &json!("duplicate")),
        "{again}"
    );
    assert_eq!(again["batch_id"], receipt["batch_id"]);
    // The resend linked nothing twice.
    assert_eq!(stored(&base, &admin).await, expected());

    // A waypoint without its time: refused by feature index and field, nothing stored.
    let mut bad = upload();
    bad["features"][1]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("dateTime");
    std::fs::write(&body, zlib(bad.to_string().as_bytes())).unwrap();
    let (code, refused) = post(&base, &token, &body);
    assert_eq!(code, 422, "{refused}");
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("features[1].properties.dateTime") && reason.contains("field dateTime"),
        "{refused}"
    );
    assert_eq!(stored(&base, &admin).await.len(), 2);
}

async fn share_drop(db: TestDb) {
    let env = ServerEnv::new(&db);
    let admin = env.admin_token();
    let server = env.serve().await;
    let text = serde_json::to_vec(&upload()).unwrap();
    // Written beside the share, then renamed in, as a file manager's copy ends.
    let file = env.dir.path().join("upload.json");
    std::fs::write(&file, zlib(&text)).unwrap();
    let dest = env.drop_dir().join(DEVICE).join("upload.json");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::rename(&file, &dest).unwrap();
    let receipt_path = env
        .drop_dir()
        .join("receipts")
        .join(DEVICE)
        .join("upload.json.receipt.json");
    let receipt: Value = eventually("the receipt file", Duration::from_secs(30), || async {
        serde_json::from_str(&std::fs::read_to_string(&receipt_path).ok()?).ok()
    })
    .await;
    assert_eq!(
        (&receipt["status"], &receipt["format"]),
        (&json!("ingested"), &json!("cybertracker")),
        "{receipt}"
    );
    assert_eq!(stored(&server.http_base(), &admin).await, expected());
    fetch_files(&env, &server.http_base(), &admin);

    // export --with-attachments: the zip (opened by Python's zipfile) holds both files.
    let zip = env.dir.path().join("with-files.zip");
    let out = env
        .command(&[
            "export",
            "--format",
            "ndjson",
            "--with-attachments",
            "--output",
        ])
        .arg(&zip)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = std::process::Command::new("python3")
        .args(["-c", ZIP_LISTING])
        .arg(&zip)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{listing:?}");
    let listing: Value = serde_json::from_slice(&listing.stdout).unwrap();
    let lion = "9e8d7c6b-5a49-4382-b1a0-f9e8d7c6b5a4";
    for (name, bytes) in [("Photo", photo()), ("Sketch", sketch().0)] {
        let at = format!("files/{lion}/{name}");
        assert_eq!(listing[&at], json!(sha256_hex(&bytes)), "{at}: {listing}");
    }
    assert_eq!(listing.as_object().unwrap().len(), 3, "{listing}");
}

/// Every member of a zip with its sha256, as JSON.
const ZIP_LISTING: &str = "import hashlib, json, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None
print(json.dumps({n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist()}))";

/// Each linked file comes back from the attachment store byte for byte.
fn fetch_files(env: &ServerEnv, base: &str, admin: &str) {
    for (bytes, ty) in [(photo(), "image/jpeg"), (sketch().0, "image/png")] {
        let sha = sha256_hex(&bytes);
        let out = env.dir.path().join(format!("{sha}.fetched"));
        let got = curl(&[
            "-H",
            &format!("Authorization: Bearer {admin}"),
            "-o",
            &out.display().to_string(),
            "-w",
            "%{http_code} %{content_type}",
            &format!("{base}/api/v1/attachments/{sha}"),
        ]);
        assert_eq!(String::from_utf8_lossy(&got.stdout), format!("200 {ty}"));
        assert!(std::fs::read(&out).unwrap() == bytes, "{sha} differs");
    }
}

both_backends!(httpz_upload, share_drop);
