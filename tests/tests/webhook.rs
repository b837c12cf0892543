//! CyberTracker's webhook pointed at CTData, driven by curl: an observation is stored
//! (200 with a small receipt), sent again unchanged is a duplicate, sent again after an
//! edit (newer updateTime) replaces the stored sighting with the old one kept as a
//! version, an older version does not win, a wrong token is 401, a bad body is 422
//! naming the field; Basic auth and the token in the path both work.

use ctdata_tests::ftp::curl;
use ctdata_tests::{both_backends, ServerEnv, TestDb};
use serde_json::{json, Value};

const DEVICE: &str = "ct-webhook-01";
const UID: &str = "5b0e6a52-9c1d-4f3e-8a27-6d4c3b2a1f09";

fn observation(update_time: &str, count: &str, species: &str) -> Value {
    json!({
        "uid": UID,
        "createTime": "2024-07-01T06:15:00Z",
        "updateTime": update_time,
        "sessionId": "2f8e1c34-7a6b-4d59-9e02-1b3c5d7f9a11",
        "deviceId": "b7c1e2d3-4f5a-4b6c-8d7e-9f0a1b2c3d4e",
        "username": "T. Nkosi",
        "summary": format!("{species} ({count})"),
        "location": [31.5905, -24.9931, 305.0, 3.5],
        "project": {"uid": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "title": "Kruger Rangers"},
        "records": [{
            "uid": "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f",
            "summary": species,
            "values": [
                {"id": "species", "name": "Species", "value": species},
                {"id": "count", "name": "Count", "value": count},
                {"id": "behaviour", "name": "Behaviour", "value": "Drinking"}
            ]
        }]
    })
}

/// POSTs an observation as CyberTracker's webhook does; returns the status and answer.
fn post(url: &str, auth: Option<&str>, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut args = vec![
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
    ];
    let user;
    if let Some(a) = auth {
        user = a.to_string();
        args.extend(["-u", &user]);
    }
    args.extend(["-w", "\n%{http_code}", url]);
    let out = curl(&args);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (json, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(json).unwrap_or(Value::Null),
    )
}

fn sightings(base: &str, admin: &str) -> Vec<Value> {
    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {admin}"),
        &format!("{base}/api/v1/sightings?format=ndjson"),
    ]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn webhook_versions(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token(DEVICE);
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    let by_path = format!("{base}/api/v1/webhooks/cybertracker/{token}");
    let by_basic = format!("{base}/api/v1/webhooks/cybertracker");
    let basic = format!("{DEVICE}:{token}");

    // Wrong tokens: 401 and nothing stored.
    let first = observation("2024-07-01T06:15:00Z", "3", "Loxodonta africana");
    let (code, _) = post(
        &format!("{base}/api/v1/webhooks/cybertracker/not-a-token"),
        None,
        &first,
    );
    assert_eq!(code, 401);
    let (code, _) = post(&by_basic, Some(&format!("{DEVICE}:wrong")), &first);
    assert_eq!(code, 401);
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 0);

    // The first save.
    let (code, r) = post(&by_path, None, &first);
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (&r["status"], &r["uid"], &r["sighting_id"], &r["version"]),
        (
            &json!("stored"),
            &json!(UID),
            &json!(UID),
            &json!("2024-07-01T06:15:00Z")
        ),
        "{r}"
    );
    let rows = sightings(&base, &admin);
    assert_eq!(rows.len(), 1);
    let s = &rows[0];
    assert_eq!(
        (
            &s["id"],
            &s["device"],
            &s["observed_at"],
            &s["latitude"],
            &s["longitude"],
            &s["altitude"],
            &s["accuracy"],
            &s["species"],
            &s["count"]
        ),
        (
            &json!(UID),
            &json!(DEVICE),
            &json!("2024-07-01T06:15:00+00:00"),
            &json!(-24.9931),
            &json!(31.5905),
            &json!(305.0),
            &json!(3.5),
            &json!("Loxodonta africana"),
            &json!(3)
        )
    );
    assert_eq!(s["attributes"]["Behaviour"], "Drinking");
    assert_eq!(s["attributes"]["cybertracker"]["username"], "T. Nkosi");
    assert_eq!(
        s["attributes"]["cybertracker"]["project"]["title"],
        "Kruger Rangers"
    );
    let first_cursor = s["cursor"].as_i64().unwrap();

    // The same save again (Basic auth this time): a duplicate, nothing added.
    let (code, r) = post(&by_basic, Some(&basic), &first);
    assert_eq!((code, &r["status"]), (200, &json!("duplicate")), "{r}");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 1);
    assert_eq!(db.scalar("SELECT count(*) FROM sighting_versions").await, 0);

    // An edit: the newer version replaces the stored one, which is kept.
    let edited = observation("2024-07-01T07:02:30Z", "5", "Loxodonta africana");
    let (code, r) = post(&by_path, None, &edited);
    assert_eq!((code, &r["status"]), (200, &json!("updated")), "{r}");
    let rows = sightings(&base, &admin);
    assert_eq!(rows.len(), 1, "the export shows the latest version only");
    assert_eq!(rows[0]["count"], 5);
    assert_eq!(
        rows[0]["attributes"]["cybertracker"]["updateTime"],
        "2024-07-01T07:02:30Z"
    );
    assert!(
        rows[0]["cursor"].as_i64().unwrap() > first_cursor,
        "an incremental export sees the new version"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM sighting_versions").await, 1);
    let kept = db.texts("SELECT version FROM sighting_versions").await;
    assert_eq!(kept[0][0].as_deref(), Some("2024-07-01T06:15:00Z"));
    assert_eq!(
        db.scalar("SELECT count(*) FROM sighting_conflicts").await,
        0,
        "an edit is no conflict"
    );

    // The edit again: a duplicate. The first version again, late: it does not win.
    let (code, r) = post(&by_path, None, &edited);
    assert_eq!((code, &r["status"]), (200, &json!("duplicate")), "{r}");
    let (code, r) = post(&by_basic, Some(&basic), &first);
    assert_eq!(code, 200, "{r}");
    assert_eq!(sightings(&base, &admin)[0]["count"], 5);
    assert_eq!(db.scalar("SELECT count(*) FROM sighting_versions").await, 1);

    // Bad bodies: 422 naming the field, nothing stored.
    let before = db.scalar("SELECT count(*) FROM batches").await;
    let mut no_uid = edited.clone();
    no_uid.as_object_mut().unwrap().remove("uid");
    let mut bad_location = edited.clone();
    bad_location["location"] = json!("31.59,-24.99");
    for (body, field) in [(no_uid, "field uid"), (bad_location, "field location")] {
        let (code, r) = post(&by_path, None, &body);
        assert_eq!(code, 422, "{r}");
        assert_eq!(r["error"], "unprocessable", "{r}");
        assert!(r["message"].as_str().unwrap().starts_with(field), "{r}");
    }
    let mut no_offset = observation("2024-07-01T08:00:00Z", "1", "Panthera leo");
    no_offset["uid"] = json!("0f1e2d3c-4b5a-4968-8776-655443322110");
    no_offset["createTime"] = json!("2024-07-01T08:00:00");
    let (code, r) = post(&by_path, None, &no_offset);
    assert_eq!(code, 422, "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("field dateTime"),
        "{r}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, before);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 1);

    // Webhook deliveries are batches of the channel `webhook`.
    let channels = db.texts("SELECT DISTINCT channel FROM batches").await;
    assert_eq!(channels, [[Some("webhook".to_string())]]);
}

both_backends!(webhook_versions);

/// A uid another device stored (a reused id, or a device guessing one) is never
/// replaced by this device's newer version: 409, and the stored sighting stays.
async fn another_devices_sighting_is_not_replaced(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token(DEVICE);
    let other = env.device_token("ct-webhook-02");
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    let first = observation("2024-07-01T06:15:00Z", "3", "Loxodonta africana");
    let (code, r) = post(
        &format!("{base}/api/v1/webhooks/cybertracker/{token}"),
        None,
        &first,
    );
    assert_eq!((code, &r["status"]), (200, &json!("stored")), "{r}");

    let newer = observation("2024-07-02T06:15:00Z", "9", "Panthera leo");
    let (code, r) = post(
        &format!("{base}/api/v1/webhooks/cybertracker/{other}"),
        None,
        &newer,
    );
    assert_eq!(code, 409, "{r}");
    let rows = sightings(&base, &admin);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["device"], json!(DEVICE), "{rows:?}");
    assert_eq!(rows[0]["species"], json!("Loxodonta africana"), "{rows:?}");
    assert_eq!(db.scalar("SELECT count(*) FROM sighting_versions").await, 0);
}

