//! The Engine.IO HTTP entry point: parses a request, checks it, and hands it to the session's
//! actor (or opens a session, or starts a WebSocket connection).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, Addr};
use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::{h1, ConnectionType, HttpMessage};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, Resource};
use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::outbox::{Outbox, SessionHandle};
use super::polling::{Poll, PollReply, PollingSession, PostData, PostStart};
use super::session::Session;
use super::shared::{EngineShared, Registry, Route, SessionCore};
use super::sid::Sid;
use super::websocket::{WsConnection, WsSocket, WsStream};
use super::{EngineConfig, EngineError, EngineHandler, Handshake, TransportKind};

/// An Engine.IO server: configuration, the layer above, and the sessions it holds.
///
/// Cheap to clone; mount it with [`Engine::resource`].
///
/// ```no_run
/// # use voxio::engineio::{Engine, EngineConfig, EngineHandler};
/// # fn app(handler: std::sync::Arc<dyn EngineHandler>) {
/// let engine = Engine::new(EngineConfig::default(), handler);
/// let app = actix_web::App::new().service(engine.resource("/engine.io/"));
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    shared: Arc<EngineShared>,
}

impl Engine {
    /// A server with this configuration, handing sessions to `handler`.
    pub fn new(config: EngineConfig, handler: Arc<dyn EngineHandler>) -> Engine {
        Engine {
            shared: Arc::new(EngineShared {
                config,
                handler,
                registry: Registry::default(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Sessions open now, on either transport (probing WebSockets not counted).
    pub fn session_count(&self) -> usize {
        self.shared.registry.live()
    }

    /// Starts draining for a shutdown: from now on new handshakes are refused with 503 (a
    /// client retries, and a load balancer sends it to another node); open sessions go on until
    /// they are closed, for example with [`Engine::sessions`] and
    /// [`CloseReason::ServerShutdown`](super::CloseReason::ServerShutdown).
    pub fn begin_shutdown(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    /// Whether [`Engine::begin_shutdown`] was called.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// A handle on every open session (to close them, say).
    pub fn sessions(&self) -> Vec<SessionHandle> {
        self.shared.registry.handles()
    }

    /// Takes over a connection whose request asks for a WebSocket (actix-http's upgrade hook
    /// hands it over; see [`crate::server`]): checks it as the resource checks a request,
    /// answers `101`, and starts the connection's actor, which owns the stream from then on.
    /// A request that fails the checks gets the same HTTP error the resource gives, and the
    /// connection ends.
    pub async fn websocket<T: WsStream>(
        &self,
        req: actix_http::Request,
        mut framed: Framed<T, h1::Codec>,
    ) {
        use futures_util::SinkExt;
        if let Some((owner, elsewhere)) = self.owner_elsewhere(&req) {
            return splice(req, framed, &owner, elsewhere.as_ref()).await;
        }
        let (response, start) = match websocket_start(&self.shared, &req) {
            Ok(started) => started,
            Err(error) => return refuse_upgrade(framed, error.response()).await,
        };
        // If the client is gone already, the actor finds its socket closed and ends the
        // session the usual way.
        let _ = framed
            .send(h1::Message::Item((response, BodySize::None)))
            .await;
        let parts = framed.into_parts();
        let socket = WsSocket::new(parts.io, parts.read_buf);
        let shared = self.shared.clone();
        match start {
            WsStart::Open(core) => WsConnection::start_open(shared, socket, core),
            WsStart::Probe(polling) => WsConnection::start_probe(shared, socket, polling),
            WsStart::Reject => WsConnection::start_rejected(shared, socket),
        }
    }

    /// For an upgrade of a session another node holds (and that was not forwarded already):
    /// that node's address.
    fn owner_elsewhere(
        &self,
        req: &actix_http::Request,
    ) -> Option<(String, Arc<dyn super::Elsewhere>)> {
        let elsewhere = self.shared.config.elsewhere.as_ref()?;
        if req.headers().contains_key(super::FORWARDED) {
            return None;
        }
        let query = Query::parse(req.uri().query().unwrap_or(""));
        let sid = Sid::parse(query.sid?)?;
        if self.shared.registry.get(sid).is_some() {
            return None;
        }
        Some((elsewhere.owner_address(sid)?, elsewhere.clone()))
    }

    /// An actix-web resource serving the protocol at `path` (for example `/socket.io/`): the
    /// polling transport and the handshake. WebSocket requests do not reach it when the server
    /// is built with [`crate::server`], which hands them to [`Engine::websocket`]; one that does
    /// is refused (400).
    pub fn resource(&self, path: &str) -> Resource {
        let shared = self.shared.clone();
        web::resource(path).to(move |req: HttpRequest, body: web::Payload| {
            let shared = shared.clone();
            async move {
                let mut response = match dispatch(&shared, &req, body).await {
                    Ok(response) => response,
                    Err(error) => error.response(),
                };
                allow_cors(&shared.config, &req, &mut response);
                response
            }
        })
    }
}

/// A browser page on another allowed origin must see these headers to read polling answers.
/// Sent only when the request's `Origin` passed the origin policy.
fn allow_cors(config: &EngineConfig, req: &HttpRequest, response: &mut HttpResponse) {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return;
    };
    if response.status() == actix_web::http::StatusCode::SWITCHING_PROTOCOLS
        || !config.origins.allows(req.headers())
    {
        return;
    }
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
}

/// The query parameters Engine.IO reads. Values are taken as they are: the protocol's values
/// (`4`, `polling`, `websocket`, URL-safe sids) never need percent-decoding.
#[derive(Debug, Default)]
struct Query<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
}

impl<'a> Query<'a> {
    fn parse(query: &'a str) -> Query<'a> {
        let mut q = Query::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "EIO" => q.eio = Some(value),
                "transport" => q.transport = Some(value),
                "sid" => q.sid = Some(value),
                _ => {}
            }
        }
        q
    }
}

/// What the engine reads of a request: from actix-web's request on the polling path, from
/// actix-http's at an upgrade.
struct Incoming<'a> {
    headers: &'a HeaderMap,
    query: &'a str,
    peer: Option<SocketAddr>,
}

impl<'a> Incoming<'a> {
    fn of(req: &'a HttpRequest) -> Incoming<'a> {
        Incoming {
            headers: req.headers(),
            query: req.query_string(),
            peer: req.peer_addr(),
        }
    }
}

/// The checks every request passes, on either transport: the transport, the protocol
/// version, the origin, the sid's form.
fn check(
    config: &EngineConfig,
    incoming: &Incoming<'_>,
) -> Result<(TransportKind, Option<Sid>), EngineError> {
    let query = Query::parse(incoming.query);
    let transport = match query.transport {
        Some("polling") if config.transports.polling => TransportKind::Polling,
        Some("websocket") if config.transports.websocket => TransportKind::WebSocket,
        _ => return Err(EngineError::UnknownTransport),
    };
    if query.eio != Some("4") {
        return Err(EngineError::UnsupportedProtocolVersion);
    }
    if !config.origins.allows(incoming.headers) {
        return Err(EngineError::Forbidden);
    }
    let sid = match query.sid {
        None => None,
        Some(text) => Some(Sid::parse(text).ok_or(EngineError::UnknownSid)?),
    };
    Ok((transport, sid))
}

/// Parses a request into what it asks for, checks it, and hands it to the polling driver.
async fn dispatch(
    shared: &Arc<EngineShared>,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, EngineError> {
    let incoming = Incoming::of(req);
    let forwarded = req.headers().contains_key(super::FORWARDED);
    shared.config.observer.polling_request(forwarded);
    let (transport, sid) = check(&shared.config, &incoming)?;
    match (transport, sid) {
        // A WebSocket is taken over before the HTTP dispatch (`Engine::websocket`).
        (TransportKind::WebSocket, _) => Err(EngineError::BadRequest),
        (TransportKind::Polling, _) if req.method() == Method::OPTIONS => Ok(preflight()),
        (TransportKind::Polling, None) if req.method() == Method::GET => {
            polling_open(shared, &incoming)
        }
        (TransportKind::Polling, None) => Err(EngineError::BadHandshakeMethod),
        (TransportKind::Polling, Some(sid)) => {
            let Some(route) = shared.registry.get(sid) else {
                // Another node's session: its answer, when that node is known (a request
                // forwarded once is not forwarded again).
                if let (Some(elsewhere), false) = (&shared.config.elsewhere, forwarded) {
                    if let Some(answer) = elsewhere.forward(sid, req, body) {
                        return Ok(answer.await);
                    }
                }
                return Err(EngineError::UnknownSid);
            };
            // Once upgraded, the session is refused on polling.
            let Route::Polling(addr) = route else {
                return Err(EngineError::BadRequest);
            };
            match *req.method() {
                Method::GET => poll(addr).await,
                Method::POST => post(shared, req, addr, body).await,
                _ => Err(EngineError::BadRequest),
            }
        }
    }
}

fn preflight() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type"))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
        .finish()
}

fn handshake(incoming: &Incoming<'_>, transport: TransportKind, keep: &[HeaderName]) -> Handshake {
    // Only the headers the layer above reads, in a map sized to them: a session lives long,
    // and the request's own map is sized for parsing (a clone kept ~6.5 KiB per connection).
    let kept = || {
        incoming
            .headers
            .iter()
            .filter(|(name, _)| keep.contains(name))
    };
    let mut headers = HeaderMap::with_capacity(kept().count());
    for (name, value) in kept() {
        headers.append(name.clone(), value.clone());
    }
    Handshake {
        headers,
        peer: incoming.peer,
        query: incoming.query.to_owned(),
        transport,
    }
}

/// Opens a session: reserves a slot, creates the state machine, and asks the layer above for its
/// per-session handler.
fn open_session(
    shared: &Arc<EngineShared>,
    incoming: &Incoming<'_>,
    transport: TransportKind,
) -> Result<SessionCore, EngineError> {
    if shared.draining.load(Ordering::Acquire) {
        shared.config.observer.refused("shutting down");
        return Err(EngineError::ShuttingDown);
    }
    let sid = Sid::generate_tagged(shared.config.node_tag.as_deref());
    let outbox = Arc::new(Outbox::new(
        shared.config.outbound_queue,
        shared.config.outbound_bytes,
    ));
    // Who the client is matters only when sessions per client are capped.
    let client = (shared.config.max_sessions_per_client > 0)
        .then(|| (shared.config.client_of.0)(incoming.peer.map(|a| a.ip()), incoming.headers))
        .flatten();
    let slot = shared
        .registry
        .reserve(
            &shared.config,
            client,
            transport,
            SessionHandle::new(sid, outbox.clone()),
        )
        .inspect_err(|e| {
            shared.config.observer.refused(match e {
                EngineError::TooManyFromClient => "too many sessions from one client",
                _ => "too many sessions",
            })
        })?;
    let machine = Session::new(
        sid,
        &shared.config,
        transport,
        Instant::now(),
        outbox.clone(),
    );
    let handler = shared.handler.on_open(
        SessionHandle::new(sid, outbox),
        &handshake(incoming, transport, &shared.config.handshake_headers),
    );
    Ok(SessionCore {
        machine,
        handler,
        slot,
    })
}

fn polling_open(
    shared: &Arc<EngineShared>,
    incoming: &Incoming<'_>,
) -> Result<HttpResponse, EngineError> {
    let core = open_session(shared, incoming, TransportKind::Polling)?;
    let sid = core.machine.sid();
    // The handshake answer is the first poll: the open packet and whatever the layer above
    // queued on open.
    let frames = core
        .machine
        .outbox()
        .drain_payload(shared.config.max_payload);
    let addr = PollingSession::new(shared.clone(), core).start();
    shared.registry.insert(sid, Route::Polling(addr));
    Ok(payload_response(shared.polling_payload(&frames)))
}

pub(crate) fn payload_response(body: bytes::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=UTF-8")
        .body(body)
}

async fn poll(addr: Addr<PollingSession>) -> Result<HttpResponse, EngineError> {
    let (reply, answer) = oneshot::channel();
    addr.send(Poll { reply })
        .await
        .map_err(|_| EngineError::UnknownSid)?;
    match answer.await {
        Ok(PollReply::Payload(body)) => Ok(payload_response(body)),
        Ok(PollReply::Refused(error)) => Err(error),
        Err(_) => Err(EngineError::UnknownSid),
    }
}

async fn post(
    shared: &Arc<EngineShared>,
    req: &HttpRequest,
    addr: Addr<PollingSession>,
    mut body: web::Payload,
) -> Result<HttpResponse, EngineError> {
    let max = shared.config.max_payload;
    // Engine.IO v3's binary payload format is not v4; refuse it before reading anything.
    let content_type = req.headers().get(header::CONTENT_TYPE);
    if content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream")) {
        return Err(EngineError::BadRequest);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(EngineError::PayloadTooLarge);
    }
    let guard = addr
        .send(PostStart)
        .await
        .map_err(|_| EngineError::UnknownSid)??;
    let mut data = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| EngineError::BadRequest)?;
        if data.len() + chunk.len() > max {
            return Err(EngineError::PayloadTooLarge);
        }
        data.extend_from_slice(&chunk);
    }
    addr.send(PostData {
        body: data.freeze(),
        _guard: guard,
    })
    .await
    .map_err(|_| EngineError::UnknownSid)??;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=UTF-8")
        .body("ok"))
}

