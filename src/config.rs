//! voxio's configuration: command-line flags, each with a `VOXIO_*` environment variable and a
//! documented default (`voxio --help` lists them all).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::engineio::{EngineConfig, OriginPolicy, Transports};

/// voxio: a realtime voice server (Engine.IO v4 / Socket.IO v5 on actix).
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to run; without one, the voice server.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server settings.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// voxio's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measures the voice pipeline on real speech: starts a server, streams spoken commands at
    /// real-time pace, prints the latency percentiles and the CPU cost per audio second
    /// (built with `--features bench`).
    #[cfg(feature = "bench")]
    BenchVoice {
        /// Turns each talker takes (commands and everyday sentences, alternating).
        #[arg(long, default_value_t = 20)]
        turns: usize,
        /// Talkers speaking at the same moment, each on its own connection; a list (`1,4,8`)
        /// measures each count in turn.
        #[arg(long, default_value = "1", value_delimiter = ',')]
        talkers: Vec<usize>,
        /// The classic pipeline (no Whisper model: pocketsphinx with the command grammar).
        #[arg(long)]
        classic: bool,
        /// Port for the server it starts (on 127.0.0.1).
        #[arg(long, default_value_t = 18_080)]
        port: u16,
    },
    /// Exits 0 if the server at VOXIO_BIND (on this machine) answers `/healthz` with 200, 1 if
    /// not: the container's HEALTHCHECK (the image has no curl).
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 2)]
        timeout_s: u64,
    },
    /// Serves the protocol test endpoints for external conformance suites: `/engine.io/` echoes
    /// every message back, `/socket.io/` serves namespaces `/` and `/custom`; pingInterval
    /// 300 ms, pingTimeout 200 ms, any Origin.
    ProtocolTest {
        /// Port to listen on (on 127.0.0.1).
        #[arg(long, default_value_t = 3000)]
        port: u16,
    },
}

