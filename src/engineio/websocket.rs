//! The WebSocket driver: one actor per WebSocket connection, on the worker that accepted it,
//! owning its socket.
//!
//! At the upgrade the HTTP dispatcher hands the connection over (see [`crate::server`]); the
//! actor then holds both halves of the stream: it reads frames as a stream of its own (a
//! reader with the WebSocket codec, behind the [`GuardedRead`] frame-size guard) and
//! writes into a buffer of its own, which one pump writes to the socket. No channel, no other
//! task and no HTTP buffer stands between the socket and the actor in either direction.
//!
//! A connection is in one of three modes:
//! - **open**: it carries a session (opened directly over WebSocket, or handed over by the
//!   polling actor at the end of an upgrade): frames go into the state machine and the layer
//!   above's handler on this thread, with no hop to another;
//! - **probing**: it connected with the sid of a polling session and is running the upgrade
//!   (`2probe` → `3probe`, then `5`), torn down if that takes longer than `upgrade_timeout`;
//! - **rejected**: a second WebSocket for a session that already has one: closed at once.
//!
//! Writing: the pump drains the session's outbox into the write buffer (encoded frames, in the
//! order they were queued), writes the whole batch at once, and takes the next batch only
//! when the socket has taken all of it: a client that stops reading fills its session's
//! bounded outbox, not the server's memory. Every close, whoever starts it, goes through the
//! outbox: the pump writes what is queued, then the close frame (and no Engine.IO close
//! packet: clients reconnect after a bare close frame), and the actor stops.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, ready, Poll, Waker};
use std::time::Instant;

use actix::fut::ActorFuture;
use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, ContextFutureSpawner,
    Handler, StreamHandler, WrapFuture,
};
use actix_http::ws::{CloseCode, Codec, Frame, Item, Message, ProtocolError};
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::io::poll_read_buf;

use super::frame_guard::{self, GuardedRead};
use super::packet::{OutFrame, Packet};
use super::polling::PollingSession;
use super::shared::{EngineShared, Route, SessionCore, Timer};
use super::upgrade::{SessionGone, UpgradeAbort, UpgradeComplete, UpgradeProbed, UpgradeStart};
use super::{CloseReason, TransportKind};

/// A byte stream a WebSocket can run on, split into the two halves its actor owns.
///
/// Implemented for a plain TCP stream (split without a lock); a TLS stream, or any other,
/// implements it with the default, `tokio::io::split`.
pub trait WsStream: AsyncRead + AsyncWrite + Unpin + Sized + 'static {
    /// The read half and the write half.
    fn into_halves(self) -> (ReadHalf, WriteHalf) {
        let (read, write) = tokio::io::split(self);
        (Box::new(read), Box::new(write))
    }
}

/// The read half of a WebSocket's stream.
pub type ReadHalf = Box<dyn AsyncRead + Unpin>;
/// The write half of a WebSocket's stream.
pub type WriteHalf = Box<dyn AsyncWrite + Unpin>;

impl WsStream for tokio::net::TcpStream {
    fn into_halves(self) -> (ReadHalf, WriteHalf) {
        let (read, write) = self.into_split();
        (Box::new(read), Box::new(write))
    }
}

/// Room a connection's read buffer makes for each read when less than half of it is left: a
/// few audio chunks' frames. A larger message grows the buffer to its size.
const READ_BUFFER: usize = 2048;

/// A write buffer that grew past this (a burst of large messages) is let go once written, so
/// an idle connection does not keep it.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;

/// A WebSocket's stream, taken over at the upgrade: both halves and what the HTTP layer had
/// already read past the request (the client's first frames, if it did not wait for the 101).
pub(crate) struct WsSocket {
    read: ReadHalf,
    write: WriteHalf,
    early: BytesMut,
}

impl WsSocket {
    pub(crate) fn new<T: WsStream>(io: T, early: BytesMut) -> WsSocket {
        let (read, write) = io.into_halves();
        WsSocket { read, write, early }
    }
}

/// What the connection is doing. It lives inside its actor for the connection's life, so the
/// open session is held inline: boxing it would add an allocation and an indirection on
/// every frame to save the short-lived probing connections ~200 bytes.
#[allow(clippy::large_enum_variant)]
enum Mode {
    Open(SessionCore),
    Probing {
        polling: Addr<PollingSession>,
    },
    Rejected,
    /// The connection is over; waiting to stop.
    Done,
}

