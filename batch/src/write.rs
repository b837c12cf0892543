//! Writing batches, for the field client and for tests. Output always carries ids, so
//! re-sending a batch never depends on the file's bytes staying identical.

use std::io::{self, BufWriter, Write};

use chrono::{DateTime, FixedOffset};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::header::VERSION;
use crate::model::Sighting;

#[derive(Debug, Clone, PartialEq)]
pub struct BatchHeader {
    pub batch_id: Uuid,
    pub device_id: String,
    pub created_at: DateTime<FixedOffset>,
}

/// Field order here is the order on the wire: the version first, so a reader (or a
/// human with `head -c 200`) knows what it is looking at.
#[derive(Serialize)]
struct HeaderOut<'a> {
    ctdata_batch: u64,
    batch_id: &'a Uuid,
    device_id: &'a str,
    created_at: &'a DateTime<FixedOffset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
}

impl<'a> HeaderOut<'a> {
    fn new(h: &'a BatchHeader, count: Option<u64>) -> Self {
        HeaderOut {
            ctdata_batch: VERSION,
            batch_id: &h.batch_id,
            device_id: &h.device_id,
            created_at: &h.created_at,
            count,
            sequence: None,
        }
    }
}

#[derive(Serialize)]
struct TrailerOut {
    ctdata_trailer: u64,
    count: u64,
    sha256: String,
}

/// Streaming NDJSON writer: the header line on [`NdjsonWriter::new`], one line per
/// [`NdjsonWriter::push`], and the trailer (row count and SHA-256 of every byte before
/// it) on [`NdjsonWriter::finish`]. A file that was never finished has no trailer and
/// is refused by readers as truncated, which is the point.
pub struct NdjsonWriter<W: Write> {
    w: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> NdjsonWriter<W> {
    /// The header carries no `count`: a streaming writer cannot know it yet; the
    /// trailer does.
    pub fn new(w: W, h: &BatchHeader) -> io::Result<Self> {
        Self::start(w, HeaderOut::new(h, None))
    }

    /// Like [`NdjsonWriter::new`], with the device's sequence number of this batch in
    /// the header (`sequence`), so the receiving side can notice a missing batch.
    pub fn with_sequence(w: W, h: &BatchHeader, sequence: u64) -> io::Result<Self> {
        let mut header = HeaderOut::new(h, None);
        header.sequence = Some(sequence);
        Self::start(w, header)
    }

    fn start(w: W, header: HeaderOut<'_>) -> io::Result<Self> {
        let mut me = NdjsonWriter {
            w,
            hasher: Sha256::new(),
            count: 0,
        };
        me.line(&header)?;
        Ok(me)
    }

    pub fn push(&mut self, s: &Sighting) -> io::Result<()> {
        self.line(s)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer, flushes, and hands back the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let trailer = TrailerOut {
            ctdata_trailer: VERSION,
            count: self.count,
            sha256: hex::encode(self.hasher.clone().finalize()),
        };
        self.line(&trailer)?;
        self.w.flush()?;
        Ok(self.w)
    }

    fn line<T: Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(value)?;
        bytes.push(b'\n');
        self.w.write_all(&bytes)?;
        self.hasher.update(&bytes);
        Ok(())
    }
}

/// Writes one CTData JSON document, one sighting per line for readable diffs, and
/// flushes. The header (with `count`) comes first so readers learn it before the rows.
pub fn write_json<W: Write>(w: W, h: &BatchHeader, sightings: &[Sighting]) -> io::Result<()> {
    let mut w = BufWriter::new(w);
    let head = serde_json::to_string(&HeaderOut::new(h, Some(sightings.len() as u64)))?;
    // Reopen the header object to append the array: keeps the header serialisation in
    // one place instead of hand-writing its JSON.
    w.write_all(head.strip_suffix('}').unwrap_or(&head).as_bytes())?;
    w.write_all(b",\"sightings\":[")?;
    for (i, s) in sightings.iter().enumerate() {
        w.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut w, s)?;
    }
    w.write_all(b"\n]}\n")?;
    w.flush()
}
