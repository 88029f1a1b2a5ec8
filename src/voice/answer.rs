//! Answering: the assistant's side of a conversation as a pure core, the counterpart of
//! [`super::listen`]. It has no actor, no clock, no task and no process: the assistant's
//! stream, each sentence's synthesis and the pacing timer belong to whoever drives it (the
//! pipeline actor), which feeds their results in and carries out what [`Answering::poll`]
//! hands back ([`Do`]). So the whole answer side (sentences spoken one at a time and in order,
//! speech paced out ahead of real time, barge-in, a replaced answer, what the history keeps of
//! an answer cut short) is unit-tested step by step.
//!
//! In the manner of quinn-proto: getters; `handle_*` for what comes back from the work it
//! asked for (always tagged with the answer's id, so a cancelled answer's leftovers are
//! ignored); commands from the pipeline (`start`, `interrupt`, `stop`); and `poll` for what to
//! do next.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{json, Value};

use super::assistant::{AssistantEvent, Line, Role, Sentences};
use super::tts::Speech;

/// What the driver is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Do {
    /// Send this event to the client.
    Emit(&'static str, Value),
    /// Send a `tts.audio` chunk: its metadata and its PCM16 samples.
    Audio {
        /// The chunk's number in its answer, from 1.
        seq: u64,
        /// Samples per second.
        sample_rate: u32,
        /// Little-endian PCM16.
        data: Bytes,
    },
    /// Synthesize `sentence` and hand the result to [`Answering::handle_speech`].
    Synthesize {
        /// The answer it belongs to.
        id: u64,
        /// The words.
        sentence: String,
    },
    /// Call [`Answering::handle_tick`] every [`TICK_MS`] from now on.
    StartPacing,
    /// No more ticks.
    StopPacing,
    /// Drop all work of the answer that was going on: its stream, its synthesis, its ticks.
    Cancel,
    /// The answer's first text came in (for the turn's metrics).
    Replied,
    /// The answer's first audio went out (for the turn's metrics).
    FirstAudio,
    /// No answer is in progress any more.
    Finished,
    /// A line joined the history: keep it where the conversation outlives this pipeline.
    Remember(Line),
}

/// Milliseconds between two ticks of the pacing timer, and of audio in one chunk.
pub const TICK_MS: u64 = 100;

/// The answer being given.
struct Answer {
    id: u64,
    text: String,
    sentences: Sentences,
    to_speak: VecDeque<String>,
    synthesizing: bool,
    /// The assistant's stream has ended.
    text_done: bool,
    audio: VecDeque<Bytes>,
    pacing: bool,
    rate: u32,
    seq: u64,
    /// Sentences synthesized so far, with their length in ms.
    spoken: Vec<(String, u64)>,
    /// Chunks the client already has (an answer resumed elsewhere): synthesized again, not
    /// sent again.
    skip: u64,
}

/// The answering core of one pipeline.
pub struct Answering {
    answer: Option<Answer>,
    answers: u64,
    history: VecDeque<Line>,
    history_len: usize,
    played_ms: u64,
    /// Chunks sent at once when speech starts: the lead ahead of real time.
    ahead: usize,
    out: VecDeque<Do>,
}

impl Answering {
    /// A core keeping `history_len` lines of conversation, that sends `lead_ms` of speech
    /// ahead of real time as the client's jitter buffer.
    pub fn new(history_len: usize, lead_ms: u64) -> Answering {
        Answering {
            answer: None,
            answers: 0,
            history: VecDeque::with_capacity(history_len),
            history_len: history_len.max(1),
            played_ms: 0,
            ahead: (lead_ms / TICK_MS) as usize + 1,
            out: VecDeque::new(),
        }
    }

    // Getters.

    /// An answer is in progress (streaming, being synthesized or being spoken).
    pub fn answering(&self) -> bool {
        self.answer.is_some()
    }

    /// The conversation so far, oldest first.
    pub fn history(&self) -> Vec<Line> {
        self.history.iter().cloned().collect()
    }

    // Commands.

    /// Takes `lines` (oldest first) as the conversation so far, when this core has none yet
    /// (a pipeline that starts for a user who spoke before); the newest are kept.
    pub fn restore(&mut self, lines: Vec<Line>) {
        if !self.history.is_empty() {
            return;
        }
        let skip = lines.len().saturating_sub(self.history_len);
        self.history.extend(lines.into_iter().skip(skip));
    }

