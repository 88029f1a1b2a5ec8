//! The voice-pipeline actor: one per authenticated `/voice` socket, created on the worker
//! thread of the connection that authenticated it, and kept on the thread of the connection
//! that carries its audio: when a session upgrades from polling to a WebSocket accepted by
//! another worker, the first chunk that arrives there asks the pipeline to move, and it does so
//! between turns (its state moves whole; nothing in flight is lost).
//!
//! Audio chunks reach it through a bounded inbox (drop-oldest, drops counted) with one wake-up
//! message per batch, not per chunk. Frames go through the listener on the actor (VAD,
//! turn-taking and the end-of-turn policy: a pure core, [`super::listen`]), which says when to
//! ask the end-of-turn model; speech-to-text runs on decoder threads; the assistant answers,
//! and the answering core ([`super::answer`], pure as well) says which sentence to synthesize,
//! when speech goes out, and what barge-in stops: the actor only runs the assistant's stream,
//! the synthesis processes and the pacing timer it asks for. Everything sent to the actor is
//! one `Input` message, so a pipeline that moved forwards it in one place. Every stage's cost
//! is reported per turn in a `metrics` event.

use crate::telemetry::{self, VOICE};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, SpawnHandle,
    WrapFuture,
};
use bytes::Bytes;
use serde_json::json;

use futures_util::StreamExt;

use super::answer::{Answering, Do, TICK_MS};
use super::assistant::Line;
use super::assistant::{AnswerStream, Assistant, AssistantEvent, Said};
use super::audio::{AudioFormat, Converter, Frame};
use super::history::SharedHistory;
use super::listen::Listener;
use super::smart_turn::{TurnDetector, Verdict};
use super::stt::{SpeechToText, SttEvent, SttStream};
use super::tts::{Speech, TextToSpeech};
use super::turn::{Earshot, Step, TurnConfig, Vad};
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
    /// Makes each pipeline's VAD (Silero when its model loaded, else earshot).
    pub vad: MakeVad,
    /// Decides, when the user pauses, whether the turn is over (Smart Turn when its model
    /// loaded); without one a turn ends after the hangover.
    pub turn_detector: Option<Arc<dyn TurnDetector>>,
    /// The speech models the stages looked for, for `/readyz`.
    pub models: Vec<ModelState>,
    /// Where each user's conversation history is kept beyond one pipeline.
    pub history: SharedHistory,
}

/// Whether a speech model was found and loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelState {
    /// The model's name (its directory or file under `VOXIO_MODELS_DIR`).
    pub name: &'static str,
    /// What it does.
    pub role: &'static str,
    /// Loaded and in use.
    pub loaded: bool,
    /// Why not, and what is used instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// A new pipeline's listener.
fn listener(stages: &Stages) -> Listener {
    Listener::new(
        (stages.vad)(),
        stages.turn,
        stages.turn_detector.is_some(),
        stages.stt.hears_at_pauses(),
    )
}

/// A new pipeline's answering core.
fn answering(stages: &Stages) -> Answering {
    Answering::new(HISTORY, stages.lead.as_millis() as u64)
}

/// Makes a VAD for a new pipeline.
pub type MakeVad = Arc<dyn Fn() -> Box<dyn Vad> + Send + Sync>;

