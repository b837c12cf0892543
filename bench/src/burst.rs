//! `burst`: many small batch files dropped into the `CTData` folder at once, against
//! the HTTP upload of the very same batches (same bodies, same devices) in the same run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;

use crate::data;
use crate::pg::TempDb;
use crate::server::{cpu_of, peak_of};
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
    /// Replicas on one database: above 1, each size also runs with this many servers
    /// (draining the one folder; taking the HTTP clients spread over them), and the
    /// report gives the ratio to one server in the same run.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Rounds of every measurement, interleaved (1 server, the replicas, 1 server, …);
    /// the report takes the median of each, as a shared machine drifts by a fifth
    /// between runs.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Each replica's `database.max_connections` (default: the server's own default,
    /// as one server has).
    #[arg(long)]
    replica_connections: Option<u32>,
}

impl BurstArgs {
    /// The server counts each size runs with: 1, and `--replicas` when above 1.
    fn server_counts(&self) -> Vec<usize> {
        match self.replicas {
            1 => vec![1],
            n => vec![1, n],
        }
    }
}

/// One channel's timed phase.
#[derive(Clone, Copy)]
struct Timed {
    secs: f64,
    rss_kib: u64,
    cpu: f64,
}

/// One burst size through both channels, with one server and (`--replicas` > 1) with
/// that many replicas on one database.
struct Measured {
    files: usize,
    rows: u64,
    /// Per server count and round: (servers, drop, HTTP, the drop's per-phase profile
    /// lines).
    runs: Vec<(usize, Timed, Timed, Vec<String>)>,
}

impl Measured {
    fn rate(&self, t: &Timed) -> f64 {
        self.files as f64 / t.secs
    }

    /// The median drop and HTTP phases with `servers` servers (each by time on its own).
    fn median(&self, servers: usize) -> Option<(Timed, Timed)> {
        let mut drops: Vec<Timed> = Vec::new();
        let mut https: Vec<Timed> = Vec::new();
        for (n, drop, http, _) in &self.runs {
            if *n == servers {
                drops.push(*drop);
                https.push(*http);
            }
        }
        let mid = |mut v: Vec<Timed>| {
            v.sort_by(|a, b| a.secs.total_cmp(&b.secs));
            v.get(v.len() / 2).copied()
        };
        Some((mid(drops)?, mid(https)?))
    }
}

