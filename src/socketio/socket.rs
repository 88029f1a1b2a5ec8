//! One client in one namespace.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::namespace::{ConnectRequest, Namespace};
use super::packet::{self, PacketType, Payload};
use super::recovery::SentLog;
use super::session::SessionSockets;
use crate::engineio::{CloseReason, Handshake, MessageFrame, SendError, SessionHandle, Sid};

/// Why a socket left its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client left the namespace (DISCONNECT packet).
    ClientNamespaceDisconnect,
    /// The server disconnected the socket ([`Socket::disconnect`]).
    ServerNamespaceDisconnect,
    /// The connection under it closed.
    Transport(CloseReason),
}

impl DisconnectReason {
    /// The reason as the reference implementation names it.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientNamespaceDisconnect => "client namespace disconnect",
            DisconnectReason::ServerNamespaceDisconnect => "server namespace disconnect",
            DisconnectReason::Transport(reason) => reason.as_str(),
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an emit was not queued.
pub type EmitError = SendError;

/// Why an ack did not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The client did not answer in time.
    #[error("ack timed out")]
    Timeout,
    /// The socket disconnected first.
    #[error("socket disconnected")]
    Disconnected,
    /// Too many acks already awaited on this socket.
    #[error("too many pending acks")]
    TooManyPending,
    /// The packet could not be queued.
    #[error("emit failed: {0}")]
    Send(#[from] SendError),
}

/// An event from the client.
#[derive(Debug)]
pub struct Event {
    /// The event's name.
    pub name: String,
    /// Its arguments and attachments.
    pub data: Payload,
    /// Present when the client asked for an answer.
    pub ack: Option<AckSender>,
}

/// Answers one client event that asked for an ack. Answering is optional; it can be done once.
pub struct AckSender {
    socket: Socket,
    id: u64,
}

impl fmt::Debug for AckSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AckSender({})", self.id)
    }
}

impl AckSender {
    pub(crate) fn new(socket: Socket, id: u64) -> AckSender {
        AckSender { socket, id }
    }

    /// Sends the answer.
    pub fn send(self, payload: impl Into<Payload>) -> Result<(), EmitError> {
        let payload = payload.into();
        let frames = encode(
            self.socket.ns().name(),
            PacketType::Ack,
            None,
            Some(self.id),
            &payload,
        );
        self.socket.send_frames(&frames, false)
    }

    /// Sends one JSON argument, written straight from `value` (no [`Payload`] or
    /// `serde_json::Value` built on the way: what an ack on every audio chunk wants).
    pub fn send_one<T: serde::Serialize>(self, value: &T) -> Result<(), EmitError> {
        let frame = MessageFrame::build(48, |buf| {
            let nsp = self.socket.ns().name();
            packet::encode(buf, PacketType::Ack, nsp, Some(self.id), 0, None, &[value])
        });
        self.socket.send_frames(std::slice::from_ref(&frame), false)
    }
}

/// Typed per-socket state: one value per type.
#[derive(Default)]
pub struct Extensions(Mutex<Values>);

/// The values of an [`Extensions`], one per type: a socket keeps a few, looked up on every
/// event, so a scan of them beats hashing the type id.
type Values = Vec<Box<dyn Any + Send + Sync>>;

impl Extensions {
    fn lock(&self) -> MutexGuard<'_, Values> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn position<T: Any>(values: &Values) -> Option<usize> {
        let id = TypeId::of::<T>();
        values.iter().position(|v| (**v).type_id() == id)
    }

    /// Stores `value`, replacing the one of its type.
    pub fn insert<T: Any + Send + Sync>(&self, value: T) {
        let mut values = self.lock();
        match Self::position::<T>(&values) {
            Some(at) => values[at] = Box::new(value),
            None => values.push(Box::new(value)),
        }
    }

    /// A copy of the value of type `T`.
    pub fn get<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        let values = self.lock();
        Self::position::<T>(&values).and_then(|at| values[at].downcast_ref::<T>().cloned())
    }

    /// Whether a value of type `T` is stored (no copy made).
    pub fn contains<T: Any + Send + Sync>(&self) -> bool {
        Self::position::<T>(&self.lock()).is_some()
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Any + Send + Sync>(&self) -> Option<T> {
        let mut values = self.lock();
        let at = Self::position::<T>(&values)?;
        values.swap_remove(at).downcast::<T>().ok().map(|v| *v)
    }

    pub(crate) fn take(&self) -> Extensions {
        Extensions(Mutex::new(std::mem::take(&mut *self.lock())))
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extensions({} values)", self.lock().len())
    }
}

