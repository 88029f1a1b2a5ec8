//! The `/voice` namespace: who may speak, and the audio they send.
//!
//! A socket authenticates one of three ways: `auth: {pin}` or `auth: {token}` in CONNECT (a
//! wrong one is refused with CONNECT_ERROR), or an `authenticate {pin}` event after connecting
//! (answered `authenticated` or `auth_error {code, message, retryAfterMs}`). Until then every
//! other event is refused with `error {code, message}` and nothing is buffered or started.
//! Failed PINs back off per client address (in Redis when configured, so the limit survives
//! reconnects and spans nodes) and per connection.

pub mod answer;
pub mod assistant;
pub mod audio;
pub mod grammar_decoder;
pub mod history;
pub mod listen;
pub mod onnx;
pub mod openai;
pub mod pipeline;
pub mod silero;
pub mod smart_turn;
pub mod stt;
pub mod todos;
pub mod tts;
pub mod turn;
pub mod whisper;

/// What the speech models' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;

    /// What a test says when the models are missing.
    pub const MODELS: &str = "the models the setup installs (scripts/deps.sh models)";

    /// The models directory (`VOXIO_MODELS_DIR`, else `models/`).
    pub fn models() -> PathBuf {
        std::env::var_os("VOXIO_MODELS_DIR").map_or_else(|| PathBuf::from("models"), Into::into)
    }

    /// A temporary file's path of its own, ending in `.{ext}`: tests run in parallel, and two
    /// may say the same text.
    fn scratch(ext: &str) -> PathBuf {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::env::temp_dir().join(format!("voxio-test-{}-{call}.{ext}", std::process::id()))
    }

    /// Runs `program` with `args`; it must succeed.
    fn run(program: &str, args: &[&std::ffi::OsStr]) {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("{program} (a Debian package the setup installs): {e}"));
        assert!(status.success(), "{program} failed");
    }

    /// A flite `slt` clip of `text` (16 kHz PCM).
    pub fn flite(text: &str) -> Vec<i16> {
        let path = scratch("wav");
        let args = ["-voice", "slt", "-t", text, "-o"].map(std::ffi::OsStr::new);
        run("flite", &[&args[..], &[path.as_os_str()]].concat());
        let wav = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let speech = super::tts::parse_wav(&wav).expect("a WAV file");
        assert_eq!(speech.sample_rate, 16_000);
        speech.samples
    }

    /// An espeak-ng `en-us` clip of `text`, made 16 kHz by `sox` as the voice test makes
    /// its clips, but with sox's dither repeatable (`-R`): the same samples on every run.
    pub fn espeak(text: &str) -> Vec<i16> {
        let (wav, raw) = (scratch("wav"), scratch("raw"));
        let os = std::ffi::OsStr::new;
        run(
            "espeak-ng",
            &[os("-v"), os("en-us"), os("-w"), wav.as_os_str(), os(text)],
        );
        let to_16k = ["-r", "16000", "-c", "1", "-b", "16", "-t", "raw"].map(os);
        run(
            "sox",
            &[
                &[os("-R"), wav.as_os_str()],
                &to_16k[..],
                &[raw.as_os_str()],
            ]
            .concat(),
        );
        let bytes = std::fs::read(&raw).unwrap();
        let _ = std::fs::remove_file(&wav);
        let _ = std::fs::remove_file(&raw);
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }
}

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{Auth, Refused};
use crate::engineio::Sid;
use crate::socketio::{ConnectError, ConnectRequest, Event, Payload, Socket, SocketIo};
use crate::telemetry;
use pipeline::{Pipeline, PipelineHandle, Stages};

/// The namespace's name.
pub const NAMESPACE: &str = "/voice";

/// A socket's proof of authentication, kept in its extensions.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// `pin` or `token`.
    pub via: &'static str,
    /// The page login behind a token.
    pub login: Option<String>,
}

