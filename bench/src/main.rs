//! `ctdata-bench`: CTData ingest throughput and memory, measured against PostgreSQL's
//! own bulk load (`psql \copy`) of the same rows into the same table shape.
//! Run it through `bench/ingest.sh`, which builds the release binaries first.

mod data;
mod pg;
mod run;
mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::{Args, Parser, Subcommand};

use crate::pg::TempDb;
use crate::run::{Delivery, ServerRun, Timed};
use crate::server::ServerConfig;

#[derive(Parser)]
#[command(name = "ctdata-bench")]
struct Cli {
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Many ordinary batches through the drop directory, against `psql \copy`.
    Ingest(IngestArgs),
    /// One very large batch through the drop directory: throughput and peak memory.
    Big(BigArgs),
}

#[derive(Args)]
struct Common {
    /// Admin connection to a loopback PostgreSQL; a fresh database is created and dropped.
    #[arg(
        long,
        env = "CTDATA_TEST_PG",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg: String,
    /// Where data, logs and results go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/out"))]
    out: PathBuf,
    /// Give up when the server has not stored every row after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Seed for the generated data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args)]
struct IngestArgs {
    #[command(flatten)]
    common: Common,
    /// Sightings in all.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Batch files they are split into.
    #[arg(long, default_value_t = 100)]
    files: usize,
    /// Devices the files are spread over (ranger-01, ranger-02, …).
    #[arg(long, default_value_t = 5)]
    devices: usize,
}

#[derive(Args)]
struct BigArgs {
    #[command(flatten)]
    common: Common,
    /// Size of the single batch file, e.g. 1G, 200M, 5000000.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    bytes: u64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Scenario::Ingest(args) => ingest(args),
        Scenario::Big(args) => big(args),
    }
}

/// The per-scenario folder under `--out`, and a temporary run folder inside it for the
/// bulky data (deleted at the end; the log and results stay).
fn workspace(common: &Common, scenario: &str) -> anyhow::Result<(PathBuf, tempfile::TempDir)> {
    let dir = common.out.join(scenario);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let run = tempfile::Builder::new().prefix("run-").tempdir_in(&dir)?;
    std::fs::create_dir(run.path().join("data"))?;
    Ok((dir, run))
}

fn server_config(db: &TempDb, run: &Path) -> anyhow::Result<ServerConfig> {
    let exe = std::env::current_exe()?;
    let binary = exe.with_file_name("ctdata-server");
    ensure!(
        binary.exists(),
        "{} not found: build it with `cargo build --release -p ctdata-server` (bench/ingest.sh does)",
        binary.display()
    );
    Ok(ServerConfig {
        binary,
        db_url: db.db.url.clone(),
        drop_dir: run.join("CTData"),
        workdir: run.to_path_buf(),
    })
}

fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    ensure!(
        args.rows > 0 && args.files > 0 && args.devices > 0,
        "sizes must be positive"
    );
    let common = &args.common;
    let (dir, run) = workspace(common, "ingest")?;
    let data = run.path().join("data");
    let db = TempDb::create(&common.pg)?; // first: a bad --pg fails before minutes of work

    let specs = data::plan(args.rows, args.files, args.devices);
    let (files, bytes) = generate(&data, common.seed, &specs)?;

    let cfg = server_config(&db, run.path())?;
    let timeout = Duration::from_secs(common.timeout_secs);
    let log = dir.join("server.log");
    let server = run::through_server(&cfg, &db.db, &files, args.rows, &log, timeout)?;
    eprintln!("server ingest done in {:.2} s", server.timed.secs);

    // The CSV carries the batch and device ids the server assigned to each file (the
    // same rows, references and all), so it can only be written now.
    let mut stored = std::collections::HashMap::new();
    for line in db
        .db
        .run("SELECT batch_id, id, device_id FROM batches")?
        .lines()
    {
        let mut f = line.split('|');
        let (Some(uuid), Some(batch), Some(device)) = (f.next(), f.next(), f.next()) else {
            anyhow::bail!("unexpected batches row {line:?}");
        };
        stored.insert(
            uuid.parse::<uuid::Uuid>()?,
            (batch.parse()?, device.parse()?),
        );
    }
    let csv = data.join("sightings.csv");
    data::write_csv(&csv, common.seed, &specs, &stored)?;
    let copy = run::baseline(&db.db, &csv, args.rows)?;

    let report = ingest_report(&args, bytes, &server, &copy);
    finish(&dir, &report)
}

/// Writes the NDJSON batches `specs` describe; returns them and their total size.
fn generate(
    dir: &Path,
    seed: u64,
    specs: &[data::FileSpec],
) -> anyhow::Result<(Vec<Delivery>, u64)> {
    let started = Instant::now();
    let mut files = Vec::with_capacity(specs.len());
    let mut bytes = 0;
    for spec in specs {
        let (path, size) = data::write_ndjson(dir, seed, spec)?;
        bytes += size;
        let device = spec.device.clone();
        files.push(Delivery { path, device });
    }
    let rows: u64 = specs.iter().map(|s| s.rows).sum();
    eprintln!(
        "generated {rows} rows in {} files ({:.0} MB) in {:.1} s",
        files.len(),
        mb(bytes),
        started.elapsed().as_secs_f64()
    );
    Ok((files, bytes))
}

