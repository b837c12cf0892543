//! One GeoJSON Feature to a sighting. Coordinates come only from the Point geometry;
//! properties use the sighting field names or their Darwin Core aliases.

use serde_json::{Map, Value};

use crate::fields::{add_attribute, parse_uuid, show, Draft, Field, RowAt};
use crate::model::{Problem, Sighting};
use crate::problems::problem;

const POINT: &str = "geometry must be a Point with coordinates [longitude, latitude] or [longitude, latitude, altitude]";

pub(crate) fn feature(
    v: Value,
    row: &RowAt,
    sha256: &str,
    index: u64,
) -> Result<Sighting, Vec<Problem>> {
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
    check_type(&obj, row, &mut problems);
    let mut draft = Draft::default();
    point(obj.get("geometry"), row, &mut draft, &mut problems);
    match obj.remove("properties") {
        Some(Value::Object(props)) => properties(props, row, &mut draft, &mut problems),
        None | Some(Value::Null) => {}
        Some(other) => problems.push(problem(
            row.at("properties"),
            Some("properties"),
            Some(show(&other)),
            "properties must be a JSON object",
        )),
    }
    feature_id(obj.remove("id"), row, &mut draft, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    draft.finish(sha256, index).map_err(|missing| {
        row.missing(missing, &mut problems);
        problems
    })
}

pub(crate) fn check_type(obj: &Map<String, Value>, row: &RowAt, problems: &mut Vec<Problem>) {
    if obj.get("type").and_then(Value::as_str) != Some("Feature") {
        let shown = obj.get("type").map(show);
        problems.push(problem(
            row.at("type"),
            Some("type"),
            shown,
            "a feature must have \"type\": \"Feature\"",
        ));
    }
}

pub(crate) fn point(
    geometry: Option<&Value>,
    row: &RowAt,
    draft: &mut Draft,
    problems: &mut Vec<Problem>,
) {
    let ty = geometry.and_then(|g| g.get("type"));
    if ty.and_then(Value::as_str) != Some("Point") {
        let shown = ty.map(show).or_else(|| geometry.map(show));
        problems.push(problem(
            row.at("geometry.type"),
            Some("geometry"),
            shown,
            POINT,
        ));
        return;
    }
    let coords = geometry.and_then(|g| g.get("coordinates"));
    let Some(c) = coords
        .and_then(Value::as_array)
        .filter(|c| (2..=3).contains(&c.len()))
    else {
        let p = problem(
            row.at("geometry.coordinates"),
            Some("geometry"),
            coords.map(show),
            POINT,
        );
        problems.push(p);
        return;
    };
    let axes = [Field::Longitude, Field::Latitude, Field::Altitude];
    for (i, (v, f)) in c.iter().zip(axes).enumerate() {
        let set = v.as_f64().ok_or_else(|| f.expectation().to_owned());
        if let Err(msg) = set.and_then(|x| draft.set_number(f, x)) {
            let at = row.at(&format!("geometry.coordinates[{i}]"));
            problems.push(problem(at, Some(f.name()), Some(show(v)), msg));
        }
    }
}

fn properties(
    props: Map<String, Value>,
    row: &RowAt,
    draft: &mut Draft,
    problems: &mut Vec<Problem>,
) {
    for (key, v) in props {
        let at = || row.at(&format!("properties.{key}"));
        match Field::from_alias(&key) {
            // The geometry is the one source of the position; duplicates in properties
            // (common in QGIS exports) are dropped rather than compared.
            Some(Field::Latitude | Field::Longitude) => {}
            Some(Field::Altitude) if draft.altitude.is_some() => {}
            Some(f) => {
                if let Err(msg) = draft.set_json(f, &v) {
                    problems.push(problem(at(), Some(f.name()), Some(show(&v)), msg));
                }
            }
            None if key == "attributes" => match v {
                Value::Object(map) => map
                    .into_iter()
                    .for_each(|(k, v)| add_attribute(draft, k, v, row, problems)),
                other => add_attribute(draft, key, other, row, problems),
            },
            None => add_attribute(draft, key, v, row, problems),
        }
    }
}

/// A feature `id` that is a UUID is the sighting id; any other id (QGIS writes numbers)
/// is kept as the attribute `feature_id` so nothing the sender wrote is lost.
fn feature_id(id: Option<Value>, row: &RowAt, draft: &mut Draft, problems: &mut Vec<Problem>) {
    let Some(v) = id.filter(|v| !v.is_null()) else {
        return;
    };
    let Some(uuid) = v.as_str().and_then(parse_uuid) else {
        add_attribute(draft, "feature_id".into(), v, row, problems);
        return;
    };
    match draft.id {
        Some(other) if other != uuid => problems.push(problem(
            row.at("id"),
            Some("id"),
            Some(uuid.to_string()),
            format!(
                "feature id differs from properties.id {other}; give one id or the same in both"
            ),
        )),
        _ => draft.id = Some(uuid),
    }
}
