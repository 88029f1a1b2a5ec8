//! Benchmark peer: socketioxide on axum, behaving like voxio's `/voice` namespace with the
//! pipeline off: the PIN checked in CONNECT auth, every `audio` event acknowledged with
//! `{seq, bytes}`. `voxio-peer-socketioxide PORT` (PIN from env PIN, default 246810).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;

#[derive(Deserialize)]
struct Auth {
    pin: String,
}

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wrong PIN.")
    }
}

async fn check_pin(Data(auth): Data<Auth>) -> Result<(), Refused> {
    let pin = std::env::var("PIN").unwrap_or_else(|_| "246810".into());
    if auth.pin == pin {
        Ok(())
    } else {
        Err(Refused)
    }
}

async fn on_connect(socket: SocketRef) {
    let count = Arc::new(AtomicU64::new(0));
    socket.on(
        "audio",
        move |Data(chunk): Data<bytes::Bytes>, ack: AckSender| {
            let seq = count.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                let _ = ack.send(&serde_json::json!({ "seq": seq, "bytes": chunk.len() }));
            }
        },
    );
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let (layer, io) = SocketIo::builder().max_payload(1_000_000).build_layer();
    io.ns("/voice", on_connect.with(check_pin));
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
