//! `ctdata-bench ftp`: many small batch files uploaded the way field software does it
//! (STOR to `NAME.part`, then RNFR/RNTO to `NAME`), by one client on one connection,
//! to vsftpd and to the embedded FTP server of `ctdata-server serve`, alternately, in
//! the same run. Reports files/s for both, their ratio, and for the embedded server the
//! time until every batch of the round is in PostgreSQL.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;

use crate::data::{self, FileSpec};
use crate::ftp_client::FtpClient;
use crate::pg::TempDb;
use crate::vsftpd::Vsftpd;
use crate::{server_config, workspace, Common};

#[derive(Args)]
pub struct FtpArgs {
    #[command(flatten)]
    common: Common,
    /// Files to upload to each server.
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Approximate size of each file, in bytes.
    #[arg(long, default_value_t = 4096)]
    file_bytes: usize,
    /// Rounds, each uploading --files new files to vsftpd and then to the embedded
    /// server: on a shared machine, interleaving lets both meet the same noise.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const DEVICE: &str = "ranger-01";
const EMBEDDED_PASSIVE: &str = "30000-30099";
const VSFTPD_PASSIVE: (u16, u16) = (30100, 30199);

pub fn run(args: FtpArgs) -> anyhow::Result<()> {
    ensure!(
        args.files > 0 && args.file_bytes > 0 && args.rounds > 0,
        "sizes must be positive"
    );
    let common = &args.common;
    let (dir, run) = workspace(common, "ftp")?;
    let db = TempDb::create(&common.pg)?;
    let vsftpd = Vsftpd::start(run.path(), VSFTPD_PASSIVE)?;
    let mut cfg = server_config(&db, run.path())?;
    cfg.env = vec![
        ("CTDATA__FTP__ENABLED".into(), "true".into()),
        ("CTDATA__FTP__BIND".into(), "127.0.0.1:0".into()),
        ("CTDATA__FTP__PASSIVE_PORTS".into(), EMBEDDED_PASSIVE.into()),
    ];
    cfg.migrate()?;
    let token = cfg.cli(&["device", "add", DEVICE], "")?;
    let server = cfg.serve(&dir.join("server.log"), Duration::from_secs(60))?;
    let embedded = server.ftp_addr()?;
    let mut poll = db.db.session()?;

    let mut report = String::new();
    writeln!(
        report,
        "{} files of ~{} B per round, STOR NAME.part + RNFR/RNTO, one client; each round \
         vsftpd first, then the embedded server, then wait until its batches are committed",
        args.files, args.file_bytes
    )?;
    writeln!(
        report,
        "round  vsftpd files/s  embedded files/s  ratio  end-to-end s"
    )?;
    let (mut best_v, mut best_e) = (0f64, 0f64);
    for round in 0..args.rounds {
        // New batch ids every round: each is a real ingest, not a duplicate.
        let files = batches(
            common.seed + round as u64,
            args.files,
            args.file_bytes,
            round,
        )?;
        if round == 0 {
            let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
            println!(
                "{} valid CTData batches from {DEVICE} per round, {:.0} bytes each on average",
                files.len(),
                bytes as f64 / files.len() as f64
            );
        }
        let mut client = FtpClient::login(vsftpd.addr, "anonymous", "bench@")?;
        let started = Instant::now();
        for (name, body) in &files {
            let dest = format!("{}/{name}", vsftpd.upload_dir);
            client.put_then_rename(body, &format!("{dest}.part"), &dest)?;
        }
        let vsftpd_time = started.elapsed();
        client.quit();

        let mut client = FtpClient::login(embedded, DEVICE, &token)?;
        let started = Instant::now();
        for (name, body) in &files {
            client.put_then_rename(body, &format!("{name}.part"), name)?;
        }
        let embedded_time = started.elapsed();
        client.quit();
        let want = files.len() * (round + 1);
        let end_to_end = wait_stored(&mut poll, want, started, common.timeout_secs, &dir)?;

        let rate = |t: Duration| files.len() as f64 / t.as_secs_f64();
        let (v, e) = (rate(vsftpd_time), rate(embedded_time));
        best_v = best_v.max(v);
        best_e = best_e.max(e);
        let line = format!(
            "{:>5}  {v:>14.0}  {e:>16.0}  {:>5.2}  {:>12.2}",
            round + 1,
            e / v,
            end_to_end.as_secs_f64()
        );
        println!("{line}");
        writeln!(report, "{line}")?;
    }
    let landed = std::fs::read_dir(&vsftpd.uploads)?.count();
    ensure!(
        landed == args.files * args.rounds,
        "vsftpd holds {landed} files"
    );
    server.stop(Duration::from_secs(30))?;
    writeln!(
        report,
        "best of each: vsftpd {best_v:.0} files/s, embedded {best_e:.0} files/s, ratio {:.2} (target >= 0.90)",
        best_e / best_v
    )?;
    print!("{report}");
    std::fs::write(dir.join("results.txt"), &report)?;
    Ok(())
}

/// Polls until `want` FTP batches are stored; the time since `started`.
fn wait_stored(
    poll: &mut crate::pg::Session,
    want: usize,
    started: Instant,
    timeout_secs: u64,
    dir: &std::path::Path,
) -> anyhow::Result<Duration> {
    let deadline = started + Duration::from_secs(timeout_secs);
    let sql = "SELECT count(*) FILTER (WHERE channel = 'ftp'), (SELECT count(*) FROM rejections) FROM batches";
    loop {
        let row = poll.row(sql, Duration::from_secs(30))?;
        let (stored, rejected) = row.split_once('|').context("unexpected poll answer")?;
        let (stored, rejected): (usize, usize) = (stored.parse()?, rejected.parse()?);
        ensure!(
            rejected == 0,
            "{rejected} uploads were rejected; see {}/server.log",
            dir.display()
        );
        if stored >= want {
            return Ok(started.elapsed());
        }
        ensure!(
            Instant::now() < deadline,
            "only {stored} of {want} batches stored in time"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `count` valid batches of about `size` bytes each, as (file name, bytes).
fn batches(
    seed: u64,
    count: usize,
    size: usize,
    round: usize,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let spec = |index, rows| FileSpec {
        index,
        device: DEVICE.into(),
        rows,
    };
    // Size grows linearly with rows: measure two points, solve for the target.
    let one = data::json_batch(seed, &spec(0, 1))?.len();
    let eleven = data::json_batch(seed, &spec(0, 11))?.len();
    let per_row = ((eleven - one) / 10).max(1);
    let rows = (size.saturating_sub(one) / per_row + 1) as u64;
    (0..count)
        .map(|i| {
            let body = data::json_batch(seed, &spec(i, rows))?;
            Ok((format!("r{round}-batch-{i:05}.json"), body))
        })
        .collect()
}
