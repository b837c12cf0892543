//! The one batch builder of the tests: valid sightings with fresh ids, written as
//! NDJSON, JSON or CSV, to bytes or to a file. Tests change what they care about
//! (`each`, `ids`, the header) and leave the rest.

use std::path::Path;

use chrono::{DateTime, FixedOffset, TimeZone};
use ctdata_batch::write::{write_json, BatchHeader, NdjsonWriter};
use ctdata_batch::Sighting;
use uuid::Uuid;

/// A batch from one device: its header and its sightings.
#[derive(Debug, Clone)]
pub struct Batch {
    pub header: BatchHeader,
    pub sightings: Vec<Sighting>,
}

/// Field time in the tests: UTC+2, as in southern Africa.
fn at(day: u32, hour: u32) -> DateTime<FixedOffset> {
    let tz = FixedOffset::east_opt(2 * 3600).expect("offset");
    tz.with_ymd_and_hms(2026, 11, day, hour, 0, 0)
        .single()
        .expect("a valid time")
}

/// Sighting `n` of a test batch: a second apart, 10 m apart, one elephant each.
pub fn sighting(n: usize) -> Sighting {
    Sighting {
        id: Uuid::new_v4(),
        observed_at: at(1, 6) + chrono::Duration::seconds(n as i64),
        latitude: -24.0 + n as f64 * 1e-4,
        longitude: 31.5,
        altitude: None,
        accuracy: Some(5.0),
        observer: Some("T. Mokoena".into()),
        species: Some("Loxodonta africana".into()),
        count: Some(1),
        attributes: Default::default(),
    }
}

impl Batch {
    /// `rows` new sightings from `device`, with a fresh batch id.
    pub fn new(device: &str, rows: usize) -> Batch {
        Batch {
            header: BatchHeader {
                batch_id: Uuid::new_v4(),
                device_id: device.to_string(),
                created_at: at(1, 8),
            },
            sightings: (0..rows).map(sighting).collect(),
        }
    }

    /// One sighting per id, in that order.
    pub fn with_ids(device: &str, ids: &[Uuid]) -> Batch {
        Batch::new(device, ids.len()).ids(ids)
    }

    /// Gives the sightings these ids, in order.
    pub fn ids(mut self, ids: &[Uuid]) -> Batch {
        for (s, id) in self.sightings.iter_mut().zip(ids) {
            s.id = *id;
        }
        self
    }

    /// Changes every sighting: `change(index, sighting)`.
    pub fn each(mut self, mut change: impl FnMut(usize, &mut Sighting)) -> Batch {
        for (n, s) in self.sightings.iter_mut().enumerate() {
            change(n, s);
        }
        self
    }

    pub fn id(&self) -> Uuid {
        self.header.batch_id
    }

    /// The batch in NDJSON, the client's own format.
    pub fn ndjson(&self) -> Vec<u8> {
        let mut w = NdjsonWriter::new(Vec::new(), &self.header).expect("batch writer");
        for s in &self.sightings {
            w.push(s).expect("write sighting");
        }
        w.finish().expect("finish batch")
    }

    /// The batch as one JSON document.
    pub fn json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_json(&mut out, &self.header, &self.sightings).expect("write JSON batch");
        out
    }

    /// The sightings as CSV with the columns a spreadsheet export has (no header: the
    /// device comes from the folder).
    pub fn csv(&self) -> Vec<u8> {
        let mut out = b"id,observed_at,latitude,longitude,species,count\n".to_vec();
        for s in &self.sightings {
            let line = format!(
                "{},{},{:.5},{:.5},{},{}\n",
                s.id,
                s.observed_at.to_rfc3339(),
                s.latitude,
                s.longitude,
                s.species.as_deref().unwrap_or(""),
                s.count.unwrap_or(1)
            );
            out.extend_from_slice(line.as_bytes());
        }
        out
    }

    /// Writes the batch as NDJSON to `path`; returns its batch id.
    pub fn write(&self, path: &Path) -> Uuid {
        std::fs::write(path, self.ndjson()).expect("write batch");
        self.id()
    }
}

/// Writes a valid NDJSON batch of `rows` new sightings from `device` to `path`;
/// returns its batch id.
pub fn write_batch(path: &Path, device: &str, rows: usize) -> Uuid {
    Batch::new(device, rows).write(path)
}
