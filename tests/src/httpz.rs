//! CyberTracker Classic's HTTPZ upload, as SMART Connect sends it too: one POST of
//! deflated (zlib) JSON with Basic auth.

use std::io::Write;
use std::path::Path;

use flate2::write::ZlibEncoder;
use serde_json::Value;

use crate::ftp::curl;

/// `bytes` deflated with a zlib header, as HTTPZ sends a body.
pub fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// POSTs the deflated file `body` to `/api/v1/batches` as `device`: Basic auth, JSON,
/// `Content-Encoding: deflate`. Returns the status and the JSON answer.
pub fn post(base: &str, device: &str, token: &str, body: &Path) -> (u16, Value) {
    let out = curl(&[
        "-u",
        &format!("{device}:{token}"),
        "-H",
        "Content-Type: application/json",
        "-H",
        "Content-Encoding: deflate",
        "--data-binary",
        &format!("@{}", body.display()),
        "-w",
        "\n%{http_code}",
        &format!("{base}/api/v1/batches"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (json, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(json).unwrap())
}
