//! CyberTracker Classic uploads (HTTP/HTTPS/HTTPZ): the documented shape read as
//! sightings, waypoints counted and not stored, bad features named by index and field,
//! and the HTTPZ compressions (zlib and raw deflate) recognised by content.

use std::io::Write;
use std::ops::ControlFlow;

use base64::Engine;
use ctdata_batch::tracks::extras;
use ctdata_batch::{
    read, scan, Compression, Format, Limits, RejectKind, Rejection, Scan, Sighting,
    CTDATA_NAMESPACE,
};
use flate2::write::{DeflateEncoder, ZlibEncoder};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use uuid::Uuid;

const PHOTO: &str = "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/wAALCAABAAEBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAACf/EABQQAQAAAAAAAAAAAAAAAAAAAAD/2gAIAQEAAD8AKp//2Q==";

/// An upload as CyberTracker Classic sends it: braced GUIDs, UTC times, a waypoint
/// between two sightings, and a photo inlined as base64.
fn upload() -> Value {
    let device = "{0D6A9B12-3C4E-4F50-8A61-7B2C9D0E1F23}";
    let common = |id: &str, time: &str, lon: f64, lat: f64| {
        json!({"id": id, "deviceId": device, "dateTime": time, "latitude": lat,
               "longitude": lon, "ctVersion": "3.520", "dbName": "Kruger Rangers",
               "appName": "CyberTracker"})
    };
    let mut elephant = common(
        "{6F1C2A44-0B7E-4C5D-9A31-2E8F7D6C5B4A}",
        "2024-05-01T04:32:10Z",
        31.59012,
        -24.99312,
    );
    elephant["altitude"] = json!(312.5);
    elephant["accuracy"] = json!(4.0);
    elephant["sighting"] = json!({"Species": "Loxodonta africana", "Count": "3",
        "Behaviour": "Feeding", "{5C1E7A90-1B2C-4D3E-8F40-5A6B7C8D9E0F}": "Male"});
    let mut waypoint = common(
        "{1A2B3C4D-5E6F-4A8B-9C0D-1E2F3A4B5C6D}",
        "2024-05-01T04:40:00Z",
        31.5911,
        -24.9925,
    );
    waypoint["accuracy"] = json!(6.0);
    let mut lion = common(
        "{9E8D7C6B-5A49-4382-B1A0-F9E8D7C6B5A4}",
        "2024-05-01T05:02:45.500Z",
        31.6002,
        -24.9871,
    );
    lion["sighting"] =
        json!({"species": "Panthera leo", "count": 2, "observer": "T. Nkosi", "Photo": PHOTO});
    let feature = |props: Value, lon: f64, lat: f64| {
        json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
               "properties": props})
    };
    json!({"type": "FeatureCollection", "features": [
        feature(elephant, 31.59012, -24.99312),
        feature(waypoint, 31.5911, -24.9925),
        feature(lion, 31.6002, -24.9871),
    ]})
}

