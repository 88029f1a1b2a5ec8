// Several voxio nodes on one real Redis behind nginx with the repo's own config
// (deploy/nginx.conf, with the compose host names replaced by loopback ports), driven by the
// official socket.io-client:
//   1. a page login's voice sockets on two different nodes share the room login:<id>; a logout
//      on one node reaches both (auth_error logged_out, then io server disconnect);
//   2. 100 polling clients behind nginx, which balances round-robin (no stickiness), exchange
//      10,000 acked events while about half their requests reach the node that does not hold
//      their session and are forwarded to the one that does (voxio_engine_forwarded_total);
//   2b. polling clients behind nginx complete their upgrade to WebSocket (an upgrade that
//      reaches the other node is spliced through to the owner) and stream audio with acks;
//   3. killing (SIGKILL) the node most of them are on: they reconnect through nginx to the
//      other node, authenticate again and go on streaming; the surviving node forgets the
//      dead one;
//   4. behind nginx (a trusted proxy), wrong PINs back off the client's own address only, not
//      every client behind the proxy;
//   5. a conversation survives a 2 s network drop in the middle of a spoken answer: the socket
//      recovers (socket.recovered, no PIN), the rest of the answer arrives, every event's
//      offset comes once, in order (two more nodes, with the voice pipeline);
//   6. and its node's SIGKILL in the middle of a spoken answer: the client back through nginx
//      on the other node gets its socket restored from Redis, its list intact, no PIN, no
//      event lost or twice.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { io } from "socket.io-client";
// engine.io-client's own WebSocket implementation (a dependency of the official client).
import WebSocket from "ws";
import {
  startVoxioServer,
  startRedis,
  startNginx,
  scrapeMetrics,
  Recorder,
  sleep,
  waitWebsocket,
} from "./helpers.js";

const NSP = "/voice";
const SECRET = "cluster-test-secret-0123456789abcdef0123456789";
const CLIENTS = 8;

let redis;
let nodes = [];
let nginx;

before(async () => {
  redis = await startRedis();
  const env = {
    VOXIO_REDIS_URL: redis.url,
    VOXIO_SECRET: SECRET,
    VOXIO_CLUSTER_HEARTBEAT_MS: "200",
    VOXIO_CLUSTER_NODE_TIMEOUT_MS: "1000",
    VOXIO_PIPELINE: "none",
    VOXIO_TRUSTED_PROXIES: "127.0.0.1",
    VOXIO_PIN_FREE_ATTEMPTS: "1",
    VOXIO_PIN_BACKOFF_MS: "30000",
  };
  nodes = [await startVoxioServer({ env }), await startVoxioServer({ env })];
  nginx = await startNginx(nodes.map((n) => n.port));
  // Both nodes hear each other before the stories start.
  for (const node of nodes) await untilNodes(node, 2);
});

after(async () => {
  for (const node of nodes) await node.stop();
  if (nginx) await nginx.stop();
  if (redis) await redis.stop();
});

async function untilNodes(node, n, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const m = await scrapeMetrics(node.httpUrl);
    if (m.get("voxio_cluster_nodes") === n) return;
    if (Date.now() > deadline) {
      throw new Error(`node ${node.port} hears ${m.get("voxio_cluster_nodes")} nodes, not ${n}`);
    }
    await sleep(50);
  }
}

function connect(url, opts) {
  const socket = io(url + NSP, { forceNew: true, timeout: 5000, ...opts });
  const rec = new Recorder(socket);
  return { socket, rec };
}

async function audioAck(socket, ms = 5000) {
  return socket.timeout(ms).emitWithAck("audio", Buffer.alloc(640));
}

async function login(node) {
  const res = await fetch(node.httpUrl + "/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ pin: node.pin }),
    signal: AbortSignal.timeout(5000),
  });
  assert.equal(res.status, 200, `POST /login: ${await res.text()}`);
  const set = res.headers.getSetCookie().find((c) => c.startsWith("voxio_session="));
  assert.ok(set, "login sets the session cookie");
  return set.split(";")[0];
}

