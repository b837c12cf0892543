//! The tracks and patrols exports: track points as GeoJSON LineStrings (one per device
//! and UTC day) or CSV, and SMART patrols merged from their events, one row each.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::db::{Db, PatrolRow, TrackRow};

/// How the tracks are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackFormat {
    /// An RFC 7946 FeatureCollection: a LineString per device and UTC day (a Point
    /// for a day with one track point).
    Geojson,
    /// One row per track point.
    Csv,
}

impl TrackFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            TrackFormat::Geojson => "application/geo+json",
            TrackFormat::Csv => "text/csv; charset=utf-8",
        }
    }
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The tracks of one device or all, written whole.
pub async fn tracks(db: &Db, format: TrackFormat, device: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let points = db.track_points(device).await?;
    Ok(match format {
        TrackFormat::Geojson => serde_json::to_vec(&lines(&points))?,
        TrackFormat::Csv => track_csv(&points)?,
    })
}

fn position(p: &TrackRow) -> Value {
    match p.altitude {
        Some(alt) => json!([p.longitude, p.latitude, alt]),
        None => json!([p.longitude, p.latitude]),
    }
}

/// Points come sorted by device and time, so each (device, day) is one run.
fn lines(points: &[TrackRow]) -> Value {
    let mut features = Vec::new();
    for run in points.chunk_by(|a, b| {
        a.device == b.device && a.recorded_at.date_naive() == b.recorded_at.date_naive()
    }) {
        let (first, last) = (&run[0], &run[run.len() - 1]);
        let geometry = if run.len() == 1 {
            json!({"type": "Point", "coordinates": position(first)})
        } else {
            let coords: Vec<Value> = run.iter().map(position).collect();
            json!({"type": "LineString", "coordinates": coords})
        };
        features.push(json!({
            "type": "Feature",
            "geometry": geometry,
            "properties": {
                "device": first.device,
                "day": first.recorded_at.date_naive().to_string(),
                "points": run.len(),
                "start": time(&first.recorded_at),
                "end": time(&last.recorded_at),
                "times": run.iter().map(|p| time(&p.recorded_at)).collect::<Vec<_>>(),
                "distance_m": round(path_length(run.iter().map(|p| (p.latitude, p.longitude)))),
            }
        }));
    }
    json!({"type": "FeatureCollection", "features": features})
}

fn track_csv(points: &[TrackRow]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "device",
        "time",
        "latitude",
        "longitude",
        "altitude",
        "accuracy",
    ])?;
    let opt = |x: Option<f64>| x.map(|x| x.to_string()).unwrap_or_default();
    for p in points {
        w.write_record([
            p.device.clone(),
            time(&p.recorded_at),
            p.latitude.to_string(),
            p.longitude.to_string(),
            opt(p.altitude),
            opt(p.accuracy),
        ])?;
    }
    Ok(w.into_inner()?)
}

/// One patrol, merged from all its events whatever batch brought them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Patrol {
    pub patrol_id: String,
    pub device: String,
    /// The NewPatrol event's time; empty until that piece arrives.
    pub start: Option<DateTime<Utc>>,
    /// The StopPatrol event's time; empty while the patrol is open.
    pub end: Option<DateTime<Utc>>,
    /// Metres along the device's track while the patrol ran (pauses left out).
    pub distance_m: f64,
    pub observations: i64,
    pub events: usize,
}

/// Every patrol, by patrol id.
pub async fn patrols(db: &Db) -> anyhow::Result<Vec<Patrol>> {
    let events = db.patrol_events().await?;
    let counts: BTreeMap<String, i64> = db.observations_per_patrol().await?.into_iter().collect();
    let mut tracks: BTreeMap<String, Vec<TrackRow>> = BTreeMap::new();
    let mut out = Vec::new();
    for run in events.chunk_by(|a, b| a.patrol_id == b.patrol_id) {
        let device = run[0].device.clone();
        if !tracks.contains_key(&device) {
            let points = db.track_points(Some(&device)).await?;
            tracks.insert(device.clone(), points);
        }
        let points = &tracks[&device];
        let of = |kind: &str| run.iter().find(|e| e.kind == kind).map(|e| e.occurred_at);
        out.push(Patrol {
            patrol_id: run[0].patrol_id.clone(),
            device,
            start: of("NewPatrol"),
            end: of("StopPatrol"),
            distance_m: round(
                active(run)
                    .iter()
                    .map(|(from, to)| {
                        let inside = points.iter().filter(|p| {
                            p.recorded_at >= *from && to.is_none_or(|to| p.recorded_at <= to)
                        });
                        path_length(inside.map(|p| (p.latitude, p.longitude)))
                    })
                    .sum(),
            ),
            observations: counts.get(&run[0].patrol_id).copied().unwrap_or(0),
            events: run.len(),
        });
    }
    Ok(out)
}

