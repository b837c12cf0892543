//! Talking to ctdata-server over HTTP(S): one client setup, batch upload and its
//! answers, and errors explained in plain words.

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use ctdata_api::{ErrorBody, Receipt};
use indicatif::ProgressBar;
use reqwest::StatusCode;

use crate::config::Endpoint;
use crate::send::{Outcome, Proof};

/// Names the handheld a relayed batch was recorded by (send on sync).
pub const RELAY_HEADER: &str = "X-CTData-Relay-For";

/// A client for `endpoint`: rustls with the public roots plus the endpoint's own
/// `ca_file` (pinned), bounded connect and read times.
pub fn client(endpoint: &Endpoint) -> anyhow::Result<reqwest::Client> {
    let tls = crate::pinned::client_config(endpoint).map_err(anyhow::Error::msg)?;
    let builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(concat!("ctdata/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        // A link that goes silent (no reset) is noticed in seconds, not minutes: TCP
        // keepalive probes, and no answer byte for this long ends the request.
        .tcp_keepalive(Duration::from_secs(5))
        .read_timeout(crate::resume::STALL);
    Ok(builder.build()?)
}

/// POSTs one (small) batch file, gzipped above a few KB; the answer decides where the
/// batch goes next. Also returns the bytes put on the wire.
pub async fn post_batch(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    token: &str,
    path: &Path,
    relay: Option<&str>,
    progress: &ProgressBar,
) -> (Outcome, u64) {
    let url = format!("{}/api/v1/batches", endpoint.base());
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) => {
            return (
                Outcome::Stop(format!("cannot read {}: {e}", path.display())),
                0,
            )
        }
    };
    // Compressed when it is worth it: the server reads gzip by its content.
    // A batch that is gzip already (a docked handheld's `.ndjson.gz`) goes as it is:
    // the server inflates one layer.
    let already = bytes.starts_with(&[0x1f, 0x8b]);
    let (body, gzipped) = if !already && bytes.len() as u64 > crate::resume::COMPRESS_ABOVE {
        match crate::resume::gzip(&bytes) {
            Ok(gz) => (gz, true),
            Err(_) => (bytes, false),
        }
    } else {
        (bytes, false)
    };
    let wire = body.len() as u64;
    progress.set_message("sending…");
    let mut request = client
        .post(&url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
        .timeout(crate::resume::STALL + Duration::from_secs(wire / 8192));
    if gzipped {
        request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
    }
    if let Some(device) = relay {
        // The handheld that recorded it: a docked CSV or GeoJSON names no device.
        request = request.header(RELAY_HEADER, device);
    }
    let sent = request.body(body).send().await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => return (Outcome::Retry(describe(&e, &endpoint.url)), wire),
    };
    progress.set_message("stored by the server");
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    (classify(status, &Answer::read(&body), &endpoint.url), wire)
}

/// The outcome of an answer to a batch (a POST, or a resumable upload's last piece).
pub fn classify_answer(status: StatusCode, body: &[u8], url: &str) -> Outcome {
    classify(status, &Answer::read(body), url)
}

/// The server answers a batch with its receipt (stored, or refused for what is in it)
/// or with an error body (credentials, limits, trouble).
enum Answer {
    Receipt(Box<Receipt>),
    Error(ErrorBody),
    /// Not a ctdata-server answer (a proxy's page, say).
    Other,
}

impl Answer {
    fn read(body: &[u8]) -> Answer {
        if let Ok(receipt) = serde_json::from_slice(body) {
            Answer::Receipt(Box::new(receipt))
        } else if let Ok(error) = serde_json::from_slice(body) {
            Answer::Error(error)
        } else {
            Answer::Other
        }
    }

    fn kind(&self) -> Option<&str> {
        match self {
            Answer::Receipt(r) => r.kind.as_deref(),
            _ => None,
        }
    }
}

