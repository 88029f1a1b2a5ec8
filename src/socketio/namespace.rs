//! Namespaces: connect middleware, event handlers, and the rooms of their sockets.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::adapter::{Adapter, Broadcast, Operation, Target};
use super::packet::Payload;
use super::recovery::{RecoveryConfig, RecoveryStore};
use super::socket::{encode_event, DisconnectReason, Event, Extensions, Socket};
use crate::engineio::{Handshake, Sid};

/// What connect middleware sees of a client joining a namespace.
pub struct ConnectRequest {
    /// The namespace being joined.
    pub nsp: String,
    /// The CONNECT packet's auth payload, if any.
    pub auth: Option<Value>,
    /// The request that opened the connection (headers, peer address).
    pub handshake: Arc<Handshake>,
    /// State to hand to the socket if it is let in (for example who authenticated).
    pub extensions: Extensions,
}

/// A refusal: sent to the client as CONNECT_ERROR `{"message", "data"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectError {
    /// Shown to the client as the error's message.
    pub message: String,
    /// Extra detail for the client (for example how long to wait).
    pub data: Option<Value>,
}

impl ConnectError {
    /// A refusal with a message and no data.
    pub fn new(message: impl Into<String>) -> ConnectError {
        ConnectError {
            message: message.into(),
            data: None,
        }
    }

    /// Adds data for the client.
    pub fn with_data(mut self, data: Value) -> ConnectError {
        self.data = Some(data);
        self
    }

    pub(crate) fn to_json(&self) -> Value {
        match &self.data {
            Some(data) => serde_json::json!({ "message": self.message, "data": data }),
            None => serde_json::json!({ "message": self.message }),
        }
    }
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
pub(crate) type Middleware =
    Arc<dyn Fn(Arc<ConnectRequest>) -> BoxFuture<Result<(), ConnectError>> + Send + Sync>;
type EventHandler = Arc<dyn Fn(&Socket, Event) + Send + Sync>;
type ConnectHandler = Arc<dyn Fn(&Socket) + Send + Sync>;
type DisconnectHandler = Arc<dyn Fn(&Socket, DisconnectReason) + Send + Sync>;
/// The server's adapter, shared by its namespaces (set after they are declared).
pub(crate) type AdapterSlot = Arc<RwLock<Option<Arc<dyn Adapter>>>>;
/// The server's recovery store, shared by its namespaces (set after they are declared).
pub(crate) type StoreSlot = Arc<RwLock<Option<Arc<dyn RecoveryStore>>>>;

/// Declares a namespace's middleware and handlers; see [`super::SocketIo::namespace`].
pub struct NamespaceBuilder {
    name: String,
    middleware: Vec<Middleware>,
    on_connect: Option<ConnectHandler>,
    handlers: HashMap<String, EventHandler>,
    fallback: Option<EventHandler>,
    on_disconnect: Option<DisconnectHandler>,
    recovery: Option<RecoveryConfig>,
}

impl NamespaceBuilder {
    pub(crate) fn new(name: &str) -> NamespaceBuilder {
        NamespaceBuilder {
            name: name.to_owned(),
            middleware: Vec::new(),
            on_connect: None,
            handlers: HashMap::new(),
            fallback: None,
            on_disconnect: None,
            recovery: None,
        }
    }

    /// Turns on connection state recovery (see [`super::recovery`]): a client whose
    /// connection drops gets its socket back, with what it missed, within `config.window`.
    /// Events then carry an offset as their last argument, as the official client expects.
    pub fn recovery(&mut self, config: RecoveryConfig) -> &mut Self {
        self.recovery = Some(config);
        self
    }

    /// Connect middleware that decides at once. Runs in declaration order with the others;
    /// the first refusal is sent to the client.
    pub fn middleware(
        &mut self,
        check: impl Fn(&ConnectRequest) -> Result<(), ConnectError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.middleware
            .push(Arc::new(move |req: Arc<ConnectRequest>| {
                let result = check(&req);
                Box::pin(async move { result })
            }));
        self
    }

    /// Connect middleware that needs to wait (a store, a rate limiter). Runs on the
    /// connection's worker; the socket joins once every middleware agreed.
    pub fn middleware_async<F>(
        &mut self,
        check: impl Fn(Arc<ConnectRequest>) -> F + Send + Sync + 'static,
    ) -> &mut Self
    where
        F: Future<Output = Result<(), ConnectError>> + Send + 'static,
    {
        self.middleware
            .push(Arc::new(move |req| Box::pin(check(req))));
        self
    }

    /// Runs when a socket has joined.
    pub fn on_connect(&mut self, f: impl Fn(&Socket) + Send + Sync + 'static) -> &mut Self {
        self.on_connect = Some(Arc::new(f));
        self
    }