/// One client connected to one namespace. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Socket(Arc<SocketInner>);

struct SocketInner {
    id: Sid,
    ns: Arc<Namespace>,
    auth: Option<serde_json::Value>,
    connected: AtomicBool,
    next_ack: AtomicU64,
    acks: Mutex<HashMap<u64, oneshot::Sender<Payload>>>,
    max_pending_acks: usize,
    extensions: Extensions,
    /// The private id a reconnecting client recovers the socket with (recovery only).
    pid: Option<Sid>,
    /// Whether the socket was restored from elsewhere (another node, through the store).
    restored: bool,
    /// What the application keeps with the socket where a recovery store has it too.
    data: Mutex<Option<serde_json::Value>>,
    /// Set when another node restored the socket: its record is that node's now.
    handed_over: AtomicBool,
    link: Mutex<Link>,
}

impl Link {
    /// Ends a wait for the client, if one is on (any wait's expiry now finds itself stale);
    /// returns whether one was, for the namespace's count of waiting sockets.
    fn end_wait(&mut self) -> bool {
        self.generation += 1;
        std::mem::replace(&mut self.waiting, false)
    }
}

/// The connection a socket sends on, and what it keeps for a recovery.
struct Link {
    engine: SessionHandle,
    handshake: Arc<Handshake>,
    session: Weak<SessionSockets>,
    /// Set while the connection is gone and the socket waits for its client to come back.
    waiting: bool,
    /// Bumped at every wait and resume: a wait's expiry acts only on its own wait.
    generation: u64,
    /// The packets sent lately (recovery only).
    log: Option<SentLog>,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Socket({} on {})", self.0.id, self.0.ns.name())
    }
}

/// Where a new socket starts: a fresh one, or one restored with its id, private id and next
/// offset.
pub(crate) struct Origin {
    pub(crate) id: Sid,
    pub(crate) pid: Option<Sid>,
    pub(crate) next_offset: u64,
    pub(crate) restored: bool,
}

impl Origin {
    pub(crate) fn fresh(recovery: bool) -> Origin {
        Origin {
            id: Sid::generate(),
            pid: recovery.then(Sid::generate),
            next_offset: 1,
            restored: false,
        }
    }
}

impl Socket {
    pub(crate) fn new(
        ns: Arc<Namespace>,
        engine: SessionHandle,
        request: &ConnectRequest,
        max_pending_acks: usize,
        session: Weak<SessionSockets>,
        origin: Origin,
    ) -> Socket {
        let log = origin.pid.map(|_| SentLog::new(origin.next_offset));
        Socket(Arc::new(SocketInner {
            id: origin.id,
            ns,
            auth: request.auth.clone(),
            connected: AtomicBool::new(true),
            next_ack: AtomicU64::new(0),
            acks: Mutex::new(HashMap::new()),
            max_pending_acks,
            extensions: request.extensions.take(),
            pid: origin.pid,
            restored: origin.restored,
            data: Mutex::new(None),
            handed_over: AtomicBool::new(false),
            link: Mutex::new(Link {
                engine,
                handshake: request.handshake.clone(),
                session,
                waiting: false,
                generation: 0,
                log,
            }),
        }))
    }

    fn link(&self) -> MutexGuard<'_, Link> {
        self.0.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket's id (not the Engine.IO session id, which is never shown to other clients).
    pub fn id(&self) -> Sid {
        self.0.id
    }

    /// The namespace.
    pub fn ns(&self) -> &Arc<Namespace> {
        &self.0.ns
    }

    /// The request that opened the connection (the latest one, after a recovery).
    pub fn handshake(&self) -> Arc<Handshake> {
        self.link().handshake.clone()
    }

