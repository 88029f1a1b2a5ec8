//! Voice activity and end of turn, as a state machine over VAD frames (no clock of its own:
//! time is counted in 16 ms frames, so every rule is a unit test).
//!
//! - Speech is confirmed after `confirm` of voiced frames in a row; the `preroll` before the
//!   first of them is kept so the start of the first word reaches speech-to-text.
//! - After `speculate` of unvoiced frames inside a turn the machine says so ([`Step::Pause`]):
//!   the turn may be over, and speech-to-text can start on what was said so far. After `pause`
//!   of the same silence (at least `speculate`), and after each further `pause` of it, the
//!   end-of-turn model, when there is one, is asked whether the user has finished
//!   ([`Step::Check`]; the [`Step::Pause`] itself when the two are equal). A "finished"
//!   verdict ends the turn at once ([`Turns::end_if_paused`]), if the user has not spoken
//!   since. A voiced frame says the user went on ([`Step::Resume`]).
//! - The turn ends after `hangover` of unvoiced frames, or when it reaches `max_turn`.

use std::collections::VecDeque;
use std::time::Duration;

use super::audio::{Frame, FRAME, RATE};

/// Scores frames: 0 no voice, 1 voice.
pub trait Vad: Send {
    /// The voice probability of one 16 ms frame.
    fn score(&mut self, frame: &Frame) -> f32;
    /// Forgets everything (a new stream).
    fn reset(&mut self);
}

/// earshot's neural VAD.
pub struct Earshot(Box<earshot::Detector>);

impl Earshot {
    /// A fresh detector.
    pub fn new() -> Earshot {
        Earshot(earshot::Detector::default_boxed())
    }
}

impl Default for Earshot {
    fn default() -> Self {
        Earshot::new()
    }
}

impl Vad for Earshot {
    fn score(&mut self, frame: &Frame) -> f32 {
        self.0.predict_i16(frame)
    }

    fn reset(&mut self) {
        self.0.reset();
    }
}

/// Turn-taking settings, each with its documented default.
#[derive(Debug, Clone, Copy)]
pub struct TurnConfig {
    /// Voice score at or above which a frame counts as voiced. Default 0.5.
    pub threshold: f32,
    /// Voiced time in a row that confirms speech. Default 200 ms.
    pub confirm: Duration,
    /// Audio kept from before the confirmation. Default 300 ms.
    pub preroll: Duration,
    /// Silence after which speech-to-text starts speculatively on the turn so far (its words
    /// are ready sooner when the turn is over; thrown away if the user goes on). Default
    /// 120 ms (against 200, commands' first audio 35-50 ms sooner, the same understood); at
    /// most `pause`.
    pub speculate: Duration,
    /// Silence after which the end-of-turn model is asked whether the user has finished, and
    /// again after each further `pause` of it. Default 200 ms; at most the hangover.
    pub pause: Duration,
    /// Silence that ends a turn. Default 600 ms ([`HANGOVER_WITHOUT_MODEL`]); at most 3 s.
    pub hangover: Duration,
    /// Longest turn. Default 15 s.
    pub max_turn: Duration,
}

/// The hangover when there is no end-of-turn model: every turn ends after it.
pub const HANGOVER_WITHOUT_MODEL: Duration = Duration::from_millis(600);
/// The hangover with an end-of-turn model: the most a turn waits when the model or the words
/// say the user has not finished (a turn they agree is over ends at once).
pub const HANGOVER_WITH_MODEL: Duration = Duration::from_millis(1000);

/// The longest hangover allowed.
pub const MAX_HANGOVER: Duration = Duration::from_secs(3);

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            threshold: 0.5,
            confirm: Duration::from_millis(200),
            preroll: Duration::from_millis(300),
            speculate: Duration::from_millis(120),
            pause: Duration::from_millis(200),
            hangover: HANGOVER_WITHOUT_MODEL,
            max_turn: Duration::from_secs(15),
        }
    }
}

/// Frames in a duration (at least one).
pub fn frames_in(d: Duration) -> usize {
    ((d.as_micros() * u128::from(RATE)) / (1_000_000 * FRAME as u128)).max(1) as usize
}

/// What one frame changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to report; the frame is not part of a turn.
    Idle,
    /// Speech was just confirmed: [`Turns::take_preroll`] holds the turn's audio so far
    /// (this frame included).
    Started,
    /// The frame belongs to the turn in progress.
    Speech,
    /// The frame belongs to the turn, and completes `speculate` of silence in it: a new pause
    /// (numbered). With `speculate` equal to `pause`, also a [`Step::Check`].
    Pause,
    /// The frame belongs to the turn, and completes `pause`, or another `pause`, of the
    /// silence of the pause in progress.
    Check,
    /// The frame belongs to the turn, and is voiced after a [`Step::Pause`].
    Resume,
    /// The turn ended (this frame, silence, is not part of it).
    Stopped,
}

