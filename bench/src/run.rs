//! The two timed phases: batches through the server's drop directory, and the same
//! rows through `psql \copy`, the database's own bulk-load ceiling.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::pg::{Psql, Session};
use crate::server::{Server, ServerConfig};

/// A file to deliver: where it is now, and the device folder it goes into.
pub struct Delivery {
    pub path: PathBuf,
    pub device: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub secs: f64,
    pub rows: u64,
}

impl Timed {
    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.secs
    }
}

pub struct ServerRun {
    pub timed: Timed,
    pub peak_rss_kib: u64,
    /// The server process's CPU time during the run (user + system).
    pub cpu_secs: f64,
}

/// Brings both timed phases to the same start: no dead tuples, no dirty buffers left
/// by the previous phase for this one to write back, and no dirty page cache either
/// (the freshly generated input files would otherwise be written back to disk during
/// the timed phase, competing with the database's WAL fsyncs).
pub fn settle(db: &Psql) -> anyhow::Result<()> {
    db.run("VACUUM ANALYZE")?;
    db.run("CHECKPOINT")?;
    let status = Command::new("sync").status().context("running sync")?;
    ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

/// Delivers `files` into the server's drop directory and times until `rows` rows are
/// committed. `cfg.drop_dir` must not exist yet; `log` receives the server's stderr.
pub fn through_server(
    cfg: &ServerConfig,
    db: &Psql,
    files: &[Delivery],
    rows: u64,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<ServerRun> {
    cfg.migrate()?;
    // Staged under temporary names before the server starts, so the timed part is only
    // the atomic renames and every device folder is there when the watch begins.
    let staged = stage(&cfg.drop_dir, files)?;
    settle(db)?;
    let mut server = cfg.serve(log, Duration::from_secs(30))?;
    let mut session = db.session()?;
    poll(&mut session)?; // connect before the clock starts
    let cpu_before = server.cpu_secs()?;

    let start = Instant::now();
    for (part, name) in &staged {
        std::fs::rename(part, name)?;
    }
    wait_for_rows(&mut session, &mut server, db, rows, timeout)?;
    let secs = start.elapsed().as_secs_f64();

    let peak_rss_kib = server.peak_rss_kib()?;
    let cpu_secs = server.cpu_secs()? - cpu_before;
    server.stop(Duration::from_secs(60))?;
    let stored: u64 = db.scalar("SELECT count(*) FROM sightings")?;
    ensure!(stored == rows, "{stored} sightings stored, expected {rows}");
    Ok(ServerRun {
        timed: Timed { secs, rows },
        peak_rss_kib,
        cpu_secs,
    })
}

/// Copies each file to `<drop>/<device>/<name>.part`; returns (temporary, final) names.
fn stage(drop_dir: &Path, files: &[Delivery]) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    let mut staged = Vec::with_capacity(files.len());
    for f in files {
        let folder = drop_dir.join(&f.device);
        std::fs::create_dir_all(&folder)?;
        let name = folder.join(f.path.file_name().context("file without a name")?);
        let part = name.with_extension("ndjson.part");
        std::fs::copy(&f.path, &part)
            .with_context(|| format!("copying {} to {}", f.path.display(), part.display()))?;
        staged.push((part, name));
    }
    Ok(staged)
}

const PROGRESS: &str =
    "SELECT coalesce(sum(inserted), 0), (SELECT count(*) FROM rejections) FROM batches";

/// (rows inserted, files rejected) so far.
pub fn poll(session: &mut Session) -> anyhow::Result<(u64, u64)> {
    let row = session.row(PROGRESS, Duration::from_secs(30))?;
    let parsed = row
        .split_once('|')
        .and_then(|(i, r)| Some((i.parse().ok()?, r.parse().ok()?)));
    parsed.with_context(|| format!("unexpected progress row {row:?}"))
}

pub fn wait_for_rows(
    session: &mut Session,
    server: &mut Server,
    db: &Psql,
    rows: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (inserted, rejected) = poll(session)?;
        if rejected > 0 {
            let why = db.run(
                "SELECT file_name || ': ' || kind || ': ' || reason FROM rejections LIMIT 5",
            )?;
            bail!("the server rejected {rejected} file(s):\n{why}");
        }
        if inserted >= rows {
            return Ok(());
        }
        server.ensure_running()?;
        if Instant::now() >= deadline {
            bail!(
                "only {inserted} of {rows} rows stored after {timeout:?}; server log:\n{}",
                server.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates `sightings_baseline` shaped like `sightings` (indexes, defaults and the same
/// two foreign keys), then times `psql \copy` of `csv` into it.
pub fn baseline(db: &Psql, csv: &Path, rows: u64) -> anyhow::Result<Timed> {
    db.run("CREATE TABLE sightings_baseline (LIKE sightings INCLUDING ALL)")?;
    db.run(
        "ALTER TABLE sightings_baseline \
         ADD FOREIGN KEY (batch) REFERENCES batches(id), \
         ADD FOREIGN KEY (device_id) REFERENCES devices(id)",
    )?;
    let path = csv.to_str().context("CSV path is not UTF-8")?;
    ensure!(!path.contains('\''), "CSV path must not contain a quote");
    let copy = format!(
        "\\copy sightings_baseline (id, batch, device_id, observed_at, observed_offset, \
         latitude, longitude, altitude, accuracy, observer, species, count, attributes) \
         FROM '{path}' WITH (FORMAT csv)"
    );
    settle(db)?;

    let start = Instant::now();
    db.run(&copy)?;
    let secs = start.elapsed().as_secs_f64();

    // Same rows, not just as many: every copied id is one the server stored.
    let stored: u64 = db.scalar(
        "SELECT count(*) FROM sightings_baseline b JOIN sightings s USING (id) \
         WHERE s.observed_at = b.observed_at AND s.latitude = b.latitude",
    )?;
    ensure!(
        stored == rows,
        "{stored} copied rows match the ingested ones, expected {rows}"
    );
    Ok(Timed { secs, rows })
}