    /// Starts a new answer, to what the user said if `user` is given (the line goes to the
    /// history first, so the assistant sees it); an answer in progress is replaced. Returns
    /// the new answer's id: the driver asks the assistant now and tags its stream with it.
    pub fn start(&mut self, user: Option<&str>) -> u64 {
        self.stop("replaced");
        if let Some(text) = user.filter(|t| !t.is_empty()) {
            self.remember(Role::User, text.to_owned());
        }
        self.answers += 1;
        self.played_ms = 0;
        self.answer = Some(Answer {
            id: self.answers,
            text: String::new(),
            sentences: Sentences::default(),
            to_speak: VecDeque::new(),
            synthesizing: false,
            text_done: false,
            audio: VecDeque::new(),
            pacing: false,
            rate: 0,
            seq: 0,
            spoken: Vec::new(),
            skip: 0,
        });
        self.answers
    }

    /// Goes on speaking an answer that another pipeline (on a node that went away) was
    /// speaking when it stopped: `text` whole, of which the client has the first `sent`
    /// chunks and `tts.started`. The speech is synthesized again (the same words give the same
    /// chunks) and goes on from chunk `sent + 1`, then `tts.stopped`; nothing else is said
    /// again. Returns the answer's id (no assistant is asked).
    pub fn resume(&mut self, text: &str, sent: u64) -> u64 {
        let id = self.start(None);
        if let Some(answer) = &mut self.answer {
            answer.text = text.to_owned();
            answer.to_speak.extend(answer.sentences.push(text));
            answer.to_speak.extend(answer.sentences.finish());
            answer.text_done = true;
            answer.skip = sent;
            answer.seq = sent;
        }
        self.pump();
        id
    }

    /// The user spoke over the answer (barge-in): it stops at once and the client is told to
    /// clear what it has not played yet.
    pub fn interrupt(&mut self) {
        if self.answer.is_some() {
            let played = self.played_ms;
            self.stop("interrupted");
            self.out
                .push_back(Do::Emit("playback.clear", json!({ "playedMs": played })));
        }
    }

    /// Stops the answer in progress, if any, for `reason` (sent in `tts.stopped` if speech had
    /// started); the history keeps only what the client played of it.
    pub fn stop(&mut self, reason: &str) {
        let Some(answer) = self.answer.take() else {
            return;
        };
        self.out.push_back(Do::Cancel);
        if answer.pacing {
            self.out
                .push_back(Do::Emit("tts.stopped", json!({ "reason": reason })));
        }
        let heard = heard(&answer.spoken, self.played_ms);
        if !heard.is_empty() {
            self.remember(Role::Assistant, heard);
        }
    }

    // Events.

    /// How much of the answer's speech the client has played.
    pub fn handle_played(&mut self, ms: u64) {
        self.played_ms = ms;
    }

    /// What answer `id`'s stream gave: an event, or its end (`None`).
    pub fn handle_event(&mut self, id: u64, event: Option<Result<AssistantEvent, String>>) {
        let Some(answer) = self.current(id) else {
            return;
        };
        match event {
            Some(Ok(AssistantEvent::Delta(delta))) => {
                let first = answer.text.is_empty();
                answer.text.push_str(&delta);
                let sentences = answer.sentences.push(&delta);
                answer.to_speak.extend(sentences);
                if first {
                    self.out.push_back(Do::Replied);
                }
                self.out
                    .push_back(Do::Emit("assistant.text.delta", json!({ "text": delta })));
            }
            Some(Ok(AssistantEvent::Todos(items))) => {
                self.out
                    .push_back(Do::Emit("todos", json!({ "items": items })));
            }
            Some(Err(message)) => {
                answer.text_done = true;
                if let Some(rest) = answer.sentences.finish() {
                    answer.to_speak.push_back(rest);
                }
                self.out.push_back(Do::Emit(
                    "error",
                    json!({"code": "assistant_failed", "message": message}),
                ));
            }
            None => {
                answer.text_done = true;
                if let Some(rest) = answer.sentences.finish() {
                    answer.to_speak.push_back(rest);
                }
                let text = answer.text.clone();
                self.out
                    .push_back(Do::Emit("assistant.text.done", json!({ "text": text })));
            }
        }
        self.pump();
    }

