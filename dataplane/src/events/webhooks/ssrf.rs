//! Where webhooks may go. An endpoint URL is refused when its host is, or
//! resolves to, an address that is not publicly routable: loopback,
//! private (RFC 1918, unique local), link-local, unspecified, multicast,
//! broadcast, shared (CGNAT), documentation and benchmarking ranges, and
//! IPv6 forms that embed such an IPv4 address (v4-mapped, v4-compatible,
//! NAT64, 6to4) or tunnel to one (Teredo). `--webhook-allow-private`
//! lifts this for local development.
//!
//! The check runs twice: when an endpoint is registered (a clear 422), and
//! at every delivery through [`GuardedResolver`], the HTTP client's DNS
//! resolver: it resolves the host, drops refused addresses and hands the
//! client only the addresses it checked, which are the ones it connects
//! to. So a name that resolves to a public address at registration and to
//! 127.0.0.1 later (DNS rebinding) is refused at delivery. IP-literal hosts
//! never reach a resolver, so deliveries check them directly ([`check_url`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub allow_http: bool,
    pub allow_private: bool,
}

fn v4_public(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network", unspecified
        || a == 10                             // private
        || a == 127                            // loopback
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254)              // link-local
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // documentation
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay anycast
        || (a == 192 && b == 168)              // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)   // documentation
        || (a == 203 && b == 0 && c == 113)    // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn v6_public(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_public(v4);
    }
    // v4-compatible (deprecated) ::a.b.c.d, and :: / ::1 themselves.
    if s[..6].iter().all(|&x| x == 0) {
        return false;
    }
    // NAT64 64:ff9b::/96 embeds an IPv4 address in the last 32 bits.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0) {
        return v4_public(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // 6to4 2002::/16 embeds one in bits 16..48.
    if s[0] == 0x2002 {
        return v4_public(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    !((s[0] & 0xfe00) == 0xfc00          // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80     // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0     // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00     // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0)      // Teredo
        || (s[0] == 0x0100 && s[1..4].iter().all(|&x| x == 0))) // discard-only
}

/// Whether `ip` is publicly routable (see the module documentation).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_public(v4),
        IpAddr::V6(v6) => v6_public(v6),
    }
}

/// The URL if its shape is acceptable: `https` (or `http` when allowed), a
/// host, no fragment; an IP-literal host must be public unless allowed.
pub fn check_url(raw: &str, policy: Policy) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" => return Err("must be https (http is allowed only by configuration)".into()),
        _ => return Err("must be an https URL".into()),
    }
    if url.fragment().is_some() {
        return Err("may not have a fragment".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if let Some(ip) = literal(&url)
        && !policy.allow_private
        && !is_public(ip)
    {
        return Err("points to a non-public address".into());
    }
    Ok(url)
}

/// The host of `url` when it is an IP literal (`[…]` for IPv6).
pub fn literal(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Resolves `url`'s host and refuses it when any address is not public
/// (registration: an endpoint that is partly internal is refused whole).
pub async fn check_resolves(url: &Url, policy: Policy) -> Result<(), String> {
    if policy.allow_private {
        return Ok(());
    }
    if literal(url).is_some() {
        return Ok(()); // literals were checked by check_url
    }
    let Some(host) = url.host_str() else {
        return Err("has no host".into());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| format!("the host `{host}` does not resolve"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("the host `{host}` does not resolve"));
    }
    if addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(format!(
            "the host `{host}` resolves to a non-public address"
        ));
    }
    Ok(())
}

/// The delivery client's resolver: only checked, public addresses reach
/// the connector (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if found.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> =
                    format!("`{host}` has no public address (refused: SSRF policy)").into();
                return Err(error);
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().expect("ip"))
    }

    #[test]
    fn ranges() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "192.0.2.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(!public(refused), "{refused}");
        }
        for allowed in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(public(allowed), "{allowed}");
        }
    }

    #[test]
    fn urls() {
        let strict = Policy::default();
        assert!(check_url("https://example.com/hook", strict).is_ok());
        assert!(check_url("http://example.com/hook", strict).is_err());
        assert!(check_url("ftp://example.com/", strict).is_err());
        assert!(check_url("https://127.0.0.1/", strict).is_err());
        assert!(check_url("https://[::ffff:169.254.169.254]/", strict).is_err());
        assert!(check_url("https://example.com/#frag", strict).is_err());
        let local = Policy {
            allow_http: true,
            allow_private: true,
        };
        assert!(check_url("http://127.0.0.1:8080/", local).is_ok());
    }

    #[tokio::test]
    async fn names_that_resolve_to_loopback_are_refused() {
        let url = check_url("https://localhost/", Policy::default()).expect("shape");
        assert!(check_resolves(&url, Policy::default()).await.is_err());
        let resolver = GuardedResolver {
            allow_private: false,
        };
        let result =
            reqwest::dns::Resolve::resolve(&resolver, "localhost".parse().expect("name")).await;
        assert!(result.is_err());
    }
}
