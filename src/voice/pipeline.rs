//! The voice-pipeline actor: one per authenticated `/voice` socket, created on the worker
//! thread of the connection that authenticated it.
//!
//! Audio chunks reach it through a bounded inbox (drop-oldest, drops counted) with one wake-up
//! message per batch, not per chunk. Frames go through VAD and turn-taking on the actor;
//! speech-to-text runs on a borrowed decoder thread; the assistant answers; speech is
//! synthesized by a process and streamed back paced near real time. When the user speaks over
//! the assistant, speech and synthesis are cancelled at once and the client is told to clear
//! its playback (barge-in). Every stage's cost is reported per turn in a `metrics` event.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, SpawnHandle,
    WrapFuture,
};
use bytes::Bytes;
use serde_json::json;

use super::assistant::Assistant;
use super::audio::{AudioFormat, Converter, Frame};
use super::stt::{SpeechToText, SttEvent, SttStream};
use super::tts::{Speech, TextToSpeech};
use super::turn::{Earshot, Step, TurnConfig, Turns, Vad};
use crate::socketio::{Payload, Socket};

/// The stages and settings every pipeline shares.
pub struct Stages {
    /// Turn-taking.
    pub turn: TurnConfig,
    /// Speech to text.
    pub stt: Arc<dyn SpeechToText>,
    /// The assistant.
    pub assistant: Arc<dyn Assistant>,
    /// Text to speech.
    pub tts: Arc<dyn TextToSpeech>,
    /// Audio chunks the inbox holds before dropping the oldest. Default 256 (5 s of 20 ms).
    pub inbox: usize,
    /// Speech sent ahead of real time, as a jitter buffer for the client. Default 300 ms.
    pub lead: Duration,
}

/// Audio waiting for the actor: bounded, oldest dropped first.
pub struct Inbox {
    chunks: Mutex<VecDeque<Bytes>>,
    capacity: usize,
    dropped: AtomicU64,
    scheduled: AtomicBool,
}

impl Inbox {
    fn new(capacity: usize) -> Inbox {
        Inbox {
            chunks: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            scheduled: AtomicBool::new(false),
        }
    }