/// One WebSocket connection.
pub(crate) struct WsConnection {
    shared: Arc<EngineShared>,
    mode: Mode,
    timer: Timer,
    fragments: Fragments,
    /// The write half, the encoder, and the encoded bytes not yet written.
    write: WriteHalf,
    codec: Codec,
    out: BytesMut,
    /// Frames taken from the outbox, encoded into `out` (kept allocated between batches).
    batch: Vec<OutFrame>,
    /// The pump's waker while it waits for something to write.
    pump_waker: Option<Waker>,
    /// Take the outbox's frames even if it did not signal (after an upgrade handed it over).
    drain_now: bool,
    /// The socket did not take all of `out`: the client is not reading.
    blocked: bool,
    /// The close code to send when the connection ends; set by the first cause of the end.
    close_code: CloseCode,
    /// The connection is ending: later input is ignored and cannot change the close code.
    failing: bool,
    /// The close frame is in `out`; the actor stops when it is written or cannot be.
    finishing: bool,
    /// The latest ping that came while the socket was blocked, answered once it takes bytes
    /// again (RFC 6455 §5.5.3 allows answering only the latest), and how many came so.
    ping_waiting: Option<Bytes>,
    pings_unanswered: usize,
}

impl WsConnection {
    fn start(shared: Arc<EngineShared>, socket: WsSocket, mode: Mode) -> Addr<WsConnection> {
        let max_payload = shared.config.max_payload;
        let max_fragments = shared.config.max_fragments;
        WsConnection::create(move |ctx| {
            // What came with the request is read first, through the same guard.
            let read: ReadHalf = if socket.early.is_empty() {
                socket.read
            } else {
                Box::new(AsyncReadExt::chain(
                    std::io::Cursor::new(socket.early),
                    socket.read,
                ))
            };
            let frames = FrameReader {
                io: GuardedRead::new(read, max_payload),
                buf: BytesMut::new(),
                codec: Codec::new().max_size(max_payload),
                done: false,
            };
            ctx.add_stream(frames);
            ctx.spawn(Pump);
            WsConnection {
                shared,
                mode,
                timer: Timer::default(),
                fragments: Fragments::new(max_payload, max_fragments),
                write: socket.write,
                codec: Codec::new(),
                out: BytesMut::new(),
                batch: Vec::new(),
                pump_waker: None,
                drain_now: true,
                blocked: false,
                close_code: CloseCode::Normal,
                failing: false,
                finishing: false,
                ping_waiting: None,
                pings_unanswered: 0,
            }
        })
    }

    /// A session opened directly over WebSocket.
    pub(crate) fn start_open(shared: Arc<EngineShared>, socket: WsSocket, core: SessionCore) {
        let sid = core.machine.sid();
        let registry = shared.clone();
        let addr = Self::start(shared, socket, Mode::Open(core));
        registry
            .registry
            .insert(sid, Route::WebSocket(addr.recipient()));
    }

    /// A WebSocket probing the polling session `sid` for an upgrade.
    pub(crate) fn start_probe(
        shared: Arc<EngineShared>,
        socket: WsSocket,
        polling: Addr<PollingSession>,
    ) {
        Self::start(shared, socket, Mode::Probing { polling });
    }

    /// A WebSocket for a session that already has one.
    pub(crate) fn start_rejected(shared: Arc<EngineShared>, socket: WsSocket) {
        Self::start(shared, socket, Mode::Rejected);
    }

