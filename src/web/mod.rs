//! The HTTP application: one actix-web app on one port serving the page, the Socket.IO
//! endpoint, health, and the login routes.
//!
//! Page login (`POST /login` with the PIN) renews the session id and sets an HttpOnly,
//! SameSite=Strict cookie; `GET /api/voice-token` turns a logged-in session into a short-lived
//! signed token for the socket's CONNECT auth; `POST /logout` purges the session and
//! disconnects that login's sockets. POST routes refuse cross-site requests (Origin /
//! Sec-Fetch-Site). Sessions never touch realtime traffic (see [`session`]).

pub mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_session::config::{PersistentSession, SessionLifecycle};
use actix_session::storage::RedisSessionStore;
use actix_session::{Session, SessionMiddleware};
use actix_web::cookie::{Key, SameSite};
use actix_web::http::header;
use actix_web::web::{self, ServiceConfig};
use actix_web::{HttpRequest, HttpResponse};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::{
    AttemptStore, Auth, Limits, MemoryAttempts, MemoryRevocations, Pin, PinGate, RedisAttempts,
    RedisRevocations, Refused, Revocations, TokenSigner, TrustedProxies,
};
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::ServerArgs;
use crate::engineio::{Engine, OriginPolicy};
use crate::socketio::{SocketIo, SocketIoConfig};
use crate::voice;
use session::{BypassSessions, SessionStoreKind, StoreHealth};

/// The path prefix of the Socket.IO endpoint.
pub const SOCKET_PATH: &str = "/socket.io/";

/// Everything the app shares across workers.
#[derive(Clone)]
pub struct Voxio {
    /// The Engine.IO server at `/socket.io/`.
    pub engine: Engine,
    /// The Socket.IO server on it.
    pub io: SocketIo,
    /// PIN, limits and tokens.
    pub auth: Arc<Auth>,
    /// The `/voice` namespace's state (its running pipelines).
    pub voice: Arc<voice::Voice>,
    /// The other nodes, when Redis is configured.
    pub cluster: Option<Cluster>,
    metrics: PrometheusHandle,
    /// A connection to check Redis with, when configured.
    redis_ping: Option<(redis::aio::ConnectionManager, Duration)>,
    static_dir: PathBuf,
    client_js: PathBuf,
    origins: OriginPolicy,
    cookie_key: Key,
    cookie_secure: bool,
    session_ttl: Duration,
    metrics_apart: bool,
    redis_store: Option<(RedisSessionStore, Duration, Arc<StoreHealth>)>,
}

/// What [`Voxio::build`] tells the caller to print once.
pub struct Startup {
    /// The app.
    pub voxio: Voxio,
    /// The PIN, when it was generated (print it once; it is in no log).
    pub generated_pin: Option<String>,
}