    /// The synthesis of `sentence` for answer `id` is done.
    pub fn handle_speech(&mut self, id: u64, sentence: String, result: Result<Speech, String>) {
        let ahead = self.ahead;
        let Some(answer) = self.current(id) else {
            return;
        };
        answer.synthesizing = false;
        match result {
            Ok(speech) => {
                let rate = speech.sample_rate.max(1);
                let chunk = (u64::from(rate) * TICK_MS / 1000).max(1) as usize;
                answer.rate = rate;
                answer.spoken.push((
                    sentence,
                    speech.samples.len() as u64 * 1000 / u64::from(rate),
                ));
                let chunks = speech.samples.chunks(chunk);
                let had = chunks.len() as u64;
                let skipped = answer.skip.min(had);
                answer.skip -= skipped;
                answer.audio.extend(chunks.skip(skipped as usize).map(|c| {
                    Bytes::from(c.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>())
                }));
                if !answer.pacing && !answer.audio.is_empty() {
                    answer.pacing = true;
                    // A resumed answer's client has had its start.
                    if answer.seq == 0 {
                        self.out
                            .push_back(Do::Emit("tts.started", json!({ "sampleRate": rate })));
                    }
                    self.out.push_back(Do::FirstAudio);
                    self.send_audio(ahead);
                    self.out.push_back(Do::StartPacing);
                }
            }
            Err(message) => self.out.push_back(Do::Emit(
                "error",
                json!({"code": "tts_failed", "message": message}),
            )),
        }
        self.pump();
    }

    /// The pacing timer ticked: one more chunk goes out.
    pub fn handle_tick(&mut self) {
        self.send_audio(1);
        self.maybe_finish();
    }

    /// What to do next, in order.
    pub fn poll(&mut self) -> Option<Do> {
        self.out.pop_front()
    }

    // Internals.

    fn current(&mut self, id: u64) -> Option<&mut Answer> {
        self.answer.as_mut().filter(|a| a.id == id)
    }