/// earshot, boxed: the fallback for [`Stages::vad`].
pub fn earshot_vad() -> MakeVad {
    Arc::new(|| Box::new(Earshot::new()))
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

/// A key for the calling thread, cheap enough to take per chunk: the address of a
/// thread-local.
fn thread_key() -> usize {
    thread_local!(static KEY: u8 = const { 0 });
    KEY.with(|k| k as *const u8 as usize)
}

/// Where a pipeline runs: its actor's address and thread. Replaced, under the lock, when the
/// pipeline moves.
struct Home {
    addr: Mutex<actix::Addr<Pipeline>>,
    thread: AtomicUsize,
    /// A move was asked for and is not done.
    moving: AtomicBool,
}

impl Home {
    fn send(&self, input: Input) {
        // Sent under the lock: a message sent after a move reaches the new actor, and one
        // sent before it is forwarded by the old one.
        self.addr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .do_send(input);
    }
}

/// The connection's way into its pipeline.
#[derive(Clone)]
pub struct PipelineHandle {
    home: Arc<Home>,
    inbox: Arc<Inbox>,
    format: Arc<Mutex<AudioFormat>>,
    busy: Arc<AtomicBool>,
}

impl PipelineHandle {
    /// The stream's announced format.
    pub fn format(&self) -> AudioFormat {
        *self.format.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a chunk (already validated). Never blocks; under pressure the oldest goes.
    pub fn audio(&self, chunk: Bytes) {
        let wake = {
            let mut chunks = self.inbox.chunks.lock().unwrap_or_else(|e| e.into_inner());
            if chunks.len() >= self.inbox.capacity {
                chunks.pop_front();
                self.inbox.dropped.fetch_add(1, Ordering::Relaxed);
                VOICE.dropped.increment(1);
            }
            VOICE.chunks.increment(1);
            chunks.push_back(chunk);
            !self.inbox.scheduled.swap(true, Ordering::AcqRel)
        };
        if wake {
            self.home.send(Input::Wake);
        }
        self.follow();
    }

    /// Asks the pipeline to move to this thread if it runs on another: the audio's connection
    /// is here (a WebSocket that took over from polling on another worker), and a pipeline on
    /// another thread costs a cross-thread wake-up per batch. Per chunk this is a thread-local
    /// address and an atomic load.
    fn follow(&self) {
        let here = thread_key();
        if self.home.thread.load(Ordering::Acquire) == here
            || self.home.moving.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // Not on an actix arbiter (no worker to move to): stay, and do not ask again.
        if let Some(to) = actix_rt::Arbiter::try_current() {
            self.home
                .send(Input::Relocate(Relocate { to, thread: here }));
        }
    }

    /// A new stream format (`audio.start`).
    pub fn start(&self, format: AudioFormat) {
        *self.format.lock().unwrap_or_else(|e| e.into_inner()) = format;
        self.home.send(Input::Control(Control::Start(format)));
    }

    /// The stream ended (`audio.stop`).
    pub fn stop(&self) {
        self.home.send(Input::Control(Control::Stop));
    }

    /// How much of the assistant's speech the client has played.
    pub fn played(&self, ms: u64) {
        self.home.send(Input::Control(Control::Played(ms)));
    }

    /// Typed input instead of speech.
    pub fn text(&self, text: String) {
        self.home.send(Input::Control(Control::Text(text)));
    }

    /// Finishes speaking `text`, of which the client has the first `sent` chunks (the
    /// answer a node that went away was speaking).
    pub fn resume(&self, text: String, sent: u64) {
        self.home
            .send(Input::Control(Control::Resume { text, sent }));
    }

    /// The socket left: stop, releasing the decoder and any speech process.
    pub fn shutdown(&self) {
        self.home.send(Input::Control(Control::Shutdown));
    }

    /// Chunks dropped so far.
    pub fn dropped(&self) -> u64 {
        self.inbox.dropped()
    }

    /// Whether a turn is in progress: from speech (or typed text) until its answer has been
    /// sent in full, or the turn came to nothing.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

/// Everything sent to a pipeline, in one message so that a pipeline that moved forwards it
/// in one place.
#[derive(Message)]
#[rtype(result = "()")]
enum Input {
    /// The inbox has chunks.
    Wake,
    Relocate(Relocate),
    Control(Control),
    Answer(AnswerEvent),
    Transcript(Transcript),
    Verdict(TurnVerdict),
    /// The user's history, loaded from the store at start.
    History(Vec<Line>),
}

/// Move to the arbiter `to`, whose thread is `thread`, at the first moment between turns.
struct Relocate {
    to: actix_rt::ArbiterHandle,
    thread: usize,
}

/// How long a pipeline that moved forwards what was sent to it before the move.
const FORWARD_AFTER_MOVE: Duration = Duration::from_secs(2);

enum Control {
    Start(AudioFormat),
    Stop,
    Played(u64),
    Text(String),
    /// Finish an answer another node was speaking.
    Resume {
        text: String,
        sent: u64,
    },
    Shutdown,
}

/// The end-of-turn model's verdict on pause number `pause` of turn `turn`.
struct TurnVerdict {
    turn: u64,
    pause: u64,
    verdict: Result<Verdict, String>,
}

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

/// A transcript with the held words of earlier turns before it: joined, at the lower
/// confidence of the two.
fn after_held(held: Option<(String, f32)>, text: String, confidence: f32) -> (String, f32) {
    match held {
        Some((held, c)) if text.is_empty() => (held, c),
        Some((held, c)) => (format!("{held} {text}"), c.min(confidence)),
        None => (text, confidence),
    }
}

/// What a turn that could not be transcribed hears.
pub const BUSY_APOLOGY: &str = "Sorry, I am busy with others right now. Please say that again.";

/// Lines of conversation kept for the assistant.
pub const HISTORY: usize = 20;

struct AnswerEvent {
    id: u64,
    /// `None` when the answer's stream ended.
    event: Option<Result<AssistantEvent, String>>,
}

/// The pipeline actor.
pub struct Pipeline {
    socket: Socket,
    user: String,
    stages: Arc<Stages>,
    inbox: Arc<Inbox>,
    converter: Converter,
    /// Voice activity and turn-taking.
    listener: Listener,
    frames: Vec<Frame>,
    stt: Option<Box<dyn SttStream>>,
    turn: u64,
    times: TurnTimes,
    /// The answer side: what to say, when, and what the conversation keeps.
    answering: Answering,
    /// The work the answering core asked for: the assistant's stream, the synthesis of one
    /// sentence, the pacing timer.
    stream: Option<actix_rt::task::JoinHandle<()>>,
    synthesis: Option<SpawnHandle>,
    pacing: Option<SpawnHandle>,
    busy: Arc<AtomicBool>,
    home: Arc<Home>,
    /// A move asked for and waiting for the turn to end.
    relocation: Option<Relocate>,
    /// The pipeline moved there: this actor only forwards, then stops.
    moved: Option<actix::Addr<Pipeline>>,
    /// Words of an earlier turn, with their confidence, whose transcript came in after the
    /// next turn had started: they open that turn's transcript.
    held: Option<(String, f32)>,
    /// The answer being spoken and how many of its chunks were sent, kept with the socket so
    /// that another node can finish it if this one goes away.
    speaking: Option<(String, u64)>,
}

impl Pipeline {
    /// Starts a pipeline for `socket` on the current worker thread.
    pub fn start(socket: Socket, user: String, stages: Arc<Stages>) -> PipelineHandle {
        let inbox = Arc::new(Inbox::new(stages.inbox));
        let ctx = Context::new();
        let home = Arc::new(Home {
            addr: Mutex::new(ctx.address()),
            thread: AtomicUsize::new(thread_key()),
            moving: AtomicBool::new(false),
        });
        let pipeline = Pipeline {
            socket,
            user,
            inbox: inbox.clone(),
            converter: Converter::new(AudioFormat::default()),
            listener: listener(&stages),
            frames: Vec::with_capacity(64),
            stt: None,
            turn: 0,
            times: TurnTimes::default(),
            answering: answering(&stages),
            stream: None,
            synthesis: None,
            pacing: None,
            busy: Arc::new(AtomicBool::new(false)),
            home: home.clone(),
            relocation: None,
            moved: None,
            held: None,
            speaking: None,
            stages,
        };
        let busy = pipeline.busy.clone();
        let (load, addr) = (pipeline.stages.history.load(&pipeline.user), ctx.address());
        actix_rt::spawn(async move { addr.do_send(Input::History(load.await)) });
        ctx.run(pipeline);
        PipelineHandle {
            home,
            inbox,
            format: Arc::new(Mutex::new(AudioFormat::default())),
            busy,
        }
    }

    fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Release);
    }

    fn emit(&self, event: &str, data: serde_json::Value) {
        let _ = self.socket.emit(event, data);
    }

    fn on_frame(&mut self, frame: &Frame, ctx: &mut Context<Self>) {
        let heard = self.listener.frame(frame);
        if heard.voiced {
            self.times.last_voiced = Some(Instant::now());
        }
        match heard.step {
            Step::Idle => {}
            Step::Started => self.speech_started(ctx),
            Step::Speech | Step::Check => {
                if let Some(stt) = &mut self.stt {
                    stt.push(frame);
                }
            }
            Step::Pause => {
                if let Some(stt) = &mut self.stt {
                    stt.push(frame);
                    stt.pause(self.listener.pause_number());
                }
            }
            Step::Resume => {
                if let Some(stt) = &mut self.stt {
                    stt.resume();
                    stt.push(frame);
                }
            }
            Step::Stopped => self.speech_stopped(),
        }
        if heard.ask {
            self.ask_if_finished(ctx);
        }
    }

    /// Asks the end-of-turn model whether the user has finished (the listener said when).
    fn ask_if_finished(&mut self, ctx: &mut Context<Self>) {
        let Some(detector) = &self.stages.turn_detector else {
            return self.listener.not_asked();
        };
        let (addr, turn, pause) = (ctx.address(), self.turn, self.listener.pause_number());
        let asked = detector.ask(
            self.listener.window(),
            Box::new(move |verdict| {
                addr.do_send(Input::Verdict(TurnVerdict {
                    turn,
                    pause,
                    verdict,
                }))
            }),
        );
        if !asked {
            VOICE.turn_checks_refused.increment(1);
            self.listener.not_asked();
        }
    }

    fn speech_started(&mut self, ctx: &mut Context<Self>) {
        self.emit("vad.speech_started", json!({}));
        self.answering.interrupt();
        self.carry_out(ctx);
        self.turn += 1;
        self.set_busy(true);
        VOICE.turns.increment(1);
        self.times = TurnTimes {
            last_voiced: Some(Instant::now()),
            ..TurnTimes::default()
        };
        let (addr, turn) = (ctx.address(), self.turn);
        let sink =
            Arc::new(move |event| addr.do_send(Input::Transcript(Transcript { turn, event })));
        self.stt = self.stages.stt.start(sink);
        if self.stt.is_none() {
            self.emit("error", json!({"code": "stt_busy", "message": "Speech recognition is busy; this turn is not transcribed."}));
        }
        if let Some(stt) = &mut self.stt {
            for frame in self.listener.preroll() {
                stt.push(frame);
            }
        }
    }

    fn speech_stopped(&mut self) {
        self.emit("vad.speech_stopped", json!({}));
        self.times.stopped = Some(Instant::now());
        match self.stt.take() {
            Some(stt) => stt.finish(),
            // Nothing will be transcribed: the turn is over.
            None => self.set_busy(self.answering.answering()),
        }
    }

    /// Starts answering what the user said.
    fn respond(&mut self, said: Said<'_>, ctx: &mut Context<Self>) {
        let id = self.answering.start(Some(said.text));
        let history = self.answering.history();
        let stream = self.stages.assistant.answer(&self.user, &history, &said);
        self.answer_with(id, stream, ctx);
    }

    /// Says `text` without asking the assistant (the user's words never reached it).
    fn say(&mut self, text: &str, ctx: &mut Context<Self>) {
        let id = self.answering.start(None);
        let delta = Ok(AssistantEvent::Delta(text.to_owned()));
        self.answer_with(id, Box::pin(futures_util::stream::iter([delta])), ctx);
    }

    /// Runs answer `id`'s `stream`, forwarding its events to this actor tagged with the id,
    /// once what replacing the answer before it asked for is done.
    fn answer_with(&mut self, id: u64, mut stream: AnswerStream, ctx: &mut Context<Self>) {
        self.carry_out(ctx);
        self.set_busy(true);
        let addr = ctx.address();
        self.stream = Some(actix_rt::spawn(async move {
            while let Some(event) = stream.next().await {
                addr.do_send(Input::Answer(AnswerEvent {
                    id,
                    event: Some(event),
                }));
            }
            addr.do_send(Input::Answer(AnswerEvent { id, event: None }));
        }));
    }

    /// Does what the answering core asks, in order.
    fn carry_out(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.answering.poll() {
            match action {
                Do::Emit(event, data) => match event {
                    "assistant.text.done" => {
                        let text = data["text"].as_str().unwrap_or_default().to_owned();
                        // The answer is kept as being spoken before any of its audio goes
                        // out: a node that dies between its first chunk and that chunk's
                        // write still leaves a record another node can finish it from.
                        self.speaking = Some((text, 0));
                        self.emit_speaking(event, data);
                    }
                    "tts.stopped" => {
                        self.stop_speaking();
                        self.emit(event, data);
                    }
                    _ => self.emit(event, data),
                },
                Do::Audio {
                    seq,
                    sample_rate,
                    data,
                } => {
                    let meta = json!({ "seq": seq, "sampleRate": sample_rate });
                    let chunk = Payload::new().arg(meta).bin(data);
                    // The chunk goes out with the count of chunks sent kept beside it: a node
                    // that finishes the answer goes on after it.
                    if let Some((_, sent)) = &mut self.speaking {
                        *sent = seq;
                    }
                    self.emit_speaking("tts.audio", chunk);
                }
                Do::Synthesize { id, sentence } => {
                    let synthesis =
                        self.stages.tts.synthesize(&sentence).into_actor(self).map(
                            move |result, act, ctx| act.synthesized(id, sentence, result, ctx),
                        );
                    self.synthesis = Some(ctx.spawn(synthesis));
                }
                Do::StartPacing => {
                    let every = Duration::from_millis(TICK_MS);
                    self.pacing = Some(ctx.run_interval(every, |act, ctx| {
                        act.answering.handle_tick();
                        act.carry_out(ctx);
                    }));
                }
                Do::StopPacing => {
                    if let Some(pacing) = self.pacing.take() {
                        ctx.cancel_future(pacing);
                    }
                }
                Do::Cancel => {
                    if let Some(stream) = self.stream.take() {
                        stream.abort();
                    }
                    for handle in [self.pacing.take(), self.synthesis.take()]
                        .into_iter()
                        .flatten()
                    {
                        ctx.cancel_future(handle);
                    }
                }
                Do::Replied => self.times.replied = Some(Instant::now()),
                Do::FirstAudio => self.metrics(Instant::now()),
                Do::Finished => {
                    self.set_busy(false);
                    self.stop_speaking();
                }
                Do::Remember(line) => {
                    actix_rt::spawn(self.stages.history.append(&self.user, line));
                }
            }
        }
    }

    /// Emits `event` with the answer being spoken (`self.speaking`) kept beside it in the
    /// socket's data, in the same write to the recovery store.
    fn emit_speaking(&self, event: &str, payload: impl Into<Payload>) {
        let kept = self.speaking.as_ref().and_then(|(text, sent)| {
            super::speaking_data(&self.socket, Some((text.as_str(), *sent)))
        });
        let _ = match kept {
            Some(kept) => self.socket.emit_with_data(event, payload, kept),
            None => self.socket.emit(event, payload),
        };
    }

    /// Nothing is being spoken any more: the socket's data no longer says so either.
    fn stop_speaking(&mut self) {
        if self.speaking.take().is_none() {
            return;
        }
        if let Some(data) = super::speaking_data(&self.socket, None) {
            self.socket.set_data(data);
        }
    }

    fn synthesized(
        &mut self,
        id: u64,
        sentence: String,
        result: Result<Speech, String>,
        ctx: &mut Context<Self>,
    ) {
        // Only the synthesis in progress completes: a cancelled one never does.
        self.synthesis = None;
        self.answering.handle_speech(id, sentence, result);
        self.carry_out(ctx);
    }

    fn metrics(&self, first_audio: Instant) {
        let ms = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => json!(b.saturating_duration_since(a).as_millis() as u64),
            _ => serde_json::Value::Null,
        };
        let t = self.times;
        let seconds = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a).as_secs_f64()),
            _ => None,
        };
        for (stage, value) in [
            ("vad_stop", seconds(t.last_voiced, t.stopped)),
            ("stt_final", seconds(t.stopped, t.final_at)),
            ("assistant_first", seconds(t.final_at, t.replied)),
            ("tts_first", seconds(t.replied, Some(first_audio))),
            ("total", seconds(t.stopped, Some(first_audio))),
        ] {
            if let Some(value) = value {
                telemetry::voice_stage(stage, value);
            }
        }
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
        // Cancelling the stream gives its decoder back; the synthesis future is dropped with
        // the actor's context, which kills the speech process (kill_on_drop).
        if let Some(stt) = self.stt.take() {
            stt.cancel();
        }
        if let Some(stream) = self.stream.take() {
            stream.abort();
        }
    }
}