/// Settings of the voice server.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "VOXIO_BIND", default_value = "0.0.0.0:8080")]
    pub bind: SocketAddr,
    /// A PEM certificate chain: voxio serves HTTPS (and WSS) itself, with VOXIO_TLS_KEY.
    #[arg(long, env = "VOXIO_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of VOXIO_TLS_CERT.
    #[arg(long, env = "VOXIO_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A separate address for `/metrics` (e.g. `127.0.0.1:9090`), so the metrics need not be
    /// public; unset: `/metrics` is on the main address.
    #[arg(long, env = "VOXIO_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// HTTP worker threads (0: one per CPU core).
    #[arg(long, env = "VOXIO_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Directory of the browser page's files.
    #[arg(long, env = "VOXIO_STATIC_DIR", default_value = "static")]
    pub static_dir: PathBuf,
    /// The official Socket.IO client bundle, served at `/socket.io/socket.io.js` (installed
    /// from npm by the project's setup, never committed).
    #[arg(
        long,
        env = "VOXIO_CLIENT_JS",
        default_value = "client/node_modules/socket.io-client/dist/socket.io.min.js"
    )]
    pub client_js: PathBuf,
    /// Redis URL (`redis://host:port/db`) for sessions and PIN attempt limits shared by every
    /// node; unset: in-process stores.
    /// With it, the nodes also share broadcasts and rooms (the cluster adapter).
    #[arg(long, env = "VOXIO_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Milliseconds a Redis operation may take before the page routes answer 503.
    #[arg(long, env = "VOXIO_REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
    /// The PIN, at least 6 characters; unset (and no hash): a random 10-digit PIN is generated
    /// at start and printed once.
    #[arg(long, env = "VOXIO_PIN", hide_env_values = true)]
    pub pin: Option<Secret>,
    /// The PIN as an Argon2 hash (PHC string), instead of VOXIO_PIN.
    #[arg(long, env = "VOXIO_PIN_HASH", hide_env_values = true)]
    pub pin_hash: Option<Secret>,
    /// Secret for session cookies and voice tokens (at least 32 bytes); every node of a
    /// cluster needs the same. Unset: random at start (sessions end with the process).
    #[arg(long, env = "VOXIO_SECRET", hide_env_values = true)]
    pub secret: Option<Secret>,
    /// Mark the session cookie Secure (serve over HTTPS).
    #[arg(long, env = "VOXIO_COOKIE_SECURE", default_value_t = false)]
    pub cookie_secure: bool,
    /// Seconds a page login lasts.
    #[arg(long, env = "VOXIO_SESSION_TTL_S", default_value_t = 43_200)]
    pub session_ttl_s: u64,
    /// Milliseconds a `/voice` socket may stay connected without authenticating.
    #[arg(long, env = "VOXIO_AUTH_TIMEOUT_MS", default_value_t = 60_000)]
    pub auth_timeout_ms: u64,
    /// Milliseconds a voice token (from /api/voice-token) stays valid.
    #[arg(long, env = "VOXIO_TOKEN_TTL_MS", default_value_t = 120_000)]
    pub token_ttl_ms: u64,
    /// PIN attempts a client address may make in a row without waiting (however many arrive
    /// at once, on however many nodes); a wrong one beyond starts the backoff.
    #[arg(long, env = "VOXIO_PIN_FREE_ATTEMPTS", default_value_t = 3)]
    pub pin_free_attempts: u32,
    /// First backoff after the free attempts, in milliseconds; doubles with each attempt.
    #[arg(long, env = "VOXIO_PIN_BACKOFF_MS", default_value_t = 1000)]
    pub pin_backoff_ms: u64,
    /// Longest backoff, in milliseconds.
    #[arg(long, env = "VOXIO_PIN_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub pin_backoff_max_ms: u64,
    /// Wrong PINs a minute across all clients; past it every attempt waits for the next minute
    /// (so many addresses guess no faster than one). 0: no global budget.
    #[arg(long, env = "VOXIO_PIN_GLOBAL_FAILURES_PER_MIN", default_value_t = 30)]
    pub pin_global_failures_per_min: u32,
    /// Argon2 PIN verifications (VOXIO_PIN_HASH) run at once, off the I/O threads.
    #[arg(long, env = "VOXIO_PIN_VERIFY_CONCURRENCY", default_value_t = 2)]
    pub pin_verify_concurrency: usize,
    /// The voice pipeline: `default` (VAD, speech-to-text, assistant, speech), or `none`
    /// (audio is acknowledged and dropped: for transport benchmarks).
    #[arg(long, env = "VOXIO_PIPELINE", default_value = "default")]
    pub pipeline: String,
    /// Directory of the speech models the setup installs (`scripts/deps.sh models`):
    /// `whisper-tiny.en/`, `silero-vad/`, `smart-turn/` and the ONNX Runtime library they run
    /// on, `onnxruntime/`. A missing model is logged once and its classic fallback used.
    #[arg(long, env = "VOXIO_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Threads one Whisper decode computes with (0: one per CPU core, at most 4).
    #[arg(long, env = "VOXIO_WHISPER_THREADS", default_value_t = 0)]
    pub whisper_threads: usize,
    /// Whisper's arithmetic: `int8` or `float32`.
    #[arg(long, env = "VOXIO_WHISPER_PRECISION", default_value = "int8")]
    pub whisper_precision: String,
    /// Turns that may wait for their final transcript; past that a turn is told `busy`.
    #[arg(long, env = "VOXIO_STT_QUEUE", default_value_t = 16)]
    pub stt_queue: usize,
    /// End-of-turn checks (Smart Turn, ~50 ms each) that may wait; past that a pause is not
    /// checked and the turn ends after the hangover.
    #[arg(long, env = "VOXIO_TURN_CHECK_QUEUE", default_value_t = 16)]
    pub turn_check_queue: usize,
    /// Speech-to-text decoder threads (each holds a warm pocketsphinx decoder, ~100 MB): the
    /// partial transcripts (and, without Whisper, the final ones).
    #[arg(long, env = "VOXIO_STT_THREADS", default_value_t = 2)]
    pub stt_threads: usize,
    /// Directory of the pocketsphinx model.
    #[arg(
        long,
        env = "VOXIO_STT_MODEL_DIR",
        default_value = "/usr/share/pocketsphinx/model/en-us"
    )]
    pub stt_model_dir: PathBuf,
    /// Speech to text: `builtin` (Whisper for finals and pocketsphinx for partials; the
    /// pocketsphinx command grammar when the Whisper model is missing) or `openai`
    /// (`/audio/transcriptions`).
    #[arg(long, env = "VOXIO_STT", default_value = "builtin")]
    pub stt: String,
    /// The assistant: `builtin` (the to-do list) or `openai` (streaming `/chat/completions`).
    #[arg(long, env = "VOXIO_ASSISTANT", default_value = "builtin")]
    pub assistant: String,
    /// Text to speech: `flite`, `espeak-ng` (programs run per sentence) or `openai`
    /// (`/audio/speech`).
    #[arg(long, env = "VOXIO_TTS", default_value = "flite")]
    pub tts: String,
    /// Base URL of the OpenAI-compatible API.
    #[arg(
        long,
        env = "VOXIO_OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: String,
    /// API key for the OpenAI-compatible API.
    #[arg(long, env = "VOXIO_OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<Secret>,
    /// Model for `/audio/transcriptions`.
    #[arg(long, env = "VOXIO_OPENAI_STT_MODEL", default_value = "whisper-1")]
    pub openai_stt_model: String,
    /// Model for `/chat/completions`.
    #[arg(long, env = "VOXIO_OPENAI_CHAT_MODEL", default_value = "gpt-4o-mini")]
    pub openai_chat_model: String,
    /// Model for `/audio/speech`.
    #[arg(long, env = "VOXIO_OPENAI_TTS_MODEL", default_value = "tts-1")]
    pub openai_tts_model: String,
    /// Voice for `/audio/speech`.
    #[arg(long, env = "VOXIO_OPENAI_TTS_VOICE", default_value = "alloy")]
    pub openai_tts_voice: String,
    /// Milliseconds a remote provider's request may take.
    #[arg(long, env = "VOXIO_OPENAI_TIMEOUT_MS", default_value_t = 15_000)]
    pub openai_timeout_ms: u64,
    /// The speech program's voice (flite: slt, rms, awb, kal; espeak-ng: en, en-us, …).
    #[arg(long, env = "VOXIO_TTS_VOICE", default_value = "slt")]
    pub tts_voice: String,
    /// Voice score (0 to 1) at or above which a 16 ms frame counts as speech.
    #[arg(long, env = "VOXIO_VAD_THRESHOLD", default_value_t = 0.5)]
    pub vad_threshold: f32,
    /// Silence, in milliseconds, that ends a turn the end-of-turn model did not end sooner
    /// (it or the words said the user had not finished), at most 3000. Default: 1000 with
    /// Smart Turn, 600 without it.
    #[arg(long, env = "VOXIO_TURN_HANGOVER_MS")]
    pub turn_hangover_ms: Option<u64>,
    /// Silence, in milliseconds, after which the end-of-turn model is asked whether the user
    /// has finished (and asked again after each further pause); at most the hangover.
    #[arg(long, env = "VOXIO_TURN_PAUSE_MS", default_value_t = 200)]
    pub turn_pause_ms: u64,
    /// Silence, in milliseconds, after which the final transcript is started speculatively
    /// (thrown away if the user goes on), so that its words are ready when the turn is
    /// declared over; at most the pause (which is then the speculation point too). At 120
    /// against 200, commands' first audio came 35-50 ms sooner, with the same accuracy.
    #[arg(long, env = "VOXIO_TURN_SPECULATE_MS", default_value_t = 120)]
    pub turn_speculate_ms: u64,
    /// Confidence (0 to 1) below which the assistant asks before removing or clearing.
    #[arg(long, env = "VOXIO_CONFIRM_BELOW", default_value_t = 0.6)]
    pub confirm_below: f32,
    /// Seconds a user's to-do list is kept in Redis after its last change (with
    /// `VOXIO_REDIS_URL`; without it, lists live as long as the process).
    #[arg(long, env = "VOXIO_TODO_TTL_S", default_value_t = 30 * 24 * 3600)]
    pub todo_ttl_s: u64,
    /// Seconds a user's conversation history (the last 20 lines: what they said and what they
    /// heard of the answers) is kept in Redis after its last line (with `VOXIO_REDIS_URL`;
    /// without it, in the process). An OpenAI-compatible assistant answers with it.
    #[arg(long, env = "VOXIO_HISTORY_TTL_S", default_value_t = 24 * 3600)]
    pub history_ttl_s: u64,
    /// Voiced milliseconds in a row that confirm speech.
    #[arg(long, env = "VOXIO_TURN_CONFIRM_MS", default_value_t = 200)]
    pub turn_confirm_ms: u64,
    /// Milliseconds of audio kept from before speech was confirmed.
    #[arg(long, env = "VOXIO_TURN_PREROLL_MS", default_value_t = 300)]
    pub turn_preroll_ms: u64,
    /// Longest turn, in milliseconds.
    #[arg(long, env = "VOXIO_TURN_MAX_MS", default_value_t = 15_000)]
    pub turn_max_ms: u64,
    /// Audio chunks a pipeline queues before dropping the oldest.
    #[arg(long, env = "VOXIO_AUDIO_QUEUE", default_value_t = 256)]
    pub audio_queue: usize,
    /// Reverse proxies (addresses or networks, comma-separated) whose `X-Forwarded-For` names
    /// the client, for the per-address PIN backoff. Empty: the peer address is the client.
    #[arg(long, env = "VOXIO_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Milliseconds between this node's heartbeats to the others on Redis.
    #[arg(long, env = "VOXIO_CLUSTER_HEARTBEAT_MS", default_value_t = 2_000)]
    pub cluster_heartbeat_ms: u64,
    /// Milliseconds after which a silent node is forgotten by the others.
    #[arg(long, env = "VOXIO_CLUSTER_NODE_TIMEOUT_MS", default_value_t = 6_000)]
    pub cluster_node_timeout_ms: u64,
    /// The base URL other nodes reach this one at (`http://voxio1:8080`), announced in its
    /// heartbeats: a polling request for one of its sessions that reaches another node is
    /// forwarded here, so the load balancer needs no sticky sessions. Unset: this node's
    /// address when it binds a specific one (`http://<VOXIO_BIND>`); when it binds every
    /// address, nothing is announced and requests for its sessions must come to it.
    #[arg(long, env = "VOXIO_CLUSTER_URL")]
    pub cluster_url: Option<String>,
    /// Broadcasts queued for Redis at most; beyond it (Redis slow or away) they are dropped
    /// for the other nodes and counted, and still delivered on this one.
    #[arg(long, env = "VOXIO_CLUSTER_QUEUE", default_value_t = 4096)]
    pub cluster_queue: usize,
    /// Milliseconds a `/voice` socket whose connection dropped waits for its client to come
    /// back (Socket.IO connection state recovery: same socket, no new PIN, the events it
    /// missed sent again, its pipeline still running meanwhile). 0 turns recovery off.
    #[arg(long, env = "VOXIO_RECOVERY_WINDOW_MS", default_value_t = 30_000)]
    pub recovery_window_ms: u64,
    /// Events kept per `/voice` socket for a recovery, at most.
    #[arg(long, env = "VOXIO_RECOVERY_MAX_PACKETS", default_value_t = 1024)]
    pub recovery_max_packets: usize,
    /// Bytes of events (spoken audio included) kept per `/voice` socket for a recovery, at
    /// most.
    #[arg(long, env = "VOXIO_RECOVERY_MAX_BYTES", default_value_t = 2 << 20)]
    pub recovery_max_bytes: usize,
    /// `/voice` sockets waiting for their client at once, at most; a connection that drops
    /// beyond it ends its socket at once.
    #[arg(long, env = "VOXIO_RECOVERY_MAX_WAITING", default_value_t = 10_000)]
    pub recovery_max_waiting: usize,
    /// Milliseconds a shutdown (SIGTERM, SIGINT) lets running voice turns finish before every
    /// connection is closed and the process exits.
    #[arg(long, env = "VOXIO_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// Log format: `text` (for people) or `json` (one object per line, for log collectors).
    /// The level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "VOXIO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Engine.IO settings.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// A secret setting: never shown by `Debug` (so never in a log).
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Engine.IO settings, as flags and environment variables.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Milliseconds between the server's pings.
    #[arg(long, env = "VOXIO_PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,
    /// Milliseconds to wait for a pong before closing the session.
    #[arg(long, env = "VOXIO_PING_TIMEOUT_MS", default_value_t = 20_000)]
    pub ping_timeout_ms: u64,
    /// Largest packet, polling POST body or WebSocket message, in bytes.
    #[arg(long, env = "VOXIO_MAX_PAYLOAD", default_value_t = 1_000_000)]
    pub max_payload: usize,
    /// Milliseconds a WebSocket may take to complete an upgrade from polling.
    #[arg(long, env = "VOXIO_UPGRADE_TIMEOUT_MS", default_value_t = 10_000)]
    pub upgrade_timeout_ms: u64,
    /// Accepted transports, comma-separated: polling, websocket.
    #[arg(long, env = "VOXIO_TRANSPORTS", default_value = "polling,websocket")]
    pub transports: String,
    /// Browser origins allowed to connect: `same-origin`, `*`, or a comma-separated list of
    /// origins such as `https://app.example.com`.
    #[arg(long, env = "VOXIO_ALLOWED_ORIGINS", default_value = "same-origin")]
    pub allowed_origins: String,
    /// Most sessions open at once; handshakes beyond it get 503.
    #[arg(long, env = "VOXIO_MAX_SESSIONS", default_value_t = 100_000)]
    pub max_sessions: usize,
    /// Most sessions open at once from one client address (behind trusted proxies: the
    /// forwarded one; IPv6: its /64); handshakes beyond it get 429. 0: no limit.
    #[arg(long, env = "VOXIO_MAX_SESSIONS_PER_CLIENT", default_value_t = 256)]
    pub max_sessions_per_client: usize,
    /// Most packets queued for one client; a reliable packet beyond it closes the session, a
    /// volatile one is dropped.
    #[arg(long, env = "VOXIO_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,
    /// Most payload bytes queued for one client (one packet alone may be larger); past it, as
    /// for VOXIO_OUTBOUND_QUEUE.
    #[arg(long, env = "VOXIO_OUTBOUND_BYTES", default_value_t = 8 << 20)]
    pub outbound_bytes: usize,
    /// Most WebSocket frames one message may be fragmented into.
    #[arg(long, env = "VOXIO_MAX_WS_FRAGMENTS", default_value_t = 256)]
    pub max_ws_fragments: usize,
    /// Most WebSocket pings a client may send while the pong to an earlier one is stuck (it
    /// reads nothing); more close the connection (1008).
    #[arg(long, env = "VOXIO_MAX_UNANSWERED_PINGS", default_value_t = 64)]
    pub max_unanswered_pings: usize,
}

