//! The field client `ctdata` (the real binary) against the real `ctdata-server serve`
//! on PostgreSQL: record → send → rows in the database, over HTTP and a share; server
//! down and back; refused batches moved aside; the connection test.

use std::time::Duration;

use ctdata_tests::client::Client;
use ctdata_tests::{eventually, pg, Batch, ServerEnv, TestDb};

fn sightings(db: &TestDb) -> impl std::future::Future<Output = i64> + '_ {
    db.scalar("SELECT count(*) FROM sightings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_sightings_reach_the_database_exactly_once() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let (client, _) = Client::sending_to(&env, &server, "ranger-07");
    client.record(3, "Loxodonta africana");
    client.ok(&[
        "record",
        "--species",
        "Panthera leo",
        "--lat",
        "-24.1",
        "--lon",
        "31.2",
        "--observer",
        "M. Baloyi",
        "--at",
        "2024-05-01T06:30:00+02:00",
        "--attr",
        "sex=F",
        "--attr",
        "age=3",
    ]);
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 1 batch (4 sightings"), "{out}");
    assert!(out.contains("nothing pending"), "{out}");
    assert_eq!(sightings(&db).await, 4);
    let attrs = db
        .texts("SELECT attributes::text FROM sightings WHERE species = 'Panthera leo'")
        .await;
    let attrs: serde_json::Value = serde_json::from_str(attrs[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(attrs, serde_json::json!({"sex": "F", "age": 3}));
    assert!(client.batches_in("outbox").is_empty());
    let sent = client.batches_in("sent");
    assert_eq!(sent.len(), 1);
    assert!(sent[0].starts_with("000001-"), "{sent:?}");
    let batch = std::fs::read_to_string(client.path("sent").join(&sent[0])).unwrap();
    assert!(
        batch.lines().next().unwrap().contains("\"sequence\":1"),
        "{batch}"
    );

    // Sending again adds nothing; so does the same batch put back in the outbox.
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 0 batches"), "{out}");
    std::fs::copy(
        client.path("sent").join(&sent[0]),
        client.path("outbox").join(&sent[0]),
    )
    .unwrap();
    let out = client.ok(&["send"]);
    assert!(out.contains("1 already there"), "{out}");
    assert_eq!(sightings(&db).await, 4);
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 1);

    // The next batch gets the next number.
    client.record(2, "Syncerus caffer");
    client.ok(&["seal"]);
    let status = client.ok(&["status"]);
    assert!(status.contains("pending: 1 batch, 2 sightings"), "{status}");
    assert!(status.contains("autosend: not running"), "{status}");
    client.ok(&["send"]);
    assert!(client
        .batches_in("sent")
        .iter()
        .any(|f| f.starts_with("000002-")));
    assert_eq!(sightings(&db).await, 6);
    let status = client.ok(&["status"]);
    assert!(
        status.contains("pending: 0 batches, 0 sightings"),
        "{status}"
    );
    assert!(status.contains("last successful send: 20"), "{status}");
    assert!(client.log_text().contains("delivered (2 sightings)"));
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_leaves_the_batch_pending_until_it_is_back() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    let server = env.serve().await;
    let (client, _) = Client::sending_to(&env, &server, "ranger-07");
    let base = server.http_base();
    assert!(server.terminate().success());
    client.record(2, "Loxodonta africana");
    let out = client.run(&["send", "--retries", "1", "--retry-delay", "100ms"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("1 batch pending"), "{stdout}");
    assert!(stdout.contains("connection refused"), "{stdout}");
    assert_eq!(client.batches_in("outbox").len(), 1);
    let status = client.ok(&["status"]);
    assert!(status.contains("pending: 1 batch, 2 sightings"), "{status}");
    assert!(status.contains("last error: 20"), "{status}");
    assert!(client.log_text().contains("try 1 failed"));

    // Back on the same port: the same batch goes, once.
    let port = base.rsplit(':').next().unwrap().to_string();
    env.extra_env
        .push(("CTDATA__HTTP__BIND".into(), format!("127.0.0.1:{port}")));
    let server = env.serve().await;
    assert_eq!(server.http_base(), base);
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 1 batch (2 sightings"), "{out}");
    assert_eq!(sightings(&db).await, 2);
    assert!(client.batches_in("outbox").is_empty());
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_the_server_refuses_are_moved_aside_with_the_reason() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let (client, _) = Client::sending_to(&env, &server, "ranger-07");
    client.record(1, "Loxodonta africana");
    client.ok(&["send"]);
    let first = client.batches_in("sent").remove(0);

    // A file cut short (no trailer) → 422; the first batch's id with other rows → 409.
    let sent = std::fs::read_to_string(client.path("sent").join(&first)).unwrap();
    let cut: Vec<&str> = sent.lines().take(2).collect();
    std::fs::write(
        client.path("outbox/000100-cut.ndjson"),
        cut.join("\n") + "\n",
    )
    .unwrap();
    let header: serde_json::Value = serde_json::from_str(sent.lines().next().unwrap()).unwrap();
    let mut again = Batch::new("ranger-07", 1).each(|_, s| s.species = Some("Other".into()));
    again.header.batch_id = header["batch_id"].as_str().unwrap().parse().unwrap();
    std::fs::write(client.path("outbox/000101-again.ndjson"), again.json()).unwrap();

    let out = client.ok(&["send"]);
    assert!(out.contains("2 rejected"), "{out}");
    assert!(out.contains("nothing pending"), "{out}");
    assert!(client.batches_in("outbox").is_empty());
    assert_eq!(
        client.batches_in("rejected"),
        ["000100-cut.ndjson", "000101-again.ndjson"]
    );
    let reason = |f: &str| std::fs::read_to_string(client.path("rejected").join(f)).unwrap();
    let cut_reason = reason("000100-cut.ndjson.reason.txt");
    assert!(cut_reason.starts_with("422"), "{cut_reason}");
    assert!(cut_reason.contains("trailer"), "{cut_reason}");
    let again = reason("000101-again.ndjson.reason.txt");
    assert!(again.starts_with("409"), "{again}");
    let status = client.ok(&["status"]);
    assert!(
        status.contains("rejected: 000101-again.ndjson: 409"),
        "{status}"
    );
    assert_eq!(sightings(&db).await, 1);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_into_a_mounted_share() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    let server = env.serve().await;
    let client = Client::new();
    client.init_share(&env.drop_dir(), "ranger-07", &[]);
    let test = client.ok(&["test"]);
    assert!(test.contains("✓ write and delete a probe file"), "{test}");
    client.record(3, "Loxodonta africana");
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 1 batch (3 sightings"), "{out}");
    eventually(
        "the server to ingest the shared batch",
        Duration::from_secs(30),
        || async { (sightings(&db).await == 3).then_some(()) },
    )
    .await;
    // The server writes its receipt just after the commit.
    eventually("the server's receipt", Duration::from_secs(30), || async {
        client
            .ok(&["status"])
            .contains("server receipts for them: 1 stored, 0 already stored before, 0 refused")
            .then_some(())
    })
    .await;
    let devices = db.texts("SELECT name FROM devices").await;
    assert_eq!(devices, [[Some("ranger-07".to_string())]]);
    assert!(ctdata_tests::rejected_reasons(&env.drop_dir()).is_empty());

    // A share that is not mounted: nothing is lost, the cause is named.
    let gone = env.dir.path().join("not-mounted/CTData");
    client.init_share(&gone, "ranger-07", &[]);
    client.record(1, "Loxodonta africana");
    let out = client.run(&["send", "--retries", "0"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("is not there (is the share mounted?)"),
        "{stdout}"
    );
    assert_eq!(client.batches_in("outbox").len(), 1);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_test_names_the_failing_step() {
    let Some(db) = pg().await else { return };
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let base = server.http_base();
    let client = Client::new();

    client.init_https(&base, "ranger-07", &token);
    let good = client.ok(&["test"]);
    for step in ["✓ resolve host", "✓ connect", "✓ server health", "✓ log in"] {
        assert!(good.contains(step), "{good}");
    }
    assert!(good.contains("accepted for device ranger-07"), "{good}");

    let wrong = format!("ctd_{}", "0".repeat(64));
    client.init_https(&base, "ranger-07", &wrong);
    let out = client.run(&["test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("✓ server health"), "{text}");
    assert!(
        text.contains("✗ log in: the server does not accept this token"),
        "{text}"
    );

    assert!(server.terminate().success());
    client.init_https(&base, "ranger-07", &token);
    let out = client.run(&["test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("✓ resolve host"), "{text}");
    assert!(text.contains("✗ connect: "), "{text}");
    assert!(text.contains("refused the connection"), "{text}");
    assert!(!text.contains("log in"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_https_to_a_server_with_its_own_certificate() {
    let Some(db) = pg().await else { return };
    let mut env = ServerEnv::new(&db);
    let cert = env.enable_https();
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let base = server.http_base();
    assert!(base.starts_with("https://"), "{base}");
    let client = Client::new();

    // Not trusted yet: the TLS step says so, and nothing is sent in the clear.
    client.init_https(&base, "ranger-07", &token);
    let out = client.run(&["test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("✓ connect"), "{text}");
    assert!(
        text.contains("✗ TLS: the secure connection failed"),
        "{text}"
    );
    assert!(text.contains("--ca-file"), "{text}");
    client.record(2, "Loxodonta africana");
    let out = client.run(&["send", "--retries", "0"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("TLS"), "{stdout}");

    client.ok(&[
        "init",
        "--protocol",
        "https",
        "--url",
        &base,
        "--device",
        "ranger-07",
        "--token",
        &token,
        "--ca-file",
        cert.to_str().unwrap(),
    ]);
    let text = client.ok(&["test"]);
    assert!(
        text.contains("✓ TLS: certificate valid for 127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("all steps passed"), "{text}");
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 1 batch (2 sightings"), "{out}");
    assert_eq!(sightings(&db).await, 2);
    assert!(server.terminate().success());
}
