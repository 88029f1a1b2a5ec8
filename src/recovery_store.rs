//! Connection state recovery across nodes: the [`RecoveryStore`] on Redis.
//!
//! Each recoverable socket has two keys, both expiring one window after the socket was last
//! known alive (its node refreshes them every third of the window while it holds it):
//! `<prefix>:sio:<pid>`, its record (JSON: id, namespace, rooms, data), and
//! `<prefix>:sio:<pid>:log`, a stream of the packets sent to it, one entry per packet with
//! the offset as its id (`0-<offset>`), trimmed to the packet bound. A node that dies
//! leaves both behind for the window: a client that comes back through another node gets
//! its socket there with every packet the dead node had written.
//!
//! Writes never wait: they go into a bounded queue that one task sends to Redis in
//! pipelined batches, in order. When Redis is slow or away the queue fills and what does not
//! fit is dropped and counted (`voxio_redis_errors_total{component="recovery"}`): a recovery
//! on another node may then fail (the client gets a fresh socket), never replay a gap — a
//! log with a hole is refused as a whole.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::engineio::{MessageFrame, Sid};
use crate::socketio::recovery::next_after;
use crate::socketio::{RecoveryStore, Restored, SocketRecord};
use crate::telemetry;

/// The Redis recovery store's settings.
#[derive(Debug, Clone)]
pub struct RedisRecoveryConfig {
    /// Key prefix.
    pub prefix: String,
    /// How long a socket's keys outlive the last sign of it.
    pub window: Duration,
    /// Packets kept per socket.
    pub max_packets: usize,
    /// Writes waiting for Redis, at most.
    pub queue: usize,
    /// How long one Redis round trip may take.
    pub timeout: Duration,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct RedisRecovery {
    config: std::sync::Arc<RedisRecoveryConfig>,
    connection: redis::aio::ConnectionManager,
    writes: mpsc::Sender<Write>,
}

enum Write {
    Save(Sid, String),
    /// A packet, and the record after it when it changed with it.
    Append(Sid, u64, Vec<Vec<u8>>, Option<String>),
    Touch(Vec<Sid>),
    Forget(Sid),
}

impl RedisRecovery {
    /// A store on `connection`; starts its writer on the current actix/tokio runtime.
    pub fn start(
        connection: redis::aio::ConnectionManager,
        config: RedisRecoveryConfig,
    ) -> RedisRecovery {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let store = RedisRecovery {
            config: std::sync::Arc::new(config),
            connection,
            writes: tx,
        };
        actix_rt::spawn(writer(store.clone(), rx));
        store
    }

    fn record_key(&self, pid: Sid) -> String {
        format!("{}:sio:{}", self.config.prefix, pid.as_str())
    }

    fn log_key(&self, pid: Sid) -> String {
        format!("{}:sio:{}:log", self.config.prefix, pid.as_str())
    }

    fn queue(&self, write: Write) {
        if self.writes.try_send(write).is_err() {
            telemetry::redis_error("recovery");
        }
    }

    fn add(&self, pipe: &mut redis::Pipeline, write: Write) {
        let ttl = self.config.window.as_millis().max(1) as u64;
        match write {
            Write::Save(pid, json) => {
                pipe.cmd("SET")
                    .arg(self.record_key(pid))
                    .arg(json)
                    .arg("PX")
                    .arg(ttl)
                    .ignore();
            }
            Write::Append(pid, offset, fields, record) => {
                if let Some(json) = record {
                    self.add(pipe, Write::Save(pid, json));
                }
                let log = self.log_key(pid);
                let cmd = pipe
                    .cmd("XADD")
                    .arg(&log)
                    .arg("MAXLEN")
                    .arg(self.config.max_packets.max(1))
                    .arg(format!("0-{offset}"));
                for (n, field) in fields.iter().enumerate() {
                    cmd.arg(n).arg(field.as_slice());
                }
                cmd.ignore();
                pipe.cmd("PEXPIRE").arg(log).arg(ttl).ignore();
            }
            Write::Touch(pids) => {
                for pid in pids {
                    pipe.cmd("PEXPIRE")
                        .arg(self.record_key(pid))
                        .arg(ttl)
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(self.log_key(pid)).arg(ttl).ignore();
                }
            }
            Write::Forget(pid) => {
                pipe.cmd("DEL")
                    .arg(self.record_key(pid))
                    .arg(self.log_key(pid))
                    .ignore();
            }
        }
    }
}

/// Sends the queued writes in order, in batches; a failed batch is logged and counted once
/// per run of failures.
async fn writer(store: RedisRecovery, mut rx: mpsc::Receiver<Write>) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        // One transaction a batch: a node that dies mid-batch leaves all of it or none
        // (a packet and the record written after it stay consistent).
        let mut pipe = redis::pipe();
        pipe.atomic();
        for write in batch.drain(..) {
            store.add(&mut pipe, write);
        }
        let mut connection = store.connection.clone();
        let sent = tokio::time::timeout(
            store.config.timeout,
            pipe.query_async::<()>(&mut connection),
        )
        .await;
        match sent {
            Ok(Ok(())) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("recovery store: writing to Redis again");
                }
            }
            Ok(Err(error)) if error.kind() == redis::ErrorKind::ResponseError => {
                // A packet another node already logged under that offset (a socket taken
                // over while its old node still ran): the log keeps the first.
                tracing::debug!(%error, "recovery store: a write was refused");
            }
            failed => {
                telemetry::redis_error("recovery");
                if !std::mem::replace(&mut failing, true) {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(%error, "recovery store: Redis write failed; recoveries on other nodes may fail until it is back");
                }
            }
        }
    }
}

