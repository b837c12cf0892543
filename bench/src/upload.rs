//! `upload`: many devices POSTing small batches to `/api/v1/batches` at once, against
//! `pgbench` running the same insert transaction (one batch row, its sightings) at the
//! same concurrency, in the same database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::data::{self, FileSpec};
use crate::http::Conn;
use crate::pg::Psql;
use crate::server::{Server, ServerConfig};
use crate::sys::{own_cpu_secs, CpuSample, CpuUse};

pub struct Plan {
    pub clients: usize,
    /// Requests each client sends (pgbench: transactions per client).
    pub per_client: usize,
    pub rows_per_batch: u64,
    pub seed: u64,
    /// The HTTP phase stops sending when this has passed.
    pub time_limit: Duration,
    /// Kill pgbench when it runs longer than this.
    pub timeout: Duration,
    pub pgbench: PathBuf,
}

/// The HTTP phase.
pub struct HttpRun {
    pub requests: usize,
    pub secs: f64,
    pub body_bytes: u64,
    /// Per-request latency, sorted.
    pub latencies: Vec<Duration>,
    pub server_cpu: f64,
    /// This process's CPU: the HTTP clients.
    pub client_cpu: f64,
    pub cpu: CpuUse,
    pub activity: Activity,
    pub stopped_by_time_limit: bool,
}

impl HttpRun {
    pub fn per_sec(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1].as_secs_f64() * 1e3
    }
}

/// One pgbench phase.
pub struct PgbenchRun {
    pub transactions: usize,
    pub secs: f64,
    /// pgbench's own figure (without connection set-up).
    pub tps: f64,
    pub latency_ms: f64,
    pub cpu: CpuUse,
    pub activity: Activity,
}

/// Registers one device per client and returns their tokens.
pub fn register_devices(cfg: &ServerConfig, clients: usize) -> anyhow::Result<Vec<String>> {
    (0..clients)
        .map(|c| cfg.cli(&["device", "add", &data::device_name(c)], ""))
        .collect()
}

/// The bodies each client sends: client `c` is device `ranger-<c+1>`, and its batches
/// are distinct files of the generator (distinct batch and sighting ids).
pub fn bodies(plan: &Plan) -> anyhow::Result<Vec<Vec<Vec<u8>>>> {
    (0..plan.clients)
        .map(|c| {
            (0..plan.per_client)
                .map(|k| {
                    let spec = FileSpec {
                        index: c + k * plan.clients,
                        device: data::device_name(c),
                        rows: plan.rows_per_batch,
                    };
                    data::json_batch(plan.seed, &spec)
                })
                .collect()
        })
        .collect()
}

/// The timed HTTP phase: every client on its own keep-alive connection (opened before
/// the clock starts) sends its batches one after the other. With several servers
/// (replicas on one database) client `i` talks to server `i % n`, as a load balancer
/// without sticky sessions would spread them; the server CPU is their sum.
pub fn through_http(
    servers: &[Server],
    db: &Psql,
    plan: &Plan,
    tokens: &[String],
    bodies: Vec<Vec<Vec<u8>>>,
) -> anyhow::Result<HttpRun> {
    ensure!(!servers.is_empty(), "no server to upload to");
    let addrs = servers
        .iter()
        .map(Server::http_addr)
        .collect::<anyhow::Result<Vec<_>>>()?;
    // One thread for all clients: the load generator shares two cores with the server
    // and PostgreSQL, so it should cost as little as it can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut conns = Vec::with_capacity(plan.clients);
    for i in 0..plan.clients {
        conns.push(rt.block_on(Conn::connect(addrs[i % addrs.len()]))?);
    }
    // What the database held before: the scale scenario uploads into a full one.
    let batches_before: usize = db.scalar("SELECT count(*) FROM batches")?;
    let rows_before: u64 = db.scalar("SELECT count(*) FROM sightings")?;
    let cpu_before = CpuSample::now()?;
    let server_before = crate::server::cpu_of(servers)?;
    let client_before = own_cpu_secs()?;

    let start = Instant::now();
    let deadline = start + plan.time_limit;
    let (results, activity) = sampling_activity(db, || {
        rt.block_on(async {
            let tasks: Vec<_> = conns
                .into_iter()
                .zip(bodies)
                .zip(tokens.iter().cloned())
                .enumerate()
                .map(|(i, ((conn, bodies), token))| {
                    let addr = addrs[i % addrs.len()];
                    tokio::spawn(client(conn, addr, bodies, token, deadline))
                })
                .collect();
            let mut all = Vec::with_capacity(tasks.len());
            for t in tasks {
                all.push(t.await?);
            }
            anyhow::Ok(all)
        })
    })?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_before.until(&CpuSample::now()?);
    let server_cpu = crate::server::cpu_of(servers)? - server_before;
    let client_cpu = own_cpu_secs()? - client_before;

    let mut latencies = Vec::new();
    let mut sent_bytes = 0;
    for r in results {
        let (lat, bytes) = r?;
        latencies.extend(lat);
        sent_bytes += bytes;
    }
    latencies.sort();
    let requests = latencies.len();
    let expected = plan.clients * plan.per_client;
    let batches: usize = db.scalar::<usize>("SELECT count(*) FROM batches")? - batches_before;
    let rows: u64 = db.scalar::<u64>("SELECT count(*) FROM sightings")? - rows_before;
    ensure!(
        batches == requests && rows == requests as u64 * plan.rows_per_batch,
        "{requests} uploads answered 201 but the database holds {batches} batches, {rows} sightings"
    );
    Ok(HttpRun {
        requests,
        secs,
        body_bytes: sent_bytes,
        latencies,
        server_cpu,
        client_cpu,
        cpu,
        activity,
        stopped_by_time_limit: requests < expected,
    })
}

