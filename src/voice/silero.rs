//! Silero VAD (the `silero-vad` wheel's `silero_vad.onnx`, MIT) behind the [`Vad`] trait.
//!
//! The model scores 32 ms windows (512 samples at 16 kHz) with the 64 samples before them as
//! context and a recurrent state carried from window to window. voxio's frames are 16 ms, so a
//! window is scored every second frame and its probability stands for both (the score of a
//! frame is known 16 ms late at most; turn-taking counts in frames and does not notice).
//!
//! One model is shared by every pipeline (a run is ~0.2 ms, under a lock no one holds across
//! anything else); each pipeline keeps its own context and state, and its buffers are fixed
//! arrays: scoring a frame allocates nothing on voxio's side.
//!
//! Digital silence is not scored. A window none of whose samples reaches [`QUIET_PEAK`]
//! (-62 dBFS) after [`QUIET_RUNS`] such windows already scored is given 0 without a run, and
//! the recurrent state goes back to a fresh stream's (the speech after it is scored as at a
//! start). Measured on flite speech scaled down, a fresh Silero hears speech at a peak of 64
//! and none at 32, so the model would say "no voice" there anyway; and a microphone behind its
//! browser's noise suppression (or a muted one) sends long stretches of it, which now cost
//! only their copy.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::value::TensorRef;

use super::audio::{Frame, FRAME};
use super::onnx;
use super::turn::Vad;

/// Where the setup puts the model, under the models directory.
pub const MODEL: &str = "silero-vad/silero_vad.onnx";

/// New samples per window.
const WINDOW: usize = 512;
/// Samples of context before each window.
const CONTEXT: usize = 64;
/// The recurrent state: 2 × 1 × 128.
const STATE: usize = 2 * 128;
const SAMPLE_RATE: [i64; 1] = [16_000];
/// A window whose samples all stay under this magnitude is quiet (-62 dBFS at its peak).
pub const QUIET_PEAK: u16 = 26;
/// Quiet windows in a row that are still scored (~100 ms: the model settles on "no voice",
/// and a short quiet stretch inside speech is scored as the model would); the ones after
/// them are not.
pub const QUIET_RUNS: u32 = 3;

/// The loaded model, shared.
pub struct SileroModel {
    session: Mutex<Session>,
}

impl SileroModel {
    /// Loads `models/silero-vad/silero_vad.onnx` on ONNX Runtime from the same directory.
    pub fn load(models: &Path) -> Result<Arc<SileroModel>, String> {
        let session = onnx::session(models, &models.join(MODEL), 1)?;
        let model = SileroModel {
            session: Mutex::new(session),
        };
        // One run, so a model that loads but cannot run is found now, not on a user's turn.
        model.run(&[0.0; CONTEXT + WINDOW], &mut [0.0; STATE])?;
        Ok(Arc::new(model))
    }

    /// The speech probability of `input`'s last [`WINDOW`] samples; updates `state`.
    fn run(
        &self,
        input: &[f32; CONTEXT + WINDOW],
        state: &mut [f32; STATE],
    ) -> Result<f32, String> {
        let err = |e: ort::Error| format!("silero: {e}");
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        // In the model's order: input, state, sr.
        let outputs = session
            .run(ort::inputs![
                TensorRef::from_array_view(([1usize, CONTEXT + WINDOW], &input[..]))
                    .map_err(err)?,
                TensorRef::from_array_view(([2usize, 1, 128], &state[..])).map_err(err)?,
                TensorRef::from_array_view(((), &SAMPLE_RATE[..])).map_err(err)?,
            ])
            .map_err(err)?;
        let (_, next) = outputs
            .get("stateN")
            .ok_or("silero: no stateN output")?
            .try_extract_tensor::<f32>()
            .map_err(err)?;
        if next.len() != STATE {
            return Err(format!("silero: a state of {} values", next.len()));
        }
        state.copy_from_slice(next);
        let (_, p) = outputs
            .get("output")
            .ok_or("silero: no output")?
            .try_extract_tensor::<f32>()
            .map_err(err)?;
        p.first()
            .copied()
            .ok_or_else(|| "silero: an empty output".into())
    }
}

/// One stream's detector.
pub struct SileroVad {
    model: Arc<SileroModel>,
    /// The context, then the window being filled.
    input: [f32; CONTEXT + WINDOW],
    filled: usize,
    state: [f32; STATE],
    score: f32,
    /// Whether a sample of the window being filled reached [`QUIET_PEAK`].
    loud: bool,
    /// Quiet windows in a row up to the last one.
    quiet: u32,
    /// Windows given 0 without a run, since the detector was made.
    skipped: u64,
    /// A run failed: logged once, and the detector says "no voice" from then on.
    failed: bool,
}

impl SileroVad {
    /// A fresh detector on `model`.
    pub fn new(model: Arc<SileroModel>) -> SileroVad {
        SileroVad {
            model,
            input: [0.0; CONTEXT + WINDOW],
            filled: 0,
            state: [0.0; STATE],
            score: 0.0,
            loud: false,
            quiet: 0,
            skipped: 0,
            failed: false,
        }
    }

