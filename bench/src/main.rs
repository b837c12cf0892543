//! `ctdata-bench`: CTData ingest throughput and memory, measured against PostgreSQL's
//! own bulk load (`psql \copy`) of the same rows into the same table shape; HTTP
//! uploads against `pgbench` running the same inserts; the HTTP download against
//! `psql \copy … TO STDOUT`. Run it through `bench/ingest.sh` or `bench/http.sh`,
//! which build the release binaries first.

mod burst;
mod data;
mod export;
mod ftp;
mod ftp_client;
mod http;
mod link;
mod openrosa;
mod pg;
mod run;
mod scale;
mod server;
mod sys;
mod upload;
mod vsftpd;

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
    /// Concurrent HTTP uploads of small batches, against pgbench doing the same inserts.
    Upload(UploadArgs),
    /// The HTTP CSV download of every row, against `psql \copy … TO STDOUT`.
    Export(ExportArgs),
    /// Small files uploaded over FTP (temporary name, then rename) to the embedded
    /// server and to vsftpd with the same client.
    Ftp(ftp::FtpArgs),
    /// OpenRosa submissions with one photo each, against the same bytes uploaded as
    /// plain batches.
    Openrosa(openrosa::OpenRosaArgs),
    /// Many small files dropped into the `CTData` folder at once, against the HTTP
    /// upload of the same batches.
    Burst(burst::BurstArgs),
    /// Millions of sightings loaded at bulk speed: export time to first byte, the
    /// dashboard's one-week and bounding-box queries, and HTTP ingest into that
    /// database against an empty one.
    Scale(scale::ScaleArgs),
    /// One large import sent with the `ctdata` client through a link that cuts every
    /// few seconds, against the same link without cuts.
    Link(link::LinkArgs),
}

#[derive(Args)]
pub struct Common {
    /// Admin connection to a loopback PostgreSQL; a fresh database is created and dropped.
    #[arg(
        long,
        env = "CTDATA_TEST_PG",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub pg: String,
    /// Where data, logs and results go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/out"))]
    pub out: PathBuf,
    /// Give up when the server has not stored every row after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Seed for the generated data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
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

#[derive(Args)]
struct UploadArgs {
    #[command(flatten)]
    common: Common,
    /// Requests in all (rounded up to a multiple of --clients).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Concurrent clients, each a device of its own on a keep-alive connection
    /// (and pgbench's -c).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Sightings per batch.
    #[arg(long, default_value_t = 50)]
    batch_rows: u64,
    /// The HTTP clients stop sending after this many seconds, done or not.
    #[arg(long, default_value_t = 120)]
    time_limit_secs: u64,
    /// The pgbench binary (default: on the PATH, else /usr/lib/postgresql/*/bin).
    #[arg(long, env = "PGBENCH")]
    pgbench: Option<PathBuf>,
    /// Above 1: the uploads also go to this many replicas on one database (clients
    /// spread over them as a load balancer without sticky sessions would), and the
    /// report gives their rate against one server's in the same run.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Each replica's `database.max_connections` (default: the server's own default,
    /// as one server has).
    #[arg(long)]
    replica_connections: Option<u32>,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    common: Common,
    /// Rows to load and export.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Batches they are loaded as.
    #[arg(long, default_value_t = 100)]
    files: usize,
    /// Devices the batches are spread over.
    #[arg(long, default_value_t = 5)]
    devices: usize,
    /// Rounds of (HTTP export, psql export); the best of each is compared.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Scenario::Ingest(args) => ingest(args),
        Scenario::Big(args) => big(args),
        Scenario::Upload(args) => upload(args),
        Scenario::Export(args) => export(args),
        Scenario::Ftp(args) => ftp::run(args),
        Scenario::Openrosa(args) => openrosa::run(args),
        Scenario::Burst(args) => burst::run(args),
        Scenario::Scale(args) => scale::run(args),
        Scenario::Link(args) => link::run(args),
    }
}

