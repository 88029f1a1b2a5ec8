//! The voice-pipeline actor: one per authenticated `/voice` socket, created on the worker
//! thread of the connection that authenticated it, and kept on the thread of the connection
//! that carries its audio: when a session upgrades from polling to a WebSocket accepted by
//! another worker, the first chunk that arrives there asks the pipeline to move, and it does so
//! between turns (its state moves whole; nothing in flight is lost).
//!
//! Audio chunks reach it through a bounded inbox (drop-oldest, drops counted) with one wake-up
//! message per batch, not per chunk. Frames go through the listener on the actor (VAD,
//! turn-taking and the end-of-turn policy: a pure core, [`super::listen`]), which says when to
//! ask the end-of-turn model; speech-to-text runs on decoder threads; the assistant answers;
//! everything sent to the actor is one `Input` message, so a pipeline that moved forwards
//! it in one place. Speech is
//! synthesized by a process and streamed back paced near real time. When the user speaks over
//! the assistant, speech and synthesis are cancelled at once and the client is told to clear
//! its playback (barge-in). Every stage's cost is reported per turn in a `metrics` event.

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

use super::assistant::{AnswerStream, Assistant, AssistantEvent, Line, Role, Said, Sentences};
use super::audio::{AudioFormat, Converter, Frame};
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
const HISTORY: usize = 20;

/// The answer being given: text streaming in, sentences being synthesized one by one, speech
/// being paced out.
struct Answer {
    id: u64,
    task: Option<actix_rt::task::JoinHandle<()>>,
    text: String,
    sentences: Sentences,
    to_speak: VecDeque<String>,
    synthesizing: Option<SpawnHandle>,
    text_done: bool,
    audio: VecDeque<Bytes>,
    pacing: Option<SpawnHandle>,
    rate: u32,
    seq: u64,
    /// Sentences synthesized so far, with their length in ms.
    spoken: Vec<(String, u64)>,
}

