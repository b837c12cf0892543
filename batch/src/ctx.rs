//! CyberTracker Classic `.CTX` uploads: a Microsoft cabinet (CAB) holding
//! `Sightings.dat` (packed binary records), `Waypoints.dat` (fixed-size track points),
//! `Elements.txt` (element GUID → name) and `Info.xml` (`<CTXVersion>`). The layout is
//! written down in `docs/batch-format.md` §7d.
//!
//! Memory stays bounded whatever the archive holds: the cabinet is read block by block
//! (32 KiB), records are parsed attribute by attribute from that stream, and a photo or
//! recording inside a record is hashed in passing, never held.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, NaiveDateTime, TimeZone};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cybertracker::element_value;
use crate::fields::{Draft, Field, RowAt};
use crate::inline_media::{sink_failed, MediaItem, MediaSink};
use crate::model::{Location, Problem, RejectKind, Rejection, Sighting};
use crate::problems::{problem, reject, reject_with, Rows};
use crate::tracks::TrackPoint;
use crate::Limits;

/// The first four bytes of every cabinet.
pub(crate) const CAB_MAGIC: [u8; 4] = *b"MSCF";
/// The only `<CTXVersion>` CyberTracker Classic writes.
const CTX_VERSION: u32 = 3295;
/// `'SIGT'` as a little-endian `UINT`: the bytes `T G I S`.
const SIGHTING_MAGIC: [u8; 4] = *b"TGIS";
/// `'WAY2'` as a little-endian `UINT`.
const WAYPOINT_MAGIC: [u8; 4] = *b"2YAW";
/// Magic, id, device id, created, current (4 + 16 + 16 + 4 + 4), deleted and checked-out
/// flags (1 + 1), attribute size (4), packed.
const HEADER_BYTES: u64 = 50;
/// Magic, id, device id (4 + 16 + 16), six doubles, one deleted byte, packed.
const WAYPOINT_BYTES: u64 = 85;
/// The largest text value held in memory; longer ones refuse the file.
const MAX_TEXT: u32 = 16 << 20;
/// The most one record may hold in memory (its values other than media, which are
/// hashed as they pass), and the most attributes it may have: a form has dozens.
const MAX_RECORD_HELD: u64 = 32 << 20;
const MAX_ATTRIBUTES: usize = 10_000;
/// Days from 0001-01-01 to the Delphi/OLE epoch 1899-12-30 (the date encoding's zero).
const OLE_EPOCH: (i32, u32, u32) = (1899, 12, 30);

// Element GUIDs CyberTracker writes for the fix and the time (`ctSession.h`), as UUIDs.
const DATE: Uuid = Uuid::from_u128(0x4764f5e6_15a1_48bf_808a_f673ed7cdcda);
const TIME: Uuid = Uuid::from_u128(0xeb86279a_e032_43d2_b4a8_8b8b2892b10e);
const LATITUDE: Uuid = Uuid::from_u128(0xf6636a2d_2e9a_474d_a77d_2e1bae1ef857);
const LONGITUDE: Uuid = Uuid::from_u128(0xd93e86a8_2629_44fe_afc4_2ec510fb1820);
const ALTITUDE: Uuid = Uuid::from_u128(0x3e2df3a5_4d01_47b9_8ec6_a31083a3bc18);
const ACCURACY: Uuid = Uuid::from_u128(0x4fb2c6b9_08dd_47b9_93f1_af5fa8ee63c4);
/// The logged-in user: read as the observer when `Elements.txt` does not name it.
const USERNAME: Uuid = Uuid::from_u128(0x7662336f_d7b2_4962_bc7a_9cc237da2eaa);

fn damaged(what: impl std::fmt::Display) -> Rejection {
    reject(
        RejectKind::Compression,
        format!("damaged CTX: the CAB archive cannot be read: {what}"),
    )
}

fn at(path: String) -> Location {
    Location {
        line: None,
        path: Some(path),
    }
}

/// Whether the file starts like a cabinet.
pub(crate) fn is_cab(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == CAB_MAGIC)
}

/// What one pass over the archive learned.
pub(crate) struct Counted {
    pub sha256: String,
    pub bytes: u64,
    pub sightings: u64,
    pub deleted: u64,
    pub no_position: u64,
    pub waypoints: u64,
}

/// Whether a record carries a position: a sighting saved without a GPS fix has no
/// latitude and longitude attributes. CTData stores only placed sightings, so such a
/// record is counted and left in the archived original instead of refusing the CTX.
fn has_position(attributes: &[(Uuid, Val)]) -> bool {
    let has = |element: Uuid| {
        attributes
            .iter()
            .any(|(e, v)| *e == element && matches!(v, Val::Number(_)))
    };
    has(LATITUDE) && has(LONGITUDE)
}

