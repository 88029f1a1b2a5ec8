//! `voxio bench-voice`: the voice pipeline's latency, accuracy and cost, measured on real
//! speech.
//!
//! Starts a voxio server as a child process (the default pipeline, or with `--classic` the
//! pocketsphinx command grammar alone), makes spoken commands and everyday sentences with
//! flite (voice `slt`), and streams them over real Socket.IO WebSockets in 20 ms chunks at
//! real-time pace, from one or more talkers at the same moment. For commands and sentences
//! separately it prints the median and p95 of the time from the end of voice (the chunk
//! holding the clip's last voiced sample, |s| >= 300) to the end of the turn
//! (`vad.speech_stopped`), to the final transcript and to the first audio of the answer; the
//! word error rate of the final transcripts; and turns refused as `busy`. Then the server's
//! CPU seconds per second of audio streamed (utime + stime from /proc) and its peak RSS; and,
//! given several talker counts, the capacity: the count at which p95 end of voice → first
//! audio passes twice the fewest talkers' median.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use awc::ws;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use crate::voice::stt::{edit_distance, Ends};

/// Commands of the to-do assistant.
const COMMANDS: &[&str] = &[
    "add milk to my list",
    "add bread to my list",
    "what is on my list",
    "remove milk",
    "add eggs to my list",
    "clear my list",
];

/// Everyday sentences that are not commands.
const SENTENCES: &[&str] = &[
    "the train to the airport leaves every half hour",
    "please turn the music down a little",
    "my sister is coming over for dinner tonight",
    "the weather has been lovely this week",
    "i think the meeting went really well",
    "the library closes early on sundays",
];

/// |sample| from which audio counts as voiced, for the end of voice.
const VOICED: i16 = 300;
/// Bytes of one 20 ms chunk of 16 kHz mono PCM16.
const CHUNK: usize = 640;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// CPU seconds (utime + stime) a process has used, from `/proc`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of a process in MiB (VmHWM), from `/proc`.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// A transcript as plain words: lower case, punctuation gone, "what's" spelled out.
fn plain_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace("what's", "what is")
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Word-level edit distance of `hyp` to `reference`, and the reference's length.
fn word_errors(reference: &str, hyp: &str) -> (usize, usize) {
    let (r, h) = (plain_words(reference), plain_words(hyp));
    (edit_distance(&r, &h, Ends::Counted), r.len())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Command,
    Sentence,
}

/// A clip ready to stream: a second of silence, the speech, three seconds of silence.
struct Clip {
    text: &'static str,
    kind: Kind,
    pcm: Vec<u8>,
    /// The chunk holding the last voiced sample.
    voice_end: usize,
}

fn speech(dir: &Path, text: &'static str, kind: Kind) -> std::io::Result<Clip> {
    let path = dir.join(format!("{}.wav", text.replace(' ', "_")));
    let status = Command::new("flite")
        .args(["-voice", "slt", "-t", text, "-o"])
        .arg(&path)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other("flite failed"));
    }
    let samples = crate::voice::tts::parse_wav(&std::fs::read(&path)?)
        .map(|s| s.samples)
        .ok_or_else(|| std::io::Error::other("flite wrote no WAV"))?;
    let lead = 16_000;
    let last_voiced = samples.iter().rposition(|s| s.abs() >= VOICED).unwrap_or(0);
    let mut pcm: Vec<u8> = vec![0; lead];
    pcm.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
    pcm.extend(vec![0u8; 96_000]);
    pcm.truncate(pcm.len() / CHUNK * CHUNK);
    Ok(Clip {
        text,
        kind,
        voice_end: (lead + 2 * last_voiced) / CHUNK,
        pcm,
    })
}

/// Sends one binary `audio` event (no ack asked).
async fn send_audio<S, E>(conn: &mut S, chunk: &[u8]) -> std::io::Result<()>
where
    S: futures_util::Sink<ws::Message, Error = E> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let header = r#"451-/voice,["audio",{"_placeholder":true,"num":0}]"#;
    conn.send(ws::Message::Text(header.into()))
        .await
        .map_err(std::io::Error::other)?;
    conn.send(ws::Message::Binary(Bytes::copy_from_slice(chunk)))
        .await
        .map_err(std::io::Error::other)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one turn measured; times in ms from the end of voice.
