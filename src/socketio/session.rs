//! One Engine.IO connection as Socket.IO sees it: which namespaces it joined, and a binary
//! packet waiting for its attachments.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use serde_json::Value;

use super::namespace::{ConnectError, ConnectRequest, Namespace};
use super::packet::{self, Packet, PacketType, Payload};
use super::socket::{AckSender, DisconnectReason, Event, Extensions, Origin, Socket};
use super::IoInner;
use crate::engineio::{CloseReason, Handshake, MessageFrame, SessionHandle, SessionHandler, Sid};

/// The sockets of one connection, by namespace; shared with its sockets (for a server-side
/// disconnect) and with connects still running their middleware.
#[derive(Default)]
pub(crate) struct SessionSockets(Mutex<SocketsState>);

#[derive(Default)]
struct SocketsState {
    /// Set when the connection closed: nothing joins after.
    closed: bool,
    /// One socket per joined namespace. A client joins only the server's namespaces, a
    /// handful: a scan of them is cheaper than hashing the name for every packet.
    by_nsp: Vec<Socket>,
}

impl SocketsState {
    fn position(&self, nsp: &str) -> Option<usize> {
        self.by_nsp.iter().position(|s| s.ns().name() == nsp)
    }

    fn contains(&self, nsp: &str) -> bool {
        self.position(nsp).is_some()
    }
}

impl SessionSockets {
    fn lock(&self) -> MutexGuard<'_, SocketsState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn remove(&self, nsp: &str) -> Option<Socket> {
        let mut state = self.lock();
        let at = state.position(nsp)?;
        Some(state.by_nsp.swap_remove(at))
    }

    fn get(&self, nsp: &str) -> Option<Socket> {
        let state = self.lock();
        state.position(nsp).map(|at| state.by_nsp[at].clone())
    }
}

/// A binary packet whose attachments are still arriving.
struct Partial {
    packet: Packet,
    bins: Vec<Bytes>,
    bytes: usize,
}

/// Milliseconds since the process's first look at the clock (for cheap cross-thread stamps).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

pub(crate) struct SioSession {
    io: Arc<IoInner>,
    engine: SessionHandle,
    handshake: Arc<Handshake>,
    sockets: Arc<SessionSockets>,
    partial: Option<Partial>,
    /// When the pending binary packet started (`now_ms`), 0 when none: read by the watchdog.
    partial_since: Arc<AtomicU64>,
    watchdog: bool,
    joined_once: Arc<AtomicBool>,
}

impl SioSession {
    pub(crate) fn new(
        io: Arc<IoInner>,
        engine: SessionHandle,
        handshake: Arc<Handshake>,
    ) -> SioSession {
        let joined_once = Arc::new(AtomicBool::new(false));
        // connectTimeout: a connection that joins no namespace in time is closed.
        let (timeout, joined, handle) = (
            io.config.connect_timeout,
            joined_once.clone(),
            engine.clone(),
        );
        actix_rt::spawn(async move {
            tokio::time::sleep(timeout).await;
            if !joined.load(Ordering::Acquire) {
                handle.close();
            }
        });
        SioSession {
            io,
            engine,
            handshake,
            sockets: Arc::new(SessionSockets::default()),
            partial: None,
            partial_since: Arc::new(AtomicU64::new(0)),
            watchdog: false,
            joined_once,
        }
    }

    /// Anything the client sent that breaks the protocol closes the connection.
    fn protocol_error(&mut self, error: impl std::fmt::Display) {
        tracing::debug!(sid = %self.engine.sid(), %error, "socket.io protocol error");
        self.partial = None;
        self.partial_since.store(0, Ordering::Release);
        self.engine.close_with(CloseReason::ParseError);
    }

    /// Starts (once per connection) the task that closes it if a binary packet's attachments
    /// stall: one task per connection that uses binary, not one per packet.
    fn ensure_watchdog(&mut self) {
        if std::mem::replace(&mut self.watchdog, true) {
            return;
        }
        let limit = self.io.config.attachment_timeout;
        let (since, engine) = (self.partial_since.clone(), self.engine.clone());
        actix_rt::spawn(async move {
            let tick = (limit / 2).max(Duration::from_millis(10));
            let limit_ms = limit.as_millis() as u64;
            while !engine.is_closed() {
                tokio::time::sleep(tick).await;
                let started = since.load(Ordering::Acquire);
                if started != 0 && now_ms().saturating_sub(started) >= limit_ms {
                    tracing::debug!(sid = %engine.sid(), "attachments timed out");
                    engine.close_with(CloseReason::ParseError);
                }
            }
        });
    }

