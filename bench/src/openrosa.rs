//! `openrosa`: many phones sending OpenRosa submissions with one photo each (multipart:
//! the XML and the photo), against the same number of bytes uploaded as plain batches
//! to `/api/v1/batches` (one sighting whose attribute carries as many bytes as the
//! photo), by the same clients, to the same server. The point: a submission costs about
//! what a plain upload of its bytes costs, and the photo's size does not show in the
//! server's memory (photos are streamed to disk).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use clap::Args;

use crate::http::Conn;
use crate::pg::TempDb;
use crate::{finish, server_config, workspace, Common};

#[derive(Args)]
pub struct OpenRosaArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent clients, each a device of its own on a keep-alive connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Submissions (and plain uploads) each client sends.
    #[arg(long, default_value_t = 4)]
    per_client: usize,
    /// Size of each photo, in KiB.
    #[arg(long, default_value_t = 200)]
    photo_kib: usize,
    /// Each phase stops sending after this many seconds, done or not.
    #[arg(long, default_value_t = 30)]
    time_limit_secs: u64,
}

struct Phase {
    requests: usize,
    secs: f64,
    bytes: u64,
    latencies: Vec<Duration>,
    peak_rss_kib: u64,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
    fn p99_ms(&self) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i =
            ((self.latencies.len() as f64 * 0.99).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1].as_secs_f64() * 1e3
    }
}

/// A request a client sends: path, content type, body.
type Request = (String, String, Vec<u8>);

fn photo(seed: usize, bytes: usize) -> Vec<u8> {
    let mut x = seed as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0];
    out.extend((4..bytes).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    out
}

fn submission(device: &str, n: usize, photo: &[u8]) -> (String, Vec<u8>) {
    let xml = format!(
        "<?xml version=\"1.0\"?><data id=\"bench\" version=\"1\"><start>2026-12-01T06:00:00.000+02:00</start>\
         <end>2026-12-01T06:01:00.000+02:00</end><where>-23.{n:05} 31.5 300 5</where>\
         <species>zebra</species><photo>p.jpg</photo><meta><instanceID>uuid:{device}-{n}</instanceID></meta></data>"
    );
    let boundary = format!("bench{n:08}");
    let mut body = Vec::with_capacity(photo.len() + xml.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"xml_submission_file\"; \
             filename=\"submission.xml\"\r\nContent-Type: text/xml\r\n\r\n{xml}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"p.jpg\"; filename=\"p.jpg\"\r\n\
             Content-Type: image/jpeg\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(photo);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A batch of one sighting whose `photo` attribute holds as many bytes as the photo
/// (letters, so it stays JSON text).
fn plain_batch(device: &str, n: usize, photo: &[u8]) -> Vec<u8> {
    let text: String = photo.iter().map(|b| (b'a' + b % 26) as char).collect();
    let batch_id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("b{device}{n}").as_bytes(),
    );
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("s{device}{n}").as_bytes(),
    );
    serde_json::json!({
        "ctdata_batch": 1,
        "batch_id": batch_id,
        "device_id": device,
        "created_at": "2026-12-01T06:01:00+02:00",
        "count": 1,
        "sightings": [{
            "id": id,
            "observed_at": "2026-12-01T06:01:00+02:00",
            "latitude": -23.5,
            "longitude": 31.5,
            "species": "zebra",
            "attributes": {"photo": text},
        }],
    })
    .to_string()
    .into_bytes()
}

