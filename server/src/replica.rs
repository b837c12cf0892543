//! Several `serve` processes (replicas) on one PostgreSQL database and one shared
//! `CTData` folder.
//!
//! Each replica holds a lease in the `replicas` table and renews it with a heartbeat.
//! Its claims carry its name (`<stamp>@<replica>…`, see [`crate::layout::claim_head`]),
//! so the others leave them alone while its lease runs, and take them over once it
//! has run out (the replica crashed or was stopped). Taking over a claim its owner is
//! still working on (a replica stalled past its lease) costs work, never a second copy:
//! the claim name and the batch id make the second attempt add nothing.
//!
//! On SQLite there is one server: [`SqliteLock`] keeps a second `serve` from starting.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::Db;

/// Longest replica name.
const NAME_MAX: usize = 40;

/// This server as one of several on one database.
#[derive(Debug, Clone)]
pub struct Replica {
    pub name: Arc<str>,
    pub lease: Duration,
    pub heartbeat: Duration,
}

/// One replica as the dashboard lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReplicaRow {
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    pub host: String,
    pub pid: i64,
}

impl ReplicaRow {
    pub fn live(&self) -> bool {
        self.lease_until > Utc::now()
    }
}

/// Whether `name` may name a replica: letters, digits and `_`, as it is part of every
/// claim name the replica makes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(format!(
            "replica.name {name:?} must be 1 to {NAME_MAX} characters long"
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "replica.name {name:?} may only hold letters, digits and _ (it is part of claim names)"
        ));
    }
    Ok(())
}

/// The name a replica goes by when none is configured: the host's, made fit.
pub fn default_name() -> String {
    let mut name: String = host()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(NAME_MAX)
        .collect();
    if name.is_empty() {
        name = "server".into();
    }
    name
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

impl Replica {
    /// Takes (or takes back, after a restart) this replica's row and lease.
    pub async fn register(&self, db: &Db) -> anyhow::Result<()> {
        let pid = i64::from(std::process::id());
        let previous = self.row(db).await?;
        if let Some(p) = previous.filter(ReplicaRow::live) {
            if p.pid != pid || p.host != host() {
                tracing::warn!(
                    replica = %self.name,
                    previous_host = p.host,
                    previous_pid = p.pid,
                    "this replica's previous lease has not run out: if another server still runs \
                     under the name {:?}, give each its own replica.name",
                    &*self.name
                );
            }
        }
        let sql = match db {
            Db::Postgres(_) => {
                "INSERT INTO replicas (name, started_at, heartbeat_at, lease_until, host, pid) \
                 VALUES ($1, now(), now(), now() + make_interval(secs => $2), $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET started_at = excluded.started_at, \
                 heartbeat_at = excluded.heartbeat_at, lease_until = excluded.lease_until, \
                 host = excluded.host, pid = excluded.pid"
            }
            Db::Sqlite(_) => {
                "INSERT INTO replicas (name, started_at, heartbeat_at, lease_until, host, pid) \
                 VALUES ($1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || $2 || ' seconds'), $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET started_at = excluded.started_at, \
                 heartbeat_at = excluded.heartbeat_at, lease_until = excluded.lease_until, \
                 host = excluded.host, pid = excluded.pid"
            }
        };
        let lease = self.lease.as_secs_f64();
        crate::db::on_pool!(db, p => sqlx::query(sql)
            .bind(&*self.name).bind(lease).bind(host()).bind(pid)
            .execute(p).await.map(drop))
        .context("register this replica")?;
        Ok(())
    }

    /// Renews the lease; a row that is gone (deleted by hand) is made again.
    pub async fn renew(&self, db: &Db) -> anyhow::Result<()> {
        let sql = match db {
            Db::Postgres(_) => {
                "UPDATE replicas SET heartbeat_at = now(), \
                 lease_until = now() + make_interval(secs => $1) WHERE name = $2"
            }
            Db::Sqlite(_) => {
                "UPDATE replicas SET heartbeat_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                 lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || $1 || ' seconds') \
                 WHERE name = $2"
            }
        };
        let lease = self.lease.as_secs_f64();
        let done = crate::db::on_pool!(db, p => sqlx::query(sql)
            .bind(lease).bind(&*self.name)
            .execute(p).await.map(|r| r.rows_affected()))?;
        if done == 0 {
            self.register(db).await?;
        }
        Ok(())
    }

    /// Gives the lease up at a clean stop: the others may take over at once.
    pub async fn release(&self, db: &Db) -> anyhow::Result<()> {
        let sql = match db {
            Db::Postgres(_) => "UPDATE replicas SET lease_until = now() WHERE name = $1",
            Db::Sqlite(_) => {
                "UPDATE replicas SET lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE name = $1"
            }
        };
        crate::db::on_pool!(db, p => sqlx::query(sql).bind(&*self.name).execute(p).await.map(drop))?;
        Ok(())
    }

    async fn row(&self, db: &Db) -> anyhow::Result<Option<ReplicaRow>> {
        Ok(list(db).await?.into_iter().find(|r| *r.name == *self.name))
    }

    /// Renews the lease every heartbeat until `stop`, then releases it.
    pub fn spawn_heartbeat(&self, db: Db, stop: CancellationToken) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                match me.renew(&db).await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(replica = %me.name, "the replica's heartbeat is recorded again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(
                            replica = %me.name,
                            "cannot renew this replica's lease: {e:#}; once it runs out \
                             ({:?}), other replicas take over its claimed files",
                            me.lease
                        );
                    }
                    Err(_) => {}
                }
            }
            if let Err(e) = me.release(&db).await {
                tracing::warn!(replica = %me.name, "could not release the lease at stop: {e:#}");
            }
        })
    }

    /// The replicas whose lease has not run out, by the database's clock.
    pub async fn live(db: &Db) -> anyhow::Result<HashSet<String>> {
        let sql = match db {
            Db::Postgres(_) => "SELECT name FROM replicas WHERE lease_until > now()",
            Db::Sqlite(_) => {
                "SELECT name FROM replicas WHERE lease_until > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
            }
        };
        let names: Vec<String> =
            crate::db::on_pool!(db, p => sqlx::query_scalar(sql).fetch_all(p).await)?;
        Ok(names.into_iter().collect())
    }

    /// Whether this replica runs `job` now: the one that moves its last run forward,
    /// when the last run (by any replica) is at least `every` ago, does.
    pub async fn claim_run(&self, db: &Db, job: &str, every: Duration) -> anyhow::Result<bool> {
        // A little early is still this tick: replicas' ticks drift apart.
        let due = every.mul_f64(0.9).as_secs_f64();
        let sql = match db {
            Db::Postgres(_) => {
                "INSERT INTO scheduled_runs (job, last_run, replica) VALUES ($1, now(), $2) \
                 ON CONFLICT (job) DO UPDATE SET last_run = excluded.last_run, replica = excluded.replica \
                 WHERE scheduled_runs.last_run <= now() - make_interval(secs => $3) RETURNING job"
            }
            Db::Sqlite(_) => {
                "INSERT INTO scheduled_runs (job, last_run, replica) \
                 VALUES ($1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), $2) \
                 ON CONFLICT (job) DO UPDATE SET last_run = excluded.last_run, replica = excluded.replica \
                 WHERE scheduled_runs.last_run <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || $3 || ' seconds') \
                 RETURNING job"
            }
        };
        let won: Option<String> = crate::db::on_pool!(db, p => sqlx::query_scalar(sql)
            .bind(job).bind(&*self.name).bind(due)
            .fetch_optional(p).await)?;
        Ok(won.is_some())
    }
}

