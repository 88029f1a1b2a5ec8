//! Engine.IO v4, server side, on actix.
//!
//! Layers, bottom up:
//! - [`packet`]: packets and the polling payload codec (pure functions);
//! - [`session`]: the session as a sans-I/O state machine, driven with an injectable clock;
//! - [`outbox`]: the bounded per-session outbound queue and the [`SessionHandle`] the layer
//!   above sends through;
//! - `shared`: what both drivers use: the engine's shared state, the registry from sid to the
//!   actor that owns the session, the counted session slot, the session's core (state machine
//!   and handler, which moves at an upgrade) and the heartbeat timer;
//! - the drivers: a polling session actor (`polling`, reachable from every worker through the
//!   registry) and a WebSocket connection actor (`websocket`, on the worker that accepted the
//!   socket, owning the socket's two halves: it reads frames and writes its own buffer, with no
//!   channel in between; after an upgrade the session's state moves into it, so frames are
//!   handled without a thread hop). Neither imports the HTTP dispatch; the polling actor does not know the
//!   WebSocket actor's type;
//! - `upgrade`: the handshake between the two drivers, as messages;
//! - [`Engine`] (`dispatch`): the HTTP entry point that parses a request and dispatches it, and
//!   takes over the connection of a WebSocket request ([`Engine::websocket`], reached through
//!   actix-http's upgrade hook: [`crate::server`]).
//!
//! The layer above (Socket.IO, or the echo server of `voxio protocol-test`) plugs in through
//! [`EngineHandler`] and [`SessionHandler`]; the application's metrics through an
//! [`EngineObserver`] (`EngineConfig::observer`), so the engine depends on nothing above it.

mod config;
mod dispatch;
mod error;
mod frame_guard;
mod observer;
pub mod outbox;
pub mod packet;
mod polling;
pub mod session;
mod shared;
pub mod sid;
mod upgrade;
mod websocket;

use std::fmt;
use std::net::SocketAddr;

use actix_web::http::header::HeaderMap;
use bytes::Bytes;
use bytestring::ByteString;

pub use config::{ClientOf, Elsewhere, EngineConfig, OriginPolicy, Transports, FORWARDED};
pub(crate) use dispatch::refuse_upgrade;
pub use dispatch::Engine;
pub use error::EngineError;
pub use observer::{EngineObserver, Observer, Unobserved};
pub use outbox::{MessageFrame, SendError, SessionHandle};
pub use sid::Sid;
pub use websocket::{ReadHalf, WriteHalf, WsStream};

/// The transport a session is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// HTTP long-polling.
    Polling,
    /// WebSocket.
    WebSocket,
}

impl TransportKind {
    /// The name used in the `transport` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Polling => "polling",
            TransportKind::WebSocket => "websocket",
        }
    }
}

/// Why a session closed, in the protocol's own words (see [`CloseReason::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client sent a close packet, or its connection went away.
    TransportClose,
    /// The transport broke a rule: overlapping polls, a bad or oversized WebSocket frame, a
    /// heartbeat in the wrong direction.
    TransportError,
    /// No pong came within `ping_timeout` of a ping.
    PingTimeout,
    /// Bytes that do not decode as Engine.IO packets.
    ParseError,
    /// The server closed the session ([`SessionHandle::close`]).
    ServerClose,
    /// The client did not take its packets fast enough and the outbound queue filled up.
    OutboundOverflow,
    /// The server is shutting down.
    ServerShutdown,
}

impl CloseReason {
    /// The reason as the reference implementation names it.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError => "transport error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ParseError => "parse error",
            CloseReason::ServerClose => "forced close",
            CloseReason::OutboundOverflow => "outbound queue full",
            CloseReason::ServerShutdown => "server shutting down",
        }
    }
}

impl CloseReason {
    /// Whether the server chose to close: the client is presumably still there and should get
    /// what was queued for it, then a close packet.
    pub fn is_server_side(self) -> bool {
        matches!(
            self,
            CloseReason::ServerClose | CloseReason::OutboundOverflow | CloseReason::ServerShutdown
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the layer above learns about the request that opened a session.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The request headers the engine keeps (`EngineConfig::handshake_headers`).
    pub headers: HeaderMap,
    /// The peer's address as the socket saw it.
    pub peer: Option<SocketAddr>,
    /// The raw query string of the handshake request.
    pub query: String,
    /// The transport the session opened on.
    pub transport: TransportKind,
}

/// The layer above, as the Engine.IO server sees it: one per server, shared by all sessions.
pub trait EngineHandler: Send + Sync + 'static {
    /// A session opened. Returns the per-session state that receives its messages; `session` is
    /// how to send to it, from any thread.
    fn on_open(&self, session: SessionHandle, handshake: &Handshake) -> Box<dyn SessionHandler>;
}

/// The layer above's per-session state. Its methods run on the actor that currently owns the
/// session (so never two at once, and never across an await); they must not block.
pub trait SessionHandler: Send + 'static {
    /// A text message arrived.
    fn on_message(&mut self, text: ByteString);
    /// A binary message arrived.
    fn on_binary(&mut self, data: Bytes);
    /// The session moved from polling onto a WebSocket; from now on the methods run on that
    /// WebSocket's worker thread (a place to move per-session actors next to it).
    fn on_upgrade(&mut self) {}
    /// The session closed; the last call.
    fn on_close(&mut self, reason: CloseReason);
}
