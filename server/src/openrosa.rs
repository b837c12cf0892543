//! OpenRosa submissions (ODK Collect, KoboCollect, the CyberTracker app) as sightings:
//! reads the submission XML and maps its fields by the form's `[[openrosa.forms]]`
//! entry, or by the defaults (`meta/instanceID` gives the id, `end`, `start` or `today`
//! the time, the first geopoint the place, every other field an attribute).
//!
//! Ids are derived from the instanceID (and the repeat entry), never from the time of
//! arrival, so the same submission always maps to the same batch and sightings.

use chrono::{DateTime, FixedOffset, NaiveDate};
use ctdata_batch::Sighting;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::FormMapping;

/// The namespace of ids derived from instanceIDs.
pub const OPENROSA_NAMESPACE: Uuid = Uuid::from_u128(0x3f0c_8a11_52d4_4e6b_9a37_d1e0_6b2c_84f9);

/// What identifies a submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The `id` attribute of the root element.
    pub form_id: String,
    pub form_version: Option<String>,
    /// `meta/instanceID`, e.g. `uuid:…`.
    pub instance_id: String,
    /// `meta/deprecatedID`: the submission this one is an edit of.
    pub deprecated_id: Option<String>,
}

impl Submission {
    /// The batch this submission is stored as.
    pub fn batch_id(&self) -> Uuid {
        Uuid::new_v5(
            &OPENROSA_NAMESPACE,
            format!("batch:{}", self.instance_id).as_bytes(),
        )
    }
}

/// One leaf field: its path below the root (or the repeat entry) and its text.
#[derive(Debug, Clone)]
struct Leaf {
    path: String,
    value: String,
}

/// Reads the root's form id and version and the meta block; the error says what is
/// missing, for a 400.
pub fn identify(xml: &str) -> Result<(Submission, roxmltree::Document<'_>), String> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| format!("the submission is not well-formed XML: {e}"))?;
    let root = doc.root_element();
    let form_id = root
        .attribute("id")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            format!(
                "the root element <{}> has no id attribute: it must name the form",
                root.tag_name().name()
            )
        })?
        .to_string();
    let meta = root
        .children()
        .find(|n| n.is_element() && n.tag_name().name() == "meta");
    let field = |name: &str| {
        meta.and_then(|m| {
            m.children()
                .find(|n| n.is_element() && n.tag_name().name() == name)
        })
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
    };
    let instance_id = field("instanceID").ok_or_else(|| {
        format!(
            "form {form_id:?}: the submission has no meta/instanceID; every submission needs one so a \
             resend is recognised (add <meta><instanceID>uuid:…</instanceID></meta>)"
        )
    })?;
    let submission = Submission {
        form_version: root.attribute("version").map(str::to_string),
        deprecated_id: field("deprecatedID"),
        form_id,
        instance_id,
    };
    Ok((submission, doc))
}

