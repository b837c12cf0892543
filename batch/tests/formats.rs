//! Behaviour of each format on files built in the test: aliases, BOM/CRLF, gzip,
//! limits, derived ids, the sink contract, and writer round trips.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::DateTime;
use ctdata_batch::write::{write_json, BatchHeader, NdjsonWriter};
use ctdata_batch::{read, scan, Format, Limits, RejectKind, Rejection, Scan, Sighting};
use flate2::write::GzEncoder;
use serde_json::json;
use tempfile::NamedTempFile;
use uuid::Uuid;

fn file(bytes: &[u8]) -> NamedTempFile {
    let mut f = NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn load(path: &Path) -> Result<(Scan, Vec<Sighting>), Rejection> {
    let limits = Limits::default();
    let s = scan(path, &limits)?;
    let mut rows = Vec::new();
    read(path, &s, &limits, |r| {
        rows.push(r);
        ControlFlow::Continue(())
    })?;
    Ok((s, rows))
}

fn load_bytes(bytes: &[u8]) -> Result<(Scan, Vec<Sighting>), Rejection> {
    load(file(bytes).path())
}

fn header() -> BatchHeader {
    BatchHeader {
        batch_id: Uuid::new_v4(),
        device_id: "ranger-07".into(),
        created_at: DateTime::parse_from_rfc3339("2024-05-02T18:05:11+02:00").unwrap(),
    }
}

fn sightings(n: usize) -> Vec<Sighting> {
    (0..n)
        .map(|i| Sighting {
            id: Uuid::new_v4(),
            observed_at: DateTime::parse_from_rfc3339("2024-05-01T06:32:10.250+02:00").unwrap(),
            latitude: -24.99312 + i as f64 * 0.001,
            longitude: 31.59012,
            altitude: (i % 2 == 0).then_some(312.5),
            accuracy: Some(4.0),
            observer: Some("T. Mokoena".into()),
            species: Some("Loxodonta africana".into()),
            count: Some(i as i64),
            attributes: json!({"behaviour": "feeding", "attachments": [{"name": "a.jpg"}]})
                .as_object()
                .unwrap()
                .clone(),
        })
        .collect()
}

#[test]
fn ndjson_writer_round_trips() {
    let (h, rows) = (header(), sightings(25));
    let mut w = NdjsonWriter::new(Vec::new(), &h).unwrap();
    rows.iter().for_each(|s| w.push(s).unwrap());
    let bytes = w.finish().unwrap();
    let (s, back) = load_bytes(&bytes).unwrap();
    assert_eq!(s.format, Format::Ndjson);
    assert_eq!(
        (s.batch_id, s.device_id.as_deref()),
        (h.batch_id, Some("ranger-07"))
    );
    assert_eq!(
        (s.created_at, s.declared_count),
        (Some(h.created_at), Some(25))
    );
    assert_eq!(back, rows);
}

#[test]
fn json_writer_round_trips_and_gzip_hashes_the_content() {
    let (h, rows) = (header(), sightings(4));
    let mut bytes = Vec::new();
    write_json(&mut bytes, &h, &rows).unwrap();
    let (plain, back) = load_bytes(&bytes).unwrap();
    assert_eq!(
        (plain.format, plain.gzip, plain.batch_id),
        (Format::Json, false, h.batch_id)
    );
    assert_eq!(back, rows);
    let (zipped, back) = load_bytes(&gzip(&bytes)).unwrap();
    assert!(zipped.gzip);
    assert_eq!(
        (zipped.sha256, zipped.bytes),
        (plain.sha256, bytes.len() as u64)
    );
    assert_eq!(back, rows);
}

#[test]
fn empty_batches_are_valid() {
    let mut bytes = Vec::new();
    write_json(&mut bytes, &header(), &[]).unwrap();
    assert!(load_bytes(&bytes).unwrap().1.is_empty());
    let w = NdjsonWriter::new(Vec::new(), &header()).unwrap();
    assert!(load_bytes(&w.finish().unwrap()).unwrap().1.is_empty());
}

const CSV: &str = "id,observed_at,latitude,longitude,species,count,notes\n\
    ,2024-05-03T06:10:00+02:00,-24.4165,31.8821,Loxodonta africana,5,\"by the road, north\"\n\
    ,2024-05-03T06:55:30Z,-24.40021,31.90114,Panthera leo,,\n";

#[test]
fn derived_ids_are_deterministic_and_distinct() {
    let (a, rows_a) = load_bytes(CSV.as_bytes()).unwrap();
    let (b, rows_b) = load_bytes(CSV.as_bytes()).unwrap();
    assert_eq!((a.batch_id, &rows_a), (b.batch_id, &rows_b));
    assert_ne!(rows_a[0].id, rows_a[1].id);
    assert_eq!(
        a.batch_id,
        Uuid::new_v5(&ctdata_batch::CTDATA_NAMESPACE, a.sha256.as_bytes())
    );
    let changed = CSV.replace("north", "south");
    let (_, rows_c) = load_bytes(changed.as_bytes()).unwrap();
    assert_ne!(rows_a[0].id, rows_c[0].id);
}

#[test]
fn csv_cells_map_to_fields_and_attributes() {
    let (s, rows) = load_bytes(CSV.as_bytes()).unwrap();
    assert_eq!(
        (s.format, s.device_id.clone(), s.declared_count),
        (Format::Csv, None, None)
    );
    assert_eq!(rows[0].count, Some(5));
    assert_eq!(rows[0].attributes["notes"], "by the road, north");
    assert_eq!(rows[1].count, None);
    assert!(rows[1].attributes.is_empty(), "empty cells are omitted");
}

#[test]
fn csv_darwin_core_with_bom_and_crlf() {
    let text = "\u{feff}OccurrenceID , EVENTDATE,decimalLatitude,decimalLongitude,scientificName,individualCount,recordedBy,habitat\r\n\
        3f2b8c1e-5d4a-4e8b-9c7d-1a2b3c4d5e6f,2024-05-04T16:45:00+02:00,-25.1,31.9,Crocuta crocuta,4,S. Dlamini,grassland\r\n";
    let (_, rows) = load_bytes(text.as_bytes()).unwrap();
    let r = &rows[0];
    assert_eq!(r.id.to_string(), "3f2b8c1e-5d4a-4e8b-9c7d-1a2b3c4d5e6f");
    assert_eq!(
        (r.latitude, r.species.as_deref(), r.count),
        (-25.1, Some("Crocuta crocuta"), Some(4))
    );
    assert_eq!(r.observer.as_deref(), Some("S. Dlamini"));
    assert_eq!(r.attributes["habitat"], "grassland");
}

#[test]
fn json_unknown_keys_become_attributes_and_header_may_follow_rows() {
    let doc = json!({
        "sightings": [{"observed_at": "2024-05-01T06:32:10Z", "latitude": 1.5, "longitude": 2.5,
                       "attributes": {"behaviour": "feeding"}, "attachments": [], "sex": "F"}],
        "ctdata_batch": 1, "batch_id": Uuid::new_v4(), "device_id": "ranger-07",
        "created_at": "2024-05-02T18:05:11+02:00", "count": 1, "extension": {"x": 1}
    });
    let (s, rows) = load_bytes(doc.to_string().as_bytes()).unwrap();
    assert_eq!(s.declared_count, Some(1));
    let a = &rows[0].attributes;
    assert_eq!(
        (a["behaviour"].clone(), a["sex"].clone()),
        (json!("feeding"), json!("F"))
    );
    assert_eq!(a["attachments"], json!([]));
}

#[test]
fn geojson_point_features() {
    let doc = json!({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": 7, "geometry": {"type": "Point", "coordinates": [16.3, -18.8, 1085]},
         "properties": {"eventDate": "2024-06-11T05:58:00Z", "ScientificName": "Loxodonta africana", "herd": 3}}]});
    let (s, rows) = load_bytes(doc.to_string().as_bytes()).unwrap();
    assert_eq!((s.format, s.declared_count), (Format::Geojson, None));
    let r = &rows[0];
    assert_eq!(
        (r.latitude, r.longitude, r.altitude),
        (-18.8, 16.3, Some(1085.0))
    );
    assert_eq!(r.species.as_deref(), Some("Loxodonta africana"));
    assert_eq!(
        (
            r.attributes["feature_id"].clone(),
            r.attributes["herd"].clone()
        ),
        (json!(7), json!(3))
    );
}

