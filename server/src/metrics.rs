//! Counters for `GET /metrics`, in the Prometheus text format, kept and written by the
//! `prometheus` crate (which escapes label values).

use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use ctdata_api::{Receipt, Status};

/// Upper bounds (seconds) of the ingest latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0];

pub struct Metrics {
    registry: Registry,
    batches: IntCounterVec,
    sightings: IntCounterVec,
    conflicts: IntCounterVec,
    duplicates: IntCounterVec,
    rejected: IntCounterVec,
    password_checks: IntCounter,
    export_bytes: IntCounter,
    latency: Histogram,
    /// Why the drop directory cannot be read right now (share unmounted…), if it cannot.
    drop_dir_problem: Mutex<Option<String>>,
    /// The replica this server is among several on one database.
    replica: std::sync::OnceLock<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let by = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
            registry.register(Box::new(c.clone())).expect("a new name");
            c
        };
        let batches = by(
            "ctdata_batches_ingested_total",
            "Batches stored",
            &["channel"],
        );
        let sightings = by(
            "ctdata_sightings_ingested_total",
            "Sightings stored",
            &["channel"],
        );
        let conflicts = by(
            "ctdata_sighting_conflicts_total",
            "Sightings skipped as conflicting with stored ones",
            &["channel"],
        );
        let duplicates = by(
            "ctdata_duplicate_deliveries_total",
            "Batches delivered again",
            &["channel"],
        );
        let rejected = by(
            "ctdata_rejected_total",
            "Batches rejected",
            &["channel", "kind"],
        );
        let one = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("a valid metric");
            registry.register(Box::new(c.clone())).expect("a new name");
            c
        };
        let password_checks = one(
            "ctdata_password_checks_total",
            "Administrator passwords checked (Argon2)",
        );
        let export_bytes = one("ctdata_export_bytes_total", "Bytes of sightings exported");
        let latency = Histogram::with_opts(
            HistogramOpts::new("ctdata_ingest_seconds", "Time to decide a delivery")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("a valid histogram");
        registry
            .register(Box::new(latency.clone()))
            .expect("a new name");
        Metrics {
            registry,
            batches,
            sightings,
            conflicts,
            duplicates,
            rejected,
            password_checks,
            export_bytes,
            latency,
            drop_dir_problem: Mutex::new(None),
            replica: std::sync::OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Names this server's replica in `/metrics` and `/readyz`.
    pub fn set_replica(&self, name: &str) {
        let _ = self.replica.set(name.to_string());
    }

    pub fn replica(&self) -> Option<&str> {
        self.replica.get().map(String::as_str)
    }

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
        let channel = [r.channel.as_str()];
        match r.status {
            Status::Ingested => {
                self.batches.with_label_values(&channel).inc();
                self.sightings
                    .with_label_values(&channel)
                    .inc_by(r.inserted.max(0) as u64);
                let conflicts = r.skipped.as_ref().map_or(0, |s| s.conflicts);
                self.conflicts
                    .with_label_values(&channel)
                    .inc_by(conflicts.max(0) as u64);
            }
            Status::Duplicate => self.duplicates.with_label_values(&channel).inc(),
            Status::Rejected => {
                let kind = r.kind.as_deref().unwrap_or("unknown");
                self.rejected
                    .with_label_values(&[r.channel.as_str(), kind])
                    .inc();
            }
        }
        self.latency.observe(took.as_secs_f64());
    }

    /// One administrator password checked (Argon2), whether the name exists or not.
    pub fn password_checked(&self) {
        self.password_checks.inc();
    }

    pub fn exported_bytes(&self, n: u64) {
        self.export_bytes.inc_by(n);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!("cannot write the metrics: {e}");
        }
        if let Some(replica) = self.replica() {
            // Letters, digits and `_` only (replica::check_name): nothing to escape.
            out.push_str(
                "# HELP ctdata_replica_info The replica this server is, among several on one database\n\
                 # TYPE ctdata_replica_info gauge\n",
            );
            out.push_str(&format!("ctdata_replica_info{{replica=\"{replica}\"}} 1\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.rejected.with_label_values(&["http", "a\"b\nc"]).inc();
        m.password_checked();
        let text = m.render();
        assert!(
            text.contains(r#"ctdata_rejected_total{channel="http",kind="a\"b\nc"} 1"#),
            "{text}"
        );
        assert!(text.contains("ctdata_password_checks_total 1"), "{text}");
        assert!(
            text.contains("ctdata_ingest_seconds_bucket{le=\"+Inf\"} 0"),
            "{text}"
        );
    }
}
