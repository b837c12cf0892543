//! Sighting conflicts under Needs attention: the stored and the new version side by side.

use std::fmt::Write;

use super::html::{esc, when};
use crate::db::{ConflictInfo, SightingVersion};

/// Conflicts shown on the overview; the API lists them all.
pub const SHOWN: i64 = 10;

/// The list items for `conflicts` (the newest) of `total`.
pub fn attention(conflicts: &[ConflictInfo], total: i64) -> String {
    let mut out = String::new();
    if total == 0 {
        return out;
    }
    let _ = write!(
        out,
        "<li class=\"error\" id=\"conflicts\">{total} sighting id(s) arrived again with other content; \
         the version stored first was kept{}",
        if total > conflicts.len() as i64 {
            format!(" (the newest {} below; all in GET /api/v1/conflicts)", conflicts.len())
        } else {
            String::new()
        }
    );
    for c in conflicts {
        out.push_str(&side_by_side(c));
    }
    out.push_str("</li>");
    out
}

fn side_by_side(c: &ConflictInfo) -> String {
    let (s, n) = (&c.stored, &c.new);
    let mut t = format!(
        "<table class=\"conflict\"><caption>Sighting {} — differs in {} (seen {})</caption>\
         <tr><th></th><th>Stored (kept)</th><th>New (not stored)</th></tr>",
        esc(&c.sighting_id),
        esc(&c.differs.join(", ")),
        when(&c.detected_at)
    );
    let batch = |v: &SightingVersion| {
        format!(
            "<a href=\"/batches/{}\">{}</a> from {}, {}",
            v.batch,
            esc(&v.batch_id),
            esc(&v.device),
            when(&v.received_at)
        )
    };
    let opt = |v: &Option<String>| v.as_deref().map(esc).unwrap_or_default();
    let location = |v: &SightingVersion| {
        let mut l = format!("{}, {}", v.latitude, v.longitude);
        if let Some(a) = v.altitude {
            let _ = write!(l, ", altitude {a} m");
        }
        if let Some(a) = v.accuracy {
            let _ = write!(l, ", ±{a} m");
        }
        l
    };
    let rows: [(&str, &str, String, String); 7] = [
        ("batch", "", batch(s), batch(n)),
        (
            "observed_at",
            "observed_at",
            esc(&crate::db::dialect::utc_text(s.observed_at)),
            esc(&crate::db::dialect::utc_text(n.observed_at)),
        ),
        ("location", "location", location(s), location(n)),
        ("observer", "observer", opt(&s.observer), opt(&n.observer)),
        ("species", "species", opt(&s.species), opt(&n.species)),
        (
            "count",
            "count",
            s.count.map(|x| x.to_string()).unwrap_or_default(),
            n.count.map(|x| x.to_string()).unwrap_or_default(),
        ),
        (
            "attributes",
            "attributes",
            esc(&s.attributes),
            esc(&n.attributes),
        ),
    ];
    for (label, field, stored, new) in rows {
        let class = if c.differs.iter().any(|d| d == field) {
            " class=\"differs\""
        } else {
            ""
        };
        let _ = write!(
            t,
            "<tr{class}><th>{label}</th><td>{stored}</td><td>{new}</td></tr>"
        );
    }
    t.push_str("</table>");
    t
}