    /// Chunks dropped so far because the pipeline fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The connection's way into its pipeline.
#[derive(Clone)]
pub struct PipelineHandle {
    addr: actix::Addr<Pipeline>,
    inbox: Arc<Inbox>,
    format: Arc<Mutex<AudioFormat>>,
}

impl PipelineHandle {
    /// The stream's announced format.
    pub fn format(&self) -> AudioFormat {
        *self.format.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a chunk (already validated). Never blocks; under pressure the oldest goes.
    pub fn audio(&self, chunk: Bytes) {
        {
            let mut chunks = self.inbox.chunks.lock().unwrap_or_else(|e| e.into_inner());
            if chunks.len() >= self.inbox.capacity {
                chunks.pop_front();
                self.inbox.dropped.fetch_add(1, Ordering::Relaxed);
            }
            chunks.push_back(chunk);
        }
        if !self.inbox.scheduled.swap(true, Ordering::AcqRel) {
            self.addr.do_send(Wake);
        }
    }

    /// A new stream format (`audio.start`).
    pub fn start(&self, format: AudioFormat) {
        *self.format.lock().unwrap_or_else(|e| e.into_inner()) = format;
        self.addr.do_send(Control::Start(format));
    }

    /// The stream ended (`audio.stop`).
    pub fn stop(&self) {
        self.addr.do_send(Control::Stop);
    }

    /// How much of the assistant's speech the client has played.
    pub fn played(&self, ms: u64) {
        self.addr.do_send(Control::Played(ms));
    }

    /// Typed input instead of speech.
    pub fn text(&self, text: String) {
        self.addr.do_send(Control::Text(text));
    }

    /// The socket left: stop, releasing the decoder and any speech process.
    pub fn shutdown(&self) {
        self.addr.do_send(Control::Shutdown);
    }

    /// Chunks dropped so far.
    pub fn dropped(&self) -> u64 {
        self.inbox.dropped()
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Wake;

#[derive(Message)]
#[rtype(result = "()")]
enum Control {
    Start(AudioFormat),
    Stop,
    Played(u64),
    Text(String),
    Shutdown,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Transcript {
    turn: u64,
    event: SttEvent,
}

/// Times of one turn, for its `metrics` event.
#[derive(Debug, Default, Clone, Copy)]
struct TurnTimes {
    last_voiced: Option<Instant>,
    stopped: Option<Instant>,
    final_at: Option<Instant>,
    replied: Option<Instant>,
}

/// Speech being streamed to the client.
struct Speaking {
    pacing: Option<SpawnHandle>,
    synthesis: Option<SpawnHandle>,
}

/// The pipeline actor.
pub struct Pipeline {
    socket: Socket,
    user: String,
    stages: Arc<Stages>,
    inbox: Arc<Inbox>,
    converter: Converter,
    vad: Box<dyn Vad>,
    turns: Turns,
    frames: Vec<Frame>,
    stt: Option<Box<dyn SttStream>>,
    turn: u64,
    times: TurnTimes,
    speaking: Option<Speaking>,
    played_ms: u64,
}

impl Pipeline {
    /// Starts a pipeline for `socket` on the current worker thread.
    pub fn start(socket: Socket, user: String, stages: Arc<Stages>) -> PipelineHandle {
        let inbox = Arc::new(Inbox::new(stages.inbox));
        let pipeline = Pipeline {
            socket,
            user,
            inbox: inbox.clone(),
            converter: Converter::new(AudioFormat::default()),
            vad: Box::new(Earshot::new()),
            turns: Turns::new(stages.turn),
            frames: Vec::with_capacity(64),
            stt: None,
            turn: 0,
            times: TurnTimes::default(),
            speaking: None,
            played_ms: 0,
            stages,
        };
        PipelineHandle {
            addr: pipeline.start(),
            inbox,
            format: Arc::new(Mutex::new(AudioFormat::default())),
        }
    }

    fn emit(&self, event: &str, data: serde_json::Value) {
        let _ = self.socket.emit(event, data);
    }

    fn on_frame(&mut self, frame: &Frame, ctx: &mut Context<Self>) {
        let score = self.vad.score(frame);
        if score >= self.stages.turn.threshold {
            self.times.last_voiced = Some(Instant::now());
        }
        match self.turns.push(frame, score) {
            Step::Idle => {}
            Step::Started => self.speech_started(ctx),
            Step::Speech => {
                if let Some(stt) = &mut self.stt {
                    stt.push(frame);
                }
            }
            Step::Stopped => self.speech_stopped(),
        }
    }

    fn speech_started(&mut self, ctx: &mut Context<Self>) {
        self.emit("vad.speech_started", json!({}));
        if self.speaking.is_some() {
            self.stop_speaking(ctx, "interrupted");
            self.emit("playback.clear", json!({ "playedMs": self.played_ms }));
        }
        self.turn += 1;
        self.times = TurnTimes {
            last_voiced: Some(Instant::now()),
            ..TurnTimes::default()
        };
        let (addr, turn) = (ctx.address(), self.turn);
        let sink = Box::new(move |event| addr.do_send(Transcript { turn, event }));
        self.stt = self.stages.stt.start(sink);
        if self.stt.is_none() {
            self.emit("error", json!({"code": "stt_busy", "message": "Speech recognition is busy; this turn is not transcribed."}));
        }
        let preroll: Vec<Frame> = self.turns.take_preroll().collect();
        if let Some(stt) = &mut self.stt {
            for frame in &preroll {
                stt.push(frame);
            }
        }
    }

    fn speech_stopped(&mut self) {
        self.emit("vad.speech_stopped", json!({}));
        self.times.stopped = Some(Instant::now());
        if let Some(stt) = self.stt.take() {
            stt.finish();
        }
    }

    fn respond(&mut self, text: &str, ctx: &mut Context<Self>) {
        let reply = self.stages.assistant.reply(&self.user, text);
        self.times.replied = Some(Instant::now());
        self.emit("assistant.text.delta", json!({ "text": reply.text }));
        self.emit("assistant.text.done", json!({ "text": reply.text }));
        if let Some(items) = reply.todos {
            self.emit("todos", json!({ "items": items }));
        }
        self.speak(reply.text, ctx);
    }

    fn speak(&mut self, text: String, ctx: &mut Context<Self>) {
        self.stop_speaking(ctx, "replaced");
        let synthesis = self.stages.tts.synthesize(&text).into_actor(self).map(
            |result, act, ctx| match result {
                Ok(speech) => act.stream(speech, ctx),
                Err(message) => {
                    act.speaking = None;
                    act.emit("error", json!({"code": "tts_failed", "message": message}));
                }
            },
        );
        let handle = ctx.spawn(synthesis);
        self.speaking = Some(Speaking {
            pacing: None,
            synthesis: Some(handle),
        });
    }

    /// Streams speech in 100 ms chunks, `lead` ahead of real time.
    fn stream(&mut self, speech: Speech, ctx: &mut Context<Self>) {
        let rate = speech.sample_rate;
        let chunk = (rate as usize / 10).max(1);
        let chunks: Vec<Bytes> = speech
            .samples
            .chunks(chunk)
            .map(|c| Bytes::from(c.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()))
            .collect();
        self.played_ms = 0;
        self.emit("tts.started", json!({ "sampleRate": rate }));
        let first = Instant::now();
        self.metrics(first);
        let ahead = (self.stages.lead.as_millis() / 100) as usize + 1;
        let mut queue: VecDeque<Bytes> = chunks.into();
        let mut seq = 0u64;
        let mut send = move |act: &mut Pipeline, n: usize| -> bool {
            for _ in 0..n {
                let Some(data) = queue.pop_front() else {
                    return false;
                };
                seq += 1;
                let payload = Payload::new()
                    .arg(json!({ "seq": seq, "sampleRate": rate }))
                    .bin(data);
                let _ = act.socket.emit("tts.audio", payload);
            }
            !queue.is_empty()
        };
        if !send(self, ahead) {
            self.finish_speaking(ctx);
            return;
        }
        let pacing = ctx.run_interval(Duration::from_millis(100), move |act, ctx| {
            if !send(act, 1) {
                act.finish_speaking(ctx);
            }
        });
        if let Some(speaking) = &mut self.speaking {
            speaking.pacing = Some(pacing);
            speaking.synthesis = None;
        }
    }

    fn finish_speaking(&mut self, ctx: &mut Context<Self>) {
        if let Some(speaking) = self.speaking.take() {
            if let Some(pacing) = speaking.pacing {
                ctx.cancel_future(pacing);
            }
            self.emit("tts.stopped", json!({ "reason": "done" }));
        }
    }

    fn stop_speaking(&mut self, ctx: &mut Context<Self>, reason: &str) {
        if let Some(speaking) = self.speaking.take() {
            for handle in [speaking.pacing, speaking.synthesis].into_iter().flatten() {
                ctx.cancel_future(handle);
            }
            self.emit("tts.stopped", json!({ "reason": reason }));
        }
    }

    fn metrics(&self, first_audio: Instant) {
        let ms = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => json!(b.saturating_duration_since(a).as_millis() as u64),
            _ => serde_json::Value::Null,
        };
        let t = self.times;
        self.emit(
            "metrics",
            json!({
                "vadStopMs": ms(t.last_voiced, t.stopped),
                "sttFinalMs": ms(t.stopped, t.final_at),
                "assistantFirstMs": ms(t.final_at, t.replied),
                "ttsFirstMs": ms(t.replied, Some(first_audio)),
                "totalMs": ms(t.stopped, Some(first_audio)),
                "droppedChunks": self.inbox.dropped(),
            }),
        );
    }
}

impl Actor for Pipeline {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Dropping the stream gives its decoder back; dropping the synthesis future kills the
        // speech process (kill_on_drop).
        if let Some(stt) = self.stt.take() {
            stt.cancel();
        }
    }
}

impl Handler<Wake> for Pipeline {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.inbox.scheduled.store(false, Ordering::Release);
        loop {
            let chunk = self
                .inbox
                .chunks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let Some(chunk) = chunk else { break };
            let mut frames = std::mem::take(&mut self.frames);
            self.converter.push(&chunk, |f| frames.push(*f));
            for frame in &frames {
                self.on_frame(frame, ctx);
            }
            frames.clear();
            self.frames = frames;
        }
    }
}

impl Handler<Control> for Pipeline {
    type Result = ();

