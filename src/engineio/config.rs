//! Engine.IO server settings, each with its documented default.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderName};

/// Which browser origins may open sessions.
///
/// Requests without an `Origin` header (native clients: Node, Python, curl) are not browser
/// cross-origin requests and are always let through; the check guards against other web pages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OriginPolicy {
    /// Any origin (the protocol test server uses this).
    Any,
    /// Only the page's own origin: the `Origin` header's host must equal the `Host` header.
    #[default]
    SameOrigin,
    /// Only these origins, compared exactly (`scheme://host[:port]`, no trailing slash).
    List(Vec<String>),
}

impl OriginPolicy {
    /// Parses `*`, `same-origin` (or an empty string), or a comma-separated list of origins.
    pub fn parse(text: &str) -> OriginPolicy {
        match text.trim() {
            "*" => OriginPolicy::Any,
            "" | "same-origin" => OriginPolicy::SameOrigin,
            list => OriginPolicy::List(
                list.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            ),
        }
    }

    /// Whether a request with these headers may go on.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::SameOrigin => {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
                let origin_host = origin.split_once("://").map(|(_, rest)| rest);
                matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
            }
            OriginPolicy::List(list) => list.iter().any(|allowed| allowed == origin),
        }
    }
}

/// A function from a handshake's peer address and headers to the client's key.
pub type ClientFn = dyn Fn(Option<IpAddr>, &HeaderMap) -> Option<String> + Send + Sync;

/// Names the client behind a handshake (the layer above knows which proxies to believe).
#[derive(Clone)]
pub struct ClientOf(pub Arc<ClientFn>);

impl Default for ClientOf {
    fn default() -> Self {
        ClientOf(Arc::new(|peer, _| peer.map(|ip| ip.to_string())))
    }
}

impl std::fmt::Debug for ClientOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientOf(..)")
    }
}

/// The transports a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transports {
    /// HTTP long-polling (`transport=polling`).
    pub polling: bool,
    /// WebSocket (`transport=websocket`), directly or as an upgrade from polling.
    pub websocket: bool,
}

impl Default for Transports {
    fn default() -> Self {
        Transports {
            polling: true,
            websocket: true,
        }
    }
}

/// Engine.IO server configuration. `EngineConfig::default()` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long after the last pong (or the handshake) the server sends a ping. Default 25 s.
    pub ping_interval: Duration,
    /// How long the server waits for the pong before closing the session. Default 20 s.
    pub ping_timeout: Duration,
    /// Largest packet, polling POST body, or WebSocket message accepted, in bytes; also the
    /// largest polling GET response the server builds (one packet alone may exceed it only if
    /// the layer above queued it). Default 1,000,000.
    pub max_payload: usize,
    /// How long a probing WebSocket may take to complete an upgrade. Default 10 s.
    pub upgrade_timeout: Duration,
    /// Accepted transports. Default: both.
    pub transports: Transports,
    /// Which `Origin`s may connect, checked on every polling request and WebSocket handshake.
    /// Default: same origin.
    pub origins: OriginPolicy,
    /// Most sessions open at once; a handshake beyond it gets 503. Default 100,000.
    pub max_sessions: usize,
    /// Most sessions open at once from one client (as [`EngineConfig::client_of`] names it); a
    /// handshake beyond it gets 429. 0 (the library's default): no limit; the voxio server sets
    /// `VOXIO_MAX_SESSIONS_PER_CLIENT` (256).
    pub max_sessions_per_client: usize,
    /// Who a handshake comes from, for `max_sessions_per_client`. Default: the peer address.
    pub client_of: ClientOf,
    /// Most packets queued for one client that it has not yet taken. A reliable packet beyond it
    /// closes the session (a client that cannot keep up is told so rather than silently losing
    /// data); a volatile one is dropped. Default 1,024.
    pub outbound_queue: usize,
    /// Most payload bytes queued for one client (one packet alone may be larger); the same
    /// policy as `outbound_queue`. Default 8 MiB.
    pub outbound_bytes: usize,
    /// Most WebSocket frames one message may be fragmented into; more close the connection with
    /// 1009. Default 256.
    pub max_fragments: usize,
    /// Most WebSocket pings a client may send while the pong to an earlier one cannot be handed
    /// to its socket (it reads nothing); more close the connection with 1008. At most one pong
    /// is ever pending. Default 64.
    pub max_unanswered_pings: usize,
    /// The request headers a session keeps in its [`super::Handshake`] for the layer above;
    /// the others are dropped at the handshake. Default: `origin`, `user-agent`,
    /// `x-forwarded-for`, `x-forwarded-proto`.
    pub handshake_headers: Vec<HeaderName>,
    /// Told of sessions, refusals, packets and bytes (the application's metrics). Default:
    /// nothing is told.
    pub observer: super::Observer,
    /// This node's tag, put at the start of every session id it makes (see
    /// [`Sid::generate_tagged`](super::Sid::generate_tagged)). Default: none.
    pub node_tag: Option<String>,
    /// Where the sessions this node does not have are: a polling request for one is handed
    /// to it. Default: nowhere (the request gets "session id unknown").
    pub elsewhere: Option<Arc<dyn Elsewhere>>,
}