#[test]
fn json_count_mismatch_is_truncation() {
    let mut bytes = Vec::new();
    write_json(&mut bytes, &header(), &sightings(3)).unwrap();
    let text = String::from_utf8(bytes)
        .unwrap()
        .replace("\"count\":3", "\"count\":4");
    let r = load_bytes(text.as_bytes()).unwrap_err();
    assert_eq!(r.kind, RejectKind::Truncated, "{r}");
}

#[test]
fn sink_break_stops_at_once() {
    let mut w = NdjsonWriter::new(Vec::new(), &header()).unwrap();
    sightings(10).iter().for_each(|s| w.push(s).unwrap());
    let f = file(&w.finish().unwrap());
    let limits = Limits::default();
    let s = scan(f.path(), &limits).unwrap();
    let mut seen = 0;
    let summary = read(f.path(), &s, &limits, |_| {
        seen += 1;
        if seen == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!((summary.rows, seen), (3, 3));
}

#[test]
fn no_row_reaches_the_sink_after_a_problem_and_all_problems_are_counted() {
    let mut text = String::from("observed_at,latitude,longitude\n2024-05-03T06:10:00Z,1,1\n");
    for _ in 0..60 {
        text.push_str("2024-05-03T06:10:00Z,95,1\n2024-05-03T06:10:00Z,1,1\n");
    }
    let f = file(text.as_bytes());
    let limits = Limits::default();
    let s = scan(f.path(), &limits).unwrap();
    let mut delivered = 0;
    let r = read(f.path(), &s, &limits, |_| {
        delivered += 1;
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert_eq!(delivered, 1);
    assert_eq!(
        (r.kind, r.total_problems, r.problems.len()),
        (RejectKind::InvalidRows, 60, 50)
    );
    assert!(r.to_string().contains("60 invalid rows") && r.to_string().contains("… and 10 more"));
}

#[test]
fn gzip_bomb_is_refused_quickly() {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    (0..200).for_each(|_| e.write_all(&zeros).unwrap());
    let f = file(&e.finish().unwrap());
    let start = Instant::now();
    let r = scan(f.path(), &Limits::default()).unwrap_err();
    assert_eq!(r.kind, RejectKind::TooLarge, "{r}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn size_limit_applies_to_decompressed_bytes() {
    let mut w = NdjsonWriter::new(Vec::new(), &header()).unwrap();
    sightings(200).iter().for_each(|s| w.push(s).unwrap());
    let bytes = w.finish().unwrap();
    let limits = Limits {
        max_bytes: bytes.len() as u64 - 1,
        ..Limits::default()
    };
    for data in [bytes.clone(), gzip(&bytes)] {
        let r = scan(file(&data).path(), &limits).unwrap_err();
        assert_eq!(r.kind, RejectKind::TooLarge, "{r}");
    }
}

/// The BOM+CRLF fixture with a row made invalid, so the reason names its line.
fn darwin_core_lines() -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/good/csv-darwin-core.csv");
    let text = String::from_utf8(std::fs::read(path).unwrap()).unwrap();
    assert!(text.starts_with('\u{feff}') && text.contains("\r\n"));
    text.split_terminator("\r\n").map(str::to_owned).collect()
}

fn lines_of(r: &Rejection) -> Vec<Option<u64>> {
    r.problems.iter().map(|p| p.at.line).collect()
}

#[test]
fn csv_crlf_line_numbers_are_those_an_editor_shows() {
    let mut lines = darwin_core_lines();
    // Line 3 of the file: latitude out of range.
    lines[2] = lines[2].replacen(",-25.12030,", ",-95,", 1);
    let r = load_bytes((lines.join("\r\n") + "\r\n").as_bytes()).unwrap_err();
    assert_eq!(lines_of(&r), [Some(3)], "{r}");

    // A blank line before it: now it is line 4.
    lines.insert(2, String::new());
    let r = load_bytes((lines.join("\r\n") + "\r\n").as_bytes()).unwrap_err();
    assert_eq!(lines_of(&r), [Some(4)], "{r}");

    // A row cut short after the blank line: line 5.
    lines[4] = "fd06ee52-6319-49b3-b35a-c288aac7bb11,2024-05-04T17:40:51+02:00".into();
    let r = load_bytes((lines.join("\r\n") + "\r\n").as_bytes()).unwrap_err();
    assert_eq!(lines_of(&r), [Some(4), Some(5)], "{r}");
}

#[test]
fn csv_crlf_fixture_still_loads_and_lf_lines_are_unchanged() {
    let lines = darwin_core_lines();
    let (_, rows) = load_bytes((lines.join("\r\n") + "\r\n").as_bytes()).unwrap();
    assert_eq!(rows.len(), lines.len() - 1);
    let mut lf = lines.clone();
    lf.insert(2, String::new());
    lf[3] = lf[3].replacen(",-25.12030,", ",-95,", 1);
    let r = load_bytes((lf.join("\n") + "\n").as_bytes()).unwrap_err();
    assert_eq!(lines_of(&r), [Some(4)], "{r}");
}

#[test]
fn numbers_written_as_strings_are_numbers() {
    let doc = json!({"type": "FeatureCollection", "features": [{
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [31.5, -24.9]},
        "properties": {"observed_at": "2024-05-01T06:30:00+02:00", "count": "12", "accuracy": "4.5"}
    }]});
    let (_, rows) = load_bytes(doc.to_string().as_bytes()).unwrap();
    assert_eq!((rows[0].count, rows[0].accuracy), (Some(12), Some(4.5)));

    let line = |extra: serde_json::Value| {
        let mut s =
            json!({"observed_at": "2024-05-01T06:30:00Z", "latitude": "-24.5", "longitude": "31"});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"ctdata_batch": 1, "batch_id": Uuid::new_v4(), "device_id": "ranger-07",
            "created_at": "2024-05-02T18:05:11+02:00", "count": 1, "sightings": [s]})
        .to_string()
    };
    let (_, rows) = load_bytes(line(json!({"count": "7"})).as_bytes()).unwrap();
    assert_eq!((rows[0].latitude, rows[0].count), (-24.5, Some(7)));
    // Only the exact text of a number: not blanks, words, fractions of a count or NaN.
    for bad in [" 12", "12 ", "twelve", "12.5", "1,5", "NaN", "+3", ""] {
        let r = load_bytes(line(json!({"count": bad})).as_bytes()).unwrap_err();
        assert!(
            r.to_string().contains("count must be a whole number"),
            "{bad:?}: {r}"
        );
    }
    let r = load_bytes(line(json!({"latitude": "91"})).as_bytes()).unwrap_err();
    assert!(
        r.to_string()
            .contains("latitude must be a number from -90 to 90"),
        "{r}"
    );
}

#[test]
fn semicolon_separated_csv_names_the_separator() {
    let text = "observed_at;latitude;longitude;species\r\n2024-05-01T06:30:00+02:00;-24,9;31,5;Panthera leo\r\n";
    let r = load_bytes(text.as_bytes()).unwrap_err();
    assert_eq!(r.kind, RejectKind::Header, "{r}");
    assert!(r.summary.contains("separated by ';'"), "{r}");
    assert!(r.summary.contains("comma"), "{r}");
}

#[test]
fn very_wide_csv_header_is_refused_with_a_reason() {
    let mut text = String::from("observed_at,latitude,longitude");
    for i in 0..100_000 {
        text.push_str(&format!(",c{i}"));
    }
    text.push_str("\n2024-05-01T06:30:00Z,1,1\n");
    let r = load_bytes(text.as_bytes()).unwrap_err();
    assert_eq!(r.kind, RejectKind::Header, "{r}");
    assert!(
        r.summary.contains("100003 columns") && r.summary.contains("at most 1000"),
        "{r}"
    );
    // Just below the cap, repeated names are still found, each once.
    let mut text = String::from("observed_at,latitude,longitude,Notes");
    for i in 0..990 {
        text.push_str(&format!(",c{i}"));
    }
    text.push_str(",NOTES,decimalLatitude\n");
    let r = load_bytes(text.as_bytes()).unwrap_err();
    let msgs: Vec<&str> = r.problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(
        msgs,
        [
            "column 995 repeats column 4 (same meaning)",
            "column 996 repeats column 2 (same meaning)"
        ]
    );
}