/// The turn state machine.
pub struct Turns {
    config: TurnConfig,
    confirm: usize,
    preroll: usize,
    speculate: usize,
    pause: usize,
    hangover: usize,
    max_turn: usize,
    /// Recent frames while idle (the preroll plus the voiced run being confirmed).
    recent: VecDeque<Frame>,
    voiced_run: usize,
    in_turn: Option<InTurn>,
    /// Pauses so far, numbering each one.
    pauses: u64,
}

#[derive(Debug, Clone, Copy)]
struct InTurn {
    frames: usize,
    silent_run: usize,
    paused: bool,
}

impl Turns {
    /// A state machine with these settings (the hangover capped at [`MAX_HANGOVER`]).
    pub fn new(config: TurnConfig) -> Turns {
        let confirm = frames_in(config.confirm);
        let preroll = frames_in(config.preroll);
        let hangover = frames_in(config.hangover.min(MAX_HANGOVER));
        let pause = frames_in(config.pause).min(hangover);
        Turns {
            config,
            confirm,
            preroll,
            speculate: frames_in(config.speculate).min(pause),
            pause,
            hangover,
            max_turn: frames_in(config.max_turn),
            recent: VecDeque::with_capacity(confirm + preroll),
            voiced_run: 0,
            in_turn: None,
            pauses: 0,
        }
    }

    /// The number of the pause in progress (the last [`Step::Pause`]).
    pub fn pause_number(&self) -> u64 {
        self.pauses
    }

    /// Whether a [`Step::Pause`] is also the pause's first [`Step::Check`] (`speculate` and
    /// `pause` are the same).
    pub fn checks_at_pause(&self) -> bool {
        self.speculate == self.pause
    }

    /// Ends the turn if it is still in pause number `pause` (the user has not spoken since):
    /// the end-of-turn model said the user has finished. Whether it ended.
    pub fn end_if_paused(&mut self, pause: u64) -> bool {
        let paused = self.in_turn.is_some_and(|t| t.paused) && pause == self.pauses;
        if paused {
            self.in_turn = None;
            self.voiced_run = 0;
        }
        paused
    }

    /// Whether a turn is in progress.
    pub fn in_turn(&self) -> bool {
        self.in_turn.is_some()
    }

    /// Feeds one frame and its voice score.
    pub fn push(&mut self, frame: &Frame, score: f32) -> Step {
        let voiced = score >= self.config.threshold;
        if let Some(turn) = &mut self.in_turn {
            turn.frames += 1;
            turn.silent_run = if voiced { 0 } else { turn.silent_run + 1 };
            if turn.silent_run >= self.hangover || turn.frames >= self.max_turn {
                self.in_turn = None;
                self.voiced_run = 0;
                return Step::Stopped;
            }
            if turn.silent_run == self.speculate {
                turn.paused = true;
                self.pauses += 1;
                return Step::Pause;
            }
            if turn.silent_run > self.speculate && turn.silent_run % self.pause == 0 {
                return Step::Check;
            }
            if voiced && turn.paused {
                turn.paused = false;
                return Step::Resume;
            }
            return Step::Speech;
        }
        if self.recent.len() == self.confirm + self.preroll {
            self.recent.pop_front();
        }
        self.recent.push_back(*frame);
        self.voiced_run = if voiced { self.voiced_run + 1 } else { 0 };
        if self.voiced_run >= self.confirm {
            self.in_turn = Some(InTurn {
                frames: self.recent.len(),
                silent_run: 0,
                paused: false,
            });
            return Step::Started;
        }
        Step::Idle
    }

