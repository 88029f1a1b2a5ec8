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
            url: None,
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

/// Two nodes' assistants share one user's to-do list through Redis: what one node adds the
/// other reads, changes made on both nodes at the same moment all land (the store's
/// compare-and-set tries again on the fresh list), a question asked on one node is answered on
/// the other, the list expires after its TTL, and with Redis gone a turn is told so.
#[actix_rt::test]
async fn to_do_lists_live_in_redis_across_nodes() {
    use std::sync::Arc;
    use voxio::voice::assistant::{Assistant as _, Reply, Said, TodoAssistant, UNREACHABLE};
    use voxio::voice::todos::RedisTodos;

    let mut redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let connection = client.get_connection_manager().await.unwrap();
    let node = || {
        TodoAssistant::with_store(
            0.6,
            Arc::new(RedisTodos {
                connection: connection.clone(),
                timeout: Duration::from_millis(500),
                ttl: Duration::from_secs(60),
            }),
        )
    };
    let (a, b) = (node(), node());
    async fn say(node: &TodoAssistant, text: &str, confidence: f32) -> Reply {
        node.reply("ann", &Said { text, confidence }).await
    }

    assert_eq!(
        say(&a, "add milk to my list", 1.0).await.text,
        "Added milk to your list."
    );
    assert_eq!(
        say(&b, "what is on my list", 1.0).await.text,
        "Your list has milk."
    );

    // 40 adds at once, half on each node.
    const ITEMS: [&str; 40] = [
        "i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "i9", "j0", "j1", "j2", "j3", "j4",
        "j5", "j6", "j7", "j8", "j9", "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9",
        "l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9",
    ];
    let texts: Vec<String> = ITEMS
        .iter()
        .map(|i| format!("add {i} to my list"))
        .collect();
    let started = Instant::now();
    let replies = futures_util::future::join_all(texts.iter().enumerate().map(|(k, text)| {
        let node = if k % 2 == 0 { &a } else { &b };
        async move { node.reply("ann", &Said::certain(text)).await }
    }))
    .await;
    let items = replies
        .iter()
        .filter_map(|r| r.todos.as_ref())
        .max_by_key(|t| t.len())
        .cloned()
        .unwrap_or_default();
    println!(
        "40 adds at once on two nodes: {} answered, list of {} after them, in {:?}",
        replies.iter().filter(|r| r.todos.is_some()).count(),
        items.len(),
        started.elapsed()
    );
    let listed = a.todos("ann").unwrap().await;
    assert_eq!(listed.len(), 41, "every add landed: {listed:?}");
    for item in ITEMS {
        assert!(listed.iter().any(|x| x == item), "{item} landed");
    }

    // Asked on one node, answered on the other.
    assert_eq!(
        say(&a, "clear my list", 0.3).await.text,
        "Did you say clear your list? Say yes or no."
    );
    assert_eq!(say(&b, "yes", 1.0).await.text, "Your list is now empty.");
    assert_eq!(b.todos("ann").unwrap().await, Vec::<String>::new());

    // The list expires after its TTL.
    assert_expires_within_a_minute(&client, "voxio:todos:ann").await;

    // Redis gone: the turn is told so, within the store's timeout, and nothing panics.
    redis.stop();
    let started = Instant::now();
    let reply = say(&b, "add bread to my list", 1.0).await;
    assert_eq!(reply.text, UNREACHABLE);
    assert_eq!(reply.todos, None);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A user's conversation history in Redis: lines appended on one node are loaded on the
/// other, oldest first, bounded in number, expiring after their TTL; with Redis gone a load is
/// empty and an append is dropped, neither waits past the timeout.
#[actix_rt::test]
async fn conversation_history_lives_in_redis_across_nodes() {
    use voxio::voice::assistant::{Line, Role};
    use voxio::voice::history::{HistoryStore, RedisHistory};

    let mut redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let connection = client.get_connection_manager().await.unwrap();
    let node = || RedisHistory {
        connection: connection.clone(),
        timeout: Duration::from_millis(500),
        ttl: Duration::from_secs(60),
        lines: 3,
    };
    let (a, b) = (node(), node());
    let line = |role, text: &str| Line {
        role,
        text: text.into(),
    };
    a.append("ann", line(Role::User, "what is on my list"))
        .await;
    a.append("ann", line(Role::Assistant, "Your list has milk."))
        .await;
    b.append("ann", line(Role::User, "add eggs")).await;
    b.append("ann", line(Role::Assistant, "Added eggs to your list."))
        .await;
    assert_eq!(
        a.load("ann").await,
        vec![
            line(Role::Assistant, "Your list has milk."),
            line(Role::User, "add eggs"),
            line(Role::Assistant, "Added eggs to your list."),
        ]
    );
    assert!(b.load("bob").await.is_empty());
    assert_expires_within_a_minute(&client, "voxio:history:ann").await;

    redis.stop();
    let started = Instant::now();
    assert!(a.load("ann").await.is_empty());
    a.append("ann", line(Role::User, "lost")).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// `key` expires in 50 to 60 s (set with a TTL of 60 s moments ago).
async fn assert_expires_within_a_minute(client: &redis::Client, key: &str) {
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "PTTL of {key}: {ttl}");
}