/// How a WebSocket that passed the checks starts. It lives for one call and moves into the
/// connection's actor, which holds the core inline (boxing it here would cost an allocation
/// per connection for nothing).
#[allow(clippy::large_enum_variant)]
enum WsStart {
    /// A new session, opened directly over WebSocket.
    Open(SessionCore),
    /// A probe for the upgrade of this polling session.
    Probe(Addr<PollingSession>),
    /// A second WebSocket for a session already on one: accepted, then closed at once.
    Reject,
}

/// Checks an upgrade request and prepares what it starts: the `101` to send and the
/// connection's mode. Nothing is sent yet, so a refusal is still an HTTP answer.
fn websocket_start(
    shared: &Arc<EngineShared>,
    req: &actix_http::Request,
) -> Result<(actix_http::Response<()>, WsStart), EngineError> {
    let incoming = Incoming {
        headers: req.headers(),
        query: req.uri().query().unwrap_or(""),
        peer: req.peer_addr(),
    };
    let (transport, sid) = check(&shared.config, &incoming)?;
    if transport != TransportKind::WebSocket {
        return Err(EngineError::BadRequest);
    }
    let route = match sid {
        Some(sid) => Some(shared.registry.get(sid).ok_or(EngineError::UnknownSid)?),
        None => None,
    };
    let response = actix_http::ws::handshake(req.head())
        .map_err(|_| EngineError::BadRequest)?
        .finish()
        .drop_body();
    let start = match route {
        None => WsStart::Open(open_session(shared, &incoming, TransportKind::WebSocket)?),
        Some(Route::Polling(polling)) => WsStart::Probe(polling),
        Some(Route::WebSocket(_)) => WsStart::Reject,
    };
    Ok((response, start))
}

