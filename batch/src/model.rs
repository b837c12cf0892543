//! The types every reader and writer of the batch format shares.

use std::fmt;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Namespace for UUIDv5 ids derived from file content (rows without an `id`, and
/// CSV / GeoJSON files, which carry no batch id of their own).
pub const CTDATA_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c52_9d0e_4b7a_8e21_c7d4_05b9_f3e6);

/// One observation in the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sighting {
    pub id: Uuid,
    pub observed_at: DateTime<FixedOffset>,
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub altitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub species: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
}

/// The encodings a batch may arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Ndjson,
    Csv,
    Geojson,
    /// A CyberTracker Classic upload: a GeoJSON FeatureCollection whose features carry
    /// `dateTime`, `deviceId`, `ctVersion` and a `sighting` object.
    Cybertracker,
    /// A CyberTracker Classic `.CTX` archive (a CAB of `Sightings.dat`, `Waypoints.dat`,
    /// `Elements.txt`, `Info.xml`), as its FTP and share uploads carry.
    Ctx,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
            Format::Geojson => "geojson",
            Format::Cybertracker => "cybertracker",
            Format::Ctx => "ctx",
        }
    }
}

/// How a compressed file was packed; recognised by content, never by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    /// A zlib-wrapped deflate stream (RFC 1950), as `Content-Encoding: deflate` means.
    Zlib,
    /// A raw deflate stream (RFC 1951), as some HTTPZ senders write.
    Deflate,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zlib => "zlib",
            Compression::Deflate => "deflate",
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the first pass over a file learns: enough to decide "new batch, duplicate or
/// conflict" before a single row touches the database.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub format: Format,
    /// Whether the file was compressed (gzip, zlib or raw deflate; see `compression`).
    pub gzip: bool,
    pub compression: Option<Compression>,
    /// SHA-256 (lowercase hex) of the *decompressed* content, so a batch sent once plain
    /// and once gzipped is recognised as the same delivery.
    pub sha256: String,
    /// Decompressed size in bytes.
    pub bytes: u64,
    /// From the header for JSON / NDJSON; derived (UUIDv5 of the sha256) for CSV / GeoJSON.
    pub batch_id: Uuid,
    /// `device_id` from the header; `None` for CSV / GeoJSON.
    pub device_id: Option<String>,
    pub created_at: Option<DateTime<FixedOffset>>,
    /// The row count the file declares (header `count`, NDJSON trailer); `None` for CSV /
    /// GeoJSON.
    pub declared_count: Option<u64>,
    /// The device's running number of this batch (header `sequence`), if it gave one.
    pub sequence: Option<u64>,
    /// Records read but not stored as sightings: the waypoints (track points) of a
    /// CyberTracker upload or a CTX (not those marked deleted), which
    /// [`crate::tracks::extras`] hands out for the server's tracks.
    pub waypoints: u64,
    /// Records read but not stored because the device marked them deleted (CTX).
    pub deleted: u64,
    /// Sighting records read but not stored because they have no position: saved
    /// without a GPS fix, so with no latitude and longitude (CTX). They stay in the
    /// archived original.
    pub no_position: u64,
}

/// Guards against hostile input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest decompressed size accepted, in bytes.
    pub max_bytes: u64,
    /// Largest decompressed/compressed ratio accepted for compressed input (gzip, zlib,
    /// raw deflate), checked once more
    /// than [`Limits::ratio_grace_bytes`] have been inflated.
    pub max_gzip_ratio: u64,
    pub ratio_grace_bytes: u64,
    /// How many row errors are listed before the rest are only counted.
    pub max_listed_errors: usize,
    /// Not a limit: the UTC offset, in minutes, at which a CTX's times are read.
    /// CyberTracker Classic records the device's wall clock without a zone.
    pub ctx_utc_offset_minutes: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 30,
            max_gzip_ratio: 100,
            ratio_grace_bytes: 1 << 20,
            max_listed_errors: 50,
            ctx_utc_offset_minutes: 0,
        }
    }
}

/// Where in the file a problem is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// 1-based line number, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// JSON path such as `sightings[12].latitude`, when the format has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// One thing wrong with the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(flatten)]
    pub at: Location,
    /// The field (column, key) at fault, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The offending value, shortened to a readable length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What was wrong and what would have been right, in plain words.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(line) = self.at.line {
            write!(f, "line {line}")?;
            sep = ", ";
        }
        if let Some(path) = &self.at.path {
            write!(f, "{sep}{path}")?;
            sep = ", ";
        }
        if let Some(field) = &self.field {
            write!(f, "{sep}field {field}")?;
            sep = ", ";
        }
        if let Some(value) = &self.value {
            write!(f, "{sep}value {value:?}")?;
            sep = ", ";
        }
        if !sep.is_empty() {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a file was refused as a whole. Nothing from a rejected file may be stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub kind: RejectKind,
    /// One-line summary, e.g. "3 invalid rows" or "gzip data is corrupt".
    pub summary: String,
    /// The problems, at most [`Limits::max_listed_errors`] of them.
    pub problems: Vec<Problem>,
    /// How many problems there were in all (may exceed `problems.len()`).
    pub total_problems: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum RejectKind {
    /// Empty file, binary junk, or nothing we recognise.
    UnknownFormat,
    /// Not UTF-8 where text is required.
    Encoding,
    /// Broken gzip stream.
    Compression,
    /// Decompressed size or ratio over the limits.
    TooLarge,
    /// Cut short: missing trailer, unterminated JSON, count mismatch.
    Truncated,
    /// Syntax errors in the container (JSON, CSV structure).
    Syntax,
    /// Header fields missing or wrong (`ctdata_batch`, `batch_id`, `device_id`, …).
    Header,
    /// One or more rows failed validation.
    InvalidRows,
    /// Reading the file failed (I/O).
    Io,
}

impl RejectKind {
    pub const ALL: [RejectKind; 9] = [
        RejectKind::UnknownFormat,
        RejectKind::Encoding,
        RejectKind::Compression,
        RejectKind::TooLarge,
        RejectKind::Truncated,
        RejectKind::Syntax,
        RejectKind::Header,
        RejectKind::InvalidRows,
        RejectKind::Io,
    ];

    /// The kind's name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::UnknownFormat => "unknown_format",
            RejectKind::Encoding => "encoding",
            RejectKind::Compression => "compression",
            RejectKind::TooLarge => "too_large",
            RejectKind::Truncated => "truncated",
            RejectKind::Syntax => "syntax",
            RejectKind::Header => "header",
            RejectKind::InvalidRows => "invalid_rows",
            RejectKind::Io => "io",
        }
    }
}

impl From<RejectKind> for &'static str {
    fn from(kind: RejectKind) -> &'static str {
        kind.as_str()
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        let more = self
            .total_problems
            .saturating_sub(self.problems.len() as u64);
        if more > 0 {
            write!(f, "\n  … and {more} more")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}
