//! Audio in: the format a client announces with `audio.start`, validation of each chunk, and
//! the conversion to what the pipeline works on: 16 kHz mono PCM16 in VAD-sized frames.
//!
//! The common case (16 kHz mono) is copied straight into the frame buffer; other rates go
//! through rubato's FFT resampler. Buffers are reused: no allocation per chunk after warm-up.

use rubato::{FftFixedIn, Resampler};
use serde::Deserialize;

/// The pipeline's sample rate.
pub const RATE: u32 = 16_000;
/// Samples per VAD frame (16 ms at 16 kHz, what earshot takes).
pub const FRAME: usize = 256;
/// One frame of pipeline audio.
pub type Frame = [i16; FRAME];

/// Sample rates a client may announce.
pub const RATES: [u32; 4] = [16_000, 24_000, 44_100, 48_000];

/// What `audio.start` announces. Without it: PCM16, 16 kHz, mono.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFormat {
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// 1 or 2, interleaved.
    pub channels: u16,
}

impl Default for AudioFormat {
    fn default() -> Self {
        AudioFormat {
            sample_rate: RATE,
            channels: 1,
        }
    }
}

/// Bad audio input: answered with `error {code, message}`, the connection goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    /// `audio.start` is not `{encoding, sampleRate, channels}`.
    #[error("audio.start takes {{encoding: \"pcm16\", sampleRate, channels}}")]
    BadStart,
    /// Only PCM16 is taken.
    #[error("unsupported encoding {0:?}: only \"pcm16\"")]
    Encoding(String),
    /// A rate other than 16000, 24000, 44100, 48000.
    #[error("unsupported sample rate {0}: use 16000, 24000, 44100 or 48000")]
    Rate(u32),
    /// Channels other than 1 or 2.
    #[error("unsupported channel count {0}: use 1 or 2")]
    Channels(u16),
    /// A chunk that does not hold whole samples for every channel.
    #[error("a chunk of {0} bytes does not hold whole PCM16 sample frames")]
    Partial(usize),
    /// A chunk over the size limit.
    #[error("a chunk of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    /// An `audio` event without binary data.
    #[error("audio events carry the PCM16 bytes as a binary argument")]
    NoData,
}

