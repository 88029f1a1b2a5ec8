// Interop test of voxio's Engine.IO v4 layer against the official `engine.io-client`.
// The server under test is `voxio protocol-test`, which echoes every message back.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Socket } from "engine.io-client";
import {
  protocolTestServer,
  bounded,
  toBuffer,
  patternBytes,
  MessageQueue,
  waitOpen,
  waitEvent,
  sleep,
} from "./helpers.js";

const TEST_MS = 15_000;
// node:test's own timeout, a backstop above the wrapper's bound.
const OPTS = { timeout: TEST_MS + 5_000 };

const getServer = protocolTestServer();

const TEXTS = ["hello voxio", "héllo wörld — ünïcödé ✓ 🚀"];
const SMALL = patternBytes(640, 1);
// maxPayload is 1,000,000 bytes. Over WebSocket a binary message travels as raw
// bytes in one frame, so 999,000 bytes fit. Over HTTP long-polling the v4 client
// always sends binary as "b" + base64, so the POST body of a 999,000-byte message
// would be 1,332,001 bytes (the server rightly answers 413); the largest binary
// message that fits is 749,997 bytes ("b" + 999,996 base64 chars = 999,997 bytes).
const LARGE_WS = patternBytes(999_000, 2);
const LARGE_POLLING = patternBytes(749_997, 3);

/** Opens a client socket and registers its closing; returns { socket, queue }. */
async function connect(cleanup, transports) {
  const opts = { path: "/engine.io/" };
  if (transports) opts.transports = transports;
  const socket = new Socket(getServer().wsUrl, opts);
  const queue = new MessageQueue(socket);
  cleanup(() => socket.close());
  await waitOpen(socket);
  return { socket, queue };
}

function assertSameBytes(actual, expected, what) {
  assert.notEqual(typeof actual, "string", `${what}: expected binary data, got a string`);
  const got = toBuffer(actual);
  assert.equal(got.length, expected.length, `${what}: length differs`);
  if (!got.equals(expected)) {
    let i = 0;
    while (got[i] === expected[i]) i++;
    assert.fail(`${what}: first differing byte at index ${i}: got ${got[i]}, expected ${expected[i]}`);
  }
}

/** Text, small binary and large binary round trips; calls check() after each. */
async function exchangeAll(socket, queue, check, large) {
  for (const text of TEXTS) {
    socket.send(text);
    const echo = await queue.next();
    assert.equal(typeof echo, "string", "text echo should arrive as a string");
    assert.equal(echo, text);
    check();
  }

  socket.send(SMALL);
  assertSameBytes(await queue.next(), SMALL, "640-byte binary echo");
  check();

  // A Uint8Array (not a Buffer) must work too.
  const u8 = new Uint8Array(SMALL.buffer.slice(SMALL.byteOffset, SMALL.byteOffset + SMALL.length));
  socket.send(u8);
  assertSameBytes(await queue.next(), SMALL, "640-byte Uint8Array echo");
  check();

  socket.send(large);
  assertSameBytes(await queue.next(10_000), large, `${large.length}-byte binary echo`);
  check();

  // Still usable after the large message.
  socket.send("after large");
  assert.equal(await queue.next(), "after large");
  check();
}

