//! A sighting id sent again: with the same content a duplicate, with other content a
//! conflict the administrator sees in the receipt, the batch API, the conflict list,
//! the metrics and the dashboard. Real server, real HTTP, both backends.

use ctdata_tests::api::Api;
use ctdata_tests::{both_backends, ServerEnv, TestDb};
use serde_json::{json, Value};
use uuid::Uuid;

async fn post(api: &Api, token: &str, batch: Vec<u8>) -> (u16, Value) {
    let reply = api.post_batch(token, batch).await;
    (reply.status, reply.json())
}

fn sighting(id: Uuid, species: &str, lat: f64, attributes: Value) -> Value {
    json!({"id": id, "observed_at": "2024-05-01T06:30:00+02:00", "latitude": lat, "longitude": 31.5,
        "accuracy": 5.0, "observer": "T. Mokoena", "species": species, "count": 3,
        "attributes": attributes})
}

/// A JSON batch of these sightings (as JSON values: the attributes' key order matters).
fn batch(device: &str, sightings: Vec<Value>) -> Vec<u8> {
    let doc = json!({"ctdata_batch": 1, "batch_id": Uuid::new_v4(), "device_id": device,
        "created_at": "2024-05-02T18:05:11+02:00", "count": sightings.len(), "sightings": sightings});
    doc.to_string().into_bytes()
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
    let api = server.api();

    let (same, other, fresh) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let first = batch(
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
    let (code, body) = post(&api, &north, first).await;
    assert_eq!(code, 201, "{body}");
    assert!(body.get("skipped").is_none(), "{body}");

    // The same id with the same content (attribute keys in another order): a duplicate.
    // The other id: another species, 300 km away.
    let second = batch(
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
    let (code, body) = post(&api, &south, second).await;
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
    let (code, body) = post(&api, &south, batch("south", rows)).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        ids(&body["skipped"]),
        [(other.to_string(), vec!["species".to_string()])]
    );
    let mut rows: Vec<Value> = (0..150)
        .map(|_| sighting(Uuid::new_v4(), "Canis", -25.0, json!({})))
        .collect();
    let (code, _) = post(&api, &north, batch("north", rows.clone())).await;
    assert_eq!(code, 201);
    rows.push(sighting(Uuid::new_v4(), "Canis", -25.0, json!({})));
    let (code, body) = post(&api, &south, batch("south", rows)).await;
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
    let list = api.get_json("/api/v1/batches?device=south", &admin).await;
    let second_pk = list.as_array().unwrap().last().unwrap()["id"]
        .as_i64()
        .unwrap();
    let detail = api
        .get_json(&format!("/api/v1/batches/{second_pk}"), &admin)
        .await;
    assert_eq!(detail["device"], "south");
    assert_eq!(detail["skipped"], body_of_second(&detail));
    assert_eq!(ids(&detail["skipped"]).len(), 2);
    assert_eq!(api.get("/api/v1/batches/999999", &admin).await.status, 404);

    // The conflict list: both versions, who had it first.
    let conflicts = api.get_json("/api/v1/conflicts", &admin).await;
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
    let metrics = api.get("/metrics", "").await.body;
    assert!(
        metrics.contains("ctdata_sighting_conflicts_total{channel=\"http\"} 2"),
        "{metrics}"
    );

    // The dashboard: under Needs attention, the two versions side by side.
    let (_, session) = ctdata_tests::web::sign_in(&base, "alice", "a long enough password");
    let session = session.expect("a session cookie");
    let page = api.page("/", &format!("ctdata_session={session}")).await;
    assert_eq!(page.status, 200);
    let page = page.body;
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
