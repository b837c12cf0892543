//! `[formats.cybertracker]`: which sighting elements of a CyberTracker or SMART upload
//! fill the species, count and observer fields. Elements are named as the device's
//! database names them, or by their GUID (braces and letter case do not matter).
//! An element that does not fit its field (an empty text, a count that is not a whole
//! number) stays an attribute, as every other element does.

use ctdata_batch::{Sighting, CYBERTRACKER_ENVELOPE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The element → field mapping, in order of preference per field.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CybertrackerSettings {
    /// Elements that hold the species, e.g. `["Species", "{5C1E7A90-…}"]`.
    pub species: Vec<String>,
    /// Elements that hold the number of animals.
    pub count: Vec<String>,
    /// Elements that hold the observer's name.
    pub observer: Vec<String>,
}

impl CybertrackerSettings {
    pub fn is_empty(&self) -> bool {
        self.species.is_empty() && self.count.is_empty() && self.observer.is_empty()
    }

    /// Moves the first mapped element that fits into each field the upload left empty.
    pub fn apply(&self, s: &mut Sighting) {
        if s.species.is_none() {
            s.species = take(s, &self.species, text);
        }
        if s.observer.is_none() {
            s.observer = take(s, &self.observer, text);
        }
        if s.count.is_none() {
            s.count = take(s, &self.count, whole);
        }
    }
}

fn take<T>(s: &mut Sighting, names: &[String], fit: fn(&Value) -> Option<T>) -> Option<T> {
    for name in names {
        let key = s
            .attributes
            .keys()
            .find(|k| k.as_str() != CYBERTRACKER_ENVELOPE && same_element(k, name))
            .cloned();
        let Some(key) = key else { continue };
        if let Some(v) = fit(&s.attributes[&key]) {
            s.attributes.remove(&key);
            return Some(v);
        }
    }
    None
}

/// Element names compare without letter case and without the braces of a GUID.
fn same_element(a: &str, b: &str) -> bool {
    let bare = |s: &str| {
        let s = s.trim();
        s.strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or(s)
            .to_string()
    };
    bare(a).eq_ignore_ascii_case(&bare(b))
}

fn text(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn whole(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|n| *n >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mapped_elements_fill_empty_fields_only() {
        let mut s: Sighting = serde_json::from_value(json!({
            "id": "6f1c2a44-0b7e-4c5d-9a31-2e8f7d6c5b4a", "observed_at": "2024-05-01T04:32:10Z",
            "latitude": 1.0, "longitude": 2.0, "observer": "A. Ranger",
            "attributes": {"{5C1E7A90-1B2C-4D3E-8F40-5A6B7C8D9E0F}": "Loxodonta africana",
                           "Herd size": "twelve", "Number": "12", "Recorder": "B. Ranger",
                           "cybertracker": {"appName": "x"}}
        }))
        .unwrap();
        let m = CybertrackerSettings {
            species: vec!["5c1e7a90-1b2c-4d3e-8f40-5a6b7c8d9e0f".into()],
            count: vec!["herd size".into(), "Number".into()],
            observer: vec!["Recorder".into()],
        };
        m.apply(&mut s);
        assert_eq!(s.species.as_deref(), Some("Loxodonta africana"));
        assert_eq!(s.count, Some(12), "the first element that fits");
        assert_eq!(
            s.observer.as_deref(),
            Some("A. Ranger"),
            "a given field stays"
        );
        assert_eq!(
            Value::Object(s.attributes),
            json!({"Herd size": "twelve", "Recorder": "B. Ranger", "cybertracker": {"appName": "x"}})
        );
    }
}
