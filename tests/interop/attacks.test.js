// Attack tests of the PIN lock, as a guesser would try it: every way to send a PIN, in bursts
// and in parallel, from one client address, against one node in memory mode and against two
// nodes sharing a real Redis. The figure that matters is how many wrong PINs the servers
// actually *checked* (their voxio_auth_failures_total, summed over the nodes): it must not
// exceed VOXIO_PIN_FREE_ATTEMPTS however the guesses arrive. Each test prints what it measured.
//
// The attacks:
//   - 300 `authenticate` events in ONE polling POST (raw Engine.IO, so they arrive together);
//   - 60 concurrent CONNECTs with a wrong `auth: {pin}` (official client, WebSocket);
//   - 50 parallel `POST /login` with a wrong PIN;
//   - all three at once, spread over both nodes.
import { describe, test, before, after } from "node:test";
import http from "node:http";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startVoxioServer, startRedis, scrapeMetrics, Recorder } from "./helpers.js";

const FREE = 3;
const SECRET = "attack-test-secret-0123456789abcdef0123456789";
const ENV = {
  VOXIO_PIPELINE: "none",
  VOXIO_PIN_FREE_ATTEMPTS: String(FREE),
  VOXIO_PIN_BACKOFF_MS: "60000",
  VOXIO_SECRET: SECRET,
};
const OPTS = { timeout: 60_000 };
const wrong = (i) => String(100000 + i);

/** Wrong PINs the nodes checked, from their metrics. */
async function checked(nodes) {
  let total = 0;
  for (const node of nodes) {
    for (const [name, value] of await scrapeMetrics(node.httpUrl)) {
      if (name.startsWith("voxio_auth_failures_total") && !name.includes('kind="token"')) {
        total += value;
      }
    }
  }
  return total;
}

function tally(codes) {
  const out = {};
  for (const c of codes) out[c] = (out[c] ?? 0) + 1;
  return out;
}

/** An Engine.IO polling session joined to /voice, driven by hand. */
async function pollingVoice(node) {
  const base = `${node.httpUrl}/socket.io/?EIO=4&transport=polling`;
  const open = await (await fetch(base, { signal: AbortSignal.timeout(5000) })).text();
  assert.ok(open.startsWith("0"), `handshake: ${open}`);
  const { sid } = JSON.parse(open.slice(1));
  const url = `${base}&sid=${sid}`;
  const post = async (body) => {
    const res = await fetch(url, { method: "POST", body, signal: AbortSignal.timeout(5000) });
    assert.equal(res.status, 200, `POST: ${res.status} ${await res.text()}`);
  };
  const get = async () => {
    const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
    assert.equal(res.status, 200, `GET: ${res.status}`);
    return (await res.text()).split("\x1e");
  };
  await post("40/voice,");
  const connected = await get();
  assert.ok(connected.some((p) => p.startsWith("40/voice,")), `CONNECT ack: ${connected}`);
  return { post, get };
}

/** 300 `authenticate` events with acks in one POST; the acks' codes. */
async function authenticateBurst(node, n = 300) {
  const session = await pollingVoice(node);
  const packets = [];
  for (let i = 0; i < n; i++) {
    packets.push(`42/voice,${i}["authenticate",{"pin":"${wrong(i)}"}]`);
  }
  await session.post(packets.join("\x1e"));
  const acks = new Map();
  const deadline = Date.now() + 20_000;
  while (acks.size < n && Date.now() < deadline) {
    for (const p of await session.get()) {
      const m = /^43\/voice,(\d+)\[(.*)\]$/.exec(p);
      if (m) acks.set(Number(m[1]), JSON.parse(m[2]).code);
    }
  }
  assert.equal(acks.size, n, `every authenticate is answered (${acks.size} of ${n})`);
  return [...acks.values()];
}

/** `n` concurrent CONNECTs with a wrong PIN (from `from(i)`, a loopback address, when
 * given); their refusal codes. */
async function connectBurst(urls, n = 60, from = null, pin = (i) => wrong(1000 + i)) {
  const attempts = [];
  for (let i = 0; i < n; i++) {
    const localAddress = from?.(i);
    const socket = io(urls[i % urls.length] + "/voice", {
      forceNew: true,
      transports: ["websocket"],
      reconnection: false,
      timeout: 10_000,
      auth: { pin: pin(i) },
      ...(localAddress ? { agent: new http.Agent({ localAddress }), localAddress } : {}),
    });
    const rec = new Recorder(socket);
    attempts.push(
      rec.nextOf(["connect", "connect_error"], 15_000).then((first) => {
        socket.disconnect();
        return first.event === "connect" ? "connected" : first.args[0]?.data?.code;
      }),
    );
  }
  return Promise.all(attempts);
}

