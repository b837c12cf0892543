//! `burst`: many small batch files dropped into the `CTData` folder at once, against
//! the HTTP upload of the very same batches (same bodies, same devices) in the same run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;

use crate::data;
use crate::pg::TempDb;
use crate::upload::{self, Plan};
use crate::{finish, row2, server_config, workspace, Common};

#[derive(Args)]
pub struct BurstArgs {
    #[command(flatten)]
    common: Common,
    /// The bursts, as FILESxSIGHTINGS separated by commas.
    #[arg(long, default_value = "10000x5,2000x50")]
    sizes: String,
    /// Devices the files are spread over; the HTTP phase runs one client per device.
    #[arg(long, default_value_t = 64)]
    devices: usize,
    /// Servers (replicas on the one database) draining the shared folder at once; the
    /// HTTP phase always runs one.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

/// One burst size through both channels.
struct Measured {
    files: usize,
    rows: u64,
    drop_secs: f64,
    drop_rss_kib: u64,
    drop_cpu: f64,
    http_secs: f64,
    http_rss_kib: u64,
    http_cpu: f64,
    /// The server's per-phase lines for the drop phase.
    phases: Vec<String>,
}

impl Measured {
    fn drop_rate(&self) -> f64 {
        self.files as f64 / self.drop_secs
    }

