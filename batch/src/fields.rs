//! The sighting fields, their names and aliases, and their validation. Shared by every
//! reader so a latitude of 91 gets the same message whatever the file format.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::model::{Location, Problem, Sighting, CTDATA_NAMESPACE};
use crate::problems::problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Id,
    ObservedAt,
    Latitude,
    Longitude,
    Altitude,
    Accuracy,
    Observer,
    Species,
    Count,
}

pub(crate) const ALL_FIELDS: [Field; 9] = [
    Field::Id,
    Field::ObservedAt,
    Field::Latitude,
    Field::Longitude,
    Field::Altitude,
    Field::Accuracy,
    Field::Observer,
    Field::Species,
    Field::Count,
];

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::ObservedAt => "observed_at",
            Field::Latitude => "latitude",
            Field::Longitude => "longitude",
            Field::Altitude => "altitude",
            Field::Accuracy => "accuracy",
            Field::Observer => "observer",
            Field::Species => "species",
            Field::Count => "count",
        }
    }

    /// Darwin Core term accepted for the field in CSV headers and GeoJSON properties,
    /// so exports from GBIF-style tools load without renaming columns.
    pub fn darwin_core(self) -> &'static str {
        match self {
            Field::Id => "occurrenceID",
            Field::ObservedAt => "eventDate",
            Field::Latitude => "decimalLatitude",
            Field::Longitude => "decimalLongitude",
            Field::Altitude => "minimumElevationInMeters",
            Field::Accuracy => "coordinateUncertaintyInMeters",
            Field::Observer => "recordedBy",
            Field::Species => "scientificName",
            Field::Count => "individualCount",
        }
    }

    pub fn required(self) -> bool {
        matches!(self, Field::ObservedAt | Field::Latitude | Field::Longitude)
    }

    /// Exact canonical name, as CTData JSON / NDJSON sightings use.
    pub fn from_name(key: &str) -> Option<Field> {
        ALL_FIELDS.into_iter().find(|f| f.name() == key)
    }

    /// Canonical name or Darwin Core alias, case-insensitive, surrounding blanks ignored.
    pub fn from_alias(key: &str) -> Option<Field> {
        let key = key.trim();
        ALL_FIELDS.into_iter().find(|f| {
            f.name().eq_ignore_ascii_case(key) || f.darwin_core().eq_ignore_ascii_case(key)
        })
    }

    /// What a valid value looks like; every problem with the field says this.
    pub fn expectation(self) -> &'static str {
        match self {
            Field::Id => "id must be a UUID, e.g. 3f2b8c1e-5d4a-4e8b-9c7d-1a2b3c4d5e6f",
            Field::ObservedAt => {
                "observed_at must be an RFC 3339 timestamp with UTC offset, e.g. 2024-05-01T06:30:00+02:00"
            }
            Field::Latitude => "latitude must be a number from -90 to 90",
            Field::Longitude => "longitude must be a number from -180 to 180",
            Field::Altitude => "altitude must be a number (metres)",
            Field::Accuracy => "accuracy must be a number of 0 or more (metres)",
            Field::Observer => "observer must be a string",
            Field::Species => "species must be a string",
            Field::Count => "count must be a whole number of 0 or more",
        }
    }

    fn check_number(self, x: f64) -> Option<f64> {
        let ok = x.is_finite()
            && match self {
                Field::Latitude => (-90.0..=90.0).contains(&x),
                Field::Longitude => (-180.0..=180.0).contains(&x),
                Field::Accuracy => x >= 0.0,
                _ => true,
            };
        ok.then_some(x)
    }
}

/// Parses an RFC 3339 timestamp, explaining the common near-misses (no offset, date
/// only) specifically because those are what spreadsheets and naive loggers produce.
pub(crate) fn parse_time(field: &str, s: &str) -> Result<DateTime<FixedOffset>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        // Every backend stores years 1 to 9999 in UTC, and that is what they store:
        // 9999-12-31T23:59:59-23:59 is in the year 10000 there, which SQLite keeps as
        // text no export can read back. Beyond that is a typo, not a date.
        let utc = t.with_timezone(&chrono::Utc);
        return if (1..=9999).contains(&t.year()) && (1..=9999).contains(&utc.year()) {
            Ok(t)
        } else if (1..=9999).contains(&t.year()) {
            Err(format!(
                "{field} must be between the years 1 and 9999 in UTC; {s} is in the year {} in UTC",
                utc.year()
            ))
        } else {
            Err(format!("{field} must be between the years 1 and 9999"))
        };
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .any(|f| NaiveDateTime::parse_from_str(s, f).is_ok());
    if naive {
        return Err(format!(
            "{field} has no UTC offset; add one, e.g. 2024-05-01T06:30:00+02:00 or 2024-05-01T04:30:00Z"
        ));
    }
    if NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() {
        return Err(format!(
            "{field} is a date without a time; it must be an RFC 3339 timestamp with UTC offset, e.g. 2024-05-01T06:30:00+02:00"
        ));
    }
    Err(format!(
        "{field} must be an RFC 3339 timestamp with UTC offset, e.g. 2024-05-01T06:30:00+02:00"
    ))
}