/// Every replica that ever used this database, newest heartbeat first.
pub async fn list(db: &Db) -> anyhow::Result<Vec<ReplicaRow>> {
    const SQL: &str =
        "SELECT name, started_at, heartbeat_at, lease_until, host, pid FROM replicas \
                       ORDER BY heartbeat_at DESC, name";
    Ok(crate::db::on_pool!(db, p => sqlx::query_as(SQL).fetch_all(p).await)?)
}

/// An exclusive lock on a file beside the SQLite database, held while `serve` runs: a
/// second `serve` on the same database refuses to start.
pub struct SqliteLock {
    _file: nix::fcntl::Flock<File>,
    pub path: PathBuf,
}

impl SqliteLock {
    /// Locks `<database>.serve.lock`, or says which server holds it.
    pub fn acquire(database: &Path) -> anyhow::Result<SqliteLock> {
        let mut name = database.as_os_str().to_owned();
        name.push(".serve.lock");
        let path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open the lock file {}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                use std::io::{Seek, Write};
                let _ = locked.set_len(0);
                let _ = locked.rewind();
                let _ = writeln!(locked, "pid {} on {}", std::process::id(), host());
                Ok(SqliteLock {
                    _file: locked,
                    path,
                })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "another ctdata-server serve is already using the SQLite database {} ({}; lock \
                     file {}): SQLite serves one server only; stop the other one, or move both to \
                     PostgreSQL to run several replicas",
                    database.display(),
                    match holder.trim() {
                        "" => "its process is unknown",
                        h => h,
                    },
                    path.display()
                )
            }
            Err((_, e)) => Err(anyhow::anyhow!(
                "cannot lock {} to run alone on the SQLite database: {e}",
                path.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("replica_1").is_ok());
        assert!(check_name("a-b").is_err());
        assert!(check_name("a.b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(41)).is_err());
        assert!(check_name(&default_name()).is_ok());
    }

    #[test]
    fn a_second_lock_on_one_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ctdata.db");
        let first = SqliteLock::acquire(&db).unwrap();
        let second = SqliteLock::acquire(&db).err().unwrap().to_string();
        assert!(
            second.contains("already using the SQLite database"),
            "{second}"
        );
        assert!(
            second.contains(&format!("pid {}", std::process::id())),
            "{second}"
        );
        drop(first);
        SqliteLock::acquire(&db).unwrap();
    }
}
