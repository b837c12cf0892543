//! `scale`: a database of `--rows` sightings (default 20 million) arriving over
//! `--months` months, loaded at bulk speed into the migrated (partitioned) schema, then
//! what the administrator and the devices see through the real server: time to the
//! first byte of an export (all rows, and the newest 10,000 after a cursor), the
//! dashboard's one-week page, bounding-box lookups, and HTTP ingest rows/s into that
//! database against the same uploads into an empty one.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;

use crate::http::Conn;
use crate::pg::{Psql, TempDb};
use crate::server::Server;
use crate::upload::{self, Plan};
use crate::{finish, row2, server_config, workspace, Common};

#[derive(Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    common: Common,
    /// Sightings to load.
    #[arg(long, default_value_t = 20_000_000)]
    rows: u64,
    /// Months the sightings arrived over (ending now); one partition each.
    #[arg(long, default_value_t = 24)]
    months: u32,
    /// Sightings per loaded batch.
    #[arg(long, default_value_t = 10_000)]
    rows_per_batch: u64,
    /// HTTP uploads per ingest phase (at 0 rows and at --rows).
    #[arg(long, default_value_t = 4_000)]
    requests: usize,
    /// Concurrent upload clients, each a device of its own.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Sightings per uploaded batch.
    #[arg(long, default_value_t = 50)]
    batch_rows: u64,
}

/// Devices the loaded rows come from (`field-01` …), apart from the uploaders.
const LOAD_DEVICES: i64 = 5;
/// Rows per INSERT statement of the bulk load.
const LOAD_CHUNK: u64 = 1_000_000;

