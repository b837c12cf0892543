//! Sightings: filters, an offline SVG lon/lat map, a paged table and the Download links
//! (the streaming export endpoint with exactly the same filters).

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::pages::PAGE;
use super::session::Signed;
use super::view::{filters, given, given_pairs, render, utc, Frame, PageResult, Pager};
use crate::db::{BBox, SightingQuery, SightingRow};
use crate::http::{AppState, MapTiles};
use crate::types::parse_time;

/// Most points drawn on the map: the newest matching ones.
const MAP_POINTS: i64 = 2000;

/// The Download links: format and label.
const DOWNLOADS: [(&str, &str); 4] = [
    ("csv", "CSV"),
    ("geojson", "GeoJSON"),
    ("ndjson", "NDJSON"),
    ("dwca", "Darwin Core (GBIF)"),
];

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    from: Option<String>,
    to: Option<String>,
    device: Option<String>,
    species: Option<String>,
    bbox: Option<String>,
    before: Option<i64>,
}

/// A filter field of the form.
struct Field {
    name: &'static str,
    label: &'static str,
    hint: &'static str,
    value: String,
}

#[derive(Template)]
#[template(path = "sightings.html")]
struct SightingsPage<'a> {
    frame: Frame<'a>,
    fields: Vec<Field>,
    /// Filters that could not be read: nothing else is shown.
    problems: Vec<String>,
    /// The filters given, for the Download links.
    filters: Vec<(&'static str, String)>,
    map_title: String,
    map: Map,
    rows: Vec<super::view::TableRow>,
    pager: Pager,
}

