//! Process metrics in Prometheus text format, from the `metrics` crate and its Prometheus
//! recorder.
//!
//! Hot paths (packets, audio chunks) hold their counters as handles resolved once, so counting
//! one is an atomic add, not a registry lookup. The handles are resolved the first time a part
//! of the server counts something; [`install`] must run before that (it is called by
//! [`crate::web::Voxio::build`]), or the handles stay no-ops.

use std::sync::{Arc, LazyLock, OnceLock};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engineio::{CloseReason, EngineObserver, Observer, TransportKind};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0,
                    ],
                )
                .expect("bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

/// The installed recorder's handle, if [`install`] ran.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get()
}

fn describe() {
    describe_gauge!(
        "voxio_engine_sessions",
        "Engine.IO sessions open now, by transport"
    );
    describe_counter!(
        "voxio_engine_sessions_opened_total",
        "Engine.IO sessions opened, by first transport"
    );
    describe_counter!(
        "voxio_engine_upgrades_total",
        "Sessions upgraded from polling to WebSocket"
    );
    describe_counter!(
        "voxio_engine_closes_total",
        "Engine.IO sessions closed, by reason"
    );
    describe_counter!(
        "voxio_engine_packets_total",
        "Engine.IO packets, by direction and transport"
    );
    describe_counter!(
        "voxio_engine_bytes_total",
        Unit::Bytes,
        "Engine.IO payload bytes, by direction and transport"
    );
    describe_counter!(
        "voxio_engine_refused_total",
        "Handshakes refused, by reason"
    );
    describe_counter!(
        "voxio_voice_audio_chunks_total",
        "Audio chunks accepted for a voice pipeline"
    );
    describe_counter!(
        "voxio_voice_audio_dropped_total",
        "Audio chunks dropped because a pipeline's inbox was full"
    );
    describe_counter!("voxio_voice_turns_total", "Voice turns started");
    describe_counter!(
        "voxio_voice_pipeline_moves_total",
        "Voice pipelines moved to the thread of their connection (after an upgrade)"
    );
    describe_counter!(
        "voxio_voice_turn_checks_total",
        "Pauses the end-of-turn model gave a verdict on"
    );
    describe_counter!(
        "voxio_voice_turn_checks_refused_total",
        "Pauses not checked because too many checks were waiting (the hangover ended the turn)"
    );
    describe_counter!(
        "voxio_voice_stt_dropped_total",
        "Audio batches a speech-to-text decoder could not take (it fell 12 s behind)"
    );
    describe_counter!(
        "voxio_voice_stt_busy_total",
        "Turns not transcribed because the speech-to-text queue was full"
    );
    describe_histogram!(
        "voxio_voice_stage_seconds",
        Unit::Seconds,
        "Voice latency by stage: vad_stop, stt_final, assistant_first, tts_first, total; \
         whisper is one Whisper decode"
    );
    describe_counter!(
        "voxio_auth_failures_total",
        "Refused authentications, by kind (pin, token, login)"
    );
    describe_counter!(
        "voxio_redis_errors_total",
        "Failed Redis operations, by component"
    );
    describe_gauge!(
        "voxio_cluster_nodes",
        "voxio nodes this node hears on Redis, itself included"
    );
    describe_counter!(
        "voxio_cluster_messages_total",
        "Cluster messages, by direction (published, received, dropped)"
    );
    describe_gauge!(
        "voxio_shutting_down",
        "1 while the node drains for a shutdown"
    );
    describe_gauge!(
        "voxio_voice_pipelines",
        "Voice pipelines running on this node (one per authenticated /voice socket)"
    );
    describe_counter!(
        "voxio_engine_polling_requests_total",
        "Polling requests received, straight from their client (direct) or forwarded by the node they reached"
    );
    describe_counter!(
        "voxio_engine_forwarded_total",
        "Polling requests for another node's session forwarded to it, by result"
    );
    describe_counter!(
        "voxio_voice_restored_total",
        "Authenticated /voice sockets restored on this node from the recovery store (their node went away)"
    );
}

/// Engine.IO counters, one handle each per transport.
struct EngineMetrics {
    pub sessions: [Gauge; 2],
    pub opened: [Counter; 2],
    pub packets_in: [Counter; 2],
    pub packets_out: [Counter; 2],
    pub bytes_in: [Counter; 2],
    pub bytes_out: [Counter; 2],
    pub upgrades: Counter,
    /// Polling requests: straight from the client, forwarded by another node.
    pub polling_requests: [Counter; 2],
}

/// The transports, in the order of the per-transport arrays ([`index`]).
const TRANSPORTS: [TransportKind; 2] = [TransportKind::Polling, TransportKind::WebSocket];