async function voiceToken(node, cookie) {
  const res = await fetch(node.httpUrl + "/api/voice-token", {
    headers: { cookie },
    signal: AbortSignal.timeout(5000),
  });
  const body = await res.json();
  assert.equal(res.status, 200, `voice token: ${JSON.stringify(body)}`);
  return body.token;
}

describe("voxio cluster: Redis adapter, nginx, node loss", { timeout: 90_000 }, () => {
  test("a logout on one node reaches the login's sockets on every node", { timeout: 20_000 }, async () => {
    const [a, b] = nodes;
    const cookie = await login(a);
    // The token is signed with the shared secret: node B accepts node A's.
    const onA = connect(a.httpUrl, { auth: { token: await voiceToken(a, cookie) }, transports: ["websocket"] });
    const onB = connect(b.httpUrl, { auth: { token: await voiceToken(a, cookie) }, transports: ["polling"] });
    const bystander = connect(b.httpUrl, { auth: { pin: b.pin }, transports: ["websocket"] });
    try {
      for (const { rec } of [onA, onB, bystander]) {
        await rec.next("connect");
        await rec.next("authenticated");
      }
      assert.ok((await audioAck(onB.socket)).seq >= 1, "node B acks audio before the logout");

      const res = await fetch(a.httpUrl + "/logout", {
        method: "POST",
        headers: { cookie },
        signal: AbortSignal.timeout(5000),
      });
      assert.equal(res.status, 204, "POST /logout on node A");

      for (const [label, { rec }] of [["node A", onA], ["node B", onB]]) {
        const [body] = await rec.next("auth_error");
        assert.equal(body.code, "logged_out", `${label}: auth_error code`);
        const [reason] = await rec.next("disconnect");
        assert.equal(reason, "io server disconnect", `${label}: disconnect reason`);
      }
      assert.equal(bystander.rec.pending("disconnect"), 0, "a PIN socket on node B stays");
      assert.ok((await audioAck(bystander.socket)).seq >= 1, "the bystander still streams");
    } finally {
      for (const { socket } of [onA, onB, bystander]) socket.disconnect();
    }
  });

  test("100 polling clients behind round-robin nginx exchange 10,000 acked events, half the requests forwarded",
    { timeout: 60_000 }, async () => {
      const N = 100;
      const PER = 100;
      // One page login's voice token for all (a hundred PIN checks at once would be
      // rate-limited, as they should).
      const token = await voiceToken(nodes[0], await login(nodes[0]));
      const before = await Promise.all(nodes.map((node) => scrapeMetrics(node.httpUrl)));
      const clients = [];
      try {
        for (let i = 0; i < N; i++) {
          clients.push(connect(nginx.url, { auth: { token }, transports: ["polling"], reconnection: false }));
        }
        await Promise.all(clients.map(({ rec }) => rec.next("authenticated", 20_000)));
        const started = Date.now();
        let acked = 0;
        let errors = 0;
        await Promise.all(
          clients.map(async ({ socket }) => {
            for (let k = 0; k < PER; k++) {
              try {
                const ack = await socket.timeout(10_000).emitWithAck("audio", Buffer.alloc(640));
                if (ack.bytes === 640) acked += 1;
                else errors += 1;
              } catch {
                errors += 1;
              }
            }
          }),
        );
        const ms = Date.now() - started;
        for (const [i, { socket, rec }] of clients.entries()) {
          assert.equal(socket.io.engine.transport.name, "polling", `client ${i} stayed on polling`);
          assert.equal(rec.count("disconnect"), 0, `client ${i} was never disconnected`);
        }
        const after = await Promise.all(nodes.map((node) => scrapeMetrics(node.httpUrl)));
        const delta = (name) =>
          after.reduce((sum, m, k) => sum + (m.get(name) ?? 0) - (before[k].get(name) ?? 0), 0);
        const direct = delta('voxio_engine_polling_requests_total{via="direct"}');
        const forwarded = delta('voxio_engine_forwarded_total{result="ok"}');
        const failed = delta('voxio_engine_forwarded_total{result="failed"}');
        const share = forwarded / direct;
        console.log(
          `# round-robin polling: ${acked} acked, ${errors} errors in ${ms} ms; ${direct} polling requests reached a node, ${forwarded} (${(share * 100).toFixed(1)}%) were for the other node's session and forwarded, ${failed} failed`,
        );
        assert.equal(errors, 0, "no errors");
        assert.equal(acked, N * PER, "every event acked");
        assert.equal(failed, 0, "no forward failed");
        assert.ok(share > 0.35 && share < 0.65, `about half the requests forwarded (${share})`);
      } finally {
        for (const { socket } of clients) socket.disconnect();
      }
    });

  test("an upgrade that reaches the node without the session is spliced through to the one with it", { timeout: 20_000 }, async () => {
    const [owner, other] = nodes;
    // A polling session on the owner, then its WebSocket upgrade sent to the other node.
    const open = await fetch(`${owner.httpUrl}/socket.io/?EIO=4&transport=polling`, { signal: AbortSignal.timeout(5000) });
    const { sid } = JSON.parse((await open.text()).slice(1));
    const before = (await scrapeMetrics(other.httpUrl)).get('voxio_engine_forwarded_total{result="websocket"}') ?? 0;
    const ws = new WebSocket(`${other.wsUrl}/socket.io/?EIO=4&transport=websocket&sid=${sid}`);
    const frames = [];
    let wake = null;
    ws.on("message", (data) => {
      frames.push(String(data));
      if (wake) wake();
    });
    const next = async () => {
      const deadline = Date.now() + 5000;
      while (!frames.length) {
        assert.ok(Date.now() < deadline, "a frame within 5 s");
        await new Promise((resolve) => {
          wake = resolve;
          setTimeout(resolve, 100);
        });
      }
      return frames.shift();
    };
    try {
      await new Promise((resolve, reject) => {
        ws.once("open", resolve);
        ws.once("error", reject);
      });
      ws.send("2probe");
      assert.equal(await next(), "3probe", "the owner answers the probe through the other node");
      ws.send("5");
      ws.send("40/voice,{\"pin\":\"" + owner.pin + "\"}");
      assert.match(await next(), /^40\/voice,\{"sid":"/, "the namespace joined over the spliced WebSocket");
      const after = (await scrapeMetrics(other.httpUrl)).get('voxio_engine_forwarded_total{result="websocket"}') ?? 0;
      assert.equal(after - before, 1, "the other node counted one spliced upgrade");
      const sessions = (await scrapeMetrics(owner.httpUrl)).get('voxio_engine_sessions{transport="websocket"}');
      assert.ok(sessions >= 1, "the session is a WebSocket on its owner");
    } finally {
      ws.close();
    }
  });

  test("polling clients behind nginx upgrade; when their node dies they reconnect to the other and go on",
    { timeout: 60_000 }, async () => {
      const clients = [];
      const spliced = async (node) => (await scrapeMetrics(node.httpUrl)).get('voxio_engine_forwarded_total{result="websocket"}') ?? 0;
      const splicedBefore = await Promise.all(nodes.map(spliced));
      try {
        for (let i = 0; i < CLIENTS; i++) {
          const localAddress = `127.0.0.${i + 2}`;
          const c = connect(nginx.url, {
            auth: { pin: nodes[0].pin },
            transports: ["polling", "websocket"],
            agent: new http.Agent({ localAddress, keepAlive: true }),
            localAddress,
            reconnectionDelay: 100,
            reconnectionDelayMax: 500,
            randomizationFactor: 0,
          });
          clients.push(c);
        }
        for (const [i, { socket, rec }] of clients.entries()) {
          await rec.next("connect");
          await rec.next("authenticated");
          await waitWebsocket(socket);
          const ack = await audioAck(socket).catch((e) => {
            throw new Error(`client ${i}: ${e.message} (${rec.state()}, disconnects ${JSON.stringify(rec.items.get("disconnect"))})`);
          });
          assert.equal(ack.seq, 1, `client ${i}: first ack over WebSocket`);
        }

        // Which node holds them (each node's own gauge).
        const counts = [];
        for (const node of nodes) {
          const m = await scrapeMetrics(node.httpUrl);
          counts.push(m.get('voxio_engine_sessions{transport="websocket"}') ?? 0);
        }
        const upgraded = [];
        for (const node of nodes) {
          upgraded.push((await scrapeMetrics(node.httpUrl)).get("voxio_engine_upgrades_total") ?? 0);
        }
        assert.equal(counts[0] + counts[1], CLIENTS, `every client on a WebSocket (per node: ${counts})`);
        assert.ok(upgraded[0] + upgraded[1] >= CLIENTS, `upgrades counted (per node: ${upgraded})`);
        console.log(`# sessions per node behind nginx: ${counts.join(" / ")}`);

        const victim = counts[0] >= counts[1] ? 0 : 1;
        const survivor = nodes[1 - victim];
        // Its own sessions' clients, and those whose upgrade reached it and was spliced
        // through to the survivor (their connection runs through it).
        const through = (await spliced(nodes[victim])) - splicedBefore[victim];
        const moved = counts[victim] + through;
        console.log(`# the killed node holds ${counts[victim]} sessions and splices ${through} more clients' WebSockets to the other`);
        const before = clients.map(({ rec }) => rec.count("connect"));
        const dropped = clients.map(({ rec }) => rec.count("disconnect"));
        const gone = await nodes[victim].kill("SIGKILL");
        assert.equal(gone.signal, "SIGKILL", "the node was killed");

        // Its clients see the transport close and reconnect through nginx to the survivor.
        const deadline = Date.now() + 20_000;
        const closed = () => clients.filter(({ rec }, i) => rec.count("disconnect") > dropped[i]).length;
        while (closed() < moved) {
          assert.ok(Date.now() < deadline, `${closed()} of the dead node's ${moved} clients saw the close`);
          await sleep(20);
        }
        for (const [i, { rec }] of clients.entries()) {
          if (rec.count("disconnect") > dropped[i]) {
            const [reason] = await rec.next("disconnect");
            assert.equal(reason, "transport close", `client ${i}: why it was disconnected`);
          }
        }
        let recovered = 0;
        for (const [i, { socket, rec }] of clients.entries()) {
          // Connected on a WebSocket, and authenticated: its socket recovered from Redis
          // (socket.recovered, no new PIN), or by its CONNECT again (auth rides in it).
          const back = () => socket.recovered || rec.count("authenticated") === rec.count("connect");
          while (!(socket.connected && socket.io.engine?.transport?.name === "websocket" && back())) {
            if (Date.now() > deadline) throw new Error(`client ${i} did not come back`);
            await sleep(50);
          }
          if (rec.count("connect") > before[i] && socket.recovered) recovered += 1;
          const ack = await audioAck(socket);
          assert.ok(ack.seq >= 1, `client ${i}: acks after the node loss`);
        }
        const reconnected = clients.filter(({ rec }, i) => rec.count("connect") > before[i]).length;
        assert.equal(reconnected, moved, "exactly the dead node's clients reconnected");
        assert.equal(recovered, moved, "every one of them recovered its socket on the survivor");
        console.log(`# ${recovered} of ${moved} clients of the killed node recovered their sockets on the survivor`);
        const m = await scrapeMetrics(survivor.httpUrl);
        assert.equal(m.get('voxio_engine_sessions{transport="websocket"}'), CLIENTS, "all clients on the survivor");
        await untilNodes(survivor, 1, 5000);
      } finally {
        for (const { socket } of clients) socket.disconnect();
      }
    });

  test("behind nginx, wrong PINs back off only the client that sent them", { timeout: 20_000 }, async () => {
    const via = (localAddress, pin) =>
      connect(nginx.url, {
        auth: { pin },
        transports: ["websocket"],
        agent: new http.Agent({ localAddress }),
        localAddress,
        reconnection: false,
      });
    const refusals = [];
    for (let i = 0; i < 3; i++) {
      const bad = via("127.0.0.50", "000000");
      const [err] = await bad.rec.next("connect_error");
      refusals.push(err.data?.code);
      bad.socket.disconnect();
    }
    // One free attempt; its failure starts a backoff (30 s): the next tries are refused unchecked.
    assert.deepEqual(refusals, ["invalid_pin", "rate_limited", "rate_limited"], "the guessing client backs off");
    // Another client behind the same proxy is not held back by the first one's failures.
    const good = via("127.0.0.51", nodes[0].pin);
    try {
      await good.rec.next("connect");
      await good.rec.next("authenticated");
    } finally {
      good.socket.disconnect();
    }
  });
});

describe("a conversation survives its node", { timeout: 150_000 }, () => {
  let pair = [];
  let front;
  /** Two nodes on the test's Redis behind nginx (`pair`, `front`). */
  async function startPair() {
    const env = {
      VOXIO_REDIS_URL: redis.url,
      VOXIO_SECRET: SECRET,
      VOXIO_CLUSTER_HEARTBEAT_MS: "200",
      VOXIO_CLUSTER_NODE_TIMEOUT_MS: "1000",
      VOXIO_TRUSTED_PROXIES: "127.0.0.1",
    };
    pair = [await startVoxioServer({ env }), await startVoxioServer({ env })];
    front = await startNginx(pair.map((n) => n.port));
  }
  async function stopPair() {
    for (const node of pair) await node.stop();
    if (front) await front.stop();
    pair = [];
    front = undefined;
  }
  before(startPair);
  after(stopPair);

  /** Waits for the reply to typed `text` (assistant.text.done) and the list after it. */
  async function typed(socket, rec, text) {
    socket.emit("text", { text });
    const [{ text: reply }] = await rec.next("assistant.text.done", 10_000);
    const [{ items }] = await rec.next("todos", 10_000);
    return { reply, items };
  }

  /**
   * Opens a /voice socket through nginx that records the offset every event carries (its
   * last argument, with connection state recovery), and the events themselves.
   */
  function recordingClient(extra = {}) {
    // As the page does: every CONNECT says which chunk of the answer being spoken came last.
    let heard = 0;
    const c = connect(front.url, {
      auth: (cb) => cb({ pin: pair[0].pin, heard }),
      transports: ["websocket"],
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      randomizationFactor: 0,
      ...extra,
    });
    c.offsets = [];
    c.audio = [];
    c.socket.onAny((event, ...args) => {
      c.offsets.push(Number(args[args.length - 1]));
      if (event === "tts.audio") {
        c.audio.push(args[0].seq);
        heard = args[0].seq;
      }
      if (event === "tts.stopped" || event === "assistant.text.done") heard = 0;
    });
    return c;
  }

  /** Each answer's audio chunks numbered 1, 2, 3, … with none missing and none twice. */
  function assertWholeAnswers(seqs, what) {
    for (const [i, seq] of seqs.entries()) {
      if (seq !== 1) assert.equal(seq, seqs[i - 1] + 1, `${what}: chunk ${i} of ${JSON.stringify(seqs)}`);
    }
  }

  /** Every offset 1..n once, in order: no event lost, none twice. */
  function assertNothingLost(offsets, what) {
    const expected = offsets.map((_, i) => i + 1);
    assert.deepEqual(offsets, expected, `${what}: the events' offsets`);
  }

  async function holderOf(socketCount = 1) {
    for (const [k, node] of pair.entries()) {
      if (node.exited) continue;
      const m = await scrapeMetrics(node.httpUrl);
      if ((m.get('voxio_engine_sessions{transport="websocket"}') ?? 0) === socketCount) return k;
    }
    return -1;
  }

  /**
   * With Redis paused: SIGKILLs node `holder`, lets Redis go on, and waits for the client to
   * come back through the other node with its socket recovered.
   */
  async function killThenResume(holder, rec, socket) {
    const gone = await pair[holder].kill("SIGKILL");
    assert.equal(gone.signal, "SIGKILL");
    redis.signal("SIGCONT");
    await rec.next("disconnect", 10_000);
    await rec.next("connect", 20_000);
    assert.equal(socket.recovered, true, "socket.recovered");
  }

  /** Waits for the socket to be ready, then adds `item`; returns the list before it. */
  async function readyThenAdd(socket, rec, item) {
    await rec.next("connect", 10_000);
    const [{ items: fresh }] = await rec.next("todos", 10_000);
    await rec.next("session.ready", 10_000);
    const added = await typed(socket, rec, `add ${item} to my list`);
    assert.equal(added.reply, `Added ${item} to your list.`);
    assert.deepEqual(added.items, [...fresh, item]);
    return fresh;
  }

  test("a 2 s network drop in the middle of a spoken answer: the socket recovers, nothing lost", { timeout: 60_000 }, async () => {
    const { socket, rec, offsets, audio } = recordingClient();
    try {
      await readyThenAdd(socket, rec, "tea");
      // The next answer is being spoken when the connection drops, for 2 s.
      socket.emit("text", { text: "what is on my list" });
      await rec.next("tts.audio", 10_000);
      const heard = rec.count("tts.audio");
      socket.io.reconnection(false);
      socket.io.engine.close();
      await rec.next("disconnect", 5000);
      await sleep(2000);
      socket.io.reconnection(true);
      socket.connect();
      await rec.next("connect", 10_000);
      assert.equal(socket.recovered, true, "socket.recovered");
      // The rest of the answer, spoken while the client was away, then its end.
      await rec.next("tts.stopped", 10_000);
      assert.ok(rec.count("tts.audio") > heard, "the audio sent while away arrived");
      assert.equal(rec.count("auth_error"), 0, "no PIN asked");
      assert.equal(rec.count("authenticated"), 1, "authenticated once, at the start");
      assertNothingLost(offsets, "network drop");
      assertWholeAnswers(audio, "network drop");
      console.log(`# 2 s drop mid-answer: recovered, ${offsets.length} events, offsets 1..${offsets.length} each once, ${rec.count("tts.audio") - heard} audio chunks delivered after the drop, answers' chunks ${JSON.stringify(audio)}`);
    } finally {
      socket.disconnect();
      await sleep(200);
    }
  });

  test("the node killed in the middle of a spoken answer: the socket recovers on the other node, list intact", { timeout: 60_000 }, async () => {
    const { socket, rec, offsets, audio } = recordingClient();
    try {
      const fresh = await readyThenAdd(socket, rec, "coffee");

      const holder = await holderOf();
      assert.ok(holder >= 0, "one node holds the socket");
      const id = socket.id;
      // Killed while it speaks the next answer.
      socket.emit("text", { text: "what is on my list" });
      await rec.next("tts.audio", 10_000);
      const gone = await pair[holder].kill("SIGKILL");
      assert.equal(gone.signal, "SIGKILL");
      // Back through nginx on the other node: the same socket, restored from Redis.
      await rec.next("disconnect", 10_000);
      await rec.next("connect", 20_000);
      assert.equal(socket.recovered, true, "socket.recovered");
      assert.equal(socket.id, id, "the same socket id");
      const [{ items }] = await rec.next("todos", 20_000);
      assert.deepEqual(items, [...fresh, "coffee"], "the list on the other node");
      // The answer the dead node was speaking is finished by the other: no chunk missing,
      // none twice, then its end.
      const heard = rec.count("tts.audio");
      await rec.next("tts.stopped", 10_000);
      assertWholeAnswers(audio, "node killed");
      assert.equal(rec.count("auth_error"), 0, "no PIN asked");
      assert.equal(rec.count("authenticated"), 1, "authenticated once, at the start");
      assertNothingLost(offsets, "node killed");
      const after = await typed(socket, rec, "what is on my list");
      assert.match(after.reply, /coffee/);
      assertNothingLost(offsets, "node killed, then a turn on the other node");
      const m = await scrapeMetrics(pair[1 - holder].httpUrl);
      assert.ok(m.get("voxio_voice_restored_total") >= 1, "restored on the survivor");
      console.log(`# SIGKILL mid-answer: recovered on node ${1 - holder} (was ${holder}), ${offsets.length} events with offsets 1..${offsets.length} each once, the answer finished there (${rec.count("tts.audio") - heard} more chunks; chunks ${JSON.stringify(audio)}), list ${JSON.stringify(after.items)}`);
    } finally {
      socket.disconnect();
    }
  });

  test("the node killed before its last writes reached Redis: the socket still recovers on the other node", { timeout: 60_000 }, async () => {
    // Two nodes again (the test before killed one).
    await stopPair();
    await startPair();
    const { socket, rec, offsets } = recordingClient();
    let paused = false;
    try {
      const fresh = await readyThenAdd(socket, rec, "honey");
      const holder = await holderOf();
      assert.ok(holder >= 0, "one node holds the socket");
      const id = socket.id;
      // Redis stops answering: the holder's next write waits for its reply, the writes after
      // it wait in the holder's queue; the events themselves still reach the client.
      redis.signal("SIGSTOP");
      paused = true;
      for (let k = 0; k < 3; k += 1) {
        socket.emit("no.such.event");
        const [{ code }] = await rec.next("error", 5000);
        assert.equal(code, "unknown_event");
        await sleep(50);
      }
      const seen = offsets.at(-1);
      // The store has fewer of this socket's events than the client saw.
      await killThenResume(holder, rec, socket);
      paused = false;
      assert.equal(socket.id, id, "the same socket id");
      assert.equal(rec.count("auth_error"), 0, "no PIN asked");
      assert.equal(rec.count("authenticated"), 1, "authenticated once, at the start");
      const after = await typed(socket, rec, "what is on my list");
      assert.match(after.reply, /honey/);
      assert.deepEqual(after.items, [...fresh, "honey"]);
      assertNothingLost(offsets, "node killed with its last writes unsent");
      console.log(`# SIGKILL with Redis paused: the client had seen offset ${seen}, recovered on node ${1 - holder}, ${offsets.length} events with offsets 1..${offsets.length} each once`);
    } finally {
      if (paused) redis.signal("SIGCONT");
      socket.disconnect();
    }
  });

  test("the node killed while its answer's audio had not reached Redis: the answer goes on after the last chunk the client has", { timeout: 60_000 }, async () => {
    await stopPair();
    await startPair();
    const { socket, rec, offsets, audio } = recordingClient();
    let paused = false;
    try {
      await readyThenAdd(socket, rec, "jam");
      const holder = await holderOf();
      assert.ok(holder >= 0, "one node holds the socket");
      // Redis stops answering as the answer's first audio reaches the client: the answer's
      // start (written with assistant.text.done, before its synthesis) is in the store, the
      // chunks the client has are not all there.
      socket.emit("text", { text: "what is on my list" });
      await rec.next("assistant.text.done", 10_000);
      await rec.next("tts.audio", 10_000);
      redis.signal("SIGSTOP");
      paused = true;
      const answerStart = audio.lastIndexOf(1);
      const heard = audio.length - answerStart;
      await killThenResume(holder, rec, socket);
      paused = false;
      await rec.next("tts.stopped", 10_000);
      const answer = audio.slice(answerStart);
      assert.deepEqual(answer, answer.map((_, i) => i + 1), "the answer's chunks, each once, in order");
      assert.ok(answer.length > heard, "the answer went on on the other node");
      assertNothingLost(offsets, "node killed before its audio was written");
      console.log(`# SIGKILL with the answer's audio unwritten: the client had ${heard} chunks, recovered on node ${1 - holder}, the answer went on to chunk ${answer.length}, none twice; offsets 1..${offsets.length} each once`);
    } finally {
      if (paused) redis.signal("SIGCONT");
      socket.disconnect();
    }
  });
});
