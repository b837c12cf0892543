//! The CTData batch format, version 1: the one crate the field client writes with and
//! the server reads with. Specification: `docs/batch-format.md`.
//!
//! Reading is two passes over a file on disk, both streaming in constant memory:
//! [`scan`] sniffs the format, checks size limits, hashes the decompressed content and
//! reads the header, so the caller can decide "new, duplicate or conflict" before any
//! row is stored; [`read`] then parses and validates every row and hands valid
//! sightings to a sink in file order.

mod csvfile;
mod ctx;
mod cybertracker;
mod device;
mod fields;
mod geojson;
mod header;
pub mod inline_media;
mod input;
mod json;
mod model;
mod ndjson;
mod problems;
mod sniff;
pub mod tracks;
pub mod write;

use std::ops::ControlFlow;
use std::path::Path;

use uuid::Uuid;

pub use cybertracker::{ENVELOPE as CYBERTRACKER_ENVELOPE, EVENT_ID};
pub use device::{DeviceName, InvalidDeviceName};
pub use model::*;

use input::Input;
use problems::{reject, Rows};
use sniff::Sniffed;

/// What [`read`] delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSummary {
    /// Sightings handed to the sink.
    pub rows: u64,
}

/// First pass: sniffs the format from the content (gzip by its magic bytes, zlib and raw
/// deflate by trying to inflate the start), enforces
/// `limits` on the decompressed stream, hashes it, and reads the header. Cheap
/// structural checks (JSON syntax and count, NDJSON trailer, CSV header row) happen
/// here too, so most broken files are refused before [`read`].
pub fn scan(path: &Path, limits: &Limits) -> Result<Scan, Rejection> {
    if ctx::is_cab(path) {
        return scan_ctx(path, limits);
    }
    let mut input = Input::open(path, limits)?;
    let sniffed = match sniff::sniff(&mut input) {
        Ok(s) => s,
        // A gzip bomb of zeros sniffs as binary; inflate on (bounded by the limits) so
        // it is reported as the bomb it is.
        Err(r) if input.compression.is_some() && r.kind == RejectKind::UnknownFormat => {
            input.drain()?;
            return Err(r);
        }
        Err(r) => return Err(r),
    };
    let (format, header, waypoints) = match sniffed {
        Sniffed::Csv => (Format::Csv, csvfile::scan(&mut input).map(|()| None)?, 0),
        Sniffed::Ndjson => (Format::Ndjson, Some(ndjson::scan(&mut input)?), 0),
        Sniffed::JsonDocument => scan_document(&mut input)?,
    };
    input.drain()?;
    let compression = input.compression;
    let (sha256, bytes) = input.finish();
    let batch_id = match &header {
        Some((h, _)) => h.batch_id,
        None => Uuid::new_v5(&CTDATA_NAMESPACE, sha256.as_bytes()),
    };
    Ok(Scan {
        format,
        gzip: compression.is_some(),
        compression,
        batch_id,
        device_id: header.as_ref().map(|(h, _)| h.device_id.clone()),
        created_at: header.as_ref().map(|(h, _)| h.created_at),
        sequence: header.as_ref().and_then(|(h, _)| h.sequence),
        declared_count: header.map(|(_, n)| n),
        sha256,
        bytes,
        waypoints,
        deleted: 0,
        no_position: 0,
    })
}

/// A CTX is identified by its archive's bytes: the same upload again is a duplicate,
/// and each of its sightings keeps its own GUID, so the parts of a split upload (and a
/// part sent twice under another name) store every sighting exactly once.
fn scan_ctx(path: &Path, limits: &Limits) -> Result<Scan, Rejection> {
    let c = ctx::scan(path, limits)?;
    Ok(Scan {
        format: Format::Ctx,
        gzip: false,
        compression: None,
        batch_id: Uuid::new_v5(&CTDATA_NAMESPACE, c.sha256.as_bytes()),
        sha256: c.sha256,
        bytes: c.bytes,
        device_id: None,
        created_at: None,
        declared_count: Some(c.sightings),
        sequence: None,
        waypoints: c.waypoints,
        deleted: c.deleted,
        no_position: c.no_position,
    })
}

