// The voxio voice assistant page: connects to the /voice namespace with the official
// Socket.IO client (served by voxio at /socket.io/socket.io.js), authenticates with a PIN,
// streams the microphone as 20 ms PCM16 frames (16 kHz mono, from capture-worklet.js) and
// plays the assistant's speech (tts.audio) through Web Audio with a small jitter buffer.
//
// Browsers open the microphone only in a secure context (https://, or http://localhost): on
// any other address the page says so and which address to open instead; typing still works.
//
// window.voxioStats exposes counters for tests and debugging.
"use strict";

(() => {
  const TARGET_RATE = 16000;
  const FRAME_SAMPLES = 320; // 20 ms at 16 kHz
  const JITTER_S = 0.15; // how far ahead playback starts (and restarts after an underrun)
  const POSITION_EVERY_MS = 250;
  const METRIC_ROWS = 10;
  // `?capture=native` skips the 16 kHz AudioContext: capture at the device's rate and resample
  // in the worklet, as browsers without 16 kHz contexts do (for testing that path).
  const NATIVE_CAPTURE = new URLSearchParams(window.location.search).get("capture") === "native";
  const METRIC_LABELS = ["End of speech", "Final transcript", "First reply", "First audio", "Total", "Dropped chunks"];

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"),
    notice: $("notice"),
    auth: $("auth"),
    authForm: $("auth-form"),
    pin: $("pin"),
    authSubmit: $("auth-submit"),
    authError: $("auth-error"),
    authMic: $("auth-mic"),
    voice: $("voice"),
    mic: $("mic"),
    micState: $("mic-state"),
    level: $("level"),
    levelBar: $("level-bar"),
    speech: $("speech-state"),
    partial: $("partial"),
    final: $("final"),
    reply: $("reply"),
    ttsState: $("tts-state"),
    textForm: $("text-form"),
    textInput: $("text-input"),
    textSend: $("text-send"),
    todos: $("todos"),
    todosEmpty: $("todos-empty"),
    metricsBody: $("metrics-body"),
    metricsEmpty: $("metrics-empty"),
    transport: $("transport"),
  };

  const stats = {
    state: "connecting",
    connects: 0,
    recoveries: 0, // reconnections that got the same socket back (nothing missed)
    transport: "",
    authenticated: false,
    ready: false,
    pipeline: null,
    micUnavailable: null, // why the microphone cannot start here: "insecure-context" | "no-capture" | "no-worklet"
    captureRate: null,
    audioFramesSent: 0,
    audioFramesDropped: 0,
    speechStarted: 0,
    partials: 0,
    finals: [],
    replies: [],
    todos: [],
    ttsStarted: 0,
    ttsChunks: 0,
    ttsBytes: 0,
    ttsScheduled: 0,
    ttsScheduledMs: 0, // over every answer
    answerScheduledMs: 0, // of the current (or last) answer
    answerPending: 0, // chunks of the current answer scheduled and not yet played out
    ttsUnderruns: 0,
    ttsDiscarded: 0,
    ttsStopped: [],
    playbackClears: 0,
    clears: [], // each stop of an answer mid-way: { playedMs, scheduledMs, stopped (chunks cut) }
    positionsSent: 0,
    lastPlayedMs: 0,
    metrics: [],
    errors: [],
    events: [], // the last 200 events received (tts.audio counted, not logged): [name, body]
  };
  window.voxioStats = stats;

  // -------------------------------------------------------------------------------------
  // Status and notices

  function setStatus(state, text) {
    stats.state = state;
    el.status.dataset.state = state;
    el.status.textContent = text;
  }

  let noticeTimer = null;
  function notice(text, ms = 8000) {
    el.notice.textContent = text;
    el.notice.hidden = false;
    clearTimeout(noticeTimer);
    if (ms) noticeTimer = setTimeout(() => (el.notice.hidden = true), ms);
  }

  // -------------------------------------------------------------------------------------
  // Whether this page can open the microphone at all

  stats.micUnavailable = micUnavailableReason();
  if (stats.micUnavailable) {
    el.mic.disabled = true;
    el.mic.dataset.unavailable = stats.micUnavailable;
    el.micState.classList.add("warning");
    el.micState.replaceChildren(...micUnavailableMessage());
    el.authMic.replaceChildren(...micUnavailableMessage());
    el.authMic.hidden = false;
  }

  function micUnavailableReason() {
    // getUserMedia and AudioWorklet exist only in secure contexts.
    if (window.isSecureContext === false) return "insecure-context";
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return "no-capture";
    if (typeof AudioWorkletNode !== "function") return "no-worklet";
    return null;
  }

  /** Why the microphone cannot start here and what to do (text and links). */
  function micUnavailableMessage() {
    if (stats.micUnavailable === "insecure-context") {
      const { host, port, pathname, search } = window.location;
      const link = (href) => {
        const a = document.createElement("a");
        a.href = href;
        a.textContent = href;
        return a;
      };
      return [
        "The microphone cannot start at this address: browsers only open the microphone on https:// " +
          "or http://localhost. Open ",
        link(`https://${host}${pathname}${search}`),
        " instead, or ",
        link(`http://localhost${port ? `:${port}` : ""}${pathname}${search}`),
        " on the machine that runs voxio. Typing works here.",
      ];
    }
    if (stats.micUnavailable === "no-capture") {
      return ["The microphone cannot start: this browser cannot capture audio. Typing works here."];
    }
    return ["The microphone cannot start: this browser has no AudioWorklet. Typing works here."];
  }

  function updateTransport() {
    const engine = socket && socket.io.engine;
    const name = engine && engine.transport ? engine.transport.name : "";
    stats.transport = name;
    el.transport.textContent = `Transport: ${name || "—"}`;
  }

  if (typeof window.io !== "function") {
    setStatus("error", "Error: the Socket.IO client did not load.");
    return;
  }

  // -------------------------------------------------------------------------------------
  // Connection and authentication

  let rememberedPin = null; // kept in memory only, to authenticate again after a reconnection
  let pendingPin = null; // sent, not yet answered
  let retryTimer = null;

  // The last chunk of the answer being spoken that arrived: sent with every CONNECT, so a
  // node that restores this socket after another died goes on after it, not before.
  let heardSeq = 0;
  const socket = window.io("/voice", {
    reconnectionDelayMax: 5000,
    auth: (cb) => cb({ heard: heardSeq }),
  });

  socket.onAny((event, body) => {
    if (event === "tts.audio") return;
    stats.events.push([event, body === undefined ? null : body]);
    if (stats.events.length > 200) stats.events.shift();
  });

  socket.io.on("open", () => {
    updateTransport();
    socket.io.engine.on("upgrade", updateTransport);
  });
  socket.io.on("reconnect_attempt", () => setStatus("reconnecting", "Reconnecting…"));

  // What the socket was when its connection dropped: a recovered socket is that again.
  let beforeDrop = null;

  socket.on("connect", () => {
    stats.connects += 1;
    updateTransport();
    const was = beforeDrop;
    beforeDrop = null;
    if (socket.recovered && was) {
      // The server kept this socket, its authentication and its conversation, and has just
      // sent every event missed meanwhile: no PIN, nothing to start again.
      stats.recoveries += 1;
      stats.authenticated = was.authenticated;
      stats.ready = was.ready;
      setStatus(was.authenticated ? "authenticated" : "connected", "Reconnected — nothing lost");
      setVoiceEnabled(stats.ready);
      if (stats.ready && mic.running) sendAudioStart();
      return;
    }
    if (rememberedPin) {
      setStatus("connected", "Connected! Authenticating…");
      socket.emit("authenticate", { pin: rememberedPin });
    } else {
      setStatus("connected", "Connected! Ready to authenticate.");
      showAuthForm();
    }
  });

  socket.on("disconnect", (reason) => {
    beforeDrop = { authenticated: stats.authenticated, ready: stats.ready };
    stats.authenticated = false;
    stats.ready = false;
    updateTransport();
    setVoiceEnabled(false);
    // An answer being spoken plays on: if the socket comes back, the rest follows.
    if (reason === "io client disconnect" || reason === "io server disconnect") {
      beforeDrop = null;
      player.clear(false);
    }
    if (reason === "io client disconnect") {
      setStatus("error", "Disconnected.");
    } else if (reason === "io server disconnect") {
      // The server ended this socket (e.g. a logout): start again from the PIN.
      rememberedPin = null;
      setStatus("error", "Disconnected by the server. Reconnecting…");
      setTimeout(() => socket.connect(), 1000);
    } else {
      setStatus("reconnecting", "Reconnecting…");
    }
  });

  socket.on("connect_error", (err) => {
    const message = err && err.message ? err.message : "unknown error";
    if (socket.active) setStatus("reconnecting", `Connection failed (${message}). Reconnecting…`);
    else setStatus("error", `Error: connection refused (${message}).`);
  });

  function showAuthForm() {
    el.auth.hidden = false;
    el.voice.hidden = true;
    el.authSubmit.disabled = retryTimer !== null;
  }

  el.authForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const pin = el.pin.value.trim();
    if (!pin) {
      el.authError.textContent = "Enter the PIN.";
      el.pin.focus();
      return;
    }
    if (!socket.connected) {
      el.authError.textContent = "Not connected yet; try again in a moment.";
      return;
    }
    ensurePlayback(); // a user gesture: the moment to create the playback AudioContext
    el.authError.textContent = "";
    el.authSubmit.disabled = true;
    pendingPin = pin;
    socket.emit("authenticate", { pin });
  });

  socket.on("authenticated", () => {
    stats.authenticated = true;
    rememberedPin = pendingPin || rememberedPin;
    pendingPin = null;
    el.pin.value = "";
    el.authError.textContent = "";
    el.authSubmit.disabled = false;
    el.auth.hidden = true;
    el.voice.hidden = false;
    setStatus("authenticated", "Authenticated");
    updateTransport();
  });

  socket.on("auth_error", (body) => {
    const { code, message, retryAfterMs } = body || {};
    pendingPin = null;
    if (rememberedPin) {
      // Authenticating again after a reconnection failed: ask for the PIN.
      rememberedPin = null;
      showAuthForm();
    }
    setStatus("error", "Error: authentication failed.");
    el.authError.textContent = message || code || "Authentication failed.";
    el.authSubmit.disabled = false;
    if (retryAfterMs > 0) startRetryCountdown(retryAfterMs, message || code || "Too many attempts.");
    el.pin.select();
  });

  function startRetryCountdown(ms, message) {
    clearInterval(retryTimer);
    const until = Date.now() + ms;
    el.authSubmit.disabled = true;
    const tick = () => {
      const left = until - Date.now();
      if (left <= 0) {
        clearInterval(retryTimer);
        retryTimer = null;
        el.authSubmit.disabled = false;
        el.authError.textContent = `${message} You can try again now.`;
        return;
      }
      el.authError.textContent = `${message} Try again in ${Math.ceil(left / 1000)} s.`;
    };
    retryTimer = setInterval(tick, 250);
    tick();
  }

  socket.on("session.ready", (body) => {
    stats.ready = true;
    stats.pipeline = body ? Boolean(body.pipeline) : null;
    setVoiceEnabled(true);
    if (mic.running) sendAudioStart();
    if (document.activeElement === document.body || el.auth.contains(document.activeElement)) {
      (el.mic.disabled ? el.textInput : el.mic).focus();
    }
  });

  function setVoiceEnabled(on) {
    const pipeline = stats.pipeline !== false;
    el.mic.disabled = Boolean(stats.micUnavailable) || (!(on && pipeline) && !mic.running);
    el.textSend.disabled = !on;
    if (on && !pipeline && !stats.micUnavailable) {
      el.micState.textContent = "Voice is turned off on this server; typing works.";
    }
  }

  // -------------------------------------------------------------------------------------
  // What the server tells

  socket.on("todos", (body) => {
    const items = (body && Array.isArray(body.items) ? body.items : []).map((item) =>
      typeof item === "string" ? item : item && item.text ? String(item.text) : JSON.stringify(item),
    );
    stats.todos = items;
    el.todos.replaceChildren(
      ...items.map((text) => {
        const li = document.createElement("li");
        li.textContent = text;
        return li;
      }),
    );
    el.todosEmpty.hidden = items.length > 0;
  });

  socket.on("vad.speech_started", () => {
    stats.speechStarted += 1;
    el.speech.dataset.speaking = "true";
    el.speech.textContent = "Listening to you…";
    el.partial.textContent = "…";
  });

  socket.on("vad.speech_stopped", () => {
    el.speech.dataset.speaking = "false";
    el.speech.textContent = "Thinking…";
  });

  socket.on("transcript.partial", (body) => {
    stats.partials += 1;
    el.partial.textContent = (body && body.text) || "…";
  });

  let replyText = "";
  socket.on("transcript.final", (body) => {
    const text = (body && body.text) || "";
    stats.finals.push(text);
    el.partial.textContent = "…";
    el.speech.textContent = "\u00a0";
    if (text) {
      el.final.textContent = text;
      startReply();
    } else {
      el.final.textContent = "(nothing recognised)";
    }
  });

  function startReply() {
    replyText = "";
    el.reply.textContent = "…";
    el.reply.dataset.interrupted = "false";
  }

  socket.on("assistant.text.delta", (body) => {
    replyText += (body && body.text) || "";
    el.reply.textContent = replyText;
  });

  socket.on("assistant.text.done", (body) => {
    heardSeq = 0; // a new answer: its chunks count from 1
    replyText = body && typeof body.text === "string" ? body.text : replyText;
    stats.replies.push(replyText);
    el.reply.textContent = replyText || "—";
  });

  socket.on("tts.started", (body) => {
    stats.ttsStarted += 1;
    player.begin(body && body.sampleRate);
    el.ttsState.textContent = "Speaking…";
  });

  socket.on("tts.audio", (meta, data) => {
    const seq = meta && Number.isInteger(meta.seq) ? meta.seq : 0;
    if (seq > 0 && seq <= heardSeq) return; // had already (an answer finished by another node)
    heardSeq = seq;
    stats.ttsChunks += 1;
    player.enqueue(meta || {}, data);
  });

  socket.on("tts.stopped", (body) => {
    heardSeq = 0;
    const reason = (body && body.reason) || "done";
    stats.ttsStopped.push(reason);
    if (reason === "done") {
      player.finish();
    } else {
      // "interrupted" (barge-in) or "replaced" (a newer answer, e.g. to typed text, follows).
      player.clear(true);
      if (reason === "interrupted") el.reply.dataset.interrupted = "true";
    }
  });

  socket.on("playback.clear", () => {
    stats.playbackClears += 1;
    player.clear(true);
    el.reply.dataset.interrupted = "true";
  });

  socket.on("metrics", (body) => {
    const m = body || {};
    stats.metrics.push(m);
    const tr = document.createElement("tr");
    const cells = [
      `#${stats.metrics.length}`,
      m.vadStopMs,
      m.sttFinalMs,
      m.assistantFirstMs,
      m.ttsFirstMs,
      m.totalMs,
      m.droppedChunks,
    ];
    cells.forEach((value, i) => {
      const cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) cell.scope = "row";
      else cell.dataset.label = METRIC_LABELS[i - 1];
      cell.textContent = value === null || value === undefined ? "—" : String(value);
      tr.append(cell);
    });
    el.metricsBody.prepend(tr);
    while (el.metricsBody.rows.length > METRIC_ROWS) el.metricsBody.deleteRow(-1);
    el.metricsEmpty.hidden = true;
  });

  socket.on("error", (body) => {
    const { code, message } = body || {};
    stats.errors.push({ code, message });
    notice(`Server error: ${message || code || "unknown"}${code ? ` (${code})` : ""}`);
  });

  // -------------------------------------------------------------------------------------
  // Typed input

  el.textForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.textInput.value.trim();
    if (!text) return;
    if (!stats.ready || !socket.connected) {
      notice("Not connected: the message was not sent.");
      return;
    }
    ensurePlayback();
    socket.emit("text", { text });
    el.final.textContent = text;
    startReply();
    el.textInput.value = "";
  });

  // -------------------------------------------------------------------------------------
  // Microphone capture

  const mic = { running: false, busy: false, stream: null, ctx: null, node: null, sink: null, src: null };
  let levelValue = 0;
  let levelFrame = 0;

  el.mic.addEventListener("click", () => {
    if (mic.busy) return;
    ensurePlayback();
    if (mic.running) stopMic();
    else startMic();
  });

  function sendAudioStart() {
    socket.emit("audio.start", { encoding: "pcm16", sampleRate: TARGET_RATE, channels: 1 });
  }

  /** An AudioContext at 16 kHz when the browser can feed it the stream; else the default rate. */
  function openCaptureContext(stream) {
    if (!NATIVE_CAPTURE) {
      try {
        const ctx = new AudioContext({ sampleRate: TARGET_RATE, latencyHint: "interactive" });
        try {
          return { ctx, src: ctx.createMediaStreamSource(stream) };
        } catch {
          // e.g. Firefox: a stream cannot feed a context at another rate.
          ctx.close().catch(() => {});
        }
      } catch {
        // No 16 kHz contexts here.
      }
    }
    // The default rate; the worklet resamples to 16 kHz.
    const ctx = new AudioContext({ latencyHint: "interactive" });
    return { ctx, src: ctx.createMediaStreamSource(stream) };
  }

  async function startMic() {
    if (stats.micUnavailable) {
      el.micState.replaceChildren(...micUnavailableMessage());
      return;
    }
    mic.busy = true;
    el.mic.disabled = true;
    el.micState.textContent = "Starting the microphone…";
    try {
      mic.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      const { ctx, src } = openCaptureContext(mic.stream);
      mic.ctx = ctx;
      mic.src = src;
      stats.captureRate = ctx.sampleRate;
      await ctx.audioWorklet.addModule("/capture-worklet.js");
      mic.node = new AudioWorkletNode(ctx, "voxio-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { targetRate: TARGET_RATE, frameSamples: FRAME_SAMPLES },
      });
      mic.node.port.onmessage = onFrame;
      // A silent sink keeps the graph pulling the worklet in every browser.
      mic.sink = ctx.createGain();
      mic.sink.gain.value = 0;
      src.connect(mic.node);
      mic.node.connect(mic.sink);
      mic.sink.connect(ctx.destination);
      if (ctx.state !== "running") await ctx.resume();
      mic.running = true;
      if (stats.ready && socket.connected) sendAudioStart();
      el.mic.textContent = "Stop microphone";
      el.mic.dataset.on = "true";
      el.micState.textContent =
        ctx.sampleRate === TARGET_RATE
          ? "Listening: speak to the assistant."
          : `Listening (resampling ${ctx.sampleRate} Hz to 16 kHz): speak to the assistant.`;
    } catch (err) {
      releaseMic();
      const why = err && err.name === "NotAllowedError" ? "permission was denied" : (err && err.message) || String(err);
      el.micState.textContent = "Microphone off.";
      notice(`Could not start the microphone: ${why}.`, 0);
    } finally {
      mic.busy = false;
      el.mic.disabled = !mic.running && !stats.ready;
    }
  }

  function stopMic() {
    if (stats.ready && socket.connected) socket.emit("audio.stop");
    releaseMic();
    el.mic.textContent = "Start microphone";
    el.mic.dataset.on = "false";
    el.micState.textContent = "Microphone off.";
    el.speech.textContent = "\u00a0";
    el.mic.disabled = !stats.ready;
  }

  function releaseMic() {
    mic.running = false;
    if (mic.node) {
      mic.node.port.onmessage = null;
      mic.node.disconnect();
    }
    if (mic.src) mic.src.disconnect();
    if (mic.stream) mic.stream.getTracks().forEach((t) => t.stop());
    if (mic.ctx) mic.ctx.close().catch(() => {});
    Object.assign(mic, { stream: null, ctx: null, node: null, sink: null, src: null });
    levelValue = 0;
    drawLevel();
  }

  function onFrame(event) {
    const msg = event.data;
    if (!msg || msg.type !== "frame" || !mic.running) return;
    levelValue = Math.max(msg.level, levelValue * 0.85);
    if (!levelFrame) levelFrame = requestAnimationFrame(drawLevel);
    if (stats.ready && socket.connected) {
      socket.emit("audio", msg.pcm);
      stats.audioFramesSent += 1;
    } else {
      stats.audioFramesDropped += 1;
    }
  }

  function drawLevel() {
    levelFrame = 0;
    // RMS to a 60 dB scale.
    const db = levelValue > 0 ? 20 * Math.log10(levelValue) : -Infinity;
    const pct = Math.max(0, Math.min(100, Math.round(((db + 60) / 60) * 100)));
    el.levelBar.style.width = `${pct}%`;
    el.levelBar.dataset.hot = String(pct >= 90);
    el.level.setAttribute("aria-valuenow", String(pct));
  }

  // -------------------------------------------------------------------------------------
  // Playback of the assistant's speech

  function ensurePlayback() {
    if (!player.ctx) {
      try {
        player.ctx = new AudioContext({ latencyHint: "interactive" });
      } catch (err) {
        notice(`Speech playback is unavailable: ${err.message}`);
        return null;
      }
    }
    if (player.ctx.state === "suspended") player.ctx.resume().catch(() => {});
    return player.ctx;
  }

  const player = {
    ctx: null,
    rate: 16000,
    nextTime: 0,
    chunks: [], // { src, start, dur } scheduled and not yet counted as played
    playedDoneMs: 0,
    active: false, // an answer is being played (from tts.started until drained or cleared)
    finishing: false, // tts.stopped {done} came: drain, then stop reporting
    timer: null,

    begin(rate) {
      if (this.active) this.clear(false);
      if (rate) this.rate = rate;
      this.active = true;
      this.finishing = false;
      this.playedDoneMs = 0;
      this.chunks = [];
      this.nextTime = 0;
      stats.answerScheduledMs = 0;
      stats.answerPending = 0;
      clearInterval(this.timer);
      this.timer = setInterval(() => this.tick(), POSITION_EVERY_MS);
    },

    enqueue(meta, data) {
      const ctx = ensurePlayback();
      if (!ctx) return;
      let bytes;
      if (data instanceof ArrayBuffer) bytes = new DataView(data);
      else if (ArrayBuffer.isView(data)) bytes = new DataView(data.buffer, data.byteOffset, data.byteLength);
      else return;
      const n = bytes.byteLength >> 1;
      stats.ttsBytes += bytes.byteLength;
      if (!n) return;
      if (!this.active) {
        // Not part of an answer being played (it was cleared): never play it late.
        stats.ttsDiscarded += 1;
        return;
      }
      const rate = meta.sampleRate || this.rate;
      let buffer;
      try {
        buffer = ctx.createBuffer(1, n, rate);
      } catch (err) {
        notice(`Cannot play speech at ${rate} Hz: ${err.message}`);
        return;
      }
      const samples = buffer.getChannelData(0);
      for (let i = 0; i < n; i++) samples[i] = bytes.getInt16(i * 2, true) / 32768;
      const now = ctx.currentTime;
      if (this.nextTime < now + 0.02) {
        if (this.nextTime > 0) stats.ttsUnderruns += 1;
        this.nextTime = now + JITTER_S;
      }
      const src = ctx.createBufferSource();
      src.buffer = buffer;
      src.connect(ctx.destination);
      src.start(this.nextTime);
      this.chunks.push({ src, start: this.nextTime, dur: buffer.duration });
      this.nextTime += buffer.duration;
      stats.ttsScheduled += 1;
      stats.ttsScheduledMs += buffer.duration * 1000;
      stats.answerScheduledMs += buffer.duration * 1000;
      stats.answerPending = this.chunks.length;
    },

    /** Milliseconds of this answer played so far. */
    playedMs() {
      if (!this.ctx) return this.playedDoneMs;
      const now = this.ctx.currentTime;
      const pending = [];
      for (const c of this.chunks) {
        if (now >= c.start + c.dur) this.playedDoneMs += c.dur * 1000;
        else pending.push(c);
      }
      this.chunks = pending;
      stats.answerPending = pending.length;
      let ms = this.playedDoneMs;
      for (const c of pending) if (now > c.start) ms += (now - c.start) * 1000;
      return Math.round(ms);
    },

    report(playedMs) {
      stats.lastPlayedMs = playedMs;
      if (socket.connected && stats.ready) {
        socket.emit("playback.position", { playedMs });
        stats.positionsSent += 1;
      }
    },

    tick() {
      if (!this.active) return;
      const played = this.playedMs();
      this.report(played);
      if (this.finishing && this.chunks.length === 0) this.stop("Not speaking.");
    },

    /** The answer's audio is all here: play it out, then stop reporting (see tick). */
    finish() {
      if (this.active) this.finishing = true;
    },

    /** Stops at once; reports the position when `report` (and an answer was playing). */
    clear(report) {
      const wasActive = this.active;
      const played = this.playedMs();
      const pending = this.chunks.length;
      for (const c of this.chunks) {
        try {
          c.src.stop();
        } catch {
          // already stopped
        }
        c.src.disconnect();
      }
      this.chunks = [];
      this.nextTime = 0;
      stats.answerPending = 0;
      if (wasActive) stats.clears.push({ playedMs: played, scheduledMs: Math.round(stats.answerScheduledMs), stopped: pending });
      if (wasActive && report) this.report(played);
      this.stop("Stopped.");
    },

    stop(text) {
      this.active = false;
      this.finishing = false;
      clearInterval(this.timer);
      this.timer = null;
      el.ttsState.textContent = text;
    },
  };

  window.addEventListener("pagehide", () => {
    if (mic.running) releaseMic();
  });
})();
