// Interop test of voxio's Socket.IO v5 layer against the official `socket.io-client`.
// The server under test is `voxio protocol-test` (see src/protocol_test.rs): its
// /socket.io/ endpoint has pingInterval 300 ms, pingTimeout 200 ms, maxPayload
// 1,000,000 and connectTimeout 1,000 ms, and serves namespaces `/`, `/custom` and
// `/refused` with the events used below.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { protocolTestServer, clientOptions, bounded, toBuffer, patternBytes, sleep, Recorder, waitWebsocket } from "./helpers.js";

const TEST_MS = 15_000;
// node:test's own timeout, a backstop above the wrapper's bound.
const OPTS = { timeout: TEST_MS + 5_000 };

const getServer = protocolTestServer();

const SMALL = patternBytes(640, 11);
// maxPayload is 1,000,000 bytes. Over WebSocket a binary attachment travels as raw
// bytes in its own frame, so 999,000 bytes fit. Over HTTP long-polling the client
// sends every binary attachment as "b" + base64 inside the POST body, so 999,000
// bytes would become a ~1,332,000-byte body and exceed maxPayload; 700,000 bytes
// (933,336 base64 characters plus the event's header packet) fit.
const LARGE_WS = patternBytes(999_000, 12);
const LARGE_POLLING = patternBytes(700_000, 13);

const MODES = [
  { label: "websocket only", transports: ["websocket"], expect: "websocket", large: LARGE_WS },
  { label: "polling only", transports: ["polling"], expect: "polling", large: LARGE_POLLING },
  { label: "default (polling, then upgrade)", transports: undefined, expect: "websocket", large: LARGE_WS },
];


/**
 * Opens a client socket on `nsp` and registers its closing. Unless `waitConnect` is
 * false, waits for `connect` (and, in default mode, for the upgrade to WebSocket)
 * and checks the transport. Returns { socket, rec }.
 */
async function connect(cleanup, mode, nsp = "/", { extra = {}, waitConnect = true, waitUpgrade = true } = {}) {
  const socket = io(getServer().httpUrl + nsp, clientOptions(mode, extra));
  const rec = new Recorder(socket);
  cleanup(() => {
    socket.disconnect();
    socket.io._close();
  });
  if (!waitConnect) return { socket, rec };
  const first = await rec.nextOf(["connect", "connect_error"]);
  if (first.event === "connect_error") throw new Error(`connect_error on ${nsp}: ${first.args[0].message}`);
  assert.ok(socket.connected, "connected after the connect event");
  if (!mode.transports && waitUpgrade) {
    await waitWebsocket(socket);
    assert.equal(socket.io.engine.transport.name, "websocket", "upgraded to websocket");
  }
  if (waitUpgrade) assert.equal(socket.io.engine.transport.name, mode.expect, "transport");
  return { socket, rec };
}

/** Converts received binaries (Buffer, ArrayBuffer, typed arrays) to Buffers, recursively. */
function normalize(value) {
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return toBuffer(value);
  if (Array.isArray(value)) return value.map(normalize);
  if (value && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = normalize(v);
    return out;
  }
  return value;
}

function assertSameBytes(actual, expected, what) {
  assert.ok(
    actual instanceof ArrayBuffer || ArrayBuffer.isView(actual),
    `${what}: expected binary data, got ${typeof actual} ${JSON.stringify(actual)?.slice(0, 200)}`,
  );
  const got = toBuffer(actual);
  assert.equal(got.length, expected.length, `${what}: length differs`);
  if (!got.equals(expected)) {
    let i = 0;
    while (got[i] === expected[i]) i++;
    assert.fail(`${what}: first differing byte at index ${i}: got ${got[i]}, expected ${expected[i]}`);
  }
}

/** Deep equality where Buffers in `expected` match received binaries byte for byte (short messages). */
function assertArgs(actual, expected, what) {
  const check = (a, e, path) => {
    if (Buffer.isBuffer(e)) return assertSameBytes(a, e, `${what} at ${path}`);
    if (Array.isArray(e)) {
      assert.ok(Array.isArray(a), `${what} at ${path}: expected an array, got ${JSON.stringify(normalize(a))}`);
      assert.equal(a.length, e.length, `${what} at ${path}: array length`);
      e.forEach((x, i) => check(a[i], x, `${path}[${i}]`));
      return;
    }
    if (e && typeof e === "object") {
      assert.ok(a && typeof a === "object" && !Array.isArray(a), `${what} at ${path}: expected an object`);
      assert.deepEqual(Object.keys(a).sort(), Object.keys(e).sort(), `${what} at ${path}: keys`);
      for (const k of Object.keys(e)) check(a[k], e[k], `${path}.${k}`);
      return;
    }
    assert.deepEqual(a, e, `${what} at ${path}`);
  };
  check(actual, expected, "args");
}