    /// The private id a reconnecting client recovers this socket with (never shown to other
    /// clients), when its namespace has connection state recovery.
    pub fn pid(&self) -> Option<Sid> {
        self.0.pid
    }

    /// Whether this socket was restored from a recovery store after its connection to
    /// another node (or an earlier process) dropped: its id, rooms and data came back, the
    /// state kept in memory did not.
    pub fn restored(&self) -> bool {
        self.0.restored
    }

    /// The auth payload of the client's CONNECT packet, if it sent one.
    pub fn auth(&self) -> Option<&serde_json::Value> {
        self.0.auth.as_ref()
    }

    /// Per-socket state (in this process only).
    pub fn extensions(&self) -> &Extensions {
        &self.0.extensions
    }

    /// What the application keeps with the socket in the recovery store, so that a socket
    /// restored on another node has it back (for example who authenticated). Kept in this
    /// process too, with or without a store.
    pub fn set_data(&self, data: serde_json::Value) {
        *self.data_slot() = Some(data);
        self.save();
    }

    /// The data set with [`Socket::set_data`] (restored with the socket).
    pub fn data(&self) -> Option<serde_json::Value> {
        self.data_slot().clone()
    }

    pub(crate) fn restore_data(&self, data: Option<serde_json::Value>) {
        *self.data_slot() = data;
    }

    fn data_slot(&self) -> MutexGuard<'_, Option<serde_json::Value>> {
        self.0.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the recovery store keeps of the socket.
    pub(crate) fn record(&self) -> super::SocketRecord {
        let own = self.id();
        super::SocketRecord {
            id: own.as_str().to_owned(),
            nsp: self.ns().name().to_owned(),
            rooms: self
                .rooms()
                .into_iter()
                .filter(|room| room != own.as_str())
                .collect(),
            data: self.data(),
        }
    }

    /// Writes the socket's record to the recovery store, if there is one.
    pub(crate) fn save(&self) {
        if let (Some(pid), Some(store)) = (self.0.pid, self.ns().store()) {
            if self.connected() {
                store.save(pid, &self.record());
            }
        }
    }

    /// Whether the socket is still in its namespace.
    pub fn connected(&self) -> bool {
        self.0.connected.load(Ordering::Acquire)
    }

    /// The Engine.IO session under this socket (the latest one, after a recovery).
    pub fn engine(&self) -> SessionHandle {
        self.link().engine.clone()
    }

    /// Whether the socket's connection dropped and it waits for its client to come back.
    pub fn waiting(&self) -> bool {
        self.link().waiting
    }

    /// Emits an event. A full outbound queue closes the connection (see the Engine.IO outbox).
    /// With recovery, the event carries the socket's next offset and is kept for a client
    /// that comes back, also while the socket waits for it.
    pub fn emit(&self, event: &str, payload: impl Into<Payload>) -> Result<(), EmitError> {
        self.emit_logged(event, payload.into(), None)
    }

    /// Emits an event and sets the socket's data ([`Socket::set_data`]) to what it is after
    /// that event: in the recovery store both are written together, so a socket restored
    /// elsewhere has the data that goes with the last event its client got.
    pub fn emit_with_data(
        &self,
        event: &str,
        payload: impl Into<Payload>,
        data: serde_json::Value,
    ) -> Result<(), EmitError> {
        *self.data_slot() = Some(data);
        // The record is made only where a store keeps it.
        let kept = self.connected() && self.0.pid.is_some() && self.ns().store().is_some();
        self.emit_logged(event, payload.into(), kept.then(|| self.record()))
    }