impl Voxio {
    /// Builds the app from its settings (connects to Redis when configured).
    pub async fn build(args: &ServerArgs) -> anyhow::Result<Startup> {
        let metrics = crate::telemetry::install();
        let (pin, generated_pin) = match (&args.pin_hash, &args.pin) {
            (Some(hash), _) => (
                Pin::argon2(&hash.0)
                    .ok_or_else(|| anyhow::anyhow!("VOXIO_PIN_HASH is not an Argon2 PHC string"))?,
                None,
            ),
            (None, Some(pin)) => (Pin::plain(&pin.0).map_err(|e| anyhow::anyhow!(e))?, None),
            (None, None) => {
                let (text, pin) = Pin::generate();
                (pin, Some(text))
            }
        };
        let secret = match &args.secret {
            Some(secret) if secret.0.len() >= 32 => secret.0.as_bytes().to_vec(),
            Some(_) => anyhow::bail!("VOXIO_SECRET must be at least 32 bytes"),
            None => {
                let mut random = vec![0u8; 64];
                rand::rng().fill_bytes(&mut random);
                random
            }
        };
        let limits = Limits {
            free_attempts: args.pin_free_attempts,
            base: Duration::from_millis(args.pin_backoff_ms),
            max: Duration::from_millis(args.pin_backoff_max_ms),
            global_per_minute: args.pin_global_failures_per_min,
            ..Limits::default()
        };
        let redis_timeout = Duration::from_millis(args.redis_timeout_ms);
        type Stores = (Arc<dyn AttemptStore>, Arc<dyn Revocations>);
        let ((attempts, revoked), redis_store, redis_ping): (Stores, _, _) = match &args.redis_url {
            None => (
                (
                    Arc::new(MemoryAttempts::new(limits)),
                    Arc::new(MemoryRevocations::default()),
                ),
                None,
                None,
            ),
            Some(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(redis_timeout)
                    .set_response_timeout(redis_timeout)
                    .set_number_of_retries(1);
                let connection = client.get_connection_manager_with_config(config).await?;
                let store = RedisSessionStore::builder(url.clone())
                    .build()
                    .await
                    .map_err(|e| anyhow::anyhow!("Redis session store: {e}"))?;
                (
                    (
                        Arc::new(RedisAttempts {
                            limits,
                            connection: connection.clone(),
                            timeout: redis_timeout,
                        }),
                        Arc::new(RedisRevocations {
                            connection: connection.clone(),
                            timeout: redis_timeout,
                        }),
                    ),
                    Some((store, redis_timeout, Arc::new(StoreHealth::default()))),
                    Some((connection, redis_timeout)),
                )
            }
        };
        let stages = match args.pipeline.as_str() {
            "none" => None,
            "default" => Some(Arc::new(stages(args, redis_ping.as_ref())?)),
            other => anyhow::bail!("VOXIO_PIPELINE must be default or none, not {other:?}"),
        };
        let proxies =
            TrustedProxies::parse(&args.trusted_proxies).map_err(|e| anyhow::anyhow!(e))?;
        let auth = Arc::new(Auth {
            gate: PinGate::new(pin, attempts, args.pin_verify_concurrency),
            tokens: TokenSigner::new(&secret, Duration::from_millis(args.token_ttl_ms)),
            revoked,
            proxies,
        });
        let io = SocketIo::new(SocketIoConfig::default());
        let voice = Arc::new(voice::Voice {
            auth: auth.clone(),
            stages,
            pipelines: voice::Pipelines::default(),
            auth_timeout: Duration::from_millis(args.auth_timeout_ms),
            recovery: (args.recovery_window_ms > 0).then(|| crate::socketio::RecoveryConfig {
                window: Duration::from_millis(args.recovery_window_ms),
                max_packets: args.recovery_max_packets.max(1),
                max_bytes: args.recovery_max_bytes.max(1),
                max_waiting: args.recovery_max_waiting,
            }),
        });
        voice::namespace(&io, voice.clone());
        let cluster = match &args.redis_url {
            None => None,
            Some(url) => Some(Cluster::start(
                &io,
                ClusterConfig {
                    redis_url: url.clone(),
                    prefix: "voxio".into(),
                    heartbeat: Duration::from_millis(args.cluster_heartbeat_ms.max(1)),
                    node_timeout: Duration::from_millis(args.cluster_node_timeout_ms.max(1)),
                    queue: args.cluster_queue,
                    timeout: redis_timeout,
                    url: cluster_url(args),
                },
            )?),
        };
        if let (Some((connection, timeout)), Some(recovery)) = (&redis_ping, voice.recovery) {
            // A client whose node went away recovers its /voice socket on another.
            io.set_recovery_store(Arc::new(crate::recovery_store::RedisRecovery::start(
                connection.clone(),
                crate::recovery_store::RedisRecoveryConfig {
                    prefix: "voxio".into(),
                    window: recovery.window,
                    max_packets: recovery.max_packets,
                    queue: args.cluster_queue.max(4096) * 4,
                    timeout: *timeout,
                },
            )));
        }
        let mut engine_config = args.engine.engine_config();
        let proxies = auth.proxies.clone();
        engine_config.client_of = crate::engineio::ClientOf(Arc::new(move |peer, headers| {
            Some(crate::auth::client_key(proxies.client_ip(peer, headers)))
        }));
        engine_config.observer = crate::telemetry::EngineTelemetry::observer();
        if let Some(cluster) = &cluster {
            // Session ids say which node holds them; requests for another node's go there.
            engine_config.node_tag = Some(cluster.tag().to_owned());
            let hold = engine_config.ping_interval + engine_config.ping_timeout;
            engine_config.elsewhere = Some(Arc::new(crate::forward::Forwarder::new(
                cluster.clone(),
                hold + Duration::from_secs(5),
                engine_config.max_payload,
            )));
        }
        let origins = engine_config.origins.clone();
        let engine = Engine::new(engine_config, io.engine_handler());
        Ok(Startup {
            voxio: Voxio {
                engine,
                io,
                auth,
                voice,
                cluster,
                metrics,
                redis_ping,
                static_dir: args.static_dir.clone(),
                client_js: args.client_js.clone(),
                origins,
                cookie_key: Key::derive_from(&secret),
                cookie_secure: args.cookie_secure,
                session_ttl: Duration::from_secs(args.session_ttl_s),
                metrics_apart: args.metrics_bind.is_some(),
                redis_store,
            },
            generated_pin,
        })
    }