fn by_transport<T>(f: impl Fn(&'static str) -> T) -> [T; 2] {
    TRANSPORTS.map(|t| f(t.as_str()))
}

static ENGINE: LazyLock<EngineMetrics> = LazyLock::new(|| EngineMetrics {
    sessions: by_transport(|t| gauge!("voxio_engine_sessions", "transport" => t)),
    opened: by_transport(|t| counter!("voxio_engine_sessions_opened_total", "transport" => t)),
    packets_in: by_transport(
        |t| counter!("voxio_engine_packets_total", "direction" => "in", "transport" => t),
    ),
    packets_out: by_transport(
        |t| counter!("voxio_engine_packets_total", "direction" => "out", "transport" => t),
    ),
    bytes_in: by_transport(
        |t| counter!("voxio_engine_bytes_total", "direction" => "in", "transport" => t),
    ),
    bytes_out: by_transport(
        |t| counter!("voxio_engine_bytes_total", "direction" => "out", "transport" => t),
    ),
    upgrades: counter!("voxio_engine_upgrades_total"),
    polling_requests: ["direct", "forwarded"]
        .map(|via| counter!("voxio_engine_polling_requests_total", "via" => via)),
});

/// Where `transport` is in [`TRANSPORTS`].
fn index(transport: TransportKind) -> usize {
    match transport {
        TransportKind::Polling => 0,
        TransportKind::WebSocket => 1,
    }
}

/// The engine's observer that keeps the `voxio_engine_*` metrics.
pub struct EngineTelemetry;

impl EngineTelemetry {
    /// The observer, as the engine's configuration takes it.
    pub fn observer() -> Observer {
        Observer(Arc::new(EngineTelemetry))
    }
}

impl EngineObserver for EngineTelemetry {
    fn polling_request(&self, forwarded: bool) {
        ENGINE.polling_requests[usize::from(forwarded)].increment(1);
    }

    fn opened(&self, transport: TransportKind) {
        ENGINE.sessions[index(transport)].increment(1.0);
        ENGINE.opened[index(transport)].increment(1);
    }

    fn upgraded(&self) {
        ENGINE.sessions[index(TransportKind::Polling)].decrement(1.0);
        ENGINE.sessions[index(TransportKind::WebSocket)].increment(1.0);
        ENGINE.upgrades.increment(1);
    }

    fn ended(&self, transport: TransportKind) {
        ENGINE.sessions[index(transport)].decrement(1.0);
    }

    // Not per packet: a registry lookup is fine for a close or a refusal.
    fn closed(&self, reason: CloseReason) {
        counter!("voxio_engine_closes_total", "reason" => reason.as_str()).increment(1);
    }

    fn refused(&self, reason: &'static str) {
        counter!("voxio_engine_refused_total", "reason" => reason).increment(1);
    }

    fn received(&self, transport: TransportKind, packets: u64, bytes: u64) {
        ENGINE.packets_in[index(transport)].increment(packets);
        ENGINE.bytes_in[index(transport)].increment(bytes);
    }

    fn sent(&self, transport: TransportKind, packets: u64, bytes: u64) {
        ENGINE.packets_out[index(transport)].increment(packets);
        ENGINE.bytes_out[index(transport)].increment(bytes);
    }
}

/// Voice counters.
pub(crate) struct VoiceMetrics {
    pub chunks: Counter,
    pub dropped: Counter,
    pub turns: Counter,
    pub moves: Counter,
    pub turn_checks: Counter,
    pub turn_checks_refused: Counter,
}

pub(crate) static VOICE: LazyLock<VoiceMetrics> = LazyLock::new(|| VoiceMetrics {
    chunks: counter!("voxio_voice_audio_chunks_total"),
    dropped: counter!("voxio_voice_audio_dropped_total"),
    turns: counter!("voxio_voice_turns_total"),
    moves: counter!("voxio_voice_pipeline_moves_total"),
    turn_checks: counter!("voxio_voice_turn_checks_total"),
    turn_checks_refused: counter!("voxio_voice_turn_checks_refused_total"),
});

/// Counts an audio batch a speech-to-text decoder could not take.
pub(crate) fn stt_dropped() {
    counter!("voxio_voice_stt_dropped_total").increment(1);
}

/// Counts a turn refused by a full speech-to-text queue.
pub(crate) fn stt_busy() {
    counter!("voxio_voice_stt_busy_total").increment(1);
}

/// Records one voice stage's latency.
pub(crate) fn voice_stage(stage: &'static str, seconds: f64) {
    let h: Histogram = histogram!("voxio_voice_stage_seconds", "stage" => stage);
    h.record(seconds);
}

/// Counts a refused authentication.
pub fn auth_failure(kind: &'static str) {
    counter!("voxio_auth_failures_total", "kind" => kind).increment(1);
}

/// Counts a failed Redis operation.
pub fn redis_error(component: &'static str) {
    counter!("voxio_redis_errors_total", "component" => component).increment(1);
}

/// Sets how many cluster nodes this node hears.
/// How many voice pipelines run now.
pub(crate) fn voice_pipelines(n: usize) {
    gauge!("voxio_voice_pipelines").set(n as f64);
}

/// Counts a polling request forwarded to the node holding its session, by result (`ok`,
/// `failed`: the owner could not be reached, `too_large`).
pub(crate) fn forwarded(result: &'static str) {
    counter!("voxio_engine_forwarded_total", "result" => result).increment(1);
}

/// Counts an authenticated `/voice` socket restored from the recovery store.
pub(crate) fn voice_restored() {
    counter!("voxio_voice_restored_total").increment(1);
}

pub fn cluster_nodes(n: usize) {
    gauge!("voxio_cluster_nodes").set(n as f64);
}

/// Counts a cluster message.
pub fn cluster_message(direction: &'static str) {
    counter!("voxio_cluster_messages_total", "direction" => direction).increment(1);
}

/// Marks the node draining.
pub fn shutting_down() {
    gauge!("voxio_shutting_down").set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_follows_the_order_of_the_arrays() {
        for (i, t) in TRANSPORTS.into_iter().enumerate() {
            assert_eq!(index(t), i, "{}", t.as_str());
        }
    }
}
