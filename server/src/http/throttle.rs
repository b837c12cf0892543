//! Slows down guessing: failed logins are counted per account name and client address;
//! after a few, that name from that address gets 429 with a Retry-After that doubles
//! with each further failure. Only a successful login as that name from that address
//! clears its count, so neither a request to an open route nor a login as another
//! account resets it, and one account's failures never refuse another account.
//!
//! Guessing one account from many addresses is limited too: once an account has had
//! [`ACCOUNT_FREE_FAILURES`] failures within [`ACCOUNT_WINDOW`] from any addresses, an
//! address that failed as that account within the last [`RECENT_FAILURE`] must wait
//! until that failure is that old. An address with no recent failure as the account is
//! let through, so an attacker cannot lock the real owner out: the right secret from
//! an address that has not failed gets in at once, and from one that has, at most
//! [`RECENT_FAILURE`] after its last failure (or its own doubling wait, if longer). An
//! attacker gets one guess per address and minute once the account is under attack.
//!
//! The client address is the connection's peer, or, when the peer is one of
//! `http.trusted_proxies`, the address that proxy forwarded (`Forwarded` or
//! `X-Forwarded-For`): behind a reverse proxy every request would otherwise share the
//! proxy's address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::AppState;

/// The address a request is from, after trusted proxies (see the module comment).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub IpAddr);

/// Failures allowed before the name has to wait.
const FREE_FAILURES: u32 = 5;
/// A quiet name is forgiven after this long.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
const LONGEST_WAIT: Duration = Duration::from_secs(300);
/// Bounds the table's memory under a spray of names or addresses.
const MAX_ENTRIES: usize = 10_000;
/// Failures of one account, from all addresses together, before it counts as under
/// attack...
pub const ACCOUNT_FREE_FAILURES: u32 = 10;
/// ...within this long (a window that starts with its first failure).
pub const ACCOUNT_WINDOW: Duration = Duration::from_secs(60);
/// While an account is under attack, an address that failed as it more recently than
/// this waits.
pub const RECENT_FAILURE: Duration = Duration::from_secs(60);

/// The account a failed token is counted under: a token that matches nothing names no
/// account, and one such key per address keeps unknown tokens from locking any device.
pub const UNKNOWN_TOKEN: &str = "";

#[derive(Default)]
pub struct AuthFailures {
    trusted_proxies: Vec<IpAddr>,
    by_account: Mutex<HashMap<(String, IpAddr), (u32, Instant)>>,
    /// Per account from all addresses: when its window started and its failures since.
    by_name: Mutex<HashMap<String, (Instant, u32)>>,
}

impl AuthFailures {
    pub fn new(trusted_proxies: Vec<IpAddr>) -> AuthFailures {
        AuthFailures {
            trusted_proxies,
            by_account: Mutex::default(),
            by_name: Mutex::default(),
        }
    }

    /// How long `account` from `ip` must still wait, if it must.
    pub fn wait(&self, account: &str, ip: IpAddr) -> Option<Duration> {
        let (count, last) = *self
            .by_account
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(account.to_string(), ip))?;
        let since = last.elapsed();
        let backoff = match count.checked_sub(FREE_FAILURES) {
            Some(over) => Duration::from_secs(1u64 << over.min(16)).min(LONGEST_WAIT),
            None => Duration::ZERO,
        };
        let attacked = self.under_attack(account).then_some(RECENT_FAILURE);
        let wait = backoff.max(attacked.unwrap_or_default());
        wait.checked_sub(since).filter(|d| !d.is_zero())
    }

    /// Whether `account` has failed too often, from all addresses together, lately.
    fn under_attack(&self, account: &str) -> bool {
        let names = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        names.get(account).is_some_and(|(start, failures)| {
            start.elapsed() < ACCOUNT_WINDOW && *failures >= ACCOUNT_FREE_FAILURES
        })
    }

    pub fn failed(&self, account: &str, ip: IpAddr) {
        let mut map = self.by_account.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (_, last)| last.elapsed() < FORGET_AFTER);
        }
        let entry = map
            .entry((account.to_string(), ip))
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FORGET_AFTER {
            entry.0 = 0;
        }
        *entry = (entry.0 + 1, Instant::now());
        drop(map);
        let mut names = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        if names.len() >= MAX_ENTRIES {
            names.retain(|_, (start, _)| start.elapsed() < ACCOUNT_WINDOW);
        }
        let window = names
            .entry(account.to_string())
            .or_insert((Instant::now(), 0));
        if window.0.elapsed() >= ACCOUNT_WINDOW {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
    }

    pub fn succeeded(&self, account: &str, ip: IpAddr) {
        self.by_account
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(account.to_string(), ip));
    }

    /// The client behind `peer`: forwarded addresses count only when the peer is a
    /// trusted proxy, and then the nearest one that is not itself a trusted proxy.
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        let hops = forwarded_for(headers);
        hops.iter()
            .rev()
            .find(|ip| !self.trusted_proxies.contains(ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }
}

