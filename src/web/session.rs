//! HTTP sessions for the page routes (login, logout, voice token), and the bypass that keeps
//! them away from realtime traffic.
//!
//! [`BypassSessions`] wraps actix-session's middleware and routes around it, explicitly, every
//! Engine.IO request and every request with an `Upgrade` header: for those there is no store
//! read, no store write, no `Set-Cookie`, so a WebSocket handshake cannot be broken by a session
//! layer writing during it. The bypass skips only the session layer: a protected route reached
//! with a spoofed `Upgrade` header simply sees no session and refuses.
//!
//! [`SessionStoreKind`] is the cookie store (default) or Redis. A Redis store answers within
//! `timeout` or fails; failures turn the page routes' answers into 503 with `Retry-After`
//! instead of 500, and for a short while after one the routes answer 503 at once rather than
//! wait on a store known to be down.

use std::future::{ready, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_session::storage::{
    CookieSessionStore, LoadError, RedisSessionStore, SaveError, SessionKey, SessionStore,
    UpdateError,
};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::error::InternalError;
use actix_web::http::header;
use actix_web::{Error, HttpResponse};

type SessionState = std::collections::HashMap<String, String>;

/// How the session store is doing, shared by the store and the bypass middleware.
#[derive(Debug, Default)]
pub struct StoreHealth {
    failures: AtomicU64,
    /// `Instant` of the last failure, as nanoseconds since `epoch`; 0 when none.
    last_failure: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

/// After a store failure, page routes answer 503 at once for this long.
const FAST_FAIL: Duration = Duration::from_millis(1000);

impl StoreHealth {
    fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    fn failed(&self) {
        let since = self.epoch().elapsed().as_nanos() as u64 + 1;
        self.last_failure.store(since, Ordering::Release);
        self.failures.fetch_add(1, Ordering::AcqRel);
    }

    fn succeeded(&self) {
        self.last_failure.store(0, Ordering::Release);
    }

    /// Whether the store failed within the last moment.
    pub fn recently_failed(&self) -> bool {
        let at = self.last_failure.load(Ordering::Acquire);
        at != 0 && self.epoch().elapsed().as_nanos() as u64 + 1 - at < FAST_FAIL.as_nanos() as u64
    }

    /// Store failures so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }
}

/// The session store in use.
#[derive(Clone)]
pub enum SessionStoreKind {
    /// State in the (signed and encrypted) cookie itself.
    Cookie,
    /// State in Redis, each operation bounded by `timeout`.
    Redis {
        store: RedisSessionStore,
        timeout: Duration,
        health: Arc<StoreHealth>,
    },
}

fn timed_out() -> anyhow::Error {
    anyhow::anyhow!("session store timed out")
}

impl SessionStoreKind {
    async fn guard<T, E>(
        &self,
        op: impl Future<Output = Result<T, E>>,
        timeout: Duration,
        health: &StoreHealth,
        on_timeout: impl FnOnce() -> E,
    ) -> Result<T, E> {
        match tokio::time::timeout(timeout, op).await {
            Ok(Ok(value)) => {
                health.succeeded();
                Ok(value)
            }
            Ok(Err(e)) => {
                health.failed();
                Err(e)
            }
            Err(_) => {
                health.failed();
                Err(on_timeout())
            }
        }
    }
}

impl SessionStore for SessionStoreKind {
    async fn load(&self, key: &SessionKey) -> Result<Option<SessionState>, LoadError> {
        match self {
            SessionStoreKind::Cookie => CookieSessionStore::default().load(key).await,
            SessionStoreKind::Redis {
                store,
                timeout,
                health,
            } => {
                self.guard(store.load(key), *timeout, health, || {
                    LoadError::Other(timed_out())
                })
                .await
            }
        }
    }

    async fn save(
        &self,
        state: SessionState,
        ttl: &actix_web::cookie::time::Duration,
    ) -> Result<SessionKey, SaveError> {
        match self {
            SessionStoreKind::Cookie => CookieSessionStore::default().save(state, ttl).await,
            SessionStoreKind::Redis {
                store,
                timeout,
                health,
            } => {
                self.guard(store.save(state, ttl), *timeout, health, || {
                    SaveError::Other(timed_out())
                })
                .await
            }
        }
    }

    async fn update(
        &self,
        key: SessionKey,
        state: SessionState,
        ttl: &actix_web::cookie::time::Duration,
    ) -> Result<SessionKey, UpdateError> {
        match self {
            SessionStoreKind::Cookie => CookieSessionStore::default().update(key, state, ttl).await,
            SessionStoreKind::Redis {
                store,
                timeout,
                health,
            } => {
                self.guard(store.update(key, state, ttl), *timeout, health, || {
                    UpdateError::Other(timed_out())
                })
                .await
            }
        }
    }

    async fn update_ttl(
        &self,
        key: &SessionKey,
        ttl: &actix_web::cookie::time::Duration,
    ) -> Result<(), anyhow::Error> {
        match self {
            SessionStoreKind::Cookie => CookieSessionStore::default().update_ttl(key, ttl).await,
            SessionStoreKind::Redis {
                store,
                timeout,
                health,
            } => {
                self.guard(store.update_ttl(key, ttl), *timeout, health, timed_out)
                    .await
            }
        }
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), anyhow::Error> {
        match self {
            SessionStoreKind::Cookie => CookieSessionStore::default().delete(key).await,
            SessionStoreKind::Redis {
                store,
                timeout,
                health,
            } => {
                self.guard(store.delete(key), *timeout, health, timed_out)
                    .await
            }
        }
    }
}

/// Whether a request goes around the session layer: Engine.IO paths and any upgrade.
pub fn bypasses_sessions(req: &ServiceRequest, realtime_prefixes: &[&str]) -> bool {
    req.headers().contains_key(header::UPGRADE)
        || realtime_prefixes
            .iter()
            .any(|prefix| req.path().starts_with(prefix))
}

/// Wraps a session middleware `T` so that realtime traffic never reaches it.
pub struct BypassSessions<T> {
    sessions: T,
    realtime_prefixes: Rc<[&'static str]>,
    health: Option<Arc<StoreHealth>>,
}

impl<T> BypassSessions<T> {
    /// `sessions` runs for every request except those under `realtime_prefixes` or with an
    /// `Upgrade` header; `health` (for a Redis store) turns store failures into 503.
    pub fn new(
        sessions: T,
        realtime_prefixes: &[&'static str],
        health: Option<Arc<StoreHealth>>,
    ) -> Self {
        BypassSessions {
            sessions,
            realtime_prefixes: realtime_prefixes.into(),
            health,
        }
    }
}

/// Shares one inner service between the bypass and the session-wrapped path.
pub struct Shared<S>(Rc<S>);

impl<S> Service<ServiceRequest> for Shared<S>
where
    S: Service<ServiceRequest>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&self, req: ServiceRequest) -> Self::Future {
        self.0.call(req)
    }
}

impl<S, T, B, B2> Transform<S, ServiceRequest> for BypassSessions<T>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
    T: Transform<
        Shared<S>,
        ServiceRequest,
        Response = ServiceResponse<B2>,
        Error = Error,
        InitError = (),
    >,
    T::Transform: 'static,
    T::Future: 'static,
    B2: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Transform = BypassService<S, T::Transform>;
    type InitError = ();
    type Future = Pin<Box<dyn Future<Output = Result<Self::Transform, ()>>>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let raw = Rc::new(service);
        let wrapped = self.sessions.new_transform(Shared(raw.clone()));
        let prefixes = self.realtime_prefixes.clone();
        let health = self.health.clone();
        Box::pin(async move {
            Ok(BypassService {
                raw,
                wrapped: Rc::new(wrapped.await?),
                prefixes,
                health,
            })
        })
    }
}

