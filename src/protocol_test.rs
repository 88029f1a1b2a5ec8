//! `voxio protocol-test`: endpoints for external conformance suites.
//!
//! `/engine.io/` echoes every message, text or binary, back to its sender, with the timings the
//! public Engine.IO test suite expects (pingInterval 300 ms, pingTimeout 200 ms, maxPayload
//! 1,000,000) and any Origin allowed.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::ServiceConfig;
use bytes::Bytes;
use bytestring::ByteString;

use crate::engineio::{
    CloseReason, Engine, EngineConfig, EngineHandler, Handshake, OriginPolicy, SessionHandle,
    SessionHandler,
};

/// The Engine.IO settings of the protocol test server.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        origins: OriginPolicy::Any,
        ..EngineConfig::default()
    }
}

/// Echoes every message back to the session it came from.
pub struct Echo;

struct EchoSession(SessionHandle);

impl EngineHandler for Echo {
    fn on_open(&self, session: SessionHandle, _: &Handshake) -> Box<dyn SessionHandler> {
        Box::new(EchoSession(session))
    }
}

impl SessionHandler for EchoSession {
    fn on_message(&mut self, text: ByteString) {
        // A full queue closes the session by the outbox's policy; nothing else to do here.
        let _ = self.0.send_text(&text);
    }

    fn on_binary(&mut self, data: Bytes) {
        let _ = self.0.send_binary(data);
    }

    fn on_close(&mut self, _: CloseReason) {}
}

/// The echo engine with `config`.
pub fn echo_engine(config: EngineConfig) -> Engine {
    Engine::new(config, Arc::new(Echo))
}

/// Mounts the protocol test endpoints on an app.
pub fn configure(engine: &Engine) -> impl FnOnce(&mut ServiceConfig) + '_ {
    move |cfg| {
        cfg.service(engine.resource("/engine.io/"));
    }
}