    /// Handles the event `name`.
    pub fn on(
        &mut self,
        name: &str,
        f: impl Fn(&Socket, Event) + Send + Sync + 'static,
    ) -> &mut Self {
        self.handlers.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// Handles every event that has no handler of its own.
    pub fn on_fallback(&mut self, f: impl Fn(&Socket, Event) + Send + Sync + 'static) -> &mut Self {
        self.fallback = Some(Arc::new(f));
        self
    }

    /// Runs when a socket leaves, for whatever reason.
    pub fn on_disconnect(
        &mut self,
        f: impl Fn(&Socket, DisconnectReason) + Send + Sync + 'static,
    ) -> &mut Self {
        self.on_disconnect = Some(Arc::new(f));
        self
    }

    pub(crate) fn finish(self, adapter: AdapterSlot, store: StoreSlot) -> Arc<Namespace> {
        Arc::new(Namespace {
            adapter,
            store,
            name: self.name,
            middleware: self.middleware,
            on_connect: self.on_connect,
            handlers: self.handlers,
            fallback: self.fallback,
            on_disconnect: self.on_disconnect,
            recovery: self.recovery,
            waiting: AtomicUsize::new(0),
            rooms: RwLock::new(Rooms::default()),
        })
    }
}

/// Which sockets are in which rooms. Every socket is in the room named by its own id.
#[derive(Default)]
struct Rooms {
    sockets: HashMap<Sid, Socket>,
    /// Sockets by private id (recovery only).
    by_pid: HashMap<Sid, Socket>,
    members: HashMap<String, HashSet<Sid>>,
    joined: HashMap<Sid, HashSet<String>>,
}

/// A namespace: its handlers and its connected sockets.
pub struct Namespace {
    name: String,
    pub(crate) middleware: Vec<Middleware>,
    on_connect: Option<ConnectHandler>,
    handlers: HashMap<String, EventHandler>,
    fallback: Option<EventHandler>,
    on_disconnect: Option<DisconnectHandler>,
    recovery: Option<RecoveryConfig>,
    /// Sockets waiting for their client to come back.
    waiting: AtomicUsize,
    rooms: RwLock<Rooms>,
    adapter: AdapterSlot,
    store: StoreSlot,
}

impl Namespace {
    /// The namespace's name (`/`, `/voice`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sockets connected to this namespace now.
    pub fn socket_count(&self) -> usize {
        self.read().sockets.len()
    }

    /// The connected socket with this id.
    pub fn socket(&self, id: Sid) -> Option<Socket> {
        self.read().sockets.get(&id).cloned()
    }

    /// The recovery settings, when the namespace has recovery.
    pub fn recovery(&self) -> Option<&RecoveryConfig> {
        self.recovery.as_ref()
    }

