//! Device and administrator credentials against a real database of each kind.

mod support;

use std::time::Duration;

use ctdata_server::auth::{token_hash, verify_password};
use ctdata_server::credentials;
use ctdata_server::db::Db;
use ctdata_server::dropdir::DropDir;
use ctdata_tests::{both_backends, fixtures, TestDb};
use support::Server;
use tokio_util::sync::CancellationToken;

/// The unrevoked device a token belongs to, as the HTTP API would authenticate it.
async fn active_device(db: &Db, token_hash: &str) -> sqlx::Result<Option<String>> {
    let state = db.device_token_state(token_hash).await?;
    Ok(state.and_then(|(name, revoked)| (!revoked).then_some(name)))
}

async fn open(test_db: &TestDb) -> Db {
    Server::open(test_db).await.db().clone()
}

both_backends! {
    device_tokens_register_rotate_and_revoke,
    devices_seen_in_the_drop_directory_can_be_registered,
    administrators_and_api_tokens,
}

async fn device_tokens_register_rotate_and_revoke(test_db: TestDb) {
    let db = open(&test_db).await;
    let first = credentials::add_device(&db, "ranger-07").await.unwrap();
    assert_eq!(
        active_device(&db, &token_hash(&first))
            .await
            .unwrap()
            .as_deref(),
        Some("ranger-07")
    );
    assert_eq!(
        active_device(&db, &token_hash("ctd_guess")).await.unwrap(),
        None
    );
    let again = credentials::add_device(&db, "ranger-07").await.unwrap_err();
    assert!(again.to_string().contains("already registered"), "{again}");

    let second = credentials::rotate_device(&db, "ranger-07").await.unwrap();
    assert_ne!(first, second);
    assert_eq!(
        active_device(&db, &token_hash(&first)).await.unwrap(),
        None,
        "old token still works"
    );
    assert_eq!(
        active_device(&db, &token_hash(&second))
            .await
            .unwrap()
            .as_deref(),
        Some("ranger-07")
    );

    credentials::revoke_device(&db, "ranger-07").await.unwrap();
    assert_eq!(
        active_device(&db, &token_hash(&second)).await.unwrap(),
        None,
        "revoked token still works"
    );
    assert!(credentials::rotate_device(&db, "ranger-07").await.is_err());
    assert!(credentials::revoke_device(&db, "ranger-07").await.is_err());
    let unknown = credentials::rotate_device(&db, "nobody").await.unwrap_err();
    assert!(
        unknown.to_string().contains("no device named nobody"),
        "{unknown}"
    );

    // Registering again after a revocation gives a fresh token.
    let third = credentials::add_device(&db, "ranger-07").await.unwrap();
    assert_eq!(
        active_device(&db, &token_hash(&third))
            .await
            .unwrap()
            .as_deref(),
        Some("ranger-07")
    );

    for bad in ["", "../etc", "has space", "archive", "receipts", "-dash"] {
        assert!(
            credentials::add_device(&db, bad).await.is_err(),
            "{bad:?} accepted"
        );
    }
    // Tokens are never stored, only their hashes.
    let stored = test_db.texts("SELECT token_hash FROM devices").await;
    assert!(stored
        .iter()
        .flatten()
        .flatten()
        .all(|h| h.len() == 64 && !h.starts_with("ctd_")));
}

async fn devices_seen_in_the_drop_directory_can_be_registered(test_db: TestDb) {
    let db = open(&test_db).await;
    let dir = tempfile::tempdir().unwrap();
    let ingestor =
        ctdata_server::ingest::Ingestor::new(db.clone(), Default::default(), "unassigned");
    let mut drop_dir = DropDir::new(&dir.path().join("CTData"), ingestor, Duration::ZERO).unwrap();
    std::fs::create_dir_all(drop_dir.root().join("ranger-07")).unwrap();
    std::fs::copy(
        fixtures().join("good/json-basic.json"),
        drop_dir.root().join("ranger-07/a.json"),
    )
    .unwrap();
    drop_dir
        .ingest_once(&CancellationToken::new())
        .await
        .unwrap();

    let listed = db.list_devices().await.unwrap();
    assert_eq!(listed.len(), 1);
    let d = &listed[0];
    assert_eq!(
        (d.name.as_str(), d.batches, d.registered),
        ("ranger-07", 1, false)
    );
    assert!(d.sightings > 0 && d.last_seen_at.is_some());
    let table = credentials::device_table(&listed);
    assert!(table.contains("unregistered"), "{table}");

    let token = credentials::add_device(&db, "ranger-07").await.unwrap();
    assert_eq!(
        active_device(&db, &token_hash(&token))
            .await
            .unwrap()
            .as_deref(),
        Some("ranger-07")
    );
    let listed = db.list_devices().await.unwrap();
    assert!(listed[0].registered && listed[0].batches == 1, "{listed:?}");
}

async fn administrators_and_api_tokens(test_db: TestDb) {
    let db = open(&test_db).await;
    credentials::add_admin(&db, "alice", "a long enough password")
        .await
        .unwrap();
    let taken = credentials::add_admin(&db, "alice", "another long password")
        .await
        .unwrap_err();
    assert!(taken.to_string().contains("exists already"), "{taken}");
    let stored = db.admin_password_hash("alice").await.unwrap().unwrap();
    assert!(stored.starts_with("$argon2id$"));
    assert!(verify_password("a long enough password", &stored));
    assert!(!verify_password("a long enough passwore", &stored));

    let token = credentials::admin_token(&db, "alice").await.unwrap();
    assert_eq!(
        db.admin_for_token(&token_hash(&token))
            .await
            .unwrap()
            .as_deref(),
        Some("alice")
    );
    assert_eq!(
        db.admin_for_token(&token_hash("ctd_nope")).await.unwrap(),
        None
    );
    assert!(credentials::admin_token(&db, "bob").await.is_err());
}
