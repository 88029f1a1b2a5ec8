//! Listening: voice activity, the turn state machine and the end-of-turn policy as one pure
//! core. It has no actor, no clock and calls no model but the VAD it is given: the end-of-turn
//! model's verdicts and the words heard at a pause come in as inputs, so the whole policy is
//! unit-tested frame by frame.
//!
//! The policy: after a pause the end-of-turn model is asked whether the user has finished
//! (one check in flight at a time; asked again after a further pause of the same silence
//! only if it said "not finished"). The turn ends at once when the model says finished and,
//! where speech-to-text says what it heard at the pause, its words do not trail off. Both are
//! needed: on synthetic voices the model hears "add milk and" as finished. Waiting for the
//! words costs no latency: the answer needs them anyway, and they are the final transcript.
//! Otherwise the hangover ends the turn.

use std::collections::VecDeque;

use super::audio::Frame;
use super::smart_turn::{self, Verdict};
use super::turn::{Step, TurnConfig, Turns, Vad};

/// What one frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// The turn machine's step.
    pub step: Step,
    /// The frame is voiced.
    pub voiced: bool,
    /// Ask the end-of-turn model about the pause in progress now ([`Listener::window`] is
    /// the audio to ask about); say [`Listener::not_asked`] if it could not be asked.
    pub ask: bool,
}

/// What is known of the pause in progress.
#[derive(Debug, Default, Clone, Copy)]
struct Ending {
    /// The pause the model last said the user finished at.
    finished: Option<u64>,
    /// The pause a decode last heard words at, and whether they trail off.
    heard: Option<(u64, bool)>,
    /// A check is in flight.
    checking: bool,
}

/// The listening core of one pipeline.
pub struct Listener {
    vad: Box<dyn Vad>,
    threshold: f32,
    turns: Turns,
    /// An end-of-turn model will be asked.
    detector: bool,
    /// Speech-to-text says what it heard at pauses: wait for its words.
    wait_for_words: bool,
    /// The turn's last [`smart_turn::WINDOW`] samples (kept only with a model).
    audio: VecDeque<i16>,
    /// The audio of a turn just started (its pre-roll and confirming frames).
    preroll: Vec<Frame>,
    ending: Ending,
}

impl Listener {
    /// A listener scoring with `vad`; `detector` when an end-of-turn model is asked,
    /// `wait_for_words` when speech-to-text says what it heard at pauses.
    pub fn new(
        vad: Box<dyn Vad>,
        config: TurnConfig,
        detector: bool,
        wait_for_words: bool,
    ) -> Listener {
        Listener {
            vad,
            threshold: config.threshold,
            turns: Turns::new(config),
            detector,
            wait_for_words,
            audio: VecDeque::new(),
            preroll: Vec::new(),
            ending: Ending::default(),
        }
    }

    /// Hears one frame.
    pub fn frame(&mut self, frame: &Frame) -> Heard {
        let score = self.vad.score(frame);
        let step = self.turns.push(frame, score);
        let mut ask = false;
        match step {
            Step::Idle | Step::Stopped => {}
            Step::Started => {
                self.ending = Ending::default();
                self.audio.clear();
                self.preroll.clear();
                self.preroll.extend(self.turns.take_preroll());
                for i in 0..self.preroll.len() {
                    let f = self.preroll[i];
                    self.keep(&f);
                }
            }
            Step::Speech | Step::Resume => self.keep(frame),
            Step::Pause => {
                self.keep(frame);
                ask = self.detector && !self.ending.checking && self.turns.checks_at_pause();
            }
            Step::Check => {
                self.keep(frame);
                let finished = self.ending.finished == Some(self.turns.pause_number());
                ask = self.detector && !self.ending.checking && !finished;
            }
        }
        self.ending.checking |= ask;
        Heard {
            step,
            voiced: score >= self.threshold,
            ask,
        }
    }

    fn keep(&mut self, frame: &Frame) {
        if !self.detector {
            return;
        }
        let over = (self.audio.len() + frame.len()).saturating_sub(smart_turn::WINDOW);
        self.audio.drain(..over.min(self.audio.len()));
        self.audio.extend(frame);
    }

    /// The audio of the turn just started ([`Step::Started`]).
    pub fn preroll(&self) -> &[Frame] {
        &self.preroll
    }

    /// The number of the pause in progress, or of the last one.
    pub fn pause_number(&self) -> u64 {
        self.turns.pause_number()
    }

    /// The audio to ask the end-of-turn model about: the turn's last 8 s.
    pub fn window(&self) -> Vec<i16> {
        self.audio.iter().copied().collect()
    }

