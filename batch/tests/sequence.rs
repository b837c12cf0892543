//! The optional `sequence` header key written by the field client: on the wire right
//! after the device fields, and ignored by readers of version 1.

use std::ops::ControlFlow;

use chrono::DateTime;
use ctdata_batch::write::{BatchHeader, NdjsonWriter};
use ctdata_batch::{read, scan, Format, Limits, Sighting};
use uuid::Uuid;

#[test]
fn a_numbered_ndjson_batch_reads_like_any_other() {
    let header = BatchHeader {
        batch_id: Uuid::new_v4(),
        device_id: "ranger-07".into(),
        created_at: DateTime::parse_from_rfc3339("2024-05-02T18:05:11+02:00").unwrap(),
    };
    let sighting = Sighting {
        id: Uuid::new_v4(),
        observed_at: DateTime::parse_from_rfc3339("2024-05-01T06:32:10+02:00").unwrap(),
        latitude: -24.9,
        longitude: 31.5,
        altitude: None,
        accuracy: None,
        observer: None,
        species: Some("Loxodonta africana".into()),
        count: Some(2),
        attributes: Default::default(),
    };
    let mut w = NdjsonWriter::with_sequence(Vec::new(), &header, 42).unwrap();
    w.push(&sighting).unwrap();
    let bytes = w.finish().unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["sequence"], 42);

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    let limits = Limits::default();
    let s = scan(file.path(), &limits).unwrap();
    assert_eq!(s.format, Format::Ndjson);
    assert_eq!(s.batch_id, header.batch_id);
    assert_eq!(s.declared_count, Some(1));
    let mut rows = Vec::new();
    read(file.path(), &s, &limits, |r| {
        rows.push(r);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(rows, [sighting]);
}
