//! Driving the embedded FTP server from tests: Python's ftplib through a small script,
//! curl, and what the database holds afterwards.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::{eventually, TestDb};

const FTPLIB: &str = include_str!("ftplib_ops.py");

/// Runs FTP operations (a JSON list such as `[["login", USER, TOKEN], ["stor", LOCAL,
/// REMOTE]]`) with Python's ftplib against 127.0.0.1:`port`, over TLS when `tls`;
/// returns one result per operation: `{"ok": …}` or `{"err": "550 …"}`.
pub fn ftplib(port: u16, tls: bool, ops: Value) -> Vec<Value> {
    let out = Command::new("python3")
        .args(["-c", FTPLIB, &port.to_string()])
        .arg(if tls { "tls" } else { "plain" })
        .arg(ops.to_string())
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    match serde_json::from_str::<Value>(last) {
        Ok(Value::Array(results)) => results,
        _ => panic!(
            "ftplib script failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Uploads `local` as a careful device does, with ftplib: to `NAME.part`, then renamed
/// to `name`; every step must succeed.
pub fn put_by_rename(port: u16, device: &str, token: &str, local: &Path, name: &str) {
    let part = format!("{name}.part");
    let r = ftplib(
        port,
        false,
        serde_json::json!([
            ["login", device, token],
            ["stor", local.display().to_string(), part],
            ["rename", part, name],
        ]),
    );
    assert!(r.iter().all(ok), "{r:?}");
}

pub fn ok(r: &Value) -> bool {
    r.get("ok").is_some()
}

/// The reply code of a refused operation.
pub fn code(r: &Value) -> String {
    r["err"].as_str().unwrap_or("").chars().take(3).collect()
}

pub fn ftp_url(port: u16, user: &str, token: &str, path: &str) -> String {
    format!("ftp://{user}:{token}@127.0.0.1:{port}{path}")
}

pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl")
}

/// `(device, channel, file_name)` of every stored batch, in arrival order.
pub async fn stored(db: &TestDb) -> Vec<(String, String, String)> {
    db.texts(
        "SELECT d.name, b.channel, b.file_name FROM batches b JOIN devices d ON d.id = b.device_id ORDER BY b.id",
    )
    .await
    .into_iter()
    .map(|r| {
        let t = |i: usize| r[i].clone().unwrap_or_default();
        (t(0), t(1), t(2))
    })
    .collect()
}

pub async fn wait_for_batches(db: &TestDb, n: usize) -> Vec<(String, String, String)> {
    eventually(
        &format!("{n} stored batches"),
        Duration::from_secs(60),
        || async {
            let rows = stored(db).await;
            (rows.len() >= n).then_some(rows)
        },
    )
    .await
}