    /// Starts carrying a session: the outbox into the pump, the heartbeat timer.
    fn open(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.mode, Mode::Open(_)) {
            return;
        }
        self.drain_now = true;
        self.wake_pump();
        self.settle(ctx);
    }

    /// After anything that may have changed the session: deliver its events, re-arm the timer.
    /// A closed session needs nothing more here: the pump sees the close and ends.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        let Mode::Open(core) = &mut self.mode else {
            return;
        };
        let closed = core.deliver();
        let deadline = core.machine.poll_timeout();
        self.timer.rearm(deadline, ctx, Self::on_timer);
        if closed && !std::mem::replace(&mut self.failing, true) {
            // If the socket is stuck behind a client that reads nothing, do not wait for it
            // longer than a heartbeat would.
            ctx.run_later(self.shared.config.ping_timeout, |_, ctx| ctx.stop());
        }
    }

    fn on_timer(&mut self, ctx: &mut Context<Self>) {
        self.timer.fired();
        if let Mode::Open(core) = &mut self.mode {
            core.machine.handle_timeout(Instant::now());
        }
        self.settle(ctx);
    }

    /// Encodes a frame into the write buffer and wakes the pump.
    fn send(&mut self, message: Message) {
        // Encoding a whole text, binary, pong or close frame cannot fail (only continuation
        // frames out of order can, and none are sent).
        let _ = self.codec.encode(message, &mut self.out);
        self.wake_pump();
    }

    fn wake_pump(&mut self) {
        if let Some(waker) = self.pump_waker.take() {
            waker.wake();
        }
    }

    /// Moves what the open session has queued into the write buffer; `true` if it added
    /// anything. Until it returns `false` it is called again, and then the outbox holds the
    /// actor's waker: a push wakes the pump.
    fn refill(&mut self, ctx: &mut Context<Self>, cx: &mut task::Context<'_>) -> bool {
        loop {
            let Mode::Open(core) = &self.mode else {
                return false;
            };
            if self.finishing {
                return false;
            }
            let outbox = core.machine.outbox();
            if !std::mem::take(&mut self.drain_now) && outbox.poll_changed(cx).is_pending() {
                return false;
            }
            let closing = outbox.drain_into(&mut self.batch);
            let added = !self.batch.is_empty();
            if added {
                let bytes = self.batch.iter().map(|f| f.message_len() as u64).sum();
                let observer = &self.shared.config.observer;
                observer.sent(TransportKind::WebSocket, self.batch.len() as u64, bytes);
                for frame in self.batch.drain(..) {
                    let message = match frame {
                        OutFrame::Text(text) => Message::Text(text),
                        OutFrame::Binary(data) => Message::Binary(data),
                    };
                    let _ = self.codec.encode(message, &mut self.out);
                }
            }
            // No close packet on a WebSocket, as the reference server does: the close frame
            // says it, and a client that got a close packet would take it as a deliberate
            // disconnect and not reconnect.
            if closing.is_some() {
                self.drained(ctx);
                return true;
            }
            if added {
                return true;
            }
        }
    }

    /// Writes the buffer, then takes the next batch, until there is nothing to write or the
    /// socket takes no more; `Ready` when the connection is over.
    fn pump(&mut self, ctx: &mut Context<Self>, cx: &mut task::Context<'_>) -> Poll<()> {
        loop {
            while !self.out.is_empty() {
                match Pin::new(&mut self.write).poll_write(cx, &self.out) {
                    Poll::Ready(Ok(n)) if n > 0 => self.out.advance(n),
                    Poll::Ready(_) => return self.write_failed(ctx),
                    Poll::Pending => {
                        self.blocked = true;
                        return Poll::Pending;
                    }
                }
            }
            if std::mem::take(&mut self.blocked) {
                self.pings_unanswered = 0;
                if let Some(data) = self.ping_waiting.take() {
                    self.send(Message::Pong(data));
                    continue;
                }
            }
            match Pin::new(&mut self.write).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return self.write_failed(ctx),
                Poll::Pending => return Poll::Pending,
            }
            // All written: the buffer's whole allocation is free again (reclaimed without
            // allocating); one larger than a burst needs is let go.
            if self.out.try_reclaim(KEEP_WRITE_BUFFER + 1) {
                self.out = BytesMut::new();
            }
            if self.finishing {
                // The close frame is written.
                ctx.stop();
                return Poll::Ready(());
            }
            if self.refill(ctx, cx) || !self.out.is_empty() {
                continue;
            }
            if !self
                .pump_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                self.pump_waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
    }

    /// The socket cannot be written: the client is gone. The session closes, and the actor
    /// stops without a close frame.
    fn write_failed(&mut self, ctx: &mut Context<Self>) -> Poll<()> {
        self.out.clear();
        self.end_session();
        self.failing = true;
        self.finishing = true;
        ctx.stop();
        Poll::Ready(())
    }

    /// The pump wrote everything a closing session had queued: make sure the session is
    /// closed and the layer above told, then the close frame.
    fn drained(&mut self, ctx: &mut Context<Self>) {
        if let Some(reason) = self.end_session() {
            self.close_code = close_code(reason, self.close_code);
        }
        self.finish(ctx);
    }

    /// The transport is done with the session: it closes (for the reason already asked, if
    /// one was) and the layer above is told. Returns the reason it closed for.
    fn end_session(&mut self) -> Option<CloseReason> {
        let Mode::Open(core) = &mut self.mode else {
            return None;
        };
        core.apply_close_request();
        core.machine.handle_transport_closed();
        let reason = core.machine.outbox().closing();
        core.deliver();
        reason
    }

    /// Ends the connection: the close frame, then stop. The actor keeps running meanwhile
    /// (nothing here blocks it on a client that reads nothing); a close frame that cannot be
    /// written within a heartbeat's timeout is given up.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        if std::mem::replace(&mut self.finishing, true) {
            return;
        }
        self.failing = true;
        if let Mode::Probing { polling, .. } = &self.mode {
            polling.do_send(UpgradeAbort);
        }
        if !matches!(self.mode, Mode::Open(_)) {
            self.mode = Mode::Done;
        }
        self.send(Message::Close(Some(self.close_code.into())));
        ctx.run_later(self.shared.config.ping_timeout, |_, ctx| ctx.stop());
    }

    /// A ping came: answered at once, unless the socket is blocked; then only the latest
    /// waits, and a client that keeps pinging while it reads nothing is closed.
    fn on_ping(&mut self, data: Bytes, ctx: &mut Context<Self>) {
        if !self.blocked {
            return self.send(Message::Pong(data));
        }
        self.ping_waiting = Some(data);
        self.pings_unanswered += 1;
        if self.pings_unanswered > self.shared.config.max_unanswered_pings {
            self.fail(CloseReason::TransportError, CloseCode::Policy, ctx);
        }
    }

    /// The connection broke a rule or went away. With a session, closing goes through the
    /// session (and so through the pump); without one, straight to the close frame.
    fn fail(&mut self, reason: CloseReason, code: CloseCode, ctx: &mut Context<Self>) {
        if std::mem::replace(&mut self.failing, true) {
            return;
        }
        self.close_code = code;
        match &mut self.mode {
            Mode::Open(core) => {
                core.machine.close(reason);
                self.failing = false;
                self.settle(ctx);
            }
            _ => self.finish(ctx),
        }
    }

    /// A text message arrived whole, or put together from fragments.
    fn on_text(&mut self, bytes: Bytes, ctx: &mut Context<Self>) {
        match ByteString::try_from(bytes) {
            Ok(text) => self.on_message(Packet::decode_text(text), ctx),
            Err(_) => self.fail(CloseReason::TransportError, CloseCode::Invalid, ctx),
        }
    }

    /// A complete message arrived.
    fn on_message(
        &mut self,
        packet: Result<Packet, super::packet::DecodeError>,
        ctx: &mut Context<Self>,
    ) {
        match &mut self.mode {
            Mode::Open(core) => {
                match packet {
                    Ok(packet) => core.machine.handle_packet(packet, Instant::now()),
                    Err(_) => core.machine.handle_parse_error(),
                }
                self.settle(ctx);
            }
            Mode::Probing { polling, .. } => match packet {
                Ok(Packet::Ping(data)) if &*data == "probe" => {
                    // Written before anything else can be; the upgrade timeout bounds a
                    // client that does not read it.
                    polling.do_send(UpgradeProbed);
                    self.send(Message::Text(ByteString::from_static("3probe")));
                }
                Ok(Packet::Upgrade) => {
                    polling
                        .send(UpgradeComplete)
                        .into_actor(self)
                        .map(|core, act, ctx| match core {
                            Ok(Some(mut core)) => {
                                core.slot.upgraded();
                                act.mode = Mode::Open(core);
                                if let Mode::Open(core) = &mut act.mode {
                                    core.handler.on_upgrade();
                                }
                                act.open(ctx);
                            }
                            _ => act.finish(ctx),
                        })
                        .wait(ctx);
                }
                // Anything else aborts the upgrade; the session carries on polling.
                _ => self.fail(CloseReason::TransportError, CloseCode::Protocol, ctx),
            },
            Mode::Rejected | Mode::Done => {}
        }
    }
}

