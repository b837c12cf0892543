//! Counters for `GET /metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::ingest::{Receipt, Status};

/// Upper bounds (seconds) of the ingest latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0];

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Why the drop directory cannot be read right now (share unmounted…), if it cannot.
    drop_dir_problem: Mutex<Option<String>>,
}

#[derive(Default)]
struct Inner {
    /// (metric, labels) → value
    counters: BTreeMap<(&'static str, String), u64>,
    latency_counts: [u64; LATENCY_BUCKETS.len()],
    latency_sum: f64,
    latency_total: u64,
}

impl Metrics {
    pub fn set_drop_dir_problem(&self, problem: Option<String>) {
        *self
            .drop_dir_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = problem;
    }

    pub fn drop_dir_problem(&self) -> Option<String> {
        self.drop_dir_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records one decided delivery.
    pub fn ingested(&self, r: &Receipt, took: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let channel = format!("channel=\"{}\"", r.channel);
        let mut add = |name: &'static str, labels: String, n: u64| {
            *m.counters.entry((name, labels)).or_default() += n;
        };
        match r.status {
            Status::Ingested => {
                add("ctdata_batches_ingested_total", channel.clone(), 1);
                add(
                    "ctdata_sightings_ingested_total",
                    channel.clone(),
                    r.inserted.max(0) as u64,
                );
                let conflicts = r.skipped.as_ref().map_or(0, |s| s.conflicts);
                add(
                    "ctdata_sighting_conflicts_total",
                    channel,
                    conflicts.max(0) as u64,
                );
            }
            Status::Duplicate => add("ctdata_duplicate_deliveries_total", channel, 1),
            Status::Rejected => {
                let kind = r.kind.map_or("unknown", |k| k.as_str());
                add(
                    "ctdata_rejected_total",
                    format!("{channel},kind=\"{kind}\""),
                    1,
                );
            }
        }
        let secs = took.as_secs_f64();
        for (bucket, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                m.latency_counts[bucket] += 1;
            }
        }
        m.latency_sum += secs;
        m.latency_total += 1;
    }

    /// One administrator password checked (Argon2), whether the name exists or not.
    pub fn password_checked(&self) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.counters
            .entry(("ctdata_password_checks_total", String::new()))
            .or_default() += 1;
    }

    pub fn exported_bytes(&self, n: u64) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.counters
            .entry(("ctdata_export_bytes_total", String::new()))
            .or_default() += n;
    }

    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in &m.counters {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
        let name = "ctdata_ingest_seconds";
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, count) in LATENCY_BUCKETS.iter().zip(m.latency_counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", m.latency_total);
        let _ = writeln!(out, "{name}_sum {}", m.latency_sum);
        let _ = writeln!(out, "{name}_count {}", m.latency_total);
        out
    }
}
