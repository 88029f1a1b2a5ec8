//! The HTTP long-polling driver: one actor per polling session.
//!
//! The actor lives on the worker that took the handshake; GETs and POSTs may land on any worker
//! and reach it through its `Addr` (found in the registry). It owns the session's state machine
//! and the layer above's handler until an upgrade hands both to a WebSocket actor.
//!
//! Concurrency rules: one GET and one POST may be in flight at a time; a second of either closes
//! the session (transport error) and is answered 400. A request counts as in flight while its
//! HTTP handler is alive (it holds the other end of a oneshot), so a client that gives up on a
//! poll does not leave a phantom request behind.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use actix::{
    Actor, ActorContext, AsyncContext, Context, Handler, Message, Recipient, StreamHandler,
};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::packet::{self, OutFrame};
use super::shared::{EngineShared, Route, SessionCore, Timer};
use super::sid::Sid;
use super::upgrade::{SessionGone, UpgradeAbort, UpgradeComplete, UpgradeProbed, UpgradeStart};
use super::{CloseReason, EngineError, TransportKind};

/// The answer to one GET.
pub(crate) enum PollReply {
    /// A payload to send with 200.
    Payload(Bytes),
    /// The poll broke a rule.
    Refused(EngineError),
}

/// A GET arrived; the answer comes on `reply`, at once or when packets are queued.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Poll {
    pub(crate) reply: oneshot::Sender<PollReply>,
}

/// A POST arrived and its body is about to be read. The returned guard marks it in flight until
/// [`PostData`] (or until the HTTP handler is dropped).
#[derive(Message)]
#[rtype(result = "Result<PostGuard, EngineError>")]
pub(crate) struct PostStart;

/// Holds a POST in flight while alive.
pub(crate) struct PostGuard(#[allow(dead_code)] oneshot::Sender<()>);

/// A POST's body, read in full.
#[derive(Message)]
#[rtype(result = "Result<(), EngineError>")]
pub(crate) struct PostData {
    pub(crate) body: Bytes,
    pub(crate) _guard: PostGuard,
}

/// One polling session.
pub(crate) struct PollingSession {
    shared: Arc<EngineShared>,
    sid: Sid,
    /// `None` once handed over to a WebSocket.
    core: Option<SessionCore>,
    timer: Timer,
    pending_get: Option<oneshot::Sender<PollReply>>,
    /// The receiving end of the in-flight POST's guard.
    post_in_flight: Option<oneshot::Receiver<()>>,
    probe: Option<Recipient<SessionGone>>,
    /// Closed by the server, waiting for the client's last poll.
    lingering: bool,
}

impl PollingSession {
    pub(crate) fn new(shared: Arc<EngineShared>, core: SessionCore) -> PollingSession {
        PollingSession {
            shared,
            sid: core.machine.sid(),
            core: Some(core),
            timer: Timer::default(),
            pending_get: None,
            post_in_flight: None,
            probe: None,
            lingering: false,
        }
    }

    /// After anything that may have changed the session: deliver events, answer a waiting
    /// poll, re-arm the timer, and finish if the session closed.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        core.apply_close_request();
        core.deliver();
        let deadline = core.machine.poll_timeout();
        let reason = core.machine.close_reason();
        let answered = self.flush_get();
        self.timer.rearm(deadline, ctx, Self::on_timer);
        let Some(reason) = reason else {
            return;
        };
        // A session the server closed waits (bounded) for the client's next poll, which takes
        // what was still queued and the close packet; otherwise the client is gone or broke
        // the protocol, and there is no one to wait for.
        if answered || !reason.is_server_side() {
            ctx.stop();
        } else if !self.lingering {
            self.lingering = true;
            ctx.run_later(self.shared.config.ping_timeout, |_, ctx| ctx.stop());
        }
    }

    /// Answers the waiting GET if there is something to say; true if it was answered.
    fn flush_get(&mut self) -> bool {
        let Some(core) = self.core.as_ref() else {
            return false;
        };
        let Some(reply) = self.pending_get.take() else {
            return false;
        };
        if reply.is_closed() {
            return false;
        }
        let outbox = core.machine.outbox();
        let mut frames = outbox.drain_payload(self.shared.config.max_payload);
        if core.machine.is_closed() {
            // The client's own close packet ends its waiting poll with noop, as the reference
            // server does; a close from this side is announced.
            let by_client = core.machine.close_reason() == Some(CloseReason::TransportClose);
            frames.push(if by_client {
                OutFrame::NOOP
            } else {
                OutFrame::CLOSE
            });
        } else if frames.is_empty() {
            if core.machine.polls_get_noop() {
                frames.push(OutFrame::NOOP);
            } else {
                self.pending_get = Some(reply);
                return false;
            }
        }
        let body = self.shared.polling_payload(&frames);
        if reply.send(PollReply::Payload(body)).is_err() {
            // The client went away between the check and now: keep its packets for the next poll.
            frames.retain(|f| *f != OutFrame::CLOSE && *f != OutFrame::NOOP);
            outbox.requeue_front(frames);
            return false;
        }
        true
    }

    fn on_timer(&mut self, ctx: &mut Context<Self>) {
        self.timer.fired();
        if let Some(core) = self.core.as_mut() {
            core.machine.handle_timeout(Instant::now());
        }
        self.settle(ctx);
    }

    fn transport_error(&mut self, ctx: &mut Context<Self>) {
        if let Some(core) = self.core.as_mut() {
            core.machine.handle_transport_error();
        }
        self.settle(ctx);
    }
}