/// A packet as stream fields: `t<text>` for the text frame, `b<bytes>` for each attachment.
fn fields(frames: &[MessageFrame]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|frame| match (frame.as_text(), frame.as_binary()) {
            (Some(text), _) => [b"t", text.as_bytes()].concat(),
            (None, Some(data)) => [b"b", data.as_ref()].concat(),
            (None, None) => Vec::new(),
        })
        .collect()
}

/// The packet back from its stream fields (field names and values alternate).
fn frames(fields: Vec<Vec<u8>>) -> Option<Vec<MessageFrame>> {
    fields
        .into_iter()
        .skip(1)
        .step_by(2)
        .map(|value| match value.split_first() {
            Some((b't', text)) => std::str::from_utf8(text).ok().map(MessageFrame::text),
            Some((b'b', data)) => Some(MessageFrame::binary(Bytes::copy_from_slice(data))),
            _ => None,
        })
        .collect()
}

impl RecoveryStore for RedisRecovery {
    fn save(&self, pid: Sid, record: &SocketRecord) {
        if let Ok(json) = serde_json::to_string(record) {
            self.queue(Write::Save(pid, json));
        }
    }

    fn append(
        &self,
        pid: Sid,
        offset: u64,
        frames: &[MessageFrame],
        record: Option<&SocketRecord>,
    ) {
        let record = record.and_then(|r| serde_json::to_string(r).ok());
        self.queue(Write::Append(pid, offset, fields(frames), record));
    }

    fn touch(&self, pids: Vec<Sid>) {
        for chunk in pids.chunks(512) {
            self.queue(Write::Touch(chunk.to_vec()));
        }
    }

    fn forget(&self, pid: Sid) {
        self.queue(Write::Forget(pid));
    }

    fn restore(
        &self,
        nsp: &str,
        pid: Sid,
        offset: Option<u64>,
    ) -> BoxFuture<'static, Option<Restored>> {
        let (store, nsp) = (self.clone(), nsp.to_owned());
        Box::pin(async move {
            let mut connection = store.connection.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(store.record_key(pid));
            pipe.cmd("XRANGE").arg(store.log_key(pid)).arg("-").arg("+");
            let read = tokio::time::timeout(
                store.config.timeout,
                pipe.query_async::<(Option<String>, Vec<(String, Vec<Vec<u8>>)>)>(&mut connection),
            )
            .await;
            let (record, entries) = match read {
                Ok(Ok(read)) => read,
                Ok(Err(error)) => {
                    telemetry::redis_error("recovery");
                    tracing::warn!(%error, "recovery store: a restore failed");
                    return None;
                }
                Err(_) => {
                    telemetry::redis_error("recovery");
                    tracing::warn!("recovery store: a restore timed out");
                    return None;
                }
            };
            let record: SocketRecord = serde_json::from_str(&record?).ok()?;
            if record.nsp != nsp {
                return None;
            }
            let mut log = Vec::with_capacity(entries.len());
            for (id, fields) in entries {
                let offset: u64 = id.strip_prefix("0-")?.parse().ok()?;
                log.push((offset, frames(fields)?));
            }
            // Offsets are given out one by one: a hole means a write was lost.
            if log.windows(2).any(|w| w[1].0 != w[0].0 + 1) {
                tracing::warn!("recovery store: a socket's log has a hole; not recovered");
                return None;
            }
            let seen = offset.unwrap_or(0);
            let kept = log.first().zip(log.last()).map(|(f, l)| (f.0, l.0));
            let next_offset = next_after(seen, kept)?;
            let missed = log
                .into_iter()
                .filter(|(offset, _)| *offset > seen)
                .map(|(_, frames)| frames)
                .collect();
            Some(Restored {
                record,
                missed,
                next_offset,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_through_stream_fields() {
        let packet = vec![
            MessageFrame::text(r#"51-/voice,["tts.audio",{"_placeholder":true,"num":0},"7"]"#),
            MessageFrame::binary(Bytes::from_static(&[0, 1, 2, 255])),
        ];
        let stored: Vec<Vec<u8>> = fields(&packet)
            .into_iter()
            .enumerate()
            .flat_map(|(n, value)| [n.to_string().into_bytes(), value])
            .collect();
        assert_eq!(frames(stored), Some(packet));
        // A field that is neither text nor bytes spoils the packet.
        assert_eq!(frames(vec![b"0".to_vec(), b"x".to_vec()]), None);
    }
}