/// The per-scenario folder under `--out`, and a temporary run folder inside it for the
/// bulky data (deleted at the end; the log and results stay).
pub fn workspace(common: &Common, scenario: &str) -> anyhow::Result<(PathBuf, tempfile::TempDir)> {
    let dir = common.out.join(scenario);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let run = tempfile::Builder::new().prefix("run-").tempdir_in(&dir)?;
    std::fs::create_dir(run.path().join("data"))?;
    Ok((dir, run))
}

pub fn server_config(db: &TempDb, run: &Path) -> anyhow::Result<ServerConfig> {
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
        env: Vec::new(),
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
    let stored = db.db.stored_batches()?;
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

fn upload(args: UploadArgs) -> anyhow::Result<()> {
    ensure!(
        args.requests > 0 && args.clients > 0 && args.batch_rows > 0 && args.replicas > 0,
        "sizes must be positive"
    );
    let common = &args.common;
    let pgbench = args.pgbench.clone().or_else(upload::find_pgbench).context(
        "pgbench not found: install postgresql-contrib (bench/http.sh does) or pass --pgbench",
    )?;
    let (dir, run) = workspace(common, "upload")?;
    let db = TempDb::create(&common.pg)?;
    let plan = upload::Plan {
        clients: args.clients,
        per_client: args.requests.div_ceil(args.clients),
        rows_per_batch: args.batch_rows,
        seed: common.seed,
        time_limit: Duration::from_secs(args.time_limit_secs),
        timeout: Duration::from_secs(common.timeout_secs),
        pgbench,
    };

    let cfg = server_config(&db, run.path())?;
    cfg.migrate()?;
    let started = Instant::now();
    let tokens = upload::register_devices(&cfg, plan.clients)?;
    let bodies = upload::bodies(&plan)?;
    let count = plan.clients * plan.per_client;
    let bytes: u64 = bodies.iter().flatten().map(|b| b.len() as u64).sum();
    eprintln!(
        "registered {} devices, generated {count} batches of {} sightings ({:.0} bytes each) in {:.1} s",
        plan.clients,
        plan.rows_per_batch,
        bytes as f64 / count as f64,
        started.elapsed().as_secs_f64()
    );

    upload::settle_fresh(&db.db)?;
    let server = cfg.serve(&dir.join("server.log"), Duration::from_secs(30))?;
    let http = upload::through_http(
        std::slice::from_ref(&server),
        &db.db,
        &plan,
        &tokens,
        bodies.clone(),
    )?;
    let peak_rss_kib = server.peak_rss_kib()?;
    server.stop(Duration::from_secs(60))?;
    eprintln!(
        "HTTP: {} uploads in {:.2} s ({:.0}/s)",
        http.requests,
        http.secs,
        http.per_sec()
    );
    drop(db);

    // The same uploads spread over replicas, into a fresh database of their own.
    let replicated = match args.replicas {
        1 => None,
        n => {
            let phase = upload::FreshPhase {
                pg: &common.pg,
                run: run.path(),
                logs: &dir,
                tag: "replicas",
            };
            let (run, peak) = phase.upload(n, args.replica_connections, &plan, bodies)?;
            eprintln!(
                "HTTP, {n} replicas: {} uploads in {:.2} s ({:.0}/s)",
                run.requests,
                run.secs,
                run.per_sec()
            );
            Some((n, run, peak))
        }
    };

    // pgbench on a fresh database of its own, migrated by the server, with the same
    // devices: the same starting point as the HTTP phase had.
    let db = TempDb::create(&common.pg)?;
    server_config(&db, run.path())?.migrate()?;
    db.db.run(&format!(
        "INSERT INTO devices (name) SELECT 'ranger-' || lpad(g::text, 2, '0') \
         FROM generate_series(1, {}) g",
        plan.clients
    ))?;
    let (lo, hi): (i64, i64) = {
        let ids = db.db.run("SELECT min(id) || '|' || max(id) FROM devices")?;
        let (lo, hi) = ids.split_once('|').context("no devices")?;
        (lo.parse()?, hi.parse()?)
    };
    let script = run.path().join("upload.sql");
    std::fs::write(
        &script,
        upload::pgbench_script(plan.rows_per_batch, (lo, hi)),
    )?;
    upload::settle_fresh(&db.db)?;
    let pgb = upload::pgbench(&db.db, &plan, &script)?;
    eprintln!(
        "pgbench: {} transactions, {:.0} tps",
        pgb.transactions, pgb.tps
    );
    let report = upload_report(
        &plan,
        bytes as f64 / count as f64,
        &http,
        peak_rss_kib,
        &pgb,
        replicated.as_ref(),
    );
    finish(&dir, &report)
}

fn upload_report(
    plan: &upload::Plan,
    body_bytes: f64,
    http: &upload::HttpRun,
    peak_rss_kib: u64,
    pgbench: &upload::PgbenchRun,
    replicated: Option<&(usize, upload::HttpRun, u64)>,
) -> String {
    let ratio = http.per_sec() / pgbench.tps;
    let verdict = if ratio >= 0.7 { "ok" } else { "BELOW TARGET" };
    let per_batch_ms = |cpu: f64, n: usize| format!("{:.2}", cpu * 1e3 / n as f64);
    let mut lines = vec![
        format!(
            "CTData HTTP upload: {} clients, {} batches of {} sightings ({:.0} bytes of JSON each){}",
            plan.clients,
            http.requests,
            plan.rows_per_batch,
            body_bytes,
            if http.stopped_by_time_limit {
                " (stopped by the time limit)"
            } else {
                ""
            }
        ),
        String::new(),
        "| measure                                  |              value |".into(),
        "| ---------------------------------------- | -----------------: |".into(),
        row2("HTTP uploads, s", format!("{:.2}", http.secs)),
        row2("HTTP uploads, batches/s", format!("{:.0}", http.per_sec())),
        row2(
            "HTTP request bodies, MB/s",
            format!("{:.1}", mb(http.body_bytes) / http.secs),
        ),
        row2("HTTP latency p50, ms", format!("{:.1}", http.percentile_ms(0.5))),
        row2("HTTP latency p99, ms", format!("{:.1}", http.percentile_ms(0.99))),
        row2("HTTP latency max, ms", format!("{:.1}", http.percentile_ms(1.0))),
        row2(
            "pgbench same inserts, tx/s",
            format!("{:.0}", pgbench.tps),
        ),
        row2(
            "pgbench latency average, ms",
            format!("{:.1}", pgbench.latency_ms),
        ),
        row2(
            "ratio HTTP / pgbench (>= 0.70)",
            format!("{ratio:.2} {verdict}"),
        ),
        String::new(),
        "Where the time went (CPU per batch; the machine has 2 cores):".into(),
        String::new(),
        "| phase                   | wall, s | machine busy | all CPU ms | server ms | postgres ms | HTTP clients ms |".into(),
        "| ----------------------- | ------: | -----------: | ---------: | --------: | ----------: | --------------: |".into(),
    ];
    lines.push(format!(
        "| {:<23} | {:>7.2} | {:>11.0}% | {:>10} | {:>9} | {:>11} | {:>15} |",
        "HTTP uploads",
        http.secs,
        http.cpu.busy_share() * 100.0,
        per_batch_ms(http.cpu.busy, http.requests),
        per_batch_ms(http.server_cpu, http.requests),
        per_batch_ms(http.cpu.postgres, http.requests),
        per_batch_ms(http.client_cpu, http.requests),
    ));
    {
        let (name, r) = ("pgbench", pgbench);
        lines.push(format!(
            "| {:<23} | {:>7.2} | {:>11.0}% | {:>10} | {:>9} | {:>11} | {:>15} |",
            name,
            r.secs,
            r.cpu.busy_share() * 100.0,
            per_batch_ms(r.cpu.busy, r.transactions),
            "-",
            per_batch_ms(r.cpu.postgres, r.transactions),
            "-",
        ));
    }
    lines.push(String::new());
    lines.push("PostgreSQL backends of the bench database, on average:".into());
    lines.push(format!("- HTTP uploads: {}", http.activity.show()));
    lines.push(format!("- pgbench: {}", pgbench.activity.show()));
    lines.push(String::new());
    lines.push(format!(
        "server peak RSS during the uploads: {:.1} MB",
        mb(peak_rss_kib * 1024)
    ));
    if let Some((n, run, peak)) = replicated {
        let ratio = run.per_sec() / http.per_sec();
        lines.extend([
            String::new(),
            format!(
                "The same uploads to {n} replicas on one database (client i to replica i mod {n}){}:",
                if run.stopped_by_time_limit {
                    " (stopped by the time limit)"
                } else {
                    ""
                }
            ),
            String::new(),
            "| measure                                  |              value |".into(),
            "| ---------------------------------------- | -----------------: |".into(),
            row2(&format!("{n} replicas, s"), format!("{:.2}", run.secs)),
            row2(
                &format!("{n} replicas, batches/s"),
                format!("{:.0}", run.per_sec()),
            ),
            row2(
                &format!("{n} replicas / 1 server (>= 1)"),
                format!(
                    "{ratio:.2} {}",
                    if ratio >= 1.0 { "(met)" } else { "(NOT met)" }
                ),
            ),
            row2(
                &format!("{n} replicas: server CPU ms per batch"),
                format!("{:.2}", run.server_cpu * 1e3 / run.requests as f64),
            ),
            row2(
                &format!("{n} replicas: latency p50 / p99, ms"),
                format!(
                    "{:.1} / {:.1}",
                    run.percentile_ms(0.5),
                    run.percentile_ms(0.99)
                ),
            ),
            row2(
                &format!("{n} replicas: highest peak RSS, MB"),
                format!("{:.1}", mb(peak * 1024)),
            ),
        ]);
    }
    lines.join("\n")
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    ensure!(
        args.rows > 0 && args.files > 0 && args.devices > 0 && args.rounds > 0,
        "sizes must be positive"
    );
    let common = &args.common;
    let (dir, run) = workspace(common, "export")?;
    let db = TempDb::create(&common.pg)?;
    let cfg = server_config(&db, run.path())?;
    cfg.migrate()?;

    let started = Instant::now();
    let specs = data::plan(args.rows, args.files, args.devices);
    let csv = run.path().join("data").join("sightings.csv");
    let rows = export::load(&db.db, &csv, common.seed, &specs)?;
    std::fs::remove_file(&csv)?;
    ensure!(
        rows == args.rows,
        "{rows} rows loaded, expected {}",
        args.rows
    );
    cfg.cli(&["admin", "add", "alice"], "password123456\n")?;
    let token = cfg.cli(&["admin", "token", "alice"], "")?;
    eprintln!(
        "loaded {rows} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    run::settle(&db.db)?;
    let server = cfg.serve(&dir.join("server.log"), Duration::from_secs(30))?;
    let mut http = Vec::new();
    let mut psql = Vec::new();
    for round in 1..=args.rounds {
        let (d, side) = export::over_http(&server, &token)?;
        ensure!(
            d.rows == rows,
            "the download held {} rows, expected {rows}",
            d.rows
        );
        let p = export::over_psql(&db.db)?;
        ensure!(
            p.rows == rows,
            "psql wrote {} rows, expected {rows}",
            p.rows
        );
        eprintln!(
            "round {round}: HTTP {:.2} s ({:.1} MB), psql {:.2} s ({:.1} MB)",
            d.secs,
            mb(d.bytes),
            p.secs,
            mb(p.bytes)
        );
        http.push((d, side));
        psql.push(p);
    }
    server.stop(Duration::from_secs(60))?;
    let report = export_report(rows, &http, &psql);
    finish(&dir, &report)
}

fn export_report(
    rows: u64,
    http: &[(export::Download, export::ServerSide)],
    psql: &[export::Download],
) -> String {
    let best = |runs: &mut dyn Iterator<Item = export::Download>| {
        runs.min_by(|a, b| a.secs.total_cmp(&b.secs))
            .expect("at least one round")
    };
    let h = best(&mut http.iter().map(|(d, _)| *d));
    let p = best(&mut psql.iter().copied());
    let ratio = h.rows_per_sec() / p.rows_per_sec();
    let growth = http.iter().map(|(_, s)| s.growth_mb()).fold(0.0, f64::max);
    let worst_ttfb = http
        .iter()
        .map(|(d, _)| d.first_body_byte)
        .max()
        .unwrap_or_default();
    let ok = |good: bool| if good { "ok" } else { "MISSED" };
    let mut lines = vec![
        format!(
            "CTData HTTP export: {rows} rows as CSV, best of {} rounds",
            http.len()
        ),
        String::new(),
        "| measure                                  |              value |".into(),
        "| ---------------------------------------- | -----------------: |".into(),
        row2("HTTP download, s", format!("{:.2}", h.secs)),
        row2("HTTP download, rows/s", format!("{:.0}", h.rows_per_sec())),
        row2("HTTP download, MB (MB/s)", format!("{:.1} ({:.1})", mb(h.bytes), h.mb_per_sec())),
        row2("psql \\copy TO STDOUT, s", format!("{:.2}", p.secs)),
        row2("psql \\copy TO STDOUT, rows/s", format!("{:.0}", p.rows_per_sec())),
        row2("psql \\copy, MB (MB/s)", format!("{:.1} ({:.1})", mb(p.bytes), p.mb_per_sec())),
        row2(
            "ratio HTTP / psql, rows/s (>= 0.90)",
            format!("{ratio:.2} {}", ok(ratio >= 0.9)),
        ),
        row2(
            "first byte (head), worst, ms",
            format!(
                "{:.1}",
                http.iter()
                    .map(|(d, _)| d.first_byte)
                    .max()
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1e3
            ),
        ),
        row2(
            "first body byte, worst, ms (< 200)",
            format!(
                "{:.1} {}",
                worst_ttfb.as_secs_f64() * 1e3,
                ok(worst_ttfb < Duration::from_millis(200))
            ),
        ),
        row2(
            "psql first byte, best, ms",
            format!(
                "{:.1}",
                psql.iter()
                    .map(|d| d.first_byte)
                    .min()
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1e3
            ),
        ),
        row2(
            "server RSS growth, worst, MB (< 50)",
            format!("{growth:.1} {}", ok(growth < 50.0)),
        ),
        String::new(),
        "Every round (CPU in seconds; the machine has 2 cores):".into(),
        String::new(),
        "| round | HTTP s | server CPU | postgres CPU | busy | RSS before → peak MB | psql s | postgres CPU | busy |".into(),
        "| ----: | -----: | ---------: | -----------: | ---: | -------------------: | -----: | -----------: | ---: |".into(),
    ];
    for (i, ((d, s), p)) in http.iter().zip(psql).enumerate() {
        lines.push(format!(
            "| {:>5} | {:>6.2} | {:>10.2} | {:>12.2} | {:>3.0}% | {:>9.1} → {:>8.1} | {:>6.2} | {:>12.2} | {:>3.0}% |",
            i + 1,
            d.secs,
            s.cpu_secs,
            d.cpu.postgres,
            d.cpu.busy_share() * 100.0,
            mb(s.rss_before_kib * 1024),
            mb(s.rss_peak_kib * 1024),
            p.secs,
            p.cpu.postgres,
            p.cpu.busy_share() * 100.0,
        ));
    }
    if let Some((_, s)) = http.last() {
        lines.push(String::new());
        lines.push(format!(
            "server VmHWM after the last round: {:.1} MB",
            mb(s.hwm_after_kib * 1024)
        ));
    }
    lines.join("\n")
}

pub fn row2(name: &str, value: String) -> String {
    format!("| {name:<40} | {value:>18} |")
}

/// Prints the results and keeps a copy beside the server log.
pub fn finish(dir: &Path, report: &str) -> anyhow::Result<()> {
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
