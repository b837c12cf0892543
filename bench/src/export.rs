//! `export`: the administrator's Download (`GET /api/v1/sightings?format=csv`) of every
//! stored row, against `psql \copy (SELECT … the same columns, joined …) TO STDOUT CSV`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use crate::data::{self, FileSpec};
use crate::http::Conn;
use crate::pg::Psql;
use crate::server::Server;
use crate::sys::{CpuSample, CpuUse};

/// What one export delivered, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct Download {
    pub secs: f64,
    pub bytes: u64,
    /// Data lines (the header line not counted).
    pub rows: u64,
    /// Request sent → first byte of the answer (the status line).
    pub first_byte: Duration,
    /// Request sent → first byte of the body (the CSV header line).
    pub first_body_byte: Duration,
    pub cpu: CpuUse,
}

impl Download {
    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.secs
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
}

/// The server's side of an HTTP export: its CPU and memory while it ran.
#[derive(Debug, Clone, Copy)]
pub struct ServerSide {
    pub cpu_secs: f64,
    /// `VmRSS` just before the request.
    pub rss_before_kib: u64,
    /// Highest `VmRSS` sampled (every 5 ms) during the export.
    pub rss_peak_kib: u64,
    /// `VmHWM` after the export.
    pub hwm_after_kib: u64,
}

impl ServerSide {
    pub fn growth_mb(&self) -> f64 {
        self.rss_peak_kib.saturating_sub(self.rss_before_kib) as f64 * 1024.0 / 1e6
    }
}

/// Loads `specs`' rows straight into `sightings` with `\copy` (after the server's
/// migrations), with a `batches` row per file and a `devices` row per device, as if the
/// server had ingested them. Returns the row count.
pub fn load(db: &Psql, csv: &Path, seed: u64, specs: &[FileSpec]) -> anyhow::Result<u64> {
    let mut devices: Vec<&str> = specs.iter().map(|s| s.device.as_str()).collect();
    devices.sort();
    devices.dedup();
    let names: Vec<String> = devices.iter().map(|d| format!("('{d}')")).collect();
    db.run(&format!(
        "INSERT INTO devices (name) VALUES {} ON CONFLICT (name) DO NOTHING",
        names.join(", ")
    ))?;
    let batches: Vec<String> = specs
        .iter()
        .map(|s| {
            format!(
                "('{}'::uuid, '{}', 'batch-{:03}.ndjson', {})",
                data::batch_id(seed, s),
                s.device,
                s.index,
                s.rows
            )
        })
        .collect();
    db.run(&format!(
        "INSERT INTO batches (device_id, batch_id, sha256, format, channel, file_name, \
         row_count, inserted, duplicates) \
         SELECT d.id, v.batch_id, 'bench', 'ndjson', 'bench', v.file, v.n, v.n, 0 \
         FROM (VALUES {}) AS v (batch_id, device, file, n) JOIN devices d ON d.name = v.device",
        batches.join(", ")
    ))?;
    let stored = db.stored_batches()?;
    data::write_csv(csv, seed, specs, &stored)?;
    let path = csv.to_str().context("CSV path is not UTF-8")?;
    ensure!(!path.contains('\''), "CSV path must not contain a quote");
    db.run(&format!(
        "\\copy sightings (id, batch, device_id, observed_at, observed_offset, latitude, \
         longitude, altitude, accuracy, observer, species, count, attributes) \
         FROM '{path}' WITH (FORMAT csv)"
    ))?;
    db.run(
        "UPDATE batches b SET cursor_first = c.lo, cursor_last = c.hi \
         FROM (SELECT batch, min(cursor) AS lo, max(cursor) AS hi FROM sightings GROUP BY batch) c \
         WHERE c.batch = b.id",
    )?;
    db.scalar("SELECT count(*) FROM sightings")
}

