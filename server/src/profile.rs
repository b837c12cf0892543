//! Where the time of a drop-directory burst goes, phase by phase.
//!
//! Every phase adds its elapsed time to a process-wide counter (two clock reads and two
//! atomic adds: nothing next to a rename or a round trip). With `CTDATA_PROFILE=phases`
//! in the environment, a burst's last progress line is followed by one line per phase:
//! how often it ran, its total time and its mean. Phases of files in flight at once
//! overlap, so the totals may add up to more than the burst's wall-clock time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// One step of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Listing the delivery folders and their settled files.
    Walk,
    /// The rename into `.processing/`.
    Claim,
    /// Making claimed files durable (`syncfs`) before they are read.
    Durable,
    /// Reading and hashing the file (format, header, sha256).
    Scan,
    /// Finding the device's stored letter case.
    Device,
    /// The load: the transaction that stores the batch, with the rows read again.
    Load,
    /// What follows a stored batch: skipped ids, superseded truncated copies.
    After,
    /// Writing the receipt.
    Receipt,
    /// Moving the file to `archive/` or `rejected/`.
    File,
}

const PHASES: [Phase; 9] = [
    Phase::Walk,
    Phase::Claim,
    Phase::Durable,
    Phase::Scan,
    Phase::Device,
    Phase::Load,
    Phase::After,
    Phase::Receipt,
    Phase::File,
];

static NANOS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];
static COUNTS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];

impl Phase {
    fn index(self) -> usize {
        PHASES.iter().position(|p| *p == self).unwrap_or(0)
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Walk => "walk",
            Phase::Claim => "claim",
            Phase::Durable => "durable",
            Phase::Scan => "scan",
            Phase::Device => "device",
            Phase::Load => "load",
            Phase::After => "after",
            Phase::Receipt => "receipt",
            Phase::File => "file",
        }
    }
}

/// Whether the per-phase lines were asked for.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("CTDATA_PROFILE").is_ok_and(|v| v.split(',').any(|p| p.trim() == "phases"))
    })
}

/// Adds `count` runs of `phase` that took `since.elapsed()` in all.
pub fn add(phase: Phase, since: Instant, count: u64) {
    let i = phase.index();
    let nanos = since.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
    NANOS[i].fetch_add(nanos, Ordering::Relaxed);
    COUNTS[i].fetch_add(count, Ordering::Relaxed);
}

/// Times `f` as one run of `phase`.
pub fn time<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    add(phase, started, 1);
    out
}

/// Times the future `f` as one run of `phase`.
pub async fn time_async<T>(phase: Phase, f: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    add(phase, started, 1);
    out
}

/// Times its own life as one run of a phase.
pub struct Timer(Phase, Instant);

impl Timer {
    pub fn new(phase: Phase) -> Timer {
        Timer(phase, Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        add(self.0, self.1, 1);
    }
}

/// Logs every phase's totals since the last report (when asked for), and starts again.
pub fn report(files: usize, wall_secs: f64) {
    let taken: Vec<(Phase, u64, u64)> = PHASES
        .iter()
        .map(|p| {
            let i = p.index();
            let nanos = NANOS[i].swap(0, Ordering::Relaxed);
            (*p, COUNTS[i].swap(0, Ordering::Relaxed), nanos)
        })
        .collect();
    if !enabled() {
        return;
    }
    for (phase, count, nanos) in taken {
        let total_ms = nanos as f64 / 1e6;
        tracing::info!(
            phase = phase.name(),
            count,
            total_ms = format!("{total_ms:.1}"),
            mean_ms = format!("{:.3}", total_ms / count.max(1) as f64),
            per_file_ms = format!("{:.3}", total_ms / files.max(1) as f64),
            wall_ms = format!("{:.1}", wall_secs * 1e3),
            "phase profile"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_index_in_order() {
        for (i, p) in PHASES.iter().enumerate() {
            assert_eq!(p.index(), i, "{}", p.name());
        }
    }
}
