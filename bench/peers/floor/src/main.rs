//! The floor: not a Socket.IO server, the least a peer can do for voxio-bench's WebSocket load.
//!
//! It answers exactly the exchange voxio-bench drives (`transport=websocket` only): the
//! WebSocket handshake, the Engine.IO OPEN packet, a `/voice` CONNECT whose `pin` must be `$PIN`,
//! and every `audio` BINARY_EVENT header plus attachment with the ack `{seq, bytes}`. One tokio
//! task per connection reads into one buffer, answers every complete chunk in that read, and
//! writes all the acks with one `write_all`: no channel, no actor, no per-chunk allocation, no
//! heartbeat, no limits, no JSON parser. What it costs per 1,000 acks is what the kernel and
//! the runtime cost on this machine, the bound under any real server's number.
//!
//!     voxio-peer-floor PORT      (PIN from the environment, default 246810; FLOOR_THREADS, 2)

use std::io::Write;

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const OPEN: &str = r#"0{"sid":"floor","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;

fn main() {
    // Two worker threads, as voxio on two cores; FLOOR_THREADS=1 for one thread doing all.
    let threads = std::env::var("FLOOR_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_io()
            .build()
    };
    runtime.expect("runtime").block_on(serve_port());
}

async fn serve_port() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9003);
    let pin = std::env::var("PIN").unwrap_or_else(|_| "246810".into());
    let pin: &'static str = Box::leak(pin.into_boxed_str());
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = serve(tcp, pin).await;
        });
    }
}

/// Appends an unmasked server frame header (FIN set).
fn frame_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

fn text_frame(out: &mut Vec<u8>, text: &[u8]) {
    frame_header(out, 0x1, text.len());
    out.extend_from_slice(text);
}

async fn handshake(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 8192 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let accept = base64::engine::general_purpose::STANDARD
        .encode(Sha1::digest(format!("{key}{WS_GUID}").as_bytes()));
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    text_frame(&mut out, OPEN.as_bytes());
    tcp.write_all(&out).await
}

/// One complete client frame at the start of `buf`: (opcode, payload start, payload end),
/// the payload unmasked in place.
fn next_frame(buf: &mut [u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let mask = if masked {
        if buf.len() < at + 4 {
            return None;
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < at + len {
        return None;
    }
    if let Some(m) = mask {
        if m != [0; 4] {
            for (i, b) in buf[at..at + len].iter_mut().enumerate() {
                *b ^= m[i & 3];
            }
        }
    }
    Some((opcode, at, at + len))
}

async fn serve(mut tcp: TcpStream, pin: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    handshake(&mut tcp, &mut buf).await?;
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut connected = false;
    let mut pending_ack: Option<u64> = None;
    let mut seq = 0u64;
    let mut read = [0u8; 4096];
    loop {
        // Frames already buffered first (the handshake's read may have carried some).
        let mut used = 0;
        while let Some((opcode, start, end)) = next_frame(&mut buf[used..]) {
            let payload = &buf[used + start..used + end];
            match opcode {
                0x1 => {
                    if let Some(rest) = payload.strip_prefix(b"451-/voice,") {
                        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                        pending_ack = std::str::from_utf8(&rest[..digits])
                            .ok()
                            .and_then(|d| d.parse().ok());
                    } else if payload.starts_with(b"40/voice,") {
                        let ok = std::str::from_utf8(payload)
                            .is_ok_and(|t| t.contains(&format!(r#""pin":"{pin}""#)));
                        let reply: &[u8] = if ok {
                            br#"40/voice,{"sid":"floor"}"#
                        } else {
                            br#"44/voice,{"message":"Wrong PIN."}"#
                        };
                        text_frame(&mut out, reply);
                        connected = ok;
                    }
                }
                0x2 => {
                    if let (true, Some(id)) = (connected, pending_ack.take()) {
                        seq += 1;
                        let mut text = [0u8; 96];
                        let mut cursor = std::io::Cursor::new(&mut text[..]);
                        let _ = write!(
                            cursor,
                            r#"43/voice,{id}[{{"seq":{seq},"bytes":{}}}]"#,
                            end - start
                        );
                        let n = cursor.position() as usize;
                        text_frame(&mut out, &text[..n]);
                    }
                }
                0x8 => return Ok(()),
                _ => {}
            }
            used += end;
        }
        buf.drain(..used);
        if !out.is_empty() {
            tcp.write_all(&out).await?;
            out.clear();
        }
        let n = tcp.read(&mut read).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&read[..n]);
    }
}