    /// No verdict will come for the check [`Heard::ask`] asked for: it could not be made, or
    /// it failed.
    pub fn not_asked(&mut self) {
        self.ending.checking = false;
    }

    /// The model's verdict on pause number `pause` of this turn. Whether it ended the turn.
    pub fn verdict(&mut self, pause: u64, verdict: Verdict) -> bool {
        self.ending.checking = false;
        // The latest check of the pause in progress counts.
        if pause != self.turns.pause_number() {
            return false;
        }
        self.ending.finished = verdict.complete().then_some(pause);
        self.end_if_agreed()
    }

    /// The words the decode started at pause number `pause` of this turn heard. Whether they
    /// ended the turn.
    pub fn words(&mut self, pause: u64, text: &str) -> bool {
        self.ending.heard = Some((pause, smart_turn::trails_off(text)));
        self.end_if_agreed()
    }

    fn end_if_agreed(&mut self) -> bool {
        let Some(finished) = self.ending.finished else {
            return false;
        };
        let agreed = match self.ending.heard {
            _ if !self.wait_for_words => true,
            Some((heard, trails_off)) => heard == finished && !trails_off,
            None => false,
        };
        agreed && self.turns.end_if_paused(finished)
    }

    /// Whether a turn is in progress.
    pub fn in_turn(&self) -> bool {
        self.turns.in_turn()
    }

    /// The stream stopped: ends any turn at once. Whether one was in progress.
    pub fn stop(&mut self) -> bool {
        let was = self.turns.in_turn();
        self.turns.reset();
        was
    }

