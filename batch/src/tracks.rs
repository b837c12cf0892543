//! What a batch carries besides sightings: track points (CyberTracker waypoints) and
//! SMART patrol events. [`read`](crate::read) validates them with the rest of the file
//! but never hands them to its sighting sink; [`extras`] collects them in a pass of
//! its own, so a format that has track points (CyberTracker uploads, and the
//! `Waypoints.dat` of a CTX) only needs to produce them here, and the server stores them with the batch in the
//! same transaction.

use std::path::Path;

use chrono::{DateTime, FixedOffset};
use serde::de::SeqAccess;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::cybertracker::{self, Parsed};
use crate::fields::RowAt;
use crate::input::Input;
use crate::json::{self, ArrayKind, Elements};
use crate::model::{Format, Limits, Rejection, Scan, Sighting};

/// One point of a device's track.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackPoint {
    pub time: DateTime<FixedOffset>,
    pub latitude: f64,
    pub longitude: f64,
    pub altitude: Option<f64>,
    pub accuracy: Option<f64>,
}

impl From<Sighting> for TrackPoint {
    fn from(s: Sighting) -> TrackPoint {
        TrackPoint {
            time: s.observed_at,
            latitude: s.latitude,
            longitude: s.longitude,
            altitude: s.altitude,
            accuracy: s.accuracy,
        }
    }
}

/// One SMART patrol event (NewPatrol, StopPatrol, PausePatrol, ResumePatrol,
/// ChangePatrol): when and where it happened, and the rest of what SMART wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatrolEvent {
    /// The feature's GUID: the same event delivered twice is stored once.
    pub id: Uuid,
    pub patrol_id: String,
    pub kind: String,
    pub time: DateTime<FixedOffset>,
    pub latitude: f64,
    pub longitude: f64,
    /// `SMART_PatrolLegCounter`, when given as a number.
    pub leg: Option<i64>,
    pub attributes: Map<String, Value>,
}

impl PatrolEvent {
    pub(crate) fn new(kind: String, patrol_id: String, s: Sighting) -> PatrolEvent {
        let leg = s.attributes.get("SMART_PatrolLegCounter").and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|t| t.trim().parse().ok()))
        });
        PatrolEvent {
            id: s.id,
            patrol_id,
            kind,
            time: s.observed_at,
            latitude: s.latitude,
            longitude: s.longitude,
            leg,
            attributes: s.attributes,
        }
    }
}

/// The track points and patrol events of one batch, in file order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Extras {
    pub track: Vec<TrackPoint>,
    pub patrol_events: Vec<PatrolEvent>,
}

impl Extras {
    pub fn is_empty(&self) -> bool {
        self.track.is_empty() && self.patrol_events.is_empty()
    }
}

/// Collects a scanned file's track points and patrol events. Invalid features are
/// passed over here: [`read`](crate::read) refuses the file for them, and then none of
/// this is stored. Formats without extras give an empty set without reading the file.
pub fn extras(path: &Path, scan: &Scan, limits: &Limits) -> Result<Extras, Rejection> {
    match scan.format {
        Format::Cybertracker => {}
        Format::Ctx => {
            return Ok(Extras {
                track: crate::ctx::track(path, &scan.sha256, limits)?,
                patrol_events: Vec::new(),
            })
        }
        _ => return Ok(Extras::default()),
    }
    let mut input = Input::open(path, limits)?;
    input.skip_bom()?;
    let mut collector = Collector {
        sha256: &scan.sha256,
        extras: Extras::default(),
    };
    json::parse(&mut input, &mut collector)?;
    Ok(collector.extras)
}

struct Collector<'a> {
    sha256: &'a str,
    extras: Extras,
}

impl Elements for Collector<'_> {
    fn elements<'de, A: SeqAccess<'de>>(
        &mut self,
        kind: ArrayKind,
        mut seq: A,
    ) -> Result<u64, A::Error> {
        let mut i = 0;
        while let Some(v) = seq.next_element::<Value>()? {
            if kind == ArrayKind::Features {
                let row = RowAt {
                    line: None,
                    prefix: Some(format!("features[{i}]")),
                };
                match cybertracker::feature(v, &row, self.sha256, i) {
                    Ok(Parsed::Waypoint(p)) => self.extras.track.push(p),
                    Ok(Parsed::Patrol(e)) => self.extras.patrol_events.push(e),
                    Ok(Parsed::Sighting(_)) | Err(_) => {}
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

/// Base64 media inlined in a sighting element.
pub(crate) mod media {
    use base64::Engine;
    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};

    /// Shorter strings are left alone: a word such as "Male" is valid base64 too.
    const MIN_CHARS: usize = 64;

    /// For a value that is base64 media (a `data:` URI, or bare base64 whose bytes
    /// start like a known media file), its listing: name, type, size and sha256.
    pub(crate) fn describe(name: &str, s: &str) -> Option<Value> {
        let (declared, data) = match s.strip_prefix("data:") {
            Some(rest) => {
                let (head, data) = rest.split_once(',')?;
                let mime = head.strip_suffix(";base64")?;
                (Some(mime.to_string()), data)
            }
            None => (None, s),
        };
        if data.len() < MIN_CHARS && declared.is_none() {
            return None;
        }
        let compact: String = data.split_ascii_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .ok()?;
        let mime = declared.or_else(|| sniff(&bytes).map(str::to_string))?;
        Some(json!({
            "name": name,
            "type": mime,
            "size": bytes.len(),
            "sha256": hex::encode(Sha256::digest(&bytes)),
            "kept": "in the attachment store (by sha256) and the batch's archived original",
        }))
    }

    /// The media types CyberTracker and SMART attach, by their first bytes.
    fn sniff(b: &[u8]) -> Option<&'static str> {
        Some(match b {
            [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
            [0x89, b'P', b'N', b'G', ..] => "image/png",
            [b'G', b'I', b'F', b'8', ..] => "image/gif",
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'A', b'V', b'E', ..] => "audio/wav",
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
            [b'#', b'!', b'A', b'M', b'R', ..] => "audio/amr",
            [b'I', b'D', b'3', ..] => "audio/mpeg",
            [b'O', b'g', b'g', b'S', ..] => "audio/ogg",
            [_, _, _, _, b'f', b't', b'y', b'p', ..] => "video/mp4",
            _ => return None,
        })
    }
}
