//! A SMART Mobile patrol as its device writes it: one patrol (start, observations, pause,
//! resume, stop, and its track) cut into three GeoJSON pieces, for the patrol tests.

use serde_json::{json, Value};

pub const DEVICE: &str = "smart-01";
pub const PATROL: &str = "KNP-P-0042";

/// One feature as SMART Mobile writes it; `sighting: None` is a track point.
pub fn feature(n: u32, time: &str, lon: f64, lat: f64, sighting: Option<Value>) -> Value {
    let mut props = json!({
        "id": format!("{{7A1D0C52-4B3E-4F21-9C8D-{n:012X}}}"),
        "deviceId": "{3C9E5B1A-7D2F-4E60-A1B8-0F9E8D7C6B5A}",
        "dateTime": time, "latitude": lat, "longitude": lon, "accuracy": 5.0,
        "ctVersion": "SMART Mobile 7.5.3", "dbName": "Kruger SMART", "appName": "SMART Mobile"});
    if let Some(s) = sighting {
        props["sighting"] = s;
    }
    json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
           "properties": props})
}

pub fn event(kind: &str, counter: u32) -> Value {
    json!({"SMART_ObservationType": kind, "SMART_PatrolID": PATROL, "SMART_ObsCounter": counter,
           "SMART_PatrolLegCounter": 1, "SMART_Employees": "T. Nkosi"})
}

pub fn observation(counter: u32, animal: &str, number: &str) -> Value {
    let mut o = event("Observation", counter);
    o["Animal"] = json!(animal);
    o["Number of animals"] = json!(number);
    o["Age class"] = json!("Adult");
    o
}

pub fn collection(features: Vec<Value>) -> Value {
    json!({"type": "FeatureCollection", "features": features})
}

/// The three pieces of the patrol, in the order SMART cut them.
pub fn pieces() -> [Value; 3] {
    [
        collection(vec![
            feature(
                1,
                "2024-06-02T05:00:00Z",
                31.500,
                -24.900,
                Some(event("NewPatrol", 1)),
            ),
            feature(2, "2024-06-02T05:10:00Z", 31.505, -24.905, None),
            feature(
                3,
                "2024-06-02T05:20:00Z",
                31.507,
                -24.906,
                Some(observation(2, "Diceros bicornis", "2")),
            ),
            feature(4, "2024-06-02T05:25:00Z", 31.510, -24.910, None),
        ]),
        collection(vec![
            feature(
                5,
                "2024-06-02T05:40:00Z",
                31.512,
                -24.912,
                Some(event("PausePatrol", 3)),
            ),
            // Driven while paused: not part of the patrol's distance.
            feature(6, "2024-06-02T05:50:00Z", 31.600, -24.950, None),
            feature(
                7,
                "2024-06-02T06:00:00Z",
                31.601,
                -24.951,
                Some(event("ResumePatrol", 4)),
            ),
            feature(
                8,
                "2024-06-02T06:10:00Z",
                31.602,
                -24.952,
                Some(observation(5, "Loxodonta africana", "14")),
            ),
            feature(9, "2024-06-02T06:15:00Z", 31.603, -24.953, None),
        ]),
        collection(vec![
            feature(10, "2024-06-02T06:30:00Z", 31.610, -24.960, None),
            feature(
                11,
                "2024-06-02T06:45:00Z",
                31.611,
                -24.961,
                Some(event("StopPatrol", 6)),
            ),
        ]),
    ]
}

pub fn name(n: usize) -> String {
    format!("CTDATA_2024-06-02T05_00_00_Patrol-{n:04}.json")
}

/// Great-circle distance by the spherical law of cosines (the server uses haversine).
pub fn metres(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.1.to_radians(), b.1.to_radians());
    let dl = (b.0 - a.0).to_radians();
    let c = p1.sin() * p2.sin() + p1.cos() * p2.cos() * dl.cos();
    6_371_008.8 * c.min(1.0).acos()
}