/// Where an HTTP phase on a fresh database of its own runs: the bench's PostgreSQL,
/// the run's folder (the servers' working folders go below it), the folder for their
/// logs, and the phase's name.
pub struct FreshPhase<'a> {
    pub pg: &'a str,
    pub run: &'a Path,
    pub logs: &'a Path,
    pub tag: &'a str,
}

impl FreshPhase<'_> {
    /// The uploads of `plan` to `servers` server(s) (replicas above 1, each with
    /// `connections` database connections when given) on a fresh migrated database
    /// with the devices registered, after a quiet start: the run and the servers'
    /// highest peak RSS.
    pub fn upload(
        &self,
        servers: usize,
        connections: Option<u32>,
        plan: &Plan,
        bodies: Vec<Vec<Vec<u8>>>,
    ) -> anyhow::Result<(HttpRun, u64)> {
        let db = crate::pg::TempDb::create(self.pg)?;
        let here = self.run.join(format!("http-{}", self.tag));
        std::fs::create_dir_all(&here)?;
        let cfg = crate::server_config(&db, &here)?;
        cfg.migrate()?;
        let tokens = register_devices(&cfg, plan.clients)?;
        quiet_start(&db.db)?;
        let tag = format!("http-{}", self.tag);
        let (servers, _) = cfg.serve_all(servers, connections, self.logs, &tag)?;
        let run = through_http(&servers, &db.db, plan, &tokens, bodies)?;
        let peak = crate::server::peak_of(&servers)?;
        for s in servers {
            s.stop(Duration::from_secs(60))?;
        }
        Ok((run, peak))
    }
}

