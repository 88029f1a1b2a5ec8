//! Text to speech: Debian's `flite` (voice `slt` by default) or `espeak-ng`, run as a process
//! per sentence (espeak-ng is GPL: it is run, never linked). Either writes a WAV to stdout; the
//! samples are streamed to the client by the pipeline.

use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

/// Synthesized speech: PCM16 mono.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speech {
    /// Samples per second.
    pub sample_rate: u32,
    /// The samples.
    pub samples: Vec<i16>,
}

/// Speech being synthesized (polled on the pipeline's worker thread).
pub type Synthesis = Pin<Box<dyn Future<Output = Result<Speech, String>>>>;

/// A speech engine.
pub trait TextToSpeech: Send + Sync {
    /// Speaks `text`.
    fn synthesize(&self, text: &str) -> Synthesis;
}

/// Which program speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `flite -voice VOICE`.
    Flite(String),
    /// `espeak-ng -v VOICE`.
    EspeakNg(String),
}

/// Runs a speech program per sentence, bounded in time and output size.
#[derive(Debug, Clone)]
pub struct ProcessTts {
    /// The program.
    pub program: Program,
    /// Longest a synthesis may take. Default 10 s.
    pub timeout: Duration,
}

/// Most text spoken at once (characters).
const MAX_TEXT: usize = 1000;

impl ProcessTts {
    /// flite with the `slt` voice.
    pub fn flite() -> ProcessTts {
        ProcessTts {
            program: Program::Flite("slt".into()),
            timeout: Duration::from_secs(10),
        }
    }

    fn command(&self, text: &str) -> tokio::process::Command {
        let mut command = match &self.program {
            Program::Flite(voice) => {
                let mut c = tokio::process::Command::new("flite");
                c.args(["-voice", voice, "-o", "/dev/stdout", "-t", text]);
                c
            }
            Program::EspeakNg(voice) => {
                let mut c = tokio::process::Command::new("espeak-ng");
                c.args(["-v", voice, "--stdout", "--", text]);
                c
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command
    }
}

impl TextToSpeech for ProcessTts {
    fn synthesize(&self, text: &str) -> Synthesis {
        let text: String = text.chars().take(MAX_TEXT).collect();
        let mut command = self.command(&text);
        let timeout = self.timeout;
        Box::pin(async move {
            let output = tokio::time::timeout(timeout, command.output())
                .await
                .map_err(|_| "speech synthesis timed out".to_owned())?
                .map_err(|e| format!("speech program failed to start: {e}"))?;
            if !output.status.success() {
                return Err(format!("speech program failed: {}", output.status));
            }
            parse_wav(&output.stdout).ok_or_else(|| "speech program wrote no WAV".to_owned())
        })
    }
}

/// Reads a PCM16 mono WAV (a streamed one, whose sizes are unknown, included).
pub fn parse_wav(bytes: &[u8]) -> Option<Speech> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12;
    let mut sample_rate = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        let body = at + 8;
        if id == b"fmt " {
            let fmt = bytes.get(body..body + 16)?;
            let format = u16::from_le_bytes([fmt[0], fmt[1]]);
            let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
            let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
            if format != 1 || channels != 1 || bits != 16 {
                return None;
            }
            sample_rate = Some(u32::from_le_bytes(fmt[4..8].try_into().ok()?));
        } else if id == b"data" {
            let end = body.saturating_add(size).min(bytes.len());
            let samples = bytes[body..end]
                .chunks_exact(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]))
                .collect();
            return Some(Speech {
                sample_rate: sample_rate?,
                samples,
            });
        }
        at = body.checked_add(size + (size & 1))?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_streamed_and_sized_wavs() {
        let mut wav = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&22050u32.to_le_bytes());
        wav.extend_from_slice(&44100u32.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&0x7fff_f000u32.to_le_bytes());
        wav.extend_from_slice(&[1, 0, 2, 0, 3]);
        assert_eq!(
            parse_wav(&wav),
            Some(Speech {
                sample_rate: 22050,
                samples: vec![1, 2]
            })
        );
        assert_eq!(parse_wav(b"RIFF"), None);
        assert_eq!(parse_wav(b"nonsense at all"), None);
    }
}