/// One member of the archive being read, and its unpacked size.
type Member<'a> = (cab::FileReader<'a, BufReader<File>>, u64);

/// The cabinet opened, its members found by name (any case), its limits checked.
struct Ctx {
    cab: cab::Cabinet<BufReader<File>>,
    members: HashMap<String, (String, u64)>,
    names: Names,
}

/// What `Elements.txt` and `Info.xml` say, kept apart from the open archive.
#[derive(Default)]
struct Names {
    elements: HashMap<Uuid, String>,
    source_database: Option<String>,
}

impl Ctx {
    fn open(path: &Path, limits: &Limits) -> Result<Ctx, Rejection> {
        let io_err = |e: io::Error| reject(RejectKind::Io, format!("cannot open the file: {e}"));
        let mut file = File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        let mut head = [0u8; 12];
        if file.read_exact(&mut head).is_err() {
            return Err(reject(
                RejectKind::Truncated,
                format!("CTX is cut short: {size} bytes, less than a CAB header"),
            ));
        }
        let declared = u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]]));
        if size < declared {
            return Err(reject(
                RejectKind::Truncated,
                format!(
                    "CTX is cut short: the file is {size} bytes but its CAB header says {declared}"
                ),
            ));
        }
        file.rewind().map_err(io_err)?;
        let cab = cab::Cabinet::new(BufReader::new(file)).map_err(damaged)?;
        let mut members = HashMap::new();
        let mut total = 0u64;
        for folder in cab.folder_entries() {
            for f in folder.file_entries() {
                let len = u64::from(f.uncompressed_size());
                total += len;
                members.insert(f.name().to_ascii_lowercase(), (f.name().to_owned(), len));
            }
        }
        if total > limits.max_bytes {
            return Err(reject(
                RejectKind::TooLarge,
                format!(
                    "CTX unpacks to {total} bytes, over the limit of {} bytes",
                    limits.max_bytes
                ),
            ));
        }
        if total > limits.ratio_grace_bytes && total > size.saturating_mul(limits.max_gzip_ratio) {
            return Err(reject(
                RejectKind::TooLarge,
                format!(
                    "CTX expands more than the allowed ratio of {}:1 ({total} bytes from {size}): refusing a likely CAB bomb",
                    limits.max_gzip_ratio
                ),
            ));
        }
        let mut ctx = Ctx {
            cab,
            members,
            names: Names::default(),
        };
        ctx.read_info()?;
        ctx.read_elements()?;
        Ok(ctx)
    }

    fn member(&mut self, name: &str) -> Result<Option<Member<'_>>, Rejection> {
        let Some((real, len)) = self.members.get(&name.to_ascii_lowercase()).cloned() else {
            return Ok(None);
        };
        let reader = self.cab.read_file(&real).map_err(damaged)?;
        Ok(Some((reader, len)))
    }

    /// A small text member read whole (at most `MAX_TEXT` bytes).
    fn small_text(&mut self, name: &str) -> Result<Option<String>, Rejection> {
        let Some((reader, len)) = self.member(name)? else {
            return Ok(None);
        };
        if len > u64::from(MAX_TEXT) {
            return Err(reject(
                RejectKind::TooLarge,
                format!("{name} is {len} bytes, more than the {MAX_TEXT} bytes a CTX member of its kind may have"),
            ));
        }
        let mut buf = Vec::with_capacity(len as usize);
        reader.take(len).read_to_end(&mut buf).map_err(damaged)?;
        // CyberTracker writes these in the device's code page; Latin-1 keeps every byte.
        Ok(Some(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => e.into_bytes().iter().map(|b| char::from(*b)).collect(),
        }))
    }

    fn read_info(&mut self) -> Result<(), Rejection> {
        let Some(info) = self.small_text("Info.xml")? else {
            return Err(reject(
                RejectKind::Header,
                "not a CyberTracker CTX: the CAB archive holds no Info.xml (a CTX carries Info.xml with <CTXVersion>3295</CTXVersion>)",
            ));
        };
        let version = tag(&info, "CTXVersion");
        match version.as_deref().map(str::parse::<u32>) {
            Some(Ok(CTX_VERSION)) => {}
            Some(Ok(v)) => {
                return Err(reject(
                    RejectKind::Header,
                    format!("unknown CTXVersion {v} in Info.xml; this server reads CTX version {CTX_VERSION}"),
                ))
            }
            _ => {
                let found = version.unwrap_or_else(|| "nothing".into());
                return Err(reject(
                    RejectKind::Header,
                    format!("Info.xml has no CTXVersion number (found {found:?}); this server reads CTX version {CTX_VERSION}"),
                ));
            }
        }
        self.names.source_database = tag(&info, "SourceDatabase").map(|s| unescape(&s));
        Ok(())
    }

    /// `Elements.txt` is copied verbatim by the device from the desktop's export; its
    /// writer is not in the CyberTracker source, so any line holding a GUID followed by
    /// a name (tab, comma, `=` or blank separated, quotes optional) is taken.
    fn read_elements(&mut self) -> Result<(), Rejection> {
        let Some(text) = self.small_text("Elements.txt")? else {
            return Ok(());
        };
        for line in text.lines() {
            if let Some((guid, name)) = element_line(line) {
                self.names.elements.entry(guid).or_insert(name);
            }
        }
        Ok(())
    }
}