pub fn run(args: ScaleArgs) -> anyhow::Result<()> {
    ensure!(
        args.rows > 0 && args.months > 0 && args.rows_per_batch > 0 && args.requests > 0,
        "sizes must be positive"
    );
    let common = &args.common;
    let (dir, run) = workspace(common, "scale")?;
    let plan = |seed: u64| Plan {
        clients: args.clients,
        per_client: args.requests.div_ceil(args.clients),
        rows_per_batch: args.batch_rows,
        seed,
        time_limit: Duration::from_secs(common.timeout_secs),
        timeout: Duration::from_secs(common.timeout_secs),
        pgbench: Default::default(),
    };

    // Ingest into an empty database.
    let empty = TempDb::create(&common.pg)?;
    std::fs::create_dir(run.path().join("empty"))?;
    let cfg = server_config(&empty, &run.path().join("empty"))?;
    cfg.migrate()?;
    let tokens = upload::register_devices(&cfg, args.clients)?;
    let at_zero_plan = plan(common.seed);
    let bodies = upload::bodies(&at_zero_plan)?;
    upload::settle_fresh(&empty.db)?;
    let server = cfg.serve(&dir.join("server-empty.log"), Duration::from_secs(30))?;
    let at_zero = upload::through_http(
        std::slice::from_ref(&server),
        &empty.db,
        &at_zero_plan,
        &tokens,
        bodies,
    )?;
    server.stop(Duration::from_secs(60))?;
    drop(empty);
    eprintln!(
        "ingest at 0 rows: {:.0} rows/s",
        at_zero.per_sec() * args.batch_rows as f64
    );

    // The big database.
    let db = TempDb::create(&common.pg)?;
    std::fs::create_dir(run.path().join("full"))?;
    let cfg = server_config(&db, &run.path().join("full"))?;
    cfg.migrate()?;
    let load = bulk_load(&db.db, args.rows, args.months, args.rows_per_batch)?;
    eprintln!(
        "loaded {} rows in {:.1} s ({:.0} rows/s; rows {:.1} s, indexes {:.1} s, vacuum {:.1} s)",
        args.rows,
        load.total(),
        args.rows as f64 / load.total(),
        load.rows_secs,
        load.index_secs,
        load.vacuum_secs
    );
    let size = db.db.run(
        "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits \
         WHERE inhparent = 'sightings'::regclass",
    )?;
    let tokens = upload::register_devices(&cfg, args.clients)?;
    cfg.cli(&["admin", "add", "alice"], "password123456\n")?;
    let admin = cfg.cli(&["admin", "token", "alice"], "")?;
    db.db.run("CHECKPOINT")?;
    let server = cfg.serve(&dir.join("server.log"), Duration::from_secs(30))?;

    let max_cursor: i64 = db.db.scalar("SELECT max(cursor) FROM sightings")?;
    let full = first_bytes(&server, &admin, "/api/v1/sightings?format=csv")?;
    let newest = first_bytes(
        &server,
        &admin,
        &format!("/api/v1/sightings?format=csv&since={}", max_cursor - 10_000),
    )?;
    eprintln!(
        "export TTFB: all rows {:.1} ms, after a cursor {:.1} ms",
        ms(full.first_body_byte),
        ms(newest.first_body_byte)
    );

    // The abandoned downloads' queries run on until the server notices: wait for them,
    // so they take nothing from what comes next.
    let waited = Instant::now();
    quiet(&db.db, Duration::from_secs(common.timeout_secs))?;
    let drained = waited.elapsed().as_secs_f64();

    let queries = dashboard_queries(&db.db, args.months)?;
    for q in &queries {
        eprintln!("{}: {:.1} ms, {} rows", q.name, q.ms, q.rows);
    }

    let at_n_plan = plan(common.seed + 1);
    let bodies = upload::bodies(&at_n_plan)?;
    let at_n = upload::through_http(
        std::slice::from_ref(&server),
        &db.db,
        &at_n_plan,
        &tokens,
        bodies,
    )?;
    server.stop(Duration::from_secs(60))?;

    let rate = |r: &upload::HttpRun| r.per_sec() * args.batch_rows as f64;
    let mut lines = vec![
        format!(
            "CTData at scale: {} sightings over {} monthly partitions, {} (table and indexes)",
            args.rows, args.months, size
        ),
        String::new(),
        "| measure                                  |              value |".into(),
        "| ---------------------------------------- | -----------------: |".into(),
        row2(
            "bulk load, rows/s",
            format!("{:.0}", args.rows as f64 / load.total()),
        ),
        row2(
            "  rows / indexes / vacuum, s",
            format!(
                "{:.0} / {:.0} / {:.0}",
                load.rows_secs, load.index_secs, load.vacuum_secs
            ),
        ),
        row2(
            "export all: first byte, ms",
            format!("{:.1}", ms(full.first_byte)),
        ),
        row2(
            "export all: first CSV line, ms",
            format!("{:.1}", ms(full.first_body_byte)),
        ),
        row2(
            "export all: first 1 MB, ms",
            format!("{:.1}", ms(full.first_mb)),
        ),
        row2(
            "export since max-10000: first line, ms",
            format!("{:.1}", ms(newest.first_body_byte)),
        ),
        row2(
            "abandoned exports' queries ended after, s",
            format!("{drained:.1}"),
        ),
    ];
    for q in &queries {
        lines.push(row2(
            &format!("{}, ms (rows)", q.name),
            format!("{:.1} ({})", q.ms, q.rows),
        ));
    }
    lines.extend([
        row2(
            "HTTP ingest at 0 rows, rows/s",
            format!("{:.0}", rate(&at_zero)),
        ),
        row2(
            &format!("HTTP ingest at {} rows, rows/s", args.rows),
            format!("{:.0}", rate(&at_n)),
        ),
        row2("  ratio", format!("{:.2}", rate(&at_n) / rate(&at_zero))),
        row2(
            "  p50 / p99 latency at N, ms",
            format!(
                "{:.1} / {:.1}",
                at_n.percentile_ms(0.5),
                at_n.percentile_ms(0.99)
            ),
        ),
        String::new(),
        format!(
            "Uploads: {} clients × {} batches of {} sightings per phase. Query times are \
             PostgreSQL's execution time (EXPLAIN ANALYZE, best of 3) of the SQL the server runs.",
            args.clients, at_n_plan.per_client, args.batch_rows
        ),
        String::new(),
    ]);
    for q in &queries {
        lines.push(format!("Plan of {}:", q.name));
        lines.extend(q.plan.lines().map(|l| format!("    {l}")));
    }
    finish(&dir, &lines.join("\n"))
}

