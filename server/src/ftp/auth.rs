//! FTP logins: a registered device's name and token, the very credentials HTTP takes,
//! with a lockout after repeated failures for one name from one address.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use unftp_core::auth::{
    AuthenticationError, Authenticator, ChannelEncryptionState, Credentials, Principal, UserDetail,
    UserDetailError, UserDetailProvider,
};

use crate::auth::token_hash;
use crate::credentials::check_device_name;
use crate::db::Db;

/// A logged-in device.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
}

impl UserDetail for Device {}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The authenticator already checked the name against the database.
#[derive(Debug)]
pub struct Devices;

#[async_trait]
impl UserDetailProvider for Devices {
    type User = Device;

    async fn provide_user_detail(&self, principal: &Principal) -> Result<Device, UserDetailError> {
        Ok(Device {
            name: principal.username.clone(),
        })
    }
}

/// Checks device tokens. The lockout lives here rather than in libunftp's
/// `FailedLoginsPolicy` because that one is kept per listener, and we accept
/// connections ourselves (see `ftp::serve_connections`): each connection gets its own
/// libunftp server, so its policy would forget everything between connections.
#[derive(Debug)]
pub struct DeviceAuth {
    pub db: Db,
    pub require_tls: bool,
    pub lockout: Lockout,
}

#[async_trait]
impl Authenticator for DeviceAuth {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        let ip = creds.source_ip;
        if self.require_tls && creds.command_channel_security != ChannelEncryptionState::Tls {
            tracing::warn!(device = username, %ip, "FTP login refused: TLS is required (AUTH TLS first)");
            return Err(AuthenticationError::new("ftp.require_tls: log in over TLS"));
        }
        if self.lockout.is_locked(username, ip) {
            tracing::warn!(device = username, %ip, "FTP login refused: locked out after repeated failures");
            return Err(AuthenticationError::new("locked out"));
        }
        match self.check(username, creds.password.as_deref()).await {
            Ok(()) => {
                self.lockout.clear(username, ip);
                tracing::info!(device = username, %ip, "FTP login");
                Ok(Principal {
                    username: username.to_string(),
                })
            }
            Err(Refused::Credentials(why)) => {
                let locked = self.lockout.failed(username, ip);
                tracing::warn!(device = username, %ip, locked, "FTP login refused: {why}");
                Err(AuthenticationError::BadPassword)
            }
            Err(Refused::Database(e)) => {
                tracing::error!(
                    device = username,
                    "FTP login not checked, the database failed: {e}"
                );
                Err(AuthenticationError::new("credentials could not be checked"))
            }
        }
    }
}

enum Refused {
    Credentials(String),
    Database(sqlx::Error),
}

impl DeviceAuth {
    async fn check(&self, username: &str, password: Option<&str>) -> Result<(), Refused> {
        // A name that doubles as one of the server's folders would make that folder its
        // root; such a device cannot be registered, and one that got into the database
        // another way still cannot log in.
        check_device_name(username).map_err(|e| Refused::Credentials(e.to_string()))?;
        let token = password.unwrap_or_default();
        let found = self
            .db
            .device_token_state(&token_hash(token))
            .await
            .map_err(Refused::Database)?;
        match found {
            Some((name, _)) if name != username => Err(Refused::Credentials(
                "the token belongs to another device".into(),
            )),
            Some((_, true)) => Err(Refused::Credentials("the device is revoked".into())),
            Some(_) => Ok(()),
            None => Err(Refused::Credentials("unknown token".into())),
        }
    }
}

/// Failed logins per (name, address): after `max_failures` within `period`, that pair
/// is refused for `period`, right token or not.
#[derive(Debug)]
pub struct Lockout {
    max_failures: u32,
    period: Duration,
    entries: Mutex<HashMap<(String, IpAddr), Failures>>,
}

#[derive(Debug)]
struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

impl Lockout {
    pub fn new(max_failures: u32, period: Duration) -> Lockout {
        Lockout {
            max_failures: max_failures.max(1),
            period,
            entries: Mutex::default(),
        }
    }

    fn is_locked(&self, name: &str, ip: IpAddr) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(name.to_string(), ip))
            .and_then(|f| f.locked_until)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Counts a failure; true when the pair is locked out now.
    fn failed(&self, name: &str, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Forget what has expired, so guessing from many addresses cannot grow the map
        // beyond the failures of one period.
        entries.retain(|_, f| match f.locked_until {
            Some(until) => now < until,
            None => now.duration_since(f.first) < self.period,
        });
        let entry = entries.entry((name.to_string(), ip)).or_insert(Failures {
            count: 0,
            first: now,
            locked_until: None,
        });
        entry.count += 1;
        if entry.count >= self.max_failures && entry.locked_until.is_none() {
            entry.locked_until = Some(now + self.period);
        }
        entry.locked_until.is_some()
    }

    fn clear(&self, name: &str, ip: IpAddr) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&(name.to_string(), ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_a_name_and_address_after_max_failures_only() {
        let lockout = Lockout::new(3, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        assert!(!lockout.failed("dev", a));
        assert!(!lockout.failed("dev", a));
        assert!(lockout.failed("dev", a));
        assert!(lockout.is_locked("dev", a));
        assert!(!lockout.is_locked("dev", b) && !lockout.is_locked("other", a));
    }

    #[test]
    fn the_lock_expires() {
        let lockout = Lockout::new(1, Duration::from_millis(0));
        assert!(lockout.failed("dev", [127, 0, 0, 1].into()));
        assert!(!lockout.is_locked("dev", [127, 0, 0, 1].into()));
    }
}