impl Names {
    fn name_of(&self, guid: Uuid) -> String {
        if let Some(name) = self.elements.get(&guid) {
            return name.clone();
        }
        match guid {
            USERNAME => "Observer".into(),
            _ => guid.to_string(),
        }
    }
}

fn tag(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].trim().to_owned())
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

pub(crate) fn element_line(line: &str) -> Option<(Uuid, String)> {
    let line = line.trim();
    let bytes = line.as_bytes();
    for start in 0..line.len() {
        if !line.is_char_boundary(start) || !bytes[start].is_ascii_hexdigit() {
            continue;
        }
        let Some(candidate) = line.get(start..start + 36) else {
            break;
        };
        let Ok(guid) = Uuid::try_parse(candidate) else {
            continue;
        };
        let rest = line[start + 36..].trim_start_matches('}');
        let before = line[..start].trim_end_matches('{');
        let trim = |s: &str| {
            s.trim_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '=' | '\t' | '"'))
                .to_owned()
        };
        let name = match trim(rest) {
            n if !n.is_empty() => n,
            _ => trim(before),
        };
        return (!name.is_empty()).then_some((guid, name));
    }
    None
}

/// A reader of one CAB member that knows where it is, for precise reasons.
struct Dat<R> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Dat<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), Rejection> {
        self.r.read_exact(buf).map_err(damaged)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn left(&self) -> u64 {
        self.len - self.pos
    }
}

fn syntax(path: String, message: String) -> Rejection {
    let p = problem(at(path.clone()), None, None, message.clone());
    reject_with(RejectKind::Syntax, format!("{path}: {message}"), p)
}

/// One record's fixed header.
struct Header {
    id: Uuid,
    device: Uuid,
    deleted: bool,
    checked_out: bool,
    size: u64,
}

/// One decoded attribute value.
enum Val {
    Null,
    Json(Value),
    Number(f64),
    Date(f64),
    Time(f64),
    DateTime(f64),
    Guid(Uuid),
    GuidList(Vec<Uuid>),
    Media(Value),
}

const TYPE_NAMES: [&str; 19] = [
    "null",
    "boolean",
    "byte",
    "int8",
    "int16",
    "int32",
    "double",
    "date",
    "time",
    "datetime",
    "color",
    "guid",
    "font",
    "ansi text",
    "binary",
    "graphic",
    "sound",
    "guid list",
    "utf-8 text",
];

fn fixed_size(t: u8) -> Option<u32> {
    Some(match t {
        0 => 0,
        1..=3 => 1,
        4 => 2,
        5 | 10 => 4,
        6..=9 => 8,
        11 => 16,
        12 => 74,
        _ => return None,
    })
}

