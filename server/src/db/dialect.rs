//! Where PostgreSQL and SQLite differ, in one place: how a time or a UUID travels as a
//! parameter, what "now" is, and the few expressions each engine spells its own way.
//! Everything else in `db` is written once (`on_pool!`), with parameters `$1, $2, …`
//! in order of first use, which SQLite binds by position too.
//!
//! Times come back from both engines as `DateTime<Utc>`; [`api_time`] renders them the
//! same way in every API answer, whichever engine stored them.

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};
use uuid::Uuid;

use super::Db;

impl Db {
    /// The current time as an SQL expression, stored the way the column's default
    /// stores it.
    pub(super) fn now_sql(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "now()",
            Db::Sqlite(_) => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        }
    }

    /// A UUID column as text (SQLite stores it as text already).
    pub(super) fn uuid_text(&self, column: &str) -> String {
        match self {
            Db::Postgres(_) => format!("{column}::text"),
            Db::Sqlite(_) => column.to_string(),
        }
    }

    /// The UTC day (`YYYY-MM-DD`) of a time column.
    pub(super) fn utc_day(&self, column: &str) -> String {
        match self {
            Db::Postgres(_) => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
            Db::Sqlite(_) => format!("substr({column}, 1, 10)"),
        }
    }

    /// A JSON column as text.
    pub(super) fn json_text(&self, column: &str) -> String {
        match self {
            Db::Postgres(_) => format!("{column}::text"),
            Db::Sqlite(_) => column.to_string(),
        }
    }
}

/// Fixed-width UTC text, as SQLite stores times, so comparing text compares time.
pub fn utc_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A time parameter: `timestamptz` on PostgreSQL, fixed-width UTC text on SQLite (so it
/// compares right with the stored text).
#[derive(Debug, Clone, Copy)]
pub struct Time(pub DateTime<Utc>);

impl Type<Postgres> for Time {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Time {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Type<Sqlite> for Time {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Time {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(utc_text(self.0), buf)
    }
}

/// A UUID as each engine keeps it: `uuid` on PostgreSQL, hyphenated text on SQLite.
/// Decode with `#[sqlx(try_from = "DbUuid")]` on a `Uuid` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbUuid(pub Uuid);

impl From<DbUuid> for Uuid {
    fn from(u: DbUuid) -> Uuid {
        u.0
    }
}

impl Type<Postgres> for DbUuid {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for DbUuid {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Uuid as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Decode<'_, Postgres> for DbUuid {
    fn decode(value: PgValueRef<'_>) -> Result<DbUuid, BoxDynError> {
        <Uuid as Decode<Postgres>>::decode(value).map(DbUuid)
    }
}

impl Type<Sqlite> for DbUuid {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for DbUuid {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.0.to_string(), buf)
    }
}

impl Decode<'_, Sqlite> for DbUuid {
    fn decode(value: SqliteValueRef<'_>) -> Result<DbUuid, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(DbUuid(Uuid::parse_str(text)?))
    }
}

/// A stored time that may not be one a `DateTime` can hold: SQLite keeps times as text,
/// and rows stored before the years were checked can hold the year 10000. The raw text
/// comes back with the error so the caller can name it.
#[derive(Debug, Clone)]
pub struct StoredTime(pub Result<DateTime<Utc>, String>);

impl Type<Postgres> for StoredTime {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Decode<'_, Postgres> for StoredTime {
    fn decode(value: PgValueRef<'_>) -> Result<StoredTime, BoxDynError> {
        <DateTime<Utc> as Decode<Postgres>>::decode(value).map(|t| StoredTime(Ok(t)))
    }
}

impl Type<Sqlite> for StoredTime {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Decode<'_, Sqlite> for StoredTime {
    fn decode(value: SqliteValueRef<'_>) -> Result<StoredTime, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(StoredTime(
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| text.to_string()),
        ))
    }
}

/// How every API answer writes a time: UTC, microseconds, `Z`, whichever engine
/// stored it (`2026-11-03T08:00:00.000000Z`).
pub mod api_time {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&t.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
    }

    /// The same for an optional time (`null` when absent).
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::Serializer;

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }
    }
}
