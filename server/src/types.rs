//! Domain words as types: how a batch arrived, why a file was refused, and where its
//! rejection stands. Stored and served as the same lowercase strings as always.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use ctdata_batch::RejectKind;
use serde::{Deserialize, Serialize};

/// How a batch reached the server. A new channel is added here; the compiler then
/// lists every place that must handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Dropped into the drop directory (a share).
    Share,
    /// Uploaded to the server's FTP.
    Ftp,
    /// `POST /api/v1/batches`.
    Http,
    /// Fetched from a remote source (FTP site or share) by a Download or a schedule.
    Pull,
    /// `ctdata-server ingest PATH…`.
    Cli,
    /// `POST /api/v1/webhooks/cybertracker`: one CyberTracker observation as JSON.
    Webhook,
    /// `POST /openrosa/…/submission` (ODK Collect, KoboCollect, the CyberTracker app).
    Openrosa,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::Http,
        Channel::Ftp,
        Channel::Share,
        Channel::Pull,
        Channel::Cli,
        Channel::Webhook,
        Channel::Openrosa,
    ];
    /// The names of [`Channel::ALL`], in the same order.
    pub const ALL_NAMES: [&'static str; 7] = {
        let mut names = [""; Channel::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = Channel::ALL[i].as_str();
            i += 1;
        }
        names
    };

    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Share => "share",
            Channel::Ftp => "ftp",
            Channel::Http => "http",
            Channel::Pull => "pull",
            Channel::Cli => "cli",
            Channel::Webhook => "webhook",
            Channel::Openrosa => "openrosa",
        }
    }
}

/// Why a file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum RejectionKind {
    /// What the batch reader found wrong with the file itself.
    Batch(RejectKind),
    /// The same device and batch id arrived before with other content.
    Conflict,
    /// The batch names another device than the one that sent it.
    DeviceMismatch,
    /// The sender's file name cannot be kept (too long for its receipt).
    FileName,
}

impl RejectionKind {
    pub const TRUNCATED: RejectionKind = RejectionKind::Batch(RejectKind::Truncated);

    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::Batch(kind) => kind.as_str(),
            RejectionKind::Conflict => "conflict",
            RejectionKind::DeviceMismatch => "device_mismatch",
            RejectionKind::FileName => "file_name",
        }
    }
}

impl From<RejectKind> for RejectionKind {
    fn from(kind: RejectKind) -> RejectionKind {
        RejectionKind::Batch(kind)
    }
}

impl FromStr for RejectionKind {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<RejectionKind, UnknownName> {
        let ours = [
            RejectionKind::Conflict,
            RejectionKind::DeviceMismatch,
            RejectionKind::FileName,
        ];
        let batch = RejectKind::ALL.map(RejectionKind::Batch);
        ours.into_iter()
            .chain(batch)
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownName("rejection kind", s.to_string()))
    }
}

/// Where a rejection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RejectionStatus {
    /// Waiting for someone: reprocess or delete it.
    Pending,
    /// Stored after all, by a reprocess or by a later copy of the same claim.
    Reprocessed,
    /// A complete delivery of the same file superseded it (a truncated copy).
    Resolved,
}

impl RejectionStatus {
    pub const ALL: [RejectionStatus; 3] = [
        RejectionStatus::Pending,
        RejectionStatus::Reprocessed,
        RejectionStatus::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectionStatus::Pending => "pending",
            RejectionStatus::Reprocessed => "reprocessed",
            RejectionStatus::Resolved => "resolved",
        }
    }
}

/// A stored or sent name that is none of a type's values.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{1:?} is not a {0}")]
pub struct UnknownName(&'static str, String);

/// `Display`, `FromStr` (by `ALL`), `&'static str` and `String` conversions, and sqlx
/// encoding and decoding as text, for an enum with `as_str`.
macro_rules! named {
    ($ty:ident, $what:literal, by_all) => {
        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<$ty, UnknownName> {
                $ty::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName($what, s.to_string()))
            }
        }
        named!($ty);
    };
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$ty> for &'static str {
            fn from(v: $ty) -> &'static str {
                v.as_str()
            }
        }

        impl TryFrom<String> for $ty {
            type Error = UnknownName;

            fn try_from(s: String) -> Result<$ty, UnknownName> {
                s.parse()
            }
        }

        impl<DB: sqlx::Database> sqlx::Type<DB> for $ty
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $ty
        where
            &'q str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&'q str as sqlx::Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $ty
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<$ty, sqlx::error::BoxDynError> {
                let s = <&'r str as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(s.parse()?)
            }
        }
    };
}

named!(Channel, "channel", by_all);
named!(RejectionKind);
named!(RejectionStatus, "rejection status", by_all);

/// RFC 3339 (`2026-11-01T06:00:00+02:00`) or a plain date (`2026-11-01`, midnight UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        .map_err(|_| format!("{s:?} is not a time: use RFC 3339 (2026-11-01T06:00:00+02:00) or a date (2026-11-01)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>().unwrap(), c);
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        for s in RejectionStatus::ALL {
            assert_eq!(s.as_str().parse::<RejectionStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for k in RejectKind::ALL {
            let kind = RejectionKind::from(k);
            assert_eq!(kind.as_str().parse::<RejectionKind>().unwrap(), kind);
            assert_eq!(serde_json::to_value(k).unwrap(), kind.as_str());
        }
        assert_eq!(
            "device_mismatch".parse::<RejectionKind>().unwrap(),
            RejectionKind::DeviceMismatch
        );
        assert!("nonsense".parse::<RejectionKind>().is_err());
    }
}