impl AudioError {
    /// The `code` of the `error` event.
    pub fn code(&self) -> &'static str {
        match self {
            AudioError::BadStart | AudioError::NoData => "bad_request",
            AudioError::Encoding(_) | AudioError::Rate(_) | AudioError::Channels(_) => {
                "unsupported_format"
            }
            AudioError::Partial(_) => "bad_chunk",
            AudioError::TooLarge(..) => "chunk_too_large",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Start {
    encoding: Option<String>,
    sample_rate: Option<u32>,
    channels: Option<u16>,
}

impl AudioFormat {
    /// Parses and checks an `audio.start` payload.
    pub fn parse(value: &serde_json::Value) -> Result<AudioFormat, AudioError> {
        let start = Start::deserialize(value).map_err(|_| AudioError::BadStart)?;
        if let Some(encoding) = start.encoding {
            if encoding != "pcm16" {
                return Err(AudioError::Encoding(encoding));
            }
        }
        let sample_rate = start.sample_rate.unwrap_or(RATE);
        if !RATES.contains(&sample_rate) {
            return Err(AudioError::Rate(sample_rate));
        }
        let channels = start.channels.unwrap_or(1);
        if !(1..=2).contains(&channels) {
            return Err(AudioError::Channels(channels));
        }
        Ok(AudioFormat {
            sample_rate,
            channels,
        })
    }

    /// Checks one chunk's size.
    pub fn check_chunk(&self, len: usize, max: usize) -> Result<(), AudioError> {
        if len > max {
            return Err(AudioError::TooLarge(len, max));
        }
        if len % (2 * usize::from(self.channels)) != 0 {
            return Err(AudioError::Partial(len));
        }
        Ok(())
    }
}

/// Turns chunks of the announced format into 16 kHz mono frames.
pub struct Converter {
    format: AudioFormat,
    resampler: Option<Resampling>,
    /// The frame being filled, and how much of it is.
    frame: Frame,
    filled: usize,
}

struct Resampling {
    resampler: FftFixedIn<f32>,
    input: Vec<f32>,
    output: Vec<Vec<f32>>,
}

impl Converter {
    /// A converter for `format`.
    pub fn new(format: AudioFormat) -> Converter {
        let resampler = (format.sample_rate != RATE).then(|| {
            // 10 ms input chunks; one sub-chunk keeps latency at a chunk.
            let chunk = format.sample_rate as usize / 100;
            let resampler =
                FftFixedIn::<f32>::new(format.sample_rate as usize, RATE as usize, chunk, 1, 1)
                    .expect("supported rates make a valid resampler");
            let output = resampler.output_buffer_allocate(true);
            Resampling {
                resampler,
                input: Vec::with_capacity(chunk * 4),
                output,
            }
        });
        Converter {
            format,
            resampler,
            frame: [0; FRAME],
            filled: 0,
        }
    }

    /// The format converted from.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Converts one validated chunk, calling `on_frame` for every complete frame.
    pub fn push(&mut self, pcm: &[u8], mut on_frame: impl FnMut(&Frame)) {
        let channels = usize::from(self.format.channels);
        let mut samples = pcm.chunks_exact(2 * channels).map(|frame| {
            let sum: i32 = frame
                .chunks_exact(2)
                .map(|s| i32::from(i16::from_le_bytes([s[0], s[1]])))
                .sum();
            (sum / channels as i32) as i16
        });
        match &mut self.resampler {
            None => loop {
                // A run of samples straight into the frame, up to its end or the chunk's.
                let room = &mut self.frame[self.filled..];
                let before = samples.len();
                for (slot, sample) in room.iter_mut().zip(&mut samples) {
                    *slot = sample;
                }
                self.filled += before - samples.len();
                if self.filled < FRAME {
                    break;
                }
                on_frame(&self.frame);
                self.filled = 0;
            },
            Some(r) => {
                for sample in samples {
                    r.input.push(f32::from(sample) / 32768.0);
                    if r.input.len() == r.resampler.input_frames_next() {
                        let input = [&r.input[..]];
                        if let Ok((_, produced)) =
                            r.resampler.process_into_buffer(&input, &mut r.output, None)
                        {
                            for &s in &r.output[0][..produced] {
                                let s = (s * 32768.0).clamp(-32768.0, 32767.0) as i16;
                                self.frame[self.filled] = s;
                                self.filled += 1;
                                if self.filled == FRAME {
                                    on_frame(&self.frame);
                                    self.filled = 0;
                                }
                            }
                        }
                        r.input.clear();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_checks_formats() {
        assert_eq!(
            AudioFormat::parse(&json!({})).unwrap(),
            AudioFormat::default()
        );
        assert_eq!(
            AudioFormat::parse(&json!({"encoding":"pcm16","sampleRate":48000,"channels":2}))
                .unwrap(),
            AudioFormat {
                sample_rate: 48000,
                channels: 2
            }
        );
        assert_eq!(
            AudioFormat::parse(&json!({"encoding":"opus"})),
            Err(AudioError::Encoding("opus".into()))
        );
        assert_eq!(
            AudioFormat::parse(&json!({"sampleRate":8000})),
            Err(AudioError::Rate(8000))
        );
        assert_eq!(
            AudioFormat::parse(&json!({"channels":3})),
            Err(AudioError::Channels(3))
        );
        assert_eq!(AudioFormat::parse(&json!("x")), Err(AudioError::BadStart));
        let stereo = AudioFormat {
            sample_rate: 48000,
            channels: 2,
        };
        assert_eq!(stereo.check_chunk(6, 100), Err(AudioError::Partial(6)));
        assert_eq!(stereo.check_chunk(8, 100), Ok(()));
        assert_eq!(
            stereo.check_chunk(104, 100),
            Err(AudioError::TooLarge(104, 100))
        );
    }

    fn tone(rate: u32, channels: u16, seconds: f32) -> Vec<u8> {
        let n = (rate as f32 * seconds) as usize;
        let mut out = Vec::new();
        for i in 0..n {
            let s = ((i as f32 * 440.0 * 2.0 * std::f32::consts::PI / rate as f32).sin() * 8000.0)
                as i16;
            for _ in 0..channels {
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn every_rate_comes_out_at_16k_mono() {
        for rate in RATES {
            for channels in [1, 2] {
                let mut converter = Converter::new(AudioFormat {
                    sample_rate: rate,
                    channels,
                });
                let mut frames = 0;
                let mut energy = 0f64;
                let pcm = tone(rate, channels, 1.0);
                for chunk in pcm.chunks(640 * usize::from(channels)) {
                    converter.push(chunk, |f| {
                        frames += 1;
                        energy += f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
                    });
                }
                // One second is 62.5 frames; the resampler holds back up to a chunk.
                assert!(
                    (60..=63).contains(&frames),
                    "{rate} Hz x{channels}: {frames} frames"
                );
                let rms = (energy / (frames as f64 * FRAME as f64)).sqrt();
                assert!(
                    (5000.0..6500.0).contains(&rms),
                    "{rate} Hz x{channels}: rms {rms}"
                );
            }
        }
    }

    #[test]
    fn sixteen_k_chunks_of_any_size_come_out_as_the_same_samples_in_frames() {
        let samples: Vec<i16> = (0..5_000).map(|i| (i * 7 % 4001 - 2000) as i16).collect();
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        for format in [(1u16, 1usize), (2, 2)] {
            let (channels, width) = format;
            // Stereo: each sample on both channels, so the mix is the sample.
            let pcm: Vec<u8> = pcm
                .chunks_exact(2)
                .flat_map(|s| std::iter::repeat_n(s, width).flatten().copied())
                .collect();
            let mut converter = Converter::new(AudioFormat {
                sample_rate: RATE,
                channels,
            });
            let mut out = Vec::new();
            let mut rest = &pcm[..];
            for size in [640, 2 * width, 1_000 * width, 6 * width, 512 * width]
                .iter()
                .cycle()
            {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                converter.push(chunk, |f| out.extend_from_slice(f));
                rest = tail;
            }
            assert_eq!(
                out.len(),
                samples.len() / FRAME * FRAME,
                "{channels} channels"
            );
            assert_eq!(out, samples[..out.len()], "{channels} channels");
        }
    }
}
