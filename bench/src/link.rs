//! `link`: one large import (200,000 sightings, about 49 MB of NDJSON) sent with the
//! real `ctdata` client through the loopback link simulator (`ctdata-link`, the one the
//! tests use): once through a link that cuts every connection after 3 s at 200 kB/s,
//! once through the same link without cuts, in the same run. Each phase has a fresh
//! database and server; the batch is the same file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use ctdata_link::{Conditions, Link};

use crate::data::{self, FileSpec};
use crate::pg::TempDb;
use crate::{finish, row2, server_config, workspace, Common};

#[derive(Args)]
pub struct LinkArgs {
    #[command(flatten)]
    common: Common,
    /// Sightings in the import (about 245 bytes each as NDJSON).
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    /// The cut link closes every connection this many seconds after it opened.
    #[arg(long, default_value_t = 3.0)]
    cut_secs: f64,
    /// Bytes per second each way, per connection, in both phases.
    #[arg(long, default_value_t = 200_000)]
    bytes_per_sec: u64,
    /// Each phase's `ctdata send` is stopped after this many seconds, done or not.
    #[arg(long, default_value_t = 900)]
    send_limit_secs: u64,
}

/// One phase: the import through one kind of link.
struct Phase {
    secs: f64,
    /// Bytes the client sent through the link (requests and their bodies).
    up_bytes: u64,
    connections: u64,
    cuts: u64,
}

pub fn run(args: LinkArgs) -> anyhow::Result<()> {
    ensure!(args.rows > 0, "--rows must be positive");
    ensure!(args.cut_secs > 0.0, "--cut-secs must be positive");
    let client = std::env::current_exe()?.with_file_name("ctdata");
    ensure!(
        client.exists(),
        "{} not found: build it with `cargo build --release -p ctdata-client` (bench/link.sh does)",
        client.display()
    );
    let (dir, run) = workspace(&args.common, "link")?;
    let spec = FileSpec {
        index: 0,
        device: data::device_name(0),
        rows: args.rows,
    };
    let started = Instant::now();
    let (file, raw) = data::write_ndjson(&run.path().join("data"), args.common.seed, &spec)?;
    eprintln!(
        "generated {} sightings, {raw} bytes of NDJSON, in {:.1} s",
        args.rows,
        started.elapsed().as_secs_f64()
    );
    let uncut = phase(&args, &dir, run.path(), &client, &file, "uncut", None)?;
    eprintln!(
        "uncut: {:.1} s, {} bytes up, {} connections",
        uncut.secs, uncut.up_bytes, uncut.connections
    );
    let cut = Duration::from_secs_f64(args.cut_secs);
    let cut = phase(&args, &dir, run.path(), &client, &file, "cut", Some(cut))?;
    eprintln!(
        "cut: {:.1} s, {} bytes up, {} connections, {} cut",
        cut.secs, cut.up_bytes, cut.connections, cut.cuts
    );
    finish(&dir, &report(&args, raw, &uncut, &cut))
}

fn phase(
    args: &LinkArgs,
    dir: &Path,
    run: &Path,
    client: &Path,
    file: &Path,
    tag: &str,
    cut_after: Option<Duration>,
) -> anyhow::Result<Phase> {
    let db = TempDb::create(&args.common.pg)?;
    let here = run.join(tag);
    std::fs::create_dir_all(&here)?;
    let cfg = server_config(&db, &here)?;
    cfg.migrate()?;
    let device = data::device_name(0);
    let token = cfg.cli(&["device", "add", &device], "")?;
    let log = dir.join(format!("server-{tag}.log"));
    let mut server = cfg.serve(&log, Duration::from_secs(60))?;
    let link = Link::new(
        server.http_addr()?,
        Conditions {
            cut_after,
            bytes_per_sec: Some(args.bytes_per_sec),
            ..Default::default()
        },
    );
    let home = here.join("client");
    let ctdata = |sub: &[&str]| {
        let mut cmd = Command::new(client);
        cmd.arg("--home").arg(&home).args(sub).stdin(Stdio::null());
        cmd
    };
    let url = format!("http://127.0.0.1:{}", link.port());
    let init = [
        "init",
        "--protocol",
        "https",
        "--url",
        &url,
        "--device",
        &device,
        "--token",
        &token,
    ];
    ok(ctdata(&init), "init")?;
    ok(ctdata(&["import", &file.display().to_string()]), "import")?;

    // Timed: one `send`, its retries included, until it exits with everything stored.
    let started = Instant::now();
    let out_path = dir.join(format!("client-{tag}.log"));
    let mut child = ctdata(&["send", "--retries", "100", "--retry-delay", "1s"])
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(out_path.with_extension("err"))?)
        .spawn()
        .context("starting ctdata send")?;
    let limit = Duration::from_secs(args.send_limit_secs);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{tag}: ctdata send did not finish within {limit:?} (see {})",
                out_path.display()
            );
        }
        server.ensure_running()?;
        std::thread::sleep(Duration::from_millis(50));
    };
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        status.success(),
        "{tag}: ctdata send failed ({status}): {}",
        std::fs::read_to_string(&out_path).unwrap_or_default()
    );
    let stored: u64 = db
        .db
        .scalar("SELECT coalesce(sum(inserted), 0) FROM batches")?;
    ensure!(
        stored == args.rows,
        "{tag}: {stored} of {} sightings stored",
        args.rows
    );
    let measured = Phase {
        secs,
        up_bytes: link.up_bytes(),
        connections: link.connections(),
        cuts: link.cuts(),
    };
    drop(link);
    server.stop(Duration::from_secs(30))?;
    Ok(measured)
}

fn ok(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running ctdata {what}"))?;
    ensure!(
        out.status.success(),
        "ctdata {what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn report(args: &LinkArgs, raw: u64, uncut: &Phase, cut: &Phase) -> String {
    let wire = cut.up_bytes as f64 / raw as f64;
    let ratio = uncut.secs / cut.secs;
    let verdict = |ok: bool| if ok { "ok" } else { "BELOW TARGET" };
    [
        format!(
            "CTData field link: {} sightings ({raw} bytes of NDJSON) sent with `ctdata send` \
             at {} B/s per connection, through a link that cuts every {} s and through the \
             same link without cuts",
            args.rows, args.bytes_per_sec, args.cut_secs
        ),
        String::new(),
        "| measure                                  |              value |".into(),
        "| ---------------------------------------- | -----------------: |".into(),
        row2("time to deliver, cut link, s", format!("{:.1}", cut.secs)),
        row2(
            "time to deliver, uncut link, s",
            format!("{:.1}", uncut.secs),
        ),
        row2(
            "ratio uncut / cut time (target ≥ 0.8)",
            format!("{ratio:.2} {}", verdict(ratio >= 0.8)),
        ),
        row2("bytes up through the cut link", format!("{}", cut.up_bytes)),
        row2(
            "wire / raw bytes (target ≤ 0.25)",
            format!("{wire:.3} {}", verdict(wire <= 0.25)),
        ),
        row2(
            "wire / raw bytes, uncut link",
            format!("{:.3}", uncut.up_bytes as f64 / raw as f64),
        ),
        row2(
            "connections (cut) / cut",
            format!("{} / {}", cut.connections, cut.cuts),
        ),
        row2("connections (uncut)", format!("{}", uncut.connections)),
    ]
    .join("\n")
}