/// JSON header problems are named by their field alone: the key is the whole path.
const NO_LOCATION: Location = Location {
    line: None,
    path: None,
};

type HeaderAndCount = Option<(header::Header, u64)>;

fn scan_document(input: &mut Input) -> Result<(Format, HeaderAndCount, u64), Rejection> {
    let mut counter = json::Counter::default();
    let top = json::parse(input, &mut counter)?.expect("the counter never stops");
    let format = json::classify(&top)?;
    if format == Format::Geojson && counter.cybertracker {
        return Ok((Format::Cybertracker, None, counter.waypoints));
    }
    if format == Format::Geojson {
        return Ok((format, None, 0));
    }
    let h = header::validate(&top.header, &|_| NO_LOCATION, true)?;
    let (declared, found) = (h.count.unwrap_or(0), top.array.map_or(0, |(_, n)| n));
    json::check_count(declared, found)?;
    Ok((format, Some((h, declared)), 0))
}

/// Second pass: parses and validates every row and calls `sink` with each valid
/// sighting in file order. After the first problem the sink is no longer called but
/// reading goes on to list more problems, unless the rest is unreadable. If the sink
/// returns `Break`, reading stops at once and `Ok` reports the rows delivered so far.
pub fn read(
    path: &Path,
    scan: &Scan,
    limits: &Limits,
    sink: impl FnMut(Sighting) -> ControlFlow<()>,
) -> Result<ReadSummary, Rejection> {
    if scan.format == Format::Ctx {
        let mut rows = Rows::new(sink, &scan.sha256, limits.max_listed_errors);
        ctx::read(path, limits, &mut rows)?;
        return rows.finish().map(|rows| ReadSummary { rows });
    }
    let mut input = Input::open(path, limits)?;
    input.skip_bom()?;
    let mut rows = Rows::new(sink, &scan.sha256, limits.max_listed_errors);
    match scan.format {
        Format::Csv => csvfile::read(&mut input, &mut rows)?,
        Format::Ndjson => ndjson::read(&mut input, &mut rows)?,
        Format::Json | Format::Geojson | Format::Cybertracker => {
            read_document(&mut input, scan.format, &mut rows)?
        }
        Format::Ctx => unreachable!("read above"),
    }
    if rows.stopped {
        return Ok(ReadSummary {
            rows: rows.delivered(),
        });
    }
    input.drain()?;
    let (sha256, _) = input.finish();
    if sha256 != scan.sha256 {
        // Derived ids and the duplicate check both rest on the scanned hash.
        return Err(reject(
            RejectKind::Io,
            "the file changed between scan and read",
        ));
    }
    rows.finish().map(|rows| ReadSummary { rows })
}

fn read_document<F>(
    input: &mut Input,
    format: Format,
    rows: &mut Rows<'_, F>,
) -> Result<(), Rejection>
where
    F: FnMut(Sighting) -> ControlFlow<()>,
{
    let cybertracker = format == Format::Cybertracker;
    let mut validator = json::Validator {
        rows: &mut *rows,
        cybertracker,
    };
    let Some(top) = json::parse(input, &mut validator)? else {
        return Ok(());
    };
    let container = if cybertracker {
        Format::Geojson
    } else {
        format
    };
    if json::classify(&top)? != container {
        return Err(reject(
            RejectKind::Io,
            "the file changed between scan and read",
        ));
    }
    if format == Format::Json {
        let h = header::validate(&top.header, &|_| NO_LOCATION, true)?;
        let found = top.array.map_or(0, |(_, n)| n);
        if let Err(r) = json::check_count(h.count.unwrap_or(0), found) {
            rows.fail(r.kind, r.summary);
        }
    }
    Ok(())
}
