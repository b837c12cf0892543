//! `ctdata-server device …` and `admin …`: register, rotate and revoke device tokens;
//! administrator accounts and API tokens.

use std::io::{BufRead, IsTerminal};

use ctdata_batch::DeviceName;

use crate::auth::{hash_password, new_token, token_hash, MIN_PASSWORD_LEN};
use crate::db::{AdminInfo, AdminTokenInfo, Change, Db, DeviceInfo, Revoked, TokenChoice};
use crate::layout::is_reserved_name;

/// Checks a new device name: it becomes a folder name and an FTP login.
pub fn check_device_name(name: &str) -> anyhow::Result<()> {
    name.parse::<DeviceName>()?;
    anyhow::ensure!(
        !is_reserved_name(name),
        "{name:?} is reserved: it names one of the server's own folders in the drop directory \
         (in any letter case)"
    );
    Ok(())
}

/// Registers a device and returns its token (shown once, never stored).
pub async fn add_device(db: &Db, name: &str) -> anyhow::Result<String> {
    check_device_name(name)?;
    if let Some(twin) = db.device_case_twin(name).await? {
        anyhow::bail!(
            "device {name} differs only in letter case from the existing device {twin}: device \
             names are unique in any case (they are folders and FTP logins); use {twin}, or \
             another name"
        );
    }
    let token = new_token();
    match db.register_device(name, &token_hash(&token)).await? {
        Change::Done => Ok(token),
        _ => anyhow::bail!(
            "device {name} is already registered; `device rotate {name}` gives it a new token"
        ),
    }
}

pub async fn rotate_device(db: &Db, name: &str) -> anyhow::Result<String> {
    let token = new_token();
    match db.rotate_device(name, &token_hash(&token)).await? {
        Change::Done => Ok(token),
        Change::Unknown => anyhow::bail!("no device named {name}"),
        Change::Refused => anyhow::bail!(
            "device {name} has no active token (never registered, or revoked); `device add {name}` registers it"
        ),
    }
}

pub async fn revoke_device(db: &Db, name: &str) -> anyhow::Result<()> {
    match db.revoke_device(name).await? {
        Change::Done => Ok(()),
        Change::Unknown => anyhow::bail!("no device named {name}"),
        Change::Refused => anyhow::bail!("device {name} is already revoked"),
    }
}

/// A time to the minute, as the tables show it.
fn minutes(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// `device list` as a table.
pub fn device_table(devices: &[DeviceInfo]) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:<16} {:>8} {:>10}  {}\n",
        "DEVICE", "CREATED", "LAST SEEN", "BATCHES", "SIGHTINGS", "STATE"
    );
    for d in devices {
        let state = match (&d.revoked_at, d.registered) {
            (Some(t), _) => format!("revoked {}", minutes(t)),
            (None, true) => "registered".to_string(),
            (None, false) => "unregistered (seen in the drop directory)".to_string(),
        };
        out.push_str(&format!(
            "{:<24} {:<16} {:<16} {:>8} {:>10}  {state}\n",
            d.name,
            minutes(&d.created_at),
            d.last_seen_at
                .as_ref()
                .map(minutes)
                .unwrap_or_else(|| "never".into()),
            d.batches,
            d.sightings,
        ));
    }
    out
}

/// Reads a new administrator password: the first line of standard input when it is not
/// a terminal (scripts), else a prompt without echo, asked twice.
pub fn read_new_password() -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New password: ")?;
        let again = rpassword::prompt_password("Repeat it: ")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    anyhow::ensure!(
        password.chars().count() >= MIN_PASSWORD_LEN,
        "the password must have at least {MIN_PASSWORD_LEN} characters"
    );
    Ok(password)
}

pub async fn add_admin(db: &Db, name: &str, password: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        DeviceName::is_valid(name),
        "{name:?} is not a valid administrator name: {}",
        DeviceName::RULE
    );
    let hash = tokio::task::spawn_blocking({
        let password = password.to_string();
        move || hash_password(&password)
    })
    .await??;
    match db.add_admin(name, &hash).await? {
        Change::Done => Ok(()),
        _ => anyhow::bail!("an administrator named {name} exists already"),
    }
}

