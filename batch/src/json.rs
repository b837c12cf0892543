//! CTData JSON and GeoJSON documents, streamed: the top-level object is visited key by
//! key and the `sightings` / `features` array element by element, so a 1 GB document
//! never sits in memory, and header keys may come before or after the array.

use std::fmt;
use std::io::{BufRead, BufReader};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use std::ops::ControlFlow;

use crate::fields::{show, sighting_from_object, RowAt};
use crate::input::{Input, Source};
use crate::model::{Problem, RejectKind, Rejection, Sighting};
use crate::problems::{problem, reject, reject_with, Rows};
use crate::{cybertracker, geojson};

/// Keys of the top-level object that are kept; everything else is skipped unread.
const HEADER_KEYS: [&str; 7] = [
    "ctdata_batch",
    "sequence",
    "batch_id",
    "device_id",
    "created_at",
    "count",
    "type",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArrayKind {
    Sightings,
    Features,
}

impl ArrayKind {
    pub fn key(self) -> &'static str {
        match self {
            ArrayKind::Sightings => "sightings",
            ArrayKind::Features => "features",
        }
    }
}

/// What to do with the elements of the array: count them (scan) or validate them (read).
pub(crate) trait Elements {
    fn elements<'de, A: SeqAccess<'de>>(
        &mut self,
        kind: ArrayKind,
        seq: A,
    ) -> Result<u64, A::Error>;

    /// True when the handler aborted the parse on purpose (the sink said stop).
    fn stopped(&self) -> bool {
        false
    }
}

/// The top-level object with its array consumed.
#[derive(Debug, Default)]
pub(crate) struct Top {
    pub header: Map<String, Value>,
    pub array: Option<(ArrayKind, u64)>,
}

impl Top {
    /// CTData JSON wins when a document looks like both, since only it has a version.
    pub fn is_ctdata(&self) -> bool {
        self.header.contains_key("ctdata_batch")
            || matches!(self.array, Some((ArrayKind::Sightings, _)))
    }

    pub fn is_geojson(&self) -> bool {
        !self.is_ctdata() && (self.header.contains_key("type") || self.array.is_some())
    }
}

struct TopVisitor<'h, E> {
    handler: &'h mut E,
}

impl<'de, E: Elements> Visitor<'de> for TopVisitor<'_, E> {
    type Value = Top;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Top, M::Error> {
        let mut top = Top::default();
        while let Some(key) = map.next_key::<String>()? {
            let kind = match key.as_str() {
                "sightings" => ArrayKind::Sightings,
                "features" => ArrayKind::Features,
                k if HEADER_KEYS.contains(&k) => {
                    let v = map.next_value::<Value>()?;
                    top.header.insert(key, v);
                    continue;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if top.array.is_some() {
                return Err(de::Error::custom(
                    "the document has more than one sightings/features array",
                ));
            }
            let n = map.next_value_seed(ArraySeed {
                kind,
                handler: &mut *self.handler,
            })?;
            top.array = Some((kind, n));
        }
        Ok(top)
    }
}

struct ArraySeed<'h, E> {
    kind: ArrayKind,
    handler: &'h mut E,
}

impl<'de, E: Elements> DeserializeSeed<'de> for ArraySeed<'_, E> {
    type Value = u64;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, E: Elements> Visitor<'de> for ArraySeed<'_, E> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} to be an array", self.kind.key())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<u64, A::Error> {
        self.handler.elements(self.kind, seq)
    }
}

/// The top-level object, then nothing but blank space.
fn parse_top<'de, R: serde_json::de::Read<'de>, E: Elements>(
    mut de: serde_json::Deserializer<R>,
    handler: &mut E,
) -> Result<Top, serde_json::Error> {
    let top = de::Deserializer::deserialize_map(&mut de, TopVisitor { handler })?;
    de.end()?;
    Ok(top)
}

/// Parses the whole document (after sniffing said it starts with `{`), insisting that
/// only blank space follows it. `Ok(None)` means the handler stopped the parse.
pub(crate) fn parse<E: Elements>(
    input: &mut Input,
    handler: &mut E,
) -> Result<Option<Top>, Rejection> {
    let result = if input.rest_is_buffered() {
        // A small document (most uploads) is in the buffer whole: parsing a slice is
        // several times faster than serde_json's byte-at-a-time reads through io::Read.
        let whole = input.reader.buffer();
        let len = whole.len();
        let result = parse_top(serde_json::Deserializer::from_slice(whole), handler);
        input.reader.consume(len);
        result
    } else {
        let reader: &mut BufReader<Source> = &mut input.reader;
        parse_top(serde_json::Deserializer::from_reader(reader), handler)
    };
    match result {
        Ok(top) => Ok(Some(top)),
        Err(_) if handler.stopped() => Ok(None),
        Err(e) => Err(json_error(input, e)),
    }
}

fn json_error(input: &mut Input, e: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => input.fail(e.into()),
        Category::Eof => reject(
            RejectKind::Truncated,
            format!("JSON document ends early ({e}): the file is truncated"),
        ),
        Category::Syntax => reject(RejectKind::Syntax, format!("JSON syntax error: {e}")),
        Category::Data => reject(
            RejectKind::Syntax,
            format!("not a valid batch document: {e}"),
        ),
    }
}