fn classify(status: StatusCode, answer: &Answer, url: &str) -> Outcome {
    let why = match answer {
        Answer::Receipt(r) => r.reason.clone(),
        Answer::Error(e) => Some(e.message.clone()),
        Answer::Other => None,
    }
    .unwrap_or_else(|| format!("the server answered {status}"));
    match status.as_u16() {
        200 | 201 => match answer {
            Answer::Receipt(receipt) => Outcome::Delivered {
                duplicate: status == StatusCode::OK,
                receipt: Proof::Receipt(receipt.clone()),
            },
            _ => Outcome::Stop(format!(
                "{url} answered {status} without a receipt: is it a ctdata-server?"
            )),
        },
        409 | 413 | 415 | 422 => Outcome::Refused(format!("{status}: {why}")),
        403 if answer.kind() == Some("device_mismatch") => {
            Outcome::Refused(format!("{status}: {why}"))
        }
        // A docked handheld's batch this station may not relay: that batch is refused,
        // the station's other batches still go.
        403 if why.contains("may relay only for") || why.contains("may not relay for") => {
            Outcome::Refused(format!("{status}: {why}"))
        }
        401 => Outcome::Stop(format!(
            "{url} does not accept this device's token ({why}): check the token \
             (`ctdata init`) or ask the administrator for a new one"
        )),
        403 => Outcome::Stop(format!("{url} refused this device: {why}")),
        408 | 429 => Outcome::Retry(format!("{url} is busy ({status}): {why}")),
        s if s >= 500 => Outcome::Retry(format!("{url} failed ({status}): {why}")),
        _ => Outcome::Stop(format!("{url} answered {status}: {why}")),
    }
}

/// What went wrong with a request, in the user's terms rather than the library's.
pub fn describe(e: &reqwest::Error, url: &str) -> String {
    let mut chain = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push(s.to_string());
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return format!(
                    "cannot reach {url}: connection refused (nothing is listening there: \
                     is the server running, and is the port right?)"
                );
            }
        }
        source = s.source();
    }
    let detail = chain.last().cloned().unwrap_or_else(|| e.to_string());
    let all = chain.join(": ").to_lowercase();
    if e.is_timeout() {
        format!("{url} did not answer in time (timed out): {detail}")
    } else if all.contains("dns") || all.contains("lookup address") {
        format!("cannot find the host of {url} (name lookup failed): {detail}")
    } else if all.contains("certificate") || all.contains("tls") || all.contains("handshake") {
        format!(
            "the secure connection (TLS) to {url} failed: {}",
            crate::pinned::explain(&detail)
        )
    } else if e.is_connect() {
        format!("cannot connect to {url}: {detail}")
    } else {
        format!("talking to {url} failed: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://ctdata.example";

    fn classify_text(status: u16, body: &str) -> Outcome {
        let status = StatusCode::from_u16(status).unwrap();
        classify(status, &Answer::read(body.as_bytes()), URL)
    }

    #[test]
    fn answers_decide_where_a_batch_goes() {
        let stored = r#"{"status":"ingested","file":"upload","channel":"http","device":"r7",
            "sightings":2,"inserted":2,"duplicates":0,"received_at":"2026-01-02T03:04:05Z"}"#;
        match classify_text(201, stored) {
            Outcome::Delivered {
                duplicate: false,
                receipt: Proof::Receipt(r),
            } => assert_eq!((r.inserted, r.device.as_deref()), (2, Some("r7"))),
            other => panic!("{other:?}"),
        }
        let refused = r#"{"status":"rejected","file":"upload","channel":"http","sightings":0,
            "inserted":0,"duplicates":0,"received_at":"2026-01-02T03:04:05Z",
            "reason":"line 3: lat 91 is out of range","kind":"invalid"}"#;
        assert!(
            matches!(classify_text(422, refused), Outcome::Refused(why) if why.contains("lat 91"))
        );
        let error = r#"{"error":"unauthorized","message":"unknown device or wrong token"}"#;
        assert!(
            matches!(classify_text(401, error), Outcome::Stop(why) if why.contains("wrong token"))
        );
        assert!(matches!(classify_text(503, "<html>"), Outcome::Retry(_)));
        // A 200 that is not a receipt (a captive portal, a proxy) is not a delivery.
        assert!(matches!(classify_text(200, "<html>"), Outcome::Stop(_)));
    }
}