/// The ack of an audio chunk: its number on this socket, its size and, with a pipeline, how
/// many chunks the pipeline's full inbox has dropped so far.
///
/// The fields in the order the acks have always had (alphabetical, as a JSON map wrote them).
#[derive(Serialize)]
struct AudioAck {
    bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped: Option<u64>,
    seq: u64,
}

/// Per-socket audio counters.
#[derive(Debug, Clone, Default)]
struct AudioCounter(Arc<AtomicU64>);

/// Most bytes in one `audio` chunk: one second of 48 kHz stereo.
pub const MAX_CHUNK: usize = 192_000;

#[derive(Deserialize)]
struct PinAuth {
    pin: String,
}

#[derive(Deserialize)]
struct TokenAuth {
    token: String,
}

/// An `auth_error` / CONNECT_ERROR body.
fn auth_error(code: &str, message: &str, retry_after: Duration) -> Value {
    json!({ "code": code, "message": message, "retryAfterMs": retry_after.as_millis() as u64 })
}

/// The body for a PIN attempt that did not authenticate (and counts a wrong one).
fn pin_refused(refused: Refused) -> Value {
    if matches!(refused, Refused::WrongPin(_)) {
        telemetry::auth_failure("pin");
    }
    auth_error(refused.code(), refused.message(), refused.retry_after())
}

/// CONNECT auth: `{token}` or `{pin}` authenticates (or refuses the CONNECT); anything else
/// connects unauthenticated (the page may `authenticate` later).
async fn connect(auth: &Auth, req: Arc<ConnectRequest>) -> Result<(), ConnectError> {
    let refuse = |body: Value| {
        let message = body["message"].as_str().unwrap_or("refused").to_owned();
        Err(ConnectError::new(message).with_data(body))
    };
    let Some(payload) = &req.auth else {
        return Ok(());
    };
    if let Ok(TokenAuth { token }) = TokenAuth::deserialize(payload) {
        let claims = auth.tokens.verify(&token);
        let revoked = match &claims {
            Some(claims) => auth.revoked.is_revoked(&claims.login).await,
            None => Ok(false),
        };
        return match (claims, revoked) {
            (_, Err(_)) => refuse(pin_refused(Refused::Unavailable)),
            (Some(claims), Ok(false)) => {
                req.extensions.insert(Authenticated {
                    via: "token",
                    login: Some(claims.login),
                });
                Ok(())
            }
            _ => {
                telemetry::auth_failure("token");
                refuse(auth_error(
                    "invalid_token",
                    "The voice token is invalid or expired.",
                    Duration::ZERO,
                ))
            }
        };
    }
    if let Ok(PinAuth { pin }) = PinAuth::deserialize(payload) {
        let client = auth.client(req.handshake.peer.map(|p| p.ip()), &req.handshake.headers);
        return match auth.gate.attempt(&client, &pin).await {
            Ok(_) => {
                req.extensions.insert(Authenticated {
                    via: "pin",
                    login: None,
                });
                Ok(())
            }
            Err(refused) => refuse(pin_refused(refused)),
        };
    }
    Ok(())
}

fn authenticated(socket: &Socket) -> bool {
    socket.extensions().contains::<Authenticated>()
}

/// Answers an event that is not allowed now with `error {code, message}` (and the ack, if
/// one was asked for, with the same error).
fn refuse(socket: &Socket, event: Event, code: &str, message: &str) {
    let name = crate::socketio::truncated(&event.name, crate::socketio::MAX_ECHOED_NAME);
    let body = json!({ "code": code, "message": message, "event": name });
    if let Some(ack) = event.ack {
        let _ = ack.send(json!({ "error": body }));
    }
    let _ = socket.emit("error", body);
}

/// The room of every socket authenticated through one page login, on any node.
pub fn login_room(login: &str) -> String {
    format!("login:{login}")
}