/// `GET /api/v1/sightings?format=csv` to nowhere, counting bytes and lines, while a
/// thread samples the server's resident set size.
pub fn over_http(server: &Server, token: &str) -> anyhow::Result<(Download, ServerSide)> {
    let addr = server.http_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut conn = rt.block_on(Conn::connect(addr))?;
    let auth = format!("Bearer {token}");
    let rss_before_kib = server.rss_kib()?;
    let cpu_before = CpuSample::now()?;
    let server_cpu_before = server.cpu_secs()?;
    let done = AtomicBool::new(false);

    let (download, rss_peak_kib) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(server.rss_kib().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        let result = rt.block_on(async {
            let start = Instant::now();
            conn.send(
                "GET",
                "/api/v1/sightings?format=csv",
                &[("Authorization", &auth)],
                b"",
            )
            .await?;
            let head = conn.head().await?;
            let first_byte = start.elapsed();
            if head.status != 200 {
                let text = conn.body_text(&head).await.unwrap_or_default();
                anyhow::bail!("download answered {}: {text}", head.status);
            }
            let mut first_body_byte = None;
            let mut lines = 0u64;
            let bytes = conn
                .body(&head, |chunk| {
                    first_body_byte.get_or_insert_with(|| start.elapsed());
                    lines += count_lines(chunk);
                })
                .await?;
            let secs = start.elapsed().as_secs_f64();
            anyhow::Ok((secs, bytes, lines, first_byte, first_body_byte))
        });
        done.store(true, Ordering::Relaxed);
        let peak = sampler.join().unwrap_or(0);
        result.map(|r| (r, peak))
    })?;
    let (secs, bytes, lines, first_byte, first_body_byte) = download;
    let cpu = cpu_before.until(&CpuSample::now()?);
    let side = ServerSide {
        cpu_secs: server.cpu_secs()? - server_cpu_before,
        rss_before_kib,
        rss_peak_kib: rss_peak_kib.max(rss_before_kib),
        hwm_after_kib: server.peak_rss_kib()?,
    };
    Ok((
        Download {
            secs,
            bytes,
            rows: lines.saturating_sub(1),
            first_byte,
            first_body_byte: first_body_byte.unwrap_or(first_byte),
            cpu,
        },
        side,
    ))
}

/// The same columns as the server's CSV, joined the same way and in the same order,
/// straight out of PostgreSQL.
pub const PSQL_QUERY: &str = "SELECT s.cursor, s.id, d.name AS device, b.batch_id, s.observed_at, \
     s.latitude, s.longitude, s.altitude, s.accuracy, s.observer, s.species, s.count, \
     s.attributes, b.received_at \
     FROM sightings s JOIN batches b ON b.id = s.batch JOIN devices d ON d.id = s.device_id \
     WHERE s.cursor > 0 ORDER BY s.cursor";

/// `psql -c "\copy (…) TO STDOUT WITH (FORMAT csv, HEADER)"`, its output read and
/// counted by this process (as the HTTP client does with the download).
pub fn over_psql(db: &Psql) -> anyhow::Result<Download> {
    let cpu_before = CpuSample::now()?;
    let start = Instant::now();
    let mut child = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .arg(&db.url)
        .arg("-c")
        .arg(format!(
            "\\copy ({PSQL_QUERY}) TO STDOUT WITH (FORMAT csv, HEADER)"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting psql")?;
    let mut out = child.stdout.take().context("psql stdout")?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut bytes, mut lines, mut first_byte) = (0u64, 0u64, None);
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first_byte.get_or_insert_with(|| start.elapsed());
        bytes += n as u64;
        lines += count_lines(&buf[..n]);
    }
    let result = child.wait_with_output()?;
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        result.status.success(),
        "psql \\copy failed ({}): {}",
        result.status,
        String::from_utf8_lossy(&result.stderr).trim()
    );
    let first_byte = first_byte.unwrap_or_default();
    Ok(Download {
        secs,
        bytes,
        rows: lines.saturating_sub(1),
        first_byte,
        first_body_byte: first_byte,
        cpu: cpu_before.until(&CpuSample::now()?),
    })
}

/// Line feeds in `chunk` (every CSV record here ends in one; no field holds one).
fn count_lines(chunk: &[u8]) -> u64 {
    chunk.iter().filter(|&&b| b == b'\n').count() as u64
}