/// The middleware's service: see [`BypassSessions`].
pub struct BypassService<S, W> {
    raw: Rc<S>,
    wrapped: Rc<W>,
    prefixes: Rc<[&'static str]>,
    health: Option<Arc<StoreHealth>>,
}

fn unavailable() -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header((header::RETRY_AFTER, "1"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"code": "session_store_unavailable", "message": "The session store is unavailable; try again shortly."}))
}

impl<S, W, B, B2> Service<ServiceRequest> for BypassService<S, W>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
    W: Service<ServiceRequest, Response = ServiceResponse<B2>, Error = Error> + 'static,
    B2: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>>>>;

    fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
        self.raw.poll_ready(cx)
    }

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if bypasses_sessions(&req, &self.prefixes) {
            let fut = self.raw.call(req);
            return Box::pin(async move { Ok(fut.await?.map_into_boxed_body()) });
        }
        // Static files need no session either, but they are cheap to pass through: with the
        // cookie store no store is touched, and the session layer writes nothing unchanged.
        let Some(health) = self.health.clone() else {
            let fut = self.wrapped.call(req);
            return Box::pin(async move { Ok(fut.await?.map_into_boxed_body()) });
        };
        if health.recently_failed() {
            let (req, _) = req.into_parts();
            return Box::pin(ready(Ok(ServiceResponse::new(req, unavailable()))));
        }
        let before = health.failures();
        let fut = self.wrapped.call(req);
        Box::pin(async move {
            let result = fut.await;
            if health.failures() != before {
                // The store failed during this request: whatever the session layer made of it
                // (a 500), the answer is 503 with Retry-After.
                return match result {
                    Ok(res) => Ok(res.into_response(unavailable())),
                    Err(_) => Err(InternalError::from_response(
                        "session store unavailable",
                        unavailable(),
                    )
                    .into()),
                };
            }
            Ok(result?.map_into_boxed_body())
        })
    }
}
