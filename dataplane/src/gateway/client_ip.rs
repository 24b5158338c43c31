//! The client's address, for limits on unauthenticated requests.
//!
//! `X-Forwarded-For` is read only when the TCP peer is one of the configured
//! trusted proxies, and then from the right: each trusted hop appends the
//! address it saw, so the rightmost entry that is not a trusted proxy is the
//! first address no one we trust could have forged. Everything to its left
//! was written by the client and is ignored.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Trusted reverse proxies (CIDR ranges), from configuration; shared, as
/// part of the state every request clones.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(std::sync::Arc<[IpNet]>);

impl TrustedProxies {
    pub fn new(ranges: Vec<IpNet>) -> Self {
        Self(ranges.into())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address: the peer itself unless it is a trusted proxy.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else {
                // Unreadable header from our own proxy: fall back to it.
                return Some(peer);
            };
            for hop in value.split(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(ip),
                    Err(_) => return Some(peer),
                }
            }
        }
        // Rightmost untrusted hop; if every hop is a proxy of ours, the
        // leftmost one is as close to the client as we can get.
        hops.iter()
            .rev()
            .find(|ip| !self.trusts(**ip))
            .or(hops.first())
            .copied()
            .or(Some(peer))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().expect("cidr"),
            "fd00::/8".parse().expect("cidr"),
        ])
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let client = proxies().client_ip(Some(ip("203.0.113.9")), &forwarded("1.2.3.4"));
        assert_eq!(client, Some(ip("203.0.113.9")));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_wins() {
        // The client put 6.6.6.6 in front to pose as someone else.
        let headers = forwarded("6.6.6.6, 198.51.100.7, 10.1.2.3");
        let client = proxies().client_ip(Some(ip("10.0.0.1")), &headers);
        assert_eq!(client, Some(ip("198.51.100.7")));
    }

    #[test]
    fn a_trusted_peer_without_the_header_is_itself() {
        let client = proxies().client_ip(Some(ip("10.0.0.1")), &HeaderMap::new());
        assert_eq!(client, Some(ip("10.0.0.1")));
    }

    #[test]
    fn garbage_in_the_header_falls_back_to_the_peer() {
        let client = proxies().client_ip(Some(ip("10.0.0.1")), &forwarded("nonsense"));
        assert_eq!(client, Some(ip("10.0.0.1")));
    }

    #[test]
    fn without_trusted_proxies_the_header_is_never_read() {
        let none = TrustedProxies::default();
        let client = none.client_ip(Some(ip("10.0.0.1")), &forwarded("1.2.3.4"));
        assert_eq!(client, Some(ip("10.0.0.1")));
    }
}
