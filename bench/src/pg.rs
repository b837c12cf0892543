//! PostgreSQL through the `psql` CLI: the baseline is `psql \copy` anyway, and the
//! bench then needs no database driver of its own.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use anyhow::{bail, ensure, Context};

/// Runs one statement per call, each in a psql process of its own.
#[derive(Debug, Clone)]
pub struct Psql {
    pub url: String,
}

impl Psql {
    fn command(&self) -> Command {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA"])
            .arg(&self.url);
        cmd
    }

    /// Runs `sql` (one statement, or a psql meta-command) and returns its trimmed output.
    pub fn run(&self, sql: &str) -> anyhow::Result<String> {
        let out = self
            .command()
            .arg("-c")
            .arg(sql)
            .output()
            .context("running psql (is the PostgreSQL client installed?)")?;
        if !out.status.success() {
            bail!(
                "psql failed ({}) on {sql:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// batch UUID → (batches.id, devices.id) for every stored batch: the references a
    /// baseline needs to load the very rows the server stored.
    pub fn stored_batches(
        &self,
    ) -> anyhow::Result<std::collections::HashMap<uuid::Uuid, (i64, i64)>> {
        let mut stored = std::collections::HashMap::new();
        for line in self
            .run("SELECT batch_id, id, device_id FROM batches")?
            .lines()
        {
            let mut f = line.split('|');
            let (Some(uuid), Some(batch), Some(device)) = (f.next(), f.next(), f.next()) else {
                anyhow::bail!("unexpected batches row {line:?}");
            };
            stored.insert(uuid.parse()?, (batch.parse()?, device.parse()?));
        }
        Ok(stored)
    }

    pub fn scalar<T: std::str::FromStr>(&self, sql: &str) -> anyhow::Result<T> {
        let out = self.run(sql)?;
        out.parse()
            .map_err(|_| anyhow::anyhow!("{sql:?} returned {out:?}, not a number"))
    }

    /// One long-lived connection, for polling: a psql process and a backend per poll
    /// would cost CPU the server under test is competing for.
    pub fn session(&self) -> anyhow::Result<Session> {
        let mut child = self
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting psql")?;
        let stdin = child.stdin.take().context("psql stdin")?;
        let stdout = child.stdout.take().context("psql stdout")?;
        let (tx, lines) = mpsc::channel();
        // A reader thread, so a hung psql costs a timeout rather than the whole run.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_err() || tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        Ok(Session {
            child,
            stdin,
            lines,
        })
    }
}

pub struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Session {
    /// Runs a query returning exactly one row and returns it (columns joined by `|`).
    pub fn row(&mut self, sql: &str, timeout: Duration) -> anyhow::Result<String> {
        writeln!(self.stdin, "{sql};").context("psql session went away")?;
        self.stdin.flush()?;
        self.lines
            .recv_timeout(timeout)
            .with_context(|| format!("no answer from psql to {sql:?} within {timeout:?}"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database of its own for one run, dropped when this goes out of scope.
pub struct TempDb {
    admin: Psql,
    pub name: String,
    pub db: Psql,
}

impl TempDb {
    pub fn create(admin_url: &str) -> anyhow::Result<TempDb> {
        ensure_loopback(admin_url)?;
        let admin = Psql {
            url: admin_url.to_string(),
        };
        let name = format!("ctdata_bench_{}", uuid::Uuid::new_v4().simple());
        admin.run(&format!("CREATE DATABASE {name}"))?;
        let db = Psql {
            url: with_database(admin_url, &name)?,
        };
        Ok(TempDb { admin, name, db })
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = self.admin.run(&sql) {
            eprintln!("warning: could not drop database {}: {e:#}", self.name);
        }
    }
}

/// `postgres://user@host:port/admin?opts` → the same with `name` as the database.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .context("database URL without scheme")?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(format!("{scheme}://{authority}/{name}{query}"))
}

/// The bench creates and drops databases: keep it away from anything but this machine.
fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    ensure!(
        host == "localhost" || host == "::1" || host.starts_with("127."),
        "refusing to benchmark against {host:?}: only loopback PostgreSQL servers are used"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_swapped_and_options_kept() {
        let url = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";
        assert_eq!(
            with_database(url, "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x?sslmode=disable"
        );
    }

    #[test]
    fn only_loopback_hosts() {
        assert!(ensure_loopback("postgres://postgres@127.0.0.1:5432/postgres").is_ok());
        assert!(ensure_loopback("postgres://u:p@localhost/db").is_ok());
        assert!(ensure_loopback("postgres://u@[::1]:5432/db").is_ok());
        assert!(ensure_loopback("postgres://u@db.example.com/db").is_err());
    }
}
