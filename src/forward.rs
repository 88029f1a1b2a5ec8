//! Polling without sticky sessions: a polling request for a session of another node is
//! forwarded to that node, so a load balancer may send any request anywhere.
//!
//! Session ids start with their node's tag; each node announces its tag and internal URL in
//! its cluster heartbeat. A request for a session this node does not hold goes, as it came
//! (method, path and query, headers but the hop-by-hop ones, `Host` kept so the owner's Origin
//! check sees what the client sent, body), to the owner's URL with `x-voxio-forwarded`, and
//! the owner's answer goes back as it is. A long-poll is held open on both nodes for as long
//! as the owner holds it. An owner that cannot be reached answers like a session that is gone
//! ("session id unknown"), so the client reconnects at once (and recovers its sockets).
//! A WebSocket upgrade for another node's session is spliced through to it: the request goes
//! there as it came, and bytes flow both ways untouched for the connection's life (only an
//! `http://` URL can be spliced). Each request is counted in
//! `voxio_engine_forwarded_total{result}` (`ok`, `websocket`, `failed`, `too_large`).

use std::time::Duration;

use actix_web::http::header::{self, HeaderName};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;

use crate::cluster::Cluster;
use crate::engineio::{Elsewhere, EngineError, Sid, FORWARDED};
use crate::telemetry;

/// Forwards polling requests to the node that holds their session.
#[derive(Clone)]
pub struct Forwarder {
    cluster: Cluster,
    /// How long a forwarded request may take (a long-poll's longest hold and some).
    timeout: Duration,
    /// The largest body forwarded (a POST's payload limit).
    max_body: usize,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Forwarder(node {})", self.cluster.node())
    }
}

impl Forwarder {
    /// Forwards to the nodes `cluster` hears; `timeout` bounds each request, `max_body` each
    /// body (either way).
    pub fn new(cluster: Cluster, timeout: Duration, max_body: usize) -> Forwarder {
        Forwarder {
            cluster,
            timeout,
            max_body,
        }
    }
}

thread_local! {
    /// One client per worker thread: its pool keeps connections to the other nodes open.
    static CLIENT: awc::Client = awc::Client::builder()
        .disable_redirects()
        .no_default_headers()
        .finish();
}

/// Headers that belong to one hop, not to the request.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ]
    .contains(name)
}

impl Elsewhere for Forwarder {
    fn owner_address(&self, sid: Sid) -> Option<String> {
        let url = self.cluster.owner_url(sid)?;
        let authority = url.strip_prefix("http://")?;
        Some(authority.split('/').next().unwrap_or(authority).to_owned())
    }

    fn spliced(&self, ok: bool) {
        telemetry::forwarded(if ok { "websocket" } else { "failed" });
    }

    fn forward(
        &self,
        sid: Sid,
        req: &HttpRequest,
        body: web::Payload,
    ) -> Option<LocalBoxFuture<'static, HttpResponse>> {
        let url = self.cluster.owner_url(sid)?;
        let (req, this) = (req.clone(), self.clone());
        Some(Box::pin(async move {
            match this.send(&url, &req, body).await {
                Ok(answer) => {
                    telemetry::forwarded("ok");
                    answer
                }
                Err(Failed::TooLarge) => {
                    telemetry::forwarded("too_large");
                    EngineError::PayloadTooLarge.response()
                }
                Err(Failed::Owner(error)) => {
                    telemetry::forwarded("failed");
                    tracing::debug!(%sid, %url, %error, "forwarding a polling request failed");
                    EngineError::UnknownSid.response()
                }
            }
        }))
    }
}

enum Failed {
    TooLarge,
    Owner(String),
}

impl Forwarder {
    async fn send(
        &self,
        url: &str,
        req: &HttpRequest,
        mut body: web::Payload,
    ) -> Result<HttpResponse, Failed> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut out = CLIENT
            .with(|client| client.request(req.method().clone(), format!("{url}{path}")))
            .timeout(self.timeout);
        for (name, value) in req.headers() {
            if !hop_by_hop(name) {
                out = out.append_header((name.clone(), value.clone()));
            }
        }
        out = out.insert_header((FORWARDED, self.cluster.node()));
        let mut bytes = web::BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Failed::Owner(e.to_string()))?;
            if bytes.len() + chunk.len() > self.max_body {
                return Err(Failed::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        let mut answer = if bytes.is_empty() {
            out.send().await
        } else {
            out.send_body(bytes.freeze()).await
        }
        .map_err(|e| Failed::Owner(e.to_string()))?;
        let payload = answer
            .body()
            .limit(self.max_body.saturating_mul(2))
            .await
            .map_err(|e| Failed::Owner(e.to_string()))?;
        let mut response = HttpResponse::build(answer.status());
        for (name, value) in answer.headers() {
            if !hop_by_hop(name) {
                response.append_header((name.clone(), value.clone()));
            }
        }
        Ok(response.body(payload))
    }
}
