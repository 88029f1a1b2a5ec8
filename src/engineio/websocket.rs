//! The WebSocket driver: one actor per WebSocket connection, on the worker that accepted it.
//!
//! A connection is in one of three modes:
//! - **open**: it carries a session (opened directly over WebSocket, or handed over by the
//!   polling actor at the end of an upgrade): frames go into the state machine and the layer
//!   above's handler on this thread, with no hop to another;
//! - **probing**: it connected with the sid of a polling session and is running the upgrade
//!   (`2probe` → `3probe`, then `5`), torn down if that takes longer than `upgrade_timeout`;
//! - **rejected**: a second WebSocket for a session that already has one: closed at once.
//!
//! Writing: one writer future per connection drains the session's outbox into the socket, so
//! packets leave in the order they were queued. Every close, whoever starts it, goes through the
//! outbox: the writer flushes what is queued, the actor then sends the close frame (and no
//! Engine.IO close packet: clients reconnect after a bare close frame) and stops.

use std::sync::Arc;
use std::time::Instant;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, ContextFutureSpawner,
    Handler, StreamHandler, WrapFuture,
};
use actix_ws::{CloseCode, Item, Message, MessageStream, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::frame_guard;
use super::outbox::Outbox;
use super::packet::{OutFrame, Packet};
use super::polling::PollingSession;
use super::shared::{EngineShared, Route, SessionCore, Timer};
use super::upgrade::{SessionGone, UpgradeAbort, UpgradeComplete, UpgradeProbed, UpgradeStart};
use super::{CloseReason, Observer, TransportKind};

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
    ws: actix_ws::Session,
    mode: Mode,
    timer: Timer,
    fragments: Fragments,
    /// The close code to send when the connection ends; set by the first cause of the end.
    close_code: CloseCode,
    /// The connection is ending: later input is ignored and cannot change the close code.
    failing: bool,
    /// The close frame is on its way; the actor stops when it is sent or cannot be.
    finishing: bool,
    /// A pong is being handed to the socket; pings that come meanwhile are answered by one
    /// pong, for the latest of them, once it has gone (RFC 6455 §5.5.3 allows that).
    pong_in_flight: bool,
    /// The latest ping not yet answered, and how many arrived while a pong was stuck.
    ping_waiting: Option<Bytes>,
    pings_unanswered: usize,
}

impl WsConnection {
    fn start(
        shared: Arc<EngineShared>,
        ws: actix_ws::Session,
        stream: MessageStream,
        mode: Mode,
    ) -> Addr<WsConnection> {
        let max_payload = shared.config.max_payload;
        let max_fragments = shared.config.max_fragments;
        WsConnection::create(move |ctx| {
            ctx.add_stream(stream.max_frame_size(max_payload));
            WsConnection {
                shared,
                ws,
                mode,
                timer: Timer::default(),
                fragments: Fragments::new(max_payload, max_fragments),
                close_code: CloseCode::Normal,
                failing: false,
                finishing: false,
                pong_in_flight: false,
                ping_waiting: None,
                pings_unanswered: 0,
            }
        })
    }

    /// A session opened directly over WebSocket.
    pub(crate) fn start_open(
        shared: Arc<EngineShared>,
        ws: actix_ws::Session,
        stream: MessageStream,
        core: SessionCore,
    ) {
        let sid = core.machine.sid();
        let registry = shared.clone();
        let addr = Self::start(shared, ws, stream, Mode::Open(core));
        registry
            .registry
            .insert(sid, Route::WebSocket(addr.recipient()));
    }

    /// A WebSocket probing the polling session `sid` for an upgrade.
    pub(crate) fn start_probe(
        shared: Arc<EngineShared>,
        ws: actix_ws::Session,
        stream: MessageStream,
        polling: Addr<PollingSession>,
    ) {
        Self::start(shared, ws, stream, Mode::Probing { polling });
    }

    /// A WebSocket for a session that already has one.
    pub(crate) fn start_rejected(
        shared: Arc<EngineShared>,
        ws: actix_ws::Session,
        stream: MessageStream,
    ) {
        Self::start(shared, ws, stream, Mode::Rejected);
    }

    /// Starts carrying a session: the writer, the heartbeat timer.
    fn open(&mut self, ctx: &mut Context<Self>) {
        let Mode::Open(core) = &self.mode else {
            return;
        };
        let writer = write_frames(
            self.ws.clone(),
            core.machine.outbox().clone(),
            self.shared.config.observer.clone(),
        );
        writer
            .into_actor(self)
            .map(|(), act, ctx| act.writer_done(ctx))
            .spawn(ctx);
        self.settle(ctx);
    }

