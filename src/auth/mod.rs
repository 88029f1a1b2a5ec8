//! Who may use voxio: the PIN and the one gate every PIN attempt passes ([`PinGate`]), signed
//! voice tokens, logouts, and the client's address behind trusted proxies.
//!
//! This layer sits below both `web` (the login routes) and `voice` (the `/voice` namespace),
//! and knows neither. Nothing here logs a PIN, a token or a key; `Debug` shows no secret.

pub mod attempts;
pub mod gate;
pub mod pin;
pub mod proxy;
pub mod revocations;
pub mod tokens;

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::header::HeaderMap;

pub use attempts::{AttemptStore, Limits, MemoryAttempts, RedisAttempts};
pub use gate::{Granted, PinGate, Refused};
pub use pin::Pin;
pub use proxy::TrustedProxies;
pub use revocations::{MemoryRevocations, RedisRevocations, Revocations};
pub use tokens::{TokenClaims, TokenSigner};

/// Everything that authenticates, shared by the login routes and the `/voice` namespace.
pub struct Auth {
    /// The PIN, behind its attempt limits.
    pub gate: PinGate,
    /// Voice tokens from page logins.
    pub tokens: TokenSigner,
    /// Logins that logged out.
    pub revoked: Arc<dyn Revocations>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub proxies: TrustedProxies,
}

impl Auth {
    /// The attempt key of the client behind a request from `peer` with these headers.
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> String {
        client_key(self.proxies.client_ip(peer, headers))
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A store (Redis) did not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// The key PIN attempts are counted under for a client address: an IPv4 address as it is, an
/// IPv6 address by its /64 (one subscriber usually holds a whole /64).
pub fn client_key(ip: Option<IpAddr>) -> String {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => format!("ip:{v4}"),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "ip:unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let key = |s: &str| client_key(Some(s.parse().unwrap()));
        assert_eq!(key("203.0.113.7"), "ip:203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "ip:203.0.113.7");
        assert_eq!(key("2001:db8:1:2::1"), "ip6:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:1:2:3"), key("2001:db8:1:2::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(client_key(None), "ip:unknown");
    }
}
