// Graceful shutdown of a node in the middle of a spoken turn, with two voxio nodes (full voice
// pipeline) on a real Redis behind the repo's nginx config, driven by the official
// socket.io-client:
//   - SIGTERM arrives while a client is still speaking; the client keeps streaming;
//   - an idle client on the same node is closed at once (a transport close, not a Socket.IO
//     disconnect) and reconnects through nginx to the other node;
//   - the speaking client's turn finishes on the draining node: its transcript.final and its
//     answer arrive, then its transport closes and it reconnects to the other node;
//   - the process exits 0 within VOXIO_SHUTDOWN_GRACE_MS.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";
import { startVoxioServer, startRedis, startNginx, scrapeMetrics, Recorder, sleep } from "./helpers.js";
import { flite, readWav } from "./speech.js";

const NSP = "/voice";
const CHUNK = 640; // 20 ms of 16 kHz mono PCM16
const GRACE_MS = 8000;
const PHRASE = "add buy milk to my list";

let tmp;
let redis;
let nodes = [];
let nginx;

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "voxio-shutdown-"));
  redis = await startRedis();
  const env = {
    VOXIO_REDIS_URL: redis.url,
    VOXIO_SECRET: "shutdown-test-secret-0123456789abcdef0123456789",
    VOXIO_SHUTDOWN_GRACE_MS: String(GRACE_MS),
    VOXIO_STT_THREADS: "1",
  };
  nodes = [await startVoxioServer({ env }), await startVoxioServer({ env })];
  nginx = await startNginx(nodes.map((n) => n.port));
});

after(async () => {
  for (const node of nodes) await node.stop();
  if (nginx) await nginx.stop();
  if (redis) await redis.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** A client behind nginx from its own loopback address, reconnecting fast. */
function client(localAddress, pin) {
  const socket = io(nginx.url + NSP, {
    forceNew: true,
    auth: { pin },
    transports: ["websocket"],
    agent: new http.Agent({ localAddress }),
    localAddress,
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    randomizationFactor: 0,
  });
  return { socket, rec: new Recorder(socket) };
}

/** Which node (index) holds how many WebSocket sessions. */
async function sessionsPerNode() {
  const counts = [];
  for (const node of nodes) {
    if (node.exited) {
      counts.push(0);
      continue;
    }
    const m = await scrapeMetrics(node.httpUrl);
    counts.push(m.get('voxio_engine_sessions{transport="websocket"}') ?? 0);
  }
  return counts;
}

test("SIGTERM mid-turn: the turn completes, clients reconnect to the other node, exit 0 in the grace",
  { timeout: 90_000 }, async () => {
    const file = path.join(tmp, "phrase.wav");
    await flite("slt", PHRASE, file);
    const { pcm, rate, channels } = await readWav(file);
    assert.equal(rate, 16_000);
    assert.equal(channels, 1);
    // 400 ms of silence, the phrase, 1.5 s of silence: the turn ends in the silence.
    const audio = Buffer.concat([Buffer.alloc(12_800), pcm, Buffer.alloc(48_000)]);
    const chunks = Math.ceil(audio.length / CHUNK);

    // Two clients on the same node: find two loopback addresses the sticky hash puts together.
    const clients = [];
    try {
      const onNode = [[], []];
      let prev = await sessionsPerNode();
      let pair = null;
      for (let i = 2; i < 40 && !pair; i++) {
        const c = client(`127.0.0.${i}`, nodes[0].pin);
        clients.push(c);
        await c.rec.next("session.ready", 20_000);
        const now = await sessionsPerNode();
        const node = now.findIndex((n, k) => n > prev[k]);
        prev = now;
        assert.ok(node >= 0, "a node's session count went up");
        onNode[node].push(c);
        if (onNode[node].length === 2) pair = { node, speaker: onNode[node][0], idle: onNode[node][1] };
      }
      assert.ok(pair, "two clients on one node");
      const victim = nodes[pair.node];
      const { speaker, idle } = pair;
      const connectsBefore = { speaker: speaker.rec.count("connect"), idle: idle.rec.count("connect") };

      // Stream the phrase at real-time pace; SIGTERM the node half-way through the speech.
      const termAt = Math.floor((12_800 + pcm.length / 2) / CHUNK);
      let exit = null;
      let termSentAt = 0;
      const start = performance.now();
      for (let i = 0; i < chunks; i++) {
        const wait = start + i * 20 - performance.now();
        if (wait > 0) await sleep(wait);
        if (i === termAt) {
          termSentAt = performance.now();
          exit = victim.kill("SIGTERM");
        }
        if (!speaker.socket.connected) break;
        speaker.socket.emit("audio", audio.subarray(i * CHUNK, (i + 1) * CHUNK));
      }
      assert.ok(exit, "SIGTERM was sent during the speech");

      // The idle client was closed with a transport close (it reconnects), not a DISCONNECT.
      const [idleReason] = await idle.rec.next("disconnect", 5000);
      assert.equal(idleReason, "transport close", "the idle client's disconnect reason");

      // The speaker's turn finished on the draining node.
      const [final] = await speaker.rec.next("transcript.final", 10_000);
      assert.match(final.text, /milk/, `the final transcript (${JSON.stringify(final.text)})`);
      const [done] = await speaker.rec.next("assistant.text.done", 10_000);
      assert.ok(done.text.length > 0, "the assistant answered");
      const [speakerReason] = await speaker.rec.next("disconnect", GRACE_MS);
      assert.equal(speakerReason, "transport close", "the speaker's disconnect reason");

      // The node exits 0 within the grace.
      const result = await exit;
      const tookMs = performance.now() - termSentAt;
      assert.deepEqual(result, { code: 0, signal: null }, `exit status (log:\n${victim.log()})`);
      assert.ok(tookMs < GRACE_MS, `exited ${Math.round(tookMs)} ms after SIGTERM (grace ${GRACE_MS})`);
      console.log(`# SIGTERM to exit: ${Math.round(tookMs)} ms with a turn running`);

      // Both reconnect through nginx to the other node and go on.
      for (const [label, c] of [["speaker", speaker], ["idle", idle]]) {
        const deadline = Date.now() + 10_000;
        while (!(c.socket.connected && c.rec.count("connect") > connectsBefore[label])) {
          assert.ok(Date.now() < deadline, `${label} reconnected`);
          await sleep(50);
        }
        await c.rec.next("session.ready", 10_000).catch(() => {});
        const ack = await c.socket.timeout(5000).emitWithAck("audio", Buffer.alloc(CHUNK));
        assert.ok(ack.seq >= 1, `${label} streams on the other node`);
      }
      const survivor = nodes[1 - pair.node];
      const m = await scrapeMetrics(survivor.httpUrl);
      assert.ok(m.get('voxio_engine_sessions{transport="websocket"}') >= 2, "the survivor holds them");
    } finally {
      for (const { socket } of clients) socket.disconnect();
    }
  });