pub async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Query(f): Query<Filters>,
) -> PageResult {
    let keep = [
        ("from", given(&f.from)),
        ("to", given(&f.to)),
        ("device", given(&f.device)),
        ("species", given(&f.species)),
        ("bbox", given(&f.bbox)),
    ];
    let fields = [
        ("Observed from", "2026-01-31 or RFC 3339"),
        ("Observed before", "2026-02-28"),
        ("Device", ""),
        ("Species", ""),
        ("Box (minLon,minLat,maxLon,maxLat)", "30.1,-2.5,30.4,-2.2"),
    ]
    .into_iter()
    .zip(&keep)
    .map(|((label, hint), (name, value))| Field {
        name,
        label,
        hint,
        value: value.clone().unwrap_or_default(),
    })
    .collect();

    let mut q = SightingQuery {
        device: keep[2].1.clone(),
        species: keep[3].1.clone(),
        ..Default::default()
    };
    let mut problems = Vec::new();
    for (i, slot) in [(0, &mut q.from), (1, &mut q.to)] {
        if let Some(t) = &keep[i].1 {
            match parse_time(t) {
                Ok(t) => *slot = Some(t),
                Err(e) => problems.push(e),
            }
        }
    }
    if let Some(b) = &keep[4].1 {
        match b.parse::<BBox>() {
            Ok(b) => q.bbox = Some(b),
            Err(e) => problems.push(e),
        }
    }
    // PostgreSQL refuses NUL in text outright; no stored value holds one.
    for (name, value) in &keep {
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            problems.push(format!("{name} contains a NUL character"));
        }
    }
    let (points, rows) = if problems.is_empty() {
        let db = &state.ingestor.db;
        let map = SightingQuery {
            limit: MAP_POINTS,
            ..q.clone()
        };
        let table = SightingQuery {
            before: f.before,
            limit: PAGE,
            ..q.clone()
        };
        (
            db.sightings_page(&map).await?,
            db.sightings_page(&table).await?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let pager = Pager::new("/sightings", &keep)
        .after(rows.last().map(|r| r.cursor), rows.len() as i64 == PAGE);
    let rows = super::view::table_rows(&state.ingestor.db, rows).await?;
    let page = SightingsPage {
        frame: signed.frame("/sightings", "Sightings"),
        fields,
        problems,
        filters: given_pairs(&keep),
        map_title: if points.len() as i64 == MAP_POINTS {
            format!("the newest {MAP_POINTS} points")
        } else {
            format!("{} point(s)", points.len())
        },
        map: map(&points, q.bbox, state.dashboard.map_tiles.as_ref()),
        pager,
        rows,
    };
    Ok(render(StatusCode::OK, page))
}

/// The sightings map as the template draws it: an SVG whose user units are degrees
/// (plain lon/lat) or Web Mercator pixels (over tiles).
struct Map {
    /// `map`, or `map tiled`.
    class: &'static str,
    view_box: String,
    /// Graticule lines (x1, y1, x2, y2) of the plain map.
    grid: Vec<(f64, f64, f64, f64)>,
    tiles: Vec<Tile>,
    points: Vec<Point>,
    /// A point's radius in user units: a fixed share of the frame's width, so a dot is
    /// the same size on the screen whatever the extent. Its outline is drawn in screen
    /// pixels (`vector-effect: non-scaling-stroke` in the style sheet).
    radius: f64,
    /// The extent and projection, in words.
    caption: String,
    attribution: Option<String>,
}

struct Tile {
    href: String,
    x: i64,
    y: i64,
}

/// One clickable sighting.
struct Point {
    cursor: i64,
    x: f64,
    y: f64,
    /// What a click shows, parts separated by " · ".
    info: String,
}

/// Dots per frame width: ~3 px radius on a laptop, so ~2,000 sightings spread over a
/// park stay apart.
const DOTS_ACROSS: f64 = 240.0;

/// The map: plain lon/lat (equirectangular) that needs no tiles and no network, or
/// Web Mercator over the configured tiles.
fn map(points: &[SightingRow], bbox: Option<BBox>, tiles: Option<&MapTiles>) -> Map {
    let (mut x0, mut y0, mut x1, mut y1) = match bbox {
        Some(b) => (b.min_lon, b.min_lat, b.max_lon, b.max_lat),
        None if points.is_empty() => (-180.0, -90.0, 180.0, 90.0),
        None => points.iter().fold(
            (f64::MAX, f64::MAX, f64::MIN, f64::MIN),
            |(a, b, c, d), p| {
                (
                    a.min(p.longitude),
                    b.min(p.latitude),
                    c.max(p.longitude),
                    d.max(p.latitude),
                )
            },
        ),
    };
    // Room around the points, and a visible area even for a single point.
    let pad = ((x1 - x0).max(y1 - y0) * 0.08).max(0.005);
    (x0, y0, x1, y1) = (x0 - pad, y0 - pad, x1 + pad, y1 + pad);
    match tiles {
        Some(tiles) => tiled(points, (x0, y0, x1, y1), tiles),
        None => plain(points, (x0, y0, x1, y1)),
    }
}

/// A fixed 16:10 frame around the centre of a box: fills the map on a laptop
/// without letterboxing.
fn frame(x0: f64, y0: f64, x1: f64, y1: f64) -> (f64, f64, f64, f64) {
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let (w, h) = (
        (x1 - x0).max((y1 - y0) * 1.6),
        (y1 - y0).max((x1 - x0) / 1.6),
    );
    (cx - w / 2.0, cy - h / 2.0, w, h)
}

fn plain(points: &[SightingRow], (x0, y0, x1, y1): (f64, f64, f64, f64)) -> Map {
    let (x0, y0, w, h) = frame(x0, y0, x1, y1);
    let (x1, y1) = (x0 + w, y0 + h);
    // North up: y is minus the latitude.
    let step = nice_step(w.max(h) / 6.0);
    let lons = (0..20)
        .map(|i| ((x0 / step).ceil() + f64::from(i)) * step)
        .take_while(|lon| *lon <= x1)
        .map(|lon| (lon, -y1, lon, -y0));
    let lats = (0..20)
        .map(|i| ((y0 / step).ceil() + f64::from(i)) * step)
        .take_while(|lat| *lat <= y1)
        .map(|lat| (x0, -lat, x1, -lat));
    Map {
        class: "map",
        view_box: format!("{x0} {} {w} {h}", -y1),
        grid: lons.chain(lats).collect(),
        tiles: Vec::new(),
        points: plot(points, |lon, lat| (lon, -lat)),
        radius: w / DOTS_ACROSS,
        caption: format!(
            "Longitude {x0:.4}° to {x1:.4}°, latitude {y0:.4}° to {y1:.4}° (plain lon/lat, no tiles needed)"
        ),
        attribution: None,
    }
}

/// Web Mercator "world pixels" at zoom `z` (256-pixel tiles).
fn mercator(lon: f64, lat: f64, z: u32) -> (f64, f64) {
    let world = 256.0 * f64::from(1u32 << z);
    let lat = lat.clamp(-85.0511, 85.0511).to_radians();
    (
        (lon + 180.0) / 360.0 * world,
        (1.0 - lat.tan().asinh() / std::f64::consts::PI) / 2.0 * world,
    )
}

/// The map over tiles: the zoom that shows the box in at most about 1024 × 640 pixels
/// (20 tiles at most), the tiles that cover it, and the points on top.
fn tiled(points: &[SightingRow], (x0, y0, x1, y1): (f64, f64, f64, f64), tiles: &MapTiles) -> Map {
    let z = (0..=18u32)
        .rev()
        .find(|&z| {
            let (a, b) = mercator(x0, y1, z);
            let (c, d) = mercator(x1, y0, z);
            c - a <= 1024.0 && d - b <= 640.0
        })
        .unwrap_or(0);
    let (a, b) = mercator(x0, y1, z);
    let (c, d) = mercator(x1, y0, z);
    let (px0, py0, w, h) = frame(a, b, c, d);
    let n = 1i64 << z;
    let tile = |v: f64| (v / 256.0).floor() as i64;
    let mut covering = Vec::new();
    for ty in tile(py0).max(0)..=tile(py0 + h).min(n - 1) {
        for tx in tile(px0)..=tile(px0 + w) {
            let href = tiles
                .url
                .replace("{z}", &z.to_string())
                .replace("{x}", &tx.rem_euclid(n).to_string())
                .replace("{y}", &ty.to_string());
            covering.push(Tile {
                href,
                x: tx * 256,
                y: ty * 256,
            });
        }
    }
    Map {
        class: "map tiled",
        view_box: format!("{px0} {py0} {w} {h}"),
        grid: Vec::new(),
        tiles: covering,
        points: plot(points, |lon, lat| mercator(lon, lat, z)),
        radius: w / DOTS_ACROSS,
        caption: format!(
            "Longitude {x0:.4}° to {x1:.4}°, latitude {y0:.4}° to {y1:.4}° (Web Mercator, zoom {z})"
        ),
        attribution: tiles.attribution.clone(),
    }
}

/// Each sighting at `project(lon, lat)`, with what a click on it shows.
fn plot(points: &[SightingRow], project: impl Fn(f64, f64) -> (f64, f64)) -> Vec<Point> {
    points
        .iter()
        .map(|p| {
            let observer = p
                .observer
                .as_deref()
                .map(|o| format!(" · {o}"))
                .unwrap_or_default();
            let info = format!(
                "#{} · {} · {} · {} × {} · {:.5}, {:.5}{observer}",
                p.cursor,
                utc(p.observed_at),
                p.device,
                p.species.as_deref().unwrap_or("(no species)"),
                p.count.unwrap_or(1),
                p.latitude,
                p.longitude,
            );
            let (x, y) = project(p.longitude, p.latitude);
            Point {
                cursor: p.cursor,
                x,
                y,
                info,
            }
        })
        .collect()
}

/// 1, 2 or 5 times a power of ten, near `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}