/// Waits until no other session of the database runs a statement.
fn quiet(db: &Psql, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let busy: u64 = db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state = 'active' AND pid <> pg_backend_pid()",
        )?;
        if busy == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{busy} statements still running after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Load {
    rows_secs: f64,
    index_secs: f64,
    vacuum_secs: f64,
}

impl Load {
    fn total(&self) -> f64 {
        self.rows_secs + self.index_secs + self.vacuum_secs
    }
}

/// Loads `rows` generated sightings as a restore would: the secondary indexes, the id
/// trigger and the foreign-key checks off while the rows go in (`INSERT … SELECT` from `generate_series`, as
/// fast as COPY and without a file of gigabytes), then `sighting_ids` and every index
/// built in one pass each, then `VACUUM ANALYZE`. Batches arrive evenly over the last
/// `months` months, so each monthly partition gets its share in cursor order; each
/// sighting was observed up to 30 days before it arrived, in Kruger (lat -24..-22,
/// lon 31..32), like the other scenarios' data.
fn bulk_load(db: &Psql, rows: u64, months: u32, per_batch: u64) -> anyhow::Result<Load> {
    let started = Instant::now();
    let batches = rows.div_ceil(per_batch);
    db.run(&format!(
        "SELECT ctdata_sighting_partitions(now() - interval '{months} months', now())"
    ))?;
    db.run(&format!(
        "INSERT INTO devices (name) SELECT 'field-' || lpad(n::text, 2, '0') \
         FROM generate_series(1, {LOAD_DEVICES}) n"
    ))?;
    let first_device: i64 = db.scalar("SELECT min(id) FROM devices")?;
    // Batch k arrived at start + k × step: the received_at of its rows too.
    let span = format!("(interval '{months} months' - interval '1 hour')");
    let start = format!("(timestamptz '{}' - {span})", db.run("SELECT now()")?);
    let step = format!("({span} / {batches})");
    db.run(&format!(
        "INSERT INTO batches (device_id, batch_id, sha256, format, channel, file_name, \
         received_at, row_count, inserted, duplicates) \
         SELECT {first_device} + k % {LOAD_DEVICES}, gen_random_uuid(), 'bench', 'ndjson', 'bench', \
         'bulk-' || k || '.ndjson', {start} + k * {step}, {per_batch}, {per_batch}, 0 \
         FROM generate_series(0, {}) k",
        batches - 1
    ))?;
    let first_batch: i64 = db.scalar("SELECT min(id) FROM batches")?;
    let indexes: Vec<(String, String)> = db
        .run(
            "SELECT indexname || '|' || indexdef FROM pg_indexes WHERE schemaname = 'public' \
             AND tablename = 'sightings' AND indexname <> 'sightings_pkey' ORDER BY indexname",
        )?
        .lines()
        .filter_map(|l| l.split_once('|'))
        // pg_indexes shows a partitioned index as made `ON ONLY` the parent; made
        // again, it has to cover the partitions too.
        .map(|(n, d)| (n.to_string(), d.replacen(" ON ONLY ", " ON ", 1)))
        .collect();
    ensure!(
        !indexes.is_empty(),
        "no indexes on sightings: not migrated?"
    );
    for (name, _) in &indexes {
        db.run(&format!("DROP INDEX {name}"))?;
    }
    let mut lo = 0;
    while lo < rows {
        let hi = (lo + LOAD_CHUNK).min(rows) - 1;
        // As a restore does: no triggers (the id trigger, the foreign-key checks) for
        // rows made consistent here; sighting_ids is filled below in one pass.
        db.run(&format!(
            "SET session_replication_role = replica; \
             INSERT INTO sightings (id, batch, device_id, observed_at, observed_offset, latitude, \
             longitude, altitude, accuracy, observer, species, count, attributes, received_at) \
             SELECT gen_random_uuid(), {first_batch} + k, {first_device} + k % {LOAD_DEVICES}, \
             t - random() * interval '30 days', 7200, -24 + 2 * random(), 31 + random(), \
             CASE WHEN g % 10 = 0 THEN NULL ELSE 200 + 600 * random() END, 3 + 10 * random(), \
             (ARRAY['T. Mokoena', 'A. Nkosi', 'J. van Wyk', 'L. Maluleke'])[1 + g % 4], \
             (ARRAY['impala', 'blue wildebeest', 'plains zebra', 'african elephant', 'cape buffalo', \
             'giraffe', 'lion', 'leopard', 'spotted hyena', 'white rhinoceros', 'greater kudu', \
             'warthog'])[1 + (g * 7) % 12], 1 + g % 20, \
             jsonb_build_object('behaviour', (ARRAY['grazing', 'resting', 'walking', 'drinking', \
             'hunting'])[1 + g % 5]), t \
             FROM generate_series({lo}, {hi}) g, \
             LATERAL (SELECT g / {per_batch} AS k) kk, \
             LATERAL (SELECT {start} + k * {step} AS t) tt"
        ))?;
        lo = hi + 1;
        eprintln!("  {lo} rows in, {:.0} s", started.elapsed().as_secs_f64());
    }
    let rows_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    db.run("ALTER TABLE sighting_ids DROP CONSTRAINT sighting_ids_pkey")?;
    db.run("INSERT INTO sighting_ids (id) SELECT id FROM sightings")?;
    db.run("SET maintenance_work_mem = '512MB'; ALTER TABLE sighting_ids ADD PRIMARY KEY (id)")?;
    for (name, def) in &indexes {
        db.run(&format!("SET maintenance_work_mem = '512MB'; {def}"))
            .with_context(|| format!("rebuilding {name}"))?;
    }
    db.run(
        "UPDATE batches b SET cursor_first = c.lo, cursor_last = c.hi \
         FROM (SELECT batch, min(cursor) AS lo, max(cursor) AS hi FROM sightings GROUP BY batch) c \
         WHERE c.batch = b.id",
    )?;
    let index_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    db.run("VACUUM ANALYZE")?;
    let vacuum_secs = started.elapsed().as_secs_f64();
    let stored: u64 = db.scalar("SELECT count(*) FROM sighting_ids")?;
    ensure!(stored == rows, "{stored} ids stored, expected {rows}");
    Ok(Load {
        rows_secs,
        index_secs,
        vacuum_secs,
    })
}

