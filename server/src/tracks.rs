//! The tracks and patrols exports: track points as GeoJSON LineStrings (one per device
//! and UTC day) or CSV, and SMART patrols merged from their events, one row each.

//!
//! Both are streamed: track points come from a database cursor and go out in chunks of
//! about 64 KiB, and patrols are read a page of patrols at a time, so memory stays
//! bounded however many points and patrols there are (only the one device-day being
//! written as a LineString is held).

use std::collections::VecDeque;
use std::fmt::Write as _;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use futures::{Stream, StreamExt};
use serde_json::json;

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

/// Output is handed on in pieces of about this size.
const CHUNK: usize = 64 * 1024;

/// The tracks of one device or all as a stream of chunks, read from the database only
/// as fast as they are taken.
pub fn track_chunks(
    db: &Db,
    format: TrackFormat,
    device: Option<String>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let mut enc = TrackEncoder::new(format);
    enc.head();
    let state = Some((db.track_points(device), enc));
    futures::stream::unfold(state, |state| async move {
        let (mut points, mut enc) = state?;
        while enc.out.len() < CHUNK {
            match points.next().await {
                Some(Ok(p)) => enc.point(p),
                Some(Err(e)) => {
                    tracing::warn!(points = enc.points, "tracks export failed: {e}");
                    return Some((Err(std::io::Error::other(e)), None));
                }
                None => {
                    enc.tail();
                    tracing::info!(points = enc.points, "tracks export sent");
                    return Some((Ok(Bytes::from(enc.out)), None));
                }
            }
        }
        let chunk = Bytes::from(std::mem::take(&mut enc.out));
        Some((Ok(chunk), Some((points, enc))))
    })
}

/// Turns track points, sorted by device and time, into bytes of one format.
struct TrackEncoder {
    format: TrackFormat,
    out: Vec<u8>,
    points: u64,
    features: u64,
    /// The device-day being gathered into one GeoJSON feature.
    run: Option<Run>,
}

/// One device's points of one UTC day, as text ready to write.
struct Run {
    device: String,
    day: NaiveDate,
    points: u64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// `[lon,lat(,alt)]` positions, comma-separated.
    coordinates: String,
    /// Quoted times, comma-separated.
    times: String,
    length: PathLength,
}

impl TrackEncoder {
    fn new(format: TrackFormat) -> TrackEncoder {
        TrackEncoder {
            format,
            out: Vec::with_capacity(CHUNK + 4096),
            points: 0,
            features: 0,
            run: None,
        }
    }

    fn head(&mut self) {
        match self.format {
            TrackFormat::Geojson => self
                .out
                .extend_from_slice(b"{\"type\":\"FeatureCollection\",\"features\":[\n"),
            TrackFormat::Csv => self
                .out
                .extend_from_slice(b"device,time,latitude,longitude,altitude,accuracy\n"),
        }
    }

    fn point(&mut self, p: TrackRow) {
        self.points += 1;
        match self.format {
            TrackFormat::Csv => self.csv_row(&p),
            TrackFormat::Geojson => {
                let day = p.recorded_at.date_naive();
                if self
                    .run
                    .as_ref()
                    .is_some_and(|r| r.device != p.device || r.day != day)
                {
                    self.end_run();
                }
                let run = self.run.get_or_insert_with(|| Run {
                    device: p.device.clone(),
                    day,
                    points: 0,
                    start: p.recorded_at,
                    end: p.recorded_at,
                    coordinates: String::new(),
                    times: String::new(),
                    length: PathLength::default(),
                });
                if run.points > 0 {
                    run.coordinates.push(',');
                    run.times.push(',');
                }
                let position = match p.altitude {
                    Some(alt) => json!([p.longitude, p.latitude, alt]),
                    None => json!([p.longitude, p.latitude]),
                };
                let _ = write!(run.coordinates, "{position}");
                let _ = write!(run.times, "\"{}\"", time(&p.recorded_at));
                run.points += 1;
                run.end = p.recorded_at;
                run.length.add((p.latitude, p.longitude));
            }
        }
    }

    fn csv_row(&mut self, p: &TrackRow) {
        let opt = |x: Option<f64>| x.map(|x| x.to_string()).unwrap_or_default();
        let mut w = csv::Writer::from_writer(&mut self.out);
        // Writing to memory cannot fail.
        let _ = w.write_record([
            p.device.as_str(),
            &time(&p.recorded_at),
            &p.latitude.to_string(),
            &p.longitude.to_string(),
            &opt(p.altitude),
            &opt(p.accuracy),
        ]);
        let _ = w.flush();
    }

    /// Writes the gathered device-day as a LineString (a Point for one point).
    fn end_run(&mut self) {
        let Some(r) = self.run.take() else {
            return;
        };
        if self.features > 0 {
            self.out.extend_from_slice(b",\n");
        }
        self.features += 1;
        let kind = if r.points == 1 { "Point" } else { "LineString" };
        let coordinates = if r.points == 1 {
            r.coordinates
        } else {
            format!("[{}]", r.coordinates)
        };
        let properties = json!({
            "device": r.device,
            "day": r.day.to_string(),
            "points": r.points,
            "start": time(&r.start),
            "end": time(&r.end),
            "distance_m": round(r.length.metres()),
        })
        .to_string();
        // The times go in as written: `properties` ends with `}`.
        let feature = format!(
            "{{\"type\":\"Feature\",\"geometry\":{{\"type\":\"{kind}\",\"coordinates\":{coordinates}}},\
             \"properties\":{},\"times\":[{}]}}}}",
            &properties[..properties.len() - 1],
            r.times
        );
        self.out.extend_from_slice(feature.as_bytes());
    }

