//! The voice pipeline through the real server: remote providers against a small fake
//! OpenAI-compatible server (the only mock), a pipeline made slow on purpose, and a
//! disconnect in the middle of an utterance.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::ws;
use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use voxio::engineio::{Engine, EngineConfig, OriginPolicy};
use voxio::socketio::{SocketIo, SocketIoConfig};
use voxio::voice::audio::Frame;
use voxio::voice::turn::Vad;

/// A fake OpenAI-compatible API on its own thread.
struct FakeOpenAi {
    addr: std::net::SocketAddr,
    chats: Arc<Mutex<Vec<Value>>>,
    _server: ServerThread,
}

fn authorized(req: &HttpRequest) -> bool {
    req.headers()
        .get("authorization")
        .is_some_and(|v| v == "Bearer test-key")
}

fn tone_wav(samples: usize) -> Vec<u8> {
    let pcm: Vec<i16> = (0..samples).map(|i| ((i % 40) as i16 - 20) * 300).collect();
    voxio::voice::openai::wav(&pcm, 16_000)
}

impl FakeOpenAi {
    fn start() -> FakeOpenAi {
        let chats = Arc::new(Mutex::new(Vec::new()));
        let seen = chats.clone();
        let (addr, server) = ServerThread::spawn(move || async move {
            let server = HttpServer::new(move || {
                let seen = seen.clone();
                App::new()
                    .route(
                        "/v1/audio/transcriptions",
                        web::post().to(|req: HttpRequest, body: Bytes| async move {
                            if !authorized(&req) {
                                return HttpResponse::Unauthorized().finish();
                            }
                            let has_wav = body.windows(4).any(|w| w == b"RIFF");
                            let has_model = body.windows(9).any(|w| w == b"whisper-1");
                            if !(has_wav && has_model) {
                                return HttpResponse::BadRequest().finish();
                            }
                            HttpResponse::Ok().json(json!({"text": "add milk to my list"}))
                        }),
                    )
                    .route(
                        "/v1/chat/completions",
                        web::post().to(move |req: HttpRequest, body: web::Json<Value>| {
                            let seen = seen.clone();
                            async move {
                                if !authorized(&req) {
                                    return HttpResponse::Unauthorized().finish();
                                }
                                seen.lock().unwrap().push(body.0.clone());
                                let last =
                                    body["messages"].as_array().and_then(|m| m.last()).cloned();
                                let text =
                                    last.map(|m| m["content"].to_string()).unwrap_or_default();
                                if text.contains("fail") {
                                    return HttpResponse::InternalServerError().finish();
                                }
                                let mut sse = String::new();
                                for delta in ["Sure. ", "I added ", "milk."] {
                                    let event = json!({"choices": [{"delta": {"content": delta}}]});
                                    sse.push_str(&format!("data: {event}\n\n"));
                                }
                                sse.push_str("data: [DONE]\n\n");
                                HttpResponse::Ok()
                                    .content_type("text/event-stream")
                                    .body(sse)
                            }
                        }),
                    )
                    .route(
                        "/v1/audio/speech",
                        web::post().to(|req: HttpRequest, body: web::Json<Value>| async move {
                            if !authorized(&req) || body["response_format"] != "wav" {
                                return HttpResponse::BadRequest().finish();
                            }
                            HttpResponse::Ok()
                                .content_type("audio/wav")
                                .body(tone_wav(4800))
                        }),
                    )
            })
            .workers(1)
            .disable_signals()
            .bind("127.0.0.1:0")
            .unwrap();
            (server.addrs()[0], server.run())
        });
        FakeOpenAi {
            addr,
            chats,
            _server: server,
        }
    }
}

