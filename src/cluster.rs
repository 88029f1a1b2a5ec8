//! Many voxio nodes on one Redis: the Socket.IO [`Adapter`] that carries broadcasts (emits to
//! rooms, server-side disconnects) to every node over Redis pub/sub, and the node list each node
//! keeps from the others' heartbeats.
//!
//! - Publishing never waits: a broadcast goes into a bounded queue that one task publishes
//!   from; when Redis is away the queue fills, and what does not fit is dropped and counted
//!   (`voxio_cluster_messages_total{direction="dropped"}`). Local delivery goes on regardless.
//! - Two connections: one subscribed (broadcasts and heartbeats), one to publish. Each is
//!   re-made after a failure with capped exponential backoff, every failure logged once and
//!   counted in `voxio_redis_errors_total{component="cluster"}`.
//! - Every node publishes a heartbeat every `heartbeat`; a node not heard for `node_timeout`
//!   is forgotten, and one that shuts down says goodbye and is forgotten at once.
//!
//! Messages are JSON (`v: 1`), binary attachments as base64, so any tool on the channel can
//! read them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64_URL;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::engineio::Sid;
use crate::socketio::{Adapter, Broadcast, Operation, Payload, SocketIo, Target};
use crate::telemetry;

/// Cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The Redis server.
    pub redis_url: String,
    /// Prefix of the pub/sub channels (`<prefix>#broadcast`, `<prefix>#nodes`).
    pub prefix: String,
    /// How often this node says it is alive.
    pub heartbeat: Duration,
    /// A node not heard for this long is forgotten.
    pub node_timeout: Duration,
    /// Broadcasts waiting to be published, at most.
    pub queue: usize,
    /// How long one Redis command may take.
    pub timeout: Duration,
    /// The base URL (`http://host:port`) other nodes reach this one at, announced in its
    /// heartbeats: they forward polling requests for its sessions there. `None`: not
    /// announced (requests for its sessions that reach another node are refused there).
    pub url: Option<String>,
}

/// One node's view of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    /// The start of this node's session ids.
    tag: String,
    config: ClusterConfig,
    outgoing: mpsc::Sender<Outgoing>,
    peers: Mutex<HashMap<String, Peer>>,
    subscribed: AtomicBool,
}

/// Another node, as its heartbeats describe it.
struct Peer {
    seen: Instant,
    tag: Option<String>,
    url: Option<String>,
}

enum Outgoing {
    Broadcast(String),
    /// Say this node is alive now (to a node that just joined, so it knows this one at once).
    Heartbeat,
    /// Say goodbye, then answer.
    Leave(tokio::sync::oneshot::Sender<()>),
}

/// A message on the broadcast channel.
#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    node: String,
    nsp: String,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
    op: WireOp,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum WireOp {
    Emit {
        event: String,
        args: Vec<Value>,
        #[serde(default)]
        bins: Vec<String>,
        #[serde(default)]
        volatile: bool,
    },
    Disconnect,
    /// A socket restored on the sending node (see [`Operation::Release`]).
    Release {
        pid: String,
    },
}

