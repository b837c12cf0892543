//! Synthetic sightings. Every row is a pure function of (seed, file, row number), so
//! the CSV for the baseline can be written later, once the server has told us which
//! batch and device ids to put in it, and still hold exactly the rows it ingested.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::Context;
use chrono::{DateTime, Duration, FixedOffset, TimeZone};
use ctdata_batch::write::{write_json, BatchHeader, NdjsonWriter};
use ctdata_batch::Sighting;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use uuid::Uuid;

pub const SPECIES: &[&str] = &[
    "impala",
    "blue wildebeest",
    "plains zebra",
    "african elephant",
    "cape buffalo",
    "giraffe",
    "lion",
    "leopard",
    "spotted hyena",
    "white rhinoceros",
    "greater kudu",
    "warthog",
];
pub const OBSERVERS: &[&str] = &["T. Mokoena", "A. Nkosi", "J. van Wyk", "L. Maluleke"];
pub const BEHAVIOURS: &[&str] = &["grazing", "resting", "walking", "drinking", "hunting"];

/// Device name for the `i`th of `devices` devices: `ranger-01`, `ranger-02`, …
pub fn device_name(i: usize) -> String {
    format!("ranger-{:02}", i + 1)
}

/// One batch file to generate: its rows come from their own seeded stream.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub index: usize,
    pub device: String,
    pub rows: u64,
}

/// Splits `rows` over `files` files (the first ones take the remainder), devices in turn.
pub fn plan(rows: u64, files: usize, devices: usize) -> Vec<FileSpec> {
    let files = files.max(1);
    (0..files)
        .map(|index| FileSpec {
            index,
            device: device_name(index % devices.max(1)),
            rows: rows / files as u64 + u64::from((index as u64) < rows % files as u64),
        })
        .collect()
}

/// The rows of one file, deterministic for a given seed and file index.
pub struct Rows {
    rng: StdRng,
    start: DateTime<FixedOffset>,
}

impl Rows {
    pub fn new(seed: u64, file: usize) -> Rows {
        let offset = FixedOffset::east_opt(2 * 3600).expect("valid offset");
        Rows {
            rng: StdRng::seed_from_u64(seed ^ (file as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            start: offset.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
        }
    }

    pub fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.gen()).into_uuid()
    }

    pub fn sighting(&mut self) -> Sighting {
        let r = &mut self.rng;
        let mut attributes = Map::new();
        let behaviour = BEHAVIOURS[r.gen_range(0..BEHAVIOURS.len())];
        attributes.insert("behaviour".into(), Value::from(behaviour));
        Sighting {
            id: uuid::Builder::from_random_bytes(r.gen()).into_uuid(),
            observed_at: self.start + Duration::seconds(r.gen_range(0..366 * 86_400)),
            latitude: round(r.gen_range(-24.0..-22.0), 1e6),
            longitude: round(r.gen_range(31.0..32.0), 1e6),
            // Some devices have no altimeter fix: leave a share of NULLs in the data.
            altitude: r
                .gen_bool(0.9)
                .then(|| round(r.gen_range(150.0..900.0), 10.0)),
            accuracy: Some(round(r.gen_range(2.0..30.0), 10.0)),
            observer: Some(OBSERVERS[r.gen_range(0..OBSERVERS.len())].into()),
            species: Some(SPECIES[r.gen_range(0..SPECIES.len())].into()),
            count: Some(r.gen_range(1..40)),
            attributes,
        }
    }
}

