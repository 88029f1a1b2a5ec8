// Interop test of the MAIN voxio server's voice pipeline (`/voice`) against the official
// `socket.io-client`, with real speech: WAVs are made at test time with Debian's `flite`
// (voices slt, rms, awb, kal16) and `espeak-ng` (+ `sox`), stripped of their header, padded
// with silence and streamed as PCM16 chunks at real-time pace (a drift-free 20 ms schedule).
//
// Stories:
//   1. real speech end to end, several voices: the event sequence of every turn, the to-do
//      list, and the share of command phrases understood exactly (printed);
//   2. silence and white noise make no turn;
//   3. 48 kHz stereo after `audio.start` is understood like 16 kHz mono (over the default
//      transport: polling, then upgrade to WebSocket);
//   4. bad input gets `error {code}` and the connection goes on;
//   5. barge-in: speaking over the assistant clears playback (latency printed);
//   6. a socket leaving mid-utterance gives its decoder back.
//
// All PIN-authenticated sockets share one to-do list (user "pin"), so story 1 starts a
// fresh server per voice (two voices at a time), and story 6 has its own server.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";
import { startVoxioServer, bounded, sleep, toBuffer } from "./helpers.js";
import { flite, plainWords, readWav, wordErrors } from "./speech.js";

const execFileP = promisify(execFile);

const NSP = "/voice";
const RATE = 16_000;
const CHUNK_MS = 20;
const CHUNK_16K = 640; // 20 ms of 16 kHz mono PCM16
const LEAD_MS = 500; // silence before the speech
const TAIL_MS = 1200; // silence after it
const ONSET_LEVEL = 1000; // |sample| that counts as the speech being voiced

// The command phrases of story 1, in the order spoken (each changes or reads the list).
const PHRASES = [
  "add buy milk to my list",
  "add eggs to my list",
  "what is on my list",
  "remove milk",
  "clear my list",
  "add bread to my list",
];

const VOICES = [
  { label: "flite slt", make: (text, file) => flite("slt", text, file) },
  { label: "flite rms", make: (text, file) => flite("rms", text, file) },
  { label: "flite awb", make: (text, file) => flite("awb", text, file) },
  { label: "flite kal16", make: (text, file) => flite("kal16", text, file) },
  { label: "espeak-ng en-us", make: (text, file) => espeak(text, file) },
];

// Share of phrases understood exactly, over all voices, that the test asks for. The command
// grammar alone reached 29/30 here, by hearing every utterance as a command (and so acting on
// speech that was none). Whisper, with the grammar's reading taken only where Whisper scores
// those very words as likely for the audio, measured 29 of 30 in every run (the one miss is
// espeak-ng's "add buy milk", heard as "and my milk"); before that scoring, 22 to 26. On the
// slower machines of 2026-12-07 the same build heard 28 in every run but one (flite rms
// "remove milk" heard as nothing, and "add buy milk" again), and 27 once (espeak-ng's "add
// bread to my list" heard as "and render my list."). The floor is one turn under what the
// machine hears, for CTranslate2's threads, which do not add up in the same order every run,
// and for the turns that sit on the edge of the no-speech rule; a scoring that stopped working
// falls to 22-26.
const MIN_OVERALL_SHARE = 27 / 30;