/// A message on the nodes channel.
#[derive(Serialize, Deserialize)]
struct NodeNote {
    node: String,
    /// `alive` or `bye`.
    state: String,
    /// The start of the node's session ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    /// Where the node takes forwarded polling requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

impl Cluster {
    /// Joins the cluster: `io`'s broadcasts go to the other nodes and theirs come to `io`.
    /// Starts its tasks on the current actix/tokio runtime; returns at once (Redis may be down:
    /// the tasks keep trying).
    pub fn start(io: &SocketIo, config: ClusterConfig) -> anyhow::Result<Cluster> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let node = {
            let mut id = [0u8; 6];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let tag = {
            let mut id = [0u8; 3];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
            BASE64_URL.encode(id)
        };
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let cluster = Cluster {
            inner: Arc::new(Inner {
                node,
                tag,
                config,
                outgoing: tx,
                peers: Mutex::new(HashMap::new()),
                subscribed: AtomicBool::new(false),
            }),
        };
        telemetry::cluster_nodes(1);
        io.set_adapter(Arc::new(cluster.clone()));
        actix_rt::spawn(subscriber(cluster.clone(), client.clone(), io.clone()));
        actix_rt::spawn(publisher(cluster.clone(), client, rx));
        tracing::info!(node = %cluster.inner.node, "cluster: joining on Redis");
        Ok(cluster)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The start of this node's session ids (give it to the engine).
    pub fn tag(&self) -> &str {
        &self.inner.tag
    }

    /// The URL of the node whose session `sid` is, when that is another node heard within
    /// the timeout that announced one.
    pub fn owner_url(&self, sid: Sid) -> Option<String> {
        let tag = sid.tag();
        if tag == self.inner.tag {
            return None;
        }
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let timeout = self.inner.config.node_timeout;
        peers
            .values()
            .find(|peer| peer.tag.as_deref() == Some(tag) && peer.seen.elapsed() < timeout)
            .and_then(|peer| peer.url.clone())
    }

    /// Nodes heard within the timeout, this one included.
    pub fn nodes(&self) -> usize {
        1 + self.peers().len()
    }

    /// The other nodes heard within the timeout.
    pub fn peers(&self) -> Vec<String> {
        let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let timeout = self.inner.config.node_timeout;
        let before = peers.len();
        peers.retain(|node, peer| {
            let alive = peer.seen.elapsed() < timeout;
            if !alive {
                tracing::warn!(%node, "cluster: node not heard for {timeout:?}, forgotten");
            }
            alive
        });
        if peers.len() != before {
            telemetry::cluster_nodes(1 + peers.len());
        }
        peers.keys().cloned().collect()
    }

    /// Whether the subscription to the other nodes is up.
    pub fn is_connected(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }

    /// Tells the other nodes this one is leaving and stops its heartbeats and publishing
    /// (waits at most the Redis timeout).
    pub async fn leave(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.outgoing.try_send(Outgoing::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(self.inner.config.timeout, rx).await;
        }
    }

    fn channel(&self, name: &str) -> String {
        format!("{}#{name}", self.inner.config.prefix)
    }

    fn heard(&self, note: NodeNote) {
        if note.node == self.inner.node {
            return;
        }
        let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        let known = match note.state.as_str() {
            "bye" => {
                if peers.remove(&note.node).is_some() {
                    tracing::info!(node = %note.node, "cluster: node left");
                }
                false
            }
            _ => {
                let peer = Peer {
                    seen: Instant::now(),
                    tag: note.tag.clone(),
                    url: note.url.clone(),
                };
                peers.insert(note.node.clone(), peer).is_some()
            }
        };
        if !known && note.state != "bye" {
            tracing::info!(node = %note.node, "cluster: node joined");
            // The newcomer learns this node (its tag and URL) now, not a heartbeat later.
            let _ = self.inner.outgoing.try_send(Outgoing::Heartbeat);
        }
        telemetry::cluster_nodes(1 + peers.len());
    }
}

impl Adapter for Cluster {
    fn publish(&self, broadcast: Broadcast) {
        let text = encode(&self.inner.node, broadcast);
        match self.inner.outgoing.try_send(Outgoing::Broadcast(text)) {
            Ok(()) => {}
            Err(_) => telemetry::cluster_message("dropped"),
        }
    }
}

fn encode(node: &str, broadcast: Broadcast) -> String {
    let Broadcast { target, op } = broadcast;
    let op = match op {
        Operation::Emit {
            event,
            payload,
            volatile,
        } => WireOp::Emit {
            event,
            args: payload.args,
            bins: payload.bins.iter().map(|b| BASE64.encode(b)).collect(),
            volatile,
        },
        Operation::Disconnect => WireOp::Disconnect,
        Operation::Release { pid } => WireOp::Release {
            pid: pid.to_string(),
        },
    };
    let wire = Wire {
        v: 1,
        node: node.to_owned(),
        nsp: target.nsp,
        rooms: target.rooms,
        except: target.except.iter().map(|s| s.to_string()).collect(),
        op,
    };
    serde_json::to_string(&wire).unwrap_or_default()
}

/// The node that sent it, and the broadcast; `None` for a message that is not one.
fn decode(bytes: &[u8]) -> Option<(String, Broadcast)> {
    let wire: Wire = serde_json::from_slice(bytes).ok()?;
    if wire.v != 1 {
        return None;
    }
    let op = match wire.op {
        WireOp::Emit {
            event,
            args,
            bins,
            volatile,
        } => {
            let bins = bins
                .iter()
                .map(|b| BASE64.decode(b).ok().map(Bytes::from))
                .collect::<Option<Vec<_>>>()?;
            Operation::Emit {
                event,
                payload: Payload { args, bins },
                volatile,
            }
        }
        WireOp::Disconnect => Operation::Disconnect,
        WireOp::Release { pid } => Operation::Release {
            pid: Sid::parse(&pid)?,
        },
    };
    let except = wire
        .except
        .iter()
        .map(|s| Sid::parse(s))
        .collect::<Option<Vec<_>>>()?;
    Some((
        wire.node,
        Broadcast {
            target: Target {
                nsp: wire.nsp,
                rooms: wire.rooms,
                except,
            },
            op,
        },
    ))
}

/// Capped exponential backoff with jitter, for reconnecting.
struct Retry {
    next: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Retry {
        Retry { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    async fn wait(&mut self) {
        let jitter = rand::random_range(0.5..1.0);
        tokio::time::sleep(self.next.mul_f64(jitter)).await;
        self.next = (self.next * 2).min(Self::MAX);
    }
}

/// Reports a Redis failure: logged once per outage, counted every time.
fn failed(what: &str, error: &dyn std::fmt::Display, healthy: &mut bool) {
    telemetry::redis_error("cluster");
    if std::mem::replace(healthy, false) {
        tracing::warn!(
            "cluster: Redis {what} failed ({error}); retrying with backoff, local delivery goes on"
        );
    }
}

async fn subscriber(cluster: Cluster, client: redis::Client, io: SocketIo) {
    let broadcast = cluster.channel("broadcast");
    let nodes = cluster.channel("nodes");
    let timeout = cluster.inner.config.timeout;
    let mut retry = Retry::new();
    let mut healthy = true;
    loop {
        let connected = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&[&broadcast, &nodes]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                failed("subscribe", &e, &mut healthy);
                retry.wait().await;
                continue;
            }
            Err(_) => {
                failed("subscribe", &"timed out", &mut healthy);
                retry.wait().await;
                continue;
            }
        };
        cluster.inner.subscribed.store(true, Ordering::Release);
        if !std::mem::replace(&mut healthy, true) {
            tracing::info!("cluster: Redis subscription is back");
        }
        retry.reset();
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            telemetry::cluster_message("received");
            let payload = msg.get_payload_bytes();
            if msg.get_channel_name() == nodes {
                if let Ok(note) = serde_json::from_slice::<NodeNote>(payload) {
                    cluster.heard(note);
                }
                continue;
            }
            match decode(payload) {
                Some((node, _)) if node == cluster.inner.node => {}
                Some((_, broadcast)) => {
                    io.apply_remote(broadcast);
                }
                None => tracing::debug!("cluster: a message that is not a broadcast, ignored"),
            }
        }
        cluster.inner.subscribed.store(false, Ordering::Release);
        failed("subscription", &"connection lost", &mut healthy);
        retry.wait().await;
    }
}

async fn publisher(cluster: Cluster, client: redis::Client, mut rx: mpsc::Receiver<Outgoing>) {
    let broadcast = cluster.channel("broadcast");
    let nodes = cluster.channel("nodes");
    let timeout = cluster.inner.config.timeout;
    let alive = serde_json::to_string(&NodeNote {
        node: cluster.inner.node.clone(),
        state: "alive".into(),
        tag: Some(cluster.inner.tag.clone()),
        url: cluster.inner.config.url.clone(),
    })
    .unwrap_or_default();
    let mut heartbeat = tokio::time::interval(cluster.inner.config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = Retry::new();
    let mut healthy = true;
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    loop {
        let (channel, text, done) = tokio::select! {
            _ = heartbeat.tick() => {
                cluster.peers();
                (nodes.as_str(), alive.clone(), None)
            }
            next = rx.recv() => match next {
                Some(Outgoing::Broadcast(text)) => (broadcast.as_str(), text, None),
                Some(Outgoing::Heartbeat) => (nodes.as_str(), alive.clone(), None),
                Some(Outgoing::Leave(done)) => {
                    let bye = serde_json::to_string(&NodeNote {
                        node: cluster.inner.node.clone(),
                        state: "bye".into(),
                        tag: None,
                        url: None,
                    })
                    .unwrap_or_default();
                    (nodes.as_str(), bye, Some(done))
                }
                None => return,
            },
        };
        if conn.is_none() {
            match tokio::time::timeout(timeout, client.get_multiplexed_async_connection()).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => failed("connection", &e, &mut healthy),
                Err(_) => failed("connection", &"timed out", &mut healthy),
            }
        }
        let Some(c) = conn.as_mut() else {
            telemetry::cluster_message("dropped");
            retry.wait().await;
            continue;
        };
        let sent = tokio::time::timeout(
            timeout,
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(&text)
                .query_async::<i64>(c),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {
                telemetry::cluster_message("published");
                retry.reset();
                if !std::mem::replace(&mut healthy, true) {
                    tracing::info!("cluster: Redis publishing is back");
                }
            }
            Ok(Err(e)) => {
                failed("publish", &e, &mut healthy);
                conn = None;
            }
            Err(_) => {
                failed("publish", &"timed out", &mut healthy);
                conn = None;
            }
        }
        if let Some(done) = done {
            // This node is leaving: no more heartbeats, nothing more to publish.
            let _ = done.send(());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_survives_the_wire() {
        let broadcast = Broadcast {
            target: Target {
                nsp: "/voice".into(),
                rooms: vec!["login:abc".into()],
                except: vec![Sid::generate()],
            },
            op: Operation::Emit {
                event: "note".into(),
                payload: Payload::new()
                    .arg(serde_json::json!({"a": 1}))
                    .bin(Bytes::from_static(b"\x00\x01\xff")),
                volatile: true,
            },
        };
        let text = encode("n1", broadcast.clone());
        assert_eq!(decode(text.as_bytes()), Some(("n1".into(), broadcast)));
        let disconnect = Broadcast {
            target: Target {
                nsp: "/".into(),
                rooms: vec![],
                except: vec![],
            },
            op: Operation::Disconnect,
        };
        let text = encode("n2", disconnect.clone());
        assert_eq!(decode(text.as_bytes()), Some(("n2".into(), disconnect)));
    }

    #[test]
    fn foreign_or_broken_messages_are_refused() {
        assert_eq!(decode(b"not json"), None);
        assert_eq!(
            decode(br#"{"v":2,"node":"x","nsp":"/","op":{"kind":"disconnect"}}"#),
            None
        );
        assert_eq!(
            decode(br#"{"v":1,"node":"x","nsp":"/","except":["bad"],"op":{"kind":"disconnect"}}"#),
            None
        );
        assert_eq!(
            decode(br#"{"v":1,"node":"x","nsp":"/","op":{"kind":"emit","event":"e","args":[],"bins":["!!"]}}"#),
            None
        );
    }
}