/// A new API token for scripts (shown once). Its first characters are kept, to tell
/// it apart in `admin token NAME --list` and revoke it by them.
pub async fn admin_token(db: &Db, name: &str) -> anyhow::Result<String> {
    let token = new_token();
    match db
        .add_admin_token(name, &token_hash(&token), token_prefix(&token))
        .await?
    {
        Change::Done => Ok(token),
        _ => anyhow::bail!("no administrator named {name}; `admin add {name}` creates one"),
    }
}

/// `ctd_` and 8 hex digits: 32 of the token's 256 bits, enough to tell tokens apart.
pub fn token_prefix(token: &str) -> &str {
    token.get(..12).unwrap_or(token)
}

/// `admin list` as a table.
pub fn admin_table(admins: &[AdminInfo]) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:>10}\n",
        "ADMINISTRATOR", "CREATED", "API TOKENS"
    );
    for a in admins {
        let created = minutes(&a.created_at);
        out.push_str(&format!(
            "{:<24} {:<16} {:>10}\n",
            a.name, created, a.tokens
        ));
    }
    out
}

/// An administrator's API tokens as a table.
pub fn token_table(tokens: &[AdminTokenInfo]) -> String {
    let mut out = format!(
        "{:<6} {:<14} {:<16}  {}\n",
        "ID", "PREFIX", "CREATED", "STATE"
    );
    for t in tokens {
        let state = t
            .revoked_at
            .as_ref()
            .map(|r| format!("revoked {}", minutes(r)))
            .unwrap_or_else(|| "active".into());
        out.push_str(&format!(
            "{:<6} {:<14} {:<16}  {state}\n",
            t.id,
            t.prefix.as_deref().unwrap_or("(not kept)"),
            minutes(&t.created_at)
        ));
    }
    out
}

pub async fn remove_admin(db: &Db, name: &str) -> anyhow::Result<()> {
    match db.remove_admin(name).await? {
        Change::Done => Ok(()),
        _ => anyhow::bail!("no administrator named {name}"),
    }
}

/// Sets a new password; every dashboard sign-in of the administrator ends, except
/// `keep` (the session that made the change).
pub async fn set_admin_password(
    db: &Db,
    name: &str,
    password: &str,
    keep: Option<&str>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        password.chars().count() >= MIN_PASSWORD_LEN,
        "the password must have at least {MIN_PASSWORD_LEN} characters"
    );
    let hash = tokio::task::spawn_blocking({
        let password = password.to_string();
        move || hash_password(&password)
    })
    .await??;
    match db.set_admin_password(name, &hash, keep).await? {
        Change::Done => Ok(()),
        _ => anyhow::bail!("no administrator named {name}"),
    }
}

pub async fn admin_tokens(db: &Db, name: &str) -> anyhow::Result<Vec<AdminTokenInfo>> {
    db.admin_tokens(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no administrator named {name}"))
}

/// Revokes tokens; the number revoked.
pub async fn revoke_admin_tokens(db: &Db, name: &str, which: &TokenChoice) -> anyhow::Result<u64> {
    let what = match which {
        TokenChoice::All => "any".to_string(),
        TokenChoice::Prefix(p) => format!("a token starting {p:?}"),
        TokenChoice::Id(id) => format!("token {id}"),
    };
    match db.revoke_admin_tokens(name, which).await? {
        Revoked::Done(n) => Ok(n),
        Revoked::UnknownAdmin => anyhow::bail!("no administrator named {name}"),
        Revoked::NoMatch => anyhow::bail!(
            "administrator {name} has no active API token matching {what}; \
             `admin token {name} --list` lists them"
        ),
        Revoked::Ambiguous(n) => {
            anyhow::bail!("{n} active API tokens of {name} match {what}: give more of the token")
        }
    }
}
