//! The client's address behind reverse proxies. A request from a trusted proxy (configured
//! with `VOXIO_TRUSTED_PROXIES`) carries the client in `X-Forwarded-For`; from anyone else the
//! header is ignored, since a client could write whatever it likes there.

use std::net::IpAddr;

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

/// Proxies whose `X-Forwarded-For` is believed. Empty (the default): none.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and networks (`10.0.0.0/8, 127.0.0.1`).
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("VOXIO_TRUSTED_PROXIES: {s:?} is not an address or network")
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the nearest
    /// address in `X-Forwarded-For` that is not itself a trusted proxy (read from the right,
    /// starting at the last header line: entries further left, or on earlier lines, were
    /// written by whoever came before, and may be forged).
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut nearest = peer;
        let lines: Vec<_> = headers.get_all("x-forwarded-for").collect();
        for value in lines.into_iter().rev() {
            let Ok(text) = value.to_str() else {
                return Some(nearest);
            };
            for entry in text.rsplit(',') {
                match entry.trim().parse::<IpAddr>() {
                    Ok(ip) if self.trusts(ip) => nearest = ip,
                    Ok(ip) => return Some(ip),
                    // An entry that is not an address: stop at the last one we could trust.
                    Err(_) => return Some(nearest),
                }
            }
        }
        Some(nearest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in xff {
            map.append(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peers_are_taken_as_they_are() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("10.0.0.5"), &headers(&["1.2.3.4"])),
            ip("10.0.0.5")
        );
        let some = TrustedProxies::parse("127.0.0.1").unwrap();
        assert_eq!(
            some.client_ip(ip("10.0.0.5"), &headers(&["1.2.3.4"])),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_forged_entries_are_skipped() {
        let proxies = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        // The client wrote a forged entry; nginx appended the real address.
        let h = headers(&["6.6.6.6, 203.0.113.7"]);
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        // Two proxies in a row.
        let h = headers(&["203.0.113.7, 10.1.2.3"]);
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        // Several header lines count as one list, the last line nearest.
        let h = headers(&["203.0.113.7", "10.1.2.3"]);
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        // A forged line the client sent before the proxy's own is not believed.
        let h = headers(&["6.6.6.6", "203.0.113.7"]);
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        // No header, or garbage: the proxy itself.
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &headers(&[])),
            ip("127.0.0.1")
        );
        let h = headers(&["not-an-ip"]);
        assert_eq!(proxies.client_ip(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        // An IPv4-mapped IPv6 peer is the IPv4 address.
        assert_eq!(
            proxies.client_ip(ip("::ffff:127.0.0.1"), &headers(&["203.0.113.7"])),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nginx").is_err());
    }
}