struct FirstBytes {
    /// Request sent → status line.
    first_byte: Duration,
    /// Request sent → first body byte (the CSV header, then rows).
    first_body_byte: Duration,
    /// Request sent → 1 MB of body (or the whole body, if shorter).
    first_mb: Duration,
}

/// `GET path` as the administrator: the time to the first byte, the first body byte
/// and the first megabyte; the rest is not read (the connection is dropped).
fn first_bytes(server: &Server, token: &str, path: &str) -> anyhow::Result<FirstBytes> {
    let addr = server.http_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut conn = Conn::connect(addr).await?;
        let auth = format!("Bearer {token}");
        let start = Instant::now();
        conn.send("GET", path, &[("Authorization", &auth)], b"")
            .await?;
        let head = conn.head().await?;
        let first_byte = start.elapsed();
        if head.status != 200 {
            let text = conn.body_text(&head).await.unwrap_or_default();
            anyhow::bail!("GET {path} answered {}: {text}", head.status);
        }
        let mut first_body_byte = None;
        conn.body_start(&head, 1_000_000, |_| {
            first_body_byte.get_or_insert_with(|| start.elapsed());
        })
        .await?;
        let first_mb = start.elapsed();
        Ok(FirstBytes {
            first_byte,
            first_body_byte: first_body_byte.unwrap_or(first_mb),
            first_mb,
        })
    })
}

struct Query {
    name: String,
    ms: f64,
    rows: u64,
    plan: String,
}

