//! PostgreSQL: bulk load with COPY ([`copy`]), one round trip for small files and the
//! retry and staging paths ([`load`]), cursors in commit order ([`safe_cursor`]).

mod copy;
mod load;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use load::load_batch;

/// Advisory lock keys from here up register running loads: key = base + the cursor
/// sequence's high-water mark when the load began (see [`safe_cursor`]).
pub(in crate::db) const LOAD_KEY_BASE: &str = "(1::bigint << 62)";

/// The last cursor the sequence has handed out (0 before the first).
pub(in crate::db) const ALLOCATED: &str =
    "(CASE WHEN is_called THEN last_value ELSE last_value - 1 END)";

const SIGHTING_COLUMNS: &str =
    "id, batch, device_id, observed_at, observed_offset, latitude, longitude, \
                                altitude, accuracy, observer, species, count, attributes";

/// The pool. Its sessions run with `jit = off`: a whole export or track streams
/// millions of rows, so the planner's cost crosses `jit_above_cost` and PostgreSQL
/// would spend about a second compiling the query before the first row (measured:
/// 1.19 s to the first CSV line at 20 million rows) for no gain on a query that only
/// streams; no other query of the server is large enough to profit from it.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options.options([("jit", "off")]))
        .await?)
}

/// The highest cursor an export may hand out now: every sighting at or below it has
/// committed, and no load still running can add one there.
///
/// Loads run concurrently, so cursors (taken from a sequence during COPY) are not in
/// commit order. Each load registers before it takes any cursor, with an advisory lock
/// whose key holds the sequence's high-water mark at that moment; all its cursors lie
/// above it. Reading the sequence first and the registrations second means a load that
/// took a cursor at or below the mark is either seen registered or already committed.
pub async fn safe_cursor(pool: &PgPool) -> sqlx::Result<i64> {
    let mut conn = pool.acquire().await?;
    let allocated: i64 =
        sqlx::query_scalar(&format!("SELECT {ALLOCATED} FROM sightings_cursor_seq"))
            .fetch_one(&mut *conn)
            .await?;
    let running: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT min(((classid::bigint << 32) | objid::bigint) - {LOAD_KEY_BASE}) FROM pg_locks \
         WHERE locktype = 'advisory' AND objsubid = 1 AND classid::bigint >= ({LOAD_KEY_BASE} >> 32) \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ))
    .fetch_one(&mut *conn)
    .await?;
    Ok(running.map_or(allocated, |r| r.min(allocated)).max(0))
}

struct Ids {
    batch: i64,
    device: i64,
}

#[cfg(test)]
mod tests {
    /// The server's sessions never JIT-compile a query (see [`super::connect`]), even
    /// where the database's own setting says they may.
    #[tokio::test]
    async fn sessions_run_without_jit() {
        let Some(db) = ctdata_tests::pg().await else {
            return;
        };
        let pool = super::connect(&db.url, 2).await.unwrap();
        for _ in 0..2 {
            let jit: String = sqlx::query_scalar("SHOW jit")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(jit, "off");
        }
    }
}