describe("engine.io-client interop (voxio protocol-test)", () => {
  test(
    "polling only: text and binary round trips",
    OPTS,
    bounded(getServer, TEST_MS, async (t, cleanup) => {
      const { socket, queue } = await connect(cleanup, ["polling"]);
      let upgraded = false;
      socket.on("upgrade", () => (upgraded = true));
      const check = () => {
        assert.equal(socket.transport.name, "polling");
        assert.equal(socket.readyState, "open");
        assert.equal(upgraded, false, "a polling-only client must not upgrade");
      };
      check();
      await exchangeAll(socket, queue, check, LARGE_POLLING);
      assert.deepEqual(queue.closes, []);
    }),
  );

  test(
    "websocket only: text and binary round trips",
    OPTS,
    bounded(getServer, TEST_MS, async (t, cleanup) => {
      const { socket, queue } = await connect(cleanup, ["websocket"]);
      const check = () => {
        assert.equal(socket.transport.name, "websocket");
        assert.equal(socket.readyState, "open");
      };
      check();
      await exchangeAll(socket, queue, check, LARGE_WS);
      assert.deepEqual(queue.closes, []);
    }),
  );

  test(
    "default transports: upgrade from polling to websocket, then round trips",
    OPTS,
    bounded(getServer, TEST_MS, async (t, cleanup) => {
      const socket = new Socket(getServer().wsUrl, { path: "/engine.io/" });
      const queue = new MessageQueue(socket);
      cleanup(() => socket.close());
      const upgraded = waitEvent(socket, "upgrade", 10_000);
      upgraded.catch(() => {}); // awaited below
      await waitOpen(socket);
      assert.equal(socket.transport.name, "polling", "the first transport is polling");

      const transport = await upgraded;
      assert.equal(transport.name, "websocket");
      assert.equal(socket.transport.name, "websocket");

      const check = () => {
        assert.equal(socket.transport.name, "websocket");
        assert.equal(socket.readyState, "open");
      };
      check();
      await exchangeAll(socket, queue, check, LARGE_WS);
      assert.deepEqual(queue.closes, []);
    }),
  );

  test(
    "default transports: messages sent before and during the upgrade all echo in order",
    OPTS,
    bounded(getServer, TEST_MS, async (t, cleanup) => {
      const socket = new Socket(getServer().wsUrl, { path: "/engine.io/" });
      const queue = new MessageQueue(socket);
      cleanup(() => socket.close());

      const expected = [];
      const sendTagged = (phase, i) => {
        if (i % 3 === 2) {
          // binary message: 3-byte header (phase, index) + pattern
          const buf = Buffer.concat([Buffer.from([phase.charCodeAt(0), i, 0xff]), patternBytes(100 + i, i)]);
          expected.push(buf);
          socket.send(buf);
        } else {
          const text = `${phase}-${i}`;
          expected.push(text);
          socket.send(text);
        }
      };

      let sentOnOpen = false;
      socket.on("open", () => {
        // Immediately after open, on polling, before the upgrade has begun/finished.
        for (let i = 0; i < 20; i++) sendTagged("o", i);
        sentOnOpen = true;
      });
      let sentWhileUpgrading = 0;
      socket.on("upgrading", () => {
        // The websocket probe succeeded; the client is pausing polling.
        for (let i = 0; i < 10; i++) sendTagged("u", i);
        sentWhileUpgrading = 10;
      });
      const upgraded = waitEvent(socket, "upgrade", 10_000);
      upgraded.catch(() => {});
      await waitOpen(socket);
      assert.ok(sentOnOpen);
      await upgraded;
      assert.equal(socket.transport.name, "websocket");
      assert.equal(sentWhileUpgrading, 10, 'the client emitted "upgrading" before "upgrade"');
      for (let i = 0; i < 10; i++) sendTagged("w", i);

      const total = 20 + sentWhileUpgrading + 10;
      assert.equal(expected.length, total);
      const got = await queue.take(total);
      for (let i = 0; i < total; i++) {
        if (typeof expected[i] === "string") {
          assert.equal(got[i], expected[i], `message #${i}`);
        } else {
          assertSameBytes(got[i], expected[i], `message #${i}`);
        }
      }
      // Nothing duplicated: no extra message arrives afterwards.
      socket.send("end");
      assert.equal(await queue.next(), "end", "no extra (duplicated) message before the marker");
      assert.equal(queue.items.length, 0);
      assert.equal(socket.transport.name, "websocket");
      assert.deepEqual(queue.closes, []);
    }),
  );

  test(
    "heartbeat: the connection survives several ping intervals on every transport",
    OPTS,
    bounded(getServer, TEST_MS, async (t, cleanup) => {
      const cases = [
        { label: "polling", transports: ["polling"], expect: "polling" },
        { label: "websocket", transports: ["websocket"], expect: "websocket" },
        { label: "default", transports: undefined, expect: "websocket" },
      ];
      const conns = await Promise.all(
        cases.map(async (c) => {
          const conn = { ...c, ...(await connect(cleanup, c.transports)), pings: 0 };
          conn.socket.on("ping", () => conn.pings++);
          return conn;
        }),
      );

      await sleep(1_500); // 5 ping intervals of 300 ms (pingTimeout 200 ms)

      for (const c of conns) {
        assert.deepEqual(c.queue.closes, [], `${c.label}: no close event`);
        assert.equal(c.socket.readyState, "open", `${c.label}: still open`);
        assert.equal(c.socket.transport.name, c.expect, `${c.label}: transport`);
        assert.ok(c.pings >= 3, `${c.label}: expected at least 3 pings in 1.5 s, got ${c.pings}`);
        c.socket.send(`still alive ${c.label}`);
        assert.equal(await c.queue.next(), `still alive ${c.label}`);
      }
    }),
  );
});
