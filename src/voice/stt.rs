//! Speech to text.
//!
//! The offline default is pocketsphinx (Debian's library and `pocketsphinx-en-us` model) in a
//! pool of dedicated threads, each holding a decoder made at start (it is not `Send`, and takes
//! a quarter of a second to create). A turn borrows one decoder for its length and gives it
//! back at the end, whatever ends it. Audio goes to the decoder thread in batches of ~100 ms,
//! not per frame. Each utterance is decoded with the assistant's command grammar first; if the
//! grammar finds nothing, the utterance is decoded again with the general language model.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a speech-to-text stream reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttEvent {
    /// The words so far.
    Partial(String),
    /// The turn's transcript.
    Final(String),
    /// The stage failed; the turn has no transcript.
    Failed(String),
}

/// Where a stream's events go (the pipeline actor's address, in practice).
pub type SttSink = Box<dyn Fn(SttEvent) + Send>;

/// A speech-to-text engine.
pub trait SpeechToText: Send + Sync {
    /// Starts a stream for one turn; `None` when no decoder is free.
    fn start(&self, sink: SttSink) -> Option<Box<dyn SttStream>>;

    /// Whether it can take turns now (a remote provider: always; it fails per turn).
    fn readiness(&self) -> Readiness {
        Readiness {
            ready: true,
            decoders: 0,
            idle: 0,
        }
    }
}

/// What `/readyz` reports of speech-to-text.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    /// Able to transcribe.
    pub ready: bool,
    /// Warm local decoders (0 for a remote provider).
    pub decoders: usize,
    /// Of which free now.
    pub idle: usize,
}

/// One turn's audio going in.
pub trait SttStream: Send {
    /// 16 kHz mono samples (any length).
    fn push(&mut self, samples: &[i16]);
    /// The turn ended: produce the final transcript.
    fn finish(self: Box<Self>);
    /// The turn was abandoned: no final.
    fn cancel(self: Box<Self>);
}

/// Where Debian puts the en-us model.
pub const MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";

/// Paths of a pocketsphinx model.
#[derive(Debug, Clone)]
pub struct SphinxModel {
    /// Acoustic model directory.
    pub hmm: PathBuf,
    /// General language model.
    pub lm: PathBuf,
    /// Pronunciation dictionary.
    pub dict: PathBuf,
}

impl SphinxModel {
    /// The Debian en-us model under `dir`.
    pub fn in_dir(dir: &Path) -> SphinxModel {
        SphinxModel {
            hmm: dir.join("en-us"),
            lm: dir.join("en-us.lm.bin"),
            dict: dir.join("cmudict-en-us.dict"),
        }
    }

