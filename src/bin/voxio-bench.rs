//! `voxio-bench`: a Socket.IO load generator for `/voice` servers (voxio or any peer with the
//! same behaviour: PIN in CONNECT auth, `audio` acknowledged with `{seq, bytes}`).
//!
//! `voxio-bench stream` connects N clients (WebSocket, or polling upgraded to WebSocket), each
//! streaming binary `audio` events at a fixed rate with acks, and prints connect time, ack
//! round-trip percentiles, acks per second achieved against offered, errors, disconnects,
//! out-of-order acks, and, given the server's PID, its CPU time per 1,000 acked chunks and RSS;
//! plus the load generator's own CPU, so it is visible which side was measured.
//! `voxio-bench idle` holds N idle connections and prints the server's RSS growth per
//! connection. Results can be written as JSON. One thread runs all clients.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use voxio::bench_voice::cpu_seconds;

#[derive(Parser)]
#[command(about = "Socket.IO /voice load generator")]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Streaming clients with acks.
    Stream {
        #[command(flatten)]
        common: Common,
        /// Chunks per second per client.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Bytes per chunk.
        #[arg(long, default_value_t = 640)]
        chunk: usize,
        /// Seconds measured (after all clients connected).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Reads the JSON results in a directory and prints the Markdown tables; writes a PNG
    /// plot of ack latency and server CPU per 1,000 acks, by server and client count.
    Report {
        /// Directory of `*.json` results (from `--json`).
        #[arg(long, default_value = "bench/results")]
        dir: std::path::PathBuf,
        /// Where to write the plot.
        #[arg(long, default_value = "bench/results/latest.png")]
        png: std::path::PathBuf,
        /// A TrueType font for the plot's labels.
        #[arg(
            long,
            default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
        )]
        font: std::path::PathBuf,
    },
    /// Idle connections.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Seconds to hold them.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// PIN sent in CONNECT auth.
    #[arg(long, default_value = "246810")]
    pin: String,
    /// `websocket`, or `upgrade` (polling handshake, then upgrade).
    #[arg(long, default_value = "websocket")]
    transport: String,
    /// The server's PID, for its CPU and memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// A label for the result (the server's name).
    #[arg(long, default_value = "server")]
    label: String,
    /// Seconds to spend connecting at most (a server that cannot take the clients is not
    /// waited on forever).
    #[arg(long, default_value_t = 60)]
    connect_budget_s: u64,
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A polling handshake on a raw HTTP/1.1 connection; returns the sid.
async fn polling_sid(addr: &str) -> Result<String, String> {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let start = text.find("\"sid\":\"").ok_or("no sid in the handshake")? + 7;
    let end = text[start..].find('"').ok_or("no sid in the handshake")?;
    Ok(text[start..start + end].to_owned())
}

/// Connects one client to `/voice`; returns the socket once the namespace answered.
async fn connect(common: &Common) -> Result<Ws, String> {
    let addr = &common.addr;
    let (url, sid) = if common.transport == "upgrade" {
        let sid = polling_sid(addr).await?;
        (
            format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={sid}"),
            Some(sid),
        )
    } else {
        (
            format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
            None,
        )
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    // tungstenite's default 128 KiB read buffer is zeroed on every read: at thousands of small
    // frames per second that memset was a third of the load generator's CPU.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    if sid.is_some() {
        ws.send(Message::text("2probe"))
            .await
            .map_err(|e| e.to_string())?;
        expect(&mut ws, |t| t == "3probe").await?;
        ws.send(Message::text("5"))
            .await
            .map_err(|e| e.to_string())?;
    } else {
        expect(&mut ws, |t| t.starts_with('0')).await?;
    }
    // The server lets one PIN attempt per client address be in flight at a time, and every
    // client here comes from one address: a refusal with `rate_limited` is waited out and the
    // CONNECT sent again, as a client application would.
    let mut attempts = 0;
    loop {
        ws.send(Message::text(format!(
            r#"40/voice,{{"pin":"{}"}}"#,
            common.pin
        )))
        .await
        .map_err(|e| e.to_string())?;
        match expect(&mut ws, |t| t.starts_with("40/voice,")).await {
            Ok(()) => return Ok(ws),
            Err(refused) if attempts < 50 => match retry_after_ms(&refused) {
                Some(wait) => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
                }
                None => return Err(refused),
            },
            Err(e) => return Err(e),
        }
    }
}

