//! CyberTracker Classic uploads (its HTTP, HTTPS and HTTPZ protocols): a GeoJSON
//! FeatureCollection whose features carry CyberTracker's own property names. A feature
//! with a `sighting` object is a sighting; one without is a waypoint (a track point),
//! which is validated and handed to the server by [`crate::tracks::extras`], never as a
//! sighting. SMART Mobile writes the same envelope: its patrol events (a `sighting`
//! whose `SMART_ObservationType` is not `Observation`) are patrol records, not sightings.
//!
//! The envelope's own properties (`ctVersion`, `dbName`, `appName`, `deviceId` and any
//! other) are kept under the one attribute `cybertracker`, so a sighting element of the
//! same name never clashes with them.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use uuid::Uuid;

use serde_json::Map;

use crate::fields::{add_attribute, nul_in, parse_time, show, Draft, Field, RowAt};
use crate::geojson;
use crate::model::{Problem, Sighting};
use crate::problems::problem;
use crate::tracks::{media, PatrolEvent, TrackPoint};

/// The attribute that holds the envelope's properties.
pub const ENVELOPE: &str = "cybertracker";
/// The attribute a SMART observation's patrol id is kept under.
pub const EVENT_ID: &str = "event_id";

const ID: &str = "id is required: the sighting's GUID, e.g. {3f2b8c1e-5d4a-4e8b-9c7d-1a2b3c4d5e6f}";
const DATE_TIME: &str =
    "dateTime is required: the UTC time of the sighting, e.g. 2024-05-01T04:30:00Z";
const SIGHTING: &str =
    "sighting must be a JSON object of element name (or GUID) to value, or absent for a waypoint";

/// A GUID as CyberTracker writes it, with or without braces, as a plain UUID.
pub(crate) fn parse_guid(s: &str) -> Option<Uuid> {
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    matches!(inner.len(), 32 | 36)
        .then(|| Uuid::try_parse(inner).ok())
        .flatten()
}

/// What one valid feature is.
#[derive(Debug)]
pub(crate) enum Parsed {
    Sighting(Sighting),
    Waypoint(TrackPoint),
    Patrol(PatrolEvent),
}

