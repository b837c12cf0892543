//! CPU accounting from `/proc`, to say where the time of a timed phase went: the
//! machine as a whole, and PostgreSQL's processes (all of them, since backends come and
//! go with connections).

use anyhow::Context;

use crate::server::clock_ticks_per_sec;

/// CPU seconds, machine-wide and PostgreSQL's, at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    /// Busy time of all cores (everything but idle and iowait), seconds.
    pub busy: f64,
    /// Wall time covered by the same counters (all cores), seconds.
    pub total: f64,
    /// User + system time of every `postgres` process alive now, plus what the
    /// processes that already exited used (their parent's `cutime`/`cstime`).
    pub postgres: f64,
}

impl CpuSample {
    pub fn now() -> anyhow::Result<CpuSample> {
        let (busy, total) = machine()?;
        Ok(CpuSample {
            busy,
            total,
            postgres: postgres()?,
        })
    }

    /// What happened between `self` and `later`.
    pub fn until(&self, later: &CpuSample) -> CpuUse {
        CpuUse {
            busy: later.busy - self.busy,
            total: later.total - self.total,
            postgres: later.postgres - self.postgres,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub busy: f64,
    pub total: f64,
    pub postgres: f64,
}

impl CpuUse {
    /// Share of all cores that were busy.
    pub fn busy_share(&self) -> f64 {
        if self.total > 0.0 {
            self.busy / self.total
        } else {
            0.0
        }
    }
}

/// (busy, total) core-seconds from the first line of `/proc/stat`.
fn machine() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let hz = clock_ticks_per_sec();
    Ok(((total - idle) as f64 / hz, total as f64 / hz))
}

fn postgres() -> anyhow::Result<f64> {
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Processes vanish between listing and reading: skip those.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        // After the command: state is field 3; utime 14, stime 15, cutime 16, cstime 17.
        let fields: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(4)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        ticks += fields.iter().sum::<u64>();
    }
    Ok(ticks as f64 / clock_ticks_per_sec())
}

/// CPU time this process (the load generator) has used so far, in seconds.
pub fn own_cpu_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat
        .rsplit_once(')')
        .context("malformed /proc/self/stat")?
        .1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Ok(f.iter().sum::<u64>() as f64 / clock_ticks_per_sec())
}