/// The wait a `rate_limited` CONNECT_ERROR asks for (its `retryAfterMs`); `None` for any other
/// refusal.
fn retry_after_ms(refusal: &str) -> Option<u64> {
    let json = &refusal[refusal.find('{')?..];
    let data = serde_json::from_str::<serde_json::Value>(json).ok()?["data"].take();
    (data["code"] == "rate_limited").then(|| data["retryAfterMs"].as_u64().unwrap_or(500))
}

async fn expect(ws: &mut Ws, want: impl Fn(&str) -> bool) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "timed out".to_owned())?;
        match next {
            Some(Ok(Message::Text(t))) => {
                if t.as_str().starts_with("44/voice") {
                    return Err(format!("refused: {t}"));
                }
                if t.as_str() == "2" {
                    ws.send(Message::text("3"))
                        .await
                        .map_err(|e| e.to_string())?;
                } else if want(t.as_str()) {
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        }
    }
}

/// What one streaming client saw.
#[derive(Default)]
struct ClientResult {
    rtts_us: Vec<u32>,
    sent: u64,
    acked: u64,
    out_of_order: u64,
    disconnected: bool,
}

/// Appends a client WebSocket frame header: FIN, `opcode`, and the mask bit with an all-zero
/// key. RFC 6455 lets the client pick any key and the server must unmask with it; a zero key
/// leaves the payload as it is, so no per-frame masking work (the usual load-generator trick).
fn client_frame_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
}

/// One streaming client's state, shared by the one sender loop and the client's reader task
/// (all on one thread).
struct Client {
    write: tokio::net::tcp::OwnedWriteHalf,
    /// Bytes the socket did not take yet (the server is not reading): sent first next time.
    pending: Vec<u8>,
    /// The next chunk's frames, rebuilt in place for each chunk (no allocation per chunk).
    scratch: Vec<u8>,
    sent_at: Vec<Instant>,
    next_id: u64,
    last_acked: u64,
    result: ClientResult,
    done: bool,
}

/// Most bytes a client may have waiting for its socket before it counts as disconnected.
const MAX_PENDING: usize = 1 << 20;
/// Send times remembered per client (acks older than this many chunks are not timed).
const RING: usize = 4096;

impl Client {
    /// Writes `bytes` now if the socket takes them (never waits); keeps the rest.
    fn write_now(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        let mut offset = 0;
        if self.pending.is_empty() {
            loop {
                match self.write.try_write(&bytes[offset..]) {
                    Ok(n) => {
                        offset += n;
                        if offset == bytes.len() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.done = true;
                        self.result.disconnected = true;
                        return;
                    }
                }
            }
        }
        self.pending.extend_from_slice(&bytes[offset..]);
        if self.pending.len() > MAX_PENDING {
            self.done = true;
            self.result.disconnected = true;
        }
    }

    /// Tries to send what the socket did not take before.
    fn flush(&mut self) {
        while !self.pending.is_empty() && !self.done {
            match self.write.try_write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.done = true;
                    self.result.disconnected = true;
                }
            }
        }
    }

    /// Sends the next chunk: the BINARY_EVENT header and its attachment, one write.
    fn send_chunk(&mut self, chunk: &[u8]) {
        use std::io::Write;
        let id = self.next_id;
        self.next_id += 1;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut text = [0u8; 96];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = write!(
            cursor,
            r#"451-/voice,{id}["audio",{{"_placeholder":true,"num":0}}]"#
        );
        let len = cursor.position() as usize;
        client_frame_header(&mut scratch, 0x1, len);
        scratch.extend_from_slice(&text[..len]);
        client_frame_header(&mut scratch, 0x2, chunk.len());
        scratch.extend_from_slice(chunk);
        self.sent_at[(id as usize) % RING] = Instant::now();
        self.write_now(&scratch);
        self.scratch = scratch;
        self.result.sent += 1;
    }

    /// A text message from the server.
    fn on_text(&mut self, text: &[u8]) {
        if let Some(rest) = text.strip_prefix(b"43/voice,") {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let id: u64 = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let rtt = self.sent_at[(id as usize) % RING].elapsed();
            self.result
                .rtts_us
                .push(rtt.as_micros().min(u128::from(u32::MAX)) as u32);
            self.result.acked += 1;
            if id != self.last_acked + 1 {
                self.result.out_of_order += 1;
            }
            self.last_acked = id;
        } else if text == b"2" {
            let mut pong = Vec::with_capacity(7);
            client_frame_header(&mut pong, 0x1, 1);
            pong.push(b'3');
            self.write_now(&pong);
        }
    }
}