both_backends!(another_devices_sighting_is_not_replaced);

/// A photo `seed` as CyberTracker inlines it (a data URI), and its SHA-256.
fn photo(seed: u8) -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.extend((0..3000u32).map(|i| (i.wrapping_mul(2654435761) >> 8) as u8 ^ seed));
    let uri = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    (uri, hex::encode(sha2::Sha256::digest(&bytes)))
}

/// The (name, sha256) of the files the export links to the one sighting.
fn linked(base: &str, admin: &str) -> Vec<(String, String)> {
    let rows = sightings(base, admin);
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0]["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// An edit (a newer updateTime) keeps the sighting's photos: those the edit does not
/// send again follow the sighting to its new version, and a photo the edit sends under
/// the same element replaces the earlier one.
async fn an_edit_keeps_the_sightings_photos(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token(DEVICE);
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    let url = format!("{base}/api/v1/webhooks/cybertracker/{token}");
    let with_photos = |time: &str, photos: &[(&str, &str)]| {
        let mut o = observation(time, "3", "Loxodonta africana");
        let values = o["records"][0]["values"].as_array_mut().unwrap();
        for (name, uri) in photos {
            values.push(json!({"id": name.to_lowercase(), "name": name, "value": uri}));
        }
        o
    };
    let (first, sha_first) = photo(1);
    let (track, sha_track) = photo(2);
    let v1 = with_photos(
        "2024-07-01T06:15:00Z",
        &[("Photo", &first), ("Track", &track)],
    );
    let (code, r) = post(&url, None, &v1);
    assert_eq!((code, &r["status"]), (200, &json!("stored")), "{r}");
    let mut want = vec![
        ("Photo".to_string(), sha_first.clone()),
        ("Track".to_string(), sha_track.clone()),
    ];
    assert_eq!(linked(&base, &admin), want);

    // An edit without the photos: both follow the sighting.
    let v2 = with_photos("2024-07-02T06:15:00Z", &[]);
    let (code, r) = post(&url, None, &v2);
    assert_eq!((code, &r["status"]), (200, &json!("updated")), "{r}");
    assert_eq!(linked(&base, &admin), want);

    // An edit with a retaken photo: it replaces the earlier one; the track stays.
    let (retaken, sha_retaken) = photo(3);
    let v3 = with_photos("2024-07-03T06:15:00Z", &[("Photo", &retaken)]);
    let (code, r) = post(&url, None, &v3);
    assert_eq!((code, &r["status"]), (200, &json!("updated")), "{r}");
    want[0].1 = sha_retaken;
    assert_eq!(linked(&base, &admin), want);
    assert_ne!(sha_first, want[0].1);
}

both_backends!(an_edit_keeps_the_sightings_photos);