fn file(bytes: &[u8]) -> NamedTempFile {
    let mut f = NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn load_bytes(bytes: &[u8]) -> Result<(Scan, Vec<Sighting>), Rejection> {
    let f = file(bytes);
    let limits = Limits::default();
    let s = scan(f.path(), &limits)?;
    let mut rows = Vec::new();
    read(f.path(), &s, &limits, |r| {
        rows.push(r);
        ControlFlow::Continue(())
    })?;
    Ok((s, rows))
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(bytes: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn an_upload_becomes_sightings_and_skips_its_waypoint() {
    let text = serde_json::to_vec_pretty(&upload()).unwrap();
    let (s, rows) = load_bytes(&text).unwrap();
    assert_eq!(
        (s.format, s.waypoints, s.compression),
        (Format::Cybertracker, 1, None)
    );
    assert_eq!(
        s.batch_id,
        Uuid::new_v5(&CTDATA_NAMESPACE, s.sha256.as_bytes())
    );
    assert_eq!(rows.len(), 2);

    let e = &rows[0];
    assert_eq!(e.id.to_string(), "6f1c2a44-0b7e-4c5d-9a31-2e8f7d6c5b4a");
    assert_eq!(e.observed_at.to_rfc3339(), "2024-05-01T04:32:10+00:00");
    assert_eq!(
        (e.latitude, e.longitude, e.altitude, e.accuracy),
        (-24.99312, 31.59012, Some(312.5), Some(4.0))
    );
    assert_eq!(
        (e.species.as_deref(), e.count, e.observer.as_deref()),
        (Some("Loxodonta africana"), Some(3), None)
    );
    let want = json!({"Behaviour": "Feeding", "{5C1E7A90-1B2C-4D3E-8F40-5A6B7C8D9E0F}": "Male",
        "cybertracker": {"deviceId": "0d6a9b12-3c4e-4f50-8a61-7b2c9d0e1f23", "ctVersion": "3.520",
        "dbName": "Kruger Rangers", "appName": "CyberTracker"}});
    assert_eq!(Value::Object(e.attributes.clone()), want);

    let l = &rows[1];
    assert_eq!(l.id.to_string(), "9e8d7c6b-5a49-4382-b1a0-f9e8d7c6b5a4");
    assert_eq!(l.observed_at.to_rfc3339(), "2024-05-01T05:02:45.500+00:00");
    assert_eq!((l.altitude, l.accuracy), (None, None));
    assert_eq!(
        (l.species.as_deref(), l.count, l.observer.as_deref()),
        (Some("Panthera leo"), Some(2), Some("T. Nkosi"))
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(PHOTO)
        .unwrap();
    assert_eq!(
        l.attributes["Photo"],
        json!({"name": "Photo", "type": "image/jpeg", "size": bytes.len(),
               "sha256": hex::encode(Sha256::digest(&bytes)),
               "kept": "in the attachment store (by sha256) and the batch's archived original"}),
        "inline media is listed, not stored as base64"
    );

    let f = file(&text);
    let x = extras(f.path(), &s, &Limits::default()).unwrap();
    assert_eq!(x.patrol_events, vec![]);
    assert_eq!(x.track.len(), 1);
    let p = &x.track[0];
    assert_eq!(
        (
            p.time.to_rfc3339(),
            p.latitude,
            p.longitude,
            p.altitude,
            p.accuracy
        ),
        (
            "2024-05-01T04:40:00+00:00".into(),
            -24.9925,
            31.5911,
            None,
            Some(6.0)
        )
    );
}

#[test]
fn an_element_named_like_an_envelope_property_is_kept_apart() {
    let mut doc = upload();
    doc["features"][0]["properties"]["sighting"]["appName"] = json!("Ranger app 2");
    doc["features"][0]["properties"]["sighting"]["deviceId"] = json!("handheld 7");
    let (_, rows) = load_bytes(&serde_json::to_vec(&doc).unwrap()).unwrap();
    let a = &rows[0].attributes;
    assert_eq!(
        (&a["appName"], &a["deviceId"]),
        (&json!("Ranger app 2"), &json!("handheld 7"))
    );
    assert_eq!(a["cybertracker"]["appName"], "CyberTracker");
}

#[test]
fn data_uris_and_short_words_are_told_apart() {
    let mut doc = upload();
    let wav = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=";
    doc["features"][2]["properties"]["sighting"]["Call"] =
        json!(format!("data:audio/wav;base64,{wav}"));
    doc["features"][2]["properties"]["sighting"]["Code"] = json!("QUJD");
    let (_, rows) = load_bytes(&serde_json::to_vec(&doc).unwrap()).unwrap();
    let a = &rows[1].attributes;
    assert_eq!(
        (&a["Call"]["type"], &a["Call"]["size"]),
        (&json!("audio/wav"), &json!(44))
    );
    assert_eq!(a["Code"], "QUJD", "a short word is not media");
}

#[test]
fn zlib_and_raw_deflate_are_recognised_and_hash_the_content() {
    let text = upload().to_string().into_bytes();
    let (plain, _) = load_bytes(&text).unwrap();
    for (packed, how) in [
        (zlib(&text), Compression::Zlib),
        (raw_deflate(&text), Compression::Deflate),
    ] {
        let (s, rows) = load_bytes(&packed).unwrap();
        assert_eq!(
            (s.compression, s.gzip, s.format),
            (Some(how), true, Format::Cybertracker)
        );
        assert_eq!(
            (s.sha256.as_str(), s.batch_id),
            (plain.sha256.as_str(), plain.batch_id)
        );
        assert_eq!(rows.len(), 2);
    }
    // Other formats inflate the same way.
    let csv = b"id,observed_at,latitude,longitude\n3f2b8c1e-5d4a-4e8b-9c7d-1a2b3c4d5e6f,2024-05-01T06:30:00Z,1,2\n";
    let (s, rows) = load_bytes(&raw_deflate(csv)).unwrap();
    assert_eq!(
        (s.format, s.compression, rows.len()),
        (Format::Csv, Some(Compression::Deflate), 1)
    );
}

#[test]
fn deflate_bombs_and_broken_streams_are_refused() {
    let zeros = vec![b' '; 8 << 20];
    let mut doc = b"{\"type\":\"FeatureCollection\",\"features\":[]".to_vec();
    doc.extend_from_slice(&zeros);
    doc.push(b'}');
    for packed in [zlib(&doc), raw_deflate(&doc)] {
        let r = load_bytes(&packed).unwrap_err();
        assert_eq!(r.kind, RejectKind::TooLarge, "{r}");
        assert!(r.summary.contains("ratio of 100:1"), "{r}");
    }
    let mut cut = zlib(&upload().to_string().into_bytes());
    cut.truncate(cut.len() / 2);
    let r = load_bytes(&cut).unwrap_err();
    assert_eq!(r.kind, RejectKind::Compression, "{r}");
    assert!(r.summary.contains("zlib data is truncated"), "{r}");
}

/// The single problem of a refused upload, as (path, field, message).
fn refusal(doc: &Value) -> (RejectKind, Vec<(String, String, String)>) {
    let r = load_bytes(doc.to_string().as_bytes()).unwrap_err();
    let problems = r
        .problems
        .iter()
        .map(|p| {
            let path = p.at.path.clone().unwrap_or_default();
            (path, p.field.clone().unwrap_or_default(), p.message.clone())
        })
        .collect();
    (r.kind, problems)
}

#[test]
fn bad_features_are_named_by_index_and_field() {
    let mut doc = upload();
    doc["features"][2]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("id");
    let (kind, problems) = refusal(&doc);
    assert_eq!(kind, RejectKind::InvalidRows);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (problems[0].0.as_str(), problems[0].1.as_str()),
        ("features[2].properties.id", "id")
    );

    let mut doc = upload();
    doc["features"][1]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("dateTime");
    let (_, problems) = refusal(&doc);
    assert_eq!(
        (problems[0].0.as_str(), problems[0].1.as_str()),
        ("features[1].properties.dateTime", "dateTime"),
        "a waypoint needs its time too"
    );

    let mut doc = upload();
    doc["features"][0]["properties"]["dateTime"] = json!("2024-05-01T04:32:10");
    let (_, problems) = refusal(&doc);
    assert_eq!(
        (problems[0].0.as_str(), problems[0].1.as_str()),
        ("features[0].properties.dateTime", "dateTime")
    );
    assert!(problems[0].2.contains("no UTC offset"), "{problems:?}");

    let mut doc = upload();
    doc["features"][2]["geometry"] =
        json!({"type": "MultiPoint", "coordinates": [[31.6, -24.98], [31.61, -24.99]]});
    let (_, problems) = refusal(&doc);
    assert_eq!(
        (problems[0].0.as_str(), problems[0].1.as_str()),
        ("features[2].geometry.type", "geometry")
    );

    let mut doc = upload();
    doc["features"][0]["properties"]["id"] = json!("{not-a-guid}");
    let (_, problems) = refusal(&doc);
    assert_eq!(
        (problems[0].0.as_str(), problems[0].1.as_str()),
        ("features[0].properties.id", "id")
    );
}

#[test]
fn a_body_that_is_not_geojson_is_refused() {
    let (kind, _) = refusal(&json!({"sightings_from": "CyberTracker", "features_count": 2}));
    assert_eq!(kind, RejectKind::UnknownFormat);
    let r = load_bytes(&zlib(b"<html>not json</html>")).unwrap_err();
    assert_eq!(r.kind, RejectKind::UnknownFormat, "{r}");
}

#[test]
fn plain_geojson_is_still_plain() {
    let doc = json!({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [16.3, -18.8]},
         "properties": {"eventDate": "2024-06-11T05:58:00Z", "dateTime": "local noon"}}]});
    let (s, rows) = load_bytes(doc.to_string().as_bytes()).unwrap();
    assert_eq!((s.format, s.waypoints, rows.len()), (Format::Geojson, 0, 1));
}

