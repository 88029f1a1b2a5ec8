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
    #[arg(long, default_value = "2468")]
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
    ws.send(Message::text(format!(
        r#"40/voice,{{"pin":"{}"}}"#,
        common.pin
    )))
    .await
    .map_err(|e| e.to_string())?;
    expect(&mut ws, |t| t.starts_with("40/voice,")).await?;
    Ok(ws)
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

async fn stream_client(
    mut ws: Ws,
    rate: u32,
    chunk: Bytes,
    until: Instant,
    start_at: Instant,
) -> ClientResult {
    let mut result = ClientResult::default();
    let ring = 4096usize;
    let mut sent_at = vec![Instant::now(); ring];
    let mut next_id: u64 = 1;
    let mut last_acked: u64 = 0;
    let period = Duration::from_secs(1) / rate.max(1);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::from_std(start_at), period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let drain_until = until + Duration::from_secs(2);
    loop {
        tokio::select! {
            _ = ticks.tick(), if Instant::now() < until => {
                let id = next_id;
                next_id += 1;
                sent_at[(id as usize) % ring] = Instant::now();
                let header = format!(r#"451-/voice,{id}["audio",{{"_placeholder":true,"num":0}}]"#);
                if ws.feed(Message::text(header)).await.is_err() || ws.send(Message::Binary(chunk.clone())).await.is_err() {
                    result.disconnected = true;
                    break;
                }
                result.sent += 1;
            }
            frame = ws.next() => {
                match frame {
                    Some(Ok(Message::Text(t))) => {
                        let t = t.as_str();
                        if let Some(rest) = t.strip_prefix("43/voice,") {
                            let id: u64 = rest.split('[').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                            let rtt = sent_at[(id as usize) % ring].elapsed();
                            result.rtts_us.push(rtt.as_micros().min(u32::MAX as u128) as u32);
                            result.acked += 1;
                            if id != last_acked + 1 {
                                result.out_of_order += 1;
                            }
                            last_acked = id;
                        } else if t == "2" && ws.send(Message::text("3")).await.is_err() {
                            result.disconnected = true;
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        result.disconnected = Instant::now() < until;
                        break;
                    }
                    Some(Ok(_)) => {}
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(drain_until)) => break,
        }
        if Instant::now() >= until && result.acked >= result.sent {
            break;
        }
    }
    let _ = ws.close(None).await;
    result
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
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "server CPU ms per 1,000 acked chunks (runs that kept up)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_clients * 1.05, 0f64..max_cpu)
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
                let period = Duration::from_secs(1) / rate.max(1);
                let local = tokio::task::LocalSet::new();
                let handles: Vec<_> = sockets
                    .into_iter()
                    .enumerate()
                    .map(|(i, ws)| {
                        let offset = period * (i as u32 % 1000) / 1000u32.min(connected.max(1) as u32);
                        local.spawn_local(stream_client(ws, rate, chunk.clone(), until, start + offset))
                    })
                    .collect();
                let results = local
                    .run_until(async { futures_util::future::join_all(handles).await })
                    .await;
                let elapsed = seconds as f64;
                let cpu = cpu_before.zip(pid.map(cpu_seconds)).map(|(a, b)| b - a);
                let own = cpu_seconds(me) - own_before;
                let mut rtts = Vec::new();
                let (mut sent, mut acked, mut out_of_order, mut disconnects) = (0, 0, 0, 0);
                for r in results.into_iter().flatten() {
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
