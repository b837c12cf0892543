//! The overview: totals, what needs attention (with sighting conflicts side by side),
//! sightings per day, the last batches.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{Datelike, Duration, Utc};

use super::session::Signed;
use super::view::{filters, render, Frame, PageResult};
use crate::db::{BatchListFilter, BatchSummary, ConflictInfo, DayCount, DeviceStats, PullRecord};
use crate::http::AppState;

/// Conflicts shown on the overview; the API lists them all.
const CONFLICTS_SHOWN: i64 = 10;

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview<'a> {
    frame: Frame<'a>,
    totals: [(i64, &'static str); 6],
    write_failure: Option<String>,
    drop_dir_problem: Option<String>,
    rejected: i64,
    conflict_total: i64,
    conflicts: Vec<ConflictInfo>,
    stale: Vec<&'a DeviceStats>,
    failed_pulls: Vec<&'a PullRecord>,
    chart: Chart,
    last: Vec<BatchSummary>,
    /// The servers (replicas) using this database, with their last heartbeat.
    replicas: Vec<crate::replica::ReplicaRow>,
}

impl Overview<'_> {
    fn calm(&self) -> bool {
        self.write_failure.is_none()
            && self.drop_dir_problem.is_none()
            && self.rejected == 0
            && self.conflict_total == 0
            && self.stale.is_empty()
            && self.failed_pulls.is_empty()
    }

    fn more_conflicts(&self) -> bool {
        self.conflict_total > self.conflicts.len() as i64
    }
}

pub async fn overview(State(state): State<AppState>, signed: Signed) -> PageResult {
    let db = &state.ingestor.db;
    let now = Utc::now();
    let today = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc();
    let week = today - Duration::days(i64::from(now.weekday().num_days_from_monday()));
    let (b_today, s_today) = db.stored_since(today).await?;
    let (b_week, s_week) = db.stored_since(week).await?;
    let (b_all, s_all) = db.stored_since(chrono::DateTime::<Utc>::UNIX_EPOCH).await?;
    let days = db.sightings_per_day(today - Duration::days(29)).await?;
    let last = db
        .list_batches(&BatchListFilter {
            limit: Some(10),
            ..Default::default()
        })
        .await?;
    let devices = db.device_stats().await?;
    let pulls = db.last_pulls().await?;
    let page = Overview {
        frame: signed.frame("/", "Overview"),
        totals: [
            (s_today, "sightings today"),
            (s_week, "sightings this week"),
            (s_all, "sightings in total"),
            (b_today, "batches today"),
            (b_week, "batches this week"),
            (b_all, "batches in total"),
        ],
        write_failure: state.ingestor.writes.check(db).await.map(|f| f.to_string()),
        drop_dir_problem: state.ingestor.metrics.drop_dir_problem(),
        rejected: db.pending_rejections().await?,
        conflict_total: db.conflict_count().await?,
        conflicts: db.list_conflicts(i64::MAX, CONFLICTS_SHOWN).await?,
        stale: devices
            .iter()
            .filter(|d| super::manage::stale(&state, d))
            .collect(),
        failed_pulls: pulls.iter().filter(|p| p.result != "ok").collect(),
        chart: chart(&days, today),
        last,
        replicas: crate::replica::list(db).await?,
    };
    Ok(render(StatusCode::OK, page))
}

/// An SVG bar chart of the last 30 days: one bar per day, days without batches as gaps.
struct Chart {
    bars: Vec<Bar>,
    /// Dates under the chart, outside the stretched SVG.
    labels: Vec<String>,
    max: i64,
}

struct Bar {
    x: f64,
    y: f64,
    h: f64,
    day: String,
    n: i64,
}

fn chart(days: &[DayCount], today: chrono::DateTime<Utc>) -> Chart {
    let max = days.iter().map(|d| d.sightings).max().unwrap_or(0).max(1);
    let day = |i: i64| today - Duration::days(29 - i);
    let bars = (0..30)
        .map(|i| {
            let date = day(i).format("%Y-%m-%d").to_string();
            let n = days
                .iter()
                .find(|d| d.day == date)
                .map_or(0, |d| d.sightings);
            let h = (n as f64 / max as f64 * 150.0).round();
            Bar {
                x: i as f64 * 20.0 + 2.0,
                y: 160.0 - h,
                h,
                day: date,
                n,
            }
        })
        .collect();
    let labels = [0, 10, 20, 29]
        .into_iter()
        .map(|i| day(i).format("%m-%d").to_string())
        .collect();
    Chart { bars, labels, max }
}

/// One line of a conflict's side-by-side table.
struct ConflictRow {
    field: &'static str,
    differs: bool,
    stored: String,
    new: String,
}

/// The fields of the stored and the new version of a conflicting sighting.
fn conflict_rows(c: &ConflictInfo) -> Vec<ConflictRow> {
    let (s, n) = (&c.stored, &c.new);
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let count = |v: Option<i64>| v.map(|x| x.to_string()).unwrap_or_default();
    let location = |v: &crate::db::SightingVersion| {
        let mut l = format!("{}, {}", v.latitude, v.longitude);
        if let Some(a) = v.altitude {
            l.push_str(&format!(", altitude {a} m"));
        }
        if let Some(a) = v.accuracy {
            l.push_str(&format!(", ±{a} m"));
        }
        l
    };
    [
        (
            "observed_at",
            s.observed_at.to_string(),
            n.observed_at.to_string(),
        ),
        ("location", location(s), location(n)),
        ("observer", opt(&s.observer), opt(&n.observer)),
        ("species", opt(&s.species), opt(&n.species)),
        ("count", count(s.count), count(n.count)),
        ("attributes", s.attributes.clone(), n.attributes.clone()),
    ]
    .into_iter()
    .map(|(field, stored, new)| ConflictRow {
        field,
        differs: c.differs.iter().any(|d| d == field),
        stored,
        new,
    })
    .collect()
}
