//! The Redis adapter between two Socket.IO servers ("nodes") in one process, against a real
//! `redis-server` the test starts, kills and starts again: broadcasts reach the other node's
//! rooms; while Redis is gone each node still delivers to its own sockets; when Redis is back
//! the adapter reconnects by itself and cross-node delivery resumes; a node that stops
//! sending heartbeats is forgotten.

mod common;

use std::time::{Duration, Instant};

use common::{ws_connect, ws_send, ws_text, Redis, TestServer, WsConn};
use serde_json::Value;
use voxio::cluster::{Cluster, ClusterConfig};
use voxio::engineio::{Engine, EngineConfig};
use voxio::socketio::{SocketIo, SocketIoConfig};

/// A node: `/` puts every socket in room "r"; `shout` broadcasts `heard` to the room.
fn node(redis: &Redis) -> (TestServer, Cluster) {
    let io = SocketIo::new(SocketIoConfig::default());
    io.namespace("/", |ns| {
        ns.on_connect(|socket| socket.join("r"));
        ns.on("shout", |socket, event| {
            socket.ns().to("r").emit("heard", event.data);
        });
    });
    let cluster = Cluster::start(
        &io,
        ClusterConfig {
            redis_url: redis.url(),
            prefix: "voxio-test".into(),
            heartbeat: Duration::from_millis(100),
            node_timeout: Duration::from_millis(600),
            queue: 64,
            timeout: Duration::from_millis(500),
        },
    )
    .expect("cluster");
    let engine = Engine::new(EngineConfig::default(), io.engine_handler());
    (TestServer::serve(engine, "/socket.io/"), cluster)
}

async fn joined(server: &TestServer) -> WsConn {
    let mut conn = ws_connect(&server.ws_url("transport=websocket")).await;
    assert!(ws_text(&mut conn).await.starts_with("0{"));
    ws_send(&mut conn, "40").await;
    assert!(ws_text(&mut conn).await.starts_with("40{"));
    conn
}

/// The next `heard` event's argument, skipping pings; `None` if none comes within `within`.
async fn heard(conn: &mut WsConn, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = tokio::time::timeout_at(deadline, ws_text(conn))
            .await
            .ok()?;
        if text == "2" {
            ws_send(conn, "3").await;
            continue;
        }
        let body: Value = serde_json::from_str(text.strip_prefix("42").expect("an event")).unwrap();
        assert_eq!(body[0], "heard", "{text}");
        return Some(body[1].as_str().unwrap().to_owned());
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn broadcasts_cross_nodes_survive_a_redis_outage_and_dead_nodes_are_forgotten() {
    let mut redis = Redis::start();
    let (a, cluster_a) = node(&redis);
    let (b, cluster_b) = node(&redis);
    until("both nodes hear each other", || {
        cluster_a.nodes() == 2 && cluster_b.nodes() == 2
    })
    .await;
    let mut on_a = joined(&a).await;
    let mut on_b = joined(&b).await;
    let wait = Duration::from_secs(3);

    ws_send(&mut on_a, r#"42["shout","one"]"#).await;
    assert_eq!(heard(&mut on_a, wait).await.as_deref(), Some("one"));
    assert_eq!(
        heard(&mut on_b, wait).await.as_deref(),
        Some("one"),
        "across nodes"
    );
    ws_send(&mut on_b, r#"42["shout","two"]"#).await;
    assert_eq!(heard(&mut on_a, wait).await.as_deref(), Some("two"));
    assert_eq!(heard(&mut on_b, wait).await.as_deref(), Some("two"));

    // Redis goes away: each node keeps delivering to its own sockets.
    redis.stop();
    until("both adapters see the loss", || {
        !cluster_a.is_connected() && !cluster_b.is_connected()
    })
    .await;
    ws_send(&mut on_a, r#"42["shout","local"]"#).await;
    assert_eq!(heard(&mut on_a, wait).await.as_deref(), Some("local"));
    assert_eq!(
        heard(&mut on_b, Duration::from_millis(500)).await,
        None,
        "nothing crosses without Redis"
    );

    // Redis is back on the same port: the adapters reconnect by themselves.
    redis.restart();
    until("both adapters resubscribe", || {
        cluster_a.is_connected() && cluster_b.is_connected()
    })
    .await;
    until("both nodes hear each other again", || {
        cluster_a.nodes() == 2 && cluster_b.nodes() == 2
    })
    .await;
    ws_send(&mut on_b, r#"42["shout","again"]"#).await;
    assert_eq!(heard(&mut on_b, wait).await.as_deref(), Some("again"));
    assert_eq!(heard(&mut on_a, wait).await.as_deref(), Some("again"));

    // Node B leaves (as at a shutdown): A forgets it at once, and B sends no more heartbeats.
    drop(on_b);
    drop(b);
    let left = Instant::now();
    cluster_b.leave().await;
    until("A forgets B", || cluster_a.nodes() == 1).await;
    assert!(
        left.elapsed() < Duration::from_millis(600),
        "forgotten by its goodbye, not by timeout"
    );
    actix_rt::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cluster_a.nodes(), 1, "B stays forgotten");
}
