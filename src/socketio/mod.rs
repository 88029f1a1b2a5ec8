//! Socket.IO v5 on top of the Engine.IO core.
//!
//! - [`packet`]: the parser and encoder (strict, panic-free, binary attachments);
//! - [`SocketIo`]: the server, an [`EngineHandler`](crate::engineio::EngineHandler) that keeps
//!   namespaces, each with connect middleware, event handlers, rooms and broadcast;
//! - [`Socket`]: one client in one namespace: emit (reliable or volatile, with or without an
//!   ack), join and leave rooms, disconnect, per-socket state.
//!
//! Handlers run on the actor that owns the connection, in the order packets arrived, and must
//! not block: anything slow goes to another actor or task.
//!
//! ```no_run
//! use voxio::socketio::{Payload, SocketIo, SocketIoConfig};
//! let io = SocketIo::new(SocketIoConfig::default());
//! io.namespace("/", |ns| {
//!     ns.on("ping", |socket, event| {
//!         if let Some(ack) = event.ack {
//!             ack.send(Payload::from("pong"));
//!         }
//!         let _ = socket.emit("seen", event.data);
//!     });
//! });
//! ```

pub mod adapter;
mod namespace;
pub mod packet;
pub mod recovery;
mod session;
mod socket;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use adapter::{Adapter, Broadcast, Operation, Target};
pub use namespace::{BroadcastOperator, ConnectError, ConnectRequest, Namespace, NamespaceBuilder};
pub use packet::Payload;
pub use recovery::{RecoveryConfig, RecoveryStore, Restored, SocketRecord};
pub use socket::{AckError, AckSender, DisconnectReason, EmitError, Event, Extensions, Socket};

use crate::engineio::{EngineHandler, Handshake, SessionHandle, SessionHandler};

/// Socket.IO server settings, each with its documented default.
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// How long a connection may go without joining a namespace before it is closed.
    /// Default 45 s.
    pub connect_timeout: Duration,
    /// Most binary attachments one packet may announce. Default 10.
    pub max_attachments: usize,
    /// Most bytes of attachments one packet may carry in total. Default 1,000,000.
    pub max_attachment_bytes: usize,
    /// How long the attachments of one packet may take to arrive. Default 10 s.
    pub attachment_timeout: Duration,
    /// Most server-to-client acks one socket may await at once; beyond it `emit_with_ack`
    /// fails at once. Default 256.
    pub max_pending_acks: usize,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            connect_timeout: Duration::from_secs(45),
            max_attachments: 10,
            max_attachment_bytes: 1_000_000,
            attachment_timeout: Duration::from_secs(10),
            max_pending_acks: 256,
        }
    }
}

/// A Socket.IO server. Cheap to clone; give [`SocketIo::engine_handler`] to an
/// [`Engine`](crate::engineio::Engine).
#[derive(Clone)]
pub struct SocketIo {
    inner: Arc<IoInner>,
}

pub(crate) struct IoInner {
    pub(crate) config: SocketIoConfig,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    adapter: namespace::AdapterSlot,
    store: namespace::StoreSlot,
}

impl SocketIo {
    /// A server with no namespaces yet.
    pub fn new(config: SocketIoConfig) -> SocketIo {
        SocketIo {
            inner: Arc::new(IoInner {
                config,
                namespaces: RwLock::new(HashMap::new()),
                adapter: Arc::default(),
                store: Arc::default(),
            }),
        }
    }