/// Reads one client's socket until it closes or `stop` is set: server frames (never masked),
/// several per read when they came together.
async fn read_client(
    client: std::rc::Rc<std::cell::RefCell<Client>>,
    mut read: tokio::net::tcp::OwnedReadHalf,
    until: Instant,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 4096];
    let drain_until = until + Duration::from_secs(2);
    loop {
        {
            let c = client.borrow();
            if c.done || (Instant::now() >= until && c.result.acked >= c.result.sent) {
                break;
            }
        }
        let n = match tokio::time::timeout_at(
            tokio::time::Instant::from_std(drain_until),
            read.read(&mut chunk),
        )
        .await
        {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                let mut c = client.borrow_mut();
                c.result.disconnected = Instant::now() < until;
                c.done = true;
                break;
            }
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let mut c = client.borrow_mut();
        while let Some((opcode, start, end)) = parse_server_frame(&buf[at..]) {
            match opcode {
                0x1 => c.on_text(&buf[at + start..at + end]),
                0x8 => {
                    c.result.disconnected = Instant::now() < until;
                    c.done = true;
                }
                _ => {}
            }
            at += end;
        }
        buf.drain(..at);
    }
}

/// A complete unmasked server frame at the start of `buf`: (opcode, payload start, end).
fn parse_server_frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, start): (usize, usize) = match buf[1] & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes) as usize, 10)
        }
        n => (usize::from(n), 2),
    };
    let end = start.checked_add(len)?;
    (buf.len() >= end).then_some((opcode, start, end))
}

/// Streams from every client: one loop sends every due chunk (client `k % n` for the k-th
/// chunk overall, so the clients are spread evenly over each period), waking once a
/// millisecond at most; each client's reader is a task. No timer per client, one write per
/// chunk.
async fn stream_all(
    sockets: Vec<Ws>,
    rate: u32,
    chunk: Bytes,
    start: Instant,
    until: Instant,
) -> Vec<ClientResult> {
    use std::cell::RefCell;
    use std::rc::Rc;
    let n = sockets.len();
    if n == 0 {
        return Vec::new();
    }
    let mut clients = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for ws in sockets {
        let (read, write) = ws.into_inner().into_split();
        let client = Rc::new(RefCell::new(Client {
            write,
            pending: Vec::new(),
            scratch: Vec::with_capacity(chunk.len() + 128),
            sent_at: vec![start; RING],
            next_id: 1,
            last_acked: 0,
            result: ClientResult::default(),
            done: false,
        }));
        readers.push(tokio::task::spawn_local(read_client(
            client.clone(),
            read,
            until,
        )));
        clients.push(client);
    }
    let per_second = f64::from(rate) * n as f64;
    let mut due_sent: u64 = 0;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(start),
        Duration::from_millis(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now().min(until);
        let due = (now.saturating_duration_since(start).as_secs_f64() * per_second) as u64;
        for c in &clients {
            let mut c = c.borrow_mut();
            if !c.pending.is_empty() {
                c.flush();
            }
        }
        while due_sent < due {
            let mut c = clients[(due_sent % n as u64) as usize].borrow_mut();
            c.send_chunk(&chunk);
            due_sent += 1;
        }
        if Instant::now() >= until {
            break;
        }
    }
    // Whatever the sockets did not take yet goes out while the acks drain.
    let drain_until = until + Duration::from_secs(2);
    while Instant::now() < drain_until
        && clients
            .iter()
            .any(|c| !c.borrow().pending.is_empty() && !c.borrow().done)
    {
        tick.tick().await;
        for c in &clients {
            c.borrow_mut().flush();
        }
    }
    futures_util::future::join_all(readers).await;
    clients
        .into_iter()
        .map(|c| match Rc::try_unwrap(c) {
            Ok(cell) => cell.into_inner().result,
            Err(shared) => std::mem::take(&mut shared.borrow_mut().result),
        })
        .collect()
}