/// One feature: a sighting, a waypoint or a SMART patrol event.
pub(crate) fn feature(
    v: Value,
    row: &RowAt,
    sha256: &str,
    index: u64,
) -> Result<Parsed, Vec<Problem>> {
    let mut problems = Vec::new();
    let Value::Object(mut obj) = v else {
        let p = problem(
            row.whole(),
            None,
            Some(show(&v)),
            "a feature must be a JSON object",
        );
        return Err(vec![p]);
    };
    geojson::check_type(&obj, row, &mut problems);
    let mut draft = Draft::default();
    geojson::point(obj.get("geometry"), row, &mut draft, &mut problems);
    let props = match obj.remove("properties") {
        Some(Value::Object(props)) => props,
        other => {
            let p = problem(
                row.at("properties"),
                Some("properties"),
                other.as_ref().map(show),
                "properties must be a JSON object with id, dateTime and sighting",
            );
            problems.push(p);
            return Err(problems);
        }
    };
    let waypoint = props.get("sighting").is_none_or(Value::is_null);
    let mut sighting = None;
    let mut envelope = Map::new();
    for (key, v) in props {
        let at = row.at(&format!("properties.{key}"));
        match key.as_str() {
            "id" => match v.as_str().and_then(parse_guid) {
                Some(id) => draft.id = Some(id),
                None if v.is_null() => {}
                None => problems.push(problem(at, Some("id"), Some(show(&v)), ID)),
            },
            "dateTime" => match v.as_str().map(|s| parse_time("dateTime", s)) {
                Some(Ok(t)) => draft.observed_at = Some(t),
                Some(Err(msg)) => problems.push(problem(at, Some("dateTime"), Some(show(&v)), msg)),
                None if v.is_null() => {}
                None => problems.push(problem(at, Some("dateTime"), Some(show(&v)), DATE_TIME)),
            },
            // The geometry is the one source of the position, as for plain GeoJSON.
            "latitude" | "longitude" => {}
            "altitude" if draft.altitude.is_some() => {}
            "altitude" | "accuracy" => {
                let f = Field::from_name(&key).expect("a sighting field");
                if let Err(msg) = draft.set_json(f, &v) {
                    problems.push(problem(at, Some(&key), Some(show(&v)), msg));
                }
            }
            "sighting" => match v {
                Value::Object(elements) => sighting = Some(elements),
                Value::Null => {}
                other => problems.push(problem(at, Some("sighting"), Some(show(&other)), SIGHTING)),
            },
            // Recorded, not trusted: the device is whoever authenticated the upload.
            "deviceId" => {
                let v = match v.as_str().and_then(parse_guid) {
                    Some(guid) => Value::String(guid.to_string()),
                    None => v,
                };
                envelope.insert(key, v);
            }
            _ => match nul_in(&key, &v) {
                Some(msg) => problems.push(problem(at, Some(&key), None, msg)),
                None => {
                    envelope.insert(key, v);
                }
            },
        }
    }
    let smart = sighting.as_mut().and_then(smart_kind);
    for (element, v) in sighting.into_iter().flatten() {
        element_value(&mut draft, element, v, row, &mut problems);
    }
    if let Some((_, patrol)) = &smart {
        let v = Value::String(patrol.clone());
        add_attribute(&mut draft, EVENT_ID.into(), v, row, &mut problems);
    }
    if !envelope.is_empty() {
        let v = Value::Object(envelope);
        add_attribute(&mut draft, ENVELOPE.into(), v, row, &mut problems);
    }
    if let Some(id) = obj.remove("id").filter(|v| !v.is_null()) {
        add_attribute(&mut draft, "feature_id".into(), id, row, &mut problems);
    }
    if !waypoint && draft.id.is_none() && !problems.iter().any(|p| is_field(p, "id")) {
        problems.push(problem(row.at("properties.id"), Some("id"), None, ID));
    }
    if draft.observed_at.is_none() && !problems.iter().any(|p| is_field(p, "dateTime")) {
        let p = problem(
            row.at("properties.dateTime"),
            Some("dateTime"),
            None,
            DATE_TIME,
        );
        problems.push(p);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let s = draft.finish(sha256, index).map_err(|missing| {
        row.missing(missing, &mut problems);
        problems
    })?;
    Ok(match smart {
        _ if waypoint => Parsed::Waypoint(TrackPoint::from(s)),
        Some((Some(kind), patrol_id)) => Parsed::Patrol(PatrolEvent::new(kind, patrol_id, s)),
        _ => Parsed::Sighting(s),
    })
}

/// SMART Mobile's marks: the patrol id, and the event kind unless the feature is an
/// observation (`None`). Both stay among the elements, as SMART wrote them.
fn smart_kind(elements: &mut Map<String, Value>) -> Option<(Option<String>, String)> {
    let patrol = match elements.get("SMART_PatrolID")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let kind = elements
        .get("SMART_ObservationType")
        .and_then(Value::as_str)
        .filter(|k| !k.eq_ignore_ascii_case("Observation"))
        .map(str::to_string);
    Some((kind, patrol))
}

fn is_field(p: &Problem, field: &str) -> bool {
    p.field.as_deref() == Some(field)
}

/// Elements named species, count or observer (any case) fill those fields when their
/// value fits; everything else, and a value that does not fit, is kept as an attribute
/// under the element's name. Base64 media is listed (type, size, sha256) in its place:
/// the server puts the bytes in its attachment store (`inline_media`).
pub(crate) fn element_value(
    draft: &mut Draft,
    element: String,
    v: Value,
    row: &RowAt,
    problems: &mut Vec<Problem>,
) {
    let field = [Field::Species, Field::Count, Field::Observer]
        .into_iter()
        .find(|f| f.name().eq_ignore_ascii_case(element.trim()));
    if let Some(f) = field.filter(|f| !draft.has(*f)) {
        let mut probe = Draft::default();
        if !v.is_null() && probe.set_json(f, &v).is_ok() {
            draft.set_json(f, &v).expect("the value was just checked");
            return;
        }
    }
    let at = RowAt {
        line: row.line,
        prefix: row
            .prefix
            .as_ref()
            .map(|p| format!("{p}.properties.sighting")),
    };
    let v = match &v {
        Value::String(s) => media::describe(&element, s).unwrap_or(v),
        _ => v,
    };
    add_attribute(draft, element, v, &at, problems);
}

/// What the scan learns of one feature without building it in memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Its properties use CyberTracker's names (`ctVersion`, `sighting`, or both
    /// `deviceId` and `dateTime`).
    pub cybertracker: bool,
    /// No `sighting` object: a track point.
    pub waypoint: bool,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(Lenient(FeatureKeys))
    }
}

