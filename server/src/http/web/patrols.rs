//! Patrols: one row per SMART patrol (merged from its events by
//! [`crate::tracks::patrols_page`]), a page of [`PAGE`] at a time, with a link to the
//! device's sightings while it ran, and the tracks and patrols downloads.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::session::Signed;
use super::view::{render, utc, Frame, PageResult};
use crate::http::AppState;
use crate::tracks;

/// One patrol as the table shows it.
struct Row {
    patrol_id: String,
    device: String,
    start: String,
    end: String,
    duration: String,
    distance_km: String,
    observations: i64,
    /// The sightings page for the device over the patrol's time, when the start is known.
    sightings: Option<Vec<(&'static str, String)>>,
}

#[derive(Template)]
#[template(path = "patrols.html")]
struct PatrolsPage<'a> {
    frame: Frame<'a>,
    rows: Vec<Row>,
    /// Shown after the first page: a link back to it.
    paged: bool,
    /// The last patrol id on this page when more follow.
    next: Option<String>,
}

/// Patrols on a page.
const PAGE: i64 = 100;

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    /// Patrols whose id sorts after this one.
    after: Option<String>,
}

/// `1 h 45 min`, `12 min`, `2 d 3 h`.
fn duration(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let mins = (to - from).num_minutes().max(0);
    let (d, h, m) = (mins / 1440, mins / 60 % 24, mins % 60);
    match (d, h) {
        (0, 0) => format!("{m} min"),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

fn query_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Query(q): Query<PageQuery>,
) -> PageResult {
    let after = q.after.filter(|a| !a.is_empty());
    let patrols = tracks::patrols_page(&state.ingestor.db, after.as_deref(), PAGE).await?;
    let next = match patrols.last() {
        Some(last) if patrols.len() as i64 == PAGE => Some(last.patrol_id.clone()),
        _ => None,
    };
    let rows = patrols
        .into_iter()
        .map(|p| Row {
            start: p.start.map(utc).unwrap_or_else(|| "not yet known".into()),
            end: p.end.map(utc).unwrap_or_else(|| "still open".into()),
            duration: match (p.start, p.end) {
                (Some(s), Some(e)) => duration(s, e),
                _ => String::new(),
            },
            distance_km: format!("{:.2}", p.distance_m / 1000.0),
            observations: p.observations,
            // "Observed before" excludes its time: one second on keeps an observation made
            // at the moment of the stop.
            sightings: p.start.map(|s| {
                let mut q = vec![("device", p.device.clone()), ("from", query_time(s))];
                if let Some(e) = p.end {
                    q.push(("to", query_time(e + chrono::Duration::seconds(1))));
                }
                q
            }),
            patrol_id: p.patrol_id,
            device: p.device,
        })
        .collect();
    let frame = signed.frame("/patrols", "Patrols");
    let page = PatrolsPage {
        frame,
        rows,
        paged: after.is_some(),
        next,
    };
    Ok(render(StatusCode::OK, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_plainly() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let start = t("2024-06-02T05:00:00Z");
        assert_eq!(duration(start, t("2024-06-02T06:45:00Z")), "1 h 45 min");
        assert_eq!(duration(start, t("2024-06-02T05:12:59Z")), "12 min");
        assert_eq!(duration(start, t("2024-06-04T08:00:00Z")), "2 d 3 h");
    }
}