pub fn run(args: BurstArgs) -> anyhow::Result<()> {
    let sizes = parse_sizes(&args.sizes)?;
    ensure!(args.devices > 0, "--devices must be positive");
    ensure!(args.replicas > 0, "--replicas must be positive");
    ensure!(args.rounds > 0, "--rounds must be positive");
    let (dir, run) = workspace(&args.common, "burst")?;
    let counts = args.server_counts();
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
        let mut runs = Vec::new();
        let each = (0..args.rounds).flat_map(|r| counts.iter().map(move |&n| (r, n)));
        for (round, servers) in each {
            let tag = format!("{files}x{rows}-s{servers}-{round}");
            let (drop, phases) =
                through_drop_dir(&args, servers, &dir, run.path(), &tag, &plan, &bodies)?;
            eprintln!(
                "drop directory, {servers} server(s): {files} files in {:.2} s ({:.0}/s)",
                drop.secs,
                files as f64 / drop.secs
            );
            let http = through_http(
                &args,
                servers,
                &dir,
                run.path(),
                &tag,
                &plan,
                bodies.clone(),
            )?;
            eprintln!(
                "HTTP, {servers} server(s): {files} uploads in {:.2} s ({:.0}/s)",
                http.secs,
                files as f64 / http.secs
            );
            runs.push((servers, drop, http, phases));
        }
        measured.push(Measured { files, rows, runs });
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
/// before the servers start, then all renamed at once; done when every row is stored.
fn through_drop_dir(
    args: &BurstArgs,
    servers: usize,
    dir: &Path,
    run: &Path,
    tag: &str,
    plan: &Plan,
    bodies: &[Vec<Vec<u8>>],
) -> anyhow::Result<(Timed, Vec<String>)> {
    let db = TempDb::create(&args.common.pg)?;
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
    upload::quiet_start(&db.db)?;
    let connections = args.replica_connections;
    let (mut servers, logs) = cfg.serve_all(servers, connections, dir, &format!("drop-{tag}"))?;
    let mut session = db.db.session()?;
    let rows = staged.len() as u64 * plan.rows_per_batch;
    crate::run::poll(&mut session)?; // connect before the clock starts
    let cpu_before = cpu_of(&servers)?;

    let start = Instant::now();
    for (part, name) in &staged {
        std::fs::rename(part, name)?;
    }
    let timeout = Duration::from_secs(args.common.timeout_secs);
    crate::run::wait_for_rows(&mut session, &mut servers[0], &db.db, rows, timeout)?;
    let secs = start.elapsed().as_secs_f64();

    let rss_kib = peak_of(&servers)?;
    let cpu = cpu_of(&servers)? - cpu_before;
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
    Ok((Timed { secs, rss_kib, cpu }, phases))
}

/// The same batches POSTed by one keep-alive client per device, into a fresh
/// The same batches POSTed by one keep-alive client per device, into a fresh
/// database; with several servers the clients are spread over them.
fn through_http(
    args: &BurstArgs,
    servers: usize,
    dir: &Path,
    run: &Path,
    tag: &str,
    plan: &Plan,
    bodies: Vec<Vec<Vec<u8>>>,
) -> anyhow::Result<Timed> {
    let phase = upload::FreshPhase {
        pg: &args.common.pg,
        run,
        logs: dir,
        tag,
    };
    let (http, rss_kib) = phase.upload(servers, args.replica_connections, plan, bodies)?;
    ensure!(
        !http.stopped_by_time_limit,
        "the HTTP phase stopped at the time limit"
    );
    Ok(Timed {
        secs: http.secs,
        rss_kib,
        cpu: http.server_cpu,
    })
}

fn report(args: &BurstArgs, all: &[Measured]) -> String {
    let counts = args.server_counts();
    let mut lines = vec![
        format!(
            "burst: files dropped at once vs. the same batches over HTTP ({} devices){}{}",
            args.devices,
            match args.replicas {
                1 => String::new(),
                n => format!(", each with 1 server and with {n} replicas on one database"),
            },
            match args.rounds {
                1 => String::new(),
                n => format!("; {n} rounds, interleaved: medians"),
            }
        ),
        String::new(),
        "| measure                                  |              value |".into(),
        "| ---------------------------------------- | -----------------: |".into(),
    ];
    let ok = |b: bool| if b { "(met)" } else { "(NOT met)" };
    for m in all {
        let size = format!("{} x {}", m.files, m.rows);
        for &servers in &counts {
            let Some((drop, http)) = m.median(servers) else {
                continue;
            };
            let at = format!("{size}, {servers} server(s)");
            let ratio = m.rate(&drop) / m.rate(&http);
            lines.extend([
                row2(&format!("{at}: drop, s"), format!("{:.2}", drop.secs)),
                row2(
                    &format!("{at}: drop, files/s"),
                    format!("{:.0}", m.rate(&drop)),
                ),
                row2(&format!("{at}: HTTP, s"), format!("{:.2}", http.secs)),
                row2(
                    &format!("{at}: HTTP, batches/s"),
                    format!("{:.0}", m.rate(&http)),
                ),
                row2(
                    &format!("{at}: drop/HTTP (>= 0.90)"),
                    format!("{ratio:.2} {}", ok(ratio >= 0.9)),
                ),
                row2(
                    &format!("{at}: drop peak RSS, MB (< 100)"),
                    format!(
                        "{:.1} {}",
                        drop.rss_kib as f64 / 1024.0,
                        ok(drop.rss_kib < 100 * 1024)
                    ),
                ),
                row2(
                    &format!("{at}: HTTP peak RSS, MB"),
                    format!("{:.1}", http.rss_kib as f64 / 1024.0),
                ),
                row2(
                    &format!("{at}: server CPU drop / HTTP, s"),
                    format!("{:.2} / {:.2}", drop.cpu, http.cpu),
                ),
            ]);
        }
        if let (Some((drop1, http1)), Some((drop_n, http_n)), Some(&n)) =
            (m.median(1), m.median(args.replicas), counts.get(1))
        {
            let d = m.rate(&drop_n) / m.rate(&drop1);
            let h = m.rate(&http_n) / m.rate(&http1);
            lines.extend([
                row2(
                    &format!("{size}: drop, {n} / 1 server (>= 1)"),
                    format!("{d:.2} {}", ok(d >= 1.0)),
                ),
                row2(
                    &format!("{size}: HTTP, {n} / 1 server (>= 1)"),
                    format!("{h:.2} {}", ok(h >= 1.0)),
                ),
            ]);
        }
    }
    if args.rounds > 1 {
        lines.push(String::new());
        lines.push("Every round (files/s dropped, batches/s over HTTP):".into());
        lines.push(String::new());
        for m in all {
            for (n, drop, http, _) in &m.runs {
                lines.push(format!(
                    "- {} x {}, {n} server(s): drop {:.0}/s, HTTP {:.0}/s",
                    m.files,
                    m.rows,
                    m.rate(drop),
                    m.rate(http)
                ));
            }
        }
    }
    for m in all {
        // The profile of each server count's first round.
        for &servers in &counts {
            let Some((_, _, _, phases)) = m.runs.iter().find(|r| r.0 == servers) else {
                continue;
            };
            lines.push(String::new());
            lines.push(format!(
                "{} x {}, {servers} server(s), first round: per-phase profile of the drop (server log, one block per pass):",
                m.files, m.rows
            ));
            lines.extend(phases.iter().map(|l| match l.find("phase=") {
                Some(at) => format!("  {}", &l[at..]),
                None => format!("  {l}"),
            }));
        }
    }
    lines.join("\n")
}