let TMP;
before(async () => {
  TMP = await mkdtemp(path.join(os.tmpdir(), "voxio-voice-"));
});
after(async () => {
  if (TMP) await rm(TMP, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------
// Audio: making WAVs, reading them, padding, streaming

let fileCounter = 0;
function tmpFile(name) {
  fileCounter += 1;
  return path.join(TMP, `${String(fileCounter).padStart(3, "0")}-${name.replace(/[^a-z0-9]+/gi, "_")}.wav`);
}

async function espeak(text, file) {
  const raw = file.replace(/\.wav$/, ".raw.wav");
  await execFileP("espeak-ng", ["-v", "en-us", "-w", raw, text], { timeout: 20_000 });
  await sox(raw, file, RATE, 1);
}

async function sox(input, output, rate, channels) {
  await execFileP("sox", [input, "-r", String(rate), "-c", String(channels), "-b", "16", output], {
    timeout: 20_000,
  });
}

/**
 * A clip ready to stream: `pcm` padded with LEAD_MS of silence before and TAIL_MS after, and
 * rounded up to whole chunks of CHUNK_MS. `speechChunk` is the first chunk after the lead;
 * `onsetChunk` the first whose samples reach ONSET_LEVEL.
 */
function padClip({ pcm, rate, channels }, text) {
  const frame = 2 * channels;
  const chunkBytes = (rate * CHUNK_MS * frame) / 1000;
  const lead = (rate * LEAD_MS * frame) / 1000;
  const tail = (rate * TAIL_MS * frame) / 1000;
  const total = Math.ceil((lead + pcm.length + tail) / chunkBytes) * chunkBytes;
  const padded = Buffer.alloc(total);
  pcm.copy(padded, lead);
  let onsetByte = lead;
  for (let i = 0; i + 1 < pcm.length; i += 2) {
    if (Math.abs(pcm.readInt16LE(i)) >= ONSET_LEVEL) {
      onsetByte = lead + i;
      break;
    }
  }
  return {
    text,
    rate,
    channels,
    chunkBytes,
    padded,
    speechMs: (pcm.length / frame / rate) * 1000,
    speechChunk: Math.floor(lead / chunkBytes),
    onsetChunk: Math.floor(onsetByte / chunkBytes),
  };
}

const clipCache = new Map();
/** `text` said by `voice`, as a padded 16 kHz mono clip (made once). */
async function speechClip(voice, text) {
  const key = `${voice.label}|${text}`;
  if (!clipCache.has(key)) {
    clipCache.set(
      key,
      (async () => {
        const file = tmpFile(`${voice.label}-${text}`);
        await voice.make(text, file);
        const wav = await readWav(file);
        assert.equal(wav.rate, RATE, `${voice.label} makes 16 kHz audio`);
        assert.equal(wav.channels, 1, `${voice.label} makes mono audio`);
        return { ...padClip(wav, text), file };
      })(),
    );
  }
  return clipCache.get(key);
}

/**
 * Streams `clip.padded` as `audio` events of `clip.chunkBytes`, one every CHUNK_MS from the
 * start (a drift-free schedule: chunk i goes at start + i * CHUNK_MS). Stops early after
 * `upTo` chunks, or when the socket disconnects. `ackLast` asks for an ack on the last chunk
 * and waits for it. Returns { start, sentAt[] } (performance.now() times).
 */
async function stream(socket, clip, { upTo = Infinity, ackLast = false } = {}) {
  const n = Math.min(clip.padded.length / clip.chunkBytes, upTo);
  const sentAt = [];
  const start = performance.now();
  let ack = null;
  for (let i = 0; i < n; i++) {
    const wait = start + i * CHUNK_MS - performance.now();
    if (wait > 0) await sleep(wait);
    if (!socket.connected) throw new Error(`socket disconnected while streaming "${clip.text}" (chunk ${i}/${n})`);
    const chunk = clip.padded.subarray(i * clip.chunkBytes, (i + 1) * clip.chunkBytes);
    if (ackLast && i === n - 1) ack = socket.timeout(10_000).emitWithAck("audio", chunk);
    else socket.emit("audio", chunk);
    sentAt.push(performance.now());
  }
  if (ack) {
    const body = await ack;
    assert.equal(body.bytes, clip.chunkBytes, `ack of the last chunk of "${clip.text}": ${JSON.stringify(body)}`);
  }
  return { start, sentAt };
}

/** `ms` of PCM16 mono 16 kHz: zeros, or uniform noise of ±amplitude (deterministic). */
function synthClip(text, ms, amplitude = 0) {
  const samples = (RATE * ms) / 1000;
  const pcm = Buffer.alloc(samples * 2);
  let x = 0x2545f491;
  for (let i = 0; i < samples && amplitude > 0; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const u = (x >>> 0) / 0x1_0000_0000;
    pcm.writeInt16LE(Math.round((u * 2 - 1) * amplitude), i * 2);
  }
  return { text, rate: RATE, channels: 1, chunkBytes: CHUNK_16K, padded: pcm, speechMs: ms };
}

// ---------------------------------------------------------------------------------------
// Socket.IO client with an event log

/**
 * Records every event a socket receives, with its time, in order (plus `connect`,
 * `disconnect`, `connect_error`). Waiting never consumes: it scans the log from a mark.
 */
class Recorder {
  constructor(socket) {
    this.socket = socket;
    this.log = [];
    this.waiters = new Set();
    socket.onAny((event, ...args) => this.push(event, args));
    for (const ev of ["connect", "disconnect", "connect_error"]) {
      socket.on(ev, (...args) => this.push(ev, args));
    }
  }

  push(event, args) {
    this.log.push({ event, args, t: performance.now(), i: this.log.length });
    for (const w of [...this.waiters]) w.check();
  }

  /** The index the next event will have. */
  get mark() {
    return this.log.length;
  }

  /** The first logged event at or after `from` matching `pred`, or null. */
  find(pred, from = 0) {
    for (let i = from; i < this.log.length; i++) if (pred(this.log[i])) return this.log[i];
    return null;
  }

  since(from) {
    return this.log.slice(from);
  }

  /**
   * The first event at or after `from` matching `pred`; rejects after `ms`, or at once if
   * the socket disconnects (unless `closeOk`).
   */
  waitFor(pred, { from = 0, ms = 5000, what = "the event", closeOk = false } = {}) {
    return new Promise((resolve, reject) => {
      let pos = from;
      const w = {
        check: () => {
          for (; pos < this.log.length; pos++) {
            const e = this.log[pos];
            if (pred(e)) return done(null, e);
            if (!closeOk && (e.event === "disconnect" || e.event === "connect_error")) {
              return done(new Error(`${e.event} (${describeArg(e.args[0])}) while waiting for ${what}; ${this.state(from)}`));
            }
          }
        },
      };
      const timer = setTimeout(() => done(new Error(`no ${what} within ${ms} ms; ${this.state(from)}`)), ms);
      const done = (err, value) => {
        clearTimeout(timer);
        this.waiters.delete(w);
        if (err) reject(err);
        else resolve(value);
      };
      this.waiters.add(w);
      w.check();
    });
  }

  state(from = 0) {
    const s = this.socket;
    const engine = s.io.engine;
    const transport = engine && engine.transport ? engine.transport.name : "none";
    const recent = this.since(from)
      .filter((e) => e.event !== "tts.audio")
      .slice(-14)
      .map((e) => (e.event.startsWith("transcript") || e.event === "error" ? `${e.event} ${JSON.stringify(e.args[0])}` : e.event));
    const audio = this.since(from).filter((e) => e.event === "tts.audio").length;
    return `connected=${s.connected}, transport=${transport}, tts.audio since mark: ${audio}, events since mark (without tts.audio): [${recent.join(", ")}]`;
  }
}

function describeArg(a) {
  if (a === undefined) return "";
  if (a instanceof Error) return `${a.message}${a.data ? ` ${JSON.stringify(a.data)}` : ""}`;
  return typeof a === "string" ? a : JSON.stringify(a);
}

/** Matches event `name` whose first argument passes `where`. */
const ev =
  (name, where = () => true) =>
  (e) =>
    e.event === name && where(e.args[0]);

/**
 * Connects to /voice of `server` with the PIN (never reconnecting) and waits for
 * `session.ready`. Returns { socket, rec, items (the list at connection), close() }.
 */
async function connect(server, { transports = ["websocket"], cleanup } = {}) {
  const opts = { forceNew: true, reconnection: false, timeout: 5000, auth: { pin: server.pin } };
  if (transports) opts.transports = transports;
  const socket = io(server.httpUrl + NSP, opts);
  const rec = new Recorder(socket);
  const close = () => {
    socket.disconnect();
    socket.io._close();
  };
  if (cleanup) cleanup(close);
  try {
    const ready = await rec.waitFor(ev("session.ready"), { ms: 10_000, what: '"session.ready"' });
    assert.deepEqual(ready.args[0], { pipeline: true }, "session.ready body");
    const names = rec.log.map((e) => e.event).filter((n) => n !== "connect");
    assert.deepEqual(names, ["authenticated", "todos", "session.ready"], "events on connection");
  } catch (err) {
    close();
    throw err;
  }
  const todos = rec.find(ev("todos"));
  return { socket, rec, close, items: todos.args[0].items };
}

// ---------------------------------------------------------------------------------------
// Turns

/**
 * Streams `clip` and waits for the end of its turn: `transcript.final`, then (when it is
 * not empty) `tts.stopped`. Returns { from, events, sent, final }.
 */
async function runTurn(conn, clip, { finalMs = 10_000, ttsMs = 30_000 } = {}) {
  const { rec, socket } = conn;
  const from = rec.mark;
  const sent = await stream(socket, clip);
  const fin = await rec.waitFor(ev("transcript.final"), {
    from,
    ms: finalMs,
    what: `transcript.final of "${clip.text}" (within ${finalMs} ms after streaming it)`,
  });
  // Every turn is answered, one that was not understood too.
  await rec.waitFor((e) => e.event === "tts.stopped" || (e.event === "error" && e.i > fin.i), {
    from: fin.i,
    ms: ttsMs,
    what: `tts.stopped after the reply to "${clip.text}"`,
  });
  return { from, events: rec.since(from), sent, final: fin.args[0].text };
}

const METRIC_FIELDS = ["vadStopMs", "sttFinalMs", "assistantFirstMs", "ttsFirstMs", "totalMs"];

/**
 * Checks one speech turn's events (from the first audio chunk to tts.stopped); returns a
 * list of problems (empty: all good) and the turn's metrics and speech bytes.
 *
 * Expected: vad.speech_started < transcript.partial (at least one when `needPartial`, the
 * first before vad.speech_stopped) < vad.speech_stopped < transcript.final; then the answer:
 * assistant.text.delta (one or more, adding up to assistant.text.done), todos, and speech:
 * tts.started < metrics < tts.audio (seq 1, 2, ..., chunks of at most 100 ms) <
 * tts.stopped {reason}, which comes last. The answer streams, so its speech may start before
 * its text is done.
 */
function checkTurn(events, { needPartial, stopReason = "done", prefix = "" }) {
  const problems = [];
  const bad = (msg) => problems.push(prefix + msg);
  const names = events.map((e) => e.event);
  const count = (n) => names.filter((x) => x === n).length;
  const at = (n) => names.indexOf(n);

  for (const n of [
    "vad.speech_started",
    "vad.speech_stopped",
    "transcript.final",
    "assistant.text.done",
    "todos",
    "tts.started",
    "metrics",
    "tts.stopped",
  ]) {
    if (count(n) !== 1) bad(`${count(n)} × ${n} (expected 1)`);
  }
  if (count("assistant.text.delta") < 1) bad("no assistant.text.delta");
  for (const n of ["error", "playback.clear", "disconnect"]) {
    if (count(n)) bad(`unexpected ${n}: ${JSON.stringify(events.filter((e) => e.event === n).map((e) => e.args[0]))}`);
  }

  const ss = at("vad.speech_started");
  const sst = at("vad.speech_stopped");
  const fin = at("transcript.final");
  const firstDelta = at("assistant.text.delta");
  const lastDelta = names.lastIndexOf("assistant.text.delta");
  const done = at("assistant.text.done");
  const todos = at("todos");
  const ts = at("tts.started");
  const met = at("metrics");
  const stop = at("tts.stopped");
  const partials = events.filter((e) => e.event === "transcript.partial");
  const firstPartial = at("transcript.partial");
  const audio = events.filter((e) => e.event === "tts.audio");
  const firstAudio = at("tts.audio");
  const lastAudio = names.lastIndexOf("tts.audio");

  const inOrder = (label, ...idx) => {
    for (let k = 1; k < idx.length; k++) {
      if (!(idx[k - 1] >= 0 && idx[k] >= 0 && idx[k - 1] < idx[k])) {
        bad(`order: ${label} (indices ${idx.join(" < ")}; events: ${names.filter((n) => n !== "tts.audio").join(", ")})`);
        return;
      }
    }
  };
  inOrder("speech_started < speech_stopped < final < first delta", ss, sst, fin, firstDelta);
  inOrder("last delta < done < tts.stopped", lastDelta, done, stop);
  inOrder("final < todos < tts.stopped", fin, todos, stop);
  inOrder("final < tts.started < metrics < tts.stopped", fin, ts, met, stop);
  if (stop >= 0 && stop !== names.length - 1) bad(`events after tts.stopped: ${names.slice(stop + 1).join(", ")}`);
  if (needPartial && partials.length === 0) bad("no transcript.partial for an utterance over 1 s");
  if (partials.length) {
    inOrder("speech_started < first transcript.partial < speech_stopped", ss, firstPartial, sst);
    const lastPartial = names.lastIndexOf("transcript.partial");
    inOrder("last transcript.partial < transcript.final", lastPartial, fin);
    for (const p of partials) {
      if (typeof p.args[0]?.text !== "string" || !p.args[0].text) bad(`partial without text: ${JSON.stringify(p.args[0])}`);
    }
  }
  if (fin >= 0 && typeof events[fin].args[0]?.text !== "string") bad(`final without text: ${JSON.stringify(events[fin].args[0])}`);
  const reply = done >= 0 ? events[done].args[0]?.text : undefined;
  if (done >= 0 && (typeof reply !== "string" || !reply)) bad(`assistant.text.done without text: ${JSON.stringify(events[done].args[0])}`);
  const deltas = events.filter((e) => e.event === "assistant.text.delta").map((e) => e.args[0]?.text);
  if (done >= 0 && deltas.join("") !== reply) bad(`assistant.text.delta texts ${JSON.stringify(deltas)} do not add up to assistant.text.done ${JSON.stringify(reply)}`);
  if (todos >= 0 && !Array.isArray(events[todos].args[0]?.items)) bad(`todos without items: ${JSON.stringify(events[todos].args[0])}`);

  // Speech: 100 ms chunks between tts.started and tts.stopped, seq 1, 2, ...
  let bytes = 0;
  const rate = ts >= 0 ? events[ts].args[0]?.sampleRate : undefined;
  if (ts >= 0 && !(Number.isInteger(rate) && rate > 0)) bad(`tts.started without sampleRate: ${JSON.stringify(events[ts].args[0])}`);
  if (audio.length === 0) bad("no tts.audio");
  else inOrder("tts.started < metrics < first tts.audio, last tts.audio < tts.stopped", ts, met, firstAudio, lastAudio + 0.5, stop);
  audio.forEach((e, k) => {
    const [meta, data] = e.args;
    if (!meta || meta.seq !== k + 1 || meta.sampleRate !== rate) {
      bad(`tts.audio #${k + 1} meta ${JSON.stringify(meta)} (expected seq ${k + 1}, sampleRate ${rate})`);
    }
    let buf;
    try {
      buf = toBuffer(data);
    } catch (err) {
      bad(`tts.audio #${k + 1}: ${err.message}`);
      return;
    }
    const full = rate ? (rate / 10) * 2 : 0;
    if (buf.length % 2 || buf.length === 0 || buf.length > full) {
      bad(`tts.audio #${k + 1} has ${buf.length} bytes (100 ms at ${rate} Hz is ${full})`);
    }
    bytes += buf.length;
  });
  if (stop >= 0 && events[stop].args[0]?.reason !== stopReason) {
    bad(`tts.stopped ${JSON.stringify(events[stop].args[0])} (expected reason "${stopReason}")`);
  }

  const metrics = met >= 0 ? events[met].args[0] : null;
  if (metrics) {
    for (const f of METRIC_FIELDS) {
      if (!(typeof metrics[f] === "number" && Number.isFinite(metrics[f]) && metrics[f] >= 0)) {
        bad(`metrics.${f} is not a number: ${JSON.stringify(metrics)}`);
      }
    }
    if (!Number.isInteger(metrics.droppedChunks)) bad(`metrics.droppedChunks: ${JSON.stringify(metrics)}`);
  }
  return {
    problems,
    metrics,
    bytes,
    reply,
    items: todos >= 0 ? events[todos].args[0]?.items : undefined,
    final: fin >= 0 ? events[fin].args[0]?.text : undefined,
  };
}

function sayList(items) {
  if (items.length === 0) return "Your list is empty.";
  if (items.length === 1) return `Your list has ${items[0]}.`;
  return `Your list has ${items.slice(0, -1).join(", ")}, and ${items[items.length - 1]}.`;
}

/** What the built-in assistant answers to one of PHRASES, and the list after it. */
function expectedEffect(phrase, items) {
  let m;
  if ((m = /^add (.+) to my list$/.exec(phrase))) {
    return { reply: `Added ${m[1]} to your list.`, items: [...items, m[1]] };
  }
  if (phrase === "what is on my list") return { reply: sayList(items), items };
  if ((m = /^remove (.+)$/.exec(phrase))) {
    let i = items.indexOf(m[1]);
    if (i < 0) i = items.findIndex((x) => x.split(/\s+/).includes(m[1]));
    if (i < 0) return { reply: `${m[1]} is not on your list.`, items };
    return { reply: `Removed ${items[i]} from your list.`, items: items.filter((_, k) => k !== i) };
  }
  if (phrase === "clear my list") return { reply: "Your list is now empty.", items: [] };
  throw new Error(`no model for "${phrase}"`);
}

/** Runs `tasks` (functions giving promises) at most `width` at a time; results in order. */
async function pool(tasks, width) {
  const results = new Array(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const k = next++;
      results[k] = await tasks[k]();
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, tasks.length) }, worker));
  return results;
}

