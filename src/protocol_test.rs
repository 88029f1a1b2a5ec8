//! `voxio protocol-test`: endpoints for external conformance suites.
//!
//! Both endpoints use the timings the public test suites expect (pingInterval 300 ms,
//! pingTimeout 200 ms, maxPayload 1,000,000) and allow any Origin.
//!
//! - `/engine.io/` echoes every message, text or binary, back to its sender.
//! - `/socket.io/` serves namespaces `/` and `/custom` (connectTimeout 1,000 ms): on connection
//!   each emits `auth` with the CONNECT auth payload (`{}` when none); on `/`, `message` is
//!   answered by emitting `message-back` with the same arguments, and `message-with-ack` is
//!   acknowledged with the same arguments, binaries kept.
//!
//! voxio's own interop tests use a few more events on `/` and one more namespace:
//! `join` (room) joins a room; `to-room` (room, ...args) emits `room-message` with the args to
//! that room, sender included; `ask` (...args) emits `question` with the args and an ack
//! request, then emits `answer` with what the client acked; `server-disconnect` disconnects the
//! socket; `close-transport` closes the connection under it. `/refused` refuses every CONNECT
//! with message `refused` and data `{"reason":"test"}`. `/recovered` has connection state
//! recovery (a 2 s window): on connection it emits `welcome {id}` (not again on a recovery);
//! `later` (count, ms) emits `seq` 0..count after ms; `join` (room) acks the socket's room
//! count; `to-room` (room, ...args) emits `room-message` to the room.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::ServiceConfig;
use bytes::Bytes;
use bytestring::ByteString;

use crate::engineio::{
    CloseReason, Engine, EngineConfig, EngineHandler, Handshake, OriginPolicy, SessionHandle,
    SessionHandler,
};
use crate::socketio::{ConnectError, Payload, RecoveryConfig, Socket, SocketIo, SocketIoConfig};

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

/// The Socket.IO settings of the protocol test server.
pub fn socketio_config() -> SocketIoConfig {
    SocketIoConfig {
        connect_timeout: Duration::from_millis(1000),
        ..SocketIoConfig::default()
    }
}

/// The Socket.IO side of the protocol test server.
pub fn socketio(config: SocketIoConfig) -> SocketIo {
    let io = SocketIo::new(config);
    io.namespace("/", |ns| {
        ns.on_connect(emit_auth)
            .on("message", |socket, event| {
                let _ = socket.emit("message-back", event.data);
            })
            .on("message-with-ack", |_, event| {
                if let Some(ack) = event.ack {
                    let _ = ack.send(event.data);
                }
            })
            .on("join", |socket, event| {
                if let Ok(room) = event.data.get::<String>(0) {
                    socket.join(room);
                }
                if let Some(ack) = event.ack {
                    let _ = ack.send(Payload::new());
                }
            })
            .on("to-room", |socket, mut event| {
                let Ok(room) = event.data.get::<String>(0) else {
                    return;
                };
                event.data.args.remove(0);
                socket.ns().to(room).emit("room-message", event.data);
            })
            .on("ask", |socket, event| {
                let asked = socket.emit_with_ack("question", event.data, Duration::from_secs(2));
                let socket = socket.clone();
                actix_rt::spawn(async move {
                    let answer = match asked.await {
                        Ok(payload) => payload,
                        Err(error) => Payload::new().arg(error.to_string()),
                    };
                    let _ = socket.emit("answer", answer);
                });
            })
            .on("server-disconnect", |socket, _| socket.disconnect())
            .on("close-transport", |socket, _| socket.close_connection());
    });
    io.namespace("/custom", |ns| {
        ns.on_connect(emit_auth);
    });
    io.namespace("/recovered", |ns| {
        ns.recovery(RecoveryConfig {
            window: Duration::from_millis(2_000),
            ..RecoveryConfig::default()
        })
        .on_connect(|socket| {
            let _ = socket.emit("welcome", serde_json::json!({ "id": socket.id().as_str() }));
        })
        .on("later", |socket, event| {
            let (count, delay) = (
                event.data.get::<u64>(0).unwrap_or(1).min(1000),
                event.data.get::<u64>(1).unwrap_or(0).min(10_000),
            );
            let socket = socket.clone();
            actix_rt::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                for n in 0..count {
                    let _ = socket.emit("seq", n);
                }
            });
            if let Some(ack) = event.ack {
                let _ = ack.send(Payload::new());
            }
        })
        .on("join", |socket, event| {
            if let Ok(room) = event.data.get::<String>(0) {
                socket.join(room);
            }
            if let Some(ack) = event.ack {
                let _ = ack.send(Payload::new().arg(socket.rooms().len()));
            }
        })
        .on("to-room", |socket, mut event| {
            if let Ok(room) = event.data.get::<String>(0) {
                event.data.args.remove(0);
                socket.ns().to(room).emit("room-message", event.data);
            }
        });
    });
    io.namespace("/refused", |ns| {
        ns.middleware(|_| {
            Err(ConnectError::new("refused").with_data(serde_json::json!({ "reason": "test" })))
        });
    });
    io
}

/// Emits `auth` with the socket's CONNECT auth payload (`{}` when none).
fn emit_auth(socket: &Socket) {
    let auth = socket
        .auth()
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let _ = socket.emit("auth", auth);
}

/// The protocol test server's two engines: `/engine.io/` (echo) and `/socket.io/`.
pub struct ProtocolTest {
    /// The echo endpoint.
    pub echo: Engine,
    /// The Socket.IO endpoint.
    pub socketio: Engine,
}

impl ProtocolTest {
    /// Both endpoints with the test suites' settings.
    pub fn new() -> ProtocolTest {
        ProtocolTest::with_config(engine_config(), socketio_config())
    }

    /// Both endpoints with other settings (voxio's own tests tune timings and limits).
    pub fn with_config(engine: EngineConfig, sio: SocketIoConfig) -> ProtocolTest {
        ProtocolTest {
            echo: echo_engine(engine.clone()),
            socketio: Engine::new(engine, socketio(sio).engine_handler()),
        }
    }

    /// Where their WebSockets go (see [`crate::server`]).
    pub fn upgrades(&self) -> crate::server::Upgrades {
        crate::server::Upgrades::default()
            .route("/engine.io/", self.echo.clone())
            .route("/socket.io/", self.socketio.clone())
    }

    /// Mounts both endpoints on an app.
    pub fn configure(&self) -> impl FnOnce(&mut ServiceConfig) + '_ {
        move |cfg| {
            cfg.service(self.echo.resource("/engine.io/"))
                .service(self.socketio.resource("/socket.io/"));
        }
    }
}

impl Default for ProtocolTest {
    fn default() -> Self {
        ProtocolTest::new()
    }
}