    /// Drains this node for a shutdown: refuses new sessions, closes every session that has no
    /// voice turn running at once and each of the others when its turn is done, and after
    /// `grace` closes whatever is left. Closing here is an Engine.IO close (a WebSocket close
    /// frame, or a close packet on the pending poll), never a Socket.IO DISCONNECT, so clients
    /// reconnect, to another node behind a load balancer. Returns once every session is gone
    /// (or a short while after the deadline) and the other nodes were told.
    pub async fn drain(&self, grace: Duration) {
        use crate::engineio::CloseReason;
        crate::telemetry::shutting_down();
        self.engine.begin_shutdown();
        let started = std::time::Instant::now();
        let deadline = started + grace;
        let mut reported = None;
        // When every session has been asked to close: they get a moment to flush (a polling
        // client to collect its close packet), not the whole grace.
        let mut all_asked: Option<std::time::Instant> = None;
        loop {
            let busy = self.voice.pipelines.busy_sessions();
            let now = std::time::Instant::now();
            let past = now >= deadline;
            for session in self.engine.sessions() {
                if past || !busy.contains(&session.sid()) {
                    session.close_with(CloseReason::ServerShutdown);
                }
            }
            let open = self.engine.session_count();
            if open == 0 {
                break;
            }
            if busy.is_empty() || past {
                let asked = *all_asked.get_or_insert(now);
                if now.duration_since(asked) >= Duration::from_secs(1) {
                    tracing::info!(
                        sessions = open,
                        "drained: sessions left to their clients' next request"
                    );
                    break;
                }
            } else if reported != Some(busy.len()) {
                tracing::info!(
                    turns = busy.len(),
                    "draining: waiting for voice turns to finish"
                );
                reported = Some(busy.len());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        tracing::info!(ms = started.elapsed().as_millis() as u64, "drained");
    }

    /// The session middleware, wrapped in the realtime bypass (one per worker).
    pub fn sessions(&self) -> BypassSessions<SessionMiddleware<SessionStoreKind>> {
        let (store, health) = match &self.redis_store {
            None => (SessionStoreKind::Cookie, None),
            Some((store, timeout, health)) => (
                SessionStoreKind::Redis {
                    store: store.clone(),
                    timeout: *timeout,
                    health: health.clone(),
                },
                Some(health.clone()),
            ),
        };
        let ttl = actix_web::cookie::time::Duration::seconds(self.session_ttl.as_secs() as i64);
        let middleware = SessionMiddleware::builder(store, self.cookie_key.clone())
            .cookie_name("voxio_session".to_owned())
            .cookie_http_only(true)
            .cookie_same_site(SameSite::Strict)
            .cookie_secure(self.cookie_secure)
            .session_lifecycle(SessionLifecycle::PersistentSession(
                PersistentSession::default().session_ttl(ttl),
            ))
            .build();
        BypassSessions::new(middleware, &[SOCKET_PATH], health)
    }

    /// Where WebSockets go: the Socket.IO endpoint (see [`crate::server`]).
    pub fn upgrades(&self) -> crate::server::Upgrades {
        crate::server::Upgrades::default().route(SOCKET_PATH, self.engine.clone())
    }

    /// Mounts the routes (`/metrics` only when it has no address of its own).
    pub fn configure(&self) -> impl FnOnce(&mut ServiceConfig) + '_ {
        move |cfg| {
            cfg.app_data(web::Data::new(self.clone()));
            if !self.metrics_apart {
                cfg.route("/metrics", web::get().to(metrics));
            }
            cfg.route("/socket.io/socket.io.js", web::get().to(client_js))
                .service(self.engine.resource(SOCKET_PATH))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/login", web::post().to(login))
                .route("/logout", web::post().to(logout))
                .route("/api/voice-token", web::get().to(voice_token))
                .service(actix_files::Files::new("/", &self.static_dir).index_file("index.html"));
        }
    }
}

/// The routes of the `VOXIO_METRICS_BIND` address: `/metrics` alone.
pub fn configure_metrics(app: &Voxio) -> impl FnOnce(&mut ServiceConfig) + '_ {
    move |cfg| {
        cfg.app_data(web::Data::new(app.clone()))
            .route("/metrics", web::get().to(metrics));
    }
}