/// What the user heard of an answer: whole sentences within `played_ms`, and the same share
/// of the words of the sentence playing when it stopped.
fn heard(spoken: &[(String, u64)], played_ms: u64) -> String {
    let mut left = played_ms;
    let mut heard = Vec::new();
    for (sentence, ms) in spoken {
        if left >= *ms {
            heard.push(sentence.clone());
            left -= ms;
        } else {
            let words: Vec<&str> = sentence.split_whitespace().collect();
            let n = (words.len() as u64 * left / (*ms).max(1)) as usize;
            if n > 0 {
                heard.push(format!("{}…", words[..n].join(" ")));
            }
            break;
        }
    }
    heard.join(" ")
}

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
    answer: Option<Answer>,
    answers: u64,
    history: Vec<Line>,
    played_ms: u64,
    busy: Arc<AtomicBool>,
    home: Arc<Home>,
    /// A move asked for and waiting for the turn to end.
    relocation: Option<Relocate>,
    /// The pipeline moved there: this actor only forwards, then stops.
    moved: Option<actix::Addr<Pipeline>>,
    /// Words of an earlier turn, with their confidence, whose transcript came in after the
    /// next turn had started: they open that turn's transcript.
    held: Option<(String, f32)>,
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
            answer: None,
            answers: 0,
            history: Vec::new(),
            played_ms: 0,
            busy: Arc::new(AtomicBool::new(false)),
            home: home.clone(),
            relocation: None,
            moved: None,
            held: None,
            stages,
        };
        let busy = pipeline.busy.clone();
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
            Step::Speech | Step::Recheck => {
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
        if self.answer.is_some() {
            let played = self.played_ms;
            self.stop_answer(ctx, "interrupted");
            self.emit("playback.clear", json!({ "playedMs": played }));
        }
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
            None => self.set_busy(self.answer.is_some()),
        }
    }

    /// Starts answering what the user said.
    fn respond(&mut self, said: Said<'_>, ctx: &mut Context<Self>) {
        if !said.text.is_empty() {
            self.remember(Role::User, said.text.to_owned());
        }
        let stream = self
            .stages
            .assistant
            .answer(&self.user, &self.history, &said);
        self.answer_with(stream, ctx);
    }

    /// Says `text` without asking the assistant (the user's words never reached it).
    fn say(&mut self, text: &str, ctx: &mut Context<Self>) {
        let delta = Ok(AssistantEvent::Delta(text.to_owned()));
        self.answer_with(Box::pin(futures_util::stream::iter([delta])), ctx);
    }

    /// Starts giving an answer: `stream` is forwarded to this actor, tagged so that a
    /// cancelled answer's leftovers are ignored.
    fn answer_with(&mut self, mut stream: AnswerStream, ctx: &mut Context<Self>) {
        self.stop_answer(ctx, "replaced");
        self.set_busy(true);
        self.answers += 1;
        let id = self.answers;
        let addr = ctx.address();
        let task = actix_rt::spawn(async move {
            while let Some(event) = stream.next().await {
                addr.do_send(Input::Answer(AnswerEvent {
                    id,
                    event: Some(event),
                }));
            }
            addr.do_send(Input::Answer(AnswerEvent { id, event: None }));
        });
        self.played_ms = 0;
        self.answer = Some(Answer {
            id,
            task: Some(task),
            text: String::new(),
            sentences: Sentences::default(),
            to_speak: VecDeque::new(),
            synthesizing: None,
            text_done: false,
            audio: VecDeque::new(),
            pacing: None,
            rate: 0,
            seq: 0,
            spoken: Vec::new(),
        });
    }

    /// Synthesizes the next sentence, one at a time, in order.
    fn pump_speech(&mut self, ctx: &mut Context<Self>) {
        let Some(answer) = &mut self.answer else {
            return;
        };
        if answer.synthesizing.is_some() {
            return;
        }
        let Some(sentence) = answer.to_speak.pop_front() else {
            return self.maybe_finish(ctx);
        };
        let id = answer.id;
        let synthesis = self
            .stages
            .tts
            .synthesize(&sentence)
            .into_actor(self)
            .map(move |result, act, ctx| act.synthesized(id, sentence, result, ctx));
        let handle = ctx.spawn(synthesis);
        if let Some(answer) = &mut self.answer {
            answer.synthesizing = Some(handle);
        }
    }

    fn synthesized(
        &mut self,
        id: u64,
        sentence: String,
        result: Result<Speech, String>,
        ctx: &mut Context<Self>,
    ) {
        let Some(answer) = self.answer.as_mut().filter(|a| a.id == id) else {
            return;
        };
        answer.synthesizing = None;
        match result {
            Ok(speech) => {
                let rate = speech.sample_rate.max(1);
                let chunk = (rate as usize / 10).max(1);
                answer.rate = rate;
                answer.spoken.push((
                    sentence,
                    speech.samples.len() as u64 * 1000 / u64::from(rate),
                ));
                answer.audio.extend(speech.samples.chunks(chunk).map(|c| {
                    Bytes::from(c.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>())
                }));
                if answer.pacing.is_none() {
                    self.emit("tts.started", json!({ "sampleRate": rate }));
                    self.metrics(Instant::now());
                    let ahead = (self.stages.lead.as_millis() / 100) as usize + 1;
                    self.send_audio(ahead);
                    let pacing = ctx.run_interval(Duration::from_millis(100), |act, ctx| {
                        act.send_audio(1);
                        act.maybe_finish(ctx);
                    });
                    if let Some(answer) = &mut self.answer {
                        answer.pacing = Some(pacing);
                    }
                }
            }
            Err(message) => self.emit("error", json!({"code": "tts_failed", "message": message})),
        }
        self.pump_speech(ctx);
    }

    fn send_audio(&mut self, n: usize) {
        let Some(answer) = &mut self.answer else {
            return;
        };
        for _ in 0..n {
            let Some(data) = answer.audio.pop_front() else {
                return;
            };
            answer.seq += 1;
            let meta = json!({ "seq": answer.seq, "sampleRate": answer.rate });
            let _ = self
                .socket
                .emit("tts.audio", Payload::new().arg(meta).bin(data));
        }
    }

    /// Ends the answer once its text is complete and all its speech has been sent.
    fn maybe_finish(&mut self, ctx: &mut Context<Self>) {
        let finished = self.answer.as_ref().is_some_and(|a| {
            a.text_done && a.to_speak.is_empty() && a.synthesizing.is_none() && a.audio.is_empty()
        });
        if !finished {
            return;
        }
        if let Some(answer) = self.answer.take() {
            if let Some(pacing) = answer.pacing {
                ctx.cancel_future(pacing);
                self.emit("tts.stopped", json!({ "reason": "done" }));
            }
            self.remember(Role::Assistant, answer.text);
        }
        self.set_busy(false);
    }

    /// Cancels the answer in progress; the history keeps only what the client played of it.
    fn stop_answer(&mut self, ctx: &mut Context<Self>, reason: &str) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        if let Some(task) = answer.task {
            task.abort();
        }
        for handle in [answer.pacing, answer.synthesizing].into_iter().flatten() {
            ctx.cancel_future(handle);
        }
        if answer.pacing.is_some() {
            self.emit("tts.stopped", json!({ "reason": reason }));
        }
        let heard = heard(&answer.spoken, self.played_ms);
        if !heard.is_empty() {
            self.remember(Role::Assistant, heard);
        }
    }

    fn remember(&mut self, role: Role, text: String) {
        if self.history.len() >= HISTORY {
            self.history.remove(0);
        }
        self.history.push(Line { role, text });
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
        if let Some(task) = self.answer.take().and_then(|a| a.task) {
            task.abort();
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
        self.stt.is_none() && self.answer.is_none() && !self.busy.load(Ordering::Acquire)
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
            answer: None,
            answers: self.answers,
            history: std::mem::take(&mut self.history),
            played_ms: self.played_ms,
            busy: self.busy.clone(),
            home: self.home.clone(),
            relocation: None,
            moved: None,
            held: self.held.take(),
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
            Control::Played(ms) => self.played_ms = ms,
            Control::Text(text) => {
                self.times = TurnTimes {
                    final_at: Some(Instant::now()),
                    ..TurnTimes::default()
                };
                self.respond(Said::certain(&text), ctx);
            }
            Control::Shutdown => ctx.stop(),
        }
    }
}