const pct = (x) => `${(x * 100).toFixed(0)}%`;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
};

// ---------------------------------------------------------------------------------------
// Story 1: real speech, several voices

/** Speaks PHRASES in `voice` to a fresh server and checks every turn. */
async function runVoice(voice) {
  const out = { voice: voice.label, rows: [], error: null, log: "", started: performance.now() };
  let server;
  let conn;
  try {
    const clips = [];
    for (const phrase of PHRASES) clips.push(await speechClip(voice, phrase));
    server = await startVoxioServer();
    conn = await connect(server);
    let items = conn.items;
    if (items.length) throw new Error(`a fresh server has a list: ${JSON.stringify(items)}`);
    for (const clip of clips) {
      const phrase = clip.text;
      const row = { phrase, final: null, exact: false, problems: [], metrics: null, speechMs: clip.speechMs };
      out.rows.push(row);
      let turn;
      const from = conn.rec.mark;
      try {
        turn = await runTurn(conn, clip);
      } catch (err) {
        row.problems.push(err.message);
        const fin = conn.rec.find(ev("transcript.final"), from);
        row.final = fin ? fin.args[0].text : null;
        // Let whatever is under way finish before the next utterance.
        await conn.rec
          .waitFor(ev("tts.stopped"), { from: conn.rec.mark, ms: 8000, what: "tts.stopped" })
          .catch(() => {});
        continue;
      }
      row.final = turn.final;
      row.exact = typeof turn.final === "string" && plainWords(turn.final) === phrase;
      const checked = checkTurn(turn.events, { needPartial: clip.speechMs > 1000 });
      row.problems.push(...checked.problems);
      row.metrics = checked.metrics;
      row.bytes = checked.bytes;
      // A removal or a clearing heard with low confidence is asked back, the list unchanged.
      const asked = /^Did you say .+\? Say yes or no\.$/.test(checked.reply ?? "") && /^(remove|clear)/.test(phrase);
      if (asked && JSON.stringify(checked.items) !== JSON.stringify(items)) {
        row.problems.push(`asked ${JSON.stringify(checked.reply)} but changed the list to ${JSON.stringify(checked.items)}`);
      }
      if (row.exact && !asked) {
        const want = expectedEffect(phrase, items);
        if (checked.reply !== want.reply) row.problems.push(`reply ${JSON.stringify(checked.reply)}, expected ${JSON.stringify(want.reply)}`);
        if (JSON.stringify(checked.items) !== JSON.stringify(want.items)) {
          row.problems.push(`list ${JSON.stringify(checked.items)} after "${phrase}" on ${JSON.stringify(items)}, expected ${JSON.stringify(want.items)}`);
        }
      }
      if (Array.isArray(checked.items)) items = checked.items;
    }
  } catch (err) {
    out.error = err;
  } finally {
    if (conn) conn.close();
    if (server) {
      if (out.error || out.rows.some((r) => r.problems.length)) out.log = server.log();
      await server.stop();
    }
    out.ms = performance.now() - out.started;
  }
  return out;
}