    fn emit_logged(
        &self,
        event: &str,
        payload: Payload,
        record: Option<super::SocketRecord>,
    ) -> Result<(), EmitError> {
        let Some(config) = self.ns().recovery() else {
            let frames = encode_event(self.ns().name(), event, None, &payload);
            return self.send_frames(&frames, false);
        };
        let mut link = self.link();
        let Link {
            engine,
            waiting,
            log: Some(log),
            ..
        } = &mut *link
        else {
            return Err(SendError::Closed);
        };
        if !self.connected() {
            return Err(SendError::Closed);
        }
        let offset = log.next_offset();
        let frames = encode_logged(self.ns().name(), event, &payload, offset);
        let kept = log.record(offset, frames, Instant::now(), config);
        if let (Some(store), Some(pid)) = (self.ns().store(), self.0.pid) {
            match &kept {
                Ok(frames) => store.append(pid, offset, frames, record.as_ref()),
                // A packet too big to keep is not written either: a log with its hole is
                // never replayed.
                Err(_) => {
                    if let Some(record) = &record {
                        store.save(pid, record);
                    }
                }
            }
        }
        if *waiting {
            return Ok(());
        }
        match &kept {
            Ok(frames) => engine.send_frames(frames, false),
            Err(frames) => engine.send_frames(frames, false),
        }
    }

    /// Emits an event unless the outbound queue is full, in which case it is dropped.
    pub fn emit_volatile(&self, event: &str, payload: impl Into<Payload>) -> Result<(), EmitError> {
        let frames = encode_event(self.ns().name(), event, None, &payload.into());
        self.send_frames(&frames, true)
    }