    /// Fails unless every file is there.
    pub fn check(&self) -> Result<(), String> {
        for path in [&self.hmm, &self.lm, &self.dict] {
            if !path.exists() {
                return Err(format!(
                    "pocketsphinx model file {} is missing (Debian package pocketsphinx-en-us)",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    /// The dictionary's words (for keeping a grammar to words the decoder knows).
    pub fn words(&self) -> HashSet<String> {
        std::fs::read_to_string(&self.dict)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|w| !w.contains('('))
            .map(str::to_owned)
            .collect()
    }
}

enum Command {
    Begin(SttSink),
    Audio(Vec<i16>),
    Finish,
    Cancel,
}

/// Commands a worker may have waiting (each a ~100 ms batch): ~12 s of audio.
const WORKER_QUEUE: usize = 128;

/// The pool of pocketsphinx decoders.
pub struct SphinxPool {
    idle: Arc<Mutex<Vec<SyncSender<Command>>>>,
    size: usize,
}

impl SphinxPool {
    /// Starts `size` decoder threads with `grammar` (JSGF) and waits until they are warm.
    pub fn start(model: &SphinxModel, grammar: &str, size: usize) -> Result<SphinxPool, String> {
        model.check()?;
        let idle = Arc::new(Mutex::new(Vec::with_capacity(size)));
        let (ready_tx, ready_rx) = mpsc::channel();
        for n in 0..size.max(1) {
            let (me, rx) = mpsc::sync_channel(WORKER_QUEUE);
            let (model, grammar, ready, idle) = (
                model.clone(),
                grammar.to_owned(),
                ready_tx.clone(),
                idle.clone(),
            );
            std::thread::Builder::new()
                .name(format!("voxio-stt-{n}"))
                .spawn(move || worker(model, grammar, rx, ready, idle, me))
                .map_err(|e| e.to_string())?;
        }
        drop(ready_tx);
        let mut warm = 0;
        for result in ready_rx {
            result?;
            warm += 1;
        }
        if warm == 0 {
            return Err("no speech-to-text decoder started".into());
        }
        Ok(SphinxPool { idle, size: warm })
    }

    /// Decoders in the pool.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Decoders free now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }
}

impl SpeechToText for SphinxPool {
    fn readiness(&self) -> Readiness {
        Readiness {
            ready: self.size > 0,
            decoders: self.size,
            idle: self.idle(),
        }
    }

    fn start(&self, sink: SttSink) -> Option<Box<dyn SttStream>> {
        let worker = self.idle.lock().ok()?.pop()?;
        worker.send(Command::Begin(sink)).ok()?;
        Some(Box::new(SphinxStream {
            worker: Some(worker),
            batch: Vec::with_capacity(BATCH),
        }))
    }
}

/// Samples sent to the decoder thread at once (96 ms).
const BATCH: usize = 1536;

struct SphinxStream {
    worker: Option<SyncSender<Command>>,
    batch: Vec<i16>,
}

impl SphinxStream {
    fn send(&mut self, command: Command) {
        if let Some(worker) = &self.worker {
            // A decoder that has fallen 12 s behind drops audio rather than grow a queue; the
            // drop is counted (voxio_voice_stt_dropped_total).
            match worker.try_send(command) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => crate::telemetry::stt_dropped(),
                Err(TrySendError::Disconnected(_)) => self.worker = None,
            }
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
            self.send(Command::Audio(batch));
        }
    }
}

impl SttStream for SphinxStream {
    fn push(&mut self, samples: &[i16]) {
        self.batch.extend_from_slice(samples);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    fn finish(mut self: Box<Self>) {
        self.flush();
        if let Some(worker) = self.worker.take() {
            // Blocking here would stall the caller; the worker's queue has room for the end.
            let _ = worker
                .try_send(Command::Finish)
                .or_else(|_| worker.send(Command::Finish));
        }
    }

    fn cancel(mut self: Box<Self>) {
        if let Some(worker) = self.worker.take() {
            let _ = worker.send(Command::Cancel);
        }
    }
}

impl Drop for SphinxStream {
    fn drop(&mut self) {
        // A stream dropped without finish or cancel (its pipeline went away) still frees the
        // decoder.
        if let Some(worker) = self.worker.take() {
            let _ = worker.send(Command::Cancel);
        }
    }
}

const GRAMMAR_SEARCH: &str = "commands";
const LM_SEARCH: &str = "general";

fn worker(
    model: SphinxModel,
    grammar: String,
    commands: Receiver<Command>,
    ready: mpsc::Sender<Result<(), String>>,
    idle: Arc<Mutex<Vec<SyncSender<Command>>>>,
    me: SyncSender<Command>,
) {
    use pocketsphinx::PsDecoderSearchExt as _;
    let (hmm, lm, dict) = (
        model.hmm.to_string_lossy().into_owned(),
        model.lm.to_string_lossy().into_owned(),
        model.dict.to_string_lossy().into_owned(),
    );
    let config = pocketsphinx::CmdLn::init(
        true,
        &[
            "pocketsphinx",
            "-hmm",
            &hmm,
            "-lm",
            &lm,
            "-dict",
            &dict,
            "-logfn",
            "/dev/null",
        ],
    );
    let Ok(config) = config else {
        let _ = ready.send(Err("pocketsphinx rejected its configuration".into()));
        return;
    };
    let mut decoder = pocketsphinx::PsDecoder::init(config);
    let loaded = decoder
        .set_lm_file(LM_SEARCH, model.lm.as_os_str())
        .and_then(|()| decoder.set_jsgf_string(GRAMMAR_SEARCH, &grammar));
    if loaded.is_err() {
        let _ = ready.send(Err("pocketsphinx could not load the command grammar".into()));
        return;
    }
    idle.lock().map(|mut v| v.push(me.clone())).ok();
    let _ = ready.send(Ok(()));
    drop(ready);

    let mut utterance: Vec<i16> = Vec::new();
    let mut sink: Option<SttSink> = None;
    let mut last_partial = Instant::now();
    for command in commands.iter() {
        match command {
            Command::Begin(new_sink) => {
                utterance.clear();
                let started = decoder
                    .set_search(GRAMMAR_SEARCH)
                    .and_then(|()| decoder.start_utt(None));
                if started.is_err() {
                    new_sink(SttEvent::Failed("decoder could not start".into()));
                    give_back(&idle, &me);
                    continue;
                }
                sink = Some(new_sink);
                last_partial = Instant::now();
            }
            Command::Audio(samples) => {
                let Some(sink) = &sink else { continue };
                let _ = decoder.process_raw(&samples, false, false);
                utterance.extend_from_slice(&samples);
                if last_partial.elapsed() >= Duration::from_millis(400) {
                    last_partial = Instant::now();
                    let hyp = decoder.get_hyp().map(|h| h.0).unwrap_or_default();
                    if !hyp.is_empty() {
                        sink(SttEvent::Partial(hyp));
                    }
                }
            }
            Command::Finish => {
                let Some(done) = sink.take() else { continue };
                let _ = decoder.end_utt();
                let mut text = decoder.get_hyp().map(|h| h.0).unwrap_or_default();
                if text.trim().is_empty() && !utterance.is_empty() {
                    // Not a command: decode the utterance again as free speech.
                    let general = decoder
                        .set_search(LM_SEARCH)
                        .and_then(|()| decoder.start_utt(None))
                        .and_then(|()| decoder.process_raw(&utterance, false, true).map(|_| ()))
                        .and_then(|()| decoder.end_utt());
                    if general.is_ok() {
                        text = decoder.get_hyp().map(|h| h.0).unwrap_or_default();
                    }
                }
                done(SttEvent::Final(text.trim().to_owned()));
                utterance.clear();
                utterance.shrink_to(16_000 * 20);
                give_back(&idle, &me);
            }
            Command::Cancel => {
                if sink.take().is_some() {
                    let _ = decoder.end_utt();
                    utterance.clear();
                    give_back(&idle, &me);
                }
            }
        }
    }
}

fn give_back(idle: &Mutex<Vec<SyncSender<Command>>>, me: &SyncSender<Command>) {
    if let Ok(mut idle) = idle.lock() {
        idle.push(me.clone());
    }
}