    fn http_rate(&self) -> f64 {
        self.files as f64 / self.http_secs
    }
}

pub fn run(args: BurstArgs) -> anyhow::Result<()> {
    let sizes = parse_sizes(&args.sizes)?;
    ensure!(args.devices > 0, "--devices must be positive");
    ensure!(args.replicas > 0, "--replicas must be positive");
    let (dir, run) = workspace(&args.common, "burst")?;
    let mut measured = Vec::new();
    for (files, rows) in sizes {
        let plan = Plan {
            clients: args.devices,
            per_client: files.div_ceil(args.devices),
            rows_per_batch: rows,
            seed: args.common.seed,
            time_limit: Duration::from_secs(args.common.timeout_secs),
            timeout: Duration::from_secs(args.common.timeout_secs),
            pgbench: PathBuf::new(),
        };
        let started = Instant::now();
        let bodies = upload::bodies(&plan)?;
        let files = plan.clients * plan.per_client;
        eprintln!(
            "generated {files} batches of {rows} sightings in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let tag = format!("{files}x{rows}");
        let (drop_secs, drop_rss_kib, drop_cpu, phases) =
            through_drop_dir(&args, &dir, run.path(), &tag, &plan, &bodies)?;
        eprintln!(
            "drop directory: {files} files in {drop_secs:.2} s ({:.0}/s)",
            files as f64 / drop_secs
        );
        let (http_secs, http_rss_kib, http_cpu) =
            through_http(&args.common, &dir, run.path(), &tag, &plan, bodies)?;
        eprintln!(
            "HTTP: {files} uploads in {http_secs:.2} s ({:.0}/s)",
            files as f64 / http_secs
        );
        measured.push(Measured {
            files,
            rows,
            drop_secs,
            drop_rss_kib,
            drop_cpu,
            http_secs,
            http_rss_kib,
            http_cpu,
            phases,
        });
    }
    finish(&dir, &report(&args, &measured))
}

fn parse_sizes(s: &str) -> anyhow::Result<Vec<(usize, u64)>> {
    s.split(',')
        .map(|one| {
            let (files, rows) = one
                .trim()
                .split_once('x')
                .with_context(|| format!("--sizes: {one:?} is not FILESxSIGHTINGS"))?;
            let (files, rows): (usize, u64) = (files.parse()?, rows.parse()?);
            ensure!(files > 0 && rows > 0, "--sizes: {one:?} must be positive");
            Ok((files, rows))
        })
        .collect()
}

/// The timed drop: every file staged under a temporary name in its device's folder
/// before the server starts, then all renamed at once; done when every row is stored.
fn through_drop_dir(
    args: &BurstArgs,
    dir: &Path,
    run: &Path,
    tag: &str,
    plan: &Plan,
    bodies: &[Vec<Vec<u8>>],
) -> anyhow::Result<(f64, u64, f64, Vec<String>)> {
    let common = &args.common;
    let db = TempDb::create(&common.pg)?;
    let here = run.join(format!("drop-{tag}"));
    std::fs::create_dir_all(&here)?;
    let mut cfg = server_config(&db, &here)?;
    cfg.env
        .push(("CTDATA_PROFILE".to_string(), "phases".to_string()));
    cfg.migrate()?;
    upload::register_devices(&cfg, plan.clients)?;
    let mut staged = Vec::new();
    for (c, batches) in bodies.iter().enumerate() {
        let folder = cfg.drop_dir.join(data::device_name(c));
        std::fs::create_dir_all(&folder)?;
        for (k, body) in batches.iter().enumerate() {
            let name = folder.join(format!("batch-{k:05}.json"));
            let part = folder.join(format!("batch-{k:05}.json.part"));
            std::fs::write(&part, body)?;
            staged.push((part, name));
        }
    }
    quiet_start(&db.db)?;
    let mut servers = Vec::new();
    let mut logs = Vec::new();
    for r in 0..args.replicas {
        let mut cfg = cfg.clone();
        cfg.env
            .push(("CTDATA__REPLICA__NAME".to_string(), format!("bench{r}")));
        let log = dir.join(format!("server-drop-{tag}-r{r}.log"));
        servers.push(cfg.serve(&log, Duration::from_secs(30))?);
        logs.push(log);
    }
    let mut session = db.db.session()?;
    let rows = staged.len() as u64 * plan.rows_per_batch;
    crate::run::poll(&mut session)?; // connect before the clock starts
    let mut cpu_before = 0.0;
    for s in &servers {
        cpu_before += s.cpu_secs()?;
    }

    let start = Instant::now();
    for (part, name) in &staged {
        std::fs::rename(part, name)?;
    }
    let timeout = Duration::from_secs(common.timeout_secs);
    crate::run::wait_for_rows(&mut session, &mut servers[0], &db.db, rows, timeout)?;
    let secs = start.elapsed().as_secs_f64();

    let mut peak = 0;
    let mut cpu = -cpu_before;
    for s in &servers {
        peak = peak.max(s.peak_rss_kib()?);
        cpu += s.cpu_secs()?;
    }
    for s in servers {
        s.stop(Duration::from_secs(60))?;
    }
    let batches: usize = db.db.scalar("SELECT count(*) FROM batches")?;
    ensure!(
        batches == staged.len(),
        "{batches} batches stored, expected {}",
        staged.len()
    );
    let mut phases = Vec::new();
    for log in &logs {
        phases.extend(
            std::fs::read_to_string(log)?
                .lines()
                .filter(|l| l.contains("phase profile"))
                .map(str::to_string),
        );
    }
    Ok((secs, peak, cpu, phases))
}

/// The same batches POSTed by one keep-alive client per device, into a fresh database.
fn through_http(
    common: &Common,
    dir: &Path,
    run: &Path,
    tag: &str,
    plan: &Plan,
    bodies: Vec<Vec<Vec<u8>>>,
) -> anyhow::Result<(f64, u64, f64)> {
    let db = TempDb::create(&common.pg)?;
    let here = run.join(format!("http-{tag}"));
    std::fs::create_dir_all(&here)?;
    let cfg = server_config(&db, &here)?;
    cfg.migrate()?;
    let tokens = upload::register_devices(&cfg, plan.clients)?;
    quiet_start(&db.db)?;
    let server = cfg.serve(
        &dir.join(format!("server-http-{tag}.log")),
        Duration::from_secs(30),
    )?;
    let http = upload::through_http(&server, &db.db, plan, &tokens, bodies)?;
    ensure!(
        !http.stopped_by_time_limit,
        "the HTTP phase stopped at the time limit"
    );
    let peak = server.peak_rss_kib()?;
    server.stop(Duration::from_secs(60))?;
    Ok((http.secs, peak, http.server_cpu))
}

/// A checkpoint (when the role may) and `sync`, so neither phase writes back what the
/// one before it left dirty. Like `upload::settle_fresh`, no `VACUUM ANALYZE`.
fn quiet_start(db: &crate::pg::Psql) -> anyhow::Result<()> {
    if let Err(e) = db.run("CHECKPOINT") {
        eprintln!("no CHECKPOINT before the phase ({e:#}); sync only");
    }
    let status = std::process::Command::new("sync").status()?;
    ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

fn report(args: &BurstArgs, all: &[Measured]) -> String {
    let mut lines = vec![
        format!(
            "burst: files dropped at once ({} server(s) draining) vs. the same batches over HTTP \
             (one server; {} devices)",
            args.replicas, args.devices
        ),
        String::new(),
        "| measure                                  |              value |".into(),
        "| ---------------------------------------- | -----------------: |".into(),
    ];
    for m in all {
        let ratio = m.drop_rate() / m.http_rate();
        let ok = |b: bool| if b { "(met)" } else { "(NOT met)" };
        let size = format!("{} x {}", m.files, m.rows);
        lines.extend([
            row2(&format!("{size}: drop, s"), format!("{:.2}", m.drop_secs)),
            row2(
                &format!("{size}: drop, files/s"),
                format!("{:.0}", m.drop_rate()),
            ),
            row2(&format!("{size}: HTTP, s"), format!("{:.2}", m.http_secs)),
            row2(
                &format!("{size}: HTTP, batches/s"),
                format!("{:.0}", m.http_rate()),
            ),
            row2(
                &format!("{size}: ratio drop/HTTP (>= 0.90)"),
                format!("{ratio:.2} {}", ok(ratio >= 0.9)),
            ),
            row2(
                &format!("{size}: drop peak RSS, MB (< 100)"),
                format!(
                    "{:.1} {}",
                    m.drop_rss_kib as f64 / 1024.0,
                    ok(m.drop_rss_kib < 100 * 1024)
                ),
            ),
            row2(
                &format!("{size}: HTTP peak RSS, MB"),
                format!("{:.1}", m.http_rss_kib as f64 / 1024.0),
            ),
            row2(
                &format!("{size}: server CPU drop / HTTP, s"),
                format!("{:.2} / {:.2}", m.drop_cpu, m.http_cpu),
            ),
        ]);
    }
    for m in all {
        lines.push(String::new());
        lines.push(format!(
            "{} x {}: per-phase profile of the drop (server log, one block per pass):",
            m.files, m.rows
        ));
        lines.extend(m.phases.iter().map(|l| match l.find("phase=") {
            Some(at) => format!("  {}", &l[at..]),
            None => format!("  {l}"),
        }));
    }
    lines.join("\n")
}