/// Accepts any JSON value; only an object is looked into, anything else is the default.
struct Lenient<V>(V);

trait KeysOf: Copy {
    type Out: Default;
    fn visit<'de, M: MapAccess<'de>>(self, map: M) -> Result<Self::Out, M::Error>;
}

impl<'de, V: KeysOf> Visitor<'de> for Lenient<V> {
    type Value = V::Out;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<V::Out, E> {
        Ok(V::Out::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<V::Out, E> {
        Ok(V::Out::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<V::Out, E> {
        Ok(V::Out::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<V::Out, E> {
        Ok(V::Out::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<V::Out, E> {
        Ok(V::Out::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<V::Out, E> {
        Ok(V::Out::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<V::Out, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(V::Out::default())
    }
    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<V::Out, M::Error> {
        self.0.visit(map)
    }
}

#[derive(Clone, Copy)]
struct FeatureKeys;

impl KeysOf for FeatureKeys {
    type Out = Shape;

    fn visit<'de, M: MapAccess<'de>>(self, mut map: M) -> Result<Shape, M::Error> {
        let mut shape = Shape {
            cybertracker: false,
            waypoint: true,
        };
        while let Some(key) = map.next_key::<Key>()? {
            if key == Key::Properties {
                shape = map.next_value::<Properties>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(shape)
    }
}

#[derive(Default)]
struct Properties(Shape);

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Properties, D::Error> {
        d.deserialize_any(Lenient(PropertyKeys))
    }
}

#[derive(Clone, Copy)]
struct PropertyKeys;

impl KeysOf for PropertyKeys {
    type Out = Properties;

    fn visit<'de, M: MapAccess<'de>>(self, mut map: M) -> Result<Properties, M::Error> {
        let (mut version, mut sighting, mut device, mut time) = (false, false, false, false);
        while let Some(key) = map.next_key::<Key>()? {
            let present = map.next_value::<Option<IgnoredAny>>()?.is_some();
            match key {
                Key::CtVersion => version = present,
                Key::Sighting => sighting = present,
                Key::DeviceId => device = present,
                Key::DateTime => time = present,
                Key::Properties | Key::Other => {}
            }
        }
        Ok(Properties(Shape {
            cybertracker: version || sighting || (device && time),
            waypoint: !sighting,
        }))
    }
}

/// The keys the scan looks for, recognised without allocating a string per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Properties,
    CtVersion,
    Sighting,
    DeviceId,
    DateTime,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "properties" => Key::Properties,
                    "ctVersion" => Key::CtVersion,
                    "sighting" => Key::Sighting,
                    "deviceId" => Key::DeviceId,
                    "dateTime" => Key::DateTime,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_lose_their_braces() {
        let id = "3f2b8c1e-5d4a-4e8b-9c7d-1a2b3c4d5e6f";
        assert_eq!(parse_guid(&format!("{{{id}}}")).unwrap().to_string(), id);
        assert_eq!(parse_guid(&id.to_uppercase()).unwrap().to_string(), id);
        assert_eq!(parse_guid(&id.replace('-', "")).unwrap().to_string(), id);
        assert!(parse_guid("{3f2b8c1e}").is_none());
        assert!(parse_guid(&format!("urn:uuid:{id}")).is_none());
    }

    #[test]
    fn shapes() {
        let shape = |s: &str| serde_json::from_str::<Shape>(s).unwrap();
        let ct =
            r#"{"type":"Feature","properties":{"ctVersion":"3.5","sighting":{"a":[1,{"b":2}]}}}"#;
        assert_eq!(
            shape(ct),
            Shape {
                cybertracker: true,
                waypoint: false
            }
        );
        let wp = r#"{"properties":{"deviceId":"x","dateTime":"t","sighting":null}}"#;
        assert_eq!(
            shape(wp),
            Shape {
                cybertracker: true,
                waypoint: true
            }
        );
        let plain = r#"{"properties":{"observed_at":"t","dateTime":"t"}}"#;
        assert!(!shape(plain).cybertracker);
        assert!(!shape("[1,2]").cybertracker);
        assert!(!shape(r#"{"properties":"x"}"#).cybertracker);
    }
}