/// A checkpoint (when the role may) and `sync`, so a phase does not write back what the
/// one before it left dirty. Like [`settle_fresh`], no `VACUUM ANALYZE`.
pub fn quiet_start(db: &Psql) -> anyhow::Result<()> {
    if let Err(e) = db.run("CHECKPOINT") {
        eprintln!("no CHECKPOINT before the phase ({e:#}); sync only");
    }
    let status = Command::new("sync").status()?;
    ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

/// One device: sends its batches in turn until done or past `deadline`; returns each
/// request's latency and the bytes sent. Anything but 201 fails the run.
async fn client(
    mut conn: Conn,
    addr: SocketAddr,
    bodies: Vec<Vec<u8>>,
    token: String,
    deadline: Instant,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let auth = format!("Bearer {token}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let mut latencies = Vec::with_capacity(bodies.len());
    let mut bytes = 0;
    for body in &bodies {
        if Instant::now() >= deadline {
            break;
        }
        let sent = Instant::now();
        conn.send("POST", "/api/v1/batches", &headers, body).await?;
        let head = conn.head().await?;
        let answer = conn.body_text(&head).await?;
        latencies.push(sent.elapsed());
        if head.status != 201 {
            bail!("POST to {addr} answered {}: {answer}", head.status);
        }
        if head
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            conn = Conn::connect(addr).await?;
        }
        bytes += body.len() as u64;
    }
    Ok((latencies, bytes))
}

/// Brings a freshly migrated database to a quiet start: a checkpoint and `sync`, but
/// no `VACUUM ANALYZE`. Analyzing the empty tables would record them as empty
/// (`reltuples = 0`); with autovacuum off (as on this machine) nothing would correct
/// that, and the foreign-key checks on `sightings.batch`, planned once per connection,
/// would scan `batches` sequentially for every row for the rest of the run (measured:
/// 10.6 billion tuples read in one run, throughput falling from 200 to 55 batches/s).
/// Never-analyzed tables are assumed to hold some rows and get index lookups.
pub fn settle_fresh(db: &Psql) -> anyhow::Result<()> {
    db.run("CHECKPOINT")?;
    let status = Command::new("sync").status().context("running sync")?;
    ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

/// A pgbench script doing what one upload stores: one `batches` row, then
/// `rows` sightings shaped like the generator's, in one transaction.
pub fn pgbench_script(rows: u64, devices: (i64, i64)) -> String {
    let pick = |list: &[&str]| {
        let quoted: Vec<String> = list.iter().map(|s| format!("'{s}'")).collect();
        format!(
            "(ARRAY[{}])[1 + floor(random() * {})::int]",
            quoted.join(", "),
            list.len()
        )
    };
    format!(
        "\\set dev random({lo}, {hi})\n\
         BEGIN;\n\
         INSERT INTO batches (device_id, batch_id, sha256, format, channel, file_name, created_at, \
         row_count, inserted, duplicates) VALUES (:dev, gen_random_uuid(), \
         md5(random()::text) || md5(random()::text), 'json', 'pgbench', 'upload', now(), {rows}, {rows}, 0) \
         RETURNING id AS batch \\gset\n\
         INSERT INTO sightings (id, batch, device_id, observed_at, observed_offset, latitude, longitude, \
         altitude, accuracy, observer, species, count, attributes) \
         SELECT gen_random_uuid(), :batch, :dev, \
         timestamptz '2024-01-01 00:00:00+02' + random() * interval '366 days', 7200, \
         round((-24 + 2 * random())::numeric, 6)::float8, round((31 + random())::numeric, 6)::float8, \
         CASE WHEN random() < 0.9 THEN round((150 + 750 * random())::numeric, 1)::float8 END, \
         round((2 + 28 * random())::numeric, 1)::float8, {observer}, {species}, \
         1 + floor(random() * 39)::bigint, jsonb_build_object('behaviour', {behaviour}) \
         FROM generate_series(1, {rows});\n\
         COMMIT;\n",
        lo = devices.0,
        hi = devices.1,
        observer = pick(data::OBSERVERS),
        species = pick(data::SPECIES),
        behaviour = pick(data::BEHAVIOURS),
    )
}

/// Runs `script` with pgbench at the plan's concurrency, timed, and checks what it
/// stored.
pub fn pgbench(db: &Psql, plan: &Plan, script: &Path) -> anyhow::Result<PgbenchRun> {
    let cpu_before = CpuSample::now()?;
    let start = Instant::now();
    let (out, activity) = sampling_activity(db, || {
        Command::new("timeout")
            .arg(plan.timeout.as_secs().to_string())
            .arg(&plan.pgbench)
            .args(["-n", "-c", &plan.clients.to_string(), "-j", "2", "-t"])
            .arg(plan.per_client.to_string())
            .arg("-f")
            .arg(script)
            .arg(&db.url)
            .output()
            .with_context(|| format!("running {}", plan.pgbench.display()))
    })?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_before.until(&CpuSample::now()?);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "pgbench failed ({}): {}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let field = |prefix: &str| -> anyhow::Result<f64> {
        let line = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .with_context(|| format!("no {prefix:?} in pgbench output:\n{stdout}"))?;
        let number = line.split_whitespace().next().unwrap_or("");
        number
            .parse()
            .with_context(|| format!("bad number after {prefix:?}: {line:?}"))
    };
    let transactions = plan.clients * plan.per_client;
    let batches: usize = db.scalar("SELECT count(*) FROM batches")?;
    ensure!(
        batches == transactions,
        "pgbench stored {batches} batches, expected {transactions}"
    );
    Ok(PgbenchRun {
        transactions,
        secs,
        tps: field("tps = ")?,
        latency_ms: field("latency average = ")?,
        cpu,
        activity,
    })
}

/// `pgbench` on the PATH, else the newest PostgreSQL's own.
pub fn find_pgbench() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("pgbench"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin/pgbench")))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

/// What the database's backends for this database were doing, averaged over samples
/// taken every 50 ms: how many were running, waiting for a lock,
/// waiting on WAL or other I/O, idle inside a transaction (waiting for their client's
/// next statement) and idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct Activity {
    pub samples: u64,
    pub running: f64,
    pub lock: f64,
    pub io: f64,
    pub in_tx: f64,
    pub idle: f64,
}

impl Activity {
    pub fn show(&self) -> String {
        format!(
            "{:.1} running, {:.1} waiting for a lock, {:.1} on WAL/IO, {:.1} idle in a transaction (waiting for the client), {:.1} idle ({} samples)",
            self.running, self.lock, self.io, self.in_tx, self.idle, self.samples
        )
    }
}

const ACTIVITY: &str = "SELECT \
     count(*) FILTER (WHERE state = 'active' AND wait_event_type IS NULL) || '|' || \
     count(*) FILTER (WHERE wait_event_type = 'Lock') || '|' || \
     count(*) FILTER (WHERE wait_event_type IN ('IO', 'LWLock')) || '|' || \
     count(*) FILTER (WHERE state LIKE 'idle in transaction%') || '|' || \
     count(*) FILTER (WHERE state = 'idle') \
     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()";

/// Samples [`Activity`] on its own connection until `work` returns.
pub fn sampling_activity<T>(
    db: &Psql,
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Activity)> {
    let mut session = db.session()?;
    session.row("SELECT 1", Duration::from_secs(30))?;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut sums = [0u64; 5];
            let mut samples = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(row) = session.row(ACTIVITY, Duration::from_secs(30)) else {
                    break;
                };
                for (sum, v) in sums.iter_mut().zip(row.split('|')) {
                    *sum += v.parse::<u64>().unwrap_or(0);
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            let avg = |i: usize| sums[i] as f64 / samples.max(1) as f64;
            Activity {
                samples,
                running: avg(0),
                lock: avg(1),
                io: avg(2),
                in_tx: avg(3),
                idle: avg(4),
            }
        });
        let result = work();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let activity = sampler.join().unwrap_or_default();
        result.map(|r| (r, activity))
    })
}