/// The policy the page is served under: its scripts, styles, worklet and connections from its
/// own origin only (WebSocket included), no plugins, never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; media-src 'self' blob:; \
    worker-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// Headers on every response: the content security policy, no MIME sniffing, no referrer, no
/// framing (also for browsers without `frame-ancestors`).
pub fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
}

/// The voice pipeline's stages from the settings (warms the speech-to-text decoders); the
/// to-do lists and conversation histories live in Redis when `redis` is given (the shared
/// connection and its command timeout).
/// The URL this node announces to the others for forwarded polling requests.
fn cluster_url(args: &ServerArgs) -> Option<String> {
    match &args.cluster_url {
        Some(url) => Some(url.trim_end_matches('/').to_owned()),
        None if args.bind.ip().is_unspecified() => {
            tracing::warn!(
                "cluster: VOXIO_CLUSTER_URL is not set and VOXIO_BIND is every address: other nodes cannot forward this node's polling requests (the load balancer must keep them sticky)"
            );
            None
        }
        None => Some(format!("http://{}", args.bind)),
    }
}

fn stages(
    args: &ServerArgs,
    redis: Option<&(redis::aio::ConnectionManager, Duration)>,
) -> anyhow::Result<voice::pipeline::Stages> {
    use voice::assistant::{Assistant, TodoAssistant};
    use voice::openai::{OpenAi, RemoteAssistant, RemoteStt, RemoteTts};
    use voice::stt::{GrammarQueue, SpeechToText, SphinxModel, SphinxPool, SphinxRole, WhisperStt};
    use voice::tts::{ProcessTts, Program, TextToSpeech};
    use voice::whisper::{DecodeQueue, Precision, Whisper};
    let api = OpenAi {
        base_url: args.openai_base_url.clone(),
        api_key: args
            .openai_api_key
            .as_ref()
            .map(|k| k.0.clone())
            .unwrap_or_default(),
        timeout: Duration::from_millis(args.openai_timeout_ms),
    };
    let mut models = Vec::new();
    let stt: Arc<dyn SpeechToText> = match args.stt.as_str() {
        "builtin" => {
            let model = SphinxModel::in_dir(&args.stt_model_dir);
            model.check().map_err(|e| anyhow::anyhow!(e))?;
            let whisper_dir = args.models_dir.join("whisper-tiny.en");
            let precision: Precision = args
                .whisper_precision
                .parse()
                .map_err(|e: String| anyhow::anyhow!("VOXIO_WHISPER_PRECISION: {e}"))?;
            let threads = match args.whisper_threads {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
                n => n,
            };
            let whisper = match Whisper::check(&whisper_dir) {
                Ok(()) => Some(
                    DecodeQueue::start(&whisper_dir, threads, precision, args.stt_queue)
                        .map_err(|e| anyhow::anyhow!(e))?,
                ),
                Err(missing) => {
                    tracing::warn!(
                        "{missing}: final transcripts fall back to the pocketsphinx command \
                         grammar, which hears every utterance as a command"
                    );
                    None
                }
            };
            models.push(voice::pipeline::ModelState {
                name: "whisper-tiny.en",
                role: "final transcripts",
                loaded: whisper.is_some(),
                fallback: whisper
                    .is_none()
                    .then(|| "pocketsphinx command grammar".to_owned()),
            });
            let grammar = TodoAssistant::grammar(&model.words());
            let role = match whisper {
                Some(_) => SphinxRole::Partials,
                None => SphinxRole::Transcripts(grammar.clone()),
            };
            let started = std::time::Instant::now();
            let pool = SphinxPool::start(&model, role, args.stt_threads)
                .map_err(|e| anyhow::anyhow!(e))?;
            tracing::info!(
                decoders = pool.size(),
                ms = started.elapsed().as_millis() as u64,
                "pocketsphinx ready"
            );
            match whisper {
                Some(queue) => {
                    let commands = GrammarQueue::start(
                        &model,
                        &grammar,
                        TodoAssistant::shorter_readings,
                        args.stt_queue,
                    )
                    .map_err(|e| anyhow::anyhow!(e))?;
                    let early = Duration::from_millis(
                        args.turn_pause_ms.saturating_sub(args.turn_speculate_ms),
                    );
                    Arc::new(
                        WhisperStt::new(queue, Some(commands), Some(pool)).speculating_early(early),
                    )
                }
                None => Arc::new(pool),
            }
        }
        "openai" => Arc::new(RemoteStt {
            api: api.clone(),
            model: args.openai_stt_model.clone(),
        }),
        other => anyhow::bail!("VOXIO_STT must be builtin or openai, not {other:?}"),
    };
    let assistant: Arc<dyn Assistant> = match args.assistant.as_str() {
        "builtin" => match redis {
            Some((connection, timeout)) => {
                let store = voice::todos::RedisTodos {
                    connection: connection.clone(),
                    timeout: *timeout,
                    ttl: Duration::from_secs(args.todo_ttl_s),
                };
                Arc::new(TodoAssistant::with_store(
                    args.confirm_below,
                    Arc::new(store),
                ))
            }
            None => Arc::new(TodoAssistant::new(args.confirm_below)),
        },
        "openai" => Arc::new(RemoteAssistant {
            api: api.clone(),
            model: args.openai_chat_model.clone(),
            system: "You are a helpful voice assistant. Answer briefly, in plain spoken sentences."
                .into(),
        }),
        other => anyhow::bail!("VOXIO_ASSISTANT must be builtin or openai, not {other:?}"),
    };
    let process = |program| -> Arc<dyn TextToSpeech> {
        Arc::new(ProcessTts {
            program,
            timeout: Duration::from_secs(10),
        })
    };
    let tts = match args.tts.as_str() {
        "flite" => process(Program::Flite(args.tts_voice.clone())),
        "espeak-ng" => process(Program::EspeakNg(if args.tts_voice == "slt" {
            "en-us".into()
        } else {
            args.tts_voice.clone()
        })),
        "openai" => Arc::new(RemoteTts {
            api,
            model: args.openai_tts_model.clone(),
            voice: args.openai_tts_voice.clone(),
        }),
        other => anyhow::bail!("VOXIO_TTS must be flite, espeak-ng or openai, not {other:?}"),
    };
    let (vad, turn_detector) = turn_models(args, &mut models);
    let hangover = match (args.turn_hangover_ms, &turn_detector) {
        (Some(ms), _) => Duration::from_millis(ms),
        (None, Some(_)) => voice::turn::HANGOVER_WITH_MODEL,
        (None, None) => voice::turn::HANGOVER_WITHOUT_MODEL,
    };
    let history: voice::history::SharedHistory = match redis {
        Some((connection, timeout)) => Arc::new(voice::history::RedisHistory {
            connection: connection.clone(),
            timeout: *timeout,
            ttl: Duration::from_secs(args.history_ttl_s),
            lines: voice::pipeline::HISTORY,
        }),
        None => Arc::new(voice::history::MemoryHistory::new(
            voice::pipeline::HISTORY,
            10_000,
        )),
    };
    Ok(voice::pipeline::Stages {
        turn: voice::turn::TurnConfig {
            threshold: args.vad_threshold,
            confirm: Duration::from_millis(args.turn_confirm_ms),
            preroll: Duration::from_millis(args.turn_preroll_ms),
            speculate: Duration::from_millis(args.turn_speculate_ms),
            pause: Duration::from_millis(args.turn_pause_ms),
            hangover,
            max_turn: Duration::from_millis(args.turn_max_ms),
        },
        stt,
        assistant,
        tts,
        inbox: args.audio_queue,
        lead: Duration::from_millis(300),
        vad,
        turn_detector,
        models,
        history,
    })
}

