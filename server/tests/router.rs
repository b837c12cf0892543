//! The HTTP API in process: requests go to the app router with `oneshot`, no socket, a
//! fresh database of each kind per test. What is about the wire (TLS, slow bodies,
//! connection limits, curl as the peer) is in the black-box tests of `ctdata-tests`.

mod support;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use ctdata_tests::{both_backends, Batch, TestDb};
use http_body_util::BodyExt;
use serde_json::Value;
use support::Server;
use tower::ServiceExt;

both_backends! {
    health_and_readiness_answer,
    an_upload_is_stored_once_then_a_duplicate,
    an_invalid_upload_is_rejected_with_the_reason,
    wrong_or_missing_credentials_are_refused,
}

/// Sends one request to a fresh app; the status and the body as JSON (`Null` when it
/// is not JSON) and as text.
async fn call(server: &Server, request: Request<Body>) -> (StatusCode, Value, String) {
    let response = server.app().oneshot(request).await.expect("an answer");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

fn get(uri: &str, token: &str) -> Request<Body> {
    request(Method::GET, uri, token, Body::empty())
}

fn request(method: Method, uri: &str, token: &str, body: Body) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if !token.is_empty() {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(body).expect("a request")
}

fn upload(token: &str, bytes: Vec<u8>) -> Request<Body> {
    request(Method::POST, "/api/v1/batches", token, Body::from(bytes))
}

async fn health_and_readiness_answer(db: TestDb) {
    let server = Server::open(&db).await;
    let (status, _, text) = call(&server, get("/healthz", "")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, _, text) = call(&server, get("/readyz", "")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, doc, _) = call(&server, get("/api/v1/openapi.json", "")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/v1/batches"].is_object(), "{doc}");
}

async fn an_upload_is_stored_once_then_a_duplicate(db: TestDb) {
    let server = Server::open(&db).await;
    let token = ctdata_server::credentials::add_device(server.db(), "ranger-07")
        .await
        .unwrap();
    let batch = Batch::new("ranger-07", 3);

    let (status, receipt, text) = call(&server, upload(&token, batch.ndjson())).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(receipt["status"], "ingested", "{text}");
    assert_eq!(receipt["channel"], "http");
    assert_eq!(receipt["device"], "ranger-07");
    assert_eq!(receipt["batch_id"], batch.id().to_string());
    assert_eq!(
        (receipt["sightings"].as_i64(), receipt["inserted"].as_i64()),
        (Some(3), Some(3))
    );

    // The same bytes again: answered 200, nothing added.
    let (status, receipt, text) = call(&server, upload(&token, batch.ndjson())).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(receipt["status"], "duplicate", "{text}");
    assert_eq!(receipt["inserted"].as_i64(), Some(0));
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 3);
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 1);

    // Its device sees itself; an administrator sees the batch.
    let (status, me, _) = call(&server, get("/api/v1/whoami", &token)).await;
    assert_eq!(
        (status, me["device"].as_str()),
        (StatusCode::OK, Some("ranger-07")),
        "{me}"
    );
    ctdata_server::credentials::add_admin(server.db(), "alice", "a long enough password")
        .await
        .unwrap();
    let admin = ctdata_server::credentials::admin_token(server.db(), "alice")
        .await
        .unwrap();
    let (status, list, text) = call(&server, get("/api/v1/batches?device=ranger-07", &admin)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

async fn an_invalid_upload_is_rejected_with_the_reason(db: TestDb) {
    let server = Server::open(&db).await;
    let token = ctdata_server::credentials::add_device(server.db(), "ranger-07")
        .await
        .unwrap();
    // Cut short: the trailer that closes an NDJSON batch is missing.
    let whole = Batch::new("ranger-07", 3).ndjson();
    let text = String::from_utf8(whole).unwrap();
    let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();

    let (status, receipt, text) = call(&server, upload(&token, cut.into_bytes())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert_eq!(receipt["status"], "rejected", "{text}");
    let reason = receipt["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("trailer"), "{reason}");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 0);
    assert_eq!(db.scalar("SELECT count(*) FROM rejections").await, 1);
    // The file is kept for the administrator, with its reason.
    let kept = ctdata_tests::rejected_reasons(&server.drop_root());
    assert_eq!(kept.len(), 1, "{kept:?}");
}

async fn wrong_or_missing_credentials_are_refused(db: TestDb) {
    let server = Server::open(&db).await;
    let token = ctdata_server::credentials::add_device(server.db(), "ranger-07")
        .await
        .unwrap();
    let batch = Batch::new("ranger-07", 1).ndjson();
    for wrong in ["", "ctd_not-a-token"] {
        let (status, body, text) = call(&server, upload(wrong, batch.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}: {text}");
        assert_eq!(body["error"], "unauthorized", "{text}");
    }
    // A device token is not an administrator's.
    let (status, _, text) = call(&server, get("/api/v1/batches", &token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    // A batch that names another device is refused.
    let other = Batch::new("ranger-08", 1).ndjson();
    let (status, _, text) = call(&server, upload(&token, other)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 0);
}
