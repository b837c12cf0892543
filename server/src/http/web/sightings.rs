//! Sightings: filters, an offline SVG lon/lat map, a paged table and the Download links
//! (the streaming export endpoint with exactly the same filters).

use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::html::{esc, given, page, query, when};
use super::pages::{db, guard, pager};
use super::require;
use crate::commands::parse_time;
use crate::db::{BBox, SightingQuery, SightingRow};
use crate::http::{AppState, MapTiles};

const PAGE: i64 = 50;
/// Most points drawn on the map: the newest matching ones.
const MAP_POINTS: i64 = 2000;

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    from: Option<String>,
    to: Option<String>,
    device: Option<String>,
    species: Option<String>,
    bbox: Option<String>,
    before: Option<i64>,
}

async fn render(state: &AppState, headers: &HeaderMap, f: Filters) -> Response {
    let signed = guard!(require(state, headers).await);
    let keep = [
        ("from", given(&f.from)),
        ("to", given(&f.to)),
        ("device", given(&f.device)),
        ("species", given(&f.species)),
        ("bbox", given(&f.bbox)),
    ];
    let mut form = String::from("<form class=\"filters\" method=\"get\" action=\"/sightings\">");
    for (name, label, hint) in [
        ("from", "Observed from", "2026-01-31 or RFC 3339"),
        ("to", "Observed before", "2026-02-28"),
        ("device", "Device", ""),
        ("species", "Species", ""),
        (
            "bbox",
            "Box (minLon,minLat,maxLon,maxLat)",
            "30.1,-2.5,30.4,-2.2",
        ),
    ] {
        let value = keep
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.clone());
        let _ = write!(
            form,
            "<label>{label}<input name=\"{name}\" id=\"f-{name}\" placeholder=\"{hint}\" value=\"{}\"></label>",
            esc(value.as_deref().unwrap_or(""))
        );
    }
    form.push_str("<button id=\"filter\">Filter</button><a href=\"/sightings\">Clear</a></form>");

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
    if !problems.is_empty() {
        let msg = problems
            .iter()
            .map(|p| esc(p))
            .collect::<Vec<_>>()
            .join("<br>");
        let body = format!("{form}<p class=\"error\">{msg}</p>");
        return page(&signed, "/sightings", "Sightings", &body).into_response();
    }
    let db = &state.ingestor.db;
    let points = db!(db.sightings_page(&SightingQuery {
        limit: MAP_POINTS,
        ..q.clone()
    }));
    let rows = db!(db.sightings_page(&SightingQuery {
        before: f.before,
        limit: PAGE,
        ..q.clone()
    }));

    let export = query(&keep);
    let sep = if export.is_empty() { "" } else { "&amp;" };
    let mut body = form;
    body.push_str("<div class=\"actions\">Download these sightings:");
    for (format, label) in [("csv", "CSV"), ("geojson", "GeoJSON"), ("ndjson", "NDJSON")] {
        let _ = write!(
            body,
            "<a class=\"button\" id=\"dl-{format}\" href=\"/api/v1/sightings?format={format}{excel}{sep}{}\" download>{label}</a>",
            esc(&export),
            // A spreadsheet would run a cell such as =HYPERLINK(…) sent by a device.
            excel = if format == "csv" { "&amp;excel_safe=true" } else { "" }
        );
    }
    body.push_str("</div>");
    let _ = write!(
        body,
        "<h2>Map{}</h2><div class=\"maprow\">{}<div id=\"detail\">Click a point to see the sighting.</div></div>",
        if points.len() as i64 == MAP_POINTS { format!(": the newest {MAP_POINTS} points") } else { format!(": {} point(s)", points.len()) },
        map(&points, q.bbox, state.dashboard.map_tiles.as_ref())
    );
    body.push_str("<h2>Table</h2>");
    body.push_str(&table(&rows));
    body.push_str(&pager(
        "/sightings",
        &keep,
        rows.last().map(|r| r.cursor),
        rows.len() as i64 == PAGE,
    ));
    body.push_str("<script src=\"/assets/map.js\"></script>");
    page(&signed, "/sightings", "Sightings", &body).into_response()
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<Filters>,
) -> Response {
    render(&state, &headers, f).await
}

pub fn table(rows: &[SightingRow]) -> String {
    let mut t = String::from(
        "<div class=\"scroll\"><table id=\"sightings\"><thead><tr><th>Cursor</th><th>Observed (UTC)</th><th>Device</th>\
         <th>Species</th><th class=\"num\">Count</th><th class=\"num\">Latitude</th><th class=\"num\">Longitude</th>\
         <th class=\"hide-narrow\">Observer</th><th class=\"hide-narrow\">Batch</th></tr></thead><tbody>",
    );
    for r in rows {
        let _ = write!(
            t,
            "<tr id=\"s{c}\"><td>{c}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{:.5}</td><td class=\"num\">{:.5}</td><td class=\"hide-narrow\">{}</td>\
             <td class=\"hide-narrow\"><a href=\"/batches/{b}\">{b}</a></td></tr>",
            when(&r.observed_at),
            esc(&r.device),
            esc(r.species.as_deref().unwrap_or("")),
            r.count.map(|c| c.to_string()).unwrap_or_default(),
            r.latitude,
            r.longitude,
            esc(r.observer.as_deref().unwrap_or("")),
            c = r.cursor,
            b = r.batch
        );
    }
    if rows.is_empty() {
        t.push_str("<tr><td colspan=\"9\">No sightings match.</td></tr>");
    }
    t.push_str("</tbody></table></div>");
    t
}