/// The stretches a patrol was running: from its start (or first event) to a pause or
/// stop, and from each resume on. An open end is `None`.
fn active(events: &[PatrolRow]) -> Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    let mut out = Vec::new();
    let mut open = Some(events[0].occurred_at);
    for e in events {
        match e.kind.as_str() {
            "PausePatrol" | "StopPatrol" => {
                if let Some(from) = open.take() {
                    out.push((from, Some(e.occurred_at)));
                }
            }
            "ResumePatrol" | "NewPatrol" if open.is_none() => open = Some(e.occurred_at),
            _ => {}
        }
    }
    if let Some(from) = open {
        out.push((from, None));
    }
    out
}

pub fn patrols_csv(patrols: &[Patrol]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "patrol_id",
        "device",
        "start",
        "end",
        "distance_m",
        "observations",
        "events",
    ])?;
    let t = |x: &Option<DateTime<Utc>>| x.as_ref().map(time).unwrap_or_default();
    for p in patrols {
        w.write_record([
            p.patrol_id.clone(),
            p.device.clone(),
            t(&p.start),
            t(&p.end),
            p.distance_m.to_string(),
            p.observations.to_string(),
            p.events.to_string(),
        ])?;
    }
    Ok(w.into_inner()?)
}

/// Great-circle length in metres of a path of (latitude, longitude) points.
pub fn path_length(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_008.8;
    let mut total = 0.0;
    let mut prev: Option<(f64, f64)> = None;
    for (lat, lon) in points {
        if let Some((plat, plon)) = prev {
            let (p1, p2) = (plat.to_radians(), lat.to_radians());
            let dphi = p2 - p1;
            let dl = (lon - plon).to_radians();
            let a = (dphi / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
            total += 2.0 * EARTH_RADIUS_M * a.sqrt().asin();
        }
        prev = Some((lat, lon));
    }
    total
}

/// To the decimetre: more is noise for a GPS track.
fn round(m: f64) -> f64 {
    (m * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_degree_of_latitude_is_about_111_km() {
        let m = path_length([(0.0, 31.0), (1.0, 31.0)].into_iter());
        assert!((m - 111_195.0).abs() < 1.0, "{m}");
        assert_eq!(path_length([(5.0, 5.0)].into_iter()), 0.0);
    }

    #[test]
    fn pauses_split_a_patrol() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let e = |kind: &str, t: &str| PatrolRow {
            patrol_id: "P".into(),
            device: "d".into(),
            kind: kind.into(),
            occurred_at: at(t),
            latitude: 0.0,
            longitude: 0.0,
        };
        let events = [
            e("NewPatrol", "2024-06-02T05:00:00Z"),
            e("PausePatrol", "2024-06-02T06:00:00Z"),
            e("ResumePatrol", "2024-06-02T07:00:00Z"),
            e("StopPatrol", "2024-06-02T08:00:00Z"),
        ];
        assert_eq!(
            active(&events),
            [
                (at("2024-06-02T05:00:00Z"), Some(at("2024-06-02T06:00:00Z"))),
                (at("2024-06-02T07:00:00Z"), Some(at("2024-06-02T08:00:00Z"))),
            ]
        );
        assert_eq!(
            active(&events[..3]),
            [
                (at("2024-06-02T05:00:00Z"), Some(at("2024-06-02T06:00:00Z"))),
                (at("2024-06-02T07:00:00Z"), None),
            ]
        );
    }
}
