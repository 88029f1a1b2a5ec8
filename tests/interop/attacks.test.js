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

// ---------------------------------------------------------------------------------------------
// Limits and races around authentication.

const PIN_HASH = "$argon2id$v=19$m=19456,t=2,p=1$uk4oqX9ggaIj31ROv8/uag$7c7KcslbgMIKZn/NakoU2bfmavCjF1oV4ZeuJPbH6vQ"; // "482915"

async function pipelines(node) {
  return (await scrapeMetrics(node.httpUrl)).get("voxio_voice_pipelines") ?? 0;
}

async function until(what, check, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function voice(node, opts = {}) {
  const socket = io(node.httpUrl + "/voice", {
    forceNew: true,
    transports: ["websocket"],
    reconnection: false,
    timeout: 5000,
    ...opts,
  });
  return { socket, rec: new Recorder(socket) };
}

describe("limits and races", () => {
  const nodes = [];
  const start = async (env) => {
    const node = await startVoxioServer({ env: { ...ENV, ...env } });
    nodes.push(node);
    return node;
  };
  after(async () => {
    for (const node of nodes) await node.stop();
  });

  test("sessions per client address are capped; another address and a freed slot get in", OPTS, async () => {
    const node = await start({ VOXIO_MAX_SESSIONS_PER_CLIENT: "3" });
    const handshake = (localAddress) =>
      new Promise((resolve, reject) => {
        const req = http.get(`${node.httpUrl}/socket.io/?EIO=4&transport=polling`, { localAddress }, (res) => {
          let body = "";
          res.on("data", (d) => (body += d));
          res.on("end", () => resolve({ status: res.statusCode, body }));
        });
        req.on("error", reject);
      });
    const opened = [];
    for (let i = 0; i < 3; i++) opened.push(await handshake("127.0.0.1"));
    assert.deepEqual(opened.map((r) => r.status), [200, 200, 200]);
    const refused = await handshake("127.0.0.1");
    console.log(`# session cap 3: the 4th handshake from one address got ${refused.status} ${refused.body}`);
    assert.equal(refused.status, 429, "the 4th session from one address is refused");
    assert.equal(JSON.parse(refused.body).code, 3);
    assert.equal((await handshake("127.0.0.3")).status, 200, "another address is not held back");
    // Closing one of the three frees its slot.
    const sid = JSON.parse(opened[0].body.slice(1)).sid;
    await fetch(`${node.httpUrl}/socket.io/?EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: "1" });
    await until("a freed slot", async () => (await handshake("127.0.0.1")).status === 200);
  });

  test("a /voice socket that does not authenticate in time is disconnected", OPTS, async () => {
    const node = await start({ VOXIO_AUTH_TIMEOUT_MS: "400" });
    const started = Date.now();
    const idle = voice(node);
    await idle.rec.next("connect");
    const [err] = await idle.rec.next("auth_error", 3000);
    assert.equal(err.code, "auth_timeout");
    const [reason] = await idle.rec.next("disconnect", 3000);
    assert.equal(reason, "io server disconnect");
    console.log(`# auth timeout 400 ms: disconnected after ${Date.now() - started} ms`);
    // One that authenticates in time stays.
    const quick = voice(node, { auth: { pin: node.pin } });
    await quick.rec.next("authenticated");
    await new Promise((r) => setTimeout(r, 800));
    assert.ok(quick.socket.connected, "an authenticated socket is not timed out");
    quick.socket.disconnect();
  });

  test("no pipeline outlives its socket: a second authenticate, a disconnect while the PIN is checked", OPTS, async () => {
    const node = await start({ VOXIO_PIPELINE: "default", VOXIO_PIN_HASH: PIN_HASH, VOXIO_PIN_FREE_ATTEMPTS: "100" });
    assert.equal(await pipelines(node), 0);
    const a = voice(node);
    await a.rec.next("connect");
    const first = await a.socket.timeout(10_000).emitWithAck("authenticate", { pin: node.pin });
    assert.deepEqual(first, { via: "pin" });
    const again = await a.socket.timeout(10_000).emitWithAck("authenticate", { pin: node.pin });
    assert.deepEqual(again, { via: "pin" }, "a second authenticate is acked and starts nothing");
    assert.equal(await until("one pipeline", async () => (await pipelines(node)) === 1 && 1), 1);
    // Ten sockets leave while their (Argon2) PIN check is running.
    let left = 0;
    for (let i = 0; i < 10; i++) {
      const b = voice(node);
      await b.rec.next("connect");
      b.socket.emit("authenticate", { pin: node.pin });
      await new Promise((r) => setTimeout(r, 5));
      b.socket.disconnect();
      left++;
    }
    await new Promise((r) => setTimeout(r, 3000)); // every pending check has finished by now
    const live = await pipelines(node);
    console.log(`# pipelines after 1 double authenticate and ${left} disconnects mid-check: ${live}`);
    assert.equal(live, 1, "only the connected socket's pipeline runs");
    a.socket.disconnect();
    await until("no pipeline", async () => (await pipelines(node)) === 0);
  });

  test("a token connecting while its login logs out ends disconnected", OPTS, async () => {
    const node = await start({});
    const ROUNDS = 20;
    let refused = 0;
    let cut = 0;
    for (let i = 0; i < ROUNDS; i++) {
      const res = await fetch(node.httpUrl + "/login", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ pin: node.pin }),
      });
      assert.equal(res.status, 200);
      const cookie = res.headers.getSetCookie().find((c) => c.startsWith("voxio_session=")).split(";")[0];
      const { token } = await (await fetch(node.httpUrl + "/api/voice-token", { headers: { cookie } })).json();
      const s = voice(node, { auth: { token } });
      // The logout goes out a little after the CONNECT, racing its token check.
      await new Promise((r) => setTimeout(r, i % 5));
      const out = await fetch(node.httpUrl + "/logout", { method: "POST", headers: { cookie } });
      assert.equal(out.status, 204);
      const first = await s.rec.nextOf(["connect", "connect_error"], 5000);
      if (first.event === "connect_error") {
        refused++;
      } else {
        if (s.socket.connected) await s.rec.next("disconnect", 3000);
        cut++;
      }
      assert.ok(!s.socket.connected, `round ${i}: the socket ends disconnected`);
    }
    console.log(`# logout race, ${ROUNDS} rounds: ${refused} refused at CONNECT, ${cut} connected then cut`);
  });

  test("names echoed back are cut: a 5,000-byte namespace and a 100,000-byte event name", OPTS, async () => {
    const node = await start({});
    const base = `${node.httpUrl}/socket.io/?EIO=4&transport=polling`;
    const { sid } = JSON.parse((await (await fetch(base)).text()).slice(1));
    const url = `${base}&sid=${sid}`;
    await fetch(url, { method: "POST", body: `40/${"n".repeat(5000)},` });
    const answer = await (await fetch(url)).text();
    assert.match(answer, /^44\/n+,\{"message":"Invalid namespace"\}$/, answer.slice(0, 200));
    assert.ok(answer.length < 300, `the CONNECT_ERROR is ${answer.length} bytes`);

    const s = voice(node, { auth: { pin: node.pin } });
    await s.rec.next("authenticated");
    const longName = "e".repeat(100_000);
    const reply = await s.socket.timeout(5000).emitWithAck(longName, 1);
    const echoed = reply.error.event;
    const size = JSON.stringify(reply).length;
    console.log(`# echoed names: namespace CONNECT_ERROR ${answer.length} bytes, unknown-event error ${size} bytes (name ${echoed.length} of 100000)`);
    assert.equal(reply.error.code, "unknown_event");
    assert.ok(echoed.length <= 128 && size < 600, `the error echoes ${echoed.length} bytes of the name`);
    s.socket.disconnect();
  });

  test("a forged Origin with a matching X-Forwarded-Host from an untrusted client is refused", OPTS, async () => {
    const node = await start({});
    const url = `${node.httpUrl}/socket.io/?EIO=4&transport=polling`;
    const forged = await fetch(url, { headers: { origin: "http://evil.test", "x-forwarded-host": "evil.test", "x-forwarded-proto": "http" } });
    assert.equal(forged.status, 403, "polling handshake");
    const login = await fetch(node.httpUrl + "/login", {
      method: "POST",
      headers: { "content-type": "application/json", origin: "http://evil.test", "x-forwarded-host": "evil.test" },
      body: JSON.stringify({ pin: node.pin }),
    });
    assert.equal(login.status, 403, "POST /login");
    const same = await fetch(url, { headers: { origin: node.httpUrl } });
    assert.equal(same.status, 200, "the real origin still works");
    console.log(`# forged X-Forwarded-Host: handshake ${forged.status}, login ${login.status}; real origin ${same.status}`);
  });
});

test("VOXIO_METRICS_BIND: /metrics on its own address, not on the public one", OPTS, async () => {
  const { freePort } = await import("./helpers.js");
  const port = await freePort();
  const node = await startVoxioServer({ env: { ...ENV, VOXIO_METRICS_BIND: `127.0.0.1:${port}` } });
  try {
    const main = await fetch(node.httpUrl + "/metrics");
    assert.equal(main.status, 404, "not on the public address");
    // Something to count: one session opened on the public address.
    assert.equal((await fetch(`${node.httpUrl}/socket.io/?EIO=4&transport=polling`)).status, 200);
    const apart = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(apart.status, 200);
    assert.match(await apart.text(), /voxio_engine_sessions/);
  } finally {
    await node.stop();
  }
});