describe("story 1: real speech end to end, several voices", () => {
  let results = [];
  before(
    async () => {
      results = await pool(
        VOICES.map((v) => () => runVoice(v)),
        2,
      );
    },
    { timeout: 300_000 },
  );

  for (const [k, voice] of VOICES.entries()) {
    test(`${voice.label}: every utterance makes a complete turn in order`, { timeout: 10_000 }, () => {
      const r = results[k];
      assert.ok(r, `${voice.label} ran`);
      const problems = r.rows.flatMap((row) => row.problems.map((p) => `"${row.phrase}" (heard ${JSON.stringify(row.final)}): ${p}`));
      if (r.error || problems.length) {
        process.stderr.write(`\n===== voxio output (${voice.label}) =====\n${r.log.slice(-30_000)}\n===== end =====\n`);
      }
      if (r.error) throw r.error;
      assert.equal(r.rows.length, PHRASES.length, "every phrase was spoken");
      assert.deepEqual(problems, [], `${voice.label}: turn problems`);
    });
  }

  test("share of command phrases understood exactly (printed)", { timeout: 10_000 }, (t) => {
    const lines = [];
    const pad = (s, n) => String(s).padEnd(n);
    lines.push("");
    lines.push(`${pad("voice", 18)}${pad("exact", 8)}${pad("share", 7)}${pad("median totalMs", 16)}${pad("dropped", 9)}misheard`);
    let exact = 0;
    let total = 0;
    const totals = [];
    for (const r of results) {
      if (!r) continue;
      const n = r.rows.length;
      const e = r.rows.filter((x) => x.exact).length;
      exact += e;
      total += n;
      const t = r.rows.filter((x) => x.metrics).map((x) => x.metrics.totalMs);
      totals.push(...t);
      const miss = r.rows
        .filter((x) => !x.exact)
        .map((x) => `"${x.phrase}" → ${JSON.stringify(x.final)}`)
        .join("; ");
      const dropped = Math.max(0, ...r.rows.filter((x) => x.metrics).map((x) => x.metrics.droppedChunks));
      lines.push(`${pad(r.voice, 18)}${pad(`${e}/${n}`, 8)}${pad(n ? pct(e / n) : "-", 7)}${pad(median(t), 16)}${pad(dropped, 9)}${miss || "-"}${r.error ? ` [error: ${r.error.message}]` : ""}`);
    }
    lines.push(`${pad("overall", 18)}${pad(`${exact}/${total}`, 8)}${pad(total ? pct(exact / total) : "-", 7)}${pad(median(totals), 16)}`);
    console.log(lines.join("\n"));
    assert.equal(total, VOICES.length * PHRASES.length, "every voice spoke every phrase");
    assert.ok(
      exact / total >= MIN_OVERALL_SHARE,
      `share understood exactly ${exact}/${total} = ${pct(exact / total)}, expected at least ${pct(MIN_OVERALL_SHARE)}`,
    );
  });
});

// ---------------------------------------------------------------------------------------
// Stories 2-5: one server