/// Silero VAD and Smart Turn on ONNX Runtime, from the models directory; each missing or
/// broken one is logged once and replaced by its fallback (earshot; the hangover alone).
fn turn_models(
    args: &ServerArgs,
    models: &mut Vec<voice::pipeline::ModelState>,
) -> (
    voice::pipeline::MakeVad,
    Option<Arc<dyn voice::smart_turn::TurnDetector>>,
) {
    use voice::pipeline::{earshot_vad, MakeVad, ModelState};
    use voice::silero::{SileroModel, SileroVad};
    use voice::smart_turn::{SmartTurn, TurnDetector};
    let dir = &args.models_dir;
    let hangover = args
        .turn_hangover_ms
        .unwrap_or(voice::turn::HANGOVER_WITHOUT_MODEL.as_millis() as u64);
    let vad: MakeVad = match SileroModel::load(dir) {
        Ok(model) => {
            models.push(ModelState {
                name: "silero-vad",
                role: "voice activity",
                loaded: true,
                fallback: None,
            });
            Arc::new(move || Box::new(SileroVad::new(model.clone())))
        }
        Err(e) => {
            tracing::warn!("Silero VAD: {e}; voice activity falls back to earshot");
            models.push(ModelState {
                name: "silero-vad",
                role: "voice activity",
                loaded: false,
                fallback: Some("earshot".into()),
            });
            earshot_vad()
        }
    };
    let detector: Option<Arc<dyn TurnDetector>> = match SmartTurn::start(dir, args.turn_check_queue)
    {
        Ok(model) => Some(Arc::new(model)),
        Err(e) => {
            tracing::warn!("Smart Turn: {e}; every turn ends after {hangover} ms of silence");
            None
        }
    };
    models.push(ModelState {
        name: "smart-turn-v3.2",
        role: "end of turn",
        loaded: detector.is_some(),
        fallback: detector
            .is_none()
            .then(|| format!("{hangover} ms of silence")),
    });
    (vad, detector)
}