    fn tail(&mut self) {
        if self.format == TrackFormat::Geojson {
            self.end_run();
            self.out.extend_from_slice(b"\n]}\n");
        }
    }
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

/// Up to `limit` patrols whose id sorts after `after`, by patrol id.
pub async fn patrols_page(db: &Db, after: Option<&str>, limit: i64) -> anyhow::Result<Vec<Patrol>> {
    let events = db.patrol_events(after, limit).await?;
    let mut out = Vec::new();
    for run in events.chunk_by(|a, b| a.patrol_id == b.patrol_id) {
        let device = run[0].device.clone();
        let mut distance = 0.0;
        for (from, to) in active(run) {
            distance += db.track_length(&device, from, to).await?;
        }
        let of = |kind: &str| run.iter().find(|e| e.kind == kind).map(|e| e.occurred_at);
        out.push(Patrol {
            patrol_id: run[0].patrol_id.clone(),
            device,
            start: of("NewPatrol"),
            end: of("StopPatrol"),
            distance_m: round(distance),
            observations: run[0].observations,
            events: run.len(),
        });
    }
    Ok(out)
}

/// Patrols read per page by [`patrols`].
const PATROL_PAGE: i64 = 500;

/// Every patrol, by patrol id, read a page at a time.
pub fn patrols(db: &Db) -> impl Stream<Item = anyhow::Result<Patrol>> + Send + 'static {
    let db = db.clone();
    // (the page in hand, the last patrol id read, whether there are more pages)
    let state = (VecDeque::<Patrol>::new(), None::<String>, true);
    futures::stream::unfold(Some(state), move |state| {
        let db = db.clone();
        async move {
            let (mut page, mut after, mut more) = state?;
            if page.is_empty() && more {
                match patrols_page(&db, after.as_deref(), PATROL_PAGE).await {
                    Ok(next) => {
                        more = next.len() as i64 == PATROL_PAGE;
                        after = next.last().map(|p| p.patrol_id.clone());
                        page = next.into();
                    }
                    Err(e) => return Some((Err(e), None)),
                }
            }
            let patrol = page.pop_front()?;
            Some((Ok(patrol), Some((page, after, more))))
        }
    })
}

/// How the patrols are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatrolFormat {
    /// One row per patrol.
    Csv,
    /// A JSON array of patrol objects.
    Json,
}

/// Every patrol in `format` as a stream of chunks.
pub fn patrol_chunks(
    db: &Db,
    format: PatrolFormat,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let head: &[u8] = match format {
        PatrolFormat::Csv => b"patrol_id,device,start,end,distance_m,observations,events\n",
        PatrolFormat::Json => b"[",
    };
    let state = Some((patrols(db).boxed(), head.to_vec(), 0u64));
    futures::stream::unfold(state, move |state| async move {
        let (mut patrols, mut out, mut n) = state?;
        while out.len() < CHUNK {
            match patrols.next().await {
                Some(Ok(p)) => {
                    match format {
                        PatrolFormat::Csv => patrol_csv(&mut out, &p),
                        PatrolFormat::Json => {
                            if n > 0 {
                                out.push(b',');
                            }
                            let _ = serde_json::to_writer(&mut out, &p);
                        }
                    }
                    n += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(patrols = n, "patrols export failed: {e:#}");
                    return Some((Err(std::io::Error::other(e)), None));
                }
                None => {
                    if format == PatrolFormat::Json {
                        out.extend_from_slice(b"]\n");
                    }
                    tracing::info!(patrols = n, "patrols export sent");
                    return Some((Ok(Bytes::from(out)), None));
                }
            }
        }
        let chunk = Bytes::from(std::mem::take(&mut out));
        Some((Ok(chunk), Some((patrols, out, n))))
    })
}

fn patrol_csv(out: &mut Vec<u8>, p: &Patrol) {
    let t = |x: &Option<DateTime<Utc>>| x.as_ref().map(time).unwrap_or_default();
    let mut w = csv::Writer::from_writer(out);
    // Writing to memory cannot fail.
    let _ = w.write_record([
        p.patrol_id.as_str(),
        &p.device,
        &t(&p.start),
        &t(&p.end),
        &p.distance_m.to_string(),
        &p.observations.to_string(),
        &p.events.to_string(),
    ]);
    let _ = w.flush();
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

/// Great-circle length of a path of (latitude, longitude) points, added one at a time.
#[derive(Debug, Default, Clone, Copy)]
pub struct PathLength {
    total: f64,
    prev: Option<(f64, f64)>,
}

impl PathLength {
    pub fn add(&mut self, (lat, lon): (f64, f64)) {
        const EARTH_RADIUS_M: f64 = 6_371_008.8;
        if let Some((plat, plon)) = self.prev {
            let (p1, p2) = (plat.to_radians(), lat.to_radians());
            let dphi = p2 - p1;
            let dl = (lon - plon).to_radians();
            let a = (dphi / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
            self.total += 2.0 * EARTH_RADIUS_M * a.sqrt().asin();
        }
        self.prev = Some((lat, lon));
    }

    /// Metres so far.
    pub fn metres(&self) -> f64 {
        self.total
    }
}

/// Great-circle length in metres of a path of (latitude, longitude) points.
pub fn path_length(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let mut length = PathLength::default();
    points.for_each(|p| length.add(p));
    length.metres()
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
            observations: 0,
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
