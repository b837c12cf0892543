//! `GET /api/v1/sightings` over real HTTP: filters that no database can take are a 400,
//! and `excel_safe` keeps spreadsheets from running cells as formulas.

use ctdata_tests::{both_backends, Batch, ServerEnv, TestDb};

both_backends! {
    nul_in_a_filter_is_a_bad_request,
    excel_safe_csv_neutralises_formula_cells,
}

async fn nul_in_a_filter_is_a_bad_request(db: TestDb) {
    let env = ServerEnv::new(&db);
    let admin = env.admin_token();
    let server = env.serve().await;
    let api = server.api();
    for filter in ["device=ranger%0007", "species=Lox%00odonta", "from=2024%00"] {
        let reply = api
            .get(&format!("/api/v1/sightings?{filter}"), &admin)
            .await;
        assert_eq!(reply.status, 400, "{filter}: {}", reply.body);
        assert!(reply.body.contains("NUL"), "{filter}: {}", reply.body);
    }
    let reply = api.get("/api/v1/sightings?device=ranger-07", &admin).await;
    assert_eq!(reply.status, 200);
}

async fn excel_safe_csv_neutralises_formula_cells(db: TestDb) {
    let env = ServerEnv::new(&db);
    let admin = env.admin_token();
    let device = env.device_token("ranger-07");
    let server = env.serve().await;
    let api = server.api();

    let cells = [
        ("=HYPERLINK(\"http://127.0.0.1/x\",\"click\")", "+1"),
        ("@SUM(A1)", "-2"),
        ("T. Mokoena", "Loxodonta africana"),
    ];
    let batch = Batch::new("ranger-07", cells.len()).each(|n, s| {
        s.observer = Some(cells[n].0.into());
        s.species = Some(cells[n].1.into());
    });
    assert_eq!(api.post_batch(&device, batch.ndjson()).await.status, 201);

    let cells = |body: &str| -> Vec<(String, String)> {
        let mut r = csv::Reader::from_reader(body.as_bytes());
        r.records()
            .map(|rec| {
                let rec = rec.unwrap();
                (rec[9].to_string(), rec[10].to_string())
            })
            .collect()
    };
    let plain = api.get("/api/v1/sightings?format=csv", &admin).await;
    assert_eq!(plain.status, 200);
    let plain = cells(&plain.body);
    assert_eq!(plain[0].0, "=HYPERLINK(\"http://127.0.0.1/x\",\"click\")");
    let safe = api
        .get("/api/v1/sightings?format=csv&excel_safe=true", &admin)
        .await;
    assert_eq!(safe.status, 200);
    let safe = cells(&safe.body);
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