/// Keeps numbers short on the wire, as a GPS unit would report them.
fn round(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

fn header(rows: &mut Rows, device: &str) -> BatchHeader {
    BatchHeader {
        batch_id: rows.uuid(),
        device_id: device.into(),
        created_at: rows.start + Duration::days(366),
    }
}

/// The batch id `spec`'s file carries (as written by [`write_ndjson`] and [`write_csv`]).
pub fn batch_id(seed: u64, spec: &FileSpec) -> Uuid {
    header(&mut Rows::new(seed, spec.index), &spec.device).batch_id
}

/// `spec`'s rows as one CTData JSON document, in memory: an HTTP upload body.
pub fn json_batch(seed: u64, spec: &FileSpec) -> anyhow::Result<Vec<u8>> {
    let mut rows = Rows::new(seed, spec.index);
    let head = header(&mut rows, &spec.device);
    let sightings: Vec<Sighting> = (0..spec.rows).map(|_| rows.sighting()).collect();
    let mut out = Vec::with_capacity(300 * sightings.len() + 200);
    write_json(&mut out, &head, &sightings)?;
    Ok(out)
}

/// Writes `spec`'s rows as `dir/batch-NNN.ndjson`; returns its path and size.
pub fn write_ndjson(dir: &Path, seed: u64, spec: &FileSpec) -> anyhow::Result<(PathBuf, u64)> {
    let path = dir.join(format!("batch-{:03}.ndjson", spec.index));
    let mut rows = Rows::new(seed, spec.index);
    let out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
    let mut w = NdjsonWriter::new(out, &header(&mut rows, &spec.device))?;
    for _ in 0..spec.rows {
        w.push(&rows.sighting())?;
    }
    w.finish()?;
    let size = std::fs::metadata(&path)?.len();
    Ok((path, size))
}

/// Writes one NDJSON batch of at least `bytes` bytes (the trailer comes on top);
/// returns its path, row count and size.
pub fn write_ndjson_sized(
    dir: &Path,
    seed: u64,
    device: &str,
    bytes: u64,
) -> anyhow::Result<(PathBuf, u64, u64)> {
    let path = dir.join("big.ndjson");
    let mut rows = Rows::new(seed, 0);
    let written = Rc::new(Cell::new(0));
    let out = Counting {
        inner: BufWriter::with_capacity(1 << 20, File::create(&path)?),
        written: written.clone(),
    };
    let mut w = NdjsonWriter::new(out, &header(&mut rows, device))?;
    let mut count = 0;
    while written.get() < bytes {
        w.push(&rows.sighting())?;
        count += 1;
    }
    w.finish()?;
    let size = std::fs::metadata(&path)?.len();
    Ok((path, count, size))
}

/// Counts bytes on their way through: `NdjsonWriter` owns its writer, so the count
/// lives behind a shared cell.
struct Counting<W> {
    inner: W,
    written: Rc<Cell<u64>>,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.set(self.written.get() + n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The same rows as the NDJSON files, as CSV in the `sightings` column order, each with
/// the batch and device ids the server assigned to its file (`stored`, by batch UUID).
pub fn write_csv(
    path: &Path,
    seed: u64,
    specs: &[FileSpec],
    stored: &std::collections::HashMap<Uuid, (i64, i64)>,
) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, file));
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for spec in specs {
        let mut rows = Rows::new(seed, spec.index);
        // Consumes the batch id, as the NDJSON writer did.
        let batch_id = header(&mut rows, &spec.device).batch_id;
        let Some(&(batch, device)) = stored.get(&batch_id) else {
            anyhow::bail!("batch {batch_id} is not in the database");
        };
        for _ in 0..spec.rows {
            let s = rows.sighting();
            w.write_record([
                s.id.to_string(),
                batch.to_string(),
                device.to_string(),
                s.observed_at.to_rfc3339(),
                s.observed_at.offset().local_minus_utc().to_string(),
                s.latitude.to_string(),
                s.longitude.to_string(),
                opt(s.altitude),
                opt(s.accuracy),
                s.observer.unwrap_or_default(),
                s.species.unwrap_or_default(),
                s.count.map(|c| c.to_string()).unwrap_or_default(),
                serde_json::to_string(&s.attributes)?,
            ])?;
        }
    }
    w.flush()?;
    Ok(())
}