/// Walks `Sightings.dat`, calling `each` with every record's header and attributes.
fn walk_sightings<R: Read>(
    dat: &mut Dat<R>,
    mut sink: Option<&mut dyn MediaSink>,
    mut each: impl FnMut(u64, Header, Vec<(Uuid, Val)>) -> Result<(), Rejection>,
) -> Result<(), Rejection> {
    let mut index = 0u64;
    while dat.left() > 0 {
        let here = format!("Sightings.dat[{index}]");
        if dat.left() < HEADER_BYTES {
            return Err(syntax(
                here,
                format!(
                    "record {index} is cut short: {} bytes left at offset {}, a record header is {HEADER_BYTES} bytes",
                    dat.left(),
                    dat.pos
                ),
            ));
        }
        let mut h = [0u8; HEADER_BYTES as usize];
        dat.exact(&mut h)?;
        if h[0..4] != SIGHTING_MAGIC {
            return Err(syntax(
                here,
                format!(
                    "record {index} at offset {} does not start with the magic SIGT (found {:02x?})",
                    dat.pos - HEADER_BYTES,
                    &h[0..4]
                ),
            ));
        }
        let guid = |b: &[u8]| Uuid::from_bytes_le(b.try_into().expect("16 bytes"));
        let header = Header {
            id: guid(&h[4..20]),
            device: guid(&h[20..36]),
            deleted: h[44] != 0,
            checked_out: h[45] != 0,
            size: u64::from(u32::from_le_bytes(h[46..50].try_into().expect("4 bytes"))),
        };
        if header.size > dat.left() {
            return Err(syntax(
                here,
                format!(
                    "record {index} overruns Sightings.dat: its attributes are declared as {} bytes but only {} bytes remain",
                    header.size,
                    dat.left()
                ),
            ));
        }
        let end = dat.pos + header.size;
        let mut attributes = Vec::new();
        let mut held = 0u64;
        let mut media = 0usize;
        while dat.pos < end {
            let n = attributes.len();
            let here = format!("Sightings.dat[{index}].attributes[{n}]");
            if end - dat.pos < 21 {
                return Err(syntax(
                    here,
                    format!(
                        "attribute {n} of record {index} overruns its record: {} bytes left, an attribute needs at least 21",
                        end - dat.pos
                    ),
                ));
            }
            let mut a = [0u8; 21];
            dat.exact(&mut a)?;
            let element = guid(&a[0..16]);
            let kind = a[16];
            let size = u32::from_le_bytes(a[17..21].try_into().expect("4 bytes"));
            if u64::from(size) > end - dat.pos {
                return Err(syntax(
                    here,
                    format!(
                        "attribute {n} of record {index} overruns its record: its value is declared as {size} bytes but only {} remain",
                        end - dat.pos
                    ),
                ));
            }
            if !matches!(kind, 14..=16) {
                held += u64::from(size) + 64;
            }
            if n >= MAX_ATTRIBUTES || held > MAX_RECORD_HELD {
                return Err(reject(
                    RejectKind::TooLarge,
                    format!(
                        "{here}: record {index} holds more than {MAX_ATTRIBUTES} attributes or {MAX_RECORD_HELD} bytes of values; a CyberTracker form has far fewer"
                    ),
                ));
            }
            // A deleted record's media is not stored: its sighting is not either.
            let to = sink.as_deref_mut().filter(|_| !header.deleted);
            let to_store = to.is_some();
            let value = value(dat, kind, size, &here, index, n, to)?;
            if let (Val::Media(m), Some(sink)) = (&value, sink.as_deref_mut()) {
                if to_store {
                    let item = MediaItem {
                        sighting_id: header.id,
                        name: format!("{}-{media}", header.id),
                        content_type: m["media_type"].as_str().unwrap_or_default().to_string(),
                    };
                    sink.end(item).map_err(sink_failed)?;
                }
                media += 1;
            }
            attributes.push((element, value));
        }
        each(index, header, attributes)?;
        index += 1;
    }
    Ok(())
}