pub fn run(args: OpenRosaArgs) -> anyhow::Result<()> {
    ensure!(
        args.clients > 0 && args.per_client > 0 && args.photo_kib > 0,
        "sizes must be positive"
    );
    let common = &args.common;
    let (dir, run) = workspace(common, "openrosa")?;
    let limit = Duration::from_secs(args.time_limit_secs);
    let devices: Vec<String> = (0..args.clients)
        .map(|c| format!("phone-{:02}", c + 1))
        .collect();
    let photos: Vec<Vec<u8>> = (0..args.per_client)
        .map(|k| photo(k, args.photo_kib * 1024))
        .collect();

    let mut results = Vec::new();
    for kind in ["plain", "openrosa"] {
        // Each phase on a fresh database and server, so neither inherits the other's rows
        // or memory.
        let db = TempDb::create(&common.pg)?;
        let cfg = server_config(&db, run.path())?;
        cfg.migrate()?;
        let tokens: Vec<String> = devices
            .iter()
            .map(|d| cfg.cli(&["device", "add", d], ""))
            .collect::<anyhow::Result<_>>()?;
        let work: Vec<Vec<Request>> = devices
            .iter()
            .zip(&tokens)
            .map(|(device, token)| {
                photos
                    .iter()
                    .enumerate()
                    .map(|(n, p)| match kind {
                        "plain" => (
                            "/api/v1/batches".to_string(),
                            "application/json".to_string(),
                            plain_batch(device, n, p),
                        ),
                        _ => {
                            let (ct, body) = submission(device, n, p);
                            (format!("/openrosa/key/{token}/submission"), ct, body)
                        }
                    })
                    .collect()
            })
            .collect();
        let server = cfg.serve(
            &dir.join(format!("server-{kind}.log")),
            Duration::from_secs(30),
        )?;
        let phase = drive(server.http_addr()?, &tokens, work, limit)?;
        let stored: usize = db.db.scalar("SELECT count(*) FROM sightings")?;
        ensure!(
            stored == phase.requests,
            "{kind}: {} requests answered 201 but {stored} sightings are stored",
            phase.requests
        );
        let phase = Phase {
            peak_rss_kib: server.peak_rss_kib()?,
            ..phase
        };
        server.stop(Duration::from_secs(60))?;
        eprintln!(
            "{kind}: {} requests in {:.2} s ({:.0}/s, {:.1} MB/s)",
            phase.requests,
            phase.secs,
            phase.per_sec(),
            phase.mb_per_sec()
        );
        results.push(phase);
    }
    let (plain, openrosa) = (&results[0], &results[1]);
    let ratio = openrosa.mb_per_sec() / plain.mb_per_sec();
    let verdict = if ratio >= 0.8 { "ok" } else { "BELOW TARGET" };
    let row = |name: &str, p: &Phase| {
        format!(
            "| {name:<28} | {:>8} | {:>9.1} | {:>7.1} | {:>8.1} | {:>13.1} |",
            p.requests,
            p.per_sec(),
            p.mb_per_sec(),
            p.p99_ms(),
            p.peak_rss_kib as f64 / 1024.0
        )
    };
    let report = [
        format!(
            "CTData OpenRosa: {} clients, {} requests each, one {} KiB photo per submission",
            args.clients, args.per_client, args.photo_kib
        ),
        String::new(),
        "| path                         | requests | per sec   | MB/s    | p99 ms   | peak RSS MiB  |".into(),
        "| ---------------------------- | -------: | --------: | ------: | -------: | ------------: |".into(),
        row("POST /api/v1/batches (plain)", plain),
        row("OpenRosa submission", openrosa),
        String::new(),
        format!("OpenRosa MB/s / plain MB/s = {ratio:.2} (target >= 0.8): {verdict}"),
    ]
    .join("\n");
    finish(&dir, &report)
}

/// Every client on its own keep-alive connection sends its requests in turn; anything
/// but 201 fails the run.
fn drive(
    addr: SocketAddr,
    tokens: &[String],
    work: Vec<Vec<Request>>,
    limit: Duration,
) -> anyhow::Result<Phase> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut conns = Vec::new();
    for _ in &work {
        conns.push(rt.block_on(Conn::connect(addr))?);
    }
    let start = Instant::now();
    let deadline = start + limit;
    let results = rt.block_on(async {
        let tasks: Vec<_> = conns
            .into_iter()
            .zip(work)
            .zip(tokens.iter().cloned())
            .map(|((mut conn, requests), token)| {
                tokio::spawn(async move {
                    let auth = format!("Bearer {token}");
                    let mut lat = Vec::new();
                    let mut bytes = 0u64;
                    for (path, ct, body) in requests {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let sent = Instant::now();
                        let headers = [
                            ("Authorization", auth.as_str()),
                            ("Content-Type", ct.as_str()),
                        ];
                        conn.send("POST", &path, &headers, &body).await?;
                        let head = conn.head().await?;
                        let answer = conn.body_text(&head).await?;
                        lat.push(sent.elapsed());
                        if head.status != 201 {
                            bail!("POST {path} answered {}: {answer}", head.status);
                        }
                        bytes += body.len() as u64;
                    }
                    anyhow::Ok((lat, bytes))
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await??);
        }
        anyhow::Ok(all)
    })?;
    let secs = start.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut bytes = 0;
    for (lat, b) in results {
        latencies.extend(lat);
        bytes += b;
    }
    latencies.sort();
    Ok(Phase {
        requests: latencies.len(),
        secs,
        bytes,
        latencies,
        peak_rss_kib: 0,
    })
}
