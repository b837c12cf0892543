//! A sighting id sent again: with the same content a duplicate, with other content a
//! conflict the administrator sees in the receipt, the batch API, the conflict list,
//! the metrics and the dashboard. Real server, real HTTP (curl), both backends.

use std::path::{Path, PathBuf};

use ctdata_tests::{both_backends, ServerEnv, TestDb};
use serde_json::{json, Value};
use uuid::Uuid;

/// curl with extra arguments; the status and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let (code, _, body) = ctdata_tests::web::curl(args);
    (code, body)
}

fn post(base: &str, token: &str, file: &Path) -> (u16, Value) {
    let auth = format!("Authorization: Bearer {token}");
    let data = format!("@{}", file.display());
    let (code, body) = curl(&[
        "-H",
        &auth,
        "--data-binary",
        &data,
        &format!("{base}/api/v1/batches"),
    ]);
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn get_json(base: &str, token: &str, path: &str) -> Value {
    let auth = format!("Authorization: Bearer {token}");
    let (code, body) = curl(&["-H", &auth, &format!("{base}{path}")]);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn sighting(id: Uuid, species: &str, lat: f64, attributes: Value) -> Value {
    json!({"id": id, "observed_at": "2024-05-01T06:30:00+02:00", "latitude": lat, "longitude": 31.5,
        "accuracy": 5.0, "observer": "T. Mokoena", "species": species, "count": 3,
        "attributes": attributes})
}

fn batch(dir: &Path, device: &str, sightings: Vec<Value>) -> PathBuf {
    let id = Uuid::new_v4();
    let doc = json!({"ctdata_batch": 1, "batch_id": id, "device_id": device,
        "created_at": "2024-05-02T18:05:11+02:00", "count": sightings.len(), "sightings": sightings});
    let path = dir.join(format!("{id}.json"));
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

fn ids(skipped: &Value) -> Vec<(String, Vec<String>)> {
    skipped["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let differs = i["differs"].as_array().map_or(vec![], |d| {
                d.iter().map(|f| f.as_str().unwrap().to_string()).collect()
            });
            (i["id"].as_str().unwrap().to_string(), differs)
        })
        .collect()
}

both_backends! {
    a_reused_sighting_id_with_other_content_is_a_visible_conflict,
}

