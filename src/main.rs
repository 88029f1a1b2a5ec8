//! The `voxio` binary: parse the configuration, say where to point the browser, serve.

use std::net::SocketAddr;

use actix_web::{App, HttpServer};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use voxio::config::{Cli, Command};
use voxio::engineio::Engine;
use voxio::protocol_test;
use voxio::socketio::{SocketIo, SocketIoConfig};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::ProtocolTest { port }) => {
            let endpoints = std::sync::Arc::new(protocol_test::ProtocolTest::new());
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let server =
                HttpServer::new(move || App::new().configure(endpoints.configure())).bind(addr)?;
            tracing::info!("protocol test server on http://{addr}: /engine.io/ and /socket.io/");
            server.run().await
        }
        None => {
            let args = cli.server;
            let io = SocketIo::new(SocketIoConfig::default());
            let engine = Engine::new(args.engine.engine_config(), io.engine_handler());
            let static_dir = args.static_dir.clone();
            let mut server = HttpServer::new(move || {
                App::new().configure(voxio::web::configure(&engine, &static_dir))
            });
            if args.workers > 0 {
                server = server.workers(args.workers);
            }
            let server = server.bind(args.bind)?;
            tracing::info!(
                "voxio listening on {}: open {}",
                args.bind,
                browser_url(args.bind)
            );
            server.run().await
        }
    }
}

/// Where a person on this machine points the browser for a server bound to `bind`.
fn browser_url(bind: SocketAddr) -> String {
    if bind.ip().is_unspecified() || bind.ip().is_loopback() {
        format!("http://localhost:{}", bind.port())
    } else {
        format!("http://{bind}")
    }
}
