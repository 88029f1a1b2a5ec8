//! Remote providers that speak the OpenAI-compatible HTTP API: `/audio/transcriptions`
//! (speech to text), streaming `/chat/completions` (the assistant, with the conversation
//! history), `/audio/speech` (text to speech). Every request is bounded by a timeout; a
//! failure is reported to the client as `error` and the next turn starts clean. The API key
//! comes from the environment and is sent only in the `Authorization` header, never logged.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::assistant::{AnswerStream, Assistant, AssistantEvent, Line, Role, Said, NOT_HEARD};
use super::audio::RATE;
use super::stt::{SpeechToText, SttEvent, SttSink, SttStream};
use super::tts::{parse_wav, Synthesis, TextToSpeech};

/// Where and how to reach the provider.
#[derive(Clone)]
pub struct OpenAi {
    /// Base URL, such as `https://api.openai.com/v1`.
    pub base_url: String,
    /// The API key (may be empty for local servers).
    pub api_key: String,
    /// Longest a request may take.
    pub timeout: Duration,
}

impl fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OpenAi({}, key {})",
            self.base_url,
            if self.api_key.is_empty() {
                "unset"
            } else {
                "set"
            }
        )
    }
}

impl OpenAi {
    fn client(&self) -> awc::Client {
        awc::Client::builder().timeout(self.timeout).finish()
    }

    fn post(&self, path: &str) -> awc::ClientRequest {
        let url = format!("{}/{}", self.base_url.trim_end_matches('/'), path);
        let request = self.client().post(url);
        if self.api_key.is_empty() {
            request
        } else {
            request.bearer_auth(&self.api_key)
        }
    }
}

/// Longest utterance sent for transcription: 30 s.
const MAX_UTTERANCE: usize = RATE as usize * 30;

/// `/audio/transcriptions`.
pub struct RemoteStt {
    /// The provider.
    pub api: OpenAi,
    /// The model, such as `whisper-1`.
    pub model: String,
}

impl SpeechToText for RemoteStt {
    fn start(&self, sink: SttSink) -> Option<Box<dyn SttStream>> {
        Some(Box::new(RemoteSttStream {
            api: self.api.clone(),
            model: self.model.clone(),
            samples: Vec::new(),
            sink: Some(sink),
        }))
    }
}

struct RemoteSttStream {
    api: OpenAi,
    model: String,
    samples: Vec<i16>,
    sink: Option<SttSink>,
}

/// A 16 kHz mono PCM16 WAV.
pub fn wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let data = samples.len() * 2;
    let mut out = Vec::with_capacity(44 + data);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((36 + data) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data as u32).to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

fn multipart(boundary: &str, model: &str, audio: Vec<u8>) -> Bytes {
    let mut body = BytesMut::new();
    for (name, value) in [("model", model), ("response_format", "json")] {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"turn.wav\"\r\n\
             Content-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&audio);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body.freeze()
}

impl SttStream for RemoteSttStream {
    fn push(&mut self, samples: &[i16]) {
        let room = MAX_UTTERANCE.saturating_sub(self.samples.len());
        self.samples
            .extend_from_slice(&samples[..samples.len().min(room)]);
    }

    fn finish(mut self: Box<Self>) {
        let Some(sink) = self.sink.take() else { return };
        let boundary = "voxio-turn-boundary-7d1f";
        let body = multipart(boundary, &self.model, wav(&self.samples, RATE));
        let request = self
            .api
            .post("audio/transcriptions")
            .content_type(format!("multipart/form-data; boundary={boundary}"));
        actix_rt::spawn(async move {
            let result = async {
                let mut res = request
                    .send_body(body)
                    .await
                    .map_err(|e| format!("transcription request failed: {e}"))?;
                if !res.status().is_success() {
                    return Err(format!("transcription failed: HTTP {}", res.status()));
                }
                let json: Value = res
                    .json()
                    .limit(1_000_000)
                    .await
                    .map_err(|e| format!("transcription answer: {e}"))?;
                Ok(json["text"].as_str().unwrap_or_default().trim().to_owned())
            }
            .await;
            sink(match result {
                Ok(text) => SttEvent::certain(text),
                Err(message) => SttEvent::Failed(message),
            });
        });
    }

    fn cancel(self: Box<Self>) {}
}

/// Streaming `/chat/completions` with the conversation history.
pub struct RemoteAssistant {
    /// The provider.
    pub api: OpenAi,
    /// The model.
    pub model: String,
    /// The system prompt.
    pub system: String,
}

impl Assistant for RemoteAssistant {
    fn answer(&self, _user: &str, history: &[Line], said: &Said<'_>) -> AnswerStream {
        let text = said.text;
        if text.trim().is_empty() {
            let sorry = AssistantEvent::Delta(NOT_HEARD.to_owned());
            return Box::pin(futures_util::stream::iter([Ok(sorry)]));
        }
        let mut messages = vec![json!({"role": "system", "content": self.system})];
        // The history already ends with the user's line for this turn.
        for line in history {
            let role = match line.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push(json!({"role": role, "content": line.text}));
        }
        if history
            .last()
            .is_none_or(|l| l.role != Role::User || l.text != text)
        {
            messages.push(json!({"role": "user", "content": text}));
        }
        let body = json!({"model": self.model, "stream": true, "messages": messages});
        let request = self.api.post("chat/completions");
        let stream = async_stream(request, body);
        Box::pin(stream)
    }

    fn todos(&self, _user: &str) -> Option<futures_util::future::BoxFuture<'static, Vec<String>>> {
        None
    }
}

type BodyStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>>>>;

/// Reads the server-sent events of a streaming chat completion as text deltas.
fn async_stream(
    request: awc::ClientRequest,
    body: Value,
) -> impl futures_util::Stream<Item = Result<AssistantEvent, String>> {
    futures_util::stream::unfold(
        (
            Some((request, body)),
            None::<BodyStream>,
            Vec::<u8>::new(),
            std::collections::VecDeque::<Result<AssistantEvent, String>>::new(),
            false,
        ),
        |(mut start, mut response, mut buf, mut ready, mut done)| async move {
            loop {
                if let Some(item) = ready.pop_front() {
                    return Some((item, (start, response, buf, ready, done)));
                }
                if done {
                    return None;
                }
                if let Some((request, body)) = start.take() {
                    match request.send_json(&body).await {
                        Ok(res) if res.status().is_success() => response = Some(Box::pin(res)),
                        Ok(res) => {
                            done = true;
                            ready
                                .push_back(Err(format!("assistant failed: HTTP {}", res.status())));
                        }
                        Err(e) => {
                            done = true;
                            ready.push_back(Err(format!("assistant request failed: {e}")));
                        }
                    }
                    continue;
                }
                let res = response.as_mut()?;
                match res.next().await {
                    Some(Ok(chunk)) => {
                        buf.extend_from_slice(&chunk);
                        if buf.len() > 1_000_000 {
                            done = true;
                            ready.push_back(Err("assistant answer too long".into()));
                            continue;
                        }
                        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=end).collect();
                            let line = String::from_utf8_lossy(&line);
                            let Some(data) = line.trim().strip_prefix("data:") else {
                                continue;
                            };
                            let data = data.trim();
                            if data == "[DONE]" {
                                done = true;
                                break;
                            }
                            let Ok(event) = serde_json::from_str::<Value>(data) else {
                                continue;
                            };
                            if let Some(delta) = event["choices"][0]["delta"]["content"].as_str() {
                                if !delta.is_empty() {
                                    ready.push_back(Ok(AssistantEvent::Delta(delta.to_owned())));
                                }
                            }
                        }
                    }
                    Some(Err(e)) => {
                        done = true;
                        ready.push_back(Err(format!("assistant stream failed: {e}")));
                    }
                    None => done = true,
                }
            }
        },
    )
}

/// `/audio/speech`, asking for WAV.
pub struct RemoteTts {
    /// The provider.
    pub api: OpenAi,
    /// The model, such as `tts-1`.
    pub model: String,
    /// The voice, such as `alloy`.
    pub voice: String,
}

impl TextToSpeech for RemoteTts {
    fn synthesize(&self, text: &str) -> Synthesis {
        let body = json!({"model": self.model, "voice": self.voice, "input": text, "response_format": "wav"});
        let request = self.api.post("audio/speech");
        Box::pin(async move {
            let mut res = request
                .send_json(&body)
                .await
                .map_err(|e| format!("speech request failed: {e}"))?;
            if !res.status().is_success() {
                return Err(format!("speech failed: HTTP {}", res.status()));
            }
            let bytes = res
                .body()
                .limit(50_000_000)
                .await
                .map_err(|e| format!("speech answer: {e}"))?;
            parse_wav(&bytes).ok_or_else(|| "speech answer is not a PCM16 mono WAV".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trips_through_the_parser() {
        let speech = parse_wav(&wav(&[1, -2, 3], 16_000)).unwrap();
        assert_eq!(
            (speech.sample_rate, speech.samples),
            (16_000, vec![1, -2, 3])
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let api = OpenAi {
            base_url: "http://x".into(),
            api_key: "sk-secret".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{api:?}").contains("sk-secret"));
    }
}