describe("socket.io-client interop (voxio protocol-test)", () => {
  // 1. auth payload on connection
  for (const mode of MODES) {
    test(
      `${mode.label}: the CONNECT auth payload comes back in "auth" on / and /custom`,
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        for (const nsp of ["/", "/custom"]) {
          const withAuth = await connect(cleanup, mode, nsp, { extra: { auth: { token: "abc" } } });
          assert.deepEqual(await withAuth.rec.next("auth"), [{ token: "abc" }], `${nsp} with auth`);

          const withoutAuth = await connect(cleanup, mode, nsp);
          assert.deepEqual(await withoutAuth.rec.next("auth"), [{}], `${nsp} without auth`);
          assert.notEqual(withAuth.socket.id, withoutAuth.socket.id);
        }
      }),
    );
  }

  // 2. refused connections
  for (const mode of MODES) {
    test(
      `${mode.label}: /refused gives connect_error with data, /nope gives "Invalid namespace"`,
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const refused = await connect(cleanup, mode, "/refused", { waitConnect: false });
        const [err] = await refused.rec.next("connect_error");
        assert.equal(err.message, "refused");
        assert.deepEqual(err.data, { reason: "test" });
        assert.equal(refused.socket.connected, false);

        const nope = await connect(cleanup, mode, "/nope", { waitConnect: false });
        const [err2] = await nope.rec.next("connect_error");
        assert.equal(err2.message, "Invalid namespace");
        assert.equal(nope.socket.connected, false);

        // Neither socket connects afterwards (a refused CONNECT is final).
        await sleep(300);
        assert.equal(refused.rec.pending("connect"), 0, "/refused never connects");
        assert.equal(nope.rec.pending("connect"), 0, "/nope never connects");
      }),
    );
  }

  // 3. emit and receive
  for (const mode of MODES) {
    test(
      `${mode.label}: "message" with mixed args comes back as "message-back"`,
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const { socket, rec } = await connect(cleanup, mode);
        const args = [42, "héllo ✓ 🚀", { a: 1, b: { c: [true, false] }, s: "x" }, [1, "two", null, 3.5], null];
        socket.emit("message", ...args);
        assert.deepEqual(await rec.next("message-back"), args);

        socket.emit("message", "only one");
        assert.deepEqual(await rec.next("message-back"), ["only one"]);
      }),
    );
  }

  // 4. acks client -> server
  for (const mode of MODES) {
    test(
      `${mode.label}: "message-with-ack" is acknowledged with the same args`,
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const { socket } = await connect(cleanup, mode);

        // emitWithAck resolves with the first ack argument only.
        const one = await socket.timeout(3000).emitWithAck("message-with-ack", { hello: "world", n: [1, 2] });
        assert.deepEqual(one, { hello: "world", n: [1, 2] });

        // Callback form: every ack argument.
        const args = [1, "two", { three: 3 }, [4, null], null, false];
        const acked = await new Promise((resolve, reject) => {
          socket.timeout(3000).emit("message-with-ack", ...args, (err, ...ackArgs) =>
            err ? reject(err) : resolve(ackArgs),
          );
        });
        assert.deepEqual(acked, args);

        // Plain callback without timeout.
        const acked2 = await new Promise((resolve) => socket.emit("message-with-ack", "a", "b", (...r) => resolve(r)));
        assert.deepEqual(acked2, ["a", "b"]);
      }),
    );
  }

  // 5. acks server -> client
  for (const mode of MODES) {
    test(
      `${mode.label}: the server's "question" is acked and the ack comes back in "answer"`,
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const { socket, rec } = await connect(cleanup, mode);
        const questions = [];
        socket.on("question", (...args) => {
          const ack = args.pop();
          assert.equal(typeof ack, "function", '"question" carries an ack request');
          questions.push(args);
          ack("yes", 42, { ok: true, list: [1, 2] }, SMALL);
        });
        socket.emit("ask", "what?", 7, { q: 1 });
        const answer = await rec.next("answer");
        assert.deepEqual(questions, [["what?", 7, { q: 1 }]]);
        assertArgs(answer, ["yes", 42, { ok: true, list: [1, 2] }, SMALL], '"answer"');
      }),
    );
  }

  // 6. binary both ways
  for (const mode of MODES) {
    test(
      `${mode.label}: binary round trips (640 B, ${mode.large.length} B, nested), by event and by ack`,
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const { socket, rec } = await connect(cleanup, mode);
        const ack = (...args) =>
          new Promise((resolve, reject) =>
            socket.timeout(10_000).emit("message-with-ack", ...args, (err, ...r) => (err ? reject(err) : resolve(r))),
          );

        // 640 bytes, with text around it.
        socket.emit("message", "small", SMALL, 1);
        assertArgs(await rec.next("message-back"), ["small", SMALL, 1], "640 B message-back");
        assertArgs(await ack("small", SMALL, 1), ["small", SMALL, 1], "640 B ack");

        // Large.
        socket.emit("message", mode.large);
        const [big] = await rec.next("message-back", 10_000);
        assertSameBytes(big, mode.large, `${mode.large.length} B message-back`);
        const [bigAck] = await ack(mode.large);
        assertSameBytes(bigAck, mode.large, `${mode.large.length} B ack`);

        // Nested binary inside an object, and two attachments in one event.
        const nested = { audio: SMALL, seq: 1 };
        socket.emit("message", nested);
        assertArgs(await rec.next("message-back"), [nested], "nested message-back");
        assertArgs(await ack(nested), [nested], "nested ack");
        const two = [{ parts: [SMALL, patternBytes(10, 99)], meta: { seq: 2 } }, patternBytes(3, 7)];
        socket.emit("message", ...two);
        assertArgs(await rec.next("message-back"), two, "two attachments message-back");
        assertArgs(await ack(...two), two, "two attachments ack");

        // Still usable, and still on the expected transport.
        socket.emit("message", "after binary");
        assert.deepEqual(await rec.next("message-back"), ["after binary"]);
        assert.equal(socket.io.engine.transport.name, mode.expect);
        assert.equal(rec.pending("disconnect"), 0);
      }),
    );
  }

  // 7. rooms
  for (const mode of MODES) {
    test(
      `${mode.label}: "to-room" reaches both members of the room (sender included), not the outsider`,
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const [a, b, c] = await Promise.all([connect(cleanup, mode), connect(cleanup, mode), connect(cleanup, mode)]);
        const joinAck = await a.socket.timeout(3000).emitWithAck("join", "r1");
        assert.equal(joinAck, undefined, "the join ack is empty");
        await b.socket.timeout(3000).emitWithAck("join", "r1");

        const payload = [{ text: "hi room", n: 1 }, SMALL];
        a.socket.emit("to-room", "r1", ...payload);
        assertArgs(await a.rec.next("room-message"), payload, "sender (member) gets room-message");
        assertArgs(await b.rec.next("room-message"), payload, "other member gets room-message");
        await sleep(500);
        assert.equal(c.rec.pending("room-message"), 0, "the outsider gets no room-message");
        assert.equal(a.rec.pending("room-message"), 0, "the sender gets it once");
        assert.equal(b.rec.pending("room-message"), 0, "the member gets it once");

        // The outsider can send to the room without being in it.
        c.socket.emit("to-room", "r1", "from outside");
        assert.deepEqual(await a.rec.next("room-message"), ["from outside"]);
        assert.deepEqual(await b.rec.next("room-message"), ["from outside"]);
        await sleep(300);
        assert.equal(c.rec.pending("room-message"), 0, "the outsider still gets nothing");
      }),
    );
  }

  // 8. server-side disconnect
  for (const mode of MODES) {
    test(
      `${mode.label}: "server-disconnect" gives "io server disconnect" and no automatic reconnect`,
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const { socket, rec } = await connect(cleanup, mode);
        const firstId = socket.id;
        const reconnectAttempts = [];
        socket.io.on("reconnect_attempt", (n) => reconnectAttempts.push(n));

        socket.emit("server-disconnect");
        const [reason] = await rec.next("disconnect");
        assert.equal(reason, "io server disconnect");
        assert.equal(socket.connected, false);

        await sleep(1_000);
        assert.equal(rec.pending("connect"), 0, "no automatic reconnect");
        assert.equal(socket.connected, false);
        assert.deepEqual(reconnectAttempts, [], "the manager made no reconnection attempt");

        // The same manager can still connect another namespace...
        const custom = socket.io.socket("/custom");
        const customRec = new Recorder(custom);
        cleanup(() => custom.disconnect());
        await customRec.next("connect");
        assert.deepEqual(await customRec.next("auth"), [{}]);

        // ... and "/" again, by hand.
        socket.connect();
        await rec.next("connect");
        assert.notEqual(socket.id, firstId, "a new session id after reconnecting by hand");
        assert.deepEqual(await rec.next("auth"), [{}]);
        socket.emit("message", "back again");
        assert.deepEqual(await rec.next("message-back"), ["back again"]);
        assert.equal(socket.io.engine, custom.io.engine, "both namespaces share the connection");
      }),
    );
  }

  // 9. automatic reconnect
  for (const mode of MODES) {
    test(
      `${mode.label}: "close-transport" gives "transport close", then an automatic reconnect`,
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const { socket, rec } = await connect(cleanup, mode);
        assert.deepEqual(await rec.next("auth"), [{}]);
        const firstId = socket.id;
        const firstEngine = socket.io.engine;

        socket.emit("close-transport");
        const [reason] = await rec.next("disconnect");
        assert.equal(reason, "transport close");

        await rec.next("connect", 5000);
        assert.ok(socket.connected);
        assert.notEqual(socket.id, firstId, "a new socket id after reconnecting");
        assert.notEqual(socket.io.engine, firstEngine, "a new Engine.IO connection");
        assert.deepEqual(await rec.next("auth"), [{}]);
        if (!mode.transports) await waitWebsocket(socket);
        assert.equal(socket.io.engine.transport.name, mode.expect);

        socket.emit("message", "after reconnect", SMALL);
        assertArgs(await rec.next("message-back"), ["after reconnect", SMALL], "message-back after reconnect");
        const acked = await socket.timeout(3000).emitWithAck("message-with-ack", "ack after reconnect");
        assert.equal(acked, "ack after reconnect");
        assert.equal(rec.pending("disconnect"), 0, "only one disconnect");
      }),
    );
  }

  // 10. order
  const N = 200;
  /** Emits `message` #i: text only for even i, with a 640-byte buffer for odd i. */
  const emitNumbered = (socket, i) => {
    if (i % 2 === 0) socket.emit("message", i, `text ${i}`);
    else socket.emit("message", i, patternBytes(640, i));
  };
  async function expectNumbered(socket, rec) {
    for (let i = 0; i < N; i++) {
      const args = await rec.next("message-back", 10_000);
      assert.equal(args[0], i, `message #${i}: sequence number`);
      if (i % 2 === 0) assert.deepEqual(args, [i, `text ${i}`], `message #${i}`);
      else {
        assert.equal(args.length, 2, `message #${i}: arg count`);
        assertSameBytes(args[1], patternBytes(640, i), `message #${i}`);
      }
    }
    socket.emit("message", "end");
    assert.deepEqual(await rec.next("message-back"), ["end"], "nothing extra (duplicated) before the marker");
    assert.equal(rec.pending("message-back"), 0);
    assert.equal(rec.pending("disconnect"), 0);
  }

  for (const mode of MODES) {
    test(
      `${mode.label}: ${N} back-to-back "message" emits come back in order`,
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const { socket, rec } = await connect(cleanup, mode);
        for (let i = 0; i < N; i++) emitNumbered(socket, i);
        await expectNumbered(socket, rec);
        assert.equal(socket.io.engine.transport.name, mode.expect);
      }),
    );
  }

  test(
    `default (polling, then upgrade): ${N} emits before CONNECT, during and after the upgrade come back in order`,
    OPTS,
    bounded(getServer, TEST_MS, async (t, cleanup) => {
      const { socket, rec } = await connect(cleanup, MODES[2], "/", { waitConnect: false });
      let sent = 0;
      // Before the namespace is connected: the client buffers these and sends them
      // right after the CONNECT reply, over polling.
      while (sent < 100) emitNumbered(socket, sent++);
      // When the WebSocket probe succeeded and the client pauses polling.
      let sentWhileUpgrading = 0;
      socket.io.engine.once("upgrading", () => {
        for (let k = 0; k < 50; k++, sentWhileUpgrading++) emitNumbered(socket, sent++);
      });
      await rec.next("connect");
      await waitWebsocket(socket);
      assert.equal(socket.io.engine.transport.name, "websocket");
      assert.equal(sentWhileUpgrading, 50, 'the engine emitted "upgrading" before "upgrade"');
      while (sent < N) emitNumbered(socket, sent++);
      await expectNumbered(socket, rec);
    }),
  );
});