/// Chunks handled per wake-up before yielding, so the connection sharing this thread keeps
/// reading (and the inbox, not the socket, absorbs a pipeline that falls behind).
const CHUNKS_PER_WAKE: usize = 8;

impl Handler<Input> for Pipeline {
    type Result = ();

    fn handle(&mut self, input: Input, ctx: &mut Context<Self>) {
        if let Some(next) = &self.moved {
            return next.do_send(input);
        }
        match input {
            Input::Wake => self.drain(ctx),
            Input::Relocate(relocate) => {
                self.relocation = Some(relocate);
                self.try_relocate(ctx);
            }
            Input::Control(control) => self.on_control(control, ctx),
            Input::Answer(event) => self.on_answer(event, ctx),
            Input::Transcript(transcript) => self.on_transcript(transcript, ctx),
            Input::Verdict(verdict) => self.on_verdict(verdict, ctx),
            Input::History(lines) => self.answering.restore(lines),
        }
    }
}

impl Pipeline {
    /// Handles up to [`CHUNKS_PER_WAKE`] chunks, then yields to the thread's other tasks (a
    /// timer, not a notification: those run before anything else gets a turn).
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if let Some(next) = &self.moved {
            return next.do_send(Input::Wake);
        }
        for _ in 0..CHUNKS_PER_WAKE {
            let chunk = {
                let mut chunks = self.inbox.chunks.lock().unwrap_or_else(|e| e.into_inner());
                let chunk = chunks.pop_front();
                if chunk.is_none() {
                    // Cleared under the lock: a push after this sees it clear and wakes us.
                    self.inbox.scheduled.store(false, Ordering::Release);
                }
                chunk
            };
            let Some(chunk) = chunk else {
                return self.try_relocate(ctx);
            };
            let mut frames = std::mem::take(&mut self.frames);
            self.converter.push(&chunk, |f| frames.push(*f));
            for frame in &frames {
                self.on_frame(frame, ctx);
            }
            frames.clear();
            self.frames = frames;
        }
        ctx.run_later(Duration::ZERO, |act, ctx| act.drain(ctx));
    }
}

