//! Whether the database takes writes: the last load's outcome, and a small real write to
//! find out again once nothing has been written for a while.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Db;

/// A failed write this recent is believed without a probe: a probe row can fit where a
/// batch cannot, and readiness should not flap between two failing uploads.
const PROBE_AFTER: Duration = Duration::from_secs(10);

/// Why the database refuses writes.
#[derive(Debug, Clone)]
pub struct WriteFailure {
    /// The first failure of this run of failures.
    pub since: DateTime<Utc>,
    pub reason: String,
    last: Instant,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the database refuses writes since {}: {}",
            self.since.format("%Y-%m-%d %H:%M:%S UTC"),
            self.reason
        )
    }
}

#[derive(Debug, Default)]
pub struct WriteHealth {
    failure: Mutex<Option<WriteFailure>>,
}

impl WriteHealth {
    pub fn failed(&self, error: &anyhow::Error) {
        let mut reason = format!("{error:#}");
        if reason.len() > 300 {
            let cut = (0..=300)
                .rev()
                .find(|&i| reason.is_char_boundary(i))
                .unwrap_or(0);
            reason.truncate(cut);
            reason.push('…');
        }
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        let since = f.as_ref().map_or_else(Utc::now, |old| old.since);
        *f = Some(WriteFailure {
            since,
            reason,
            last: Instant::now(),
        });
    }

    pub fn succeeded(&self) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The current failure, if any, without touching the database.
    pub fn failure(&self) -> Option<WriteFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current failure; when the last one is older than [`PROBE_AFTER`] a probe
    /// write decides first, so space freed while no uploads come is noticed.
    pub async fn check(&self, db: &Db) -> Option<WriteFailure> {
        let failure = self.failure()?;
        if failure.last.elapsed() < PROBE_AFTER {
            return Some(failure);
        }
        match db.probe_write().await {
            Ok(()) => self.succeeded(),
            Err(e) => self.failed(&e.into()),
        }
        self.failure()
    }
}

impl Db {
    /// Overwrites the one probe row: a real, committed write.
    #[tracing::instrument(skip_all, err)]
    pub async fn probe_write(&self) -> sqlx::Result<()> {
        let now = Utc::now().to_rfc3339();
        const SQL: &str = "INSERT INTO write_probe (id, probed_at) VALUES (1, $1) \
                           ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at";
        on_pool!(self, p => sqlx::query(SQL).bind(now).execute(p).await.map(drop))?;
        Ok(())
    }
}