/// The header a node puts on a request it forwards to another: a request that carries it is
/// never forwarded again.
pub const FORWARDED: &str = "x-voxio-forwarded";

/// Sessions held by other nodes: forwards a polling request to the node that holds its
/// session, so a load balancer needs no stickiness.
pub trait Elsewhere: Send + Sync + std::fmt::Debug {
    /// The answer of the node holding session `sid` to this polling request, or `None` when
    /// no known node holds it.
    fn forward(
        &self,
        sid: super::Sid,
        req: &actix_web::HttpRequest,
        body: actix_web::web::Payload,
    ) -> Option<futures_util::future::LocalBoxFuture<'static, actix_web::HttpResponse>>;

    /// The address (`host:port`) of the node holding session `sid`, when another known node
    /// holds it: a WebSocket upgrade for it is spliced through to that node.
    fn owner_address(&self, sid: super::Sid) -> Option<String>;

    /// Counts an upgrade spliced through to another node (`ok`, or `failed`: not reached).
    fn spliced(&self, ok: bool);
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            upgrade_timeout: Duration::from_secs(10),
            transports: Transports::default(),
            origins: OriginPolicy::default(),
            max_sessions: 100_000,
            max_sessions_per_client: 0,
            client_of: ClientOf::default(),
            outbound_queue: 1024,
            outbound_bytes: 8 << 20,
            max_fragments: 256,
            max_unanswered_pings: 64,
            handshake_headers: [
                header::ORIGIN,
                header::USER_AGENT,
                HeaderName::from_static("x-forwarded-for"),
                HeaderName::from_static("x-forwarded-proto"),
            ]
            .into(),
            observer: super::Observer::default(),
            node_tag: None,
            elsewhere: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            map.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        map
    }

    #[test]
    fn same_origin_compares_host() {
        let policy = OriginPolicy::SameOrigin;
        assert!(policy.allows(&headers(None, "localhost:8080")));
        assert!(policy.allows(&headers(Some("http://localhost:8080"), "localhost:8080")));
        assert!(!policy.allows(&headers(Some("http://evil.test"), "localhost:8080")));
        assert!(!policy.allows(&headers(Some("null"), "localhost:8080")));
    }

    #[test]
    fn list_and_any() {
        let list = OriginPolicy::parse("https://a.test, https://b.test/");
        assert_eq!(
            list,
            OriginPolicy::List(vec!["https://a.test".into(), "https://b.test".into()])
        );
        assert!(list.allows(&headers(Some("https://b.test"), "x")));
        assert!(!list.allows(&headers(Some("https://c.test"), "x")));
        assert!(OriginPolicy::parse("*").allows(&headers(Some("https://c.test"), "x")));
        assert_eq!(OriginPolicy::parse(""), OriginPolicy::SameOrigin);
    }
}