/// The sightings map: plain lon/lat (equirectangular) SVG that needs no tiles and no
/// network, or Web Mercator over the configured tiles.
fn map(points: &[SightingRow], bbox: Option<BBox>, tiles: Option<&MapTiles>) -> String {
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

fn plain(points: &[SightingRow], (x0, y0, x1, y1): (f64, f64, f64, f64)) -> String {
    let (x0, y0, w, h) = frame(x0, y0, x1, y1);
    let (x1, y1) = (x0 + w, y0 + h);
    let mut svg = format!(
        "<svg class=\"map\" id=\"map\" viewBox=\"{x0} {} {w} {h}\" role=\"img\" aria-label=\"map of sightings\">",
        -y1
    );
    let step = nice_step(w.max(h) / 6.0);
    let mut lon = (x0 / step).ceil() * step;
    for _ in 0..20 {
        if lon > x1 {
            break;
        }
        let _ = write!(svg, "<line x1=\"{lon}\" y1=\"{}\" x2=\"{lon}\" y2=\"{}\" vector-effect=\"non-scaling-stroke\"/>", -y1, -y0);
        lon += step;
    }
    let mut lat = (y0 / step).ceil() * step;
    for _ in 0..20 {
        if lat > y1 {
            break;
        }
        let _ = write!(svg, "<line x1=\"{x0}\" y1=\"{}\" x2=\"{x1}\" y2=\"{}\" vector-effect=\"non-scaling-stroke\"/>", -lat, -lat);
        lat += step;
    }
    circles(&mut svg, points, w / 180.0, |lon, lat| (lon, -lat));
    let _ = write!(
        svg,
        "</svg><p class=\"l\">Longitude {x0:.4}° to {x1:.4}°, latitude {y0:.4}° to {y1:.4}° (plain lon/lat, no tiles needed).</p>"
    );
    format!("<div>{svg}</div>")
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
fn tiled(
    points: &[SightingRow],
    (x0, y0, x1, y1): (f64, f64, f64, f64),
    tiles: &MapTiles,
) -> String {
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
    let mut svg = format!(
        "<svg class=\"map tiled\" id=\"map\" viewBox=\"{px0} {py0} {w} {h}\" role=\"img\" aria-label=\"map of sightings\">"
    );
    let n = 1i64 << z;
    let tile = |v: f64| (v / 256.0).floor() as i64;
    for ty in tile(py0).max(0)..=tile(py0 + h).min(n - 1) {
        for tx in tile(px0)..=tile(px0 + w) {
            let url = tiles
                .url
                .replace("{z}", &z.to_string())
                .replace("{x}", &tx.rem_euclid(n).to_string())
                .replace("{y}", &ty.to_string());
            let _ = write!(
                svg,
                "<image href=\"{}\" x=\"{}\" y=\"{}\" width=\"256\" height=\"256\" preserveAspectRatio=\"none\"/>",
                esc(&url),
                tx * 256,
                ty * 256
            );
        }
    }
    circles(&mut svg, points, w / 180.0, |lon, lat| {
        mercator(lon, lat, z)
    });
    let _ = write!(
        svg,
        "</svg><p class=\"l\">Longitude {x0:.4}° to {x1:.4}°, latitude {y0:.4}° to {y1:.4}° (Web Mercator, zoom {z}){}.</p>",
        tiles
            .attribution
            .as_deref()
            .map(|a| format!("; tiles: <span id=\"attribution\">{}</span>", esc(a)))
            .unwrap_or_default()
    );
    format!("<div>{svg}</div>")
}

/// One clickable circle per sighting at `project(lon, lat)`.
fn circles(
    svg: &mut String,
    points: &[SightingRow],
    r: f64,
    project: impl Fn(f64, f64) -> (f64, f64),
) {
    for p in points {
        let info = format!(
            "#{} · {} · {} · {} × {} · {:.5}, {:.5}{}",
            p.cursor,
            when(&p.observed_at),
            p.device,
            p.species.as_deref().unwrap_or("(no species)"),
            p.count.unwrap_or(1),
            p.latitude,
            p.longitude,
            p.observer
                .as_deref()
                .map(|o| format!(" · {o}"))
                .unwrap_or_default()
        );
        let (x, y) = project(p.longitude, p.latitude);
        let _ = write!(
            svg,
            "<a href=\"#s{c}\"><circle cx=\"{x}\" cy=\"{y}\" r=\"{r}\" data-info=\"{}\"><title>{}</title></circle></a>",
            esc(&info),
            esc(&info),
            c = p.cursor
        );
    }
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