/// The official Socket.IO client bundle, from the npm package the setup installed.
async fn client_js(req: HttpRequest, app: web::Data<Voxio>) -> HttpResponse {
    match actix_files::NamedFile::open_async(&app.client_js).await {
        Ok(file) => file
            .set_content_type(
                "text/javascript; charset=utf-8"
                    .parse()
                    .expect("a valid MIME type"),
            )
            .into_response(&req),
        Err(_) => error(
            actix_web::http::StatusCode::NOT_FOUND,
            "client_missing",
            "The Socket.IO client bundle is not installed: run scripts/serve (npm ci in client/).",
        ),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}

/// A JSON error answer.
/// Whether this node should get new clients: not draining, Redis answering (when
/// configured), the cluster subscription up, speech-to-text decoders warm. 200 or 503, with
/// each check in the JSON body.
async fn readyz(app: web::Data<Voxio>) -> HttpResponse {
    let draining = app.engine.is_draining();
    let redis = match &app.redis_ping {
        None => json!("not configured"),
        Some((connection, timeout)) => {
            let mut conn = connection.clone();
            let ping = tokio::time::timeout(
                *timeout,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            match ping {
                Ok(Ok(_)) => json!("ok"),
                _ => {
                    crate::telemetry::redis_error("readyz");
                    json!("unreachable")
                }
            }
        }
    };
    let cluster = app
        .cluster
        .as_ref()
        .map(|c| json!({ "node": c.node(), "subscribed": c.is_connected(), "nodes": c.nodes() }));
    let stt = app.voice.stages.as_ref().map(|s| s.stt.readiness());
    let ready = !draining
        && (redis == "ok" || redis == "not configured")
        && cluster.as_ref().is_none_or(|c| c["subscribed"] == true)
        && stt.as_ref().is_none_or(|s| s.ready);
    let body = json!({
        "ready": ready,
        "draining": draining,
        "redis": redis,
        "cluster": cluster,
        "stt": stt.map(|s| json!({
            "ready": s.ready, "decoders": s.decoders, "idle": s.idle, "queued": s.queued,
        })),
        "models": app.voice.stages.as_ref().map(|s| &s.models),
        "sessions": app.engine.session_count(),
    });
    let mut response = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

/// Prometheus text format.
async fn metrics(app: web::Data<Voxio>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(app.metrics.render())
}

fn error(status: actix_web::http::StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "code": code, "message": message }))
}