/// The WebSocket close code for a session closed for `reason`, unless the cause already chose
/// one (a frame too big, say).
fn close_code(reason: CloseReason, chosen: CloseCode) -> CloseCode {
    if chosen != CloseCode::Normal {
        return chosen;
    }
    match reason {
        CloseReason::ParseError | CloseReason::TransportError => CloseCode::Protocol,
        CloseReason::OutboundOverflow => CloseCode::Policy,
        CloseReason::ServerShutdown => CloseCode::Restart,
        _ => CloseCode::Normal,
    }
}

/// The connection's writing, as a future of the actor's own: it runs on the actor's fields.
struct Pump;

impl ActorFuture<WsConnection> for Pump {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut WsConnection,
        ctx: &mut Context<WsConnection>,
        cx: &mut task::Context<'_>,
    ) -> Poll<()> {
        act.pump(ctx, cx)
    }
}

/// The frames of a connection's read half: the WebSocket codec over a read buffer that keeps
/// room for a whole read. (A framed reader that reads into whatever room the last frame left
/// splits an arrival over two reads, and a read that fills the buffer costs another.)
struct FrameReader {
    io: GuardedRead<ReadHalf>,
    buf: BytesMut,
    codec: Codec,
    done: bool,
}

impl Stream for FrameReader {
    type Item = Result<Frame, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.codec.decode(&mut this.buf) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.buf.capacity() - this.buf.len() < READ_BUFFER / 2 {
                this.buf.reserve(READ_BUFFER);
            }
            let read = ready!(poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf));
            match read {
                Ok(0) if this.buf.is_empty() => this.done = true,
                Ok(0) => {
                    this.done = true;
                    let cut = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection ended inside a frame",
                    );
                    return Poll::Ready(Some(Err(ProtocolError::Io(cut))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(e))));
                }
            }
        }
    }
}