fn value<R: Read>(
    dat: &mut Dat<R>,
    kind: u8,
    size: u32,
    here: &str,
    record: u64,
    n: usize,
    mut sink: Option<&mut (dyn MediaSink + '_)>,
) -> Result<Val, Rejection> {
    if let Some(want) = fixed_size(kind).filter(|w| *w != size) {
        return Err(syntax(
            here.to_owned(),
            format!(
                "attribute {n} of record {record} has type {kind} ({}), which is {want} bytes, but declares {size}",
                TYPE_NAMES[kind as usize]
            ),
        ));
    }
    let mut small = |len: usize| -> Result<Vec<u8>, Rejection> {
        let mut buf = vec![0u8; len];
        dat.exact(&mut buf)?;
        Ok(buf)
    };
    let f64_of = |b: &[u8]| f64::from_le_bytes(b.try_into().expect("8 bytes"));
    Ok(match kind {
        0 => Val::Null,
        1 => Val::Json(Value::Bool(small(1)?[0] != 0)),
        2 => Val::Json(json!(small(1)?[0])),
        3 => Val::Json(json!(small(1)?[0] as i8)),
        4 => Val::Json(json!(i16::from_le_bytes(small(2)?.try_into().expect("2")))),
        5 => Val::Json(json!(i32::from_le_bytes(small(4)?.try_into().expect("4")))),
        6 => Val::Number(f64_of(&small(8)?)),
        7 => Val::Date(f64_of(&small(8)?)),
        8 => Val::Time(f64_of(&small(8)?)),
        9 => Val::DateTime(f64_of(&small(8)?)),
        10 => Val::Json(json!(u32::from_le_bytes(small(4)?.try_into().expect("4")))),
        11 => Val::Guid(Uuid::from_bytes_le(small(16)?.try_into().expect("16"))),
        12 | 13 | 18 => {
            if size > MAX_TEXT {
                return Err(reject(
                    RejectKind::TooLarge,
                    format!("{here}: a text value of {size} bytes, over the limit of {MAX_TEXT}"),
                ));
            }
            let mut raw = small(size as usize)?;
            while raw.last() == Some(&0) {
                raw.pop();
            }
            let text = if kind == 18 {
                String::from_utf8(raw).map_err(|_| {
                    let p = problem(
                        at(here.to_owned()),
                        None,
                        None,
                        "a UTF-8 text value that is not UTF-8",
                    );
                    reject_with(
                        RejectKind::Encoding,
                        format!("{here}: a UTF-8 text value that is not UTF-8"),
                        p,
                    )
                })?
            } else {
                raw.iter().map(|b| char::from(*b)).collect()
            };
            Val::Json(Value::String(text))
        }
        14..=16 => {
            // Inline bytes (a photo, a recording): hashed as they pass, never held.
            let mut hasher = Sha256::new();
            let mut start = [0u8; 12];
            let mut seen = 0usize;
            let mut left = u64::from(size);
            let mut buf = [0u8; 32 * 1024];
            if let Some(sink) = sink.as_deref_mut() {
                sink.begin().map_err(sink_failed)?;
            }
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                dat.exact(&mut buf[..n])?;
                if seen < start.len() {
                    let k = (start.len() - seen).min(n);
                    start[seen..seen + k].copy_from_slice(&buf[..k]);
                    seen += k;
                }
                hasher.update(&buf[..n]);
                if let Some(sink) = sink.as_deref_mut() {
                    sink.chunk(&buf[..n]).map_err(sink_failed)?;
                }
                left -= n as u64;
            }
            let what = match kind {
                14 => "binary",
                15 => "graphic",
                _ => "sound",
            };
            Val::Media(json!({
                "kind": what,
                "media_type": sniff_media(&start[..seen], kind),
                "size": size,
                "sha256": hex::encode(hasher.finalize()),
            }))
        }
        17 => {
            if !size.is_multiple_of(16) || size > MAX_TEXT {
                return Err(syntax(
                    here.to_owned(),
                    format!("attribute {n} of record {record} is a guid list of {size} bytes, not a whole number of 16-byte GUIDs"),
                ));
            }
            let raw = small(size as usize)?;
            Val::GuidList(
                raw.chunks_exact(16)
                    .map(|c| Uuid::from_bytes_le(c.try_into().expect("16")))
                    .collect(),
            )
        }
        other => {
            return Err(syntax(
                here.to_owned(),
                format!("attribute {n} of record {record} has the unknown data type {other} (CyberTracker writes 0 to 18)"),
            ))
        }
    })
}

fn sniff_media(start: &[u8], kind: u8) -> &'static str {
    if start.starts_with(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if start.starts_with(b"\x89PNG") {
        "image/png"
    } else if start.starts_with(b"RIFF") && start.get(8..12) == Some(b"WAVE") {
        "audio/wav"
    } else if start.starts_with(b"ID3") || start.starts_with(&[0xff, 0xfb]) {
        "audio/mpeg"
    } else if kind == 15 {
        "image/octet-stream"
    } else {
        "application/octet-stream"
    }
}

/// Walks `Waypoints.dat`, handing `each` every waypoint the device did not mark
/// deleted, checked: its time (`created`, read at `offset_minutes`) and position. Returns
/// how many it handed out. One record is held at a time.
fn walk_waypoints<R: Read>(
    dat: &mut Dat<R>,
    offset_minutes: i32,
    mut each: impl FnMut(TrackPoint),
) -> Result<u64, Rejection> {
    if !dat.len.is_multiple_of(WAYPOINT_BYTES) {
        let index = dat.len / WAYPOINT_BYTES;
        return Err(syntax(
            format!("Waypoints.dat[{index}]"),
            format!(
                "Waypoints.dat is {} bytes, not a whole number of {WAYPOINT_BYTES}-byte waypoints: waypoint {index} is cut short",
                dat.len
            ),
        ));
    }
    let mut kept = 0;
    for index in 0..dat.len / WAYPOINT_BYTES {
        let mut w = [0u8; WAYPOINT_BYTES as usize];
        dat.exact(&mut w)?;
        if let Some(p) = waypoint(index, &w, offset_minutes)? {
            each(p);
            kept += 1;
        }
    }
    Ok(kept)
}