/** `n` parallel `POST /login` with a wrong PIN; their codes. */
async function loginBurst(urls, n = 50) {
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const res = await fetch(urls[i % urls.length] + "/login", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ pin: wrong(2000 + i) }),
        signal: AbortSignal.timeout(10_000),
      });
      return (await res.json()).code;
    }),
  );
}

function report(label, codes, count) {
  console.log(`# ${label}: ${codes.length} tries, ${count} checked, ${JSON.stringify(tally(codes))}`);
}

function assertHeld(label, codes, count) {
  report(label, codes, count);
  assert.ok(count <= FREE, `${label}: ${count} wrong PINs checked, at most ${FREE} allowed`);
  assert.equal(
    codes.filter((c) => c === "invalid_pin").length,
    count,
    `${label}: every checked PIN was answered invalid_pin, every other one rate_limited`,
  );
  assert.ok(
    codes.every((c) => c === "invalid_pin" || c === "rate_limited"),
    `${label}: only invalid_pin or rate_limited: ${JSON.stringify(tally(codes))}`,
  );
}

describe("PIN guessing, one node in memory", () => {
  let node;
  const fresh = async () => {
    if (node) await node.stop();
    node = await startVoxioServer({ env: ENV });
    return node;
  };
  after(async () => {
    if (node) await node.stop();
  });

  test("300 authenticate events in one polling POST", OPTS, async () => {
    const n = await fresh();
    const codes = await authenticateBurst(n);
    assertHeld("memory, 300 authenticate in one POST", codes, await checked([n]));
  });

  test("60 concurrent CONNECTs with a wrong PIN", OPTS, async () => {
    const n = await fresh();
    const codes = await connectBurst([n.httpUrl]);
    assertHeld("memory, 60 concurrent CONNECT {pin}", codes, await checked([n]));
  });

  test("50 parallel POST /login", OPTS, async () => {
    const n = await fresh();
    const codes = await loginBurst([n.httpUrl]);
    assertHeld("memory, 50 parallel POST /login", codes, await checked([n]));
  });

  test("all three at once; the right PIN from another address still works", OPTS, async () => {
    const n = await fresh();
    const [a, b, c] = await Promise.all([
      authenticateBurst(n),
      connectBurst([n.httpUrl]),
      loginBurst([n.httpUrl]),
    ]);
    assertHeld("memory, all three at once", [...a, ...b, ...c], await checked([n]));
    const [other] = await connectBurst([n.httpUrl], 1, () => "127.0.0.2", () => n.pin);
    assert.equal(other, "connected", "another client address is not held back");
  });

  test("many addresses, one guess each: the global failure budget holds", OPTS, async () => {
    if (node) await node.stop();
    const BUDGET = 10;
    node = await startVoxioServer({ env: { ...ENV, VOXIO_PIN_GLOBAL_FAILURES_PER_MIN: String(BUDGET) } });
    const codes = await connectBurst([node.httpUrl], 40, (i) => `127.0.0.${10 + i}`);
    const count = await checked([node]);
    report(`memory, 40 addresses, budget ${BUDGET}/min`, codes, count);
    assert.equal(count, BUDGET, `the budget's ${BUDGET} wrong PINs are checked, no more`);
    assert.equal(codes.filter((c) => c === "rate_limited").length, 40 - BUDGET);
  });
});

describe("PIN guessing, two nodes on one Redis", () => {
  let redis;
  let nodes = [];
  before(async () => {
    redis = await startRedis();
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    if (redis) await redis.stop();
  });
  const fresh = async () => {
    for (const node of nodes) await node.stop();
    const env = { ...ENV, VOXIO_REDIS_URL: redis.url };
    nodes = [await startVoxioServer({ env }), await startVoxioServer({ env })];
    return nodes;
  };

  test("the three attacks at once, spread over both nodes", OPTS, async () => {
    const [a, b] = await fresh();
    const urls = [a.httpUrl, b.httpUrl];
    const results = await Promise.all([
      authenticateBurst(a),
      authenticateBurst(b),
      connectBurst(urls),
      loginBurst(urls),
    ]);
    assertHeld("redis, two nodes, 2×300 authenticate + 60 CONNECT + 50 login", results.flat(), await checked([a, b]));
  });
});