struct Turn {
    kind: Kind,
    text: &'static str,
    heard: String,
    to_stop: Option<f64>,
    to_final: Option<f64>,
    to_audio: Option<f64>,
    busy: bool,
}

/// The event name and first argument of a Socket.IO text frame on `/voice`.
fn event(frame: &str) -> Option<(String, serde_json::Value)> {
    let json = &frame[frame.find('[')?..];
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    Some((value[0].as_str()?.to_owned(), value[1].clone()))
}

/// One talker: a connection that speaks `turns` clips, starting at clip `first`.
async fn talker(
    port: u16,
    clips: &[Clip],
    turns: usize,
    first: usize,
) -> std::io::Result<Vec<Turn>> {
    let (_, mut conn) = awc::Client::new()
        .ws(format!(
            "ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        ))
        .max_frame_size(1 << 20)
        .connect()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let send = |text: &str| ws::Message::Text(text.to_owned().into());
    conn.send(send(r#"40/voice,{"pin":"246810"}"#))
        .await
        .map_err(std::io::Error::other)?;
    let mut results = Vec::new();
    for turn in 0..turns {
        let clip = &clips[(first + turn) % clips.len()];
        let start = Instant::now();
        let mut voice_end = None;
        let mut out = Turn {
            kind: clip.kind,
            text: clip.text,
            heard: String::new(),
            to_stop: None,
            to_final: None,
            to_audio: None,
            busy: false,
        };
        let (mut answering, mut done) = (false, false);
        let mut chunks = clip.pcm.chunks(CHUNK).enumerate().peekable();
        let deadline = start + Duration::from_secs(30);
        while !done && Instant::now() < deadline {
            // Send what is due, then read what has come.
            let due = (start.elapsed().as_millis() / 20) as usize + 1;
            while let Some((n, chunk)) = chunks.next_if(|(n, _)| *n < due) {
                send_audio(&mut conn, chunk).await?;
                if n == clip.voice_end {
                    voice_end = Some(Instant::now());
                }
            }
            let frame = tokio::time::timeout(Duration::from_millis(5), conn.next()).await;
            let Ok(Some(Ok(frame))) = frame else { continue };
            let text = match frame {
                ws::Frame::Text(t) => String::from_utf8_lossy(&t).into_owned(),
                ws::Frame::Close(_) => {
                    return Err(std::io::Error::other("the server closed the connection"))
                }
                _ => continue,
            };
            if text == "2" {
                conn.send(send("3")).await.map_err(std::io::Error::other)?;
                continue;
            }
            let since = |at: Option<Instant>| {
                at.map(|end| Instant::now().saturating_duration_since(end).as_secs_f64() * 1e3)
            };
            match event(&text) {
                Some((name, _)) if name == "vad.speech_stopped" && out.to_stop.is_none() => {
                    out.to_stop = since(voice_end);
                }
                Some((name, body)) if name == "transcript.final" && out.to_final.is_none() => {
                    out.to_final = since(voice_end);
                    out.heard = body["text"].as_str().unwrap_or_default().to_owned();
                    answering = true;
                }
                Some((name, body)) if name == "error" && body["code"] == "busy" => out.busy = true,
                Some((name, _)) if name == "tts.audio" && answering && out.to_audio.is_none() => {
                    out.to_audio = since(voice_end);
                }
                Some((name, _)) if name == "tts.stopped" && answering => done = true,
                _ => {}
            }
        }
        // The rest of the padding goes out, so turns do not overlap.
        for (_, chunk) in chunks {
            send_audio(&mut conn, chunk).await?;
        }
        results.push(out);
        // A quiet moment between turns, as a person would leave.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(results)
}

/// Starts the server under test. It logs warnings only, thrown away, unless
/// `VOXIO_BENCH_SERVER_LOG` names a filter: its log then goes to this process's standard
/// error (say `voxio::voice::whisper=debug`, to see each Whisper decode).
fn start_server(port: u16, models: &Path) -> std::io::Result<Server> {
    let exe: PathBuf = std::env::current_exe()?;
    let log = std::env::var("VOXIO_BENCH_SERVER_LOG").ok();
    let stdout = match &log {
        Some(_) => Stdio::from(std::io::stderr()),
        None => Stdio::null(),
    };
    let server = Server(
        Command::new(exe)
            .env("VOXIO_BIND", format!("127.0.0.1:{port}"))
            .env("VOXIO_PIN", "246810")
            .env("VOXIO_MODELS_DIR", models)
            .env("RUST_LOG", log.as_deref().unwrap_or("warn"))
            .stdout(stdout)
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(std::io::Error::other("the server did not start"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

/// Runs the benchmark: for each count of `talkers`, that many talkers take `turns` turns each
/// against one fresh server on `port`.
pub async fn run(turns: usize, talkers: &[usize], classic: bool, port: u16) -> std::io::Result<()> {
    let dir = std::env::temp_dir().join(format!("voxio-bench-voice-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut clips = Vec::new();
    for (command, sentence) in COMMANDS.iter().zip(SENTENCES) {
        clips.push(speech(&dir, command, Kind::Command)?);
        clips.push(speech(&dir, sentence, Kind::Sentence)?);
    }
    // The classic pipeline is the default one without its models.
    let models = if classic {
        dir.join("no-models")
    } else {
        std::env::var_os("VOXIO_MODELS_DIR").map_or_else(|| PathBuf::from("models"), PathBuf::from)
    };
    let pipeline = if classic { "classic" } else { "Whisper" };
    println!(
        "| pipeline | talkers | speech | turns | WER | busy | voice end → turn end p50 / p95 (ms) | → final transcript p50 / p95 | → first audio p50 / p95 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut cost = Vec::new();
    let mut to_audio = Vec::new();
    for &n in talkers {
        let server = start_server(port, &models)?;
        let pid = server.0.id();
        let cpu_start = cpu_seconds(pid);
        let started = Instant::now();
        let runs =
            futures_util::future::join_all((0..n.max(1)).map(|k| talker(port, &clips, turns, k)))
                .await;
        let mut all = Vec::new();
        for run in runs {
            all.extend(run?);
        }
        let audio_seconds: f64 = all
            .iter()
            .map(|t| {
                let clip = clips.iter().find(|c| c.text == t.text);
                clip.map_or(0.0, |c| c.pcm.len() as f64 / 32_000.0)
            })
            .sum();
        let cpu = cpu_seconds(pid) - cpu_start;
        cost.push((
            n,
            cpu / audio_seconds.max(0.001),
            peak_rss_mib(pid),
            started.elapsed(),
        ));
        drop(server);
        let mut audio: Vec<f64> = all.iter().filter_map(|t| t.to_audio).collect();
        audio.sort_by(f64::total_cmp);
        to_audio.push(Load {
            talkers: n.max(1),
            median: percentile(&audio, 50.0),
            p95: percentile(&audio, 95.0),
        });
        for kind in [Kind::Command, Kind::Sentence] {
            let turns: Vec<&Turn> = all.iter().filter(|t| t.kind == kind).collect();
            let (mut errors, mut words) = (0, 0);
            for t in &turns {
                let (e, w) = word_errors(t.text, &t.heard);
                errors += e;
                words += w;
            }
            let stat = |f: fn(&Turn) -> Option<f64>| {
                let mut v: Vec<f64> = turns.iter().filter_map(|t| f(t)).collect();
                v.sort_by(f64::total_cmp);
                if v.is_empty() {
                    // No turn of this kind got that far (or there was none).
                    return "–".to_owned();
                }
                format!("{:.0} / {:.0}", percentile(&v, 50.0), percentile(&v, 95.0))
            };
            println!(
                "| {pipeline} | {n} | {} | {} | {:.1}% | {} | {} | {} | {} |",
                if kind == Kind::Command {
                    "commands"
                } else {
                    "sentences"
                },
                turns.len(),
                100.0 * errors as f64 / words.max(1) as f64,
                turns.iter().filter(|t| t.busy).count(),
                stat(|t| t.to_stop),
                stat(|t| t.to_final),
                stat(|t| t.to_audio),
            );
        }
    }
    println!();
    if let Some(line) = capacity(&to_audio) {
        println!("{pipeline} capacity: {line}");
    }
    for (n, per_second, rss, took) in cost {
        println!(
            "{pipeline}, {n} talker(s): server CPU {per_second:.3} s per audio second, peak RSS {rss:.0} MiB ({:.0} s run)",
            took.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// End of voice → first audio of one run, all turns together.
struct Load {
    talkers: usize,
    median: f64,
    p95: f64,
}

/// "1 talker", "8 talkers".
fn talkers(n: usize) -> String {
    if n == 1 {
        "1 talker".into()
    } else {
        format!("{n} talkers")
    }
}

/// The capacity, as the issue defines it: the talkers at which p95 end of voice → first
/// audio reaches twice the fewest talkers' median. `None` with fewer than two counts.
fn capacity(runs: &[Load]) -> Option<String> {
    let base = runs.iter().min_by_key(|r| r.talkers)?;
    if runs.len() < 2 || !base.median.is_finite() || base.median <= 0.0 {
        return None;
    }
    let mut sorted: Vec<&Load> = runs.iter().collect();
    sorted.sort_by_key(|r| r.talkers);
    let limit = 2.0 * base.median;
    let within = sorted
        .iter()
        .take_while(|r| r.p95 <= limit)
        .last()
        .map(|r| r.talkers);
    let beyond = sorted.iter().find(|r| r.p95 > limit);
    let head = format!(
        "p95 end of voice → first audio within 2× the {}-talker median ({:.0} ms → {:.0} ms)",
        base.talkers, base.median, limit
    );
    Some(match (within, beyond) {
        (Some(n), Some(b)) => format!(
            "{head} up to {}; {} talkers: {:.0} ms ({:.1}×)",
            talkers(n),
            b.talkers,
            b.p95,
            b.p95 / base.median
        ),
        (Some(n), None) => format!("{head} at every count measured, up to {}", talkers(n)),
        (None, Some(b)) => format!(
            "{head} at no count measured; {} talkers: {:.0} ms ({:.1}×)",
            b.talkers,
            b.p95,
            b.p95 / base.median
        ),
        (None, None) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_where_p95_passes_twice_the_single_talker_median() {
        let load = |talkers, median, p95| Load {
            talkers,
            median,
            p95,
        };
        let runs = [
            load(1, 1000.0, 1100.0),
            load(4, 1500.0, 1900.0),
            load(8, 2500.0, 3900.0),
        ];
        let line = capacity(&runs).unwrap();
        assert!(line.contains("up to 4 talkers"), "{line}");
        assert!(line.contains("8 talkers: 3900 ms (3.9×)"), "{line}");
        let only_one = [load(1, 1000.0, 1100.0), load(8, 2500.0, 3900.0)];
        assert!(capacity(&only_one)
            .unwrap()
            .contains("up to 1 talker; 8 talkers"));
        let all_fine = [load(1, 1000.0, 1100.0), load(2, 1000.0, 1500.0)];
        assert!(capacity(&all_fine)
            .unwrap()
            .contains("at every count measured, up to 2 talkers"));
        assert!(capacity(&runs[..1]).is_none());
        // A run in which no turn was answered has no median to compare with.
        let unanswered = [load(1, f64::NAN, f64::NAN), load(8, 1000.0, 1500.0)];
        assert!(capacity(&unanswered).is_none());
    }

    #[test]
    fn word_error_rate_counts_edits_on_plain_words() {
        assert_eq!(
            word_errors("what is on my list", "What's on my list?"),
            (0, 5)
        );
        assert_eq!(
            word_errors("add buy milk to my list", "Add by milk to my list."),
            (1, 6)
        );
        assert_eq!(word_errors("remove milk", ""), (2, 2));
        assert_eq!(word_errors("a b", "a b c"), (1, 2));
    }
}
