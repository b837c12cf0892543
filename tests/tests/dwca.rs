//! The Darwin Core Archive export (issue 16), read back by python-dwca-reader, a reader
//! written independently of this server: the archive's structure and terms, the EML,
//! sensitive species generalised or left out, and the settings it refuses.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ctdata_tests::web::sign_in;
use ctdata_tests::{both_backends, Batch, ServerEnv, TestDb};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

both_backends! {
    archive_reads_back_with_sensitive_species_protected,
    missing_metadata_and_bad_licences_are_refused,
    occurrence_ids_are_unique_over_100k_rows,
}

const READER: &str = include_str!("../src/dwca_read.py");
const VALIDATOR: &str = include_str!("../src/dwca_validate.py");

/// The columns the archive must declare, each with its Darwin Core term URI, written
/// out here rather than taken from the server.
const TERMS: [&str; 20] = [
    "http://rs.tdwg.org/dwc/terms/occurrenceID",
    "http://rs.tdwg.org/dwc/terms/basisOfRecord",
    "http://rs.tdwg.org/dwc/terms/eventDate",
    "http://rs.tdwg.org/dwc/terms/decimalLatitude",
    "http://rs.tdwg.org/dwc/terms/decimalLongitude",
    "http://rs.tdwg.org/dwc/terms/geodeticDatum",
    "http://rs.tdwg.org/dwc/terms/coordinateUncertaintyInMeters",
    "http://rs.tdwg.org/dwc/terms/scientificName",
    "http://rs.tdwg.org/dwc/terms/vernacularName",
    "http://rs.tdwg.org/dwc/terms/kingdom",
    "http://rs.tdwg.org/dwc/terms/taxonRank",
    "http://rs.tdwg.org/dwc/terms/individualCount",
    "http://rs.tdwg.org/dwc/terms/occurrenceStatus",
    "http://rs.tdwg.org/dwc/terms/recordedBy",
    "http://rs.tdwg.org/dwc/terms/eventID",
    "http://rs.tdwg.org/dwc/terms/countryCode",
    "http://rs.tdwg.org/dwc/terms/locality",
    "http://rs.tdwg.org/dwc/terms/dataGeneralizations",
    "http://rs.tdwg.org/dwc/terms/informationWithheld",
    "http://rs.tdwg.org/dwc/terms/dynamicProperties",
];

const METADATA: &str = r#"
title = "Large mammals of Example Park"
description = "Patrol sightings, test data."
publishing_organisation = "Example Trust & Partners"
creator = "Thandi Mokoena <thandi@example.org>"
contact = "Data Desk <data@example.org>"
metadata_provider = "Thandi Mokoena <thandi@example.org>"
licence = "CC-BY-4.0"
country_code = "ZA"
locality = "Example Park"
"#;

/// Writes `ctdata.toml` (read from the commands' working directory) with `[dwca]`
/// holding `body`.
fn configure(env: &ServerEnv, body: &str) {
    std::fs::write(
        env.dir.path().join("ctdata.toml"),
        format!("[dwca]\n{body}\n"),
    )
    .unwrap();
}

/// Whether Python can import `module`; outside CI a missing one prints SKIPPED, under
/// CI it fails the test.
fn python_has(module: &str, package: &str) -> bool {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .expect("run python3");
    if !probe.status.success() {
        let why = format!("{package} is not installed (pip install {package})");
        assert!(std::env::var_os("CI").is_none(), "CI is set but {why}");
        eprintln!("SKIPPED: {why}");
    }
    probe.status.success()
}