/// Ends a page login's voice sockets on every node: each gets `auth_error {code:
/// "logged_out"}`, then a Socket.IO DISCONNECT (so its client does not reconnect). Returns
/// how many were on this node.
pub fn log_out(io: &SocketIo, login: &str) -> usize {
    let Some(ns) = io.of(NAMESPACE) else {
        return 0;
    };
    let room = login_room(login);
    ns.to(room.clone()).emit("auth_error", logged_out());
    ns.to(room).disconnect_sockets()
}

/// What a socket whose login logged out is told before it is disconnected.
fn logged_out() -> Value {
    auth_error("logged_out", "You logged out.", Duration::ZERO)
}

/// What a socket keeps in the recovery store of its authentication, so that it is still
/// authenticated when restored on another node.
fn keep_authenticated(socket: &Socket, who: &Authenticated) {
    socket.set_data(json!({ "via": who.via, "login": who.login }));
}

/// The socket's data with the answer being spoken to it (the words and how many chunks went
/// out; `speaking` is `None` when nothing is), kept in the recovery store so that another
/// node can finish it. Returns `None` when that changes nothing.
pub(crate) fn speaking_data(socket: &Socket, speaking: Option<(&str, u64)>) -> Option<Value> {
    let mut data = socket.data().unwrap_or_else(|| json!({}));
    let map = data.as_object_mut()?;
    match speaking {
        Some((text, sent)) => {
            map.insert("speaking".into(), json!({ "text": text, "sent": sent }));
        }
        None => {
            map.remove("speaking")?;
        }
    }
    Some(data)
}

/// The answer a restored socket's node was speaking when it went away.
fn kept_speaking(socket: &Socket) -> Option<(String, u64)> {
    let data = socket.data()?;
    let speaking = data.get("speaking")?;
    let text = speaking.get("text")?.as_str()?;
    let sent = speaking.get("sent")?.as_u64()?;
    (!text.is_empty()).then(|| (text.to_owned(), sent))
}

/// The authentication a restored socket had.
fn kept_authenticated(socket: &Socket) -> Option<Authenticated> {
    let data = socket.data()?;
    let via = match data.get("via")?.as_str()? {
        "pin" => "pin",
        "token" => "token",
        _ => return None,
    };
    let login = data.get("login").and_then(Value::as_str).map(str::to_owned);
    Some(Authenticated { via, login })
}

/// A socket restored from the recovery store (its node went away): authenticated as it
/// was, with a new pipeline that has the user's list and history (from Redis), which
/// finishes the answer the other node was speaking. The client already knows it is
/// authenticated and ready: it is only sent its list.
fn on_restored(voice: &Voice, socket: &Socket) {
    let Some(who) = kept_authenticated(socket) else {
        return disconnect_unless_authenticated(socket.clone(), voice.auth_timeout);
    };
    socket.extensions().insert(who.clone());
    telemetry::voice_restored();
    start(voice, socket, &who, false);
    // The answer that was being spoken goes on from where the client's audio stops: the
    // chunks the store knows went out, or more if the client says it has more (the dead
    // node sent them and was killed before their writes reached the store).
    if let (Some((text, sent)), Some(pipeline)) = (
        kept_speaking(socket),
        socket.extensions().get::<PipelineHandle>(),
    ) {
        pipeline.resume(text, sent.max(heard(socket)));
    }
}

