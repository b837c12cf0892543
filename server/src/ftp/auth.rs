//! FTP logins: a registered device's name and token, the very credentials HTTP takes,
//! with a lockout after repeated failures for one name from one address.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use unftp_core::auth::{
    AuthenticationError, Authenticator, ChannelEncryptionState, Credentials, Principal, UserDetail,
    UserDetailError, UserDetailProvider,
};

use super::control::Control;
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
/// Shared by all sessions; each session reaches it through its own [`SessionAuth`].
#[derive(Debug)]
pub struct DeviceAuth {
    pub db: Db,
    pub require_tls: bool,
    pub lockout: Lockout,
}

/// One session's authenticator: the shared [`DeviceAuth`] plus the session's control
/// connection, so that a locked-out device is told so and for how long.
///
/// libunftp answers every refused PASS with the same fixed "530 Authentication
/// failed" and has no hook for the text. On a plain control connection we write our
/// own "530-" line on the connection first, which makes libunftp's line the last one
/// of a multi-line 530 reply (RFC 959 4.2): clients show both lines. The client sent
/// PASS only after reading the 331 to USER, so nothing of libunftp's is queued before
/// ours, and libunftp writes its 530 only after this returns. Over TLS the socket
/// carries encrypted records we cannot add to, so there the client sees only the
/// fixed line (and the server log says why).
#[derive(Debug)]
pub struct SessionAuth {
    pub devices: Arc<DeviceAuth>,
    /// `None` only for the server built to check the settings at startup.
    pub control: Option<Arc<Control>>,
}

#[async_trait]
impl Authenticator for SessionAuth {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        let refused = match self.devices.login(username, creds).await {
            Ok(principal) => return Ok(principal),
            Err(refused) => refused,
        };
        if let (Some(locked), Some(control)) = (refused.locked, &self.control) {
            if creds.command_channel_security == ChannelEncryptionState::Plaintext {
                control.say_first(&format!("530-{locked}\r\n")).await;
            }
        }
        Err(refused.error)
    }
}

/// A refused login, and whether the name is locked out at that address now.
struct Refusal {
    error: AuthenticationError,
    locked: Option<Locked>,
}

impl Refusal {
    fn plain(error: AuthenticationError) -> Refusal {
        Refusal {
            error,
            locked: None,
        }
    }
}

impl DeviceAuth {
    async fn login(&self, username: &str, creds: &Credentials) -> Result<Principal, Refusal> {
        let ip = creds.source_ip;
        if self.require_tls && creds.command_channel_security != ChannelEncryptionState::Tls {
            tracing::warn!(device = username, %ip, "FTP login refused: TLS is required (AUTH TLS first)");
            return Err(Refusal::plain(AuthenticationError::new(
                "ftp.require_tls: log in over TLS",
            )));
        }
        if let Some(locked) = self.lockout.locked(username, ip) {
            tracing::warn!(device = username, %ip, "FTP login refused: {locked}");
            return Err(Refusal {
                error: AuthenticationError::new("locked out"),
                locked: Some(locked),
            });
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
                tracing::warn!(
                    device = username,
                    %ip,
                    locked = locked.is_some(),
                    "FTP login refused: {why}"
                );
                Err(Refusal {
                    error: AuthenticationError::BadPassword,
                    locked,
                })
            }
            Err(Refused::Database(e)) => {
                tracing::error!(
                    device = username,
                    "FTP login not checked, the database failed: {e}"
                );
                Err(Refusal::plain(AuthenticationError::new(
                    "credentials could not be checked",
                )))
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

/// A name locked out at an address: what the device is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Locked {
    pub remaining: Duration,
    pub failures: u32,
}

impl fmt::Display for Locked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.remaining.as_secs_f64().ceil() as u64;
        let wait = match secs {
            0..=90 => format!("{secs} more seconds"),
            _ => format!("{} more minutes", secs.div_ceil(60)),
        };
        write!(
            f,
            "Locked out for {wait} after {} failed logins for this name from this address; \
             until then even the right token is refused.",
            self.failures
        )
    }
}

impl Failures {
    fn locked(&self, now: Instant) -> Option<Locked> {
        let until = self.locked_until.filter(|&until| now < until)?;
        Some(Locked {
            remaining: until - now,
            failures: self.count,
        })
    }
}

impl Lockout {
    pub fn new(max_failures: u32, period: Duration) -> Lockout {
        Lockout {
            max_failures: max_failures.max(1),
            period,
            entries: Mutex::default(),
        }
    }

    /// The pair's lockout, while it lasts.
    fn locked(&self, name: &str, ip: IpAddr) -> Option<Locked> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(&(name.to_string(), ip))?.locked(Instant::now())
    }

    /// Counts a failure; the lockout when the pair is locked out now.
    fn failed(&self, name: &str, ip: IpAddr) -> Option<Locked> {
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
        entry.locked(now)
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
        assert!(lockout.failed("dev", a).is_none());
        assert!(lockout.failed("dev", a).is_none());
        let locked = lockout.failed("dev", a).expect("locked after 3");
        assert_eq!(locked.failures, 3);
        assert!(locked
            .to_string()
            .starts_with("Locked out for 60 more seconds after 3 failed"));
        assert!(lockout.locked("dev", a).is_some());
        assert!(lockout.locked("dev", b).is_none() && lockout.locked("other", a).is_none());
    }

    #[test]
    fn the_lock_expires() {
        let lockout = Lockout::new(1, Duration::from_millis(0));
        lockout.failed("dev", [127, 0, 0, 1].into());
        assert!(lockout.locked("dev", [127, 0, 0, 1].into()).is_none());
    }
}
