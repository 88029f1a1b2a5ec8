//! A real voxio Engine.IO server on an ephemeral port, in its own actix system on its own
//! thread, with two workers; and small client helpers over real HTTP and WebSocket.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use actix_web::App;
use awc::ws;
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use voxio::config::Cli;
use voxio::engineio::{Engine, EngineConfig, EngineHandler};
use voxio::server::{serve, Listen, Upgrades};
use voxio::web::Voxio;

/// Two workers on an ephemeral loopback port, as the test servers run.
pub fn listen() -> Listen {
    Listen {
        workers: 2,
        shutdown_timeout_s: 1,
        ..Listen::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Engine,
    /// Where the tested endpoint is mounted.
    pub path: &'static str,
    _thread: ServerThread,
}

/// A server running in an actix system of its own, on a thread of its own; stopped and joined
/// when dropped.
pub struct ServerThread {
    handle: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `start` (which binds and returns the address and the running server) in a new
    /// actix system on a new thread.
    pub fn spawn<F, Fut>(start: F) -> (SocketAddr, ServerThread)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (SocketAddr, actix_web::dev::Server)>,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let (addr, server) = start().await;
                tx.send((addr, server.handle())).expect("report address");
                let _ = server.await;
            })
        });
        let (addr, handle) = rx.recv().expect("server started");
        (
            addr,
            ServerThread {
                handle,
                thread: Some(thread),
            },
        )
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        std::thread::spawn(move || actix_rt::System::new().block_on(handle.stop(false)))
            .join()
            .ok();
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

impl TestServer {
    /// The echo server of `voxio protocol-test` with `config`.
    pub fn echo(config: EngineConfig) -> TestServer {
        TestServer::start(config, Arc::new(voxio::protocol_test::Echo))
    }

    pub fn start(config: EngineConfig, handler: Arc<dyn EngineHandler>) -> TestServer {
        TestServer::serve(Engine::new(config, handler), "/engine.io/")
    }

    /// The Socket.IO endpoint of `voxio protocol-test` with these settings.
    pub fn socketio(config: EngineConfig, sio: voxio::socketio::SocketIoConfig) -> TestServer {
        let endpoints = voxio::protocol_test::ProtocolTest::with_config(config, sio);
        TestServer::serve(endpoints.socketio, "/socket.io/")
    }

    pub fn serve(engine: Engine, path: &'static str) -> TestServer {
        let served = engine.clone();
        let (addr, thread) = ServerThread::spawn(move || async move {
            let upgrades = Upgrades::default().route(path, served.clone());
            let (server, addr) = serve(&listen(), upgrades, move || {
                App::new().service(served.resource(path))
            })
            .expect("bind");
            (addr, server)
        });
        TestServer {
            addr,
            engine,
            path,
            _thread: thread,
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!("http://{}{}?EIO=4&{query}", self.addr, self.path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}{}?EIO=4&{query}", self.addr, self.path)
    }

    /// Waits (bounded) until the server holds `n` sessions.
    pub async fn wait_sessions(&self, n: usize) {
        for _ in 0..200 {
            if self.engine.session_count() == n {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.engine.session_count(), n, "session count");
    }
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().limit(2000))
        .timeout(Duration::from_secs(10))
        .finish()
}

/// An HTTP answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    /// The JSON error code of an Engine.IO error answer.
    pub fn code(&self) -> i64 {
        let json: serde_json::Value = serde_json::from_slice(&self.body).expect("json error body");
        json["code"].as_i64().expect("code")
    }
}

pub async fn get(client: &awc::Client, url: &str) -> Answer {
    let mut res = client.get(url).send().await.expect("GET");
    let body = res.body().limit(10_000_000).await.expect("body");
    Answer {
        status: res.status().as_u16(),
        body,
    }
}

pub async fn post(client: &awc::Client, url: &str, body: impl Into<Bytes>) -> Answer {
    let mut res = client
        .post(url)
        .content_type("text/plain;charset=UTF-8")
        .send_body(body.into())
        .await
        .expect("POST");
    let body = res.body().limit(10_000_000).await.expect("body");
    Answer {
        status: res.status().as_u16(),
        body,
    }
}

