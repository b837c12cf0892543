//! Slows down guessing: failed logins are counted per account name and client address;
//! after a few, that name from that address gets 429 with a Retry-After that doubles
//! with each further failure. Only a successful login as that name from that address
//! clears its count, so neither a request to an open route nor a login as another
//! account resets it, and one account's failures never refuse another account.
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

/// The account a failed token is counted under: a token that matches nothing names no
/// account, and one such key per address keeps unknown tokens from locking any device.
pub const UNKNOWN_TOKEN: &str = "";

#[derive(Default)]
pub struct AuthFailures {
    trusted_proxies: Vec<IpAddr>,
    by_account: Mutex<HashMap<(String, IpAddr), (u32, Instant)>>,
}

impl AuthFailures {
    pub fn new(trusted_proxies: Vec<IpAddr>) -> AuthFailures {
        AuthFailures {
            trusted_proxies,
            by_account: Mutex::default(),
        }
    }

    /// How long `account` from `ip` must still wait, if it must.
    pub fn wait(&self, account: &str, ip: IpAddr) -> Option<Duration> {
        let map = self.by_account.lock().unwrap_or_else(|e| e.into_inner());
        let (count, last) = *map.get(&(account.to_string(), ip))?;
        let over = count.checked_sub(FREE_FAILURES)?;
        let backoff = Duration::from_secs(1u64 << over.min(16)).min(LONGEST_WAIT);
        backoff.checked_sub(last.elapsed()).filter(|d| !d.is_zero())
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
}
