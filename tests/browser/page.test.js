// The voxio page (static/) in real headless Chromium (Debian's `chromium`, driven by
// playwright-core; no browser is ever downloaded), against the MAIN voxio server with its real
// voice pipeline. The microphone is Chromium's fake capture device playing a WAV made at test
// time with flite ("add bread to my list", padded with silence by sox; Chromium loops it).
//
// Story, at 1280×800 and at 390×844 (a fresh server each, so each starts with an empty list):
// the page loads; the Socket.IO client ends on WebSocket (the upgrade answers 101);
// "Connected! Ready to authenticate." shows; the PIN is typed with the keyboard and submitted;
// the PIN form hides and "Authenticated" shows; the microphone button starts capture; the spoken
// words come back as the final transcript; the to-do list shows "bread"; the assistant's speech
// arrives (tts.audio) and is scheduled and played (window.voxioStats), its position reported;
// a latency row appears; the microphone stops; a typed question gets an answer naming bread.
// The page never overflows the viewport sideways, and the console shows no error.
//
// Long-polling only (a server with VOXIO_TRANSPORTS=polling), capturing at the device's rate
// (the page at `?capture=native`, so the worklet resamples to 16 kHz, as in browsers without
// 16 kHz AudioContexts): the same speech round trip, the frames going up in polling payloads.
//
// Barge-in: a second fake microphone says the phrase, then (1 s later) a long sentence that
// starts while the answer is playing: the server sends playback.clear, the page stops its
// scheduled audio at once and reports how much it played (playback.position).
//
// Screenshots of each state go to tests/browser/artifacts/ (gitignored).
//
// Environment: CHROMIUM_BIN (default /usr/bin/chromium), VOXIO_BIN (see ../interop/helpers.js).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { existsSync } from "node:fs";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { startVoxioServer, bounded } from "../interop/helpers.js";
import { ARTIFACTS, CHROMIUM, CLIENT_JS, launchChromium, until, waitStats, watchedPage } from "./support.js";

const execFileP = promisify(execFile);
const PHRASE = "add bread to my list";

const BARGE_IN = "please tell me a very long story about the weather in the mountains";

let tmp;
let browser; // its fake microphone says PHRASE
let bargeWav; // PHRASE, then BARGE_IN soon after

/** Launches Debian's Chromium, its fake microphone playing `wav` (looped). */
function launch(wav) {
  return launchChromium(chromium, CHROMIUM, wav);
}

async function flite(text, file) {
  await execFileP("flite", ["-voice", "slt", "-t", text, "-o", file], { timeout: 20_000 });
}