/// Opens a polling session; returns its sid and the open packet's JSON.
pub async fn open_polling(
    client: &awc::Client,
    server: &TestServer,
) -> (String, serde_json::Value) {
    let answer = get(client, &server.url("transport=polling")).await;
    assert_eq!(answer.status, 200, "handshake: {}", answer.text());
    let text = answer.text();
    assert!(text.starts_with('0'), "open packet: {text}");
    let open: serde_json::Value = serde_json::from_str(&text[1..]).expect("open json");
    (open["sid"].as_str().expect("sid").to_owned(), open)
}

pub type WsConn = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

pub async fn ws_connect(url: &str) -> WsConn {
    let (res, conn) = client()
        .ws(url)
        .max_frame_size(10_000_000)
        .connect()
        .await
        .expect("websocket connect");
    assert_eq!(res.status().as_u16(), 101);
    conn
}

/// The next data frame, answering WebSocket pings; `None` once closed.
pub async fn ws_next(conn: &mut WsConn) -> Option<ws::Frame> {
    loop {
        let frame = actix_rt::time::timeout(Duration::from_secs(5), conn.next())
            .await
            .expect("frame within 5 s")?
            .ok()?;
        match frame {
            ws::Frame::Ping(data) => conn.send(ws::Message::Pong(data)).await.ok()?,
            ws::Frame::Close(_) => return Some(frame),
            other => return Some(other),
        }
    }
}

pub async fn ws_text(conn: &mut WsConn) -> String {
    match ws_next(conn).await {
        Some(ws::Frame::Text(bytes)) => String::from_utf8(bytes.to_vec()).expect("utf-8"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

pub async fn ws_send(conn: &mut WsConn, text: &str) {
    conn.send(ws::Message::Text(text.into()))
        .await
        .expect("send");
}

/// Reads until the server closes; returns the close code.
pub async fn ws_closed(conn: &mut WsConn) -> Option<u16> {
    loop {
        match ws_next(conn).await {
            Some(ws::Frame::Close(reason)) => return reason.map(|r| u16::from(r.code)),
            None => return None,
            Some(_) => {}
        }
    }
}

/// Sends raw bytes on a fresh TCP connection (for requests no well-behaved client would make).
pub async fn raw_connect(addr: SocketAddr, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}

/// Reads an HTTP/1.1 response head (and whatever body came with it) within `within`;
/// returns the status code and the text read.
pub async fn raw_response(stream: &mut tokio::net::TcpStream, within: Duration) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        buf.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if read == 0 || buf.len() >= head_end + 4 + length {
                let status = text[9..12].parse().expect("status code");
                return (status, text);
            }
        }
        if read == 0 {
            panic!("connection closed before a response: {text:?}");
        }
    }
}

/// The full voxio app, in its own actix system.
pub struct AppServer {
    pub addr: SocketAddr,
    _thread: ServerThread,
}

impl AppServer {
    /// The app with the pipeline off (`--pipeline none`) and these extra arguments.
    pub fn start(extra: &[&str]) -> AppServer {
        let mut args = vec!["--pipeline", "none"];
        args.extend_from_slice(extra);
        AppServer::with_args(&args)
    }

    /// The app with PIN 246810 and exactly these extra arguments.
    pub fn with_args(extra: &[&str]) -> AppServer {
        let mut argv = vec!["voxio", "--pin", "246810", "--static-dir", "static"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).expect("arguments");
        let (addr, thread) = ServerThread::spawn(move || async move {
            let voxio = Voxio::build(&cli.server).await.expect("build").voxio;
            let (server, addr) = serve(&listen(), voxio.upgrades(), move || {
                App::new()
                    .wrap(voxio.sessions())
                    .wrap(voxio::web::security_headers())
                    .configure(voxio.configure())
            })
            .expect("bind");
            (addr, server)
        });
        AppServer {
            addr,
            _thread: thread,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A `redis-server` of the test's own.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/test)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Calls made to Redis so far, but for INFO itself.
    pub fn commands(&self) -> u64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .unwrap();
        info.lines()
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("-CONT");
        }
        self.stop();
    }
}