/// The `for=` addresses of `Forwarded` (RFC 7239), else those of `X-Forwarded-For`, in
/// order from the original client to the last proxy. Any unreadable entry discards the
/// header: a guess could attribute failures to the wrong client.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .collect()
    };
    let forwarded: Option<Vec<IpAddr>> = values("forwarded")
        .iter()
        .map(|element| {
            element
                .split(';')
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.eq_ignore_ascii_case("for").then_some(v)
                })
                .and_then(parse_node)
        })
        .collect();
    match forwarded {
        Some(ips) if !ips.is_empty() => ips,
        _ => values("x-forwarded-for")
            .iter()
            .map(|s| parse_node(s))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default(),
    }
}

/// `1.2.3.4`, `"1.2.3.4:80"`, `"[2001:db8::1]:80"` or `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.rsplit_once(':')?.0.parse().ok()
}

impl Client {
    /// The request's client address: the connection's peer (`ConnectInfo`, set by
    /// `serve`), or the address a trusted proxy forwarded. A request that did not come
    /// over a socket (an in-process test) counts as the unspecified address.
    pub fn of(parts: &Parts, state: &AppState) -> Client {
        match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => {
                Client(state.auth_failures.client(peer.ip(), &parts.headers))
            }
            None => Client(IpAddr::from([0, 0, 0, 0])),
        }
    }
}

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Client, Self::Rejection> {
        Ok(Client::of(parts, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxy: IpAddr = [127, 0, 0, 1].into();
        let f = AuthFailures::new(vec![proxy]);
        let h = headers(&[("x-forwarded-for", "192.0.2.7, 127.0.0.1")]);
        assert_eq!(f.client(proxy, &h), IpAddr::from([192, 0, 2, 7]));
        let other: IpAddr = [127, 0, 0, 9].into();
        assert_eq!(
            f.client(other, &h),
            other,
            "an untrusted peer's header is ignored"
        );
        let h = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")]);
        assert_eq!(
            f.client(proxy, &h),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(f.client(proxy, &h), proxy);
    }

    #[test]
    fn failures_lock_one_name_at_one_address_only() {
        let f = AuthFailures::default();
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        for _ in 0..=FREE_FAILURES {
            f.failed("admin", a);
        }
        assert!(f.wait("admin", a).is_some());
        assert!(f.wait("admin", b).is_none() && f.wait("dev1", a).is_none());
        f.succeeded("dev1", a);
        assert!(
            f.wait("admin", a).is_some(),
            "another name's success clears nothing"
        );
        f.succeeded("admin", a);
        assert!(f.wait("admin", a).is_none());
    }

    #[test]
    fn an_account_under_attack_waits_only_at_addresses_that_failed_lately() {
        let f = AuthFailures::default();
        let ip = |n: u8| IpAddr::from([127, 0, 0, n]);
        for n in 0..ACCOUNT_FREE_FAILURES as u8 {
            assert!(f.wait("admin", ip(n + 2)).is_none(), "not yet under attack");
            f.failed("admin", ip(n + 2));
        }
        let wait = f
            .wait("admin", ip(2))
            .expect("an address that just failed waits");
        assert!(
            wait <= RECENT_FAILURE && wait > RECENT_FAILURE / 2,
            "{wait:?}"
        );
        assert!(
            f.wait("admin", ip(99)).is_none(),
            "a clean address is let through"
        );
        assert!(
            f.wait("bob", ip(2)).is_none(),
            "other accounts are not affected"
        );
        // Its failure long enough ago, the address is let through again, attack or not.
        let old = Instant::now() - RECENT_FAILURE - Duration::from_secs(1);
        f.by_account
            .lock()
            .unwrap()
            .insert(("admin".into(), ip(2)), (1, old));
        assert!(f.under_attack("admin"));
        assert!(f.wait("admin", ip(2)).is_none());
    }
}