/// The sightings of a submission, in document order.
pub fn sightings(
    doc: &roxmltree::Document<'_>,
    sub: &Submission,
    mapping: Option<&FormMapping>,
) -> Result<Vec<Sighting>, String> {
    let root = doc.root_element();
    let default = FormMapping::default();
    let m = mapping.unwrap_or(&default);
    let entries: Vec<roxmltree::Node> = match &m.repeat {
        None => Vec::new(),
        Some(repeat) => root
            .descendants()
            .filter(|n| n.is_element() && n != &root && matches(&path_of(root, *n), repeat))
            .collect(),
    };
    let outer = leaves(root, &entries);
    if m.repeat.is_none() {
        let s = sighting(sub, m, &[], &outer, sub.instance_id.clone())?;
        return Ok(vec![s]);
    }
    let repeat = m.repeat.as_deref().unwrap_or_default();
    if entries.is_empty() {
        return Err(format!(
            "form {:?}: the repeat group {repeat:?} ([[openrosa.forms]] repeat) has no entries in \
             this submission",
            sub.form_id
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let own = leaves(*entry, &[]);
            sighting(
                sub,
                m,
                &own,
                &outer,
                format!("{}#{}", sub.instance_id, i + 1),
            )
            .map_err(|e| format!("{repeat}[{}]: {e}", i + 1))
        })
        .collect()
}

fn sighting<'a>(
    sub: &Submission,
    m: &FormMapping,
    own: &'a [Leaf],
    outer: &'a [Leaf],
    key: String,
) -> Result<Sighting, String> {
    let form = &sub.form_id;
    let mut used: Vec<&'a str> = Vec::new();
    let time_names: Vec<&str> = match &m.time {
        Some(t) => vec![t.as_str()],
        None => vec!["end", "start", "today"],
    };
    let time_leaf = time_names
        .iter()
        .find_map(|n| find_leaf(own, outer, n))
        .ok_or_else(|| {
            format!(
                "form {form:?}: no time: the submission has no {} field (set time in its \
             [[openrosa.forms]] entry)",
                time_names.join(" / ")
            )
        })?;
    let observed_at =
        parse_time(&time_leaf.value).map_err(|e| format!("{}: {e}", time_leaf.path))?;
    used.push(&time_leaf.path);
    let place = match &m.location {
        Some(name) => find_leaf(own, outer, name).ok_or_else(|| {
            format!("form {form:?}: the location field {name:?} is missing or empty")
        })?,
        None => own
            .iter()
            .chain(outer.iter())
            .find(|l| geopoint(&l.value).is_ok_and(|g| g.len() == 4))
            .ok_or_else(|| {
                format!(
                    "form {form:?}: no location: the submission has no geopoint \
                     (\"lat lon altitude accuracy\"; set location in its [[openrosa.forms]] entry)"
                )
            })?,
    };
    let g = geopoint(&place.value).map_err(|e| format!("{}: {e}", place.path))?;
    used.push(&place.path);
    let text = |name: &Option<String>, used: &mut Vec<&'a str>| -> Option<String> {
        let leaf = find_leaf(own, outer, name.as_deref()?)?;
        used.push(&leaf.path);
        Some(leaf.value.clone())
    };
    let species = text(&m.species, &mut used);
    let observer = text(&m.observer, &mut used);
    let count = match text(&m.count, &mut used) {
        Some(c) => Some(c.trim().parse::<i64>().map_err(|_| {
            format!(
                "{}: count {c:?} is not a whole number",
                m.count.as_deref().unwrap_or("")
            )
        })?),
        None => None,
    };
    let mut attributes = Map::new();
    for leaf in own.iter().chain(outer.iter()) {
        let skip = used.contains(&leaf.path.as_str())
            || leaf.value.is_empty()
            || leaf.path.starts_with("meta/")
            || attributes.contains_key(&leaf.path);
        if !skip {
            attributes.insert(leaf.path.clone(), Value::String(leaf.value.clone()));
        }
    }
    let mut meta = Map::new();
    meta.insert("form_id".into(), sub.form_id.clone().into());
    if let Some(v) = &sub.form_version {
        meta.insert("form_version".into(), v.clone().into());
    }
    meta.insert("instance_id".into(), sub.instance_id.clone().into());
    attributes.insert("openrosa".into(), Value::Object(meta));
    Ok(Sighting {
        id: Uuid::new_v5(&OPENROSA_NAMESPACE, key.as_bytes()),
        observed_at,
        latitude: g[0],
        longitude: g[1],
        altitude: g.get(2).copied(),
        accuracy: g.get(3).copied().filter(|a| *a > 0.0),
        observer,
        species,
        count,
        attributes,
    })
}

/// The first non-empty field called `name`, in the repeat entry first.
fn find_leaf<'a>(own: &'a [Leaf], outer: &'a [Leaf], name: &str) -> Option<&'a Leaf> {
    own.iter()
        .chain(outer.iter())
        .find(|l| matches(&l.path, name) && !l.value.is_empty())
}

/// A field's path below `top`, as `group/field`.
fn path_of(top: roxmltree::Node, node: roxmltree::Node) -> String {
    let mut parts: Vec<&str> = node
        .ancestors()
        .take_while(|n| n != &top)
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().name())
        .collect();
    parts.reverse();
    parts.join("/")
}

/// A name with a `/` is a path; a plain name matches the last part of any path.
fn matches(path: &str, name: &str) -> bool {
    if name.contains('/') {
        path == name.trim_matches('/')
    } else {
        path.rsplit('/').next() == Some(name)
    }
}

/// Leaf elements below `top`, leaving out the subtrees in `skip` (repeat entries).
fn leaves(top: roxmltree::Node, skip: &[roxmltree::Node]) -> Vec<Leaf> {
    let mut out = Vec::new();
    let mut stack: Vec<roxmltree::Node> = top.children().filter(|n| n.is_element()).collect();
    stack.reverse();
    while let Some(n) = stack.pop() {
        if skip.contains(&n) {
            continue;
        }
        let kids: Vec<roxmltree::Node> = n.children().filter(|c| c.is_element()).collect();
        if kids.is_empty() {
            out.push(Leaf {
                path: path_of(top, n),
                value: n.text().unwrap_or("").trim().to_string(),
            });
        } else {
            stack.extend(kids.into_iter().rev());
        }
    }
    out
}

