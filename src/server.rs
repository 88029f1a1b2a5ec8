//! How voxio listens: actix-server accepts TCP (or TLS) connections, actix-http's HTTP/1
//! service runs each one, and the actix-web `App` answers every request, except one that asks
//! for a WebSocket. That one the HTTP dispatcher hands over, with the connection itself,
//! through actix-http's upgrade hook: the Engine.IO engine mounted at the request's path
//! answers `101` and its connection actor owns the stream from then on. Nothing of the HTTP
//! layer (its buffers, its payload channel, the `App`'s middleware, the session middleware
//! among them) stays between a WebSocket and its actor, and no middleware can write a cookie
//! into an upgrade: the request never reaches it.
//!
//! ```no_run
//! # use voxio::engineio::Engine;
//! # async fn run(engine: Engine) -> std::io::Result<()> {
//! let upgrades = voxio::server::Upgrades::default().route("/socket.io/", engine.clone());
//! let listen = voxio::server::Listen::new("127.0.0.1:8080".parse().unwrap());
//! let (server, addr) = voxio::server::serve(&listen, upgrades, move || {
//!     actix_web::App::new().service(engine.resource("/socket.io/"))
//! })?;
//! server.await
//! # }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::{BoxBody, MessageBody};
use actix_http::{h1, HttpService, HttpServiceBuilder, Request, Response};
use actix_server::Server;
use actix_service::{
    fn_factory, fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::AppConfig;
use actix_web::HttpResponse;

use crate::engineio::{refuse_upgrade, Engine, WsStream};

/// The Engine.IO engines that take WebSockets, by the exact path they are mounted at.
#[derive(Clone, Default)]
pub struct Upgrades {
    routes: Arc<Vec<(String, Engine)>>,
}

impl Upgrades {
    /// WebSockets asking for `path` go to `engine`.
    pub fn route(mut self, path: &str, engine: Engine) -> Upgrades {
        Arc::make_mut(&mut self.routes).push((path.to_owned(), engine));
        self
    }

    /// Hands the connection to the engine mounted at the request's path; any other path (or a
    /// `CONNECT`, the other request actix-http hands over) gets `404` and the connection ends.
    async fn serve<T: WsStream>(self, req: Request, framed: Framed<T, h1::Codec>) {
        let path = req.path();
        match self.routes.iter().find(|(mounted, _)| mounted == path) {
            Some((_, engine)) => engine.websocket(req, framed).await,
            None => refuse_upgrade(framed, HttpResponse::NotFound().finish()).await,
        }
    }
}

/// Where and how to listen.
pub struct Listen {
    pub addr: SocketAddr,
    /// Worker threads; 0 for one per core.
    pub workers: usize,
    /// Connections waiting to be accepted.
    pub backlog: u32,
    /// Seconds an HTTP request may still take once the server stops.
    pub shutdown_timeout_s: u64,
    /// TLS for a single node without a proxy.
    pub tls: Option<rustls::ServerConfig>,
}

impl Listen {
    /// Plain HTTP on `addr`, one worker per core.
    pub fn new(addr: SocketAddr) -> Listen {
        Listen {
            addr,
            workers: 0,
            backlog: 2048,
            shutdown_timeout_s: 2,
            tls: None,
        }
    }
}

/// The upgrade hook for connections of type `T`. A refused upgrade is answered inside it, so
/// it never fails.
fn upgrade_hook<T: WsStream>(
    upgrades: Upgrades,
) -> impl ServiceFactory<
    (Request, Framed<T, h1::Codec>),
    Config = (),
    Response = (),
    Error = actix_http::Error,
    InitError = (),
> {
    fn_factory(move || {
        let upgrades = upgrades.clone();
        async move {
            Ok(fn_service(
                move |(req, framed): (Request, Framed<T, h1::Codec>)| {
                    let upgrades = upgrades.clone();
                    async move {
                        upgrades.serve(req, framed).await;
                        Ok::<_, actix_http::Error>(())
                    }
                },
            ))
        }
    })
}

/// Binds `listen.addr` and builds the server (not yet running: await it, or spawn it and keep
/// its handle). Returns the address bound (a port of 0 becomes the one the system chose).
/// Signals are the caller's: the server is built with them off.
pub fn serve<F, I, S, B>(
    listen: &Listen,
    upgrades: Upgrades,
    app: F,
) -> std::io::Result<(Server, SocketAddr)>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as actix_service::Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let listener = bind(listen.addr, listen.backlog)?;
    let addr = listener.local_addr()?;
    let mut builder = Server::build()
        .backlog(listen.backlog)
        .disable_signals()
        .shutdown_timeout(listen.shutdown_timeout_s);
    if listen.workers > 0 {
        builder = builder.workers(listen.workers);
    }
    // Every connection without Nagle's algorithm: an ack or an event is a small write that must
    // leave at once, not wait for the peer's ACK of the previous one (with Nagle on, a reply
    // split over two writes waited up to one audio chunk period, 20 ms).
    let builder = match listen.tls.clone() {
        None => builder.listen("voxio", listener, move || {
            let app = app().into_factory().map_err(|e| e.into().error_response());
            http1::<_, _, B>(addr, false)
                .upgrade(upgrade_hook(upgrades.clone()))
                .finish(map_config(app, |_| AppConfig::default()))
                .tcp()
        })?,
        Some(tls) => builder.listen("voxio-tls", listener, move || {
            let app = app().into_factory().map_err(|e| e.into().error_response());
            http1::<_, _, B>(addr, true)
                .upgrade(upgrade_hook(upgrades.clone()))
                .finish(map_config(app, |_| AppConfig::default()))
                .rustls_0_23(tls.clone())
        })?,
    };
    Ok((builder.run(), addr))
}

/// The HTTP/1 settings of every connection, as actix-web's own server has them.
fn http1<T, S, B>(addr: SocketAddr, secure: bool) -> HttpServiceBuilder<T, S>
where
    S: ServiceFactory<Request, Config = ()>,
    S::Error: Into<Response<BoxBody>> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as actix_service::Service<Request>>::Future: 'static,
    B: MessageBody + 'static,
{
    let builder = HttpService::<T, S, B>::build()
        .keep_alive(Duration::from_secs(5))
        .client_request_timeout(Duration::from_secs(5))
        .client_disconnect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .local_addr(addr);
    if secure {
        builder.secure()
    } else {
        builder
    }
}

/// A listening socket with this backlog (the standard library's is fixed at 128).
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

impl WsStream for actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream> {}