#[derive(Serialize, serde::Deserialize)]
struct StreamReport {
    label: String,
    transport: String,
    clients: usize,
    connected: usize,
    connect_ms_p50: f64,
    connect_ms_p99: f64,
    rate: u32,
    seconds: u64,
    offered_per_s: f64,
    acked_per_s: f64,
    ack_ms: Percentiles,
    errors: usize,
    disconnects: usize,
    out_of_order: u64,
    server_cpu_ms_per_1000: Option<f64>,
    server_rss_mib: Option<f64>,
    loadgen_cpu_s: f64,
}

#[derive(Serialize, serde::Deserialize, Default)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn percentiles_ms(mut us: Vec<u32>) -> Percentiles {
    if us.is_empty() {
        return Percentiles::default();
    }
    us.sort_unstable();
    let at = |p: f64| us[((p / 100.0) * (us.len() - 1) as f64).round() as usize] as f64 / 1000.0;
    Percentiles {
        p50: at(50.0),
        p95: at(95.0),
        p99: at(99.0),
        p999: at(99.9),
        max: *us.last().unwrap_or(&0) as f64 / 1000.0,
    }
}

async fn connect_all(common: &Common) -> (Vec<Ws>, Vec<f64>, usize) {
    let mut sockets = Vec::with_capacity(common.clients);
    let mut times = Vec::with_capacity(common.clients);
    let mut errors = 0;
    // Connect in waves of 50 so the server sees a burst, not a stampede of SYNs.
    let budget = Instant::now() + Duration::from_secs(common.connect_budget_s);
    for wave in 0..common.clients.div_ceil(50) {
        if Instant::now() > budget {
            errors += common.clients - wave * 50;
            eprintln!(
                "connect budget spent: {} clients not attempted",
                common.clients - wave * 50
            );
            break;
        }
        let n = 50.min(common.clients - wave * 50);
        let attempts = (0..n).map(|_| async {
            let started = Instant::now();
            (connect(common).await, started.elapsed())
        });
        for (result, took) in futures_util::future::join_all(attempts).await {
            match result {
                Ok(ws) => {
                    sockets.push(ws);
                    times.push(took.as_secs_f64() * 1000.0);
                }
                Err(e) => {
                    errors += 1;
                    if errors <= 3 {
                        eprintln!("connect failed: {e}");
                    }
                }
            }
        }
    }
    (sockets, times, errors)
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

fn write_json(path: &Option<std::path::PathBuf>, value: &impl Serialize) {
    if let Some(path) = path {
        if let Ok(json) = serde_json::to_string_pretty(value) {
            let _ = std::fs::write(path, json);
        }
    }
}

/// Whether a run's server acknowledged at least 90% of the offered chunks.
fn keeps_up(r: &StreamReport) -> bool {
    r.connected > 0 && r.acked_per_s >= 0.9 * r.offered_per_s
}

/// Prints the tables and draws the plot from the results in `dir`.
fn report(
    dir: &std::path::Path,
    png: &std::path::Path,
    font: &std::path::Path,
) -> Result<(), String> {
    let mut streams: Vec<StreamReport> = Vec::new();
    let mut idles: Vec<serde_json::Value> = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        if let Ok(stream) = serde_json::from_str::<StreamReport>(&text) {
            streams.push(stream);
        } else if let Ok(idle) = serde_json::from_str::<serde_json::Value>(&text) {
            if idle.get("rss_kib_per_connection").is_some() {
                idles.push(idle);
            }
        }
    }
    let opt = |v: Option<f64>, digits: usize| {
        v.map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    println!("| server | transport | clients | acks/s (offered) | ack ms p50 / p95 / p99 / p99.9 / max | server CPU ms per 1,000 acks | server RSS MiB | errors | disconnects | out of order | load generator CPU s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &streams {
        let a = &r.ack_ms;
        // CPU per ack means nothing for a server that fell behind (its backlog is worked off
        // after the window): shown only for runs that kept up with the offered load.
        let cpu = if keeps_up(r) {
            opt(r.server_cpu_ms_per_1000, 1)
        } else {
            "behind".to_owned()
        };
        println!(
            "| {} | {} | {} | {:.0} ({:.0}) | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} | {} | {} | {} | {} | {} | {:.1} |",
            r.label, r.transport, r.clients, r.acked_per_s, r.offered_per_s, a.p50, a.p95, a.p99, a.p999, a.max,
            cpu, opt(r.server_rss_mib, 1), r.errors, r.disconnects, r.out_of_order, r.loadgen_cpu_s
        );
    }
    println!();
    println!("| server | idle connections | errors | RSS per connection KiB |");
    println!("|---|---|---|---|");
    for i in &idles {
        println!(
            "| {} | {} | {} | {} |",
            i["label"].as_str().unwrap_or("?"),
            i["connections"],
            i["errors"],
            opt(i["rss_kib_per_connection"].as_f64(), 1)
        );
    }
    plot(&streams, png, font)
}

fn plot(
    streams: &[StreamReport],
    png: &std::path::Path,
    font: &std::path::Path,
) -> Result<(), String> {
    use plotters::prelude::*;
    let bytes = std::fs::read(font).map_err(|e| format!("{}: {e}", font.display()))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| "the font could not be loaded".to_owned())?;
    let mut labels: Vec<&str> = streams
        .iter()
        .filter(|r| r.transport == "websocket")
        .map(|r| r.label.as_str())
        .collect();
    labels.dedup();
    labels.sort_unstable();
    labels.dedup();
    let root = BitMapBackend::new(png, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(700);
    let max_clients = streams.iter().map(|r| r.clients).max().unwrap_or(100) as f64;
    let series = |label: &str| -> Vec<&StreamReport> {
        let mut v: Vec<&StreamReport> = streams
            .iter()
            .filter(|r| r.label == label && r.transport == "websocket")
            // A run with no ack has no latency to draw.
            .filter(|r| r.acked_per_s > 0.0)
            .collect();
        v.sort_by_key(|r| r.clients);
        v
    };
    let max_ms = streams.iter().map(|r| r.ack_ms.p99).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "ack round trip, ms (p99 solid, p50 thin)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_clients * 1.05, (0.01f64..max_ms).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("streaming clients (50 chunks/s each)")
        .y_desc("ms")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, label) in labels.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = series(label);
        chart
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .map(|r| (r.clients as f64, r.ack_ms.p99.max(0.01))),
                color.stroke_width(3),
            ))
            .map_err(|e| e.to_string())?
            .label(label.to_string())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .map(|r| (r.clients as f64, r.ack_ms.p50.max(0.01))),
                color.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|r| {
                Circle::new(
                    (r.clients as f64, r.ack_ms.p99.max(0.01)),
                    4,
                    color.filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    let max_cpu = streams
        .iter()
        .filter(|r| keeps_up(r))
        .filter_map(|r| r.server_cpu_ms_per_1000)
        .fold(10.0, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "server CPU ms per 1,000 acked chunks (log; runs that kept up)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_clients * 1.05, (1f64..max_cpu).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("streaming clients (50 chunks/s each)")
        .y_desc("ms")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, label) in labels.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = series(label)
            .iter()
            .filter(|r| keeps_up(r))
            .filter_map(|r| Some((r.clients as f64, r.server_cpu_ms_per_1000?)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
            .map_err(|e| e.to_string())?
            .label(label.to_string())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    println!();
    println!("plot: {}", png.display());
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Mode::Report { dir, png, font } = &cli.command {
        if let Err(e) = report(dir, png, font) {
            eprintln!("report: {e}");
            std::process::exit(1);
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let me = std::process::id();
    runtime.block_on(async move {
        match cli.command {
            Mode::Stream { common, rate, chunk, seconds } => {
                let (sockets, connect_ms, errors) = connect_all(&common).await;
                let connected = sockets.len();
                let pid = common.pid;
                let chunk = Bytes::from(vec![0u8; chunk]);
                // Start the clients spread over one period, then measure.
                let start = Instant::now() + Duration::from_millis(200);
                let until = start + Duration::from_secs(seconds);
                let cpu_before = pid.map(cpu_seconds);
                let own_before = cpu_seconds(me);
                let local = tokio::task::LocalSet::new();
                let results = local
                    .run_until(stream_all(sockets, rate, chunk, start, until))
                    .await;
                let elapsed = seconds as f64;
                let cpu = cpu_before.zip(pid.map(cpu_seconds)).map(|(a, b)| b - a);
                let own = cpu_seconds(me) - own_before;
                let mut rtts = Vec::new();
                let (mut sent, mut acked, mut out_of_order, mut disconnects) = (0, 0, 0, 0);
                for r in results {
                    sent += r.sent;
                    acked += r.acked;
                    out_of_order += r.out_of_order;
                    disconnects += usize::from(r.disconnected);
                    rtts.extend(r.rtts_us);
                }
                let report = StreamReport {
                    label: common.label.clone(),
                    transport: common.transport.clone(),
                    clients: common.clients,
                    connected,
                    connect_ms_p50: pct(connect_ms.clone(), 50.0),
                    connect_ms_p99: pct(connect_ms, 99.0),
                    rate,
                    seconds,
                    offered_per_s: (connected as f64) * f64::from(rate),
                    acked_per_s: acked as f64 / elapsed,
                    ack_ms: percentiles_ms(rtts),
                    errors,
                    disconnects,
                    out_of_order,
                    server_cpu_ms_per_1000: cpu.map(|c| c * 1000.0 / (acked.max(1) as f64 / 1000.0)),
                    server_rss_mib: pid.map(|p| rss_kib(p) as f64 / 1024.0),
                    loadgen_cpu_s: own,
                };
                let _ = sent;
                println!("| server | transport | clients | acks/s (offered) | ack p50 / p95 / p99 / p99.9 / max ms | server CPU ms per 1000 acks | RSS MiB | errors | disconnects | out of order | loadgen CPU s |");
                println!("|---|---|---|---|---|---|---|---|---|---|---|");
                let a = &report.ack_ms;
                println!(
                    "| {} | {} | {} | {:.0} ({:.0}) | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} | {} | {} | {} | {} | {} | {:.2} |",
                    report.label, report.transport, report.connected, report.acked_per_s, report.offered_per_s,
                    a.p50, a.p95, a.p99, a.p999, a.max,
                    report.server_cpu_ms_per_1000.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
                    report.server_rss_mib.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
                    report.errors, report.disconnects, report.out_of_order, report.loadgen_cpu_s
                );
                write_json(&common.json, &report);
            }
            Mode::Idle { common, seconds } => {
                let pid = common.pid;
                let before = pid.map(rss_kib);
                let (sockets, _, errors) = connect_all(&common).await;
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                let after = pid.map(rss_kib);
                let per = before
                    .zip(after)
                    .filter(|_| !sockets.is_empty())
                    .map(|(b, a)| (a.saturating_sub(b)) as f64 / sockets.len() as f64);
                println!("| server | idle connections | errors | RSS growth per connection KiB |");
                println!("|---|---|---|---|");
                println!("| {} | {} | {} | {} |", common.label, sockets.len(), errors, per.map(|v| format!("{v:.1}")).unwrap_or("-".into()));
                write_json(&common.json, &serde_json::json!({"label": common.label, "connections": sockets.len(), "errors": errors, "rss_kib_per_connection": per}));
                drop(sockets);
            }
            Mode::Report { .. } => {}
        }
    });
}
