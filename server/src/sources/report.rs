//! What a Download reports: per source, counts, each fetched file's outcome, and every
//! error naming its step and cause. The same document answers the HTTP endpoint.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ingest::Status;

/// What a Download did, per source.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DownloadReport {
    /// No source reported an error.
    pub ok: bool,
    pub sources: Vec<SourceReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceReport {
    pub source: String,
    /// The source's url (without any password).
    pub url: String,
    /// Final-named files in the remote folder.
    pub found: u64,
    /// Files downloaded this time.
    pub fetched: u64,
    /// Batches stored now.
    pub ingested: u64,
    /// Batches that were stored before: nothing added.
    pub duplicates: u64,
    /// Files refused, with the reason in `files`.
    pub rejected: u64,
    /// Files handled before and unchanged since (`keep`): not fetched again.
    pub unchanged: u64,
    /// What went wrong, each naming the step and the cause.
    pub errors: Vec<String>,
    pub files: Vec<PulledFile>,
}

/// One fetched file's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PulledFile {
    /// Path below the source folder.
    pub path: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The report as an administrator reads it in a terminal.
pub fn describe(report: &DownloadReport) -> String {
    let mut out = String::new();
    if report.sources.is_empty() {
        out.push_str("no sources are configured ([[sources]] in the configuration file)\n");
    }
    for s in &report.sources {
        out.push_str(&format!(
            "{} ({}): {} found, {} fetched, {} ingested, {} duplicate(s), {} rejected, {} unchanged\n",
            s.source, s.url, s.found, s.fetched, s.ingested, s.duplicates, s.rejected, s.unchanged
        ));
        for f in &s.files {
            let status = serde_json::to_value(f.status)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            match &f.reason {
                Some(reason) => {
                    let reason = reason.trim_end().replace('\n', "\n            ");
                    out.push_str(&format!("  {status:<9} {}: {reason}\n", f.path))
                }
                None => out.push_str(&format!("  {status:<9} {}\n", f.path)),
            }
        }
        for e in &s.errors {
            out.push_str(&format!("  error: {e}\n"));
        }
    }
    out
}
