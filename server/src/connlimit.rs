//! Keeps idle and hostile clients from exhausting the process: caps on open connections
//! per listener and per address, a log that reports refusals once per interval, and
//! the open-files limit raised at start with descriptors kept back for ingest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Refusals and accept errors are summed and logged at most once per this interval, so a
/// flood costs a log line per interval instead of one per connection.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Descriptors kept out of the listeners' reach: the database pool, the drop directory
/// scan, spool and archive files, the FTP passive listeners, the log.
pub const RESERVED_FDS: u64 = 256;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The listener holds `max_connections`.
    Listener,
    /// This address holds `max_connections_per_ip`.
    Address,
}

/// Open connections of one listener, in total and by address.
pub struct ConnLimits {
    /// `http` or `ftp`, for the log.
    name: &'static str,
    max_total: usize,
    max_per_ip: usize,
    /// Reverse proxies (`http.trusted_proxies`): every client behind one arrives from
    /// its address, so only the listener's cap applies to them.
    trusted: Vec<IpAddr>,
    open: Mutex<Open>,
    report: Mutex<Report>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

struct Report {
    last: Option<Instant>,
    listener_full: u64,
    address_full: u64,
    accept_errors: u64,
    last_error: String,
}

/// One admitted connection; its slot is freed when this is dropped.
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    pub fn new(name: &'static str, max_total: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        ConnLimits::trusting(name, max_total, max_per_ip, &[])
    }

    /// The same limits, with no cap per address for `trusted` reverse proxies.
    pub fn trusting(
        name: &'static str,
        max_total: usize,
        max_per_ip: usize,
        trusted: &[IpAddr],
    ) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            name,
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            trusted: trusted.to_vec(),
            open: Mutex::default(),
            report: Mutex::new(Report {
                last: None,
                listener_full: 0,
                address_full: 0,
                accept_errors: 0,
                last_error: String::new(),
            }),
        })
    }

    /// Takes a slot for a connection from `ip`, or says which cap is reached (and
    /// counts the refusal for the next report).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Full> {
        let refused = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let from_ip = open.by_ip.get(&ip).copied().unwrap_or(0);
            if open.total >= self.max_total {
                Some(Full::Listener)
            } else if from_ip >= self.max_per_ip && !self.trusted.contains(&ip) {
                Some(Full::Address)
            } else {
                open.total += 1;
                *open.by_ip.entry(ip).or_insert(0) += 1;
                None
            }
        };
        match refused {
            None => Ok(ConnGuard {
                limits: self.clone(),
                ip,
            }),
            Some(full) => {
                self.note(|r| match full {
                    Full::Listener => r.listener_full += 1,
                    Full::Address => r.address_full += 1,
                });
                Err(full)
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// An `accept` that failed (out of descriptors, most likely).
    pub fn accept_failed(&self, e: &std::io::Error) {
        self.note(|r| {
            r.accept_errors += 1;
            r.last_error = e.to_string();
        });
    }

    /// Counts an event and logs the sums if the last report is old enough.
    fn note(&self, count: impl FnOnce(&mut Report)) {
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        count(&mut r);
        if r.last.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return;
        }
        r.last = Some(Instant::now());
        let (listener_full, address_full, errors) =
            (r.listener_full, r.address_full, r.accept_errors);
        if listener_full + address_full > 0 {
            tracing::warn!(
                listener = self.name,
                refused_listener_full = listener_full,
                refused_address_full = address_full,
                max_connections = self.max_total,
                max_connections_per_ip = self.max_per_ip,
                "connections refused since the last report (at most one report per {} s)",
                REPORT_EVERY.as_secs()
            );
        }
        if errors > 0 {
            tracing::warn!(
                listener = self.name,
                errors,
                last_error = r.last_error,
                "accept failed since the last report (at most one report per {} s)",
                REPORT_EVERY.as_secs()
            );
        }
        (r.listener_full, r.address_full, r.accept_errors) = (0, 0, 0);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Raises the soft open-files limit to the hard one (where the system lets us) and
/// returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return u64::MAX;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(e) => {
                tracing::warn!("cannot raise the open-files limit from {soft} to {hard}: {e}")
            }
        }
    }
    soft
}

/// The connection caps `(http, ftp)` that fit in `fd_limit` with [`RESERVED_FDS`] kept
/// back: an HTTP connection may hold a spool file besides its socket, an FTP session a
/// data connection, a passive listener and a file besides its control connection.
pub fn fit_caps(fd_limit: u64, http: usize, ftp: usize) -> (usize, usize) {
    let need = 2 * http as u64 + 4 * ftp as u64;
    let room = fd_limit.saturating_sub(RESERVED_FDS);
    if need <= room {
        return (http, ftp);
    }
    let scale = |n: usize| ((n as u128 * room as u128 / need.max(1) as u128) as usize).max(1);
    (scale(http), scale(ftp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_total_free_their_slots_on_drop() {
        let limits = ConnLimits::new("test", 3, 2);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "::1".parse().unwrap());
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Full::Address));
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some(Full::Listener));
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _b2 = limits.admit(b).unwrap();
        assert_eq!(limits.open(), 3);
    }

    #[test]
    fn a_trusted_proxy_is_capped_only_by_the_listener() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let limits = ConnLimits::trusting("test", 4, 1, &[proxy]);
        let _held: Vec<_> = (0..4).map(|_| limits.admit(proxy).unwrap()).collect();
        assert_eq!(limits.admit(proxy).err(), Some(Full::Listener));
    }

    #[test]
    fn caps_shrink_to_fit_the_descriptor_limit() {
        assert_eq!(fit_caps(100_000, 2048, 256), (2048, 256));
        let (http, ftp) = fit_caps(1024, 2048, 256);
        assert!(
            2 * http + 4 * ftp <= 1024 - RESERVED_FDS as usize,
            "{http} {ftp}"
        );
        assert!(http > 0 && ftp > 0);
    }
}