impl EngineArgs {
    /// The Engine.IO configuration these settings describe.
    pub fn engine_config(&self) -> EngineConfig {
        let transports = Transports {
            polling: self.transports.split(',').any(|t| t.trim() == "polling"),
            websocket: self.transports.split(',').any(|t| t.trim() == "websocket"),
        };
        EngineConfig {
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            ping_timeout: Duration::from_millis(self.ping_timeout_ms),
            max_payload: self.max_payload,
            upgrade_timeout: Duration::from_millis(self.upgrade_timeout_ms),
            transports,
            origins: OriginPolicy::parse(&self.allowed_origins),
            max_sessions: self.max_sessions,
            max_sessions_per_client: self.max_sessions_per_client,
            client_of: Default::default(),
            outbound_queue: self.outbound_queue,
            outbound_bytes: self.outbound_bytes,
            max_fragments: self.max_ws_fragments,
            max_unanswered_pings: self.max_unanswered_pings,
            ..EngineConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_engine_defaults() {
        let cli = Cli::try_parse_from(["voxio"]).unwrap();
        let ours = cli.server.engine.engine_config();
        let theirs = EngineConfig::default();
        assert_eq!(ours.ping_interval, theirs.ping_interval);
        assert_eq!(ours.ping_timeout, theirs.ping_timeout);
        assert_eq!(ours.max_payload, theirs.max_payload);
        assert_eq!(ours.upgrade_timeout, theirs.upgrade_timeout);
        assert_eq!(ours.transports, theirs.transports);
        assert_eq!(ours.origins, theirs.origins);
        assert_eq!(ours.max_sessions, theirs.max_sessions);
        assert_eq!(ours.outbound_queue, theirs.outbound_queue);
        assert_eq!(ours.max_fragments, theirs.max_fragments);
    }

    #[test]
    fn turn_defaults_match_the_library() {
        let cli = Cli::try_parse_from(["voxio"]).unwrap();
        let ours = &cli.server;
        let theirs = crate::voice::turn::TurnConfig::default();
        assert_eq!(Duration::from_millis(ours.turn_confirm_ms), theirs.confirm);
        assert_eq!(Duration::from_millis(ours.turn_preroll_ms), theirs.preroll);
        assert_eq!(ours.turn_hangover_ms, None);
        assert_eq!(theirs.hangover, crate::voice::turn::HANGOVER_WITHOUT_MODEL);
        assert_eq!(Duration::from_millis(ours.turn_max_ms), theirs.max_turn);
        assert_eq!(Duration::from_millis(ours.turn_pause_ms), theirs.pause);
        assert_eq!(
            Duration::from_millis(ours.turn_speculate_ms),
            theirs.speculate
        );
        assert_eq!(ours.vad_threshold, theirs.threshold);
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let cli = Cli::try_parse_from(["voxio", "--pin", "424242", "--secret", "s3cr3t"]).unwrap();
        let shown = format!("{cli:?}");
        assert!(
            !shown.contains("424242") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }

    #[test]
    fn every_server_option_has_a_variable_a_help_and_shows_in_help() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd.render_long_help().to_string();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{id} has no VOXIO_* variable"));
            let env = env.to_str().unwrap();
            assert!(env.starts_with("VOXIO_"), "{id}: {env}");
            assert!(arg.get_help().is_some(), "--{id} has no help");
            assert!(help.contains(env), "--help shows {env}");
        }
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert!(Cli::try_parse_from(["voxio", "--log-format", "json"]).is_ok());
        assert!(Cli::try_parse_from(["voxio", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn transports_parse() {
        let cli = Cli::try_parse_from(["voxio", "--transports", "websocket"]).unwrap();
        let config = cli.server.engine.engine_config();
        assert!(!config.transports.polling);
        assert!(config.transports.websocket);
    }
}