/// Splices an upgrade for another node's session through to that node: the request goes
/// there as it came (marked forwarded), with whatever the client sent after it, and from then
/// on bytes flow both ways untouched until either side closes. An owner that cannot be
/// reached answers as a session that is gone.
async fn splice<T: WsStream>(
    req: actix_http::Request,
    framed: Framed<T, h1::Codec>,
    owner: &str,
    elsewhere: &dyn super::Elsewhere,
) {
    use tokio::io::AsyncWriteExt;
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(owner),
    )
    .await;
    let mut upstream = match connected {
        Ok(Ok(stream)) => stream,
        _ => {
            elsewhere.spliced(false);
            return refuse_upgrade(framed, EngineError::UnknownSid.response()).await;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(super::FORWARDED.as_bytes());
    head.extend_from_slice(b": 1\r\n\r\n");
    let parts = framed.into_parts();
    head.extend_from_slice(&parts.read_buf);
    if upstream.write_all(&head).await.is_err() {
        elsewhere.spliced(false);
        return;
    }
    elsewhere.spliced(true);
    let mut client = parts.io;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Writes an HTTP answer on a connection taken over for an upgrade, and ends it.
pub(crate) async fn refuse_upgrade<T: WsStream>(
    mut framed: Framed<T, h1::Codec>,
    response: HttpResponse,
) {
    use futures_util::SinkExt;
    let (mut head, body) = actix_http::Response::from(response).into_parts();
    let body = actix_http::body::to_bytes(body).await.unwrap_or_default();
    head.head_mut().set_connection_type(ConnectionType::Close);
    let size = BodySize::Sized(body.len() as u64);
    // A client that went away meanwhile needs no answer.
    if framed.send(h1::Message::Item((head, size))).await.is_ok() {
        let _ = framed.send(h1::Message::Chunk(Some(body))).await;
        let _ = framed.send(h1::Message::Chunk(None)).await;
    }
}