    /// Sockets waiting for their client to come back.
    pub fn waiting_count(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Where recoverable sockets are kept for other nodes, when the namespace has recovery
    /// and the server a store.
    pub(crate) fn store(&self) -> Option<Arc<dyn RecoveryStore>> {
        self.recovery.as_ref()?;
        self.store.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The private ids of this node's recoverable sockets.
    pub(crate) fn pids(&self) -> Vec<Sid> {
        self.read().by_pid.keys().copied().collect()
    }

    /// Tells the other nodes that the socket `pid` now lives here.
    pub(crate) fn claim(&self, pid: Sid) {
        if let Some(adapter) = self.adapter() {
            adapter.publish(Broadcast {
                target: Target {
                    nsp: self.name.clone(),
                    rooms: Vec::new(),
                    except: Vec::new(),
                },
                op: Operation::Release { pid },
            });
        }
    }

    /// The socket with this private id.
    pub(crate) fn by_pid(&self, pid: Sid) -> Option<Socket> {
        self.read().by_pid.get(&pid).cloned()
    }

    /// Counts one more waiting socket, unless the bound is reached.
    pub(crate) fn start_waiting(&self, config: &RecoveryConfig) -> bool {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < config.max_waiting).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn stop_waiting(&self) {
        let _ = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Emits to the sockets in `room`.
    pub fn to(self: &Arc<Self>, room: impl Into<String>) -> BroadcastOperator {
        BroadcastOperator::new(self.clone()).to(room)
    }

    /// Emits to every socket of the namespace.
    pub fn broadcast(self: &Arc<Self>) -> BroadcastOperator {
        BroadcastOperator::new(self.clone())
    }

    fn adapter(&self) -> Option<Arc<dyn Adapter>> {
        self.adapter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Rooms> {
        self.rooms.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Rooms> {
        self.rooms.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add(&self, socket: &Socket) {
        let id = socket.id();
        let mut rooms = self.write();
        rooms.sockets.insert(id, socket.clone());
        if let Some(pid) = socket.pid() {
            rooms.by_pid.insert(pid, socket.clone());
        }
        rooms.members.entry(id.to_string()).or_default().insert(id);
        rooms.joined.entry(id).or_default().insert(id.to_string());
    }

    pub(crate) fn remove(&self, socket: &Socket) {
        let id = socket.id();
        let mut rooms = self.write();
        rooms.sockets.remove(&id);
        if let Some(pid) = socket.pid() {
            rooms.by_pid.remove(&pid);
        }
        for room in rooms.joined.remove(&id).unwrap_or_default() {
            if let Some(members) = rooms.members.get_mut(&room) {
                members.remove(&id);
                if members.is_empty() {
                    rooms.members.remove(&room);
                }
            }
        }
    }

    pub(crate) fn join(&self, id: Sid, room: String) {
        let mut rooms = self.write();
        if !rooms.sockets.contains_key(&id) {
            return;
        }
        rooms.members.entry(room.clone()).or_default().insert(id);
        rooms.joined.entry(id).or_default().insert(room);
    }

    pub(crate) fn leave(&self, id: Sid, room: &str) {
        let mut rooms = self.write();
        if let Some(joined) = rooms.joined.get_mut(&id) {
            joined.remove(room);
        }
        if let Some(members) = rooms.members.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                rooms.members.remove(room);
            }
        }
    }

    pub(crate) fn rooms_of(&self, id: Sid) -> Vec<String> {
        self.read()
            .joined
            .get(&id)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn connected(&self, socket: &Socket) {
        if let Some(f) = &self.on_connect {
            f(socket);
        }
    }

    pub(crate) fn dispatch(&self, socket: &Socket, event: Event) {
        match self
            .handlers
            .get(event.name.as_str())
            .or(self.fallback.as_ref())
        {
            Some(handler) => handler(socket, event),
            None => tracing::debug!(nsp = %self.name, event = %event.name, "no handler"),
        }
    }

    pub(crate) fn disconnected(&self, socket: &Socket, reason: DisconnectReason) {
        if let Some(f) = &self.on_disconnect {
            f(socket, reason);
        }
    }

    /// The sockets a broadcast reaches, chosen under the lock, sent to after it.
    fn targets(&self, rooms: &[String], except: &[Sid]) -> Vec<Socket> {
        let state = self.read();
        let skip = |id: &Sid| except.contains(id);
        if rooms.is_empty() {
            return state
                .sockets
                .iter()
                .filter(|(id, _)| !skip(id))
                .map(|(_, s)| s.clone())
                .collect();
        }
        let mut ids = HashSet::new();
        for room in rooms {
            if let Some(members) = state.members.get(room) {
                ids.extend(members.iter().copied().filter(|id| !skip(id)));
            }
        }
        ids.iter()
            .filter_map(|id| state.sockets.get(id).cloned())
            .collect()
    }
}

/// Emits one packet to many sockets (encoded once, shared by all), on this node and, through
/// the server's adapter, on every other node.
pub struct BroadcastOperator {
    ns: Arc<Namespace>,
    rooms: Vec<String>,
    except: Vec<Sid>,
    volatile: bool,
    local: bool,
}

impl BroadcastOperator {
    pub(crate) fn new(ns: Arc<Namespace>) -> BroadcastOperator {
        BroadcastOperator {
            ns,
            rooms: Vec::new(),
            except: Vec::new(),
            volatile: false,
            local: false,
        }
    }

    /// Adds a room (sockets in any of the rooms are reached).
    pub fn to(mut self, room: impl Into<String>) -> Self {
        self.rooms.push(room.into());
        self
    }

    /// Leaves out a socket.
    pub fn except(mut self, id: Sid) -> Self {
        self.except.push(id);
        self
    }

    /// Drops the packet for sockets whose queue is full instead of closing them.
    pub fn volatile(mut self) -> Self {
        self.volatile = true;
        self
    }

    /// Reaches this node's sockets only.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }

    /// Emits the event; returns how many sockets of this node it was queued for.
    pub fn emit(self, event: &str, payload: impl Into<Payload>) -> usize {
        let payload = payload.into();
        let targets = self.ns.targets(&self.rooms, &self.except);
        let reached = if self.ns.recovery.is_some() && !self.volatile {
            // Each socket's packet carries its own offset.
            targets
                .iter()
                .filter(|socket| socket.emit(event, payload.clone()).is_ok())
                .count()
        } else {
            let frames = encode_event(self.ns.name(), event, None, &payload);
            targets
                .iter()
                .filter(|socket| socket.send_frames(&frames, self.volatile).is_ok())
                .count()
        };
        let volatile = self.volatile;
        self.publish(Operation::Emit {
            event: event.to_owned(),
            payload,
            volatile,
        });
        reached
    }

    /// Disconnects the sockets from the namespace; returns how many of this node's.
    pub fn disconnect_sockets(self) -> usize {
        let sockets = self.ns.targets(&self.rooms, &self.except);
        for socket in &sockets {
            socket.disconnect();
        }
        self.publish(Operation::Disconnect);
        sockets.len()
    }

    fn publish(self, op: Operation) {
        if self.local {
            return;
        }
        if let Some(adapter) = self.ns.adapter() {
            adapter.publish(Broadcast {
                target: Target {
                    nsp: self.ns.name().to_owned(),
                    rooms: self.rooms,
                    except: self.except,
                },
                op,
            });
        }
    }
}