/// Speech made by flite, as 16 kHz PCM16 bytes with silence around it.
fn speech(text: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("voxio-voice-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.wav", text.replace(' ', "_")));
    let status = std::process::Command::new("flite")
        .args(["-voice", "slt", "-t", text, "-o"])
        .arg(&path)
        .status()
        .expect("flite (installed by scripts/test)");
    assert!(status.success());
    let wav = voxio::voice::tts::parse_wav(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(wav.sample_rate, 16_000);
    let mut pcm = vec![0u8; 16_000];
    pcm.extend(wav.samples.iter().flat_map(|s| s.to_le_bytes()));
    pcm.extend(vec![0u8; 38_400]);
    pcm
}

async fn voice_connect(addr: std::net::SocketAddr) -> WsConn {
    let mut conn = ws_connect(&format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")).await;
    assert!(ws_text(&mut conn).await.starts_with("0{"));
    ws_send(&mut conn, r#"40/voice,{"pin":"246810"}"#).await;
    until(&mut conn, "session.ready", Duration::from_secs(10)).await;
    conn
}

/// Events (name, data) until `name` arrives; answers pings, skips binary frames.
async fn until(conn: &mut WsConn, name: &str, within: Duration) -> Vec<(String, Value)> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no {name} within {within:?}; saw {seen:?}"
        );
        match ws_next(conn).await {
            Some(ws::Frame::Text(t)) => {
                let t = String::from_utf8(t.to_vec()).unwrap();
                if t == "2" {
                    ws_send(conn, "3").await;
                    continue;
                }
                let Some(json) = t.find('[').map(|i| &t[i..]) else {
                    continue;
                };
                let Ok(Value::Array(items)) = serde_json::from_str::<Value>(json) else {
                    continue;
                };
                let (Some(Value::String(event)), data) = (items.first(), items.get(1)) else {
                    continue;
                };
                let event = event.clone();
                seen.push((event.clone(), data.cloned().unwrap_or(Value::Null)));
                if event == name {
                    return seen;
                }
            }
            Some(ws::Frame::Binary(_)) => {}
            other => panic!("connection ended: {other:?}; saw {seen:?}"),
        }
    }
}