    fn handle(&mut self, control: Control, ctx: &mut Context<Self>) {
        match control {
            Control::Start(format) => {
                self.converter = Converter::new(format);
                self.vad.reset();
            }
            Control::Stop => {
                if self.turns.in_turn() {
                    self.speech_stopped();
                }
                self.turns.reset();
            }
            Control::Played(ms) => self.played_ms = ms,
            Control::Text(text) => {
                self.times = TurnTimes {
                    final_at: Some(Instant::now()),
                    ..TurnTimes::default()
                };
                self.respond(&text, ctx);
            }
            Control::Shutdown => ctx.stop(),
        }
    }
}

impl Handler<Transcript> for Pipeline {
    type Result = ();

    fn handle(&mut self, msg: Transcript, ctx: &mut Context<Self>) {
        if msg.turn != self.turn {
            return;
        }
        match msg.event {
            SttEvent::Partial(text) => self.emit("transcript.partial", json!({ "text": text })),
            SttEvent::Final(text) => {
                self.times.final_at = Some(Instant::now());
                self.emit("transcript.final", json!({ "text": text }));
                if !text.is_empty() {
                    self.respond(&text, ctx);
                }
            }
            SttEvent::Failed(message) => {
                self.emit("error", json!({"code": "stt_failed", "message": message}))
            }
        }
    }
}