impl Pipeline {
    /// Between turns nothing is in flight on this actor's context (no decoder stream whose
    /// sink names this actor, no answer being streamed, synthesized or paced).
    fn between_turns(&self) -> bool {
        self.stt.is_none() && !self.answering.answering() && !self.busy.load(Ordering::Acquire)
    }

    /// Moves, if a move is wanted and this is a moment between turns: the state goes whole to
    /// a new actor on the target thread, which takes over the inbox and the handle; this one
    /// forwards what was sent to it before the switch, then stops.
    fn try_relocate(&mut self, ctx: &mut Context<Self>) {
        if !self.between_turns() {
            return;
        }
        let Some(Relocate { to, thread }) = self.relocation.take() else {
            return;
        };
        let stages = self.stages.clone();
        let successor = Pipeline {
            socket: self.socket.clone(),
            user: self.user.clone(),
            inbox: self.inbox.clone(),
            converter: std::mem::replace(
                &mut self.converter,
                Converter::new(AudioFormat::default()),
            ),
            listener: std::mem::replace(&mut self.listener, listener(&stages)),
            frames: Vec::with_capacity(64),
            stt: None,
            turn: self.turn,
            times: self.times,
            // Between turns the core holds only the conversation: it moves whole.
            answering: std::mem::replace(&mut self.answering, answering(&stages)),
            stream: None,
            synthesis: None,
            pacing: None,
            busy: self.busy.clone(),
            home: self.home.clone(),
            relocation: None,
            moved: None,
            held: self.held.take(),
            speaking: None,
            stages,
        };
        let next = Pipeline::start_in_arbiter(&to, move |_| successor);
        {
            let mut addr = self.home.addr.lock().unwrap_or_else(|e| e.into_inner());
            *addr = next.clone();
            self.home.thread.store(thread, Ordering::Release);
        }
        self.home.moving.store(false, Ordering::Release);
        // Whatever the inbox holds (its wake-up may have come here) is the new actor's now.
        next.do_send(Input::Wake);
        self.moved = Some(next);
        VOICE.moves.increment(1);
        ctx.run_later(FORWARD_AFTER_MOVE, |_, ctx| ctx.stop());
    }
}