/// "lat lon [altitude [accuracy]]", as Collect writes a geopoint.
fn geopoint(s: &str) -> Result<Vec<f64>, String> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if !(2..=4).contains(&parts.len()) {
        return Err(format!(
            "{s:?} is not a geopoint: expected \"latitude longitude altitude accuracy\""
        ));
    }
    let nums: Vec<f64> = parts
        .iter()
        .map(|p| p.parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not a geopoint: its parts must be numbers"))?;
    if !(-90.0..=90.0).contains(&nums[0]) || !(-180.0..=180.0).contains(&nums[1]) {
        return Err(format!(
            "{s:?} is not a geopoint: latitude or longitude out of range"
        ));
    }
    Ok(nums)
}

/// ODK writes `2026-12-02T10:15:30.123+02:00` (dateTime) or `2026-12-02` (date).
fn parse_time(s: &str) -> Result<DateTime<FixedOffset>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    // Older JavaRosa writes the offset without a colon (+0200) or hours only (+02).
    for f in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Ok(t);
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .fixed_offset()
        })
        .map_err(|_| format!("{s:?} is not a date or time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<?xml version="1.0"?>
<data xmlns:jr="http://openrosa.org/javarosa" xmlns:orx="http://openrosa.org/xforms" id="wildlife" version="2">
  <start>2026-12-01T06:00:00.000+02:00</start><end>2026-12-01T06:05:00.000+02:00</end>
  <ranger>Amina</ranger>
  <where>-1.5 36.8 1600 4.5</where>
  <animal><kind>elephant</kind><n>3</n><photo>a.jpg</photo></animal>
  <animal><kind>zebra</kind><n>12</n></animal>
  <orx:meta><orx:instanceID>uuid:abc</orx:instanceID><orx:deprecatedID>uuid:old</orx:deprecatedID></orx:meta>
</data>"#;

    #[test]
    fn defaults_give_one_sighting_and_keep_the_rest_as_attributes() {
        let (sub, doc) = identify(XML).unwrap();
        assert_eq!(sub.form_id, "wildlife");
        assert_eq!(sub.form_version.as_deref(), Some("2"));
        assert_eq!(sub.instance_id, "uuid:abc");
        assert_eq!(sub.deprecated_id.as_deref(), Some("uuid:old"));
        let s = sightings(&doc, &sub, None).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].observed_at.to_rfc3339(), "2026-12-01T06:05:00+02:00");
        assert_eq!((s[0].latitude, s[0].longitude), (-1.5, 36.8));
        assert_eq!((s[0].altitude, s[0].accuracy), (Some(1600.0), Some(4.5)));
        assert_eq!(s[0].attributes["ranger"], "Amina");
        assert_eq!(s[0].attributes["animal/kind"], "elephant");
        assert_eq!(s[0].attributes["openrosa"]["instance_id"], "uuid:abc");
        assert!(!s[0].attributes.contains_key("end"));
        let again = sightings(&doc, &sub, None).unwrap();
        assert_eq!(again[0].id, s[0].id);
    }

    #[test]
    fn a_mapped_repeat_gives_one_sighting_per_entry() {
        let (sub, doc) = identify(XML).unwrap();
        let m = FormMapping {
            form_id: "wildlife".into(),
            species: Some("kind".into()),
            count: Some("n".into()),
            observer: Some("ranger".into()),
            repeat: Some("animal".into()),
            ..FormMapping::default()
        };
        let s = sightings(&doc, &sub, Some(&m)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].species.as_deref(), Some("elephant"));
        assert_eq!(s[1].count, Some(12));
        assert_eq!(s[1].observer.as_deref(), Some("Amina"));
        assert_eq!(s[0].attributes["photo"], "a.jpg");
        assert_ne!(s[0].id, s[1].id);
    }

    #[test]
    fn missing_pieces_are_named() {
        let no_id = XML.replace("<orx:instanceID>uuid:abc</orx:instanceID>", "");
        assert!(identify(&no_id).unwrap_err().contains("meta/instanceID"));
        let no_form = XML.replace(r#"id="wildlife""#, "");
        assert!(identify(&no_form).unwrap_err().contains("id attribute"));
        let no_place = XML.replace("-1.5 36.8 1600 4.5", "");
        let (sub, doc) = identify(&no_place).unwrap();
        assert!(sightings(&doc, &sub, None)
            .unwrap_err()
            .contains("no geopoint"));
        let bad_time = XML.replace("2026-12-01T06:05:00.000+02:00", "yesterday");
        let (sub, doc) = identify(&bad_time).unwrap();
        let e = sightings(&doc, &sub, None).unwrap_err();
        assert!(e.contains("end") && e.contains("yesterday"), "{e}");
    }
}
