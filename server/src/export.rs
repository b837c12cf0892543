//! Export encoders (CSV, GeoJSON, NDJSON), row by row so any number of rows streams in
//! constant memory. The CLI writes them to a file; the HTTP download streams them. The
//! Darwin Core Archive (`dwca`) is a zip built by [`crate::dwca`] instead.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::db::{Db, ExportFilter, ExportRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
    Geojson,
    Ndjson,
    /// A Darwin Core Archive (zip) for GBIF, written by [`crate::dwca::Publisher`].
    Dwca,
}

impl ExportFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Geojson => "application/geo+json",
            ExportFormat::Ndjson => "application/x-ndjson",
            ExportFormat::Dwca => "application/zip",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Geojson => "geojson",
            ExportFormat::Ndjson => "ndjson",
            ExportFormat::Dwca => "zip",
        }
    }
}

impl FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("unknown format {s:?}: csv, geojson, ndjson or dwca"))
    }
}

pub const CSV_COLUMNS: [&str; 14] = [
    "cursor",
    "id",
    "device",
    "batch_id",
    "observed_at",
    "latitude",
    "longitude",
    "altitude",
    "accuracy",
    "observer",
    "species",
    "count",
    "attributes",
    "received_at",
];

/// Turns rows into bytes of one format: a head, one piece per row, a tail.
pub struct Encoder {
    format: ExportFormat,
    rows: u64,
    /// CSV text cells that a spreadsheet would take for a formula get a leading `'`.
    excel_safe: bool,
}

impl Encoder {
    pub fn new(format: ExportFormat) -> Encoder {
        Encoder {
            format,
            rows: 0,
            excel_safe: false,
        }
    }

    pub fn excel_safe(mut self, on: bool) -> Encoder {
        self.excel_safe = on;
        self
    }

    pub fn head(&self) -> String {
        match self.format {
            ExportFormat::Csv => format!("{}\r\n", CSV_COLUMNS.join(",")),
            ExportFormat::Geojson => "{\"type\":\"FeatureCollection\",\"features\":[\n".into(),
            ExportFormat::Ndjson | ExportFormat::Dwca => String::new(),
        }
    }

    pub fn row(&mut self, r: &ExportRow, out: &mut String) {
        match self.format {
            ExportFormat::Csv => csv_row(r, self.excel_safe, out),
            // Never asked for: `write_export` and the download build archives with `dwca`.
            ExportFormat::Dwca => {}
            ExportFormat::Ndjson => {
                out.push_str(&Value::Object(properties(r, true)).to_string());
                out.push('\n');
            }
            ExportFormat::Geojson => {
                if self.rows > 0 {
                    out.push_str(",\n");
                }
                out.push_str(&feature(r).to_string());
            }
        }
        self.rows += 1;
    }

    pub fn tail(&self) -> &'static str {
        match self.format {
            ExportFormat::Geojson => "\n]}\n",
            _ => "",
        }
    }
}

/// A sighting's fields as a flat JSON object (without coordinates for GeoJSON).
fn properties(r: &ExportRow, with_position: bool) -> Map<String, Value> {
    let s = &r.sighting;
    let mut m = Map::new();
    m.insert("cursor".into(), r.cursor.into());
    m.insert("id".into(), s.id.to_string().into());
    m.insert("device".into(), r.device.clone().into());
    m.insert("batch_id".into(), r.batch_id.to_string().into());
    match &r.problem {
        None => m.insert("observed_at".into(), s.observed_at.to_rfc3339().into()),
        Some(problem) => {
            m.insert("problem".into(), problem.clone().into());
            m.insert("observed_at".into(), Value::Null)
        }
    };
    if with_position {
        m.insert("latitude".into(), s.latitude.into());
        m.insert("longitude".into(), s.longitude.into());
        m.insert("altitude".into(), json!(s.altitude));
    }
    m.insert("accuracy".into(), json!(s.accuracy));
    m.insert("observer".into(), json!(s.observer));
    m.insert("species".into(), json!(s.species));
    m.insert("count".into(), json!(s.count));
    m.insert("attributes".into(), Value::Object(r.attributes()));
    m.insert("received_at".into(), r.received_at.to_rfc3339().into());
    if let Some(files) = r.attachments() {
        m.insert("attachments".into(), files);
    }
    m
}