    /// Emits an event and waits up to `timeout` for the client's ack.
    pub fn emit_with_ack(
        &self,
        event: &str,
        payload: impl Into<Payload>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Payload, AckError>> + Send + 'static {
        let socket = self.clone();
        let registered = self.register_ack().and_then(|(id, rx)| {
            let frames = encode_event(self.ns().name(), event, Some(id), &payload.into());
            match self.send_frames(&frames, false) {
                Ok(()) => Ok((id, rx)),
                Err(e) => {
                    self.acks().remove(&id);
                    Err(AckError::Send(e))
                }
            }
        });
        async move {
            let (id, rx) = registered?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(payload)) => Ok(payload),
                Ok(Err(_)) => Err(AckError::Disconnected),
                Err(_) => {
                    socket.acks().remove(&id);
                    Err(AckError::Timeout)
                }
            }
        }
    }

    fn acks(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Payload>>> {
        self.0.acks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register_ack(&self) -> Result<(u64, oneshot::Receiver<Payload>), AckError> {
        if !self.connected() {
            return Err(AckError::Disconnected);
        }
        let mut acks = self.acks();
        if acks.len() >= self.0.max_pending_acks {
            return Err(AckError::TooManyPending);
        }
        let id = self.0.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        acks.insert(id, tx);
        Ok((id, rx))
    }

    /// An ACK packet from the client.
    pub(crate) fn acked(&self, id: u64, payload: Payload) {
        if let Some(tx) = self.acks().remove(&id) {
            let _ = tx.send(payload);
        }
    }

    /// Joins a room of the namespace.
    pub fn join(&self, room: impl Into<String>) {
        self.ns().join(self.id(), room.into());
        self.save();
    }

    /// Leaves a room.
    pub fn leave(&self, room: &str) {
        self.ns().leave(self.id(), room);
        self.save();
    }

    /// The rooms the socket is in (its own id's room included).
    pub fn rooms(&self) -> Vec<String> {
        self.ns().rooms_of(self.id())
    }

    /// Emits to the sockets in `room`, this one excepted.
    pub fn to(&self, room: impl Into<String>) -> super::BroadcastOperator {
        self.ns().to(room).except(self.id())
    }

    /// Emits to every other socket of the namespace.
    pub fn broadcast(&self) -> super::BroadcastOperator {
        self.ns().broadcast().except(self.id())
    }

    /// Disconnects the socket from its namespace (the client is told; the connection stays
    /// open for its other namespaces).
    pub fn disconnect(&self) {
        if !self.connected() {
            return;
        }
        let nsp = self.ns().name();
        let frame = MessageFrame::build(nsp.len() + 2, |b| {
            packet::encode_control(b, PacketType::Disconnect, nsp, None)
        });
        let _ = self.send_frames(&[frame], false);
        let session = self.link().session.upgrade();
        if let Some(session) = session {
            session.remove(self.ns().name());
        }
        self.left(DisconnectReason::ServerNamespaceDisconnect);
    }

    /// Closes the whole connection under the socket (every namespace on it).
    pub fn close_connection(&self) {
        self.engine().close();
    }

    /// The connection `sid` under the socket closed: the socket leaves, or, when its
    /// namespace has recovery and the connection merely dropped, waits for its client to
    /// come back within the window (its rooms, state and handlers stay; what is emitted to it
    /// meanwhile is kept for the client). A connection the socket already moved off is
    /// nothing to it.
    pub(crate) fn transport_closed(&self, sid: Sid, reason: CloseReason) {
        let recoverable = matches!(
            reason,
            CloseReason::TransportClose
                | CloseReason::TransportError
                | CloseReason::PingTimeout
                | CloseReason::OutboundOverflow
        );
        let wait = {
            let mut link = self.link();
            if link.engine.sid() != sid || link.waiting {
                return;
            }
            match self.ns().recovery() {
                Some(config) if recoverable && self.ns().start_waiting(config) => {
                    link.waiting = true;
                    link.generation += 1;
                    Some((link.generation, config.window))
                }
                _ => None,
            }
        };
        let Some((generation, window)) = wait else {
            return self.left(DisconnectReason::Transport(reason));
        };
        let socket = self.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep(window).await;
            let expired = {
                let mut link = socket.link();
                link.generation == generation && link.end_wait()
            };
            if expired {
                socket.ns().stop_waiting();
                socket.left(DisconnectReason::Transport(reason));
            }
        });
    }

    /// Another node restored this socket for its client: this copy ends (its handlers are
    /// told the transport closed) and leaves the recovery store's record alone.
    pub(crate) fn hand_over(&self) {
        self.0.handed_over.store(true, Ordering::Release);
        let was_waiting = self.link().end_wait();
        if was_waiting {
            self.ns().stop_waiting();
        }
        tracing::debug!(id = %self.id(), nsp = %self.ns().name(), "socket restored on another node");
        self.left(DisconnectReason::Transport(CloseReason::TransportClose));
    }

    /// A client came back with this socket's private id and the last offset it saw: the
    /// socket moves to its connection, which gets the CONNECT answer, then every packet after
    /// `offset`, then whatever is sent next. `false` (nothing changed) when the socket left,
    /// or the client's offset is not one it can be brought up to date from.
    pub(crate) fn resume(
        &self,
        engine: &SessionHandle,
        handshake: Arc<Handshake>,
        session: Weak<SessionSockets>,
        offset: Option<u64>,
    ) -> bool {
        let mut link = self.link();
        if !self.connected() {
            return false;
        }
        let Link {
            engine: current,
            log: Some(log),
            waiting,
            ..
        } = &mut *link
        else {
            return false;
        };
        let Some(config) = self.ns().recovery() else {
            return false;
        };
        log.prune(Instant::now(), config);
        let Some(missed) = log.after(offset) else {
            return false;
        };
        // A client back before its dropped connection was noticed: that one is let go.
        let stale = (!*waiting && current.sid() != engine.sid()).then(|| current.clone());
        let _ = engine.send_frames(&[self.connect_answer()], false);
        for frames in missed {
            let _ = engine.send_frames(frames, false);
        }
        link.engine = engine.clone();
        link.handshake = handshake;
        link.session = session;
        if link.end_wait() {
            self.ns().stop_waiting();
        }
        drop(link);
        if let Some(stale) = stale {
            stale.close();
        }
        true
    }

    /// The CONNECT answer: `{sid}`, and `{pid}` with recovery.
    pub(crate) fn connect_answer(&self) -> MessageFrame {
        let nsp = self.ns().name();
        MessageFrame::build(nsp.len() + 64, |b| {
            packet::encode_control(b, PacketType::Connect, nsp, None);
            // Ids are URL-safe base64: nothing in them to escape.
            let _ = write!(b, r#"{{"sid":"{}""#, self.id().as_str());
            if let Some(pid) = self.0.pid {
                let _ = write!(b, r#","pid":"{}""#, pid.as_str());
            }
            b.push(b'}');
        })
    }

    /// The socket has left: out of the namespace's rooms, pending acks failed, handler told.
    pub(crate) fn left(&self, reason: DisconnectReason) {
        if !self.0.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        self.ns().remove(self);
        self.acks().clear();
        // A node shutting down leaves its sockets' records for another node to recover.
        let handed_over = self.0.handed_over.load(Ordering::Acquire);
        if reason != DisconnectReason::Transport(CloseReason::ServerShutdown) && !handed_over {
            if let (Some(pid), Some(store)) = (self.0.pid, self.ns().store()) {
                store.forget(pid);
            }
        }
        self.ns().disconnected(self, reason);
    }

    pub(crate) fn send_frames(
        &self,
        frames: &[MessageFrame],
        volatile: bool,
    ) -> Result<(), EmitError> {
        let link = self.link();
        if link.waiting {
            return Err(SendError::Closed);
        }
        link.engine.send_frames(frames, volatile)
    }
}

/// An event packet (binary if the payload has attachments): the text frame, then one frame per
/// attachment.
pub(crate) fn encode_event(
    nsp: &str,
    event: &str,
    id: Option<u64>,
    payload: &Payload,
) -> Vec<MessageFrame> {
    encode(nsp, PacketType::Event, Some(event), id, payload)
}

/// An event packet that carries its recovery offset as its last argument.
fn encode_logged(nsp: &str, event: &str, payload: &Payload, offset: u64) -> Vec<MessageFrame> {
    let kind = if payload.bins.is_empty() {
        PacketType::Event
    } else {
        PacketType::BinaryEvent
    };
    let mut frames = Vec::with_capacity(1 + payload.bins.len());
    frames.push(MessageFrame::build(64, |buf| {
        let args = &payload.args;
        packet::encode(buf, kind, nsp, None, payload.bins.len(), Some(event), args);
        // `…]` becomes `…,"<offset>"]`: the array always holds the event's name.
        buf.pop();
        let _ = write!(buf, ",\"{offset}\"]");
    }));
    frames.extend(payload.bins.iter().cloned().map(MessageFrame::binary));
    frames
}

fn encode(
    nsp: &str,
    kind: PacketType,
    event: Option<&str>,
    id: Option<u64>,
    payload: &Payload,
) -> Vec<MessageFrame> {
    let kind = match (kind, payload.bins.is_empty()) {
        (PacketType::Event, false) => PacketType::BinaryEvent,
        (PacketType::Ack, false) => PacketType::BinaryAck,
        (kind, _) => kind,
    };
    let mut frames = Vec::with_capacity(1 + payload.bins.len());
    frames.push(MessageFrame::build(48, |buf| {
        packet::encode(buf, kind, nsp, id, payload.bins.len(), event, &payload.args)
    }));
    frames.extend(payload.bins.iter().cloned().map(MessageFrame::binary));
    frames
}

#[cfg(test)]
mod tests {
    use super::Extensions;

    #[derive(Debug, Clone, PartialEq)]
    struct Name(&'static str);
    #[derive(Debug, Clone, PartialEq)]
    struct Count(u32);

    #[test]
    fn extensions_keep_one_value_per_type() {
        let ext = Extensions::default();
        assert!(!ext.contains::<Name>());
        assert_eq!(ext.get::<Name>(), None);
        ext.insert(Name("a"));
        ext.insert(Count(1));
        ext.insert(Name("b"));
        assert_eq!(
            ext.get::<Name>(),
            Some(Name("b")),
            "a second value replaces the first"
        );
        assert_eq!(ext.get::<Count>(), Some(Count(1)));
        assert_eq!(format!("{ext:?}"), "Extensions(2 values)");
        assert_eq!(ext.remove::<Name>(), Some(Name("b")));
        assert!(!ext.contains::<Name>());
        assert_eq!(ext.remove::<Name>(), None);
        assert!(
            ext.contains::<Count>(),
            "removing one type leaves the others"
        );
        let taken = ext.take();
        assert!(!ext.contains::<Count>());
        assert_eq!(taken.get::<Count>(), Some(Count(1)));
        // A boxed value is found by its own type, not by the box's.
        ext.insert(Box::new(Count(2)));
        assert!(!ext.contains::<Count>());
        assert_eq!(ext.get::<Box<Count>>(), Some(Box::new(Count(2))));
    }
}