/// A SMART Mobile piece: a patrol start, an observation, a track point and a pause.
fn smart_piece() -> Value {
    let feature = |id: &str, time: &str, lon: f64, lat: f64, sighting: Option<Value>| {
        let mut props = json!({"id": id, "deviceId": "{0D6A9B12-3C4E-4F50-8A61-7B2C9D0E1F23}",
            "dateTime": time, "latitude": lat, "longitude": lon, "ctVersion": "SMART 7.5",
            "appName": "SMART Mobile"});
        if let Some(s) = sighting {
            props["sighting"] = s;
        }
        json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
               "properties": props})
    };
    let smart = |kind: &str, counter: u32| {
        json!({"SMART_ObservationType": kind, "SMART_PatrolID": "KNP-P-0042",
               "SMART_ObsCounter": counter, "SMART_PatrolLegCounter": 1,
               "SMART_Employees": "T. Nkosi; J. Mokoena"})
    };
    let mut obs = smart("Observation", 2);
    obs["species"] = json!("Diceros bicornis");
    obs["Number of animals"] = json!(1);
    json!({"type": "FeatureCollection", "features": [
        feature("{11111111-2222-4333-8444-555555555501}", "2024-06-02T05:00:00Z", 31.50, -24.90, Some(smart("NewPatrol", 1))),
        feature("{11111111-2222-4333-8444-555555555502}", "2024-06-02T05:20:00Z", 31.51, -24.91, Some(obs)),
        feature("{11111111-2222-4333-8444-555555555503}", "2024-06-02T05:30:00Z", 31.52, -24.92, None),
        feature("{11111111-2222-4333-8444-555555555504}", "2024-06-02T05:40:00Z", 31.53, -24.93, Some(smart("PausePatrol", 3))),
    ]})
}