/// The archive as python-dwca-reader sees it; `None` when the reader is not installed
/// (outside CI: the test says SKIPPED).
fn read_archive(path: &Path, rows: bool) -> Option<Value> {
    if !python_has("dwca.read", "python-dwca-reader") {
        return None;
    }
    let mut cmd = Command::new("python3");
    cmd.args(["-c", READER]).arg(path);
    if rows {
        cmd.arg("--rows");
    }
    let out = cmd.output().expect("run the reader");
    assert!(
        out.status.success(),
        "python-dwca-reader failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("the reader's JSON"))
}

/// The archive as dwcahandler sees it (a second, independent reader): valid by its
/// own checks (unique occurrenceID keys, known columns), its core row type, rows and
/// columns. `None` (SKIPPED) only outside CI when dwcahandler is not installed.
fn validate_archive(path: &Path) -> Option<Value> {
    if !python_has("dwcahandler", "dwcahandler") {
        return None;
    }
    let out = Command::new("python3")
        .args(["-c", VALIDATOR])
        .arg(path)
        .output()
        .expect("run dwcahandler");
    assert!(
        out.status.success(),
        "dwcahandler failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_slice(&out.stdout).expect("dwcahandler's JSON");
    assert_eq!(
        found["valid"],
        true,
        "dwcahandler finds the archive invalid: {found}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(found["row_type"], "OCCURRENCE", "{found}");
    Some(found)
}

/// Validates the archive's `meta.xml` with xmllint against the descriptor schema in
/// `tests/fixtures/schema/` (written for these tests from the Darwin Core text
/// guidelines), and checks that `eml.xml` is well-formed.
fn check_meta_xml(zip: &Path) {
    if Command::new("xmllint").arg("--version").output().is_err() {
        let why = "xmllint is not installed (apt-get install libxml2-utils)";
        assert!(std::env::var_os("CI").is_none(), "CI is set but {why}");
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = zip.with_extension("unzipped");
    let unzip = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
        ])
        .arg(zip)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        unzip.status.success(),
        "{}",
        String::from_utf8_lossy(&unzip.stderr)
    );
    let schema = ctdata_tests::fixtures().join("schema/dwc-text.xsd");
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&schema)
        .arg(dir.join("meta.xml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meta.xml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg(dir.join("eml.xml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "eml.xml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET /api/v1/sightings?QUERY` as bytes.
async fn download(
    base: &str,
    query: &str,
    token: &str,
) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
    let reply = reqwest::Client::new()
        .request(Method::GET, format!("{base}/api/v1/sightings?{query}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET sightings");
    let status = reply.status().as_u16();
    let headers = reply.headers().clone();
    (status, reply.bytes().await.unwrap().to_vec(), headers)
}

/// Is `v` the centre of a cell of a `g` degree grid?
fn is_cell_centre(v: f64, g: f64) -> bool {
    let k = v / g - 0.5;
    (k - k.round()).abs() < 1e-6
}

async fn archive_reads_back_with_sensitive_species_protected(db: TestDb) {
    let env = ServerEnv::new(&db);
    let mapping = env.dir.path().join("species.csv");
    std::fs::write(
        &mapping,
        "local,scientificName,vernacularName,kingdom,taxonRank\n\
         ele,Loxodonta africana,African elephant,Animalia,species\n\
         rhino-b,Diceros bicornis,Black rhinoceros,Animalia,species\n",
    )
    .unwrap();
    configure(
        &env,
        &format!(
            "{METADATA}species_file = {:?}\n\
             [[dwca.sensitive]]\nname = \"Diceros bicornis\"\ngrid_degrees = 0.2\n\
             [[dwca.sensitive]]\nname = \"Ceratotherium simum\"\n\
             [[dwca.sensitive]]\nname = \"Smutsia temminckii\"\nexclude = true\n\
             [dwca.basis_of_record_by_device]\ncamtrap-01 = \"MachineObservation\"\n\
             [http]\nread_devices = [\"field-tablet\"]\n",
            mapping.display().to_string()
        ),
    );
    let admin = env.admin_token();
    let device = env.device_token("ranger-07");
    let reader_device = env.device_token("field-tablet");
    let camtrap = env.device_token("camtrap-01");
    let server = env.serve().await;
    let api = server.api();

    // Species in turn: mapped, sensitive (mapped), excluded, sensitive by scientific
    // name, none, and one used as it is. Positions off any cell centre.
    let species = [
        Some("ele"),
        Some("rhino-b"),
        Some("Smutsia temminckii"),
        Some("Ceratotherium simum"),
        None,
        Some("Panthera leo"),
    ];
    let rows = 60;
    let batch = Batch::new("ranger-07", rows).each(|n, s| {
        s.species = species[n % species.len()].map(String::from);
        s.latitude = -24.0123 - n as f64 * 0.0137;
        s.longitude = 31.5071 + n as f64 * 0.0091;
        s.count = Some(if n == 6 { 0 } else { n as i64 % 4 + 1 });
        s.observer = Some(
            if n % 2 == 0 {
                "T. Mokoena\tsenior"
            } else {
                "NULL"
            }
            .into(),
        );
        s.accuracy = if n == 12 { Some(0.0) } else { Some(5.0) };
        s.attributes
            .insert("patrol_id".into(), json!(format!("P-{}", n / 10)));
        s.attributes
            .insert("behaviour".into(), json!("grazing\nnear water"));
    });
    assert_eq!(api.post_batch(&device, batch.ndjson()).await.status, 201);
    let traps = Batch::new("camtrap-01", 3).each(|_, s| s.species = Some("Panthera leo".into()));
    assert_eq!(api.post_batch(&camtrap, traps.ndjson()).await.status, 201);

    // A device allowed to read the CSV may not take the archive.
    let (status, _, _) = download(&server.http_base(), "format=dwca", &reader_device).await;
    assert_eq!(status, 403);

    let (status, body, headers) = download(&server.http_base(), "format=dwca", &admin).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/zip");
    let unnamed = batch
        .sightings
        .iter()
        .filter(|s| s.species.is_none())
        .count();
    assert_eq!(headers["ctdata-dwca-unnamed"], unnamed.to_string().as_str());
    let zip = env.dir.path().join("http.zip");
    std::fs::write(&zip, &body).unwrap();
    check_meta_xml(&zip);
    let Some(archive) = read_archive(&zip, true) else {
        return;
    };

    assert_eq!(
        archive["row_type"],
        "http://rs.tdwg.org/dwc/terms/Occurrence"
    );
    assert_eq!(archive["id_index"], 0);
    assert_eq!(archive["encoding"], "UTF-8");
    assert_eq!(archive["field_terms"], json!(TERMS));
    if let Some(found) = validate_archive(&zip) {
        assert_eq!(found["rows"], archive["count"], "{found}");
        let short: Vec<&str> = TERMS
            .iter()
            .map(|t| t.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(found["columns"], json!(short), "{found}");
    }
    assert_eq!(
        archive["field_indexes"],
        json!((0..TERMS.len()).collect::<Vec<_>>())
    );
    let eml = &archive["eml"];
    assert!(
        archive["eml_root"].as_str().unwrap().ends_with("eml"),
        "{archive}"
    );
    assert_eq!(eml["title"], "Large mammals of Example Park");
    assert_eq!(
        eml["licence_url"],
        "http://creativecommons.org/licenses/by/4.0/legalcode"
    );
    assert!(eml["licence_title"].as_str().unwrap().contains("CC-BY"));
    assert_eq!(eml["creator_email"], "thandi@example.org");
    assert_eq!(eml["publisher"], "Example Trust & Partners");
    assert_eq!(eml["contact_surname"], "Desk");

    let got = archive["rows"].as_array().unwrap();
    let excluded = batch
        .sightings
        .iter()
        .filter(|s| s.species.as_deref() == Some("Smutsia temminckii"))
        .count();
    assert_eq!(got.len(), rows - excluded - unnamed + traps.sightings.len());
    for s in &traps.sightings {
        let id = format!("urn:uuid:{}", s.id);
        let row = got
            .iter()
            .find(|r| r["occurrenceID"] == id.as_str())
            .unwrap();
        assert_eq!(row["basisOfRecord"], "MachineObservation");
    }
    assert_eq!(archive["count"], got.len());
    assert_eq!(archive["unique_ids"], got.len());
    for s in &batch.sightings {
        let id = format!("urn:uuid:{}", s.id);
        let row = got.iter().find(|r| r["occurrenceID"] == id.as_str());
        let Some(row) = row else {
            assert!(
                matches!(s.species.as_deref(), None | Some("Smutsia temminckii")),
                "{id} ({:?}) is missing",
                s.species
            );
            continue;
        };
        assert!(
            s.species.is_some() && s.species.as_deref() != Some("Smutsia temminckii"),
            "{id} ({:?}) must not be exported",
            s.species
        );
        for (term, value) in row.as_object().unwrap() {
            let value = value.as_str().unwrap();
            assert!(
                value != "NULL" || term == "recordedBy",
                "{term} is a literal NULL"
            );
            assert!(
                !value.contains("\\N") && !value.contains(['\t', '\n']),
                "{term}: {value:?}"
            );
        }
        let text = |term: &str| row[term].as_str().unwrap().to_string();
        let number = |term: &str| text(term).parse::<f64>().unwrap();
        assert_eq!(text("basisOfRecord"), "HumanObservation");
        assert_eq!(text("geodeticDatum"), "EPSG:4326");
        assert_eq!(text("countryCode"), "ZA");
        assert_eq!(text("locality"), "Example Park");
        let event = chrono::DateTime::parse_from_rfc3339(&text("eventDate")).unwrap();
        assert_eq!(event, s.observed_at);
        assert_eq!(event.offset(), s.observed_at.offset());
        assert_eq!(text("eventID"), s.attributes["patrol_id"].as_str().unwrap());
        let count = s.count.unwrap();
        assert_eq!(text("individualCount"), count.to_string());
        assert_eq!(
            text("occurrenceStatus"),
            if count == 0 { "absent" } else { "present" }
        );
        let recorded = if s.observer.as_deref() == Some("NULL") {
            "NULL"
        } else {
            "T. Mokoena senior"
        };
        assert_eq!(text("recordedBy"), recorded);
        let (lat, lon) = (number("decimalLatitude"), number("decimalLongitude"));
        let grid = match s.species.as_deref() {
            Some("rhino-b") => Some(0.2),
            Some("Ceratotherium simum") => Some(0.1),
            _ => None,
        };
        match grid {
            Some(g) => {
                // Generalised: the centre of the cell holding the true position, never
                // the position itself, with the uncertainty covering the whole cell.
                assert!(
                    is_cell_centre(lat, g) && is_cell_centre(lon, g),
                    "{lat},{lon} on a {g}° grid"
                );
                assert!((lat - s.latitude).abs() <= g / 2.0 + 1e-9);
                assert!((lon - s.longitude).abs() <= g / 2.0 + 1e-9);
                assert!(lat != s.latitude && lon != s.longitude);
                let half_diagonal = g / 2.0 * 111_320.0 * std::f64::consts::SQRT_2;
                assert!(number("coordinateUncertaintyInMeters") >= half_diagonal);
                assert!(!text("dataGeneralizations").is_empty());
                assert!(!text("informationWithheld").is_empty());
                assert_eq!(text("dynamicProperties"), "", "attributes withheld");
            }
            None => {
                assert_eq!((lat, lon), (s.latitude, s.longitude), "exact");
                let accuracy = if s.accuracy == Some(0.0) { "" } else { "5" };
                assert_eq!(text("coordinateUncertaintyInMeters"), accuracy);
                assert_eq!(text("dataGeneralizations"), "");
                let props: Value = serde_json::from_str(&text("dynamicProperties")).unwrap();
                assert_eq!(props, json!({"behaviour": "grazing\nnear water"}));
            }
        }
        let (scientific, vernacular) = match s.species.as_deref().unwrap() {
            "ele" => ("Loxodonta africana", "African elephant"),
            "rhino-b" => ("Diceros bicornis", "Black rhinoceros"),
            other => (other, ""),
        };
        assert_eq!(text("scientificName"), scientific);
        assert_eq!(text("vernacularName"), vernacular);
        let kingdom = if vernacular.is_empty() {
            ""
        } else {
            "Animalia"
        };
        assert_eq!(text("kingdom"), kingdom);
    }

    // The dashboard's Sightings page offers the archive, with its filters, to a
    // signed-in administrator.
    let (code, session) = sign_in(&server.http_base(), "alice", "a long enough password");
    assert_eq!(code, 303);
    let cookie = format!("ctdata_session={}", session.expect("a session"));
    let page = api.page("/sightings?species=ele", &cookie).await;
    assert_eq!(page.status, 200);
    let at = page
        .body
        .find("id=\"dl-dwca\" href=\"")
        .expect("a dwca link")
        + 19;
    let href = page.body[at..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(page.body[at..].contains(">Darwin Core (GBIF)</a>"));
    assert!(
        href.contains("format=dwca") && href.contains("species=ele"),
        "{href}"
    );
    let reply = reqwest::Client::new()
        .get(format!("{}{href}", server.http_base()))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    std::fs::write(&zip, reply.bytes().await.unwrap()).unwrap();
    let elephants = batch
        .sightings
        .iter()
        .filter(|s| s.species.as_deref() == Some("ele"))
        .count();
    assert_eq!(read_archive(&zip, false).unwrap()["count"], elephants);

    // The command line writes the same archive, and the cursor moves past it.
    let cli_zip = env.dir.path().join("cli.zip");
    let cursor = env.dir.path().join("cursor");
    let out = env
        .command(&["export", "--format", "dwca", "--output"])
        .arg(&cli_zip)
        .arg("--cursor-file")
        .arg(&cursor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("{unnamed} without a species")),
        "{log}"
    );
    let cli = read_archive(&cli_zip, false).unwrap();
    assert_eq!(cli["count"], got.len());
    let out = env
        .command(&["export", "--format", "dwca", "--output"])
        .arg(&cli_zip)
        .arg("--cursor-file")
        .arg(&cursor)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(read_archive(&cli_zip, false).unwrap()["count"], 0);
}

async fn missing_metadata_and_bad_licences_are_refused(db: TestDb) {
    let env = ServerEnv::new(&db);
    let export = |env: &ServerEnv| {
        env.command(&["export", "--format", "dwca", "--output", "out.zip"])
            .output()
            .unwrap()
    };
    for licence in ["CC-BY-SA-4.0", "GPL-3.0", "all rights reserved"] {
        configure(&env, &METADATA.replace("CC-BY-4.0", licence));
        let out = export(&env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("dwca.licence") && err.contains(licence),
            "{err}"
        );
        assert!(!env.dir.path().join("out.zip").exists());
    }
    for (key, value) in [("licence", "CC0 1.0"), ("licence", "cc-by-nc-4.0")] {
        configure(
            &env,
            &METADATA.replace("\"CC-BY-4.0\"", &format!("{value:?}")),
        );
        let out = export(&env);
        assert!(
            out.status.success(),
            "{key} = {value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let admin = env.admin_token();
    for missing in [
        "title",
        "description",
        "publishing_organisation",
        "creator",
        "contact",
        "metadata_provider",
        "licence",
    ] {
        let body: String = METADATA
            .lines()
            .filter(|l| !l.starts_with(&format!("{missing} ")))
            .map(|l| format!("{l}\n"))
            .collect();
        configure(&env, &body);
        let out = export(&env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(&format!("dwca.{missing} is not set")), "{err}");
    }
    // The server starts without them; the download names what is missing.
    configure(&env, "");
    let server = env.serve().await;
    let (status, body, _) = download(&server.http_base(), "format=dwca", &admin).await;
    assert_eq!(status, 409);
    assert!(String::from_utf8_lossy(&body).contains("dwca.title is not set"));
}

async fn occurrence_ids_are_unique_over_100k_rows(db: TestDb) {
    let env = ServerEnv::new(&db);
    configure(&env, METADATA);
    let device = env.device_token("ranger-07");
    let server = env.serve().await;
    let api = server.api();
    let rows = 100_000;
    let batch = Batch::new("ranger-07", rows);
    let ids: std::collections::HashSet<Uuid> = batch.sightings.iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), rows);
    assert_eq!(api.post_batch(&device, batch.ndjson()).await.status, 201);
    drop(server);

    let zip = env.dir.path().join("big.zip");
    let started = Instant::now();
    let out = env
        .command(&["export", "--format", "dwca", "--output"])
        .arg(&zip)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{:?}: {rows} rows exported as a Darwin Core Archive of {} bytes in {:?}",
        db.backend,
        std::fs::metadata(&zip).unwrap().len(),
        started.elapsed()
    );
    let Some(archive) = read_archive(&zip, false) else {
        return;
    };
    assert_eq!(archive["count"], rows);
    assert_eq!(archive["unique_ids"], rows);
    if let Some(found) = validate_archive(&zip) {
        assert_eq!(found["rows"], rows, "{found}");
    }
}
