//! What both drivers of a session share: the engine's state ([`EngineShared`]: configuration,
//! the layer above, the registry), the process-wide [`Registry`] from sid to the actor that
//! owns the session, the counted [`SessionSlot`], the [`SessionCore`] that moves from the
//! polling actor to the WebSocket actor at an upgrade, and the heartbeat [`Timer`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use actix::{Actor, Addr, AsyncContext, Context, Recipient, SpawnHandle};
use bytes::Bytes;

use super::outbox::SessionHandle;
use super::packet::{self, OutFrame};
use super::polling::PollingSession;
use super::session::{Event, Session};
use super::sid::Sid;
use super::upgrade::SessionGone;
use super::{EngineConfig, EngineError, EngineHandler, Observer, SessionHandler, TransportKind};

/// The engine's state, shared by the HTTP dispatch and every session's actor.
pub(crate) struct EngineShared {
    pub(crate) config: EngineConfig,
    pub(crate) handler: Arc<dyn EngineHandler>,
    pub(crate) registry: Registry,
    /// Set when the server drains for a shutdown: new handshakes are refused.
    pub(crate) draining: AtomicBool,
}

impl EngineShared {
    /// `frames` as the body of one answered poll, told to the observer as sent.
    pub(crate) fn polling_payload(&self, frames: &[OutFrame]) -> Bytes {
        let body = packet::encode_payload(frames);
        self.config.observer.sent(
            TransportKind::Polling,
            frames.len() as u64,
            body.len() as u64,
        );
        body
    }
}

/// Where a session's requests go.
#[derive(Clone)]
pub(crate) enum Route {
    Polling(Addr<PollingSession>),
    /// The WebSocket connection carrying the session (only its identity matters here).
    WebSocket(Recipient<SessionGone>),
}

impl Route {
    pub(crate) fn same(&self, other: &Route) -> bool {
        match (self, other) {
            (Route::Polling(a), Route::Polling(b)) => a == b,
            (Route::WebSocket(a), Route::WebSocket(b)) => a == b,
            _ => false,
        }
    }
}

/// The process-wide map from sid to the actor that owns the session. Touched on handshakes,
/// polls and closes; never per WebSocket frame.
#[derive(Default)]
pub(crate) struct Registry {
    routes: RwLock<HashMap<Sid, Route>>,
    /// Sessions open, counted by their slots (so a full server refuses before it allocates).
    live: Arc<AtomicUsize>,
    /// A handle on each open session, held by its slot.
    handles: Arc<Mutex<HashMap<Sid, SessionHandle>>>,
    /// Sessions open per client, counted by their slots.
    per_client: Arc<Mutex<HashMap<String, usize>>>,
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Sid, Route>> {
        self.routes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Sid, Route>> {
        self.routes.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions open now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub(crate) fn get(&self, sid: Sid) -> Option<Route> {
        self.read().get(&sid).cloned()
    }

    pub(crate) fn insert(&self, sid: Sid, route: Route) {
        self.write().insert(sid, route);
    }

    /// Removes the entry only if it still routes to `route` (an upgrade may have replaced it).
    pub(crate) fn remove(&self, sid: Sid, route: &Route) {
        let mut routes = self.write();
        if routes.get(&sid).is_some_and(|r| r.same(route)) {
            routes.remove(&sid);
        }
    }

    pub(crate) fn reserve(
        &self,
        config: &EngineConfig,
        client: Option<String>,
        transport: TransportKind,
        handle: SessionHandle,
    ) -> Result<SessionSlot, EngineError> {
        if let Some(client) = &client {
            let mut counts = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let count = counts.entry(client.clone()).or_insert(0);
            if *count >= config.max_sessions_per_client {
                return Err(EngineError::TooManyFromClient);
            }
            *count += 1;
        }
        let client = client.map(|key| ClientCount {
            counts: self.per_client.clone(),
            key,
        });
        let before = self.live.fetch_add(1, Ordering::AcqRel);
        if before >= config.max_sessions {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::TooManySessions);
        }
        let sid = handle.sid();
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sid, handle);
        config.observer.opened(transport);
        Ok(SessionSlot {
            live: self.live.clone(),
            handles: self.handles.clone(),
            sid,
            transport,
            observer: config.observer.clone(),
            _client: client,
        })
    }

    pub(crate) fn handles(&self) -> Vec<SessionHandle> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// One counted session; the count goes down when the session's state is dropped.
pub(crate) struct SessionSlot {
    live: Arc<AtomicUsize>,
    handles: Arc<Mutex<HashMap<Sid, SessionHandle>>>,
    sid: Sid,
    /// The transport the session is on.
    transport: TransportKind,
    observer: Observer,
    _client: Option<ClientCount>,
}

/// One session counted against its client; the count goes down when it is dropped.
struct ClientCount {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl SessionSlot {
    /// The session moved from polling to WebSocket.
    pub(crate) fn upgraded(&mut self) {
        self.transport = TransportKind::WebSocket;
        self.observer.upgraded();
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.observer.ended(self.transport);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.sid);
    }
}

/// A session's state as its owning actor holds it; moves from the polling actor to the
/// WebSocket actor on upgrade.
pub(crate) struct SessionCore {
    pub(crate) machine: Session,
    pub(crate) handler: Box<dyn SessionHandler>,
    pub(crate) slot: SessionSlot,
}

impl SessionCore {
    /// Hands every pending event to the layer above; true once the session has closed.
    pub(crate) fn deliver(&mut self) -> bool {
        while let Some(event) = self.machine.poll_event() {
            match event {
                Event::Message(text) => self.handler.on_message(text),
                Event::Binary(data) => self.handler.on_binary(data),
                Event::Closed(reason) => {
                    self.slot.observer.closed(reason);
                    self.handler.on_close(reason)
                }
            }
        }
        self.machine.is_closed()
    }

    /// Closes the session if the layer above (or a full queue) asked for it through the outbox.
    pub(crate) fn apply_close_request(&mut self) {
        if let Some(reason) = self.machine.outbox().closing() {
            self.machine.close(reason);
        }
    }
}

/// The one heartbeat timer of an actor that drives a [`Session`]: re-armed only when the
/// machine's deadline changes, which is not per message.
#[derive(Default)]
pub(crate) struct Timer {
    armed: Option<(Instant, SpawnHandle)>,
}

impl Timer {
    pub(crate) fn rearm<A>(
        &mut self,
        deadline: Option<Instant>,
        ctx: &mut Context<A>,
        fire: fn(&mut A, &mut Context<A>),
    ) where
        A: Actor<Context = Context<A>>,
    {
        if self.armed.map(|(at, _)| at) == deadline {
            return;
        }
        if let Some((_, handle)) = self.armed.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = deadline {
            let delay = at.saturating_duration_since(Instant::now());
            let handle = ctx.run_later(delay, fire);
            self.armed = Some((at, handle));
        }
    }

    /// The armed timer fired; its handle is spent.
    pub(crate) fn fired(&mut self) {
        self.armed = None;
    }
}