/** sox: `inputs` joined, as 16 kHz mono 16-bit, with `effects` (e.g. pad). */
async function sox(inputs, output, effects = []) {
  await execFileP("sox", [...inputs, "-r", "16000", "-c", "1", "-b", "16", output, ...effects], { timeout: 20_000 });
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_BIN)`);
  assert.ok(existsSync(CLIENT_JS), `Socket.IO client bundle not found at ${CLIENT_JS} (npm ci in client/)`);
  await mkdir(ARTIFACTS, { recursive: true });
  tmp = await mkdtemp(path.join(os.tmpdir(), "voxio-browser-"));

  // The fake microphone: 1 s of silence, the phrase, 3 s of silence (room for the answer
  // before Chromium loops the file and says it again).
  const phrase = path.join(tmp, "phrase.wav");
  const wav = path.join(tmp, "mic.wav");
  await flite(PHRASE, phrase);
  await sox([phrase], wav, ["pad", "1", "3"]);
  // Barge-in: 1 s of silence, the phrase, 1 s of silence (the turn ends 0.6 s in and the
  // answer starts playing), the long sentence over the answer, 3 s of silence.
  const long = path.join(tmp, "long.wav");
  const gap = path.join(tmp, "gap.wav");
  bargeWav = path.join(tmp, "barge.wav");
  await flite(BARGE_IN, long);
  await sox([phrase], gap, ["pad", "0", "1"]);
  await sox([gap, long], bargeWav, ["pad", "1", "3"]);

  browser = await launch(wav);
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/**
 * A new page of `browserToUse` on `server`, at `viewport`, recording console errors, page
 * errors and failed requests in `problems` and every WebSocket handshake (DevTools protocol)
 * in `sockets`; `screenshot(label)` saves the full page under ARTIFACTS as `name-NN-label.png`.
 */
async function openPage(browserToUse, server, viewport, name, cleanup) {
  const context = await browserToUse.newContext({ viewport, deviceScaleFactor: 1 });
  cleanup(() => context.close());
  await context.grantPermissions(["microphone"], { origin: server.httpUrl });
  const { page, problems, sockets } = await watchedPage(context);

  let shot = 0;
  const screenshot = async (label) => {
    shot += 1;
    const file = path.join(ARTIFACTS, `${name}-${String(shot).padStart(2, "0")}-${label}.png`);
    await page.screenshot({ path: file, fullPage: true });
  };
  return { page, problems, sockets, screenshot };
}

/** Loads the page, types the PIN, presses Enter and waits for session.ready. */
async function signIn(page, server, query = "") {
  await page.goto(`${server.httpUrl}/${query}`, { waitUntil: "load", timeout: 15_000 });
  await page.getByText("Connected! Ready to authenticate.").waitFor({ timeout: 10_000 });
  await page.getByLabel("PIN").fill(server.pin);
  await page.getByLabel("PIN").press("Enter");
  await page.locator("#auth").waitFor({ state: "hidden", timeout: 10_000 });
  await waitStats(page, () => window.voxioStats.ready, 10_000, "session.ready");
}

const VIEWPORTS = [
  { name: "desktop", viewport: { width: 1280, height: 800 } },
  { name: "phone", viewport: { width: 390, height: 844 } },
];

for (const { name, viewport } of VIEWPORTS) {
  let server = null;
  test(
    `the voice page at ${viewport.width}×${viewport.height}: connect, PIN, speak, to-do, speech back`,
    { timeout: 75_000 },
    bounded(() => server, 60_000, async (t, cleanup) => {
      server = await startVoxioServer({ env: { VOXIO_CLIENT_JS: CLIENT_JS } });
      cleanup(() => server.stop());
      const { page, problems, sockets, screenshot: shoot } = await openPage(browser, server, viewport, name, cleanup);
      const t0 = Date.now();
      const steps = [];
      const screenshot = async (label) => {
        steps.push(`${label} ${Date.now() - t0}ms`);
        await shoot(label);
      };
      const status = page.locator("#status");

      // 1. The page loads and connects; the client upgrades to WebSocket (101).
      await page.goto(`${server.httpUrl}/`, { waitUntil: "load", timeout: 15_000 });
      await screenshot("loaded");
      await page.getByText("Connected! Ready to authenticate.").waitFor({ timeout: 10_000 });
      assert.equal(await status.getAttribute("data-state"), "connected");
      await until(
        () => [...sockets.values()].some((s) => s.status === 101 && /\/socket\.io\/\?.*transport=websocket/.test(s.url)),
        10_000,
        () => `no WebSocket upgrade answered 101 (seen: ${JSON.stringify([...sockets.values()])})`,
      );
      await waitStats(page, () => window.voxioStats.transport === "websocket", 10_000, "the client on WebSocket");
      await screenshot("connected");

      // 2. The PIN, with the keyboard: Tab reaches the field, Enter submits.
      await page.keyboard.press("Tab");
      assert.equal(await page.evaluate(() => document.activeElement && document.activeElement.id), "pin");
      await page.keyboard.type(server.pin);
      await screenshot("pin-typed");
      await page.keyboard.press("Enter");
      await page.locator("#auth").waitFor({ state: "hidden", timeout: 10_000 });
      await page.waitForFunction(() => document.getElementById("status").textContent === "Authenticated", null, {
        timeout: 10_000,
      });
      assert.equal(await status.getAttribute("data-state"), "authenticated");
      await waitStats(page, () => window.voxioStats.ready, 10_000, "session.ready");
      assert.ok(await page.locator("#voice").isVisible(), "the voice UI shows");
      await screenshot("authenticated");

      // 3. The microphone: the fake device says the phrase; its words come back.
      await page.getByRole("button", { name: "Start microphone" }).click({ timeout: 10_000 });
      await page.getByRole("button", { name: "Stop microphone" }).waitFor({ timeout: 10_000 });
      await waitStats(page, () => window.voxioStats.audioFramesSent >= 50, 10_000, "a second of audio sent");
      await waitStats(page, () => window.voxioStats.speechStarted > 0, 15_000, "vad.speech_started");
      await screenshot("listening");
      await waitStats(
        page,
        () => window.voxioStats.finals.some((text) => /bread/i.test(text)),
        20_000,
        'a final transcript with "bread"',
      );
      const finals = await page.evaluate(() => window.voxioStats.finals);
      t.diagnostic(`final transcripts: ${JSON.stringify(finals)}`);
      await page.locator("#final", { hasText: /bread/i }).waitFor({ timeout: 5_000 });

      // 4. The to-do list, the spoken answer (received, scheduled, played), the latency row.
      await page.locator("#todos li", { hasText: /bread/i }).waitFor({ timeout: 10_000 });
      await waitStats(
        page,
        () => {
          const s = window.voxioStats;
          return s.ttsStarted > 0 && s.ttsChunks > 0 && s.ttsScheduled > 0 && s.positionsSent > 0 && s.lastPlayedMs > 0;
        },
        15_000,
        "speech received, scheduled and played",
      );
      await page.locator("#metrics-body tr").first().waitFor({ timeout: 10_000 });
      const reply = (await page.locator("#reply").textContent()).trim();
      assert.match(reply, /bread/i, "the assistant's reply names bread");
      await screenshot("answered");
      // The whole answer plays out: tts.stopped {done}, then the reported position reaches
      // the audio scheduled (reports come every 250 ms while playing, and once drained).
      await waitStats(
        page,
        () => {
          const s = window.voxioStats;
          return s.ttsStopped[0] === "done" && document.getElementById("tts-state").textContent === "Not speaking.";
        },
        15_000,
        "the answer played to its end",
      );
      const played = await page.evaluate(() => ({ ms: window.voxioStats.lastPlayedMs, of: window.voxioStats.answerScheduledMs }));
      assert.ok(
        Math.abs(played.ms - played.of) <= 30,
        `playback.position reported ${played.ms} ms played of ${Math.round(played.of)} ms scheduled`,
      );

      // 5. Stop the microphone, then a typed question.
      await page.getByRole("button", { name: "Stop microphone" }).click();
      await page.getByRole("button", { name: "Start microphone" }).waitFor({ timeout: 5_000 });
      const before = await page.evaluate(() => window.voxioStats.replies.length);
      await page.getByLabel("Type a message").fill("what is on my list");
      await page.getByLabel("Type a message").press("Enter");
      await page.waitForFunction(
        (n) => window.voxioStats.replies.slice(n).some((r) => /bread/i.test(r)),
        before,
        { timeout: 15_000 },
      );
      await screenshot("typed");

      // 6. Readable at this size (nothing wider than the viewport), and a clean console.
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `the page is ${overflow} px wider than the viewport`);
      const stats = await page.evaluate(() => window.voxioStats);
      t.diagnostic(`steps: ${steps.join(", ")}`);
      t.diagnostic(
        `transport=${stats.transport} captureRate=${stats.captureRate} framesSent=${stats.audioFramesSent} ` +
          `tts (all answers): chunks=${stats.ttsChunks} scheduledMs=${Math.round(stats.ttsScheduledMs)}; last answer playedMs=${stats.lastPlayedMs} ` +
          `underruns=${stats.ttsUnderruns} clears=${stats.playbackClears} metrics=${JSON.stringify(stats.metrics[0])}`,
      );
      t.diagnostic(`events: ${JSON.stringify(stats.events.map(([e, b]) => (e.startsWith("tts") || e === "playback.clear" ? `${e} ${JSON.stringify(b)}` : e)))}`);
      assert.deepEqual(stats.errors, [], "no error event from the server");
      assert.deepEqual(problems, [], "no console error, page error or failed request");
    }),
  );
}

test(
  "long-polling only, resampled in the worklet: the page speaks and hears without WebSocket",
  { timeout: 75_000 },
  (() => {
    let server = null;
    return bounded(() => server, 60_000, async (t, cleanup) => {
      server = await startVoxioServer({ env: { VOXIO_CLIENT_JS: CLIENT_JS, VOXIO_TRANSPORTS: "polling" } });
      cleanup(() => server.stop());
      const { page, problems, sockets, screenshot } = await openPage(
        browser,
        server,
        { width: 1280, height: 800 },
        "polling",
        cleanup,
      );
      await signIn(page, server, "?capture=native");
      await page.getByRole("button", { name: "Start microphone" }).click({ timeout: 10_000 });
      await waitStats(
        page,
        () => window.voxioStats.finals.some((text) => /bread/i.test(text)),
        20_000,
        'a final transcript with "bread"',
      );
      await page.locator("#todos li", { hasText: /bread/i }).waitFor({ timeout: 10_000 });
      await waitStats(page, () => window.voxioStats.ttsScheduled > 0, 15_000, "speech scheduled");
      await screenshot("answered");
      await page.getByRole("button", { name: "Stop microphone" }).click();
      const stats = await page.evaluate(() => window.voxioStats);
      t.diagnostic(`capture rate ${stats.captureRate} Hz; finals: ${JSON.stringify(stats.finals)}`);
      assert.equal(stats.transport, "polling");
      assert.notEqual(stats.captureRate, 16000, "captured at the device's rate");
      assert.deepEqual([...sockets.values()], [], "no WebSocket attempted");
      assert.deepEqual(stats.errors, [], "no error event from the server");
      assert.deepEqual(problems, [], "no console error, page error or failed request");
    });
  })(),
);

test(
  "barge-in: speech over the answer clears playback at once and the page reports its position",
  { timeout: 75_000 },
  (() => {
    let server = null;
    return bounded(() => server, 60_000, async (t, cleanup) => {
      const bargeBrowser = await launch(bargeWav);
      cleanup(() => bargeBrowser.close());
      server = await startVoxioServer({ env: { VOXIO_CLIENT_JS: CLIENT_JS } });
      cleanup(() => server.stop());
      const { page, problems, screenshot } = await openPage(
        bargeBrowser,
        server,
        { width: 1280, height: 800 },
        "barge-in",
        cleanup,
      );
      await signIn(page, server);
      await page.getByRole("button", { name: "Start microphone" }).click({ timeout: 10_000 });
      await waitStats(page, () => window.voxioStats.ttsScheduled > 0, 20_000, "the first answer's speech scheduled");
      await waitStats(page, () => window.voxioStats.playbackClears > 0, 15_000, "playback.clear");
      const stats = await page.evaluate(() => window.voxioStats);
      await screenshot("cleared");
      t.diagnostic(`clears: ${JSON.stringify(stats.clears)}; finals: ${JSON.stringify(stats.finals)}`);
      t.diagnostic(
        `events: ${JSON.stringify(stats.events.map(([e, b]) => (e.startsWith("tts") || e === "playback.clear" ? `${e} ${JSON.stringify(b)}` : e)))}`,
      );
      assert.ok(stats.clears.length >= 1, "the page stopped an answer");
      const clear = stats.clears[0];
      assert.ok(clear.playedMs < clear.scheduledMs, `stopped mid-answer: ${JSON.stringify(clear)}`);
      assert.equal(stats.answerPending, 0, "nothing left scheduled after playback.clear");
      assert.ok(stats.positionsSent > 0, "playback.position reported");
      assert.ok(
        stats.events.some(([e, b]) => e === "tts.stopped" && b && b.reason === "interrupted"),
        "tts.stopped {reason: interrupted}",
      );
      await page.getByRole("button", { name: "Stop microphone" }).click();
      assert.deepEqual(stats.errors, [], "no error event from the server");
      assert.deepEqual(problems, [], "no console error, page error or failed request");
    });
  })(),
);
