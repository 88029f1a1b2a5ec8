//! The Engine.IO HTTP entry point: parses a request, checks it, and hands it to the session's
//! actor (or opens a session, or starts a WebSocket connection).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, Addr};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, Resource};
use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::frame_guard::Guarded;
use super::outbox::{Outbox, SessionHandle};
use super::polling::{Poll, PollReply, PollingSession, PostData, PostStart};
use super::session::Session;
use super::shared::{EngineShared, Registry, Route, SessionCore};
use super::sid::Sid;
use super::websocket::WsConnection;
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

    /// An actix-web resource serving the protocol at `path` (for example `/socket.io/`).
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

/// Parses a request into what it asks for, checks it, and hands it to the right driver.
async fn dispatch(
    shared: &Arc<EngineShared>,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, EngineError> {
    let config = &shared.config;
    let query = Query::parse(req.query_string());
    let transport = match query.transport {
        Some("polling") if config.transports.polling => TransportKind::Polling,
        Some("websocket") if config.transports.websocket => TransportKind::WebSocket,
        _ => return Err(EngineError::UnknownTransport),
    };
    if query.eio != Some("4") {
        return Err(EngineError::UnsupportedProtocolVersion);
    }
    if !config.origins.allows(req.headers()) {
        return Err(EngineError::Forbidden);
    }
    let sid = match query.sid {
        None => None,
        Some(text) => Some(Sid::parse(text).ok_or(EngineError::UnknownSid)?),
    };
    let wants_websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));

    match (transport, sid) {
        (TransportKind::WebSocket, _) if !wants_websocket => Err(EngineError::BadRequest),
        (TransportKind::WebSocket, None) => websocket_open(shared, req, body),
        (TransportKind::WebSocket, Some(sid)) => websocket_upgrade(shared, req, body, sid),
        (TransportKind::Polling, _) if req.method() == Method::OPTIONS => Ok(preflight()),
        (TransportKind::Polling, None) if req.method() == Method::GET => polling_open(shared, req),
        (TransportKind::Polling, None) => Err(EngineError::BadHandshakeMethod),
        (TransportKind::Polling, Some(sid)) => {
            let Some(route) = shared.registry.get(sid) else {
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

fn handshake(req: &HttpRequest, transport: TransportKind, keep: &[HeaderName]) -> Handshake {
    // Only the headers the layer above reads, in a map sized to them: a session lives long,
    // and the request's own map is sized for parsing (a clone kept ~6.5 KiB per connection).
    let kept = || req.headers().iter().filter(|(name, _)| keep.contains(name));
    let mut headers = actix_web::http::header::HeaderMap::with_capacity(kept().count());
    for (name, value) in kept() {
        headers.append(name.clone(), value.clone());
    }
    Handshake {
        headers,
        peer: req.peer_addr(),
        query: req.query_string().to_owned(),
        transport,
    }
}

/// Opens a session: reserves a slot, creates the state machine, and asks the layer above for its
/// per-session handler.
fn open_session(
    shared: &Arc<EngineShared>,
    req: &HttpRequest,
    transport: TransportKind,
) -> Result<SessionCore, EngineError> {
    if shared.draining.load(Ordering::Acquire) {
        shared.config.observer.refused("shutting down");
        return Err(EngineError::ShuttingDown);
    }
    let sid = Sid::generate();
    let outbox = Arc::new(Outbox::new(
        shared.config.outbound_queue,
        shared.config.outbound_bytes,
    ));
    // Who the client is matters only when sessions per client are capped.
    let client = (shared.config.max_sessions_per_client > 0)
        .then(|| (shared.config.client_of.0)(req.peer_addr().map(|a| a.ip()), req.headers()))
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
        &handshake(req, transport, &shared.config.handshake_headers),
    );
    Ok(SessionCore {
        machine,
        handler,
        slot,
    })
}

fn polling_open(
    shared: &Arc<EngineShared>,
    req: &HttpRequest,
) -> Result<HttpResponse, EngineError> {
    let core = open_session(shared, req, TransportKind::Polling)?;
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

/// The WebSocket handshake, on a payload whose frames are refused as soon as a header declares
/// more than `max_payload` (actix-ws would buffer such a frame whole first).
fn websocket_handshake(
    shared: &Arc<EngineShared>,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<(HttpResponse, actix_ws::Session, actix_ws::MessageStream), EngineError> {
    use actix_web::FromRequest;
    use futures_util::FutureExt;
    type Boxed = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, actix_web::error::PayloadError>>>,
    >;
    let guarded: Boxed = Box::pin(Guarded::new(body.into_inner(), shared.config.max_payload));
    let mut payload = actix_web::dev::Payload::from(guarded);
    let body = web::Payload::from_request(req, &mut payload)
        .now_or_never()
        .and_then(Result::ok)
        .ok_or(EngineError::BadRequest)?;
    actix_ws::handle(req, body).map_err(|_| EngineError::BadRequest)
}

fn websocket_open(
    shared: &Arc<EngineShared>,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, EngineError> {
    let (response, ws, stream) = websocket_handshake(shared, req, body)?;
    let core = open_session(shared, req, TransportKind::WebSocket)?;
    WsConnection::start_open(shared.clone(), ws, stream, core);
    Ok(response)
}

fn websocket_upgrade(
    shared: &Arc<EngineShared>,
    req: &HttpRequest,
    body: web::Payload,
    sid: Sid,
) -> Result<HttpResponse, EngineError> {
    let route = shared.registry.get(sid).ok_or(EngineError::UnknownSid)?;
    let (response, ws, stream) = websocket_handshake(shared, req, body)?;
    match route {
        Route::Polling(polling) => WsConnection::start_probe(shared.clone(), ws, stream, polling),
        // A second WebSocket for a session already on one: accepted, then closed at once.
        Route::WebSocket(_) => WsConnection::start_rejected(shared.clone(), ws, stream),
    }
    Ok(response)
}
