//! `voxio bench-voice`: the voice pipeline's latency and cost, measured on real speech.
//!
//! Starts a voxio server as a child process (default pipeline, pocketsphinx and flite), makes
//! spoken commands with flite, streams them over a real Socket.IO WebSocket in 20 ms chunks at
//! real-time pace, and prints, over the turns, the median and p95 of end of speech → final
//! transcript and end of speech → first speech audio byte, and the server's CPU seconds per
//! second of audio streamed (utime + stime from /proc over the run). "End of speech" is the
//! moment the last chunk of the spoken clip was sent (flite's clips end with a short silence,
//! so the VAD hangover partly overlaps it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use awc::ws;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

/// The phrases spoken, in turn.
const PHRASES: &[&str] = &[
    "add milk to my list",
    "add bread to my list",
    "what is on my list",
    "remove milk",
    "add eggs to my list",
    "clear my list",
];

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

fn speech(dir: &std::path::Path, text: &str) -> std::io::Result<Vec<i16>> {
    let path = dir.join(format!("{}.wav", text.replace(' ', "_")));
    let status = Command::new("flite")
        .args(["-voice", "slt", "-t", text, "-o"])
        .arg(&path)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other("flite failed"));
    }
    crate::voice::tts::parse_wav(&std::fs::read(&path)?)
        .map(|s| s.samples)
        .ok_or_else(|| std::io::Error::other("flite wrote no WAV"))
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

/// Runs the benchmark: `turns` turns against a fresh server on `port`.
pub async fn run(turns: usize, port: u16) -> std::io::Result<()> {
    let dir = std::env::temp_dir().join(format!("voxio-bench-voice-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut clips = Vec::new();
    for phrase in PHRASES {
        clips.push((phrase, speech(&dir, phrase)?));
    }
    let exe: PathBuf = std::env::current_exe()?;
    let server = Server(
        Command::new(exe)
            .env("VOXIO_BIND", format!("127.0.0.1:{port}"))
            .env("VOXIO_PIN", "2468")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let pid = server.0.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(std::io::Error::other("the server did not start"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, mut conn) = awc::Client::new()
        .ws(format!(
            "ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        ))
        .connect()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let send = |text: String| ws::Message::Text(text.into());
    conn.send(send(r#"40/voice,{"pin":"2468"}"#.into()))
        .await
        .map_err(std::io::Error::other)?;

    let cpu_start = cpu_seconds(pid);
    let mut audio_seconds = 0.0;
    let (mut to_final, mut to_audio) = (Vec::new(), Vec::new());
    let mut understood = 0;
    println!("turn  phrase                     final transcript            final ms  audio ms");
    for turn in 0..turns {
        let (phrase, samples) = &clips[turn % clips.len()];
        let mut pcm: Vec<u8> = vec![0; 16_000];
        pcm.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        let speech_end_chunk = pcm.len() / 640;
        pcm.extend(vec![0u8; 48_000]);
        audio_seconds += pcm.len() as f64 / 32_000.0;
        let start = Instant::now();
        let mut speech_end = None;
        let (mut final_at, mut audio_at, mut transcript) = (None, None, String::new());
        let mut answer_started = false;
        let mut chunks = pcm.chunks(640).enumerate();
        let turn_deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Send what is due, then read what has come.
            let due = (start.elapsed().as_millis() / 20) as usize + 1;
            for (n, chunk) in chunks.by_ref() {
                send_audio(&mut conn, chunk).await?;
                if n + 1 == speech_end_chunk {
                    speech_end = Some(Instant::now());
                }
                if n + 1 >= due {
                    break;
                }
            }
            if final_at.is_some() && audio_at.is_some() || Instant::now() > turn_deadline {
                break;
            }
            let frame = tokio::time::timeout(Duration::from_millis(5), conn.next()).await;
            let Ok(Some(Ok(frame))) = frame else { continue };
            match frame {
                ws::Frame::Text(t) => {
                    let t = String::from_utf8_lossy(&t).into_owned();
                    if t == "2" {
                        conn.send(send("3".into()))
                            .await
                            .map_err(std::io::Error::other)?;
                    } else if t.contains("[\"transcript.final\"") && final_at.is_none() {
                        final_at = Some(Instant::now());
                        let json = t.find('[').map(|i| &t[i..]).unwrap_or("[]");
                        let value: serde_json::Value =
                            serde_json::from_str(json).unwrap_or_default();
                        transcript = value[1]["text"].as_str().unwrap_or_default().to_owned();
                    } else if t.contains("[\"tts.started\"") && final_at.is_some() {
                        answer_started = true;
                    } else if t.contains("[\"tts.audio\"") && answer_started && audio_at.is_none() {
                        // The first audio of this turn's answer (not the end of the last one's).
                        audio_at = Some(Instant::now());
                    }
                }
                ws::Frame::Close(_) => {
                    return Err(std::io::Error::other("the server closed the connection"))
                }
                _ => {}
            }
        }
        // Let the rest of the padding go out, so turns do not overlap.
        for (_, chunk) in chunks {
            send_audio(&mut conn, chunk).await?;
        }
        let ms = |at: Option<Instant>| match (speech_end, at) {
            (Some(end), Some(at)) => Some(at.saturating_duration_since(end).as_secs_f64() * 1000.0),
            _ => None,
        };
        let (f, a) = (ms(final_at), ms(audio_at));
        if let Some(f) = f {
            to_final.push(f);
        }
        if let Some(a) = a {
            to_audio.push(a);
        }
        if transcript.eq_ignore_ascii_case(phrase) {
            understood += 1;
        }
        let show = |v: Option<f64>| {
            v.map(|v| format!("{v:8.0}"))
                .unwrap_or_else(|| "       -".into())
        };
        println!(
            "{:>4}  {:<26} {:<27} {} {}",
            turn + 1,
            phrase,
            transcript,
            show(f),
            show(a)
        );
        // A quiet moment between turns, as a person would leave: the answer plays out.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let cpu = cpu_seconds(pid) - cpu_start;
    to_final.sort_by(f64::total_cmp);
    to_audio.sort_by(f64::total_cmp);
    println!();
    println!("| measure (over {turns} turns) | median | p95 |");
    println!("|---|---|---|");
    println!(
        "| end of speech → final transcript (ms) | {:.0} | {:.0} |",
        percentile(&to_final, 50.0),
        percentile(&to_final, 95.0)
    );
    println!(
        "| end of speech → first speech audio (ms) | {:.0} | {:.0} |",
        percentile(&to_audio, 50.0),
        percentile(&to_audio, 95.0)
    );
    println!();
    println!("commands understood exactly: {understood}/{turns}");
    println!(
        "server CPU: {cpu:.2} s for {audio_seconds:.1} s of audio = {:.3} CPU s per audio s",
        cpu / audio_seconds.max(0.001)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