#[test]
fn smart_observations_are_sightings_and_patrol_events_are_not() {
    let text = serde_json::to_vec(&smart_piece()).unwrap();
    let (s, rows) = load_bytes(&text).unwrap();
    assert_eq!((s.format, s.waypoints), (Format::Cybertracker, 1));
    assert_eq!(rows.len(), 1, "only the observation is a sighting");
    let o = &rows[0];
    assert_eq!(o.species.as_deref(), Some("Diceros bicornis"));
    assert_eq!(o.attributes["event_id"], "KNP-P-0042");
    assert_eq!(o.attributes["SMART_ObservationType"], "Observation");

    let f = file(&text);
    let x = extras(f.path(), &s, &Limits::default()).unwrap();
    assert_eq!(x.track.len(), 1);
    let kinds: Vec<_> = x
        .patrol_events
        .iter()
        .map(|e| {
            (
                e.kind.as_str(),
                e.patrol_id.as_str(),
                e.leg,
                e.time.to_rfc3339(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "NewPatrol",
                "KNP-P-0042",
                Some(1),
                "2024-06-02T05:00:00+00:00".to_string()
            ),
            (
                "PausePatrol",
                "KNP-P-0042",
                Some(1),
                "2024-06-02T05:40:00+00:00".to_string()
            ),
        ]
    );
    assert_eq!(
        x.patrol_events[0].id.to_string(),
        "11111111-2222-4333-8444-555555555501"
    );
}

#[test]
fn a_multipoint_is_refused_with_its_index() {
    let mut doc = upload();
    doc["features"][1]["geometry"] = json!({"type": "MultiPoint", "coordinates": [[31.0, -24.0]]});
    let (kind, problems) = refusal(&doc);
    assert_eq!(kind, RejectKind::InvalidRows);
    assert_eq!(
        (problems[0].0.as_str(), problems[0].1.as_str()),
        ("features[1].geometry.type", "geometry")
    );
}
