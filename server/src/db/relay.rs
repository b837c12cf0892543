//! Which devices a station device may relay for, and who relayed a batch.

use super::{Change, Db};

impl Db {
    /// The relay right of device `name`: None (none), `*` or a comma-separated list.
    #[tracing::instrument(skip_all, err)]
    pub async fn relay_for(&self, name: &str) -> sqlx::Result<Option<String>> {
        const SQL: &str = "SELECT relay_for FROM devices WHERE lower(name) = lower($1)";
        let found: Option<Option<String>> =
            on_pool!(self, p => sqlx::query_scalar(SQL).bind(name).fetch_optional(p).await?);
        Ok(found.flatten())
    }

    /// Sets (or with None clears) the relay right of device `name`.
    #[tracing::instrument(skip_all, err)]
    pub async fn set_relay(&self, name: &str, rule: Option<&str>) -> sqlx::Result<Change> {
        const SQL: &str = "UPDATE devices SET relay_for = $2 WHERE lower(name) = lower($1)";
        let n = on_pool!(self, p => sqlx::query(SQL).bind(name).bind(rule).execute(p).await?.rows_affected());
        Ok(if n > 0 { Change::Done } else { Change::Unknown })
    }

    /// Records that `by` delivered the batch `batch_id` for its device; the first
    /// relaying device stays when the same batch comes again through another.
    #[tracing::instrument(skip_all, err)]
    pub async fn mark_relayed(&self, batch_id: uuid::Uuid, by: &str) -> sqlx::Result<()> {
        let sql = format!(
            "UPDATE batches SET relayed_by = $1 WHERE {} = $2 AND relayed_by IS NULL",
            self.uuid_text("batch_id")
        );
        let id = batch_id.to_string();
        on_pool!(self, p => sqlx::query(&sql).bind(by).bind(&id).execute(p).await.map(|_| ()))
    }

    /// The device that relayed batch `batch_id`, if one did.
    #[tracing::instrument(skip_all, err)]
    pub async fn relayed_by(&self, batch_id: uuid::Uuid) -> sqlx::Result<Option<String>> {
        let sql = format!(
            "SELECT relayed_by FROM batches WHERE {} = $1",
            self.uuid_text("batch_id")
        );
        let id = batch_id.to_string();
        let found: Option<Option<String>> =
            on_pool!(self, p => sqlx::query_scalar(&sql).bind(&id).fetch_optional(p).await?);
        Ok(found.flatten())
    }
}