    fn dispatch(&mut self, packet: Packet, bins: Vec<Bytes>) {
        let Packet {
            kind,
            nsp,
            id,
            data,
            ..
        } = packet;
        match kind {
            PacketType::Connect => self.connect(nsp, data),
            PacketType::Disconnect => {
                if let Some(socket) = self.sockets.remove(&nsp) {
                    socket.left(DisconnectReason::ClientNamespaceDisconnect);
                }
            }
            PacketType::Event | PacketType::BinaryEvent => {
                // Packets for a namespace the client has not joined are ignored.
                let Some(socket) = self.sockets.get(&nsp) else {
                    return;
                };
                let Some(Value::Array(mut args)) = data else {
                    return;
                };
                let Value::String(name) = args.remove(0) else {
                    return;
                };
                let ack = id.map(|id| AckSender::new(socket.clone(), id));
                let event = Event {
                    name,
                    data: Payload { args, bins },
                    ack,
                };
                socket.ns().clone().dispatch(&socket, event);
            }
            PacketType::Ack | PacketType::BinaryAck => {
                let (Some(socket), Some(id), Some(Value::Array(args))) =
                    (self.sockets.get(&nsp), id, data)
                else {
                    return;
                };
                socket.acked(id, Payload { args, bins });
            }
            PacketType::ConnectError => self.protocol_error("CONNECT_ERROR from a client"),
        }
    }

    fn connect(&mut self, nsp: ByteString, auth: Option<Value>) {
        let Some(ns) = self.io.namespace(&nsp) else {
            // Echoed so the client can match the answer; a name longer than any real one
            // comes back cut, not amplified.
            let error = ConnectError::new("Invalid namespace");
            let echoed = super::truncated(&nsp, super::MAX_ECHOED_NAME);
            let _ = self
                .engine
                .send_frames(&[connect_error_frame(echoed, &error)], false);
            return;
        };
        if self.sockets.get(&nsp).is_some() {
            return;
        }
        // A client coming back: its socket on this node, or else in the recovery store.
        let mut from_store = None;
        if ns.recovery().is_some() {
            match self.recover(&ns, auth.as_ref()) {
                Recovery::Done => return,
                Recovery::Elsewhere(pid, offset) => {
                    from_store = ns
                        .store()
                        .map(|store| (store.restore(&nsp, pid, offset), pid));
                }
                Recovery::None => {}
            }
        }
        let request = ConnectRequest {
            nsp: nsp.to_string(),
            auth,
            handshake: self.handshake.clone(),
            extensions: Extensions::default(),
        };
        let joining = Joining {
            ns,
            engine: self.engine.clone(),
            sockets: self.sockets.clone(),
            joined_once: self.joined_once.clone(),
            max_pending_acks: self.io.config.max_pending_acks,
        };
        if from_store.is_none() && joining.ns.middleware.is_empty() {
            joining.finish(&request, Ok(()));
            return;
        }
        let request = Arc::new(request);
        let checks = joining.ns.middleware.clone();
        actix_rt::spawn(async move {
            if let Some((restoring, pid)) = from_store {
                if let Some(restored) = restoring.await {
                    if joining.restored(&request, pid, restored) {
                        return;
                    }
                }
            }
            let mut verdict = Ok(());
            for check in checks {
                verdict = check(request.clone()).await;
                if verdict.is_err() {
                    break;
                }
            }
            joining.finish(&request, verdict);
        });
    }
}

/// What came of a CONNECT's recovery attempt on this node.
enum Recovery {
    /// The socket was here and took this connection.
    Done,
    /// Not here: the private id and offset the client gave, to look for elsewhere.
    Elsewhere(Sid, Option<u64>),
    /// Not a recovery (or one that cannot be).
    None,
}

impl SioSession {
    /// A CONNECT with `{pid, offset}` in its auth, for a socket of this node still waiting
    /// for its client (or still on a connection not yet noticed gone): the socket moves to
    /// this connection with what it missed, without its middleware or connect handler
    /// running again. `false`: a connect like any other follows.
    fn recover(&mut self, ns: &Arc<Namespace>, auth: Option<&Value>) -> Recovery {
        let Some(auth) = auth else {
            return Recovery::None;
        };
        let Some(pid) = auth.get("pid").and_then(Value::as_str).and_then(Sid::parse) else {
            return Recovery::None;
        };
        let Ok(offset) = super::recovery::parse_offset(auth.get("offset")) else {
            return Recovery::None;
        };
        let Some(socket) = ns.by_pid(pid) else {
            return Recovery::Elsewhere(pid, offset);
        };
        let mut state = self.sockets.lock();
        if state.closed || state.contains(ns.name()) {
            return Recovery::None;
        }
        let session = Arc::downgrade(&self.sockets);
        if !socket.resume(&self.engine, self.handshake.clone(), session, offset) {
            return Recovery::None;
        }
        state.by_nsp.push(socket);
        drop(state);
        self.joined_once.store(true, Ordering::Release);
        tracing::debug!(sid = %self.engine.sid(), nsp = %ns.name(), "socket recovered");
        Recovery::Done
    }
}

