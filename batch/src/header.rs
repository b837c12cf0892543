//! The batch header shared by CTData JSON and NDJSON, and the NDJSON trailer.

use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::fields::{parse_time, parse_uuid, show};
use crate::model::{Location, Problem, RejectKind, Rejection};
use crate::problems::{problem, reject, reject_with};

pub(crate) const VERSION: u64 = 1;

#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub batch_id: Uuid,
    pub device_id: String,
    pub created_at: DateTime<FixedOffset>,
    pub count: Option<u64>,
    /// The device's running number of this batch, when it numbers them.
    pub sequence: Option<u64>,
}

/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`: safe as a file and folder name on every system
/// the server and the devices run on.
pub fn valid_device_id(s: &str) -> bool {
    let b = s.as_bytes();
    let tail_ok = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
    !b.is_empty() && b.len() <= 64 && b[0].is_ascii_alphanumeric() && b[1..].iter().all(tail_ok)
}

/// Validates a header object. `at` turns a key into a location (line 1 for NDJSON; none
/// for JSON, where the field name is the whole path). Every bad field is listed.
pub(crate) fn validate(
    map: &Map<String, Value>,
    at: &dyn Fn(&str) -> Location,
    count_required: bool,
) -> Result<Header, Rejection> {
    check_version(map, at)?;
    let mut problems = Vec::new();
    let mut f = Fields {
        map,
        at,
        problems: &mut problems,
    };
    let batch_id = f.get("batch_id", true, BATCH_ID, |v| {
        v.as_str().and_then(parse_uuid).ok_or(BATCH_ID.into())
    });
    let device_id = f.get("device_id", true, DEVICE_ID, |v| {
        let id = v.as_str().filter(|s| valid_device_id(s));
        id.map(str::to_owned).ok_or(DEVICE_ID.into())
    });
    let created_at = f.get("created_at", true, CREATED_AT, |v| match v.as_str() {
        Some(s) => parse_time("created_at", s),
        None => Err(CREATED_AT.into()),
    });
    let count = f.get("count", count_required, COUNT, |v| {
        v.as_u64().ok_or(COUNT.into())
    });
    let sequence = f.get("sequence", false, SEQUENCE, |v| {
        v.as_u64().filter(|n| *n >= 1).ok_or(SEQUENCE.into())
    });
    match (batch_id, device_id, created_at) {
        (Some(batch_id), Some(device_id), Some(created_at)) if problems.is_empty() => Ok(Header {
            batch_id,
            device_id,
            created_at,
            count,
            sequence,
        }),
        _ => Err(header_rejection(problems)),
    }
}

struct Fields<'a> {
    map: &'a Map<String, Value>,
    at: &'a dyn Fn(&str) -> Location,
    problems: &'a mut Vec<Problem>,
}

impl Fields<'_> {
    /// `null` counts as absent, like in sightings.
    fn get<T>(
        &mut self,
        key: &str,
        required: bool,
        msg: &str,
        parse: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let at = (self.at)(key);
        match self.map.get(key) {
            None | Some(Value::Null) => {
                if required {
                    let p = problem(at, Some(key), None, format!("{key} is required; {msg}"));
                    self.problems.push(p);
                }
                None
            }
            Some(v) => match parse(v) {
                Ok(t) => Some(t),
                Err(msg) => {
                    self.problems
                        .push(problem(at, Some(key), Some(show(v)), msg));
                    None
                }
            },
        }
    }
}

const BATCH_ID: &str = "batch_id must be a UUID, e.g. 3f2b8c1e-5d4a-4e8b-9c7d-1a2b3c4d5e6f";
const DEVICE_ID: &str =
    "device_id must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, e.g. ranger-07";
const CREATED_AT: &str =
    "created_at must be an RFC 3339 timestamp with UTC offset, e.g. 2024-05-01T06:30:00+02:00";
const SEQUENCE: &str =
    "sequence must be a whole number of 1 or more: the device's running number of this batch";
const COUNT: &str =
    "count must be a whole number of 0 or more: the number of sightings in the batch";

fn header_rejection(problems: Vec<Problem>) -> Rejection {
    let n = problems.len();
    Rejection {
        kind: RejectKind::Header,
        summary: format!(
            "invalid batch header ({n} problem{})",
            if n == 1 { "" } else { "s" }
        ),
        total_problems: n as u64,
        problems,
    }
}

fn check_version(map: &Map<String, Value>, at: &dyn Fn(&str) -> Location) -> Result<(), Rejection> {
    let key = "ctdata_batch";
    match map.get(key) {
        Some(v) if v.as_u64() == Some(VERSION) => Ok(()),
        Some(v) if v.is_u64() => Err(reject(
            RejectKind::Header,
            format!("unsupported batch format version {v}; this server reads version {VERSION}"),
        )),
        Some(v) => Err(reject_with(
            RejectKind::Header,
            "invalid batch header",
            problem(
                at(key),
                Some(key),
                Some(show(v)),
                "ctdata_batch must be the number 1",
            ),
        )),
        None => Err(reject_with(
            RejectKind::Header,
            "not a CTData batch header: ctdata_batch is missing",
            problem(
                at(key),
                Some(key),
                None,
                "a CTData batch header starts with \"ctdata_batch\": 1",
            ),
        )),
    }
}

/// The NDJSON trailer, found on the last non-blank line.
pub(crate) struct Trailer {
    pub count: u64,
    pub sha256: Option<String>,
}

/// `Ok(None)` when the object is not a trailer at all (no `ctdata_trailer` key).
pub(crate) fn trailer(map: &Map<String, Value>, line: u64) -> Result<Option<Trailer>, Rejection> {
    let Some(version) = map.get("ctdata_trailer") else {
        return Ok(None);
    };
    let at = || Location {
        line: Some(line),
        path: None,
    };
    let bad = |key: &str, v: Option<&Value>, msg: &str| {
        let p = problem(at(), Some(key), v.map(show), msg);
        reject_with(RejectKind::Truncated, "invalid NDJSON trailer line", p)
    };
    if version.as_u64() != Some(VERSION) {
        return Err(bad(
            "ctdata_trailer",
            Some(version),
            "ctdata_trailer must be 1",
        ));
    }
    let count = map.get("count");
    let Some(count) = count.and_then(Value::as_u64) else {
        return Err(bad("count", count, COUNT));
    };
    let sha256 = match map.get("sha256") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()) => {
            Some(s.to_ascii_lowercase())
        }
        Some(v) => {
            return Err(bad(
                "sha256",
                Some(v),
                "sha256 must be 64 hexadecimal digits",
            ))
        }
    };
    Ok(Some(Trailer { count, sha256 }))
}
