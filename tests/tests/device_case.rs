//! Device names are one in any letter case, at ingest as at registration: batches that
//! name "Ranger-1" while "ranger-1" is registered are stored as "ranger-1", over HTTP and
//! through the drop directory, and no second device is created.

use std::process::Command;
use std::time::Duration;

use ctdata_tests::{both_backends, eventually, write_batch, ServerEnv, TestDb};

both_backends! {
    a_batch_naming_a_device_in_another_case_is_stored_as_that_device,
}

async fn a_batch_naming_a_device_in_another_case_is_stored_as_that_device(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-1");
    let server = env.serve().await;

    // Over HTTP, sent by ranger-1, its header saying "Ranger-1".
    let file = env.dir.path().join("upload.ndjson");
    write_batch(&file, "Ranger-1", 3);
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{}/api/v1/batches", server.http_base()))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n201"), "{text}");
    assert!(text.contains("\"device\":\"ranger-1\""), "{text}");

    // Through the drop directory, in a folder spelled as the header.
    let folder = env.drop_dir().join("Ranger-1");
    std::fs::create_dir_all(&folder).expect("folder");
    let staged = env.dir.path().join("dropped.ndjson");
    write_batch(&staged, "Ranger-1", 2);
    std::fs::rename(&staged, folder.join("dropped.ndjson")).expect("drop");

    let sql = "SELECT d.name FROM batches b JOIN devices d ON d.id = b.device_id ORDER BY b.id";
    let stored = eventually("both batches stored", Duration::from_secs(60), || async {
        let rows = db.texts(sql).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let names: Vec<_> = stored.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(names, ["ranger-1", "ranger-1"]);
    assert_eq!(
        db.texts("SELECT name FROM devices ORDER BY id").await,
        vec![vec![Some("ranger-1".to_string())]],
        "no second device in another letter case"
    );
    assert!(server.terminate().success());
}