impl Actor for WsConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match &self.mode {
            Mode::Open(_) => self.open(ctx),
            Mode::Probing { polling, .. } => {
                polling
                    .send(UpgradeStart {
                        ws: ctx.address().recipient(),
                    })
                    .into_actor(self)
                    .map(|accepted, act, ctx| {
                        if act.finishing {
                            return;
                        }
                        if accepted.unwrap_or(false) {
                            let timeout = act.shared.config.upgrade_timeout;
                            ctx.run_later(timeout, |act, ctx| {
                                if matches!(act.mode, Mode::Probing { .. }) {
                                    act.fail(CloseReason::TransportError, CloseCode::Policy, ctx);
                                }
                            });
                        } else {
                            // Another WebSocket is probing, or the session is gone.
                            act.mode = Mode::Rejected;
                            act.close_code = CloseCode::Policy;
                            act.finish(ctx);
                        }
                    })
                    .wait(ctx);
            }
            Mode::Rejected => {
                self.close_code = CloseCode::Policy;
                self.finish(ctx);
            }
            Mode::Done => ctx.stop(),
        }
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        match std::mem::replace(&mut self.mode, Mode::Done) {
            Mode::Open(mut core) => {
                if !core.machine.is_closed() {
                    core.machine.close(CloseReason::ServerShutdown);
                }
                core.deliver();
                let sid = core.machine.sid();
                self.shared
                    .registry
                    .remove(sid, &Route::WebSocket(ctx.address().recipient()));
            }
            Mode::Probing { polling, .. } => polling.do_send(UpgradeAbort),
            Mode::Rejected | Mode::Done => {}
        }
    }
}