const SLT = VOICES[0];

describe("stories 2-5 on one server", () => {
  let server;
  before(async () => {
    server = await startVoxioServer();
  });
  after(async () => {
    if (server) await server.stop();
  });

  /** Sends `text` and waits for the whole spoken answer (tts.stopped "done"). */
  async function textTurn(conn, text) {
    const from = conn.rec.mark;
    conn.socket.emit("text", { text });
    const done = await conn.rec.waitFor(ev("assistant.text.done"), { from, ms: 5000, what: `the reply to text "${text}"` });
    await conn.rec.waitFor(ev("tts.stopped"), { from, ms: 20_000, what: `tts.stopped after text "${text}"` });
    return done.args[0].text;
  }

  test(
    "story 2: silence and white noise make no turn",
    { timeout: 40_000 },
    bounded(() => server, 35_000, async (t, cleanup) => {
      const conn = await connect(server, { cleanup });
      for (const clip of [synthClip("3 s of silence", 3000, 0), synthClip("3 s of white noise ±3000", 3000, 3000)]) {
        const from = conn.rec.mark;
        await stream(conn.socket, clip, { ackLast: true });
        await sleep(2000);
        const names = conn.rec.since(from).map((e) => e.event);
        for (const n of ["vad.speech_started", "transcript.partial", "vad.speech_stopped", "transcript.final", "tts.started", "error"]) {
          assert.ok(!names.includes(n), `${clip.text}: unexpected ${n} (events: ${names.join(", ")})`);
        }
      }
      assert.ok(conn.socket.connected, "still connected");
    }),
  );

  test(
    "story 3: 48 kHz stereo after audio.start is understood like 16 kHz mono (default transport: polling, then upgrade)",
    { timeout: 60_000 },
    bounded(() => server, 55_000, async (t, cleanup) => {
      const conn = await connect(server, { transports: undefined, cleanup });
      const engine = conn.socket.io.engine;
      const transportAtReady = engine.transport.name;
      let upgradeTimer;
      const upgraded = new Promise((resolve, reject) => {
        if (engine.transport.name === "websocket") return resolve();
        engine.once("upgrade", resolve);
        upgradeTimer = setTimeout(() => reject(new Error("no upgrade to websocket within 15 s")), 15_000);
      });
      cleanup(() => clearTimeout(upgradeTimer));
      const phrase = "add eggs to my list";
      const mono = await speechClip(SLT, phrase);
      const wav48 = tmpFile(`slt-48k-stereo-${phrase}`);
      await sox(mono.file, wav48, 48_000, 2);
      const raw48 = await readWav(wav48);
      assert.equal(raw48.rate, 48_000);
      assert.equal(raw48.channels, 2);
      const stereo = padClip(raw48, phrase);
      assert.equal(stereo.chunkBytes, 3840, "20 ms of 48 kHz stereo PCM16");

      const first = await runTurn(conn, mono);
      const a = checkTurn(first.events, { needPartial: mono.speechMs > 1000, prefix: "16 kHz mono: " });
      assert.deepEqual(a.problems, [], "16 kHz mono turn");

      const ack = await conn.socket.timeout(5000).emitWithAck("audio.start", { encoding: "pcm16", sampleRate: 48_000, channels: 2 });
      assert.deepEqual(ack, { ok: true }, "audio.start 48000/2 ack");
      const second = await runTurn(conn, stereo);
      const b = checkTurn(second.events, { needPartial: stereo.speechMs > 1000, prefix: "48 kHz stereo: " });
      assert.deepEqual(b.problems, [], "48 kHz stereo turn");

      console.log(`story 3: 16 kHz mono heard ${JSON.stringify(first.final)}; 48 kHz stereo heard ${JSON.stringify(second.final)}`);
      assert.equal(plainWords(first.final), phrase, "16 kHz mono transcript");
      assert.equal(plainWords(second.final), plainWords(first.final), "48 kHz stereo transcript equals 16 kHz mono");
      assert.equal(b.reply, a.reply, "same reply");
      const ms = (x) => x.metrics.totalMs;
      console.log(
        `story 3: totalMs 16 kHz mono ${ms(a)}, 48 kHz stereo ${ms(b)}; transport at session.ready ${transportAtReady}, now ${engine.transport.name}`,
      );
      await upgraded;
      assert.equal(engine.transport.name, "websocket", "upgraded to websocket");
    }),
  );

  test(
    "story 4: bad input gets error {code} and the connection goes on",
    { timeout: 40_000 },
    bounded(() => server, 35_000, async (t, cleanup) => {
      const conn = await connect(server, { cleanup });
      const { socket, rec } = conn;
      let goodAcks = 0;
      const stillUsable = async (what) => {
        assert.ok(socket.connected, `${what}: still connected`);
        const ack = await socket.timeout(5000).emitWithAck("audio", Buffer.alloc(CHUNK_16K));
        goodAcks += 1;
        assert.equal(ack.bytes, CHUNK_16K, `${what}: a good chunk is acked (${JSON.stringify(ack)})`);
        assert.equal(rec.find(ev("disconnect")), null, `${what}: no disconnect`);
      };
      const expectError = async (what, code, send) => {
        const from = rec.mark;
        const ackBody = await send();
        const err = await rec.waitFor(ev("error"), { from, ms: 5000, what: `error for ${what}` });
        const body = err.args[0];
        assert.equal(body.code, code, `${what}: error code (${JSON.stringify(body)})`);
        assert.equal(typeof body.message, "string", `${what}: message`);
        if (ackBody !== undefined) {
          assert.equal(ackBody?.error?.code, code, `${what}: the ack carries the error (${JSON.stringify(ackBody)})`);
        }
        await stillUsable(what);
      };

      await stillUsable("before bad input");
      await expectError("audio.start with sampleRate 8000", "unsupported_format", () => {
        socket.emit("audio.start", { encoding: "pcm16", sampleRate: 8000, channels: 1 });
      });
      await expectError("a 641-byte chunk", "bad_chunk", () =>
        socket.timeout(5000).emitWithAck("audio", Buffer.alloc(641)),
      );
      await expectError("a 200,000-byte chunk", "chunk_too_large", () =>
        socket.timeout(5000).emitWithAck("audio", Buffer.alloc(200_000)),
      );
      assert.ok(goodAcks >= 4);

      // Still 16 kHz mono: real speech makes a full turn.
      const clip = await speechClip(SLT, "add bread to my list");
      const turn = await runTurn(conn, clip);
      const c = checkTurn(turn.events, { needPartial: clip.speechMs > 1000 });
      assert.deepEqual(c.problems, [], "a speech turn after the bad input");
      assert.equal(plainWords(turn.final), "add bread to my list");
    }),
  );

  test(
    "story 5: barge-in: speaking over the assistant clears playback",
    { timeout: 60_000 },
    bounded(() => server, 55_000, async (t, cleanup) => {
      const conn = await connect(server, { cleanup });
      const { socket, rec } = conn;
      await textTurn(conn, "clear my list");
      const six = ["milk", "bread", "eggs", "butter", "cheese", "apples"];
      let from = rec.mark;
      for (const item of six) socket.emit("text", { text: `add ${item} to my list` });
      await rec.waitFor(ev("todos", (b) => b.items.length === six.length), { from, ms: 5000, what: "todos with six items" });
      await rec.waitFor(ev("tts.stopped", (b) => b.reason === "done"), { from, ms: 20_000, what: 'tts.stopped "done" after six adds' });
      const replaced = rec.since(from).filter((e) => e.event === "tts.stopped" && e.args[0].reason === "replaced").length;
      console.log(`story 5: six quick text adds gave ${replaced} tts.stopped "replaced"`);

      const clip = await speechClip(SLT, "add coffee to my list");
      from = rec.mark;
      socket.emit("text", { text: "what is on my list" });
      const done = await rec.waitFor(ev("assistant.text.done"), { from, ms: 5000, what: "the list read out" });
      assert.equal(done.args[0].text, `Your list has ${six.slice(0, -1).join(", ")}, and ${six[5]}.`);
      const started = await rec.waitFor(ev("tts.started"), { from, ms: 10_000, what: "tts.started" });
      await rec.waitFor(ev("tts.audio"), { from: started.i, ms: 5000, what: "tts.audio" });

      const speak = rec.mark;
      const sent = await stream(socket, clip);
      const clear = await rec.waitFor(ev("playback.clear"), { from: speak, ms: 5000, what: "playback.clear" });
      const fin = await rec.waitFor(ev("transcript.final"), { from: speak, ms: 10_000, what: "transcript.final" });
      await rec.waitFor(ev("tts.stopped", (b) => b.reason === "done"), { from: fin.i, ms: 20_000, what: "the new answer's tts.stopped" });

      const events = rec.since(speak);
      const names = events.map((e) => e.event);
      const stoppedAt = names.indexOf("tts.stopped");
      assert.deepEqual(events[stoppedAt].args[0], { reason: "interrupted" }, "the long answer is interrupted");
      assert.ok(names.indexOf("vad.speech_started") < stoppedAt, "speech_started, then tts.stopped");
      assert.ok(stoppedAt < clear.i - speak, "tts.stopped, then playback.clear");
      assert.equal(typeof clear.args[0]?.playedMs, "number", `playback.clear {playedMs} (${JSON.stringify(clear.args[0])})`);
      const nextStart = names.indexOf("tts.started");
      const stale = names.slice(stoppedAt, nextStart).filter((n) => n === "tts.audio").length;
      assert.equal(stale, 0, "no tts.audio of the interrupted answer after tts.stopped");
      const readOut = rec.since(started.i).slice(0, speak - started.i).filter((e) => e.event === "tts.audio").length;
      assert.ok(readOut > 0, "the long answer was streaming when the user spoke");

      // The interrupting turn itself is a whole turn.
      const turnEvents = events.filter((e, k) => !(k === stoppedAt) && e.event !== "playback.clear" && !(e.event === "tts.audio" && k < stoppedAt));
      const c = checkTurn(turnEvents, { needPartial: clip.speechMs > 1000 });
      assert.deepEqual(c.problems, [], "the interrupting turn");
      assert.equal(plainWords(fin.args[0].text), "add coffee to my list");
      assert.deepEqual(c.items, [...six, "coffee"]);

      const padEnd = sent.sentAt[clip.speechChunk];
      const voiced = sent.sentAt[clip.onsetChunk];
      const latency = clear.t - padEnd;
      console.log(
        `story 5: barge-in latency: playback.clear ${latency.toFixed(0)} ms after the first speech chunk (end of the ${LEAD_MS} ms lead), ` +
          `${(clear.t - voiced).toFixed(0)} ms after the first chunk reaching |sample| >= ${ONSET_LEVEL} ` +
          `(${((clip.onsetChunk - clip.speechChunk) * CHUNK_MS).toFixed(0)} ms into the WAV); playedMs ${clear.args[0].playedMs}`,
      );
      assert.ok(latency < 1000, `barge-in latency ${latency.toFixed(0)} ms, expected under 1000 ms`);
    }),
  );
});