impl Pipeline {
    fn on_answer(&mut self, msg: AnswerEvent, ctx: &mut Context<Self>) {
        let Some(answer) = self.answer.as_mut().filter(|a| a.id == msg.id) else {
            return;
        };
        match msg.event {
            Some(Ok(AssistantEvent::Delta(delta))) => {
                if answer.text.is_empty() {
                    self.times.replied = Some(Instant::now());
                }
                answer.text.push_str(&delta);
                let sentences = answer.sentences.push(&delta);
                answer.to_speak.extend(sentences);
                self.emit("assistant.text.delta", json!({ "text": delta }));
                self.pump_speech(ctx);
            }
            Some(Ok(AssistantEvent::Todos(items))) => self.emit("todos", json!({ "items": items })),
            Some(Err(message)) => {
                answer.task = None;
                answer.text_done = true;
                if let Some(rest) = answer.sentences.finish() {
                    answer.to_speak.push_back(rest);
                }
                self.emit(
                    "error",
                    json!({"code": "assistant_failed", "message": message}),
                );
                self.pump_speech(ctx);
            }
            None => {
                answer.task = None;
                answer.text_done = true;
                if let Some(rest) = answer.sentences.finish() {
                    answer.to_speak.push_back(rest);
                }
                let text = answer.text.clone();
                self.emit("assistant.text.done", json!({ "text": text }));
                self.pump_speech(ctx);
            }
        }
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
                self.set_busy(self.answer.is_some());
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
