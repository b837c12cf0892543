//! The real `ctdata-server` binary as a child process.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// What `serve` prints on standard output once it listens: `… http=ADDR ftp=ADDR`.
const READY_LINE: &str = "ctdata-server: ready ";

/// How the server under test is configured: environment only, run from a directory of
/// its own so no stray `./ctdata.toml` is picked up.
#[derive(Clone)]
pub struct ServerConfig {
    pub binary: PathBuf,
    pub db_url: String,
    pub drop_dir: PathBuf,
    pub workdir: PathBuf,
    /// More `CTDATA__…` settings (e.g. to turn on FTP).
    pub env: Vec<(String, String)>,
}

impl ServerConfig {
    fn command(&self, sub: &str) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(sub)
            .current_dir(&self.workdir)
            .env("CTDATA__DATABASE__URL", &self.db_url)
            .env("CTDATA__INGEST__DROP_DIR", &self.drop_dir)
            .env("CTDATA__INGEST__SETTLE_SECS", "0")
            .env("CTDATA__INGEST__RESCAN_SECS", "1")
            // Any free loopback port: never collides with a server already on 8080.
            .env("CTDATA__HTTP__BIND", "127.0.0.1:0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `ctdata-server ARGS…` (e.g. `device add ranger-01`) with `input` on its
    /// standard input; returns its trimmed standard output.
    pub fn cli(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        let (sub, rest) = args.split_first().context("no subcommand")?;
        let mut child = self
            .command(sub)
            .args(rest)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running ctdata-server {}", args.join(" ")))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "ctdata-server {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn migrate(&self) -> anyhow::Result<()> {
        let out = self
            .command("migrate")
            .output()
            .context("running migrate")?;
        ensure!(
            out.status.success(),
            "ctdata-server migrate failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Starts `serve` with stderr to `log` and stdout beside it (`.out`), and waits
    /// for its ready line.
    pub fn serve(&self, log: &Path, ready_within: Duration) -> anyhow::Result<Server> {
        let out = log.with_extension("out");
        let child = self
            .command("serve")
            .stdout(File::create(&out)?)
            .stderr(File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let mut server = Server {
            child,
            log: log.to_path_buf(),
            ready: String::new(),
        };
        server.ready = server.wait_for_ready(&out, ready_within)?;
        Ok(server)
    }

    /// Starts `n` servers on this database: a lone server for 1, else replicas
    /// `bench0..` (with `connections` as each one's `database.max_connections`, when
    /// given), each logging to `<dir>/server-<tag>-r<i>.log`.
    pub fn serve_all(
        &self,
        n: usize,
        connections: Option<u32>,
        dir: &Path,
        tag: &str,
    ) -> anyhow::Result<(Vec<Server>, Vec<PathBuf>)> {
        let mut servers = Vec::new();
        let mut logs = Vec::new();
        for r in 0..n {
            let mut cfg = self.clone();
            if n > 1 {
                cfg.env
                    .push(("CTDATA__REPLICA__NAME".to_string(), format!("bench{r}")));
                if let Some(c) = connections {
                    cfg.env.push((
                        "CTDATA__DATABASE__MAX_CONNECTIONS".to_string(),
                        c.to_string(),
                    ));
                }
            }
            let log = dir.join(format!("server-{tag}-r{r}.log"));
            servers.push(cfg.serve(&log, Duration::from_secs(30))?);
            logs.push(log);
        }
        Ok((servers, logs))
    }
}

/// The CPU time of `servers` together.
pub fn cpu_of(servers: &[Server]) -> anyhow::Result<f64> {
    servers.iter().map(Server::cpu_secs).sum()
}

/// The highest peak RSS of `servers`.
pub fn peak_of(servers: &[Server]) -> anyhow::Result<u64> {
    servers
        .iter()
        .map(Server::peak_rss_kib)
        .try_fold(0, |m, p| p.map(|p| m.max(p)))
}

pub struct Server {
    child: Child,
    log: PathBuf,
    /// The fields of the ready line: `http=ADDR ftp=ADDR`.
    ready: String,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_for_ready(&mut self, out: &Path, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(out)?;
            if let Some(fields) = text.lines().find_map(|l| l.strip_prefix(READY_LINE)) {
                return Ok(fields.to_string());
            }
            self.ensure_running()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "server printed no ready line within {within:?}; log:\n{}",
            self.log_tail()
        )
    }

    /// Fails, with the end of the log, if the server has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("server exited ({status}); log:\n{}", self.log_tail());
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Where the HTTP API listens (plain HTTP: the benchmarks do not set up TLS).
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        self.ready_addr("http")
    }

    /// Where the FTP server listens.
    pub fn ftp_addr(&self) -> anyhow::Result<SocketAddr> {
        self.ready_addr("ftp")
    }

    fn ready_addr(&self, key: &str) -> anyhow::Result<SocketAddr> {
        let addr = self
            .ready
            .split_whitespace()
            .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("no {key}= in the ready line {:?}", self.ready))?;
        addr.parse()
            .with_context(|| format!("bad listening address {addr:?}"))
    }

    /// Resident set size now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .with_context(|| format!("no {field} in /proc/<pid>/status"))?;
        let kib = line.trim().trim_end_matches("kB").trim();
        Ok(kib.parse()?)
    }

    /// CPU time (user + system) the server has used so far, in seconds: tells whether
    /// the server itself or the database is the bottleneck.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name, which is in parentheses and may hold spaces:
        // state is field 3, utime 14, stime 15.
        let rest = stat
            .rsplit_once(')')
            .context("malformed /proc/<pid>/stat")?
            .1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
            + fields.get(12).context("no stime")?.parse::<u64>()?;
        Ok(ticks as f64 / clock_ticks_per_sec())
    }

    /// SIGTERM (the server finishes the file in hand), then waits for it to exit.
    pub fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {} failed", self.pid());
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "server exited with {status} on SIGTERM");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("server still running {within:?} after SIGTERM")
    }
}

/// `getconf CLK_TCK`; 100, the value on every Linux we run on, if that fails.
pub fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

impl Drop for Server {
    /// A run that failed half-way must not leave a server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