// ---------------------------------------------------------------------------------------
// Story 6: disconnect mid-utterance

describe("story 6: a socket leaving mid-utterance gives its decoder back", () => {
  let server;
  before(async () => {
    server = await startVoxioServer();
  });
  after(async () => {
    if (server) await server.stop();
  });

  test(
    "two other sockets then complete two turns each, concurrently",
    { timeout: 90_000 },
    bounded(() => server, 85_000, async (t, cleanup) => {
      const speakB = ["add eggs to my list", "add bread to my list"];
      const speakC = ["add buy milk to my list", "add coffee to my list"];
      const clipA = await speechClip(SLT, "add bread to my list");
      const clipsB = await Promise.all(speakB.map((p) => speechClip(SLT, p)));
      const clipsC = await Promise.all(speakC.map((p) => speechClip(VOICES[1], p)));

      const a = await connect(server, { cleanup });
      const b = await connect(server, { cleanup });
      b.socket.emit("text", { text: "clear my list" });
      await b.rec.waitFor(ev("tts.stopped"), { ms: 10_000, what: "tts.stopped after clear" });

      // A: half of the utterance, then leave.
      const speechChunks = clipA.padded.length / clipA.chunkBytes - clipA.speechChunk - TAIL_MS / CHUNK_MS;
      const half = clipA.speechChunk + Math.floor(speechChunks / 2);
      await stream(a.socket, clipA, { upTo: half });
      await a.rec.waitFor(ev("vad.speech_started"), { ms: 2000, what: "A's vad.speech_started" });
      assert.equal(a.rec.find(ev("vad.speech_stopped")), null, "A is mid-utterance");
      a.close();

      const c = await connect(server, { cleanup });
      const talk = async (conn, clips) => {
        const turns = [];
        for (const clip of clips) {
          const turn = await runTurn(conn, clip);
          turns.push({ clip, turn, checked: checkTurn(turn.events, { needPartial: clip.speechMs > 1000, prefix: `"${clip.text}": ` }) });
        }
        return turns;
      };
      const [tb, tc] = await Promise.all([talk(b, clipsB), talk(c, clipsC)]);
      const all = [...tb, ...tc];
      console.log(`story 6: B heard ${tb.map((x) => JSON.stringify(x.turn.final)).join(", ")}; C heard ${tc.map((x) => JSON.stringify(x.turn.final)).join(", ")}`);
      assert.deepEqual(all.flatMap((x) => x.checked.problems), [], "every turn of B and C");
      for (const x of all) {
        const errors = x.turn.events.filter((e) => e.event === "error").map((e) => e.args[0]);
        assert.deepEqual(errors, [], `no error (e.g. stt_busy) in "${x.clip.text}"`);
      }
      // The turns really overlapped: both decoders were in use at once.
      for (let k = 0; k < 2; k++) {
        const span = (x) => [x.turn.events.find((e) => e.event === "vad.speech_started").t, x.turn.events.find((e) => e.event === "transcript.final").t];
        const [sb, eb] = span(tb[k]);
        const [sc, ec] = span(tc[k]);
        assert.ok(Math.max(sb, sc) < Math.min(eb, ec), `turn ${k + 1} of B and C overlap`);
      }
      const understood = all.filter((x) => plainWords(x.turn.final) === x.clip.text).map((x) => /^add (.+) to my list$/.exec(x.clip.text)[1]);
      const items = [b, c]
        .flatMap((conn) => conn.rec.log.filter((e) => e.event === "todos"))
        .sort((x, y) => x.t - y.t)
        .pop().args[0].items;
      for (const item of understood) assert.ok(items.includes(item), `${item} is on the list ${JSON.stringify(items)}`);
    }),
  );
});