/// The dashboard's and the export's queries, as the server writes them (server/src/db/
/// dashboard.rs `push_page`, export.rs), with the values in place of the parameters:
/// best of three `EXPLAIN (ANALYZE)` execution times.
fn dashboard_queries(db: &Psql, months: u32) -> anyhow::Result<Vec<Query>> {
    const PAGE: &str = "SELECT s.cursor, d.name AS device, s.batch, s.observed_at, s.latitude, \
         s.longitude, s.species, s.count, s.observer FROM sightings s JOIN devices d ON d.id = s.device_id \
         WHERE 1 = 1";
    const EXPORT: &str = "SELECT s.cursor, d.name AS device, b.batch_id, b.received_at, s.id, \
         s.observed_at, s.observed_offset, s.latitude, s.longitude, s.altitude, s.accuracy, \
         s.observer, s.species, s.count, s.attributes::text AS attributes, NULL AS attachments \
         FROM sightings s JOIN batches b ON b.id = s.batch JOIN devices d ON d.id = s.device_id";
    // A week in the middle of the observed times.
    let week_start = db.run(&format!(
        "SELECT date_trunc('day', now() - interval '{}')",
        format_args!("{} days", (months * 30) / 2)
    ))?;
    let week = format!(
        " AND s.observed_at >= '{week_start}' AND s.observed_at < timestamptz '{week_start}' + interval '7 days'"
    );
    let bbox = |lon: f64, lat: f64, size: f64| {
        format!(
            " AND s.longitude >= {lon} AND s.latitude >= {lat} AND s.longitude <= {} AND s.latitude <= {}",
            lon + size,
            lat + size
        )
    };
    let small = bbox(31.5, -23.0, 0.02);
    let wide = bbox(31.2, -23.5, 0.2);
    let newest: i64 = db.scalar("SELECT max(cursor) - 10000 FROM sightings")?;
    let cases = [
        (
            "export all, first 1000 rows",
            format!("{EXPORT} WHERE s.cursor > 0 ORDER BY s.cursor LIMIT 1000"),
        ),
        (
            "export since max-10000",
            format!("{EXPORT} WHERE s.cursor > {newest} ORDER BY s.cursor"),
        ),
        (
            "dashboard one week, map page (2000)",
            format!("{PAGE}{week} ORDER BY s.observed_at DESC, s.cursor DESC LIMIT 2000"),
        ),
        (
            "dashboard one week, table page (50)",
            format!("{PAGE}{week} ORDER BY s.observed_at DESC, s.cursor DESC LIMIT 50"),
        ),
        (
            "dashboard one week, count",
            format!("SELECT count(*) FROM sightings s WHERE 1 = 1{week}"),
        ),
        (
            "bbox 0.02° map page (2000)",
            format!("{PAGE}{small} ORDER BY s.cursor DESC LIMIT 2000"),
        ),
        (
            "bbox 0.02° export",
            format!("{EXPORT} WHERE s.cursor > 0{small} ORDER BY s.cursor"),
        ),
        (
            "bbox 0.2° map page (2000)",
            format!("{PAGE}{wide} ORDER BY s.cursor DESC LIMIT 2000"),
        ),
        (
            "bbox 0.2° export",
            format!("{EXPORT} WHERE s.cursor > 0{wide} ORDER BY s.cursor"),
        ),
    ];
    let mut out = Vec::new();
    for (name, sql) in cases {
        let mut best: Option<Query> = None;
        for _ in 0..3 {
            // As the server's own sessions run (see `db::pg::connect`).
            let plan = db.run(&format!(
                "SET jit = off; EXPLAIN (ANALYZE, COSTS OFF) {sql}"
            ))?;
            let ms: f64 = plan
                .lines()
                .find_map(|l| l.trim().strip_prefix("Execution Time: "))
                .and_then(|t| t.trim_end_matches(" ms").parse().ok())
                .with_context(|| format!("no execution time in the plan of {name}:\n{plan}"))?;
            let rows = plan
                .lines()
                .next()
                .and_then(|l| l.split("rows=").nth(1))
                .and_then(|r| r.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            if best.as_ref().is_none_or(|b| ms < b.ms) {
                best = Some(Query {
                    name: name.to_string(),
                    ms,
                    rows,
                    plan,
                });
            }
        }
        out.extend(best);
    }
    Ok(out)
}