    /// A new stream: the VAD forgets what it heard.
    pub fn restart(&mut self) {
        self.vad.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::audio::FRAME;

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A VAD that says what it is told (the score's bits).
    struct Scripted(Arc<AtomicU32>);

    impl Vad for Scripted {
        fn score(&mut self, _: &Frame) -> f32 {
            f32::from_bits(self.0.load(Ordering::Relaxed))
        }
        fn reset(&mut self) {}
    }

    struct Rig {
        listener: Listener,
        score: Arc<AtomicU32>,
    }

    impl Rig {
        /// Speech-to-text starting at the pause itself (200 ms), where the model is asked.
        fn new(detector: bool, wait_for_words: bool) -> Rig {
            let config = TurnConfig {
                speculate: TurnConfig::default().pause,
                ..TurnConfig::default()
            };
            Rig::with(config, detector, wait_for_words)
        }

        fn with(config: TurnConfig, detector: bool, wait_for_words: bool) -> Rig {
            let score = Arc::new(AtomicU32::new(0));
            let vad = Box::new(Scripted(score.clone()));
            Rig {
                listener: Listener::new(vad, config, detector, wait_for_words),
                score,
            }
        }

        /// `n` frames at `score`: what they did.
        fn frames(&mut self, n: usize, score: f32) -> Vec<Heard> {
            self.score.store(score.to_bits(), Ordering::Relaxed);
            (0..n).map(|_| self.listener.frame(&[0; FRAME])).collect()
        }

        fn steps(&mut self, n: usize, score: f32) -> Vec<Step> {
            self.frames(n, score).iter().map(|h| h.step).collect()
        }
    }

    const FINISHED: Verdict = Verdict { probability: 0.9 };
    const GOING_ON: Verdict = Verdict { probability: 0.1 };

    #[test]
    fn the_model_and_the_words_agreeing_end_the_turn_at_once() {
        let mut r = Rig::new(true, true);
        assert_eq!(r.steps(12, 0.9)[11], Step::Started);
        assert_eq!(r.listener.preroll().len(), 12);
        assert_eq!(r.listener.window().len(), 12 * FRAME);
        r.frames(20, 0.9);
        let pause = r.frames(12, 0.1);
        assert!(pause[11].ask && pause[11].step == Step::Pause);
        let n = r.listener.pause_number();
        assert!(!r.listener.verdict(n, FINISHED), "the words are not in");
        assert!(r.listener.words(n, "Add eggs to my list."));
        assert!(!r.listener.in_turn());
    }

    #[test]
    fn speculating_before_the_pause_asks_the_model_only_at_the_pause() {
        // The default: speculating at 120 ms.
        let mut r = Rig::with(TurnConfig::default(), true, true);
        r.frames(30, 0.9);
        // Speech-to-text starts at 120 ms of silence (7 frames); the model is asked at 200 ms
        // (12 frames), about the same pause.
        let pause = r.frames(12, 0.1);
        assert!(!pause[6].ask && pause[6].step == Step::Pause);
        assert!(pause[11].ask && pause[11].step == Step::Check);
        assert_eq!(pause.iter().filter(|h| h.ask).count(), 1);
        let n = r.listener.pause_number();
        assert!(
            !r.listener.words(n, "Add eggs to my list."),
            "no verdict yet"
        );
        assert!(r.listener.verdict(n, FINISHED));
        assert!(!r.listener.in_turn());
    }

    #[test]
    fn words_that_trail_off_or_a_model_that_says_going_on_wait_for_the_hangover() {
        let mut r = Rig::new(true, true);
        r.frames(30, 0.9);
        r.frames(12, 0.1);
        let n = r.listener.pause_number();
        assert!(!r.listener.words(n, "Add milk and"));
        assert!(!r.listener.verdict(n, FINISHED), "the words trail off");
        // The hangover (the library's default, 600 ms: 37 frames) still ends it.
        let steps = r.steps(25, 0.1);
        assert_eq!(steps.iter().filter(|s| **s == Step::Stopped).count(), 1);

        let mut r = Rig::new(true, true);
        r.frames(30, 0.9);
        r.frames(12, 0.1);
        let n = r.listener.pause_number();
        assert!(!r.listener.verdict(n, GOING_ON));
        assert!(
            !r.listener.words(n, "Add eggs to my list."),
            "the model said going on"
        );
        assert!(r.listener.in_turn());
    }

    #[test]
    fn speaking_again_makes_the_pause_stale() {
        let mut r = Rig::new(true, true);
        r.frames(30, 0.9);
        r.frames(12, 0.1);
        let first = r.listener.pause_number();
        assert_eq!(r.steps(1, 0.9), [Step::Resume]);
        assert!(!r.listener.verdict(first, FINISHED));
        assert!(!r.listener.words(first, "Add milk"));
        assert!(r.listener.in_turn());
        // The next pause is asked about (the stale check is no longer in flight).
        let pause = r.frames(12, 0.1);
        assert!(pause[11].ask);
        let second = r.listener.pause_number();
        assert!(!r.listener.verdict(second, FINISHED));
        assert!(r.listener.words(second, "Add milk and eggs to my list."));
    }

    #[test]
    fn one_check_in_flight_and_rechecks_only_after_going_on() {
        let mut r = Rig::new(true, true);
        r.frames(30, 0.9);
        let asks = |h: &[Heard]| h.iter().filter(|h| h.ask).count();
        // No verdict yet: the recheck at 400 ms is not asked.
        assert_eq!(asks(&r.frames(24, 0.1)), 1);
        let n = r.listener.pause_number();
        r.listener.verdict(n, GOING_ON);
        // Going on: asked again at the next recheck (600 ms).
        assert_eq!(asks(&r.frames(12, 0.1)), 1);
        assert!(r.listener.in_turn());

        let mut r = Rig::new(true, true);
        r.frames(30, 0.9);
        assert_eq!(asks(&r.frames(12, 0.1)), 1);
        let n = r.listener.pause_number();
        r.listener.verdict(n, FINISHED);
        // Finished, waiting for the words: no more checks.
        assert_eq!(asks(&r.frames(12, 0.1)), 0);
        // A check that could not be made does not block the next one.
        let mut r = Rig::new(true, true);
        r.frames(30, 0.9);
        assert_eq!(asks(&r.frames(12, 0.1)), 1);
        r.listener.not_asked();
        assert_eq!(asks(&r.frames(12, 0.1)), 1);
    }

    #[test]
    fn without_a_model_the_hangover_ends_every_turn_and_nothing_is_kept() {
        let mut r = Rig::new(false, true);
        r.frames(30, 0.9);
        assert!(r.listener.window().is_empty());
        let heard = r.frames(37, 0.1);
        assert!(heard.iter().all(|h| !h.ask));
        assert_eq!(heard[36].step, Step::Stopped);
    }

    #[test]
    fn without_words_at_pauses_the_model_decides_alone() {
        let mut r = Rig::new(true, false);
        r.frames(30, 0.9);
        r.frames(12, 0.1);
        let n = r.listener.pause_number();
        assert!(r.listener.verdict(n, FINISHED));
    }

    #[test]
    fn the_window_holds_the_last_eight_seconds() {
        let mut r = Rig::new(true, true);
        r.frames(12 + 600, 0.9);
        assert_eq!(r.listener.window().len(), smart_turn::WINDOW);
    }
}
