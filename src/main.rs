//! The `voxio` binary: parse the configuration, say where to point the browser, serve.

use std::net::SocketAddr;

use actix_web::{App, HttpServer};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use voxio::config::{Cli, Command};
use voxio::protocol_test;
use voxio::server::{serve, Listen};
use voxio::web::Voxio;

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if cli.server.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match cli.command {
        #[cfg(feature = "bench")]
        Some(Command::BenchVoice {
            turns,
            talkers,
            classic,
            port,
        }) => voxio::bench_voice::run(turns, &talkers, classic, port).await,
        Some(Command::Healthcheck { timeout_s }) => {
            let timeout = std::time::Duration::from_secs(timeout_s.max(1));
            let tls = cli.server.tls_cert.is_some();
            match healthcheck(cli.server.bind, timeout, tls) {
                Ok(()) => Ok(()),
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some(Command::ProtocolTest { port }) => {
            let endpoints = std::sync::Arc::new(protocol_test::ProtocolTest::new());
            let listen = Listen::new(SocketAddr::from(([127, 0, 0, 1], port)));
            let upgrades = endpoints.upgrades();
            let (server, addr) = serve(&listen, upgrades, move || {
                App::new().configure(endpoints.configure())
            })?;
            tracing::info!("protocol test server on http://{addr}: /engine.io/ and /socket.io/");
            let handle = server.handle();
            actix_rt::spawn(async move {
                shutdown_signal().await;
                handle.stop(true).await;
            });
            server.await
        }
        None => {
            let args = cli.server;
            let startup = match Voxio::build(&args).await {
                Ok(startup) => startup,
                Err(e) => {
                    tracing::error!("cannot start: {e:#}");
                    std::process::exit(2);
                }
            };
            let voxio = startup.voxio;
            let tls = match tls_config(&args) {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::error!("cannot start: {e:#}");
                    std::process::exit(2);
                }
            };
            let secure = tls.is_some();
            let app = voxio.clone();
            // Signals are voxio's own: a shutdown drains the sessions first (see
            // `Voxio::drain`), and only then stops the HTTP server.
            let listen = Listen {
                workers: args.workers,
                tls,
                ..Listen::new(args.bind)
            };
            let (server, _) = serve(&listen, voxio.upgrades(), move || {
                App::new()
                    .wrap(app.sessions())
                    .wrap(voxio::web::security_headers())
                    .configure(app.configure())
            })?;
            let store = if args.redis_url.is_some() {
                "Redis"
            } else {
                "in-process (no Redis)"
            };
            tracing::info!(
                "voxio listening on {}: open {} (sessions and PIN limits: {store})",
                args.bind,
                browser_url(args.bind, secure)
            );
            if let Some(pin) = startup.generated_pin {
                // Printed once, to the terminal only: never through the log.
                println!("\n  voxio PIN for this run: {pin}   (set VOXIO_PIN to choose one)\n");
            }
            let metrics = match args.metrics_bind {
                None => None,
                Some(addr) => {
                    let app = voxio.clone();
                    let server = HttpServer::new(move || {
                        App::new().configure(voxio::web::configure_metrics(&app))
                    })
                    .workers(1)
                    .disable_signals()
                    .bind(addr)?
                    .run();
                    tracing::info!("metrics on http://{addr}/metrics");
                    let handle = server.handle();
                    actix_rt::spawn(server);
                    Some(handle)
                }
            };
            let handle = server.handle();
            let grace = std::time::Duration::from_millis(args.shutdown_grace_ms);
            actix_rt::spawn(async move {
                let signal = shutdown_signal().await;
                tracing::info!(
                    signal,
                    grace_ms = grace.as_millis() as u64,
                    "shutting down: new sessions refused, voice turns finishing"
                );
                voxio.drain(grace).await;
                if let Some(metrics) = metrics {
                    metrics.stop(true).await;
                }
                handle.stop(true).await;
            });
            server.await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// The TLS settings from VOXIO_TLS_CERT and VOXIO_TLS_KEY (both or neither), on ring.
fn tls_config(args: &voxio::config::ServerArgs) -> anyhow::Result<Option<rustls::ServerConfig>> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => anyhow::bail!("VOXIO_TLS_CERT and VOXIO_TLS_KEY go together"),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("VOXIO_TLS_CERT {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "VOXIO_TLS_CERT {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("VOXIO_TLS_KEY {}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("VOXIO_TLS_CERT and VOXIO_TLS_KEY do not make a certificate and its key")?;
    Ok(Some(config))
}

/// GET /healthz on this machine's server at `bind`, answered 200. A server that speaks TLS
/// (VOXIO_TLS_CERT) is checked by accepting a TCP connection.
fn healthcheck(bind: SocketAddr, timeout: std::time::Duration, tls: bool) -> std::io::Result<()> {
    use std::io::{Error, Read, Write};
    let ip = match bind.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let mut stream =
        std::net::TcpStream::connect_timeout(&SocketAddr::new(ip, bind.port()), timeout)?;
    if tls {
        return Ok(());
    }
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 32];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    if line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(Error::other(format!(
            "answered {:?}",
            line.lines().next().unwrap_or("")
        )))
    }
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop voxio with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Where a person on this machine points the browser for a server bound to `bind`.
fn browser_url(bind: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if bind.ip().is_unspecified() || bind.ip().is_loopback() {
        format!("{scheme}://localhost:{}", bind.port())
    } else {
        format!("{scheme}://{bind}")
    }
}