pub(crate) fn parse_uuid(s: &str) -> Option<Uuid> {
    // Only the hyphenated form: braces and URNs are legal for the uuid crate but would
    // make the same id look different in exports.
    (s.len() == 36).then(|| Uuid::parse_str(s).ok()).flatten()
}

/// Renders a JSON value for quoting in a problem: strings without their quotes.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn derived_id(sha256: &str, index: u64) -> Uuid {
    Uuid::new_v5(&CTDATA_NAMESPACE, format!("{sha256}:{index}").as_bytes())
}

/// A sighting being assembled from a row; `None` means absent so far.
#[derive(Default)]
pub(crate) struct Draft {
    pub id: Option<Uuid>,
    pub observed_at: Option<DateTime<FixedOffset>>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    pub altitude: Option<f64>,
    accuracy: Option<f64>,
    observer: Option<String>,
    species: Option<String>,
    count: Option<i64>,
    pub attributes: Map<String, Value>,
}

impl Draft {
    pub fn has(&self, f: Field) -> bool {
        match f {
            Field::Id => self.id.is_some(),
            Field::ObservedAt => self.observed_at.is_some(),
            Field::Latitude => self.latitude.is_some(),
            Field::Longitude => self.longitude.is_some(),
            Field::Altitude => self.altitude.is_some(),
            Field::Accuracy => self.accuracy.is_some(),
            Field::Observer => self.observer.is_some(),
            Field::Species => self.species.is_some(),
            Field::Count => self.count.is_some(),
        }
    }

    /// Sets a number field from an already-typed value (GeoJSON coordinates).
    pub fn set_number(&mut self, f: Field, x: f64) -> Result<(), String> {
        let x = f
            .check_number(x)
            .ok_or_else(|| f.expectation().to_owned())?;
        match f {
            Field::Latitude => self.latitude = Some(x),
            Field::Longitude => self.longitude = Some(x),
            Field::Altitude => self.altitude = Some(x),
            Field::Accuracy => self.accuracy = Some(x),
            _ => unreachable!("{} is not a number field", f.name()),
        }
        Ok(())
    }

    fn set_text_value(&mut self, f: Field, s: &str) -> Result<(), String> {
        let bad = || f.expectation().to_owned();
        if s.contains('\0') {
            return Err(format!(
                "{} contains a NUL character (U+0000), which cannot be stored as text",
                f.name()
            ));
        }
        match f {
            Field::Id => self.id = Some(parse_uuid(s).ok_or_else(bad)?),
            Field::ObservedAt => self.observed_at = Some(parse_time(f.name(), s)?),
            Field::Observer => self.observer = Some(s.to_owned()),
            Field::Species => self.species = Some(s.to_owned()),
            Field::Count => {
                let n = s.parse::<i64>().ok().filter(|n| *n >= 0);
                self.count = Some(n.ok_or_else(bad)?);
            }
            _ => return self.set_number(f, s.parse::<f64>().map_err(|_| bad())?),
        }
        Ok(())
    }

    /// Sets a field from a CSV cell. Cells are trimmed; an empty cell means absent.
    pub fn set_text(&mut self, f: Field, cell: &str) -> Result<(), String> {
        let s = cell.trim();
        if s.is_empty() {
            return Ok(());
        }
        self.set_text_value(f, s)
    }

    /// Sets a field from a JSON value. `null` means absent. Text must be JSON strings;
    /// a number may also come as a string holding exactly a JSON number, as GIS tools
    /// (ogr2ogr from CSV, say) write every property.
    pub fn set_json(&mut self, f: Field, v: &Value) -> Result<(), String> {
        let bad = || f.expectation().to_owned();
        let quoted;
        let v = match (f, v) {
            (
                Field::Count
                | Field::Latitude
                | Field::Longitude
                | Field::Altitude
                | Field::Accuracy,
                Value::String(s),
            ) => match number_text(s) {
                Some(n) => {
                    quoted = Value::Number(n);
                    &quoted
                }
                None => return Err(bad()),
            },
            _ => v,
        };
        match (f, v) {
            (_, Value::Null) => Ok(()),
            (
                Field::Id | Field::ObservedAt | Field::Observer | Field::Species,
                Value::String(s),
            ) => self.set_text_value(f, s),
            (Field::Count, Value::Number(n)) => {
                self.count = Some(n.as_i64().filter(|n| *n >= 0).ok_or_else(bad)?);
                Ok(())
            }
            (
                Field::Latitude | Field::Longitude | Field::Altitude | Field::Accuracy,
                Value::Number(n),
            ) => self.set_number(f, n.as_f64().ok_or_else(bad)?),
            _ => Err(bad()),
        }
    }

