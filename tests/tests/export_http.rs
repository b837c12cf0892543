//! `GET /api/v1/sightings` over real HTTP: filters that no database can take are a 400,
//! and `excel_safe` keeps spreadsheets from running cells as formulas.

use std::process::Command;

use chrono::TimeZone;
use ctdata_tests::{both_backends, ServerEnv, TestDb};

both_backends! {
    nul_in_a_filter_is_a_bad_request,
    excel_safe_csv_neutralises_formula_cells,
}

/// (status, body) of a GET with curl.
fn get(url: &str, token: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn nul_in_a_filter_is_a_bad_request(db: TestDb) {
    let env = ServerEnv::new(&db);
    let admin = env.admin_token();
    let server = env.serve().await;
    let base = server.http_base();
    for filter in ["device=ranger%0007", "species=Lox%00odonta", "from=2024%00"] {
        let (status, body) = get(&format!("{base}/api/v1/sightings?{filter}"), &admin);
        assert_eq!(status, 400, "{filter}: {body}");
        assert!(body.contains("NUL"), "{filter}: {body}");
    }
    let (status, _) = get(&format!("{base}/api/v1/sightings?device=ranger-07"), &admin);
    assert_eq!(status, 200);
}

async fn excel_safe_csv_neutralises_formula_cells(db: TestDb) {
    use std::io::Write;
    let env = ServerEnv::new(&db);
    let admin = env.admin_token();
    let device = env.device_token("ranger-07");
    let server = env.serve().await;
    let base = server.http_base();

    let file = env.dir.path().join("formulas.ndjson");
    let tz = chrono::FixedOffset::east_opt(0).unwrap();
    let header = ctdata_batch::write::BatchHeader {
        batch_id: uuid::Uuid::new_v4(),
        device_id: "ranger-07".into(),
        created_at: tz.with_ymd_and_hms(2026, 11, 3, 8, 0, 0).unwrap(),
    };
    let out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    let mut w = ctdata_batch::write::NdjsonWriter::new(out, &header).unwrap();
    for (observer, species) in [
        ("=HYPERLINK(\"http://127.0.0.1/x\",\"click\")", "+1"),
        ("@SUM(A1)", "-2"),
        ("T. Mokoena", "Loxodonta africana"),
    ] {
        w.push(&ctdata_batch::Sighting {
            id: uuid::Uuid::new_v4(),
            observed_at: tz.with_ymd_and_hms(2026, 11, 3, 6, 0, 0).unwrap(),
            latitude: -19.5,
            longitude: 16.3,
            altitude: None,
            accuracy: None,
            observer: Some(observer.into()),
            species: Some(species.into()),
            count: Some(1),
            attributes: Default::default(),
        })
        .unwrap();
    }
    w.finish().unwrap().flush().unwrap();
    let up = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {device}"))
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{base}/api/v1/batches"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&up.stdout), "201");

    let cells = |body: &str| -> Vec<(String, String)> {
        let mut r = csv::Reader::from_reader(body.as_bytes());
        r.records()
            .map(|rec| {
                let rec = rec.unwrap();
                (rec[9].to_string(), rec[10].to_string())
            })
            .collect()
    };
    let (status, plain) = get(&format!("{base}/api/v1/sightings?format=csv"), &admin);
    assert_eq!(status, 200);
    let plain = cells(&plain);
    assert_eq!(plain[0].0, "=HYPERLINK(\"http://127.0.0.1/x\",\"click\")");
    let (status, safe) = get(
        &format!("{base}/api/v1/sightings?format=csv&excel_safe=true"),
        &admin,
    );
    assert_eq!(status, 200);
    let safe = cells(&safe);
    assert_eq!(
        safe,
        vec![
            (
                "'=HYPERLINK(\"http://127.0.0.1/x\",\"click\")".to_string(),
                "'+1".to_string()
            ),
            ("'@SUM(A1)".to_string(), "'-2".to_string()),
            ("T. Mokoena".to_string(), "Loxodonta africana".to_string()),
        ]
    );
}