impl Actor for PollingSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(core) = self.core.as_ref() {
            // Wake on every push to the outbox and on close requests from the layer above.
            let outbox = core.machine.outbox().clone();
            ctx.add_stream(futures_util::stream::unfold(outbox, |outbox| async move {
                outbox.changed().await;
                Some(((), outbox))
            }));
        }
        self.settle(ctx);
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        if let Some(core) = self.core.as_mut() {
            // Stopped from outside (the system shutting down) with the session still open.
            core.machine.close(CloseReason::ServerShutdown);
            core.deliver();
            self.flush_get();
        }
        self.shared
            .registry
            .remove(self.sid, &Route::Polling(ctx.address()));
        if let Some(probe) = self.probe.take() {
            probe.do_send(SessionGone);
        }
    }
}

impl StreamHandler<()> for PollingSession {
    fn handle(&mut self, _: (), ctx: &mut Context<Self>) {
        self.settle(ctx);
    }
}

impl Handler<Poll> for PollingSession {
    type Result = ();

    fn handle(&mut self, msg: Poll, ctx: &mut Context<Self>) {
        let overlap = self.pending_get.as_ref().is_some_and(|p| !p.is_closed());
        if overlap {
            let _ = msg.reply.send(PollReply::Refused(EngineError::BadRequest));
            self.transport_error(ctx);
            return;
        }
        self.pending_get = Some(msg.reply);
        self.settle(ctx);
    }
}

impl Handler<PostStart> for PollingSession {
    type Result = Result<PostGuard, EngineError>;

    fn handle(&mut self, _: PostStart, ctx: &mut Context<Self>) -> Self::Result {
        let overlap = self
            .post_in_flight
            .as_mut()
            .is_some_and(|rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        if overlap {
            self.transport_error(ctx);
            return Err(EngineError::BadRequest);
        }
        let (guard, in_flight) = oneshot::channel();
        self.post_in_flight = Some(in_flight);
        Ok(PostGuard(guard))
    }
}

impl Handler<PostData> for PollingSession {
    type Result = Result<(), EngineError>;

    fn handle(&mut self, msg: PostData, ctx: &mut Context<Self>) -> Self::Result {
        self.post_in_flight = None;
        let Some(core) = self.core.as_mut() else {
            return Err(EngineError::BadRequest);
        };
        let now = Instant::now();
        let machine = &mut core.machine;
        let bytes = msg.body.len() as u64;
        let mut packets = 0;
        let decoded = packet::decode_payload(msg.body, |packet| {
            packets += 1;
            machine.handle_packet(packet, now);
            if machine.is_closed() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        self.shared
            .config
            .observer
            .received(TransportKind::Polling, packets, bytes);
        if decoded.is_err() {
            machine.handle_parse_error();
        }
        self.settle(ctx);
        decoded.map_err(|_| EngineError::BadRequest)
    }
}

impl Handler<UpgradeStart> for PollingSession {
    type Result = bool;

    fn handle(&mut self, msg: UpgradeStart, _: &mut Context<Self>) -> bool {
        let Some(core) = self.core.as_mut() else {
            return false;
        };
        if core.machine.handle_upgrade_start().is_err() {
            return false;
        }
        self.probe = Some(msg.ws);
        true
    }
}

impl Handler<UpgradeProbed> for PollingSession {
    type Result = ();

    fn handle(&mut self, _: UpgradeProbed, ctx: &mut Context<Self>) {
        if let Some(core) = self.core.as_mut() {
            core.machine.handle_probe();
        }
        // A waiting poll is now answered with noop so the client can pause polling.
        self.settle(ctx);
    }
}

impl Handler<UpgradeAbort> for PollingSession {
    type Result = ();

    fn handle(&mut self, _: UpgradeAbort, ctx: &mut Context<Self>) {
        self.probe = None;
        if let Some(core) = self.core.as_mut() {
            core.machine.handle_upgrade_abort();
        }
        self.settle(ctx);
    }
}

impl Handler<UpgradeComplete> for PollingSession {
    type Result = Option<SessionCore>;

    fn handle(&mut self, _: UpgradeComplete, ctx: &mut Context<Self>) -> Option<SessionCore> {
        let ws = self.probe.take()?;
        let core = self.core.as_mut()?;
        core.machine.handle_upgrade_complete().ok()?;
        // A poll still waiting gets noop; later ones are refused (the registry now says
        // WebSocket). Undelivered packets stay in the outbox for the WebSocket to send.
        if let Some(reply) = self.pending_get.take() {
            let _ = reply.send(PollReply::Payload(packet::encode_payload([
                &OutFrame::NOOP,
            ])));
        }
        self.shared.registry.insert(self.sid, Route::WebSocket(ws));
        ctx.stop();
        self.core.take()
    }
}