async fn a_reused_sighting_id_with_other_content_is_a_visible_conflict(db: TestDb) {
    let env = ServerEnv::new(&db);
    let admin = env.admin_token();
    let north = env.device_token("north");
    let south = env.device_token("south");
    let server = env.serve().await;
    let base = server.http_base();
    let dir = tempfile::tempdir().unwrap();

    let (same, other, fresh) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let first = batch(
        dir.path(),
        "north",
        vec![
            sighting(
                same,
                "Panthera leo",
                -24.9,
                json!({"herd": "a", "sex": "f"}),
            ),
            sighting(other, "Panthera leo", -24.9, json!({})),
        ],
    );
    let (code, body) = post(&base, &north, &first);
    assert_eq!(code, 201, "{body}");
    assert!(body.get("skipped").is_none(), "{body}");

    // The same id with the same content (attribute keys in another order): a duplicate.
    // The other id: another species, 300 km away.
    let second = batch(
        dir.path(),
        "south",
        vec![
            sighting(
                same,
                "Panthera leo",
                -24.9,
                json!({"sex": "f", "herd": "a"}),
            ),
            sighting(other, "Loxodonta africana", -27.6, json!({})),
            sighting(fresh, "Crocuta crocuta", -25.0, json!({})),
        ],
    );
    let (code, body) = post(&base, &south, &second);
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        (body["inserted"].as_i64(), body["duplicates"].as_i64()),
        (Some(1), Some(2)),
        "{body}"
    );
    let skipped = &body["skipped"];
    assert_eq!(
        (skipped["total"].as_i64(), skipped["conflicts"].as_i64()),
        (Some(2), Some(1)),
        "{body}"
    );
    assert_eq!(
        ids(skipped),
        [
            (same.to_string(), vec![]),
            (
                other.to_string(),
                vec!["location".to_string(), "species".to_string()]
            )
        ]
    );

    // A large file (another load path) repeating the conflicting id once more with a
    // third species, and 2,999 new ones; and the skipped-id list is capped.
    let mut rows: Vec<Value> = (0..2999)
        .map(|i| {
            sighting(
                Uuid::new_v4(),
                "Crocuta crocuta",
                -25.0 + i as f64 * 1e-4,
                json!({}),
            )
        })
        .collect();
    rows.insert(1500, sighting(other, "Lycaon pictus", -24.9, json!({})));
    let (code, body) = post(&base, &south, &batch(dir.path(), "south", rows));
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        ids(&body["skipped"]),
        [(other.to_string(), vec!["species".to_string()])]
    );
    let mut rows: Vec<Value> = (0..150)
        .map(|_| sighting(Uuid::new_v4(), "Canis", -25.0, json!({})))
        .collect();
    let (code, _) = post(&base, &north, &batch(dir.path(), "north", rows.clone()));
    assert_eq!(code, 201);
    rows.push(sighting(Uuid::new_v4(), "Canis", -25.0, json!({})));
    let (code, body) = post(&base, &south, &batch(dir.path(), "south", rows));
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        (
            body["skipped"]["total"].as_i64(),
            body["skipped"]["conflicts"].as_i64()
        ),
        (Some(150), Some(0))
    );
    assert_eq!(body["skipped"]["ids"].as_array().unwrap().len(), 100);

    // Stored: the first version only; two conflicts recorded.
    assert_eq!(
        db.texts(&format!(
            "SELECT species FROM sightings WHERE CAST(id AS TEXT) = '{other}'"
        ))
        .await,
        [[Some("Panthera leo".to_string())]]
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM sighting_conflicts").await,
        2
    );

    // The batch API lists the skipped ids.
    let list = get_json(&base, &admin, "/api/v1/batches?device=south");
    let second_pk = list.as_array().unwrap().last().unwrap()["id"]
        .as_i64()
        .unwrap();
    let detail = get_json(&base, &admin, &format!("/api/v1/batches/{second_pk}"));
    assert_eq!(detail["device"], "south");
    assert_eq!(detail["skipped"], body_of_second(&detail));
    assert_eq!(ids(&detail["skipped"]).len(), 2);
    let auth = format!("Authorization: Bearer {admin}");
    assert_eq!(
        curl(&["-H", &auth, &format!("{base}/api/v1/batches/999999")]).0,
        404
    );

    // The conflict list: both versions, who had it first.
    let conflicts = get_json(&base, &admin, "/api/v1/conflicts");
    let oldest = conflicts.as_array().unwrap().last().unwrap();
    assert_eq!(oldest["sighting_id"], other.to_string());
    assert_eq!(
        (
            oldest["stored"]["device"].as_str(),
            oldest["new"]["device"].as_str()
        ),
        (Some("north"), Some("south"))
    );
    assert_eq!(
        (
            oldest["stored"]["species"].as_str(),
            oldest["new"]["species"].as_str()
        ),
        (Some("Panthera leo"), Some("Loxodonta africana"))
    );
    assert_eq!(oldest["new"]["latitude"].as_f64(), Some(-27.6));

    // The metric.
    let (_, metrics) = curl(&[&format!("{base}/metrics")]);
    assert!(
        metrics.contains("ctdata_sighting_conflicts_total{channel=\"http\"} 2"),
        "{metrics}"
    );

    // The dashboard: under Needs attention, the two versions side by side.
    let (_, session) = ctdata_tests::web::sign_in(&base, "alice", "a long enough password");
    let session = session.expect("a session cookie");
    let cookie = format!("Cookie: ctdata_session={session}");
    let (code, page) = curl(&["-H", &cookie, &format!("{base}/")]);
    assert_eq!(code, 200);
    let attention = &page[page.find("id=\"attention\"").unwrap()..];
    let attention = &attention[..attention.find("</ul>").unwrap()];
    assert!(
        attention.contains("2 sighting id(s) arrived again with other content"),
        "{attention}"
    );
    assert!(attention.contains(&other.to_string()), "{attention}");
    assert!(
        attention.contains("<th>species</th><td>Panthera leo</td><td>Loxodonta africana</td>"),
        "{attention}"
    );
    assert!(
        attention.contains("<th>location</th><td>-24.9, 31.5, ±5 m</td><td>-27.6, 31.5, ±5 m</td>"),
        "{attention}"
    );
    assert!(
        attention.contains("<tr class=\"differs\"><th>location</th>"),
        "{attention}"
    );
}

/// The batch API repeats what the receipt said.
fn body_of_second(detail: &Value) -> Value {
    assert_eq!(detail["skipped"]["total"].as_i64(), Some(2), "{detail}");
    assert_eq!(detail["skipped"]["conflicts"].as_i64(), Some(1), "{detail}");
    detail["skipped"].clone()
}