/// A connect in progress: what it needs once the middleware has decided.
struct Joining {
    ns: Arc<Namespace>,
    engine: SessionHandle,
    sockets: Arc<SessionSockets>,
    joined_once: Arc<AtomicBool>,
    max_pending_acks: usize,
}

impl Joining {
    fn finish(self, request: &ConnectRequest, verdict: Result<(), ConnectError>) {
        let nsp = self.ns.name();
        if let Err(error) = verdict {
            let _ = self
                .engine
                .send_frames(&[connect_error_frame(nsp, &error)], false);
            return;
        }
        let Some(socket) = self.socket(request, Origin::fresh(self.ns.recovery().is_some())) else {
            return;
        };
        self.ns.add(&socket);
        self.joined_once.store(true, Ordering::Release);
        let _ = self.engine.send_frames(&[socket.connect_answer()], false);
        socket.save();
        self.ns.connected(&socket);
    }
}

impl Joining {
    /// A new socket of the namespace on this connection; `None` when the connection closed
    /// or joined the namespace meanwhile.
    fn socket(&self, request: &ConnectRequest, origin: Origin) -> Option<Socket> {
        let socket = Socket::new(
            self.ns.clone(),
            self.engine.clone(),
            request,
            self.max_pending_acks,
            Arc::downgrade(&self.sockets),
            origin,
        );
        let mut state = self.sockets.lock();
        if state.closed || state.contains(self.ns.name()) {
            return None;
        }
        state.by_nsp.push(socket.clone());
        Some(socket)
    }

    /// A socket restored from the recovery store takes this connection: same id, rooms and
    /// data, the packets the client missed sent after the CONNECT answer, then the
    /// namespace's connect handler runs (it sees [`Socket::restored`]). `false`: the
    /// connection went or joined meanwhile, nothing was done.
    fn restored(&self, request: &ConnectRequest, pid: Sid, restored: super::Restored) -> bool {
        let Some(id) = Sid::parse(&restored.record.id) else {
            return false;
        };
        let origin = Origin {
            id,
            pid: Some(pid),
            next_offset: restored.next_offset,
            restored: true,
        };
        let Some(socket) = self.socket(request, origin) else {
            return false;
        };
        socket.restore_data(restored.record.data);
        self.ns.add(&socket);
        for room in restored.record.rooms {
            self.ns.join(socket.id(), room);
        }
        self.joined_once.store(true, Ordering::Release);
        let _ = self.engine.send_frames(&[socket.connect_answer()], false);
        for frames in &restored.missed {
            let _ = self.engine.send_frames(frames, false);
        }
        socket.save();
        self.ns.claim(pid);
        tracing::debug!(sid = %self.engine.sid(), nsp = %self.ns.name(), "socket restored");
        self.ns.connected(&socket);
        true
    }
}

fn connect_error_frame(nsp: &str, error: &ConnectError) -> MessageFrame {
    let json = error.to_json();
    MessageFrame::build(nsp.len() + 64, |b| {
        packet::encode_control(b, PacketType::ConnectError, nsp, Some(&json))
    })
}

impl SessionHandler for SioSession {
    fn on_message(&mut self, text: ByteString) {
        if self.partial.is_some() {
            return self.protocol_error("text packet while attachments are pending");
        }
        let packet = match packet::decode(&text, self.io.config.max_attachments) {
            Ok(packet) => packet,
            Err(error) => return self.protocol_error(error),
        };
        if packet.kind.is_binary() && packet.attachments > 0 {
            self.ensure_watchdog();
            self.partial_since.store(now_ms(), Ordering::Release);
            self.partial = Some(Partial {
                bins: Vec::with_capacity(packet.attachments),
                packet,
                bytes: 0,
            });
            return;
        }
        self.dispatch(packet, Vec::new());
    }

    fn on_binary(&mut self, data: Bytes) {
        let Some(partial) = self.partial.as_mut() else {
            return self.protocol_error("binary packet when no attachment is expected");
        };
        partial.bytes += data.len();
        if partial.bytes > self.io.config.max_attachment_bytes {
            return self.protocol_error("attachments too large");
        }
        partial.bins.push(data);
        if partial.bins.len() < partial.packet.attachments {
            return;
        }
        if let Some(Partial { packet, bins, .. }) = self.partial.take() {
            self.partial_since.store(0, Ordering::Release);
            self.dispatch(packet, bins);
        }
    }

    fn on_close(&mut self, reason: CloseReason) {
        self.partial = None;
        self.partial_since.store(0, Ordering::Release);
        let sockets: Vec<Socket> = {
            let mut state = self.sockets.lock();
            state.closed = true;
            std::mem::take(&mut state.by_nsp)
        };
        let sid = self.engine.sid();
        for socket in sockets {
            socket.transport_closed(sid, reason);
        }
    }
}