/// The last chunk of the answer being spoken that the client says it has (`heard` in its
/// CONNECT auth; 0 when it does not say). It only decides where the client's own answer goes
/// on, so a client that lies only skips or repeats its own audio.
fn heard(socket: &Socket) -> u64 {
    socket
        .auth()
        .and_then(|auth| auth.get("heard"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn on_authenticated(voice: &Voice, socket: &Socket, who: &Authenticated) {
    keep_authenticated(socket, who);
    start(voice, socket, who, true);
}

/// Starts what an authenticated socket has: its login's room, its pipeline, its list; with
/// `announce`, `authenticated` and `session.ready` first and last.
fn start(voice: &Voice, socket: &Socket, who: &Authenticated, announce: bool) {
    if let Some(login) = &who.login {
        socket.join(login_room(login));
        // A logout between the token check and the join above: its broadcast missed this
        // socket, but the revocation was recorded before it, so this check sees it.
        let (socket, auth, login) = (socket.clone(), voice.auth.clone(), login.clone());
        actix_rt::spawn(async move {
            if let Ok(true) = auth.revoked.is_revoked(&login).await {
                let _ = socket.emit("auth_error", logged_out());
                socket.disconnect();
            }
        });
    }
    if announce {
        let _ = socket.emit("authenticated", json!({ "via": who.via }));
    }
    if let Some(stages) = &voice.stages {
        let user = who.login.clone().unwrap_or_else(|| "pin".to_owned());
        let handle = Pipeline::start(socket.clone(), user.clone(), stages.clone());
        voice.pipelines.insert(socket, handle.clone());
        socket.extensions().insert(handle);
        if let Some(items) = stages.assistant.todos(&user) {
            // The list may live in Redis: the socket is ready once it has it.
            let socket = socket.clone();
            actix_rt::spawn(async move {
                let _ = socket.emit("todos", json!({ "items": items.await }));
                if announce {
                    let _ = socket.emit("session.ready", json!({ "pipeline": true }));
                }
            });
            return;
        }
    }
    if announce {
        let _ = socket.emit(
            "session.ready",
            json!({ "pipeline": voice.stages.is_some() }),
        );
    }
}

/// What `/voice` needs: authentication, and the pipeline's stages (`None`: audio is
/// acknowledged and dropped, for transport benchmarks).
pub struct Voice {
    /// PIN, limits, tokens.
    pub auth: Arc<Auth>,
    /// The voice pipeline's stages.
    pub stages: Option<Arc<Stages>>,
    /// The running pipelines.
    pub pipelines: Pipelines,
    /// How long a socket may stay connected without authenticating.
    pub auth_timeout: Duration,
    /// Connection state recovery (`None`: off): a socket whose connection drops keeps its
    /// authentication and its pipeline for a client that comes back within the window.
    pub recovery: Option<crate::socketio::RecoveryConfig>,
}

/// The running pipelines, by the socket they serve: what a shutdown waits for.
#[derive(Default)]
pub struct Pipelines(Mutex<HashMap<Sid, (Socket, PipelineHandle)>>);

impl Pipelines {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sid, (Socket, PipelineHandle)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a socket's pipeline; a pipeline it already had is shut down.
    fn insert(&self, socket: &Socket, handle: PipelineHandle) {
        let mut map = self.lock();
        if let Some((_, old)) = map.insert(socket.id(), (socket.clone(), handle)) {
            old.shutdown();
        }
        telemetry::voice_pipelines(map.len());
    }

    fn remove(&self, socket: &Socket) {
        let mut map = self.lock();
        map.remove(&socket.id());
        telemetry::voice_pipelines(map.len());
    }

    /// Engine.IO sessions with a voice turn in progress (a socket waiting for its client has
    /// none to wait for).
    pub fn busy_sessions(&self) -> HashSet<Sid> {
        self.lock()
            .values()
            .filter(|(socket, handle)| handle.busy() && !socket.waiting())
            .map(|(socket, _)| socket.engine().sid())
            .collect()
    }
}

/// Declares `/voice` on `io`.
pub fn namespace(io: &SocketIo, voice: Arc<Voice>) {
    let (connecting, connected, authenticating, leaving) = (
        voice.auth.clone(),
        voice.clone(),
        voice.clone(),
        voice.clone(),
    );
    let recovery = voice.recovery;
    io.namespace(NAMESPACE, move |ns| {
        if let Some(config) = recovery {
            ns.recovery(config);
        }
        ns.middleware_async(move |req| {
            let auth = connecting.clone();
            async move { connect(&auth, req).await }
        })
        .on_connect(move |socket| {
            if socket.restored() {
                on_restored(&connected, socket);
            } else if let Some(who) = socket.extensions().get::<Authenticated>() {
                on_authenticated(&connected, socket, &who);
            } else {
                disconnect_unless_authenticated(socket.clone(), connected.auth_timeout);
            }
        })
        .on("authenticate", move |socket, event| {
            authenticate(authenticating.clone(), socket.clone(), event);
        })
        .on("audio", |socket, event| {
            if !authenticated(socket) {
                return refuse(
                    socket,
                    event,
                    "unauthenticated",
                    "Authenticate before sending audio.",
                );
            }
            audio(socket, event);
        })
        .on("audio.start", |socket, event| {
            if !authenticated(socket) {
                return refuse(socket, event, "unauthenticated", "Authenticate first.");
            }
            match audio::AudioFormat::parse(event.data.args.first().unwrap_or(&Value::Null)) {
                Ok(format) => {
                    if let Some(pipeline) = socket.extensions().get::<PipelineHandle>() {
                        pipeline.start(format);
                    }
                    if let Some(ack) = event.ack {
                        let _ = ack.send(json!({ "ok": true }));
                    }
                }
                Err(e) => refuse(socket, event, e.code(), &e.to_string()),
            }
        })
        .on("audio.stop", |socket, event| {
            if !authenticated(socket) {
                return refuse(socket, event, "unauthenticated", "Authenticate first.");
            }
            if let Some(pipeline) = socket.extensions().get::<PipelineHandle>() {
                pipeline.stop();
            }
        })
        .on("playback.position", |socket, event| {
            if let (Some(pipeline), Ok(PlaybackPosition { played_ms })) = (
                socket.extensions().get::<PipelineHandle>(),
                event.data.get::<PlaybackPosition>(0),
            ) {
                pipeline.played(played_ms);
            }
        })
        .on("text", |socket, event| {
            if !authenticated(socket) {
                return refuse(socket, event, "unauthenticated", "Authenticate first.");
            }
            let input = event.data.get::<TextInput>(0);
            match (socket.extensions().get::<PipelineHandle>(), input) {
                (Some(pipeline), Ok(TextInput { text }))
                    if !text.trim().is_empty() && text.len() <= 2000 =>
                {
                    pipeline.text(text)
                }
                (None, _) => refuse(socket, event, "no_pipeline", "The voice pipeline is off."),
                _ => refuse(
                    socket,
                    event,
                    "bad_request",
                    "text takes {text} of at most 2000 bytes.",
                ),
            }
        })
        .on_fallback(|socket, event| {
            if !authenticated(socket) {
                return refuse(socket, event, "unauthenticated", "Authenticate first.");
            }
            let name = crate::socketio::truncated(&event.name, crate::socketio::MAX_ECHOED_NAME);
            let message = format!("Unknown event {name:?}.");
            refuse(socket, event, "unknown_event", &message);
        })
        .on_disconnect(move |socket, _| {
            if let Some(pipeline) = socket.extensions().remove::<PipelineHandle>() {
                leaving.pipelines.remove(socket);
                pipeline.shutdown();
            }
        });
    });
}

/// Ends a socket that has not authenticated within `timeout`: `auth_error {code:
/// "auth_timeout"}`, then a Socket.IO DISCONNECT.
fn disconnect_unless_authenticated(socket: Socket, timeout: Duration) {
    actix_rt::spawn(async move {
        tokio::time::sleep(timeout).await;
        if socket.connected() && !authenticated(&socket) {
            let body = auth_error(
                "auth_timeout",
                "No PIN came in time; connect again to authenticate.",
                Duration::ZERO,
            );
            let _ = socket.emit("auth_error", body);
            socket.disconnect();
        }
    });
}

/// PIN attempts being checked for a socket: a second `authenticate` while one is pending is
/// refused at once (the client address's own limit holds across connections and nodes).
#[derive(Debug, Clone, Default)]
struct PendingPin(Arc<std::sync::atomic::AtomicBool>);

fn authenticate(voice: Arc<Voice>, socket: Socket, event: Event) {
    let reply = |socket: &Socket, ack: Option<crate::socketio::AckSender>, body: Value| {
        if let Some(ack) = ack {
            let _ = ack.send(Payload::from(body.clone()));
        }
        let _ = socket.emit("auth_error", body);
    };
    if let Some(who) = socket.extensions().get::<Authenticated>() {
        // Already in: said again, and nothing new is started.
        if let Some(ack) = event.ack {
            let _ = ack.send(json!({ "via": who.via }));
        }
        let _ = socket.emit("authenticated", json!({ "via": who.via }));
        return;
    }
    let Ok(PinAuth { pin }) = event.data.get::<PinAuth>(0) else {
        let body = auth_error("bad_request", "Send {pin} to authenticate.", Duration::ZERO);
        return reply(&socket, event.ack, body);
    };
    let pending = socket.extensions().get::<PendingPin>().unwrap_or_else(|| {
        let pending = PendingPin::default();
        socket.extensions().insert(pending.clone());
        pending
    });
    if pending.0.swap(true, std::sync::atomic::Ordering::AcqRel) {
        let body = pin_refused(Refused::Limited(Duration::from_millis(500)));
        return reply(&socket, event.ack, body);
    }
    let auth = voice.auth.clone();
    let handshake = socket.handshake();
    let client = auth.client(handshake.peer.map(|p| p.ip()), &handshake.headers);
    let ack = event.ack;
    actix_rt::spawn(async move {
        let result = auth.gate.attempt(&client, &pin).await;
        pending.0.store(false, std::sync::atomic::Ordering::Release);
        match result {
            // A socket that left while its PIN was checked starts nothing.
            Ok(_) if !socket.connected() => {}
            Ok(_) if socket.extensions().contains::<Authenticated>() => {
                if let Some(ack) = ack {
                    let _ = ack.send(json!({ "via": "pin" }));
                }
                let _ = socket.emit("authenticated", json!({ "via": "pin" }));
            }
            Ok(_) => {
                let who = Authenticated {
                    via: "pin",
                    login: None,
                };
                socket.extensions().insert(who.clone());
                if let Some(ack) = ack {
                    let _ = ack.send(json!({ "via": "pin" }));
                }
                on_authenticated(&voice, &socket, &who);
            }
            Err(refused) => reply(&socket, ack, pin_refused(refused)),
        }
    });
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlaybackPosition {
    played_ms: u64,
}

#[derive(Deserialize)]
struct TextInput {
    text: String,
}

/// An audio chunk from an authenticated socket: checked, handed to the pipeline, and
/// acknowledged with `{seq, bytes}`. Bad chunks get `error` and the connection goes on.
fn audio(socket: &Socket, event: Event) {
    let Some(chunk) = event.data.bins.first().cloned() else {
        let e = audio::AudioError::NoData;
        return refuse(socket, event, e.code(), &e.to_string());
    };
    let bytes = chunk.len();
    let pipeline = socket.extensions().get::<PipelineHandle>();
    let format = pipeline.as_ref().map(|p| p.format()).unwrap_or_default();
    if let Err(e) = format.check_chunk(bytes, MAX_CHUNK) {
        return refuse(socket, event, e.code(), &e.to_string());
    }
    if let Some(pipeline) = &pipeline {
        pipeline.audio(chunk);
    }
    let counter = match socket.extensions().get::<AudioCounter>() {
        Some(counter) => counter,
        None => {
            let counter = AudioCounter::default();
            socket.extensions().insert(counter.clone());
            counter
        }
    };
    let seq = counter.0.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(ack) = event.ack {
        let dropped = pipeline.as_ref().map(|p| p.dropped());
        let _ = ack.send_one(&AudioAck {
            bytes,
            dropped,
            seq,
        });
    }
}
