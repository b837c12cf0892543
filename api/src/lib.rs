//! The JSON the CTData server answers with, shared by the server (which writes it and
//! describes it in its OpenAPI document) and the field client (which reads it), so the
//! two cannot drift apart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The response header of `GET /api/v1/sightings` carrying the cursor to pass as
/// `since` next time.
pub const NEXT_CURSOR: &str = "CTData-Next-Cursor";

/// What became of a delivered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Stored now (possibly after a restart that interrupted the first attempt).
    Ingested,
    /// The same batch, byte for byte, was stored before: nothing added.
    Duplicate,
    /// Refused as a whole: nothing from it is stored.
    Rejected,
}

/// What happened to one delivery; also written as the receipt file clients read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipt {
    pub status: Status,
    pub file: String,
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Sightings in the file.
    pub sightings: i64,
    /// Sightings stored by this batch.
    pub inserted: i64,
    /// Sightings whose id was already stored by another batch.
    pub duplicates: i64,
    /// The highest cursor of this batch's sightings (`export --since` from before it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<i64>,
    pub received_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The sightings skipped because their id was stored already: the first ids, and
    /// which of them came with other content (conflicts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Skipped>,
    /// Track points (waypoints of a CyberTracker upload or a CTX, not those marked
    /// deleted) in the file: stored in the tracks, not counted as sightings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_points: Option<i64>,
    /// SMART patrol events (start, stop, pause, resume, change) in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patrol_events: Option<i64>,
    /// Records the file carried that are stored nowhere (a CTX's sightings the device
    /// marked deleted), for a batch stored now; absent when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_stored: Option<NotStored>,
    /// The station device that delivered this batch for the device that recorded it
    /// (send on sync), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_by: Option<String>,
}

impl Receipt {
    /// A receipt saying only `status` for `file` from `channel`, received now: counts
    /// zero and every optional field absent. Fill in the rest with struct update
    /// syntax (`Receipt { inserted: 3, ..Receipt::new(…) }`), so a field added later
    /// needs no change where receipts are made.
    pub fn new(status: Status, file: impl Into<String>, channel: impl Into<String>) -> Receipt {
        Receipt {
            status,
            file: file.into(),
            channel: channel.into(),
            device: None,
            batch_id: None,
            format: None,
            sha256: None,
            sightings: 0,
            inserted: 0,
            duplicates: 0,
            cursor: None,
            received_at: Utc::now(),
            reason: None,
            kind: None,
            skipped: None,
            track_points: None,
            patrol_events: None,
            not_stored: None,
            relayed_by: None,
        }
    }
}

/// What a stored batch carried that is stored nowhere. (Waypoints are not among them:
/// they go to the tracks, counted by `track_points`.)
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotStored {
    /// Sightings the device marked deleted (CTX): read, counted, not stored.
    pub deleted: u64,
    /// Sightings saved without a GPS fix (CTX records with no latitude and longitude):
    /// read, counted, not stored as sightings; they stay in the archived original.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub no_position: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a receipt and the batch API say about the sightings a batch skipped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Skipped {
    /// Sightings skipped because their id was stored already (the batch's duplicates).
    pub total: i64,
    /// Of those, how many had other content than the stored sighting.
    pub conflicts: i64,
    /// The first skipped ids (at most 100), in file order.
    pub ids: Vec<SkippedId>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SkippedId {
    pub id: Uuid,
    /// For a conflict, the fields that differ from the stored sighting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differs: Vec<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Machine-readable: `unauthorized`, `too_large`, `not_found`, …
    pub error: String,
    /// What was wrong, in plain words.
    pub message: String,
}

/// `GET /api/v1/whoami`: the device a token belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    pub device: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_reads_back_as_written() {
        let text = r#"{"status":"rejected","file":"b.json","channel":"http","sightings":0,
            "inserted":0,"duplicates":0,"received_at":"2026-01-02T03:04:05Z",
            "reason":"line 3: lat 91 is out of range","kind":"invalid"}"#;
        let receipt: Receipt = serde_json::from_str(text).unwrap();
        assert_eq!(receipt.status, Status::Rejected);
        assert_eq!(receipt.kind.as_deref(), Some("invalid"));
        let again: Receipt =
            serde_json::from_str(&serde_json::to_string(&receipt).unwrap()).unwrap();
        assert_eq!(again.reason, receipt.reason);
        assert!(!serde_json::to_string(&receipt).unwrap().contains("skipped"));
    }
}