/// Streams PCM in 640-byte `audio` events, faster than real time but not in one burst.
async fn stream(conn: &mut WsConn, pcm: &[u8], ack_from: Option<u64>) {
    for (n, chunk) in pcm.chunks(640).enumerate() {
        let header = match ack_from {
            Some(first) => format!(
                r#"451-/voice,{}["audio",{{"_placeholder":true,"num":0}}]"#,
                first + n as u64
            ),
            None => r#"451-/voice,["audio",{"_placeholder":true,"num":0}]"#.to_owned(),
        };
        ws_send(conn, &header).await;
        conn.send(ws::Message::Binary(Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
        if n % 10 == 9 {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The next `audio` ack, `43/voice,{id}[{...}]`: its id and its payload. Answers Engine.IO
/// pings and skips other frames on the way.
async fn next_audio_ack(conn: &mut WsConn) -> (u64, Value) {
    loop {
        match ws_next(conn).await {
            Some(ws::Frame::Text(t)) if t.starts_with(b"43/voice,") => {
                let t = std::str::from_utf8(&t).unwrap();
                let open = t.find('[').unwrap();
                let id: u64 = t["43/voice,".len()..open].parse().unwrap();
                let ack: Value = serde_json::from_str(&t[open..]).unwrap();
                return (id, ack[0].clone());
            }
            Some(ws::Frame::Text(t)) if &t[..] == b"2" => ws_send(conn, "3").await,
            Some(_) => {}
            None => panic!("connection closed"),
        }
    }
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[actix_rt::test]
async fn remote_providers_end_to_end_and_a_failure_does_not_stick() {
    let fake = FakeOpenAi::start();
    let base = format!("http://{}/v1", fake.addr);
    let app = AppServer::with_args(&[
        "--stt",
        "openai",
        "--assistant",
        "openai",
        "--tts",
        "openai",
        "--openai-base-url",
        &base,
        "--openai-api-key",
        "test-key",
    ]);
    let mut conn = voice_connect(app.addr).await;
    stream(&mut conn, &speech("add milk to my list"), None).await;
    let events = until(&mut conn, "tts.stopped", Duration::from_secs(20)).await;
    let order = names(&events);
    for step in [
        "vad.speech_started",
        "vad.speech_stopped",
        "transcript.final",
        "assistant.text.delta",
        "assistant.text.done",
        "tts.started",
        "metrics",
        "tts.stopped",
    ] {
        assert!(order.contains(&step), "{step} missing: {order:?}");
    }
    let get = |name: &str| {
        events
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap()
    };
    assert_eq!(get("transcript.final")["text"], "add milk to my list");
    assert_eq!(get("assistant.text.done")["text"], "Sure. I added milk.");
    assert!(get("metrics")["totalMs"].is_u64());
    assert_eq!(get("tts.stopped")["reason"], "done");

    // A provider failure is an error for this turn only.
    ws_send(&mut conn, r#"42/voice,["text",{"text":"please fail"}]"#).await;
    let events = until(&mut conn, "error", Duration::from_secs(10)).await;
    assert_eq!(events.last().unwrap().1["code"], "assistant_failed");
    ws_send(&mut conn, r#"42/voice,["text",{"text":"and again"}]"#).await;
    let events = until(&mut conn, "assistant.text.done", Duration::from_secs(10)).await;
    assert_eq!(events.last().unwrap().1["text"], "Sure. I added milk.");

    // The conversation history went along: what was said and heard before.
    let lines: Vec<String> = fake.chats.lock().unwrap().last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}: {}",
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        lines.contains(&"user: add milk to my list".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"assistant: Sure. I added milk.".to_owned()),
        "{lines:?}"
    );
    assert_eq!(lines.last().unwrap(), "user: and again");

    // A new socket for the same user (a reconnect) starts from the user's history.
    drop(conn);
    let mut conn = voice_connect(app.addr).await;
    ws_send(&mut conn, r#"42/voice,["text",{"text":"one more"}]"#).await;
    until(&mut conn, "assistant.text.done", Duration::from_secs(10)).await;
    let chats = fake.chats.lock().unwrap();
    let contents: Vec<&str> = chats.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(contents.contains(&"and again"), "{contents:?}");
    assert_eq!(contents.last(), Some(&"one more"));
}

/// A VAD that takes its time: the pipeline cannot keep up with a fast sender.
struct SlowVad;

impl Vad for SlowVad {
    fn score(&mut self, _: &Frame) -> f32 {
        std::thread::sleep(Duration::from_millis(3));
        0.0
    }
    fn reset(&mut self) {}
}

fn slow_vad() -> Box<dyn Vad> {
    Box::new(SlowVad)
}

/// A server with `/voice` on remote providers that are never reached (the turns in these
/// tests never get to speech-to-text), the given VAD and inbox size, and whatever else
/// `more` declares on the Socket.IO server.
fn voice_server(
    vad: fn() -> Box<dyn Vad>,
    inbox: usize,
    more: impl FnOnce(&SocketIo),
) -> TestServer {
    use voxio::voice::*;
    let io = SocketIo::new(SocketIoConfig::default());
    use voxio::auth::{Auth, MemoryAttempts, MemoryRevocations, Pin, PinGate, TokenSigner};
    let attempts = Arc::new(MemoryAttempts::new(Default::default()));
    let auth = Arc::new(Auth {
        gate: PinGate::new(Pin::plain("246810").unwrap(), attempts, 1),
        tokens: TokenSigner::new(b"k", Duration::from_secs(60)),
        revoked: Arc::new(MemoryRevocations::default()),
        proxies: Default::default(),
    });
    let api = voxio::voice::openai::OpenAi {
        base_url: "http://127.0.0.1:9".into(),
        api_key: String::new(),
        timeout: Duration::from_secs(1),
    };
    let stages = pipeline::Stages {
        turn: Default::default(),
        stt: Arc::new(openai::RemoteStt {
            api,
            model: "whisper-1".into(),
        }),
        assistant: Arc::new(assistant::TodoAssistant::default()),
        tts: Arc::new(tts::ProcessTts::flite()),
        inbox,
        lead: Duration::from_millis(300),
        vad: Arc::new(vad),
        turn_detector: None,
        models: Vec::new(),
        history: Arc::new(voxio::voice::history::MemoryHistory::new(20, 100)),
    };
    namespace(
        &io,
        Arc::new(Voice {
            auth,
            stages: Some(Arc::new(stages)),
            pipelines: Pipelines::default(),
            auth_timeout: Duration::from_secs(60),
            recovery: None,
        }),
    );
    more(&io);
    let config = EngineConfig {
        origins: OriginPolicy::Any,
        ..EngineConfig::default()
    };
    TestServer::serve(Engine::new(config, io.engine_handler()), "/socket.io/")
}

#[actix_rt::test]
async fn a_slow_pipeline_drops_oldest_audio_counts_it_and_stays_healthy() {
    let server = voice_server(slow_vad, 16, |_| {});
    let mut conn = voice_connect(server.addr).await;
    let pcm = vec![0u8; 640 * 400];
    stream(&mut conn, &pcm, Some(1)).await;
    // Every chunk is acknowledged, in order, and the drops are counted.
    let mut next = 1;
    let mut dropped = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while next <= 400 {
        assert!(Instant::now() < deadline, "acks stopped at {next}");
        let (id, ack) = next_audio_ack(&mut conn).await;
        assert_eq!(id, next, "acks in order");
        assert_eq!(ack["seq"], next);
        dropped = ack["dropped"].as_u64().unwrap();
        next += 1;
    }
    assert!(
        dropped > 0,
        "a pipeline that cannot keep up drops audio and says so"
    );
    // Still healthy.
    ws_send(
        &mut conn,
        r#"42/voice,["text",{"text":"what is on my list"}]"#,
    )
    .await;
    let events = until(&mut conn, "assistant.text.done", Duration::from_secs(10)).await;
    assert_eq!(events.last().unwrap().1["text"], "Your list is empty.");
}

#[actix_rt::test]
async fn a_disconnect_mid_utterance_returns_the_decoder() {
    // One decoder only: the second socket's turn needs the one the first socket held.
    let app = AppServer::with_args(&["--stt-threads", "1"]);
    let pcm = speech("add bread to my list");
    let mut first = voice_connect(app.addr).await;
    stream(&mut first, &pcm[..pcm.len() / 2], None).await;
    until(&mut first, "vad.speech_started", Duration::from_secs(10)).await;
    drop(first);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let mut second = voice_connect(app.addr).await;
    stream(&mut second, &pcm, None).await;
    let events = until(&mut second, "transcript.final", Duration::from_secs(20)).await;
    assert_eq!(
        events.last().unwrap().1["text"],
        "add bread to my list",
        "{events:?}"
    );
}

/// Speech processes started by this test process that are still running.
fn flite_children() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let comm = stat
                .split('(')
                .nth(1)
                .and_then(|r| r.split(')').next())
                .unwrap_or("");
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .unwrap_or("");
            comm == "flite" && ppid == me
        })
        .count()
}

#[actix_rt::test]
async fn a_disconnect_while_speaking_leaves_no_speech_process() {
    let app = AppServer::with_args(&["--stt-threads", "1"]);
    let mut conn = voice_connect(app.addr).await;
    // The built-in assistant repeats what it did not understand: a long answer to speak.
    let long = "tell me about the weather in all the cities of the world ".repeat(30);
    ws_send(
        &mut conn,
        &format!(r#"42/voice,["text",{{"text":"{}"}}]"#, long.trim()),
    )
    .await;
    until(&mut conn, "assistant.text.done", Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while flite_children() == 0 && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(flite_children() > 0, "the answer is being synthesized");
    drop(conn);
    // Synthesizing this answer takes flite about a second; a process left to finish would
    // outlive this deadline.
    let deadline = Instant::now() + Duration::from_millis(400);
    while flite_children() > 0 {
        assert!(
            Instant::now() < deadline,
            "a speech process outlived its socket"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The name of the thread that last scored a frame: the thread the pipeline runs on.
static VAD_THREAD: Mutex<Option<String>> = Mutex::new(None);

struct WhereVad;

impl Vad for WhereVad {
    fn score(&mut self, _: &Frame) -> f32 {
        *VAD_THREAD.lock().unwrap() = std::thread::current().name().map(str::to_owned);
        0.0
    }
    fn reset(&mut self) {}
}

fn where_vad() -> Box<dyn Vad> {
    Box::new(WhereVad)
}

/// The thread name in the ack `43/where,{id}["..."]` among Engine.IO packets.
fn where_ack<'a>(packets: impl IntoIterator<Item = &'a str>, id: u64) -> Option<String> {
    let prefix = format!("43/where,{id}");
    packets.into_iter().find_map(|p| {
        let json: Value = serde_json::from_str(p.strip_prefix(&prefix)?).ok()?;
        Some(json[0].as_str()?.to_owned())
    })
}

#[actix_rt::test]
async fn a_pipeline_moves_to_the_thread_of_the_websocket_its_session_upgraded_to() {
    // `/where` acks the name of the thread its handler ran on: the thread of the connection
    // that carried the event (one Engine.IO session carries both namespaces).
    let server = voice_server(where_vad, 256, |io| {
        io.namespace("/where", |ns| {
            ns.on("where", |_, event| {
                if let Some(ack) = event.ack {
                    let _ = ack.send(json!(std::thread::current().name()));
                }
            });
        });
    });
    let client = client();
    // Two workers: a WebSocket on its own TCP connection lands on either. Sessions until one
    // upgraded onto the other worker than the one polling authenticated on.
    let mut moved = false;
    for _ in 0..12 {
        let (sid, _) = open_polling(&client, &server).await;
        let url = server.url(&format!("transport=polling&sid={sid}"));
        let sent = post(
            &client,
            &url,
            "40/voice,{\"pin\":\"246810\"}\u{1e}40/where,\u{1e}42/where,1[\"where\"]",
        )
        .await;
        assert_eq!(sent.status, 200);
        let mut polled = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let polling_thread = loop {
            assert!(Instant::now() < deadline, "no ack from /where: {polled}");
            polled.push('\u{1e}');
            polled.push_str(get(&client, &url).await.text());
            if let Some(name) = where_ack(polled.split('\u{1e}'), 1) {
                break name;
            }
        };
        assert!(polled.contains("session.ready"), "authenticated: {polled}");

        let mut conn = ws_connect(&server.ws_url(&format!("transport=websocket&sid={sid}"))).await;
        ws_send(&mut conn, "2probe").await;
        assert_eq!(ws_text(&mut conn).await, "3probe");
        ws_send(&mut conn, "5").await;
        ws_send(&mut conn, "42/where,2[\"where\"]").await;
        let ws_thread = loop {
            let text = ws_text(&mut conn).await;
            if let Some(name) = where_ack([text.as_str()], 2) {
                break name;
            }
        };
        // Audio over the WebSocket, every chunk acked in order.
        let pcm = vec![0u8; 640 * 50];
        stream(&mut conn, &pcm, Some(3)).await;
        for next in 3..53 {
            let (id, _) = next_audio_ack(&mut conn).await;
            assert_eq!(id, next, "acks in order");
        }
        // The pipeline scores the last chunks on the WebSocket's thread.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let vad = VAD_THREAD.lock().unwrap().clone();
            if vad.as_deref() == Some(ws_thread.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pipeline on {vad:?}, its connection on {ws_thread} (polling was on {polling_thread})"
            );
            stream(&mut conn, &pcm[..640], None).await;
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        moved |= polling_thread != ws_thread;
        let _ = conn.close().await;
        if moved {
            break;
        }
    }
    assert!(
        moved,
        "no session upgraded onto the other worker in 12 tries"
    );
}