    /// Windows given 0 without running the model, since the detector was made.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

impl Vad for SileroVad {
    fn score(&mut self, frame: &Frame) -> f32 {
        const _: () = assert!(WINDOW % FRAME == 0);
        let at = CONTEXT + self.filled;
        let mut peak = 0;
        for (slot, s) in self.input[at..at + FRAME].iter_mut().zip(frame) {
            *slot = f32::from(*s) / 32768.0;
            peak = peak.max(s.unsigned_abs());
        }
        self.loud |= peak >= QUIET_PEAK;
        self.filled += FRAME;
        if self.filled < WINDOW {
            return self.score;
        }
        self.filled = 0;
        self.quiet = if std::mem::take(&mut self.loud) {
            0
        } else {
            self.quiet.saturating_add(1)
        };
        if self.quiet > QUIET_RUNS {
            if self.quiet == QUIET_RUNS + 1 {
                // The state a stream starts with: what follows is scored as after a fresh
                // start. Once: the windows skipped after it leave it as it is.
                self.state = [0.0; STATE];
            }
            self.skipped += 1;
            self.score = 0.0;
        } else if !self.failed {
            match self.model.run(&self.input, &mut self.state) {
                Ok(p) => self.score = p,
                Err(e) => {
                    tracing::error!("{e}; this stream's voice activity is no longer detected");
                    self.failed = true;
                    self.score = 0.0;
                }
            }
        }
        self.input.copy_within(WINDOW.., 0);
        self.score
    }

    fn reset(&mut self) {
        self.input = [0.0; CONTEXT + WINDOW];
        self.filled = 0;
        self.state = [0.0; STATE];
        self.score = 0.0;
        self.loud = false;
        self.quiet = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::testing;

    fn scores(vad: &mut SileroVad, audio: &[i16]) -> Vec<f32> {
        audio
            .chunks_exact(FRAME)
            .map(|c| vad.score(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn speech_scores_high_and_silence_and_noise_low() {
        let model = SileroModel::load(&testing::models()).expect(testing::MODELS);
        let mut vad = SileroVad::new(model);
        let speech = testing::flite("please turn the music down a little");
        let s = scores(&mut vad, &speech);
        let voiced = s.iter().filter(|p| **p >= 0.5).count();
        assert!(
            voiced * 2 >= s.len(),
            "{voiced} of {} frames voiced",
            s.len()
        );
        vad.reset();
        let silence = scores(&mut vad, &[0; 16_000]);
        assert!(silence.iter().all(|p| *p < 0.1), "{silence:?}");
        // White noise of ±3000 (a deterministic generator).
        let mut x: u32 = 1;
        let noise: Vec<i16> = (0..32_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 6001) as i16 - 3000
            })
            .collect();
        vad.reset();
        let n = scores(&mut vad, &noise);
        let voiced = n.iter().filter(|p| **p >= 0.5).count();
        assert!(
            voiced * 10 < n.len(),
            "{voiced} of {} noise frames voiced",
            n.len()
        );
    }

    #[test]
    fn digital_silence_is_not_scored_and_leaves_a_fresh_detector() {
        let model = SileroModel::load(&testing::models()).expect(testing::MODELS);
        // Two seconds of a hiss under the quiet peak: scored low, and not run after the
        // first QUIET_RUNS windows.
        let mut vad = SileroVad::new(model.clone());
        let hiss: Vec<i16> = (0..32_768).map(|i| [-25, 3, 25, -7][i % 4]).collect();
        let s = scores(&mut vad, &hiss);
        assert!(s.iter().all(|p| *p < 0.1), "{s:?}");
        let windows = (hiss.len() / WINDOW) as u64;
        assert_eq!(vad.skipped(), windows - u64::from(QUIET_RUNS));
        // Then digital silence, and speech: scored exactly as by a detector that never heard
        // anything before it.
        scores(&mut vad, &[0; WINDOW]);
        let speech = testing::flite("please turn the music down a little");
        let after = scores(&mut vad, &speech);
        let fresh = scores(&mut SileroVad::new(model.clone()), &speech);
        assert_eq!(after, fresh);
        let voiced = after.iter().filter(|p| **p >= 0.5).count();
        assert!(
            voiced * 2 >= after.len(),
            "{voiced} of {} voiced",
            after.len()
        );
        // A quiet stretch of QUIET_RUNS windows inside a sound is scored; one window more is
        // the first not run.
        let tone: Vec<i16> = (0..WINDOW * 8).map(|i| [0, 900, 0, -900][i % 4]).collect();
        for (gap, skipped) in [(QUIET_RUNS, 0), (QUIET_RUNS + 1, 1)] {
            let mut vad = SileroVad::new(model.clone());
            let mut audio = tone.clone();
            audio.extend(std::iter::repeat_n(3, WINDOW * gap as usize));
            audio.extend(&tone);
            scores(&mut vad, &audio);
            assert_eq!(vad.skipped(), skipped, "a gap of {gap} windows");
        }
    }
}