fn big(args: BigArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let (dir, run) = workspace(common, "big")?;
    let device = data::device_name(0);
    let db = TempDb::create(&common.pg)?; // first: a bad --pg fails before minutes of work

    let started = Instant::now();
    let (path, rows, bytes) =
        data::write_ndjson_sized(&run.path().join("data"), common.seed, &device, args.bytes)?;
    eprintln!(
        "generated one batch of {rows} rows ({:.0} MB) in {:.1} s",
        mb(bytes),
        started.elapsed().as_secs_f64()
    );

    let cfg = server_config(&db, run.path())?;
    let timeout = Duration::from_secs(common.timeout_secs);
    let files = [Delivery { path, device }];
    let server = run::through_server(&cfg, &db.db, &files, rows, &dir.join("server.log"), timeout)?;

    let report = big_report(bytes, &server);
    finish(&dir, &report)
}

/// Prints the results and keeps a copy beside the server log.
fn finish(dir: &Path, report: &str) -> anyhow::Result<()> {
    println!("{report}");
    std::fs::write(dir.join("results.txt"), report)?;
    eprintln!("results and server log in {}", dir.display());
    Ok(())
}

fn ingest_report(args: &IngestArgs, bytes: u64, server: &ServerRun, copy: &Timed) -> String {
    let ratio = server.timed.rows_per_sec() / copy.rows_per_sec();
    let verdict = if ratio >= 0.8 { "ok" } else { "BELOW TARGET" };
    let rss = mb(server.peak_rss_kib * 1024);
    [
        format!(
            "CTData ingest: {} rows in {} NDJSON batches ({:.0} MB), {} devices",
            args.rows,
            args.files,
            mb(bytes),
            args.devices
        ),
        String::new(),
        "| measure                         |              value |".into(),
        "| ------------------------------- | -----------------: |".into(),
        row("rows", format!("{}", args.rows)),
        row("server ingest, s", format!("{:.2}", server.timed.secs)),
        row(
            "server ingest, rows/s",
            format!("{:.0}", server.timed.rows_per_sec()),
        ),
        row("psql \\copy, s", format!("{:.2}", copy.secs)),
        row("psql \\copy, rows/s", format!("{:.0}", copy.rows_per_sec())),
        row(
            "ratio ingest / copy (>= 0.80)",
            format!("{ratio:.2} {verdict}"),
        ),
        row(
            "server CPU (user+sys), s",
            format!("{:.2}", server.cpu_secs),
        ),
        row("server peak RSS, MB", format!("{rss:.1}")),
    ]
    .join("\n")
}

fn big_report(bytes: u64, server: &ServerRun) -> String {
    let rss = mb(server.peak_rss_kib * 1024);
    let verdict = if rss < 150.0 { "ok" } else { "ABOVE TARGET" };
    [
        format!(
            "CTData big batch: one NDJSON file of {:.0} MB, {} rows",
            mb(bytes),
            server.timed.rows
        ),
        String::new(),
        "| measure                         |              value |".into(),
        "| ------------------------------- | -----------------: |".into(),
        row("rows", format!("{}", server.timed.rows)),
        row("server ingest, s", format!("{:.2}", server.timed.secs)),
        row(
            "server ingest, rows/s",
            format!("{:.0}", server.timed.rows_per_sec()),
        ),
        row(
            "server ingest, MB/s",
            format!("{:.1}", mb(bytes) / server.timed.secs),
        ),
        row(
            "server CPU (user+sys), s",
            format!("{:.2}", server.cpu_secs),
        ),
        row("server peak RSS, MB (< 150)", format!("{rss:.1} {verdict}")),
    ]
    .join("\n")
}

fn row(name: &str, value: String) -> String {
    format!("| {name:<31} | {value:>18} |")
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `5000000`, `200M`, `1G` (decimal units, as disk sizes are quoted).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        _ => return Err(format!("unknown unit in {s:?}: use K, M or G")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("too large: {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5000"), Ok(5000));
        assert_eq!(parse_size("200M"), Ok(200_000_000));
        assert_eq!(parse_size("1g"), Ok(1_000_000_000));
        assert!(parse_size("1T").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn rows_are_split_evenly_over_files_and_devices() {
        let specs = data::plan(1003, 10, 5);
        assert_eq!(specs.iter().map(|s| s.rows).sum::<u64>(), 1003);
        assert_eq!(specs[0].rows, 101);
        assert_eq!(specs[9].rows, 100);
        assert_eq!(specs[6].device, "ranger-02");
    }
}