/// One `WAYPOINT` record: `None` when the device marked it deleted.
fn waypoint(
    index: u64,
    w: &[u8; WAYPOINT_BYTES as usize],
    offset_minutes: i32,
) -> Result<Option<TrackPoint>, Rejection> {
    let here = format!("Waypoints.dat[{index}]");
    if w[0..4] != WAYPOINT_MAGIC {
        return Err(syntax(
            here,
            format!(
                "waypoint {index} does not start with the magic WAY2 (found {:02x?})",
                &w[0..4]
            ),
        ));
    }
    if w[84] != 0 {
        return Ok(None);
    }
    // After magic, id and device id (36 bytes): created, current, latitude, longitude,
    // altitude, accuracy.
    let double = |k: usize| {
        let at = 36 + 8 * k;
        f64::from_le_bytes(w[at..at + 8].try_into().expect("8 bytes"))
    };
    let bad = |field: &str, value: f64, why: &str| {
        let p = problem(
            at(format!("{here}.{field}")),
            Some(field),
            Some(value.to_string()),
            format!("waypoint {index}: {why}"),
        );
        reject_with(
            RejectKind::InvalidRows,
            format!("{here}.{field}: waypoint {index}: {why} (found {value})"),
            p,
        )
    };
    let created = double(0);
    let Some(time) = ole_time(created, offset_minutes) else {
        return Err(bad(
            "created",
            created,
            "the time is not a day CyberTracker can write (days since 1899-12-30)",
        ));
    };
    let (latitude, longitude) = (double(2), double(3));
    if !latitude.is_finite() || !(-90.0..=90.0).contains(&latitude) {
        return Err(bad(
            "latitude",
            latitude,
            "latitude must be a number from -90 to 90",
        ));
    }
    if !longitude.is_finite() || !(-180.0..=180.0).contains(&longitude) {
        return Err(bad(
            "longitude",
            longitude,
            "longitude must be a number from -180 to 180",
        ));
    }
    let (altitude, accuracy) = (double(4), double(5));
    Ok(Some(TrackPoint {
        time,
        latitude,
        longitude,
        altitude: altitude.is_finite().then_some(altitude),
        // The device writes 0 when the receiver gave no accuracy.
        accuracy: (accuracy.is_finite() && accuracy > 0.0).then_some(accuracy),
    }))
}

/// The waypoints of a scanned CTX (none when it has no `Waypoints.dat`), for the
/// server's tracks. Each record is checked as [`scan`] checked it.
pub(crate) fn track(
    path: &Path,
    sha256: &str,
    limits: &Limits,
) -> Result<Vec<TrackPoint>, Rejection> {
    let (now, _) = file_sha256(path)?;
    if now != sha256 {
        return Err(reject(
            RejectKind::Io,
            "the file changed between scan and read",
        ));
    }
    let mut ctx = Ctx::open(path, limits)?;
    let mut points = Vec::new();
    if let Some((r, len)) = ctx.member("Waypoints.dat")? {
        let mut dat = Dat { r, pos: 0, len };
        walk_waypoints(&mut dat, limits.ctx_utc_offset_minutes, |p| points.push(p))?;
    }
    Ok(points)
}

fn file_sha256(path: &Path) -> Result<(String, u64), Rejection> {
    let mut f = File::open(path)
        .map_err(|e| reject(RejectKind::Io, format!("cannot open the file: {e}")))?;
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut f, &mut hasher)
        .map_err(|e| reject(RejectKind::Io, format!("reading the file failed: {e}")))?;
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// First pass: the archive, its version, every record's structure; counts.
pub(crate) fn scan(path: &Path, limits: &Limits) -> Result<Counted, Rejection> {
    let (sha256, bytes) = file_sha256(path)?;
    let mut ctx = Ctx::open(path, limits)?;
    let waypoints = match ctx.member("Waypoints.dat")? {
        Some((r, len)) => {
            let mut dat = Dat { r, pos: 0, len };
            Some(walk_waypoints(
                &mut dat,
                limits.ctx_utc_offset_minutes,
                |_| {},
            )?)
        }
        None => None,
    };
    let (mut sightings, mut deleted, mut no_position) = (0, 0, 0);
    match ctx.member("Sightings.dat")? {
        Some((r, len)) => {
            let mut dat = Dat { r, pos: 0, len };
            walk_sightings(&mut dat, None, |_, h, attributes| {
                if h.deleted {
                    deleted += 1;
                } else if !has_position(&attributes) {
                    no_position += 1;
                } else {
                    sightings += 1;
                }
                Ok(())
            })?;
        }
        // CyberTracker leaves Sightings.dat out of a CTX that only carries track points.
        None if waypoints.is_some() => {}
        None => {
            return Err(reject(
                RejectKind::Header,
                "the CTX holds no Sightings.dat (and no Waypoints.dat): nothing to read",
            ))
        }
    }
    Ok(Counted {
        sha256,
        bytes,
        sightings,
        deleted,
        no_position,
        waypoints: waypoints.unwrap_or(0),
    })
}