// ---------------------------------------------------------------------------------------
// Story 7: open speech. Everyday sentences are heard word for word (word error rate
// printed) and change nothing; free-form items land word for word; a pause in the middle of
// an utterance does not cut it in two; long silence and noise make no turn.

// Everyday sentences of our own choosing (no digits: how a number is written is not what
// is being measured here).
const SENTENCES = [
  "the train to the airport leaves every half hour",
  "please turn the music down a little",
  "my sister is coming over for dinner tonight",
  "the weather has been lovely this week",
  "i think the meeting went really well",
  "the library closes early on sundays",
];
// Free-form items: the words between "add" and "to my list" land on the list exactly as
// speech recognition heard them (never words of a grammar's vocabulary instead). The share
// that lands as it was said is printed and must not fall below MIN_ITEMS_EXACT: the rest
// differ by words Whisper tiny.en mishears in these synthetic voices.
const FREE_ITEMS = ["call the plumber about the sink", "pick up the dry cleaning"];
const MIN_ITEMS_EXACT = 0.375;
const OPEN_VOICES = [VOICES[0], VOICES[1], VOICES[2], VOICES[4]];
const MAX_WER = 0.1;

/** Streams `clip` and waits for its transcript.final and, if it was not empty, the reply. */
async function openTurn(conn, clip) {
  const { rec } = conn;
  const from = rec.mark;
  await stream(conn.socket, clip);
  const fin = await rec.waitFor(ev("transcript.final"), { from, ms: 10_000, what: `transcript.final of "${clip.text}"` });
  const todos = await rec.waitFor(ev("todos"), { from: fin.i, ms: 5000, what: `todos after "${clip.text}"` });
  const items = todos.args[0].items;
  // Let the reply finish, so the next utterance is not a barge-in.
  await rec.waitFor(ev("tts.stopped"), { from: fin.i, ms: 20_000, what: `tts.stopped after "${clip.text}"` });
  const turns = rec.since(from).filter((e) => e.event === "vad.speech_started").length;
  return { heard: fin.args[0].text, items, turns };
}

async function runOpenSpeech(voice) {
  const out = { voice: voice.label, rows: [], items: [], error: null, log: "" };
  let server;
  let conn;
  try {
    const clips = [];
    for (const s of SENTENCES) clips.push(await speechClip(voice, s));
    const itemClips = [];
    for (const item of FREE_ITEMS) itemClips.push(await speechClip(voice, `add ${item} to my list`));
    server = await startVoxioServer();
    conn = await connect(server);
    conn.socket.emit("text", { text: "add milk to my list" });
    const start = await conn.rec.waitFor(ev("todos", (b) => b.items.length === 1), { ms: 5000, what: "the list with milk" });
    await conn.rec.waitFor(ev("tts.stopped"), { from: start.i, ms: 20_000, what: "tts.stopped after adding milk" });
    let list = ["milk"];
    for (const clip of clips) {
      const turn = await openTurn(conn, clip);
      const { errors, words } = wordErrors(clip.text, turn.heard);
      out.rows.push({ text: clip.text, heard: turn.heard, errors, words, before: list, after: turn.items });
      list = turn.items;
    }
    for (const [k, clip] of itemClips.entries()) {
      const turn = await openTurn(conn, clip);
      out.items.push({ item: FREE_ITEMS[k], heard: turn.heard, before: list, after: turn.items });
      list = turn.items;
    }
  } catch (err) {
    out.error = err;
  } finally {
    if (conn) conn.close();
    if (server) {
      if (out.error) out.log = server.log();
      await server.stop();
    }
  }
  return out;
}