/// An RFC 7946 Feature: [longitude, latitude(, altitude)].
fn feature(r: &ExportRow) -> Value {
    let s = &r.sighting;
    let mut coords = vec![json!(s.longitude), json!(s.latitude)];
    if let Some(alt) = s.altitude {
        coords.push(json!(alt));
    }
    json!({
        "type": "Feature",
        "id": s.id.to_string(),
        "geometry": {"type": "Point", "coordinates": coords},
        "properties": properties(r, false),
    })
}

fn csv_row(r: &ExportRow, excel_safe: bool, out: &mut String) {
    let s = &r.sighting;
    let text = |out: &mut String, f: &str| {
        if excel_safe && f.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            csv_field(out, &format!("'{f}"));
        } else {
            csv_field(out, f);
        }
    };
    // Straight into the output buffer: a String per field per row was a third of the
    // export's CPU.
    let _ = write!(out, "{},{},", r.cursor, s.id);
    text(out, &r.device);
    let _ = write!(out, ",{},", r.batch_id);
    match &r.problem {
        None => {
            let _ = write!(out, "{}", s.observed_at.to_rfc3339());
        }
        // The cell of the value that is wrong names the problem, so the columns stay
        // what every reader expects.
        Some(problem) => csv_field(out, &format!("problem: {problem}")),
    }
    let _ = write!(out, ",{},{},", s.latitude, s.longitude);
    opt_csv(out, s.altitude);
    out.push(',');
    opt_csv(out, s.accuracy);
    out.push(',');
    text(out, s.observer.as_deref().unwrap_or(""));
    out.push(',');
    text(out, s.species.as_deref().unwrap_or(""));
    out.push(',');
    opt_csv(out, s.count);
    out.push(',');
    if r.attributes_json.trim() != "{}" {
        text(out, &r.attributes_json);
    }
    let _ = write!(out, ",{}\r\n", r.received_at.to_rfc3339());
}

fn opt_csv(out: &mut String, v: Option<impl std::fmt::Display>) {
    if let Some(v) = v {
        let _ = write!(out, "{v}");
    }
}

/// RFC 4180: quote a field holding a comma, quote or line break; double the quotes.
fn csv_field(out: &mut String, f: &str) {
    if f.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&f.replace('"', "\"\""));
        out.push('"');
    } else {
        let _ = out.write_str(f);
    }
}

/// The encoded export as a stream of chunks of about 64 KiB, for an HTTP body: rows
/// are read from the database only as fast as the client takes them. When the stream
/// goes (sent in full, or the client hung up), one line logs `who` got how much.
pub fn byte_stream(
    db: &Db,
    filter: ExportFilter,
    format: ExportFormat,
    excel_safe: bool,
    who: String,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    let encoder = Encoder::new(format).excel_safe(excel_safe);
    let head = encoder.head();
    let tally = Arc::new(Tally::default());
    let mut log = ExportLog {
        who,
        format,
        tally: tally.clone(),
        bytes: 0,
    };
    let state = Some((db.export(filter), encoder, head));
    futures::stream::unfold(state, move |state| {
        let tally = tally.clone();
        async move {
            let (mut rows, mut encoder, mut buf) = state?;
            while buf.len() < 64 * 1024 {
                match rows.next().await {
                    Some(Ok(row)) => {
                        encoder.row(&row, &mut buf);
                        tally.rows.store(encoder.rows, Ordering::Relaxed);
                    }
                    Some(Err(e)) => {
                        *tally.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("{e:#}"));
                        return Some((Err(std::io::Error::other(e)), None));
                    }
                    None => {
                        buf.push_str(encoder.tail());
                        tally.complete.store(true, Ordering::Relaxed);
                        return Some((Ok(bytes::Bytes::from(buf)), None));
                    }
                }
            }
            Some((
                Ok(bytes::Bytes::from(buf)),
                Some((rows, encoder, String::new())),
            ))
        }
    })
    .map(move |chunk| {
        if let Ok(bytes) = &chunk {
            // A method call moves the whole log into the closure, so it lives (and
            // logs) as long as the body does; a field update would capture only the field.
            log.sent(bytes.len());
        }
        chunk
    })
}

