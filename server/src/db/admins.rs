//! Administrator accounts and their API tokens: list, remove, new password, revoke.
//! The SQL is the same on both backends.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::dialect::api_time;
use super::{Change, Db};

/// One line of `admin list`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AdminInfo {
    pub name: String,
    #[serde(with = "api_time")]
    pub created_at: DateTime<Utc>,
    /// API tokens not revoked.
    pub tokens: i64,
}

/// One API token of an administrator. `prefix` is the token's first characters
/// (enough to tell tokens apart, useless as a credential); tokens made before it was
/// kept have none.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AdminTokenInfo {
    pub id: i64,
    pub prefix: Option<String>,
    #[serde(with = "api_time")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "api_time::option")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Which of an administrator's tokens to revoke.
#[derive(Debug, Clone)]
pub enum TokenChoice {
    All,
    /// The token whose kept prefix starts with this; it must name exactly one.
    Prefix(String),
    Id(i64),
}

/// What revoking found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// This many tokens (0 when there was nothing left to revoke with `All`).
    Done(u64),
    UnknownAdmin,
    /// A prefix or id that names none of the administrator's active tokens.
    NoMatch,
    /// A prefix that names several: this many.
    Ambiguous(usize),
}

impl Db {
    #[tracing::instrument(skip_all, err)]
    pub async fn admin_count(&self) -> sqlx::Result<i64> {
        on_pool!(self, p => sqlx::query_scalar("SELECT count(*) FROM admins").fetch_one(p).await)
    }

    #[tracing::instrument(skip_all, err)]
    pub async fn list_admins(&self) -> sqlx::Result<Vec<AdminInfo>> {
        const SQL: &str = "SELECT a.name, a.created_at, \
             (SELECT count(*) FROM admin_tokens t WHERE t.admin_id = a.id AND t.revoked_at IS NULL) AS tokens \
             FROM admins a ORDER BY a.name";
        on_pool!(self, p => sqlx::query_as(SQL).fetch_all(p).await)
    }

    /// Removes an administrator with its API tokens and dashboard sign-ins.
    #[tracing::instrument(skip_all, err, fields(admin = name))]
    pub async fn remove_admin(&self, name: &str) -> sqlx::Result<Change> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM admin_tokens WHERE admin_id IN (SELECT id FROM admins WHERE name = $1)")
                .bind(name).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM sessions WHERE admin = $1").bind(name).execute(&mut *tx).await?;
            let gone = sqlx::query("DELETE FROM admins WHERE name = $1").bind(name).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(if gone == 1 { Change::Done } else { Change::Unknown })
        })
    }

    /// Sets a new password and ends the administrator's dashboard sign-ins, all but
    /// `keep` (the session that asked for the change, if any).
    #[tracing::instrument(skip_all, err, fields(admin = name))]
    pub async fn set_admin_password(
        &self,
        name: &str,
        password_hash: &str,
        keep: Option<&str>,
    ) -> sqlx::Result<Change> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query("UPDATE admins SET password_hash = $2 WHERE name = $1")
                .bind(name).bind(password_hash).execute(&mut *tx).await?.rows_affected();
            sqlx::query("DELETE FROM sessions WHERE admin = $1 AND token_hash <> $2")
                .bind(name).bind(keep.unwrap_or_default()).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(if done == 1 { Change::Done } else { Change::Unknown })
        })
    }

    /// An administrator's API tokens, newest first; `None` for an unknown name.
    #[tracing::instrument(skip_all, err, fields(admin = name))]
    pub async fn admin_tokens(&self, name: &str) -> sqlx::Result<Option<Vec<AdminTokenInfo>>> {
        const SQL: &str = "SELECT t.id, t.token_prefix AS prefix, t.created_at, t.revoked_at FROM admin_tokens t JOIN admins a ON a.id = t.admin_id \
             WHERE a.name = $1 ORDER BY t.id DESC";
        if self.admin_password_hash(name).await?.is_none() {
            return Ok(None);
        }
        on_pool!(self, p => sqlx::query_as(SQL).bind(name).fetch_all(p).await.map(Some))
    }

    /// Revokes the chosen active API tokens of an administrator.
    #[tracing::instrument(skip_all, err, fields(admin = name))]
    pub async fn revoke_admin_tokens(
        &self,
        name: &str,
        which: &TokenChoice,
    ) -> sqlx::Result<Revoked> {
        let Some(tokens) = self.admin_tokens(name).await? else {
            return Ok(Revoked::UnknownAdmin);
        };
        let active = tokens.iter().filter(|t| t.revoked_at.is_none());
        let ids: Vec<i64> = match which {
            TokenChoice::All => active.map(|t| t.id).collect(),
            TokenChoice::Id(id) => active.filter(|t| t.id == *id).map(|t| t.id).collect(),
            TokenChoice::Prefix(prefix) => active
                .filter(|t| {
                    t.prefix
                        .as_deref()
                        .is_some_and(|p| p.starts_with(prefix.as_str()))
                })
                .map(|t| t.id)
                .collect(),
        };
        match (which, ids.len()) {
            (TokenChoice::All, _) | (_, 1) => {}
            (_, 0) => return Ok(Revoked::NoMatch),
            (_, n) => return Ok(Revoked::Ambiguous(n)),
        }
        let sql = format!(
            "UPDATE admin_tokens SET revoked_at = {} WHERE id = $1 AND revoked_at IS NULL",
            self.now_sql()
        );
        let mut done = 0;
        for id in ids {
            done +=
                on_pool!(self, p => sqlx::query(&sql).bind(id).execute(p).await?.rows_affected());
        }
        Ok(Revoked::Done(done))
    }
}