/// Checks a CTData JSON document's declared count against what it contained.
pub(crate) fn check_count(declared: u64, found: u64) -> Result<(), Rejection> {
    if declared == found {
        return Ok(());
    }
    Err(reject(
        RejectKind::Truncated,
        format!(
            "batch declares count {declared} but contains {found} sightings: the file is truncated or was altered"
        ),
    ))
}

/// Rejects a JSON object that is neither a CTData batch nor a FeatureCollection.
pub(crate) fn classify(top: &Top) -> Result<crate::model::Format, Rejection> {
    use crate::model::Format;
    if top.is_ctdata() {
        if top.array.is_none() {
            let p = crate::problems::problem(
                crate::problems::at_path("sightings"),
                Some("sightings"),
                None,
                "a CTData JSON batch needs a \"sightings\" array (it may be empty)",
            );
            return Err(reject_with(
                RejectKind::Syntax,
                "JSON batch has no sightings array",
                p,
            ));
        }
        return Ok(Format::Json);
    }
    if !top.is_geojson() {
        return Err(reject(
            RejectKind::UnknownFormat,
            "not a CTData batch: a JSON object without \"ctdata_batch\" (CTData JSON) or \"type\": \"FeatureCollection\" (GeoJSON)",
        ));
    }
    let ty = top.header.get("type");
    if ty.and_then(Value::as_str) != Some("FeatureCollection") {
        let shown = ty
            .map(crate::fields::show)
            .unwrap_or_else(|| "missing".into());
        return Err(reject(
            RejectKind::UnknownFormat,
            format!(
                "GeoJSON type is {shown}: only a FeatureCollection of Point features is accepted"
            ),
        ));
    }
    if top.array.is_none() {
        return Err(reject(
            RejectKind::Syntax,
            "GeoJSON FeatureCollection has no features array",
        ));
    }
    Ok(Format::Geojson)
}

/// Scan-time handler: counts the elements without building them. Features are looked
/// into just enough to tell a CyberTracker upload (by its first feature) and to count
/// its waypoints.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    pub cybertracker: bool,
    pub waypoints: u64,
}

impl Elements for Counter {
    fn elements<'de, A: SeqAccess<'de>>(
        &mut self,
        kind: ArrayKind,
        mut seq: A,
    ) -> Result<u64, A::Error> {
        let mut n = 0;
        if kind == ArrayKind::Features {
            // The first feature decides; plain GeoJSON is then skipped unparsed.
            if let Some(first) = seq.next_element::<cybertracker::Shape>()? {
                self.cybertracker = first.cybertracker;
                self.waypoints = u64::from(first.cybertracker && first.waypoint);
                n += 1;
            }
            while self.cybertracker {
                let Some(shape) = seq.next_element::<cybertracker::Shape>()? else {
                    return Ok(n);
                };
                self.waypoints += u64::from(shape.waypoint);
                n += 1;
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

/// Read-time handler: validates each element and hands valid rows to the sink.
pub(crate) struct Validator<'r, 'a, F> {
    pub rows: &'r mut Rows<'a, F>,
    /// Features are CyberTracker's, as the scan found.
    pub cybertracker: bool,
}

impl<F: FnMut(Sighting) -> ControlFlow<()>> Elements for Validator<'_, '_, F> {
    fn elements<'de, A: SeqAccess<'de>>(
        &mut self,
        kind: ArrayKind,
        mut seq: A,
    ) -> Result<u64, A::Error> {
        let mut i = 0;
        while let Some(v) = seq.next_element::<Value>()? {
            let row = RowAt {
                line: None,
                prefix: Some(format!("{}[{i}]", kind.key())),
            };
            let (sha, index) = (self.rows.sha256, self.rows.seen);
            let parsed = match kind {
                ArrayKind::Sightings => sighting_value(v, &row, sha, index),
                ArrayKind::Features if self.cybertracker => {
                    match cybertracker::feature(v, &row, sha, index) {
                        Ok(cybertracker::Parsed::Sighting(s)) => Ok(s),
                        Ok(_) => {
                            self.rows.skip();
                            i += 1;
                            continue;
                        }
                        Err(problems) => Err(problems),
                    }
                }
                ArrayKind::Features => geojson::feature(v, &row, sha, index),
            };
            if self.rows.row(parsed).is_break() {
                return Err(de::Error::custom("stopped by the caller"));
            }
            i += 1;
        }
        Ok(i)
    }

    fn stopped(&self) -> bool {
        self.rows.stopped
    }
}

fn sighting_value(v: Value, row: &RowAt, sha: &str, index: u64) -> Result<Sighting, Vec<Problem>> {
    match v {
        Value::Object(obj) => sighting_from_object(obj, row, sha, index),
        other => Err(vec![problem(
            row.whole(),
            None,
            Some(show(&other)),
            "a sighting must be a JSON object",
        )]),
    }
}