/// Refuses cross-site POSTs: a browser sends `Sec-Fetch-Site` and `Origin`; either one naming
/// another site is refused. (Non-browser clients send neither and cannot ride a cookie.)
fn cross_site(req: &HttpRequest, origins: &OriginPolicy) -> bool {
    let fetch_site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|site| site != "same-origin" && site != "none") {
        return true;
    }
    let policy = match origins {
        OriginPolicy::Any => &OriginPolicy::SameOrigin,
        other => other,
    };
    !policy.allows(req.headers())
}

#[derive(Deserialize)]
struct LoginForm {
    pin: String,
}

async fn login(
    req: HttpRequest,
    app: web::Data<Voxio>,
    session: Session,
    body: web::Bytes,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    if cross_site(&req, &app.origins) {
        return error(
            StatusCode::FORBIDDEN,
            "cross_site",
            "Cross-site requests are refused.",
        );
    }
    let form: Option<LoginForm> = serde_json::from_slice(&body)
        .ok()
        .or_else(|| serde_urlencoded_pin(&body));
    let Some(form) = form else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Send the PIN as {\"pin\": \"...\"} or pin=...",
        );
    };
    let client = app
        .auth
        .client(req.peer_addr().map(|a| a.ip()), req.headers());
    match app.auth.gate.attempt(&client, &form.pin).await {
        Ok(_) => {}
        Err(refused) => {
            let status = match refused {
                Refused::WrongPin(_) => {
                    crate::telemetry::auth_failure("login");
                    StatusCode::UNAUTHORIZED
                }
                Refused::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
                Refused::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            };
            let wait = refused.retry_after();
            let mut response = HttpResponse::build(status);
            response.insert_header((header::CACHE_CONTROL, "no-store"));
            if status != StatusCode::UNAUTHORIZED {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            return response.json(json!({
                "code": refused.code(),
                "message": refused.message(),
                "retryAfterMs": wait.as_millis() as u64,
            }));
        }
    }
    // A new session id at login: a session id planted before login is worth nothing after.
    session.renew();
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    let login_id = id.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let since = crate::auth::unix_ms() / 1000;
    if session.insert("login", &login_id).is_err() || session.insert("since", since).is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "session",
            "Could not store the session.",
        );
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "ok": true }))
}

fn serde_urlencoded_pin(body: &[u8]) -> Option<LoginForm> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "pin").then(|| LoginForm { pin: v.to_owned() })
    })
}

/// The session's login, if it logged in within the session's lifetime: the cookie store
/// cannot expire a copied cookie, so its issue time is checked here.
fn current_login(session: &Session, ttl: Duration) -> Option<String> {
    let login = session.get::<String>("login").ok().flatten()?;
    let since = session.get::<u64>("since").ok().flatten()?;
    let now = crate::auth::unix_ms() / 1000;
    if now.saturating_sub(since) > ttl.as_secs() {
        session.purge();
        return None;
    }
    Some(login)
}

async fn voice_token(app: web::Data<Voxio>, session: Session) -> HttpResponse {
    let login = current_login(&session, app.session_ttl);
    let revoked = match &login {
        Some(login) => app.auth.revoked.is_revoked(login).await,
        None => Ok(false),
    };
    match (login, revoked) {
        (_, Err(_)) => HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .json(json!({"code": "unavailable", "message": "Try again shortly."})),
        (Some(login), Ok(false)) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({
                "token": app.auth.tokens.issue(&login),
                "expiresInMs": app.auth.tokens.ttl().as_millis() as u64,
            })),
        _ => error(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "not_logged_in",
            "Log in first.",
        ),
    }
}

async fn logout(req: HttpRequest, app: web::Data<Voxio>, session: Session) -> HttpResponse {
    if cross_site(&req, &app.origins) {
        return error(
            actix_web::http::StatusCode::FORBIDDEN,
            "cross_site",
            "Cross-site requests are refused.",
        );
    }
    if let Ok(Some(login)) = session.get::<String>("login") {
        // Remembered for as long as a copy of the cookie could be presented.
        if app
            .auth
            .revoked
            .revoke(&login, app.session_ttl)
            .await
            .is_err()
        {
            return HttpResponse::ServiceUnavailable()
                .insert_header((header::RETRY_AFTER, "1"))
                .json(json!({"code": "unavailable", "message": "Try again shortly."}));
        }
        voice::log_out(&app.io, &login);
    }
    session.purge();
    HttpResponse::NoContent().finish()
}