    /// Declares namespace `name` (replacing one of that name): `build` sets its middleware and
    /// handlers.
    pub fn namespace(
        &self,
        name: &str,
        build: impl FnOnce(&mut NamespaceBuilder),
    ) -> Arc<Namespace> {
        let mut builder = NamespaceBuilder::new(name);
        build(&mut builder);
        let ns = builder.finish(self.inner.adapter.clone(), self.inner.store.clone());
        self.inner
            .namespaces
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ns.name().to_owned(), ns.clone());
        ns
    }

    /// The namespace called `name`, if declared.
    pub fn of(&self, name: &str) -> Option<Arc<Namespace>> {
        self.inner.namespace(name)
    }

    /// Carries this server's broadcasts to other nodes from now on.
    pub fn set_adapter(&self, adapter: Arc<dyn Adapter>) {
        *self
            .inner
            .adapter
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(adapter);
    }

    /// Keeps the recoverable sockets of this server's namespaces in `store` from now on, so
    /// that their clients recover on another node (or after a restart). Starts the task
    /// that tells the store which sockets are still alive, every third of the shortest
    /// window (on the current actix/tokio runtime).
    pub fn set_recovery_store(&self, store: Arc<dyn RecoveryStore>) {
        *self.inner.store.write().unwrap_or_else(|e| e.into_inner()) = Some(store.clone());
        let inner = Arc::downgrade(&self.inner);
        actix_rt::spawn(async move {
            loop {
                let Some(io) = inner.upgrade() else { return };
                let namespaces: Vec<Arc<Namespace>> = io
                    .namespaces
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .filter(|ns| ns.recovery().is_some())
                    .cloned()
                    .collect();
                drop(io);
                let every = namespaces
                    .iter()
                    .filter_map(|ns| ns.recovery().map(|c| c.window / 3))
                    .min()
                    .unwrap_or(Duration::from_secs(10))
                    .max(Duration::from_millis(100));
                let pids: Vec<_> = namespaces.iter().flat_map(|ns| ns.pids()).collect();
                if !pids.is_empty() {
                    store.touch(pids);
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Applies a broadcast that another node published, to this node's sockets only. Returns
    /// how many sockets it reached (0 for a namespace not declared here).
    pub fn apply_remote(&self, broadcast: Broadcast) -> usize {
        let Some(ns) = self.of(&broadcast.target.nsp) else {
            return 0;
        };
        if let Operation::Release { pid } = broadcast.op {
            return match ns.by_pid(pid) {
                Some(socket) => {
                    socket.hand_over();
                    1
                }
                None => 0,
            };
        }
        let mut op = BroadcastOperator::new(ns).local();
        for room in broadcast.target.rooms {
            op = op.to(room);
        }
        for id in broadcast.target.except {
            op = op.except(id);
        }
        match broadcast.op {
            Operation::Emit {
                event,
                payload,
                volatile,
            } => {
                if volatile {
                    op = op.volatile();
                }
                op.emit(&event, payload)
            }
            Operation::Disconnect => op.disconnect_sockets(),
            Operation::Release { .. } => 0,
        }
    }

    /// The Engine.IO side of this server.
    pub fn engine_handler(&self) -> Arc<dyn EngineHandler> {
        Arc::new(self.clone())
    }

    /// The configuration in force.
    pub fn config(&self) -> &SocketIoConfig {
        &self.inner.config
    }
}

impl IoInner {
    pub(crate) fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

impl EngineHandler for SocketIo {
    fn on_open(&self, session: SessionHandle, handshake: &Handshake) -> Box<dyn SessionHandler> {
        Box::new(session::SioSession::new(
            self.inner.clone(),
            session,
            Arc::new(handshake.clone()),
        ))
    }
}

/// The most bytes of a client's own name (a namespace, an event) echoed back to it.
pub const MAX_ECHOED_NAME: usize = 128;

/// `name` cut to at most `max` bytes, on a character boundary.
pub fn truncated(name: &str, max: usize) -> &str {
    if name.len() <= max {
        return name;
    }
    let mut end = max;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

#[cfg(test)]
mod truncation_tests {
    use super::truncated;

    #[test]
    fn names_are_cut_on_character_boundaries() {
        assert_eq!(truncated("/voice", 128), "/voice");
        assert_eq!(truncated("abcdef", 3), "abc");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(truncated("aé", 2), "a");
        assert_eq!(truncated("", 0), "");
    }
}