/// What a streamed export has read so far, shared between the reader and its log line.
#[derive(Default)]
struct Tally {
    rows: AtomicU64,
    complete: AtomicBool,
    failed: Mutex<Option<String>>,
}

/// Logs one line when the HTTP body is dropped, which happens both when the last
/// chunk went out and when the client disconnected before that.
struct ExportLog {
    who: String,
    format: ExportFormat,
    tally: Arc<Tally>,
    /// Handed to the HTTP layer; with an early disconnect, more than the client got.
    bytes: u64,
}

impl ExportLog {
    fn sent(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }
}

impl Drop for ExportLog {
    fn drop(&mut self) {
        let rows = self.tally.rows.load(Ordering::Relaxed);
        let format = self.format.extension();
        let failed = self
            .tally
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(e) = failed {
            tracing::warn!(
                who = self.who,
                format,
                rows,
                bytes = self.bytes,
                "export failed: {e}"
            );
        } else if self.tally.complete.load(Ordering::Relaxed) {
            tracing::info!(
                who = self.who,
                format,
                rows,
                bytes = self.bytes,
                "export sent"
            );
        } else {
            tracing::warn!(
                who = self.who,
                format,
                rows,
                bytes = self.bytes,
                "export cut short: the client disconnected before the end"
            );
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Copy)]
pub struct ExportSummary {
    pub rows: u64,
    pub bytes: u64,
    /// Give this as `since` next time to get only newer rows.
    pub next_cursor: i64,
}

/// Streams the matching rows into `out`.
pub async fn write_export<W: AsyncWrite + Unpin>(
    db: &Db,
    filter: ExportFilter,
    format: ExportFormat,
    out: &mut W,
) -> anyhow::Result<ExportSummary> {
    write_export_with(db, filter, format, out, |_| Ok(())).await
}

/// As [`write_export`], showing every row to `each` as it is written.
pub async fn write_export_with<W: AsyncWrite + Unpin>(
    db: &Db,
    filter: ExportFilter,
    format: ExportFormat,
    out: &mut W,
    mut each: impl FnMut(&ExportRow) -> std::io::Result<()>,
) -> anyhow::Result<ExportSummary> {
    anyhow::ensure!(
        format != ExportFormat::Dwca,
        "a Darwin Core Archive is written by dwca::Publisher"
    );
    // With an upper bound, the rows past the last match up to it were looked at too.
    let mut next_cursor = filter.since;
    let bound = filter.until.map(|until| until.max(filter.since));
    let mut enc = Encoder::new(format);
    let mut buf = enc.head();
    let mut rows = db.export(filter);
    let mut bytes = 0;
    while let Some(row) = rows.next().await {
        let row = row?;
        next_cursor = row.cursor;
        each(&row)?;
        enc.row(&row, &mut buf);
        if buf.len() >= 64 * 1024 {
            out.write_all(buf.as_bytes()).await?;
            bytes += buf.len() as u64;
            buf.clear();
        }
    }
    buf.push_str(enc.tail());
    out.write_all(buf.as_bytes()).await?;
    bytes += buf.len() as u64;
    out.flush().await?;
    Ok(ExportSummary {
        rows: enc.rows,
        bytes,
        next_cursor: bound.unwrap_or(next_cursor),
    })
}
