//! Smart Turn v3.2 (the `pipecat-ai` wheel's `smart-turn-v3.2-cpu.onnx`, BSD-2-Clause): has
//! the user finished speaking, or only paused?
//!
//! Given the last 8 s of the turn (zero-padded in front when shorter), normalized to zero mean
//! and unit variance, as Whisper log-mel features (80 × 800), the model gives the probability
//! that the turn is complete. A check costs ~50 ms of one core, so checks run on one thread of
//! their own fed by a bounded queue: a full queue means no verdict, and the pipeline falls back
//! on the hangover; it never waits.

use std::path::Path;
use std::sync::mpsc::{self, SyncSender, TrySendError};

use ort::session::Session;
use ort::value::TensorRef;

use super::onnx;
use super::whisper::{LogMel, HOP, N_MELS, SAMPLE_RATE};

/// Where the setup puts the model, under the models directory.
pub const MODEL: &str = "smart-turn/smart-turn-v3.2-cpu.onnx";
/// The audio the model looks at: the last 8 s.
pub const WINDOW: usize = 8 * SAMPLE_RATE;
/// The probability at or above which the turn is complete.
pub const COMPLETE: f32 = 0.5;

/// The model's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The probability that the user has finished.
    pub probability: f32,
}

impl Verdict {
    /// Whether the user has finished.
    pub fn complete(&self) -> bool {
        self.probability >= COMPLETE
    }
}

/// Where a verdict goes.
pub type Reply = Box<dyn FnOnce(Result<Verdict, String>) + Send>;

/// Decides whether a paused turn is over.
pub trait TurnDetector: Send + Sync {
    /// Asks about the turn whose audio (16 kHz; only the last [`WINDOW`] samples count) is
    /// `audio`. The verdict goes to `reply`, later, on another thread. `false` when it was not
    /// taken (too many checks waiting): no reply will come.
    fn ask(&self, audio: Vec<i16>, reply: Reply) -> bool;
}

struct Check {
    audio: Vec<i16>,
    reply: Reply,
}

/// Smart Turn on a thread of its own.
pub struct SmartTurn {
    checks: SyncSender<Check>,
}

/// The model and its reusable buffers.
struct Model {
    session: Session,
    mel: LogMel,
    window: Vec<f32>,
}

impl Model {
    fn load(models: &Path) -> Result<Model, String> {
        Ok(Model {
            session: onnx::session(models, &models.join(MODEL), 1)?,
            mel: LogMel::new(),
            window: vec![0.0; WINDOW],
        })
    }

    /// The features of the last [`WINDOW`] samples of `audio`, as the model was trained on.
    fn features(&mut self, audio: &[i16]) -> Vec<f32> {
        let audio = &audio[audio.len().saturating_sub(WINDOW)..];
        let pad = WINDOW - audio.len();
        self.window[..pad].fill(0.0);
        for (slot, s) in self.window[pad..].iter_mut().zip(audio) {
            *slot = f32::from(*s) / 32768.0;
        }
        normalize(&mut self.window);
        self.mel.features_in(&self.window, WINDOW)
    }

    fn check(&mut self, audio: &[i16]) -> Result<Verdict, String> {
        let features = self.features(audio);
        let err = |e: ort::Error| format!("smart turn: {e}");
        let input = TensorRef::from_array_view(([1usize, N_MELS, WINDOW / HOP], &features[..]))
            .map_err(err)?;
        let outputs = self.session.run(ort::inputs![input]).map_err(err)?;
        let (_, p) = outputs
            .get("logits")
            .ok_or("smart turn: no logits output")?
            .try_extract_tensor::<f32>()
            .map_err(err)?;
        let probability = p.first().copied().ok_or("smart turn: an empty output")?;
        Ok(Verdict { probability })
    }
}

/// Zero mean and unit variance, in place (as the reference feature extractor does).
fn normalize(x: &mut [f32]) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let scale = 1.0 / (var + 1e-7).sqrt();
    for v in x {
        *v = ((f64::from(*v) - mean) * scale) as f32;
    }
}

