//! `ctdata-bench ftp`: many small batch files uploaded the way field software does it
//! (STOR to `NAME.part`, then RNFR/RNTO to `NAME`), by one client on one connection,
//! first to vsftpd and then to the embedded FTP server of `ctdata-server serve`, in the
//! same run. Reports files/s for both, their ratio, and for the embedded server the
//! time until every batch is in PostgreSQL.

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
}

const DEVICE: &str = "ranger-01";
const EMBEDDED_PASSIVE: &str = "30000-30099";
const VSFTPD_PASSIVE: (u16, u16) = (30100, 30199);

pub fn run(args: FtpArgs) -> anyhow::Result<()> {
    ensure!(
        args.files > 0 && args.file_bytes > 0,
        "sizes must be positive"
    );
    let common = &args.common;
    let (dir, run) = workspace(common, "ftp")?;
    let db = TempDb::create(&common.pg)?;
    let files = batches(common.seed, args.files, args.file_bytes)?;
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    println!(
        "{} valid CTData batches from {DEVICE}, {:.0} bytes each on average",
        files.len(),
        bytes as f64 / files.len() as f64
    );

    // vsftpd first, while nothing else runs.
    let vsftpd = Vsftpd::start(run.path(), VSFTPD_PASSIVE)?;
    let mut client = FtpClient::login(vsftpd.addr, "anonymous", "bench@")?;
    let started = Instant::now();
    for (name, body) in &files {
        let dest = format!("{}/{name}", vsftpd.upload_dir);
        client.put_then_rename(body, &format!("{dest}.part"), &dest)?;
    }
    let vsftpd_time = started.elapsed();
    client.quit();
    let landed = std::fs::read_dir(&vsftpd.uploads)?.count();
    ensure!(
        landed == files.len(),
        "vsftpd holds {landed} files, not {}",
        files.len()
    );
    drop(vsftpd);

    let mut cfg = server_config(&db, run.path())?;
    cfg.env = vec![
        ("CTDATA__FTP__ENABLED".into(), "true".into()),
        ("CTDATA__FTP__BIND".into(), "127.0.0.1:0".into()),
        ("CTDATA__FTP__PASSIVE_PORTS".into(), EMBEDDED_PASSIVE.into()),
    ];
    cfg.migrate()?;
    let token = cfg.cli(&["device", "add", DEVICE], "")?;
    let server = cfg.serve(&dir.join("server.log"), Duration::from_secs(60))?;
    let mut client = FtpClient::login(server.ftp_addr()?, DEVICE, &token)?;
    let mut poll = db.db.session()?;
    let started = Instant::now();
    for (name, body) in &files {
        client.put_then_rename(body, &format!("{name}.part"), name)?;
    }
    let embedded_time = started.elapsed();
    client.quit();
    let deadline = started + Duration::from_secs(common.timeout_secs);
    let sql = "SELECT count(*) FILTER (WHERE channel = 'ftp'), (SELECT count(*) FROM rejections) FROM batches";
    let end_to_end = loop {
        let row = poll.row(sql, Duration::from_secs(30))?;
        let (stored, rejected) = row.split_once('|').context("unexpected poll answer")?;
        let (stored, rejected): (usize, usize) = (stored.parse()?, rejected.parse()?);
        ensure!(
            rejected == 0,
            "{rejected} uploads were rejected; see {}/server.log",
            dir.display()
        );
        if stored >= files.len() {
            break started.elapsed();
        }
        ensure!(
            Instant::now() < deadline,
            "only {stored} of {} batches stored in time",
            files.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    server.stop(Duration::from_secs(30))?;

    let rate = |t: Duration| files.len() as f64 / t.as_secs_f64();
    let (v, e) = (rate(vsftpd_time), rate(embedded_time));
    let mut report = String::new();
    writeln!(
        report,
        "files: {} x ~{} B, STOR NAME.part + RNFR/RNTO, one client",
        files.len(),
        args.file_bytes
    )?;
    writeln!(
        report,
        "vsftpd:          {v:>8.0} files/s ({:.2} s)",
        vsftpd_time.as_secs_f64()
    )?;
    writeln!(
        report,
        "ctdata embedded: {e:>8.0} files/s ({:.2} s)",
        embedded_time.as_secs_f64()
    )?;
    writeln!(
        report,
        "ratio embedded/vsftpd: {:.2} (target >= 0.90)",
        e / v
    )?;
    writeln!(
        report,
        "end to end (first upload until all {} batches committed in PostgreSQL): {:.2} s, {:.0} batches/s",
        files.len(),
        end_to_end.as_secs_f64(),
        rate(end_to_end)
    )?;
    print!("{report}");
    std::fs::write(dir.join("results.txt"), &report)?;
    Ok(())
}

/// `count` valid batches of about `size` bytes each, as (file name, bytes).
fn batches(seed: u64, count: usize, size: usize) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
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
            Ok((format!("batch-{i:05}.json"), body))
        })
        .collect()
}