    /// Completes the sighting, or lists the required fields that are missing.
    pub fn finish(self, sha256: &str, index: u64) -> Result<Sighting, Vec<Field>> {
        let missing: Vec<Field> = ALL_FIELDS
            .into_iter()
            .filter(|f| f.required() && !self.has(*f))
            .collect();
        let (Some(observed_at), Some(latitude), Some(longitude)) =
            (self.observed_at, self.latitude, self.longitude)
        else {
            return Err(missing);
        };
        Ok(Sighting {
            id: self.id.unwrap_or_else(|| derived_id(sha256, index)),
            observed_at,
            latitude,
            longitude,
            altitude: self.altitude,
            accuracy: self.accuracy,
            observer: self.observer,
            species: self.species,
            count: self.count,
            attributes: self.attributes,
        })
    }
}

/// The number a string holds when it is exactly a JSON number: no blanks, no `+`, no
/// `NaN` or `inf`, nothing after it.
fn number_text(s: &str) -> Option<serde_json::Number> {
    let exact = !s.is_empty() && s.trim() == s;
    exact.then(|| serde_json::from_str(s).ok()).flatten()
}

/// Where a row is, to build its problems' locations: NDJSON/CSV rows have a line, JSON
/// rows a path prefix such as `sightings[3]`.
pub(crate) struct RowAt {
    pub line: Option<u64>,
    pub prefix: Option<String>,
}

impl RowAt {
    pub fn at(&self, sub: &str) -> Location {
        Location {
            line: self.line,
            path: self.prefix.as_ref().map(|p| format!("{p}.{sub}")),
        }
    }

    pub fn whole(&self) -> Location {
        Location {
            line: self.line,
            path: self.prefix.clone(),
        }
    }

    pub fn missing(&self, missing: Vec<Field>, problems: &mut Vec<Problem>) {
        for f in missing {
            let msg = format!("{} is required; {}", f.name(), f.expectation());
            problems.push(problem(self.at(f.name()), Some(f.name()), None, msg));
        }
    }
}

/// Builds a sighting from a CTData JSON / NDJSON object: canonical names only, unknown
/// keys kept as attributes (this is how `attachments` survives until readers know it).
pub(crate) fn sighting_from_object(
    obj: Map<String, Value>,
    row: &RowAt,
    sha256: &str,
    index: u64,
) -> Result<Sighting, Vec<Problem>> {
    let mut draft = Draft::default();
    let mut problems = Vec::new();
    for (key, v) in obj {
        if key == "attributes" {
            merge_attributes(&mut draft, v, row, &mut problems);
        } else if let Some(f) = Field::from_name(&key) {
            if let Err(msg) = draft.set_json(f, &v) {
                problems.push(problem(row.at(&key), Some(&key), Some(show(&v)), msg));
            }
        } else {
            add_attribute(&mut draft, key, v, row, &mut problems);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    draft.finish(sha256, index).map_err(|missing| {
        row.missing(missing, &mut problems);
        problems
    })
}

fn merge_attributes(draft: &mut Draft, v: Value, row: &RowAt, problems: &mut Vec<Problem>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                add_attribute(draft, k, v, row, problems);
            }
        }
        Value::Null => {}
        other => problems.push(problem(
            row.at("attributes"),
            Some("attributes"),
            Some(show(&other)),
            "attributes must be a JSON object",
        )),
    }
}

/// Adds one attribute; a key given twice (top level and inside `attributes`) is an error
/// rather than a silent choice between two values.
pub(crate) fn add_attribute(
    draft: &mut Draft,
    key: String,
    v: Value,
    row: &RowAt,
    problems: &mut Vec<Problem>,
) {
    if let Some(msg) = nul_in(&key, &v) {
        problems.push(problem(row.at(&key), Some(&key), None, msg));
        return;
    }
    if draft.attributes.contains_key(&key) {
        let msg = format!(
            "attribute {key} is given twice (as a key of the sighting and inside attributes)"
        );
        problems.push(problem(row.at(&key), Some(&key), None, msg));
        return;
    }
    draft.attributes.insert(key, v);
}

/// Databases store no NUL character in text (PostgreSQL refuses it in `text` and in
/// `jsonb`), so an attribute carrying one is refused here, the same for every backend.
pub(crate) fn nul_in(key: &str, v: &Value) -> Option<String> {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    (key.contains('\0') || has_nul(v)).then(|| {
        "attribute contains a NUL character (U+0000), which cannot be stored as text".to_string()
    })
}