    /// After anything that may have changed the session: deliver its events, re-arm the timer.
    /// A closed session needs nothing more here: the writer sees the close and ends.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        let Mode::Open(core) = &mut self.mode else {
            return;
        };
        let closed = core.deliver();
        let deadline = core.machine.poll_timeout();
        self.timer.rearm(deadline, ctx, Self::on_timer);
        if closed && !std::mem::replace(&mut self.failing, true) {
            // If the writer is stuck behind a client that reads nothing, do not wait for it
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

    /// The writer drained the outbox of a closing session (or the socket went away): make sure
    /// the session is closed and the layer above told, send the close frame, stop.
    fn writer_done(&mut self, ctx: &mut Context<Self>) {
        if let Mode::Open(core) = &mut self.mode {
            core.apply_close_request();
            core.machine.handle_transport_closed();
            if let Some(reason) = core.machine.outbox().closing() {
                self.close_code = close_code(reason, self.close_code);
            }
            core.deliver();
        }
        self.finish(ctx);
    }

    /// Ends the connection: the close frame, then stop. The actor keeps running meanwhile
    /// (nothing here blocks it on a client that reads nothing); a close frame that cannot be
    /// handed over within a heartbeat's timeout is given up.
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
        let close = self.ws.clone().close(Some(self.close_code.into()));
        tokio::time::timeout(self.shared.config.ping_timeout, close)
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop())
            .spawn(ctx);
    }

    /// A ping came: answered at once, unless a pong is still on its way; then only the latest
    /// waits, and a client that keeps pinging while it reads nothing is closed.
    fn on_ping(&mut self, data: Bytes, ctx: &mut Context<Self>) {
        if !self.pong_in_flight {
            return self.send_pong(data, ctx);
        }
        self.ping_waiting = Some(data);
        self.pings_unanswered += 1;
        if self.pings_unanswered > self.shared.config.max_unanswered_pings {
            self.fail(CloseReason::TransportError, CloseCode::Policy, ctx);
        }
    }

    fn send_pong(&mut self, data: Bytes, ctx: &mut Context<Self>) {
        self.pong_in_flight = true;
        let mut ws = self.ws.clone();
        async move { ws.pong(&data).await.is_ok() }
            .into_actor(self)
            .map(|sent, act, ctx| {
                act.pong_in_flight = false;
                if !sent {
                    return;
                }
                act.pings_unanswered = 0;
                if let Some(data) = act.ping_waiting.take() {
                    act.send_pong(data, ctx);
                }
            })
            .spawn(ctx);
    }

    /// The connection broke a rule or went away. With a session, closing goes through the
    /// session (and so through the writer); without one, straight to the close frame.
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

    /// A fragmented message is complete.
    fn on_assembled(&mut self, assembled: Assembled, ctx: &mut Context<Self>) {
        match assembled {
            Assembled::Text(bytes) => match ByteString::try_from(bytes) {
                Ok(text) => self.on_message(Packet::decode_text(text), ctx),
                Err(_) => self.fail(CloseReason::TransportError, CloseCode::Invalid, ctx),
            },
            Assembled::Binary(data) => self.on_message(Ok(Packet::Binary(data)), ctx),
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
                    let mut ws = self.ws.clone();
                    let polling = polling.clone();
                    // Nothing else may come before the answer, but a client that reads
                    // nothing holds the actor no longer than the upgrade may take.
                    let timeout = self.shared.config.upgrade_timeout;
                    async move {
                        let probe = ws.text(ByteString::from_static("3probe"));
                        matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(())))
                    }
                    .into_actor(self)
                    .map(move |sent, act, ctx| {
                        if sent {
                            polling.do_send(UpgradeProbed);
                        } else {
                            act.fail(CloseReason::TransportError, CloseCode::Policy, ctx);
                        }
                    })
                    .wait(ctx);
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

/// Drains the outbox into the socket until the session closes or the socket goes away.
async fn write_frames(mut ws: actix_ws::Session, outbox: Arc<Outbox>, observer: Observer) {
    let mut batch = Vec::new();
    loop {
        let closing = outbox.drain_into(&mut batch);
        let bytes = batch.iter().map(|f| f.message_len() as u64).sum();
        observer.sent(TransportKind::WebSocket, batch.len() as u64, bytes);
        for frame in batch.drain(..) {
            let sent = match frame {
                OutFrame::Text(text) => ws.text(text).await,
                OutFrame::Binary(data) => ws.binary(data).await,
            };
            if sent.is_err() {
                return;
            }
        }
        // No close packet on a WebSocket, as the reference server does: the close frame says
        // it, and a client that got a close packet would take it as a deliberate disconnect
        // and not reconnect.
        if closing.is_some() {
            return;
        }
        outbox.changed().await;
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

impl StreamHandler<Result<Message, ProtocolError>> for WsConnection {
    fn handle(&mut self, item: Result<Message, ProtocolError>, ctx: &mut Context<Self>) {
        if self.failing {
            return;
        }
        let message = match item {
            Ok(message) => message,
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
        match message {
            Message::Text(text) => {
                observer.received(TransportKind::WebSocket, 1, text.len() as u64);
                self.on_message(Packet::decode_text(text), ctx)
            }
            Message::Binary(data) => {
                observer.received(TransportKind::WebSocket, 1, data.len() as u64);
                self.on_message(Ok(Packet::Binary(data)), ctx)
            }
            Message::Continuation(item) => match self.fragments.push(item) {
                Ok(None) => {}
                Ok(Some(assembled)) => {
                    observer.received(TransportKind::WebSocket, 1, assembled.len() as u64);
                    self.on_assembled(assembled, ctx)
                }
                Err(code) => self.fail(CloseReason::TransportError, code, ctx),
            },
            Message::Ping(data) => self.on_ping(data, ctx),
            Message::Pong(_) | Message::Nop => {}
            Message::Close(_) => self.fail(CloseReason::TransportClose, CloseCode::Normal, ctx),
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