    /// The audio of a turn just started: the preroll and the confirming frames.
    pub fn take_preroll(&mut self) -> impl Iterator<Item = Frame> + '_ {
        self.recent.drain(..)
    }

    /// Ends any turn at once (the stream stopped).
    pub fn reset(&mut self) {
        self.in_turn = None;
        self.voiced_run = 0;
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Frame = [0; FRAME];

    fn run(turns: &mut Turns, scores: &[f32]) -> Vec<Step> {
        scores.iter().map(|&s| turns.push(&F, s)).collect()
    }

    #[test]
    fn speech_confirmed_after_confirm_time_with_preroll() {
        let mut t = Turns::new(TurnConfig::default());
        // 200 ms = 12 frames of 16 ms; 300 ms preroll = 18 frames.
        assert_eq!(frames_in(Duration::from_millis(200)), 12);
        let steps = run(&mut t, &[0.0; 30]);
        assert!(steps.iter().all(|s| *s == Step::Idle));
        let steps = run(&mut t, &[0.9; 12]);
        assert_eq!(steps[..11], [Step::Idle; 11]);
        assert_eq!(steps[11], Step::Started);
        assert_eq!(t.take_preroll().count(), 30);
        assert_eq!(t.push(&F, 0.9), Step::Speech);
    }

    #[test]
    fn short_blips_make_no_turn() {
        let mut t = Turns::new(TurnConfig::default());
        let mut scores = Vec::new();
        for _ in 0..20 {
            scores.extend([0.9; 11]);
            scores.push(0.1);
        }
        assert!(run(&mut t, &scores).iter().all(|s| *s == Step::Idle));
    }

    #[test]
    fn hangover_ends_the_turn_and_pauses_do_not() {
        let mut t = Turns::new(early());
        run(&mut t, &[0.9; 12]);
        // A 400 ms pause (25 frames) is shorter than the 600 ms hangover (37 frames): it is
        // reported at 120 ms (7 frames), checked at 200 ms (12 frames) and again after a
        // further 200 ms, and the next voiced frame resumes the turn.
        let steps = run(&mut t, &[0.1; 25]);
        assert_eq!(steps[..6], [Step::Speech; 6]);
        assert_eq!(steps[6], Step::Pause);
        assert_eq!(steps[11], Step::Check);
        assert_eq!(steps[23], Step::Check);
        let others = [6, 11, 23];
        assert!((0..25)
            .filter(|i| !others.contains(i))
            .all(|i| steps[i] == Step::Speech));
        assert_eq!(
            run(&mut t, &[0.9; 5]),
            [
                Step::Resume,
                Step::Speech,
                Step::Speech,
                Step::Speech,
                Step::Speech
            ]
        );
        // A pause shorter than 120 ms is not reported.
        let steps = run(&mut t, &[0.1; 6]);
        assert!(steps.iter().all(|s| *s == Step::Speech));
        assert_eq!(t.push(&F, 0.9), Step::Speech);
        let steps = run(&mut t, &[0.1; 37]);
        assert_eq!(steps[6], Step::Pause);
        assert_eq!(steps[11], Step::Check);
        assert_eq!(steps[23], Step::Check);
        assert_eq!(steps[35], Step::Check);
        assert_eq!(
            steps[..36].iter().filter(|s| **s == Step::Speech).count(),
            32
        );
        assert_eq!(steps[36], Step::Stopped);
        assert!(!t.in_turn());
    }

    #[test]
    fn speculating_at_the_pause_itself_makes_the_pause_its_first_check() {
        let mut t = Turns::new(TurnConfig {
            speculate: Duration::from_millis(200),
            ..TurnConfig::default()
        });
        assert!(t.checks_at_pause());
        run(&mut t, &[0.9; 12]);
        let steps = run(&mut t, &[0.1; 25]);
        assert_eq!(steps[11], Step::Pause);
        assert_eq!(steps[23], Step::Check);
        assert_eq!(steps.iter().filter(|s| **s != Step::Speech).count(), 2);
        // A speculation point past the pause is the pause.
        let t = Turns::new(TurnConfig {
            speculate: Duration::from_millis(500),
            ..TurnConfig::default()
        });
        assert!(t.checks_at_pause());
        assert!(!Turns::new(early()).checks_at_pause());
        assert!(!Turns::new(TurnConfig::default()).checks_at_pause());
    }

    /// Speech-to-text started at 120 ms of silence, the model asked at 200 ms.
    fn early() -> TurnConfig {
        TurnConfig {
            speculate: Duration::from_millis(120),
            ..TurnConfig::default()
        }
    }

    #[test]
    fn hangover_is_capped_and_turns_are_bounded() {
        let mut t = Turns::new(TurnConfig {
            hangover: Duration::from_secs(60),
            max_turn: Duration::from_secs(1),
            ..TurnConfig::default()
        });
        assert_eq!(t.hangover, frames_in(MAX_HANGOVER));
        run(&mut t, &[0.9; 12]);
        let steps = run(&mut t, &[0.9; 60]);
        assert_eq!(steps.iter().filter(|s| **s == Step::Stopped).count(), 1);
    }

    #[test]
    fn a_finished_verdict_ends_only_the_pause_it_was_asked_about() {
        let mut t = Turns::new(early());
        run(&mut t, &[0.9; 12]);
        assert!(!t.end_if_paused(t.pause_number()), "not paused yet");
        let steps = run(&mut t, &[0.1; 12]);
        assert_eq!(steps[6], Step::Pause);
        let first = t.pause_number();
        // The user went on before the verdict came: it is stale.
        assert_eq!(t.push(&F, 0.9), Step::Resume);
        assert!(!t.end_if_paused(first));
        let steps = run(&mut t, &[0.1; 12]);
        assert_eq!(steps[6], Step::Pause);
        assert!(!t.end_if_paused(first), "an older pause's verdict");
        assert!(t.end_if_paused(t.pause_number()));
        assert!(!t.in_turn());
        // The next voiced frames start a new turn.
        let steps = run(&mut t, &[0.9; 12]);
        assert_eq!(steps[11], Step::Started);
    }
}
