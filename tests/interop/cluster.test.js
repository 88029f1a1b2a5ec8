// Several voxio nodes on one real Redis behind nginx with the repo's own config
// (deploy/nginx.conf, with the compose host names replaced by loopback ports), driven by the
// official socket.io-client:
//   1. a page login's voice sockets on two different nodes share the room login:<id>; a logout
//      on one node reaches both (auth_error logged_out, then io server disconnect);
//   2. polling clients behind nginx (each from its own loopback address, so the sticky hash
//      spreads them) complete their upgrade to WebSocket and stream audio with acks;
//   3. killing (SIGKILL) the node most of them are on: they reconnect through nginx to the
//      other node, authenticate again and go on streaming; the surviving node forgets the
//      dead one;
//   4. behind nginx (a trusted proxy), wrong PINs back off the client's own address only, not
//      every client behind the proxy;
//   5. a to-do list outlives its node: added on one node, that node killed, the client back
//      through nginx on the other node finds its list there (two more nodes, with the voice
//      pipeline).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { io } from "socket.io-client";
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

  test("polling clients behind nginx upgrade; when their node dies they reconnect to the other and go on",
    { timeout: 60_000 }, async () => {
      const clients = [];
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
        const moved = counts[victim];
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
        for (const [i, { socket, rec }] of clients.entries()) {
          // Connected on a WebSocket, and authenticated by every CONNECT (auth rides in it).
          while (!(socket.connected && socket.io.engine?.transport?.name === "websocket" && rec.count("authenticated") === rec.count("connect"))) {
            if (Date.now() > deadline) throw new Error(`client ${i} did not come back`);
            await sleep(50);
          }
          const ack = await audioAck(socket);
          assert.ok(ack.seq >= 1, `client ${i}: acks after the node loss`);
        }
        const reconnected = clients.filter(({ rec }, i) => rec.count("connect") > before[i]).length;
        assert.equal(reconnected, moved, "exactly the dead node's clients reconnected");
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

describe("a to-do list outlives its node", { timeout: 120_000 }, () => {
  let pair = [];
  let front;
  before(async () => {
    const env = {
      VOXIO_REDIS_URL: redis.url,
      VOXIO_SECRET: SECRET,
      VOXIO_CLUSTER_HEARTBEAT_MS: "200",
      VOXIO_CLUSTER_NODE_TIMEOUT_MS: "1000",
      VOXIO_TRUSTED_PROXIES: "127.0.0.1",
    };
    pair = [await startVoxioServer({ env }), await startVoxioServer({ env })];
    front = await startNginx(pair.map((n) => n.port));
  });
  after(async () => {
    for (const node of pair) await node.stop();
    if (front) await front.stop();
  });

  /** Waits for the reply to typed `text` (assistant.text.done) and the list after it. */
  async function typed(socket, rec, text) {
    socket.emit("text", { text });
    const [{ text: reply }] = await rec.next("assistant.text.done", 10_000);
    const [{ items }] = await rec.next("todos", 10_000);
    return { reply, items };
  }

  test("added on one node, that node killed: the other node has the list", { timeout: 60_000 }, async () => {
    const { socket, rec } = connect(front.url, {
      auth: { pin: pair[0].pin },
      transports: ["websocket"],
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      randomizationFactor: 0,
    });
    try {
      await rec.next("connect", 10_000);
      const [{ items: fresh }] = await rec.next("todos", 10_000);
      assert.deepEqual(fresh, [], "a fresh list");
      await rec.next("session.ready", 10_000);
      const first = await typed(socket, rec, "add coffee to my list");
      assert.equal(first.reply, "Added coffee to your list.");
      assert.deepEqual(first.items, ["coffee"]);

      let holder = -1;
      for (const [k, node] of pair.entries()) {
        const m = await scrapeMetrics(node.httpUrl);
        if ((m.get('voxio_engine_sessions{transport="websocket"}') ?? 0) === 1) holder = k;
      }
      assert.ok(holder >= 0, "one node holds the socket");
      const gone = await pair[holder].kill("SIGKILL");
      assert.equal(gone.signal, "SIGKILL");
      // Back through nginx on the other node: authenticated by its CONNECT again, and the
      // list it is sent on connection is the one the dead node changed.
      await rec.next("disconnect", 10_000);
      await rec.next("connect", 20_000);
      const [{ items }] = await rec.next("todos", 20_000);
      await rec.next("session.ready", 10_000);
      assert.deepEqual(items, ["coffee"], "the list on the other node");
      const after = await typed(socket, rec, "what is on my list");
      assert.equal(after.reply, "Your list has coffee.");
      console.log(`# list added on node ${holder}, read back on node ${1 - holder} after a SIGKILL: ${JSON.stringify(after.items)}`);
    } finally {
      socket.disconnect();
    }
  });
});