impl Pipeline {
    fn on_control(&mut self, control: Control, ctx: &mut Context<Self>) {
        match control {
            Control::Start(format) => {
                self.converter = Converter::new(format);
                self.listener.restart();
            }
            Control::Stop => {
                if self.listener.stop() {
                    self.speech_stopped();
                }
            }
            Control::Played(ms) => self.answering.handle_played(ms),
            Control::Text(text) => {
                self.times = TurnTimes {
                    final_at: Some(Instant::now()),
                    ..TurnTimes::default()
                };
                self.respond(Said::certain(&text), ctx);
            }
            Control::Resume { text, sent } => {
                self.times = TurnTimes::default();
                self.answering.resume(&text, sent);
                self.speaking = Some((text, sent));
                self.set_busy(true);
                self.carry_out(ctx);
            }
            Control::Shutdown => ctx.stop(),
        }
    }
}

impl Pipeline {
    fn on_answer(&mut self, msg: AnswerEvent, ctx: &mut Context<Self>) {
        self.answering.handle_event(msg.id, msg.event);
        self.carry_out(ctx);
    }
}

impl Pipeline {
    fn on_transcript(&mut self, msg: Transcript, ctx: &mut Context<Self>) {
        if msg.turn != self.turn {
            // An earlier turn's words, come in after the user started speaking again (a pause
            // longer than the hangover): they open this turn's transcript instead of being
            // lost.
            if let SttEvent::Final { text, confidence } = msg.event {
                if msg.turn < self.turn && !text.is_empty() {
                    self.held = Some(after_held(self.held.take(), text, confidence));
                }
            }
            return;
        }
        match msg.event {
            // A partial that comes after the turn's final (the turn ended at once on the words
            // heard at the pause, while the partials' decoder was still catching up) is stale.
            SttEvent::Partial(_) if self.times.final_at.is_some() => {}
            SttEvent::Partial(text) => self.emit("transcript.partial", json!({ "text": text })),
            SttEvent::Tentative { pause, text } => {
                if self.listener.words(pause, &text) {
                    self.speech_stopped();
                }
            }
            SttEvent::Final { text, confidence } => {
                let (text, confidence) = after_held(self.held.take(), text, confidence);
                self.times.final_at = Some(Instant::now());
                self.emit("transcript.final", json!({ "text": text }));
                // An empty transcript (speech recognition refused what it heard) is answered
                // too: the user spoke and hears that it was not understood.
                self.respond(
                    Said {
                        text: &text,
                        confidence,
                    },
                    ctx,
                );
            }
            SttEvent::Failed(message) => {
                self.emit("error", json!({"code": "stt_failed", "message": message}));
                self.set_busy(self.answering.answering());
            }
            SttEvent::Busy => {
                telemetry::stt_busy();
                self.emit(
                    "error",
                    json!({"code": "busy", "message": "Too many people are speaking at once; this turn was not transcribed."}),
                );
                self.say(BUSY_APOLOGY, ctx);
            }
        }
    }
}

impl Pipeline {
    fn on_verdict(&mut self, msg: TurnVerdict, _: &mut Context<Self>) {
        if msg.turn != self.turn {
            return;
        }
        match msg.verdict {
            Ok(verdict) => {
                VOICE.turn_checks.increment(1);
                tracing::debug!(
                    turn = msg.turn,
                    pause = msg.pause,
                    probability = verdict.probability,
                    "end-of-turn verdict"
                );
                if self.listener.verdict(msg.pause, verdict) {
                    self.speech_stopped();
                }
            }
            Err(e) => {
                self.listener.not_asked();
                tracing::warn!("end-of-turn model: {e}; this turn ends after the hangover");
            }
        }
    }
}