impl SmartTurn {
    /// Loads the model (and checks it runs), then starts its thread; at most `queue` checks
    /// wait for it.
    pub fn start(models: &Path, queue: usize) -> Result<SmartTurn, String> {
        let mut model = Model::load(models)?;
        model.check(&[0; SAMPLE_RATE])?;
        let (checks, inbox) = mpsc::sync_channel::<Check>(queue.max(1));
        std::thread::Builder::new()
            .name("voxio-turn".into())
            .spawn(move || {
                for Check { audio, reply } in inbox {
                    reply(model.check(&audio));
                }
            })
            .map_err(|e| format!("smart turn thread: {e}"))?;
        Ok(SmartTurn { checks })
    }
}

impl TurnDetector for SmartTurn {
    fn ask(&self, audio: Vec<i16>, reply: Reply) -> bool {
        match self.checks.try_send(Check { audio, reply }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Words after which a sentence is not over ("add milk and", "put it on the").
const TRAILING: &[&str] = &[
    "a", "an", "and", "are", "at", "because", "but", "for", "from", "i", "if", "in", "is", "my",
    "of", "on", "or", "so", "than", "that", "the", "then", "to", "um", "uh", "was", "with", "your",
];

/// Whether a transcript trails off: it ends with a comma, an ellipsis or a dash, or with a
/// word after which a sentence is not over.
pub fn trails_off(text: &str) -> bool {
    let text = text.trim_end();
    if text.ends_with([',', '-', '\u{2026}']) || text.ends_with("..") {
        return true;
    }
    let last = text
        .rsplit(|c: char| c.is_whitespace())
        .next()
        .unwrap_or("")
        .trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
        .to_lowercase();
    TRAILING.contains(&last.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::testing;

    #[test]
    fn sentences_that_trail_off() {
        for t in [
            "Add milk and",
            "Add milk and...",
            "add milk and…",
            "Put it on the",
            "I would like to,",
            "So, um",
            "Call the plumber about -",
        ] {
            assert!(trails_off(t), "{t:?}");
        }
        for t in [
            "Add milk and eggs to my list.",
            "What's on my list?",
            "Clear the list",
            "Thank you!",
            "",
        ] {
            assert!(!trails_off(t), "{t:?}");
        }
    }

    /// The features and the verdict are those of the reference implementation (pipecat's
    /// numpy feature extractor and onnxruntime in Python, run on the same clip: the values
    /// below are what it printed).
    #[test]
    fn features_and_verdict_match_the_reference() {
        let mut model = Model::load(&testing::models()).expect(testing::MODELS);
        let mut audio = testing::flite("add milk to my list");
        assert_eq!(audio.len(), 22_960, "the clip the reference saw");
        audio.extend([0; 4800]);
        let f = model.features(&audio);
        let frames = WINDOW / HOP;
        assert_eq!(f.len(), N_MELS * frames);
        let close = |got: f32, want: f32| (got - want).abs() < 2e-3;
        for (band, frame, want) in [
            (0, 790, 0.2677469),
            (40, 700, 0.18341246),
            (40, 701, 0.32601672),
            (40, 702, 0.10340982),
        ] {
            let got = f[band * frames + frame];
            assert!(
                close(got, want),
                "band {band} frame {frame}: {got}, want {want}"
            );
        }
        let verdict = model.check(&audio).unwrap();
        assert!(close(verdict.probability, 0.985_989), "{verdict:?}");
        assert!(verdict.complete());
    }

    #[test]
    fn normalizing_gives_zero_mean_and_unit_variance() {
        let mut x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 + 3.0)
            .collect();
        normalize(&mut x);
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
        assert!(mean.abs() < 1e-4, "{mean}");
        assert!((var - 1.0).abs() < 1e-3, "{var}");
        // Silence stays silence (no division by zero).
        let mut zeros = vec![0.0; 16];
        normalize(&mut zeros);
        assert!(zeros.iter().all(|v| *v == 0.0));
    }
}