    /// Synthesizes the next sentence, one at a time, in order.
    fn pump(&mut self) {
        let Some(answer) = &mut self.answer else {
            return;
        };
        if answer.synthesizing {
            return;
        }
        match answer.to_speak.pop_front() {
            Some(sentence) => {
                answer.synthesizing = true;
                self.out.push_back(Do::Synthesize {
                    id: answer.id,
                    sentence,
                });
            }
            None => self.maybe_finish(),
        }
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
            self.out.push_back(Do::Audio {
                seq: answer.seq,
                sample_rate: answer.rate,
                data,
            });
        }
    }

    /// Ends the answer once its text is complete and all its speech has been sent.
    fn maybe_finish(&mut self) {
        let finished = self.answer.as_ref().is_some_and(|a| {
            a.text_done && a.to_speak.is_empty() && !a.synthesizing && a.audio.is_empty()
        });
        if !finished {
            return;
        }
        if let Some(answer) = self.answer.take() {
            if answer.pacing {
                self.out.push_back(Do::StopPacing);
            }
            // A resumed answer's client had its start even if nothing is left to send.
            if answer.pacing || answer.seq > 0 {
                self.out
                    .push_back(Do::Emit("tts.stopped", json!({ "reason": "done" })));
            }
            if !answer.text.is_empty() {
                self.remember(Role::Assistant, answer.text);
            }
        }
        self.out.push_back(Do::Finished);
    }

    fn remember(&mut self, role: Role, text: String) {
        if self.history.len() >= self.history_len {
            self.history.pop_front();
        }
        let line = Line { role, text };
        self.out.push_back(Do::Remember(line.clone()));
        self.history.push_back(line);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(core: &mut Answering) -> Vec<Do> {
        std::iter::from_fn(|| core.poll()).collect()
    }

    fn events(out: &[Do]) -> Vec<&'static str> {
        out.iter()
            .filter_map(|d| match d {
                Do::Emit(name, _) => Some(*name),
                Do::Audio { .. } => Some("tts.audio"),
                _ => None,
            })
            .collect()
    }

    fn synthesis(out: &[Do]) -> Vec<(u64, String)> {
        out.iter()
            .filter_map(|d| match d {
                Do::Synthesize { id, sentence } => Some((*id, sentence.clone())),
                _ => None,
            })
            .collect()
    }

    /// `ms` of speech at 16 kHz.
    fn speech(ms: u64) -> Result<Speech, String> {
        Ok(Speech {
            sample_rate: 16_000,
            samples: vec![1; (16 * ms) as usize],
        })
    }

    fn delta(text: &str) -> Option<Result<AssistantEvent, String>> {
        Some(Ok(AssistantEvent::Delta(text.into())))
    }

    fn seqs(out: &[Do]) -> Vec<u64> {
        out.iter()
            .filter_map(|d| match d {
                Do::Audio { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_resumed_answer_goes_on_from_the_chunk_after_the_last_sent() {
        // Elsewhere, "One. Two." was spoken up to chunk 13 of 15 (1 s, then 500 ms).
        let mut core = Answering::new(20, 300);
        let id = core.resume("One. Two.", 13);
        assert_eq!(synthesis(&drain(&mut core)), vec![(id, "One.".to_owned())]);
        core.handle_speech(id, "One.".into(), speech(1000));
        let out = drain(&mut core);
        // All ten chunks of the first sentence were sent already: nothing, not even a start.
        assert!(events(&out).is_empty(), "{out:?}");
        assert_eq!(synthesis(&out), vec![(id, "Two.".to_owned())]);
        core.handle_speech(id, "Two.".into(), speech(500));
        let mut out = drain(&mut core);
        for _ in 0..5 {
            core.handle_tick();
            out.extend(drain(&mut core));
        }
        assert_eq!(seqs(&out), [14, 15]);
        assert_eq!(events(&out), ["tts.audio", "tts.audio", "tts.stopped"]);
        assert!(!core.answering());
        // Nothing left to send at all: the client still hears the end.
        let id = core.resume("One.", 10);
        drain(&mut core);
        core.handle_speech(id, "One.".into(), speech(1000));
        assert_eq!(events(&drain(&mut core)), ["tts.stopped"]);
    }

    #[test]
    fn sentences_are_spoken_one_at_a_time_in_order_and_paced() {
        let mut core = Answering::new(20, 300);
        let id = core.start(Some("what is on my list"));
        core.handle_event(id, delta("Your list has milk. And eg"));
        let out = drain(&mut core);
        assert!(out.contains(&Do::Replied));
        assert_eq!(
            synthesis(&out),
            vec![(id, "Your list has milk.".to_owned())]
        );
        core.handle_event(id, delta("gs."));
        core.handle_event(id, None);
        // The second sentence waits for the first's synthesis.
        let out = drain(&mut core);
        assert_eq!(
            events(&out),
            ["assistant.text.delta", "assistant.text.done"]
        );
        assert!(synthesis(&out).is_empty());

        core.handle_speech(id, "Your list has milk.".into(), speech(1000));
        let out = drain(&mut core);
        // Speech starts with the lead (300 ms: four chunks of 100 ms) and the timer.
        assert_eq!(
            events(&out),
            [
                "tts.started",
                "tts.audio",
                "tts.audio",
                "tts.audio",
                "tts.audio"
            ]
        );
        assert!(out.contains(&Do::FirstAudio) && out.contains(&Do::StartPacing));
        assert_eq!(synthesis(&out), vec![(id, "And eggs.".to_owned())]);
        core.handle_speech(id, "And eggs.".into(), speech(500));
        assert!(!drain(&mut core).contains(&Do::StartPacing));
        // 1.5 s of speech in 15 chunks: 11 more ticks send the rest, then it is done.
        for _ in 0..10 {
            core.handle_tick();
        }
        assert_eq!(drain(&mut core).len(), 10);
        assert!(core.answering());
        core.handle_tick();
        let out = drain(&mut core);
        assert_eq!(events(&out), ["tts.audio", "tts.stopped"]);
        assert!(matches!(&out[1], Do::StopPacing));
        assert_eq!(out.last(), Some(&Do::Finished));
        assert!(!core.answering());
        let history = core.history();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].role, Role::User);
        assert_eq!(history[1].text, "Your list has milk. And eggs.");
    }

    #[test]
    fn barge_in_stops_at_once_and_keeps_what_was_heard() {
        let mut core = Answering::new(20, 300);
        let id = core.start(Some("read my list"));
        core.handle_event(id, delta("One two three four. Five six."));
        core.handle_event(id, None);
        core.handle_speech(id, "One two three four.".into(), speech(1000));
        drain(&mut core);
        core.handle_played(500);
        core.interrupt();
        let out = drain(&mut core);
        assert_eq!(out[0], Do::Cancel);
        assert_eq!(events(&out), ["tts.stopped", "playback.clear"]);
        assert_eq!(
            out[1],
            Do::Emit("tts.stopped", json!({ "reason": "interrupted" }))
        );
        assert_eq!(
            out.last(),
            Some(&Do::Emit("playback.clear", json!({ "playedMs": 500 })))
        );
        assert_eq!(core.history()[1].text, "One two…");
        // What the cancelled work hands back later is ignored.
        core.handle_speech(id, "Five six.".into(), speech(500));
        core.handle_event(id, None);
        core.handle_tick();
        assert!(drain(&mut core).is_empty());
        // Nothing to interrupt: nothing happens.
        core.interrupt();
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn a_new_answer_replaces_the_one_in_progress() {
        let mut core = Answering::new(20, 0);
        let first = core.start(None);
        core.handle_event(first, delta("Hello there."));
        core.handle_speech(first, "Hello there.".into(), speech(300));
        drain(&mut core);
        let second = core.start(Some("add milk to my list"));
        assert_ne!(first, second);
        let out = drain(&mut core);
        assert_eq!(
            out,
            [
                Do::Cancel,
                Do::Emit("tts.stopped", json!({ "reason": "replaced" })),
                Do::Remember(Line {
                    role: Role::User,
                    text: "add milk to my list".into()
                })
            ]
        );
        // The first answer was not played at all: the history has only the user's line.
        assert_eq!(core.history().len(), 1);
        core.handle_event(first, delta("stale"));
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn failures_are_reported_and_the_rest_is_still_spoken() {
        let mut core = Answering::new(20, 0);
        let id = core.start(None);
        core.handle_event(id, delta("First. Second."));
        core.handle_event(id, Some(Err("the assistant timed out".into())));
        core.handle_speech(id, "First.".into(), Err("flite failed".into()));
        let out = drain(&mut core);
        assert!(out.contains(&Do::Emit(
            "error",
            json!({"code": "assistant_failed", "message": "the assistant timed out"})
        )));
        assert!(out.contains(&Do::Emit(
            "error",
            json!({"code": "tts_failed", "message": "flite failed"})
        )));
        assert_eq!(
            synthesis(&out),
            [(id, "First.".into()), (id, "Second.".into())]
        );
        core.handle_speech(id, "Second.".into(), speech(100));
        core.handle_tick();
        let out = drain(&mut core);
        assert_eq!(out.last(), Some(&Do::Finished));
        // An answer with no speech at all ends without tts.stopped.
        let id = core.start(None);
        core.handle_event(id, None);
        assert_eq!(drain(&mut core).last(), Some(&Do::Finished));
    }

    #[test]
    fn lines_are_handed_out_and_a_history_is_restored_once() {
        let mut core = Answering::new(3, 0);
        let line = |text: &str| Line {
            role: Role::User,
            text: text.into(),
        };
        core.restore(vec![line("a"), line("b"), line("c"), line("d")]);
        let texts = |core: &Answering| -> Vec<String> {
            core.history().into_iter().map(|l| l.text).collect()
        };
        assert_eq!(texts(&core), ["b", "c", "d"]);
        // A history already under way is not replaced.
        core.restore(vec![line("x")]);
        assert_eq!(texts(&core), ["b", "c", "d"]);
        let id = core.start(Some("e"));
        assert!(drain(&mut core).contains(&Do::Remember(line("e"))));
        core.handle_event(id, delta("Okay."));
        core.handle_event(id, None);
        core.handle_speech(id, "Okay.".into(), speech(100));
        core.handle_tick();
        let out = drain(&mut core);
        assert!(out.contains(&Do::Remember(Line {
            role: Role::Assistant,
            text: "Okay.".into()
        })));
        assert_eq!(texts(&core), ["d", "e", "Okay."]);
        let mut fresh = Answering::new(3, 0);
        fresh.restore(Vec::new());
        fresh.restore(vec![line("z")]);
        assert_eq!(texts(&fresh), ["z"]);
    }

    #[test]
    fn the_history_is_bounded_and_keeps_the_newest() {
        let mut core = Answering::new(3, 0);
        for n in 0..5 {
            let id = core.start(Some(&format!("line {n}")));
            core.handle_event(id, None);
        }
        let texts: Vec<String> = core.history().into_iter().map(|l| l.text).collect();
        // Empty answers add no line: the newest three of the user's are kept.
        assert_eq!(texts, ["line 2", "line 3", "line 4"]);
    }

    #[test]
    fn heard_keeps_whole_sentences_and_a_share_of_the_one_cut() {
        let spoken = vec![
            ("One two.".to_owned(), 1000),
            ("Three four five six.".to_owned(), 1000),
        ];
        assert_eq!(heard(&spoken, 0), "");
        assert_eq!(heard(&spoken, 1000), "One two.");
        assert_eq!(heard(&spoken, 1500), "One two. Three four…");
        assert_eq!(heard(&spoken, 5000), "One two. Three four five six.");
    }
}