describe("story 7: open speech", () => {
  let results = [];
  before(
    async () => {
      results = await pool(
        OPEN_VOICES.map((v) => () => runOpenSpeech(v)),
        2,
      );
    },
    { timeout: 400_000 },
  );

  test("everyday sentences are heard word for word (word error rate printed)", { timeout: 10_000 }, () => {
    const lines = ["", "story 7: everyday sentences"];
    let errors = 0;
    let words = 0;
    for (const r of results) {
      if (r.error) {
        process.stderr.write(`\n===== voxio output (${r.voice}) =====\n${r.log.slice(-20_000)}\n===== end =====\n`);
        throw r.error;
      }
      const e = r.rows.reduce((a, x) => a + x.errors, 0);
      const w = r.rows.reduce((a, x) => a + x.words, 0);
      errors += e;
      words += w;
      lines.push(`  ${r.voice.padEnd(16)} WER ${pct(e / w).padStart(4)} (${e}/${w})`);
      for (const x of r.rows.filter((x) => x.errors)) lines.push(`      "${x.text}" → ${JSON.stringify(x.heard)}`);
    }
    lines.push(`  ${"overall".padEnd(16)} WER ${pct(errors / words).padStart(4)} (${errors}/${words})`);
    console.log(lines.join("\n"));
    assert.equal(results.length, OPEN_VOICES.length);
    assert.ok(errors / words <= MAX_WER, `word error rate ${pct(errors / words)}, expected at most ${pct(MAX_WER)}`);
  });

  test("speech that is not a command changes nothing on the list", { timeout: 10_000 }, () => {
    const changed = results.flatMap((r) =>
      r.rows.filter((x) => JSON.stringify(x.before) !== JSON.stringify(x.after)).map((x) => `${r.voice}: "${x.heard}" changed ${JSON.stringify(x.before)} to ${JSON.stringify(x.after)}`),
    );
    console.log(`story 7: ${changed.length} list changes from ${results.reduce((a, r) => a + r.rows.length, 0)} sentences that are not commands`);
    assert.deepEqual(changed, []);
  });

  test("free-form items land as heard, and as said in a share (printed)", { timeout: 10_000 }, () => {
    const all = results.flatMap((r) => r.items.map((x) => ({ ...x, voice: r.voice })));
    const exact = all.filter((x) => x.after.includes(x.item));
    const lines = [`story 7: free-form items: ${exact.length} of ${all.length} landed word for word as said`];
    const wrong = [];
    for (const x of all) {
      const added = x.after.filter((item) => !x.before.includes(item));
      const heard = /^(?:add|at|and|i'd) (.+) to my list$/.exec(plainWords(x.heard));
      if (!x.after.includes(x.item)) lines.push(`    ${x.voice}: "${x.item}" heard as ${JSON.stringify(x.heard)}, added ${JSON.stringify(added)}`);
      // What was added is what Whisper heard (or, for a command the grammar heard alike,
      // the grammar's words), nothing else; and a heard add command adds.
      if (added.length > 1 || (added.length === 1 && heard && plainWords(added[0]) !== heard[1] && added[0] !== x.item)) {
        wrong.push(`${x.voice}: heard ${JSON.stringify(x.heard)} but added ${JSON.stringify(added)}`);
      }
      if (heard && added.length === 0) wrong.push(`${x.voice}: heard ${JSON.stringify(x.heard)} and added nothing`);
    }
    console.log(lines.join("\n"));
    assert.deepEqual(wrong, [], "items land as heard");
    assert.ok(exact.length / all.length >= MIN_ITEMS_EXACT, `${exact.length} of ${all.length} word for word, expected at least ${pct(MIN_ITEMS_EXACT)}`);
  });
});

describe("story 8: pauses, silence and noise", () => {
  let server;
  before(async () => {
    server = await startVoxioServer();
  });
  after(async () => {
    if (server) await server.stop();
  });

  test(
    "a 500 ms pause in the middle of an utterance keeps it one turn, heard whole (at least 4 of 5)",
    { timeout: 120_000 },
    bounded(() => server, 115_000, async (t, cleanup) => {
      const first = await speechClip(SLT, "add milk and");
      const second = await speechClip(SLT, "eggs to my list");
      // The voiced part of a clip: from the first to the last sample of |s| >= 300 (flite's
      // own WAVs start and end with silence), so that the pause is 500 ms of silence.
      const trim = (clip) => {
        const pcm = clip.padded;
        let a = 0;
        let b = pcm.length - 2;
        while (a < b && Math.abs(pcm.readInt16LE(a)) < 300) a += 2;
        while (b > a && Math.abs(pcm.readInt16LE(b)) < 300) b -= 2;
        return pcm.subarray(a, b + 2);
      };
      const gap = Buffer.alloc((RATE * 2 * 500) / 1000);
      const lead = Buffer.alloc((RATE * 2 * LEAD_MS) / 1000);
      const tail = Buffer.alloc((RATE * 2 * TAIL_MS) / 1000);
      const joined = Buffer.concat([lead, trim(first), gap, trim(second), tail]);
      const padded = Buffer.concat([joined, Buffer.alloc((CHUNK_16K - (joined.length % CHUNK_16K)) % CHUNK_16K)]);
      const clip = { text: "add milk and … eggs to my list", rate: RATE, channels: 1, chunkBytes: CHUNK_16K, padded, speechMs: 0 };
      const conn = await connect(server, { cleanup });
      const tries = [];
      for (let k = 0; k < 5; k++) {
        const turn = await openTurn(conn, clip);
        tries.push(turn);
      }
      // Whole: one turn, and both halves heard in it (a turn heard as nothing is no better
      // than a cut one to the user).
      const whole = tries.filter((x) => x.turns === 1 && /milk/i.test(x.heard) && /eggs?\b/i.test(x.heard)).length;
      console.log(`story 8: one turn in ${whole} of 5 tries; heard ${tries.map((x) => JSON.stringify(x.heard)).join(", ")}`);
      assert.ok(whole >= 4, `one turn in ${whole} of 5 tries`);
    }),
  );

  test(
    "30 s of silence and 30 s of white noise make no turn and no transcript",
    { timeout: 60_000 },
    bounded(() => server, 55_000, async (t, cleanup) => {
      const conns = [await connect(server, { cleanup }), await connect(server, { cleanup })];
      const clips = [synthClip("30 s of silence", 30_000, 0), synthClip("30 s of white noise ±3000", 30_000, 3000)];
      const froms = conns.map((c) => c.rec.mark);
      await Promise.all(conns.map((c, k) => stream(c.socket, clips[k], { ackLast: true })));
      await sleep(1500);
      for (const [k, c] of conns.entries()) {
        const names = c.rec.since(froms[k]).map((e) => e.event);
        for (const n of ["vad.speech_started", "transcript.partial", "vad.speech_stopped", "transcript.final", "tts.started", "error"]) {
          assert.ok(!names.includes(n), `${clips[k].text}: unexpected ${n} (events: ${names.join(", ")})`);
        }
      }
      console.log("story 8: 30 s of silence and 30 s of white noise: no turn, no transcript");
    }),
  );
});

// ---------------------------------------------------------------------------------------
// Story 9: many talkers at once, no silent loss. Sixteen sockets say a command at the same
// moment to a server whose transcript queue holds two turns: every turn ends either with a
// transcript and its answer, or with error {code: "busy"} and a spoken apology; none with
// silence or an empty transcript.

describe("story 9: sixteen talkers at once", () => {
  let server;
  before(async () => {
    server = await startVoxioServer({ env: { VOXIO_STT_QUEUE: "2" } });
  });
  after(async () => {
    if (server) await server.stop();
  });

  test(
    "every turn is transcribed or told busy, never lost",
    { timeout: 120_000 },
    bounded(() => server, 115_000, async (t, cleanup) => {
      const clip = await speechClip(SLT, "add bread to my list");
      const conns = [];
      for (let k = 0; k < 16; k++) conns.push(await connect(server, { cleanup }));
      const froms = conns.map((c) => c.rec.mark);
      await Promise.all(conns.map((c) => stream(c.socket, clip)));
      const outcomes = await Promise.all(
        conns.map(async (c, k) => {
          const end = await c.rec.waitFor((e) => e.event === "transcript.final" || (e.event === "error" && e.args[0]?.code === "busy"), {
            from: froms[k],
            ms: 60_000,
            what: `talker ${k + 1}'s transcript.final or busy error`,
          });
          // Either way the talker hears an answer.
          const said = await c.rec.waitFor(ev("assistant.text.done"), { from: end.i, ms: 60_000, what: `talker ${k + 1}'s answer` });
          return { busy: end.event === "error", heard: end.event === "error" ? null : end.args[0].text, answer: said.args[0].text };
        }),
      );
      const busy = outcomes.filter((o) => o.busy).length;
      const understood = outcomes.filter((o) => !o.busy && plainWords(o.heard) === "add bread to my list").length;
      console.log(`story 9: 16 talkers, queue of 2: ${outcomes.length - busy} transcribed (${understood} exactly), ${busy} told busy`);
      for (const o of outcomes) {
        if (o.busy) assert.match(o.answer, /busy/i, "a busy turn hears the apology");
        else assert.ok(o.heard, "a transcribed turn has words, not an empty transcript");
      }
      assert.ok(busy > 0, "a queue of two is too short for sixteen talkers: some are told busy");
      assert.ok(outcomes.length - busy > 0, "some turns are transcribed");
    }),
  );
});