impl StreamHandler<Result<Frame, ProtocolError>> for WsConnection {
    fn handle(&mut self, item: Result<Frame, ProtocolError>, ctx: &mut Context<Self>) {
        if self.failing {
            return;
        }
        let frame = match item {
            Ok(frame) => frame,
            Err(ProtocolError::Overflow) => {
                return self.fail(CloseReason::TransportError, CloseCode::Size, ctx)
            }
            Err(ProtocolError::Io(e)) if frame_guard::is_refusal(&e) => {
                return self.fail(CloseReason::TransportError, CloseCode::Size, ctx)
            }
            Err(ProtocolError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return self.fail(CloseReason::TransportError, CloseCode::Invalid, ctx)
            }
            Err(_) => return self.fail(CloseReason::TransportError, CloseCode::Protocol, ctx),
        };
        let observer = &self.shared.config.observer;
        match frame {
            Frame::Text(data) => {
                observer.received(TransportKind::WebSocket, 1, data.len() as u64);
                self.on_text(data, ctx)
            }
            Frame::Binary(data) => {
                observer.received(TransportKind::WebSocket, 1, data.len() as u64);
                self.on_message(Ok(Packet::Binary(data)), ctx)
            }
            Frame::Continuation(item) => match self.fragments.push(item) {
                Ok(None) => {}
                Ok(Some(assembled)) => {
                    observer.received(TransportKind::WebSocket, 1, assembled.len() as u64);
                    match assembled {
                        Assembled::Text(data) => self.on_text(data, ctx),
                        Assembled::Binary(data) => self.on_message(Ok(Packet::Binary(data)), ctx),
                    }
                }
                Err(code) => self.fail(CloseReason::TransportError, code, ctx),
            },
            Frame::Ping(data) => self.on_ping(data, ctx),
            Frame::Pong(_) => {}
            Frame::Close(_) => self.fail(CloseReason::TransportClose, CloseCode::Normal, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.fail(CloseReason::TransportClose, CloseCode::Normal, ctx);
    }
}

impl Handler<SessionGone> for WsConnection {
    type Result = ();

    fn handle(&mut self, _: SessionGone, ctx: &mut Context<Self>) {
        if matches!(self.mode, Mode::Probing { .. }) {
            self.mode = Mode::Done;
            self.finish(ctx);
        }
    }
}

/// A message put back together from fragments.
enum Assembled {
    Text(Bytes),
    Binary(Bytes),
}

impl Assembled {
    fn len(&self) -> usize {
        match self {
            Assembled::Text(b) | Assembled::Binary(b) => b.len(),
        }
    }
}

/// Reassembles fragmented messages within a size and a fragment-count limit.
struct Fragments {
    max_size: usize,
    max_count: usize,
    /// The message being assembled: is it text, its bytes so far, how many fragments.
    current: Option<(bool, BytesMut, usize)>,
}

impl Fragments {
    fn new(max_size: usize, max_count: usize) -> Fragments {
        Fragments {
            max_size,
            max_count,
            current: None,
        }
    }

    fn push(&mut self, item: Item) -> Result<Option<Assembled>, CloseCode> {
        let (text, data, last) = match item {
            Item::FirstText(_) | Item::FirstBinary(_) if self.current.is_some() => {
                return Err(CloseCode::Protocol);
            }
            Item::FirstText(data) => (Some(true), data, false),
            Item::FirstBinary(data) => (Some(false), data, false),
            Item::Continue(data) => (None, data, false),
            Item::Last(data) => (None, data, true),
        };
        if let Some(is_text) = text {
            self.current = Some((is_text, BytesMut::new(), 0));
        }
        let Some((is_text, buf, count)) = self.current.as_mut() else {
            return Err(CloseCode::Protocol);
        };
        *count += 1;
        if *count > self.max_count || buf.len() + data.len() > self.max_size {
            self.current = None;
            return Err(CloseCode::Size);
        }
        buf.extend_from_slice(&data);
        if !last {
            return Ok(None);
        }
        let is_text = *is_text;
        let data = std::mem::take(buf).freeze();
        self.current = None;
        Ok(Some(if is_text {
            Assembled::Text(data)
        } else {
            Assembled::Binary(data)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_reassemble() {
        let mut f = Fragments::new(100, 4);
        assert!(f
            .push(Item::FirstText(Bytes::from_static(b"4he")))
            .unwrap()
            .is_none());
        assert!(f
            .push(Item::Continue(Bytes::from_static(b"ll")))
            .unwrap()
            .is_none());
        match f.push(Item::Last(Bytes::from_static(b"o"))).unwrap() {
            Some(Assembled::Text(t)) => assert_eq!(&t[..], b"4hello"),
            _ => panic!("expected text"),
        }
    }

    #[test]
    fn fragments_limits() {
        let mut f = Fragments::new(100, 2);
        f.push(Item::FirstBinary(Bytes::from_static(b"a"))).unwrap();
        f.push(Item::Continue(Bytes::from_static(b"b"))).unwrap();
        assert_eq!(
            f.push(Item::Continue(Bytes::from_static(b"c"))).err(),
            Some(CloseCode::Size)
        );
        let mut f = Fragments::new(3, 10);
        f.push(Item::FirstBinary(Bytes::from_static(b"ab")))
            .unwrap();
        assert_eq!(
            f.push(Item::Last(Bytes::from_static(b"cd"))).err(),
            Some(CloseCode::Size)
        );
        let mut f = Fragments::new(3, 10);
        assert_eq!(
            f.push(Item::Continue(Bytes::from_static(b"x"))).err(),
            Some(CloseCode::Protocol)
        );
        f.push(Item::FirstText(Bytes::from_static(b"x"))).unwrap();
        assert_eq!(
            f.push(Item::FirstText(Bytes::from_static(b"y"))).err(),
            Some(CloseCode::Protocol)
        );
    }
}