/// Second pass: every sighting record that is not deleted becomes a sighting.
pub(crate) fn read<F>(path: &Path, limits: &Limits, rows: &mut Rows<'_, F>) -> Result<(), Rejection>
where
    F: FnMut(Sighting) -> std::ops::ControlFlow<()>,
{
    let (sha256, _) = file_sha256(path)?;
    if sha256 != rows.sha256 {
        return Err(reject(
            RejectKind::Io,
            "the file changed between scan and read",
        ));
    }
    let mut ctx = Ctx::open(path, limits)?;
    let names = std::mem::take(&mut ctx.names);
    let Some((r, len)) = ctx.member("Sightings.dat")? else {
        return Ok(());
    };
    let mut dat = Dat { r, pos: 0, len };
    walk_sightings(&mut dat, None, |index, header, attributes| {
        if header.deleted || !has_position(&attributes) {
            rows.skip();
            return Ok(());
        }
        let parsed = sighting(
            &names,
            limits.ctx_utc_offset_minutes,
            index,
            header,
            attributes,
        );
        if rows.row(parsed).is_break() {
            return Err(reject(RejectKind::Io, "stopped"));
        }
        Ok(())
    })
    .or_else(|r| if rows.stopped { Ok(()) } else { Err(r) })
}

/// The media of every record that is not deleted, for the attachment store.
pub(crate) fn media(
    path: &Path,
    limits: &Limits,
    sink: &mut dyn MediaSink,
) -> Result<(), Rejection> {
    let mut ctx = Ctx::open(path, limits)?;
    let Some((r, len)) = ctx.member("Sightings.dat")? else {
        return Ok(());
    };
    let mut dat = Dat { r, pos: 0, len };
    walk_sightings(&mut dat, Some(sink), |_, _, _| Ok(()))
}

/// Days since 1899-12-30 (whole and fraction) as a wall-clock time.
fn ole_naive(days: f64) -> Option<NaiveDateTime> {
    if !days.is_finite() || !(-693_593.0..2_958_466.0).contains(&days) {
        return None;
    }
    let (y, m, d) = OLE_EPOCH;
    let epoch = NaiveDate::from_ymd_opt(y, m, d)?.and_hms_opt(0, 0, 0)?;
    let ms = (days * 86_400_000.0).round() as i64;
    epoch.checked_add_signed(Duration::milliseconds(ms))
}

/// CyberTracker records the device's wall clock with no zone: it is read at the
/// configured offset (`Limits::ctx_utc_offset_minutes`, UTC by default).
fn ole_time(days: f64, offset_minutes: i32) -> Option<DateTime<FixedOffset>> {
    let zone = FixedOffset::east_opt(offset_minutes.checked_mul(60)?)?;
    zone.from_local_datetime(&ole_naive(days)?).single()
}

fn sighting(
    ctx: &Names,
    offset_minutes: i32,
    index: u64,
    header: Header,
    attributes: Vec<(Uuid, Val)>,
) -> Result<Sighting, Vec<Problem>> {
    let row = RowAt {
        line: None,
        prefix: Some(format!("Sightings.dat[{index}]")),
    };
    let mut problems = Vec::new();
    let mut draft = Draft::default();
    draft.id = Some(header.id);
    let (mut date, mut time) = (None, None);
    let mut extra: Vec<(String, Value)> =
        vec![("deviceId".into(), json!(header.device.to_string()))];
    if let Some(db) = &ctx.source_database {
        extra.push(("dbName".into(), json!(db)));
    }
    if header.checked_out {
        extra.push(("checkedOut".into(), json!(true)));
    }
    let mut attachments = Vec::new();
    for (element, v) in attributes {
        let field = match element {
            LATITUDE => Some(Field::Latitude),
            LONGITUDE => Some(Field::Longitude),
            ALTITUDE => Some(Field::Altitude),
            ACCURACY => Some(Field::Accuracy),
            _ => None,
        };
        match (element, field, v) {
            (DATE, _, Val::Date(d)) => date = Some(d),
            (TIME, _, Val::Time(t)) => time = Some(t),
            (_, Some(f), Val::Number(x)) => {
                if let Err(msg) = draft.set_number(f, x) {
                    let p = problem(row.at(f.name()), Some(f.name()), Some(x.to_string()), msg);
                    problems.push(p);
                }
            }
            (_, _, v) => {
                let name = ctx.name_of(element);
                let value = match v {
                    Val::Null => Value::Null,
                    Val::Json(j) => j,
                    // A keypad count is a double: a whole one reads as the integer.
                    Val::Number(x) if x.fract() == 0.0 && x.abs() < 9e15 => json!(x as i64),
                    Val::Number(x) => serde_json::Number::from_f64(x)
                        .map_or_else(|| Value::String(x.to_string()), Value::Number),
                    Val::Date(d) => ole_naive(d)
                        .map_or(Value::Null, |t| json!(t.format("%Y-%m-%d").to_string())),
                    Val::Time(d) => ole_naive(d)
                        .map_or(Value::Null, |t| json!(t.format("%H:%M:%S").to_string())),
                    Val::DateTime(d) => ole_naive(d).map_or(Value::Null, |t| {
                        json!(t.format("%Y-%m-%dT%H:%M:%S").to_string())
                    }),
                    Val::Guid(g) => json!(ctx.name_of(g)),
                    Val::GuidList(gs) => gs.into_iter().map(|g| json!(ctx.name_of(g))).collect(),
                    Val::Media(mut m) => {
                        m["element"] = json!(name);
                        m["name"] = json!(format!("{}-{}", header.id, attachments.len()));
                        let reference = m["name"].clone();
                        attachments.push(m);
                        reference
                    }
                };
                if field.is_some() {
                    let msg = format!("{name} must be a double, as CyberTracker writes the fix");
                    problems.push(problem(row.at(&name), Some(&name), None, msg));
                    continue;
                }
                element_value(&mut draft, name, value, &row, &mut problems);
            }
        }
    }
    match (date, time) {
        (Some(d), t) => match ole_time(d + t.unwrap_or(0.0), offset_minutes) {
            Some(t) => draft.observed_at = Some(t),
            None => problems.push(problem(
                row.at("Date"),
                Some("observed_at"),
                Some(d.to_string()),
                "the date is not a day CyberTracker can write (days since 1899-12-30)",
            )),
        },
        (None, _) => problems.push(problem(
            row.at("Date"),
            Some("observed_at"),
            None,
            "the record has no Date attribute (element {4764f5e6-15a1-48bf-808a-f673ed7cdcda}), so it has no time",
        )),
    }
    for (k, v) in extra {
        merge(&mut draft.attributes, k, v);
    }
    if !attachments.is_empty() {
        merge(
            &mut draft.attributes,
            "attachments".into(),
            Value::Array(attachments),
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Every CTX sighting carries its own GUID: no id is derived from the content.
    draft.finish("", index).map_err(|missing| {
        row.missing(missing, &mut problems);
        problems
    })
}

fn merge(map: &mut Map<String, Value>, key: String, v: Value) {
    map.entry(key).or_insert(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_lines() {
        let g = "4764f5e6-15a1-48bf-808a-f673ed7cdcda";
        let want = Some((Uuid::parse_str(g).unwrap(), "Elephant".to_string()));
        assert_eq!(element_line(&format!("{{{g}}}\tElephant")), want);
        assert_eq!(element_line(&format!("{g},\"Elephant\"")), want);
        assert_eq!(
            element_line(&format!("{{{}}}=Elephant", g.to_uppercase())),
            want
        );
        assert_eq!(element_line(&format!("Elephant\t{g}")), want);
        assert_eq!(element_line("no guid here"), None);
        assert_eq!(element_line(g), None);
    }

    #[test]
    fn ole_dates() {
        assert_eq!(
            ole_time(0.0, 0).unwrap().to_rfc3339(),
            "1899-12-30T00:00:00+00:00"
        );
        // 2024-05-01 is day 45413; 06:30 is 0.2708333….
        let t = ole_time(45413.0 + (6.5 / 24.0), 0).unwrap();
        assert_eq!(t.to_rfc3339(), "2024-05-01T06:30:00+00:00");
        assert!(ole_time(f64::NAN, 0).is_none());
        let t = ole_time(45413.0 + (6.5 / 24.0), 120).unwrap();
        assert_eq!(t.to_rfc3339(), "2024-05-01T06:30:00+02:00");
    }
}
