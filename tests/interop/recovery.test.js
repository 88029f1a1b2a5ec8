// Connection state recovery (Socket.IO v4.6) with the official `socket.io-client`, against
// `voxio protocol-test`'s `/recovered` namespace (a 2 s window; see src/protocol_test.rs).
// The connection is dropped as a network would drop it (the TCP socket destroyed under a
// WebSocket) or closed by the client's engine (polling), while the server is sending.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { protocolTestServer, clientOptions, bounded, sleep, Recorder, waitWebsocket } from "./helpers.js";

const TEST_MS = 20_000;
const OPTS = { timeout: TEST_MS + 5_000 };

const getServer = protocolTestServer();

const MODES = [
  { label: "websocket only", transports: ["websocket"] },
  { label: "polling only", transports: ["polling"] },
  { label: "default (polling, then upgrade)", transports: undefined },
];

async function connect(cleanup, mode, extra = {}) {
  const socket = io(getServer().httpUrl + "/recovered", clientOptions(mode, extra));
  const rec = new Recorder(socket);
  cleanup(() => {
    socket.disconnect();
    socket.io._close();
  });
  const first = await rec.nextOf(["connect", "connect_error"]);
  if (first.event === "connect_error") throw new Error(`connect_error: ${first.args[0].message}`);
  if (!mode.transports) await waitWebsocket(socket);
  return { socket, rec };
}

/** Drops the connection under `socket`: the TCP socket destroyed (WebSocket), or the engine closed. */
function dropConnection(socket) {
  const transport = socket.io.engine.transport;
  if (transport.name === "websocket" && transport.ws && transport.ws._socket) {
    transport.ws._socket.destroy();
  } else {
    socket.io.engine.close();
  }
}

/** The args of the next `count` `seq` events, without their offsets. */
async function seqs(rec, count, ms = 5000) {
  const got = [];
  for (let i = 0; i < count; i++) {
    const args = await rec.next("seq", ms);
    got.push(args[0]);
  }
  return got;
}

for (const mode of MODES) {
  describe(`connection state recovery: ${mode.label}`, () => {
    test(
      "a dropped connection gets its socket back with every event sent meanwhile, in order",
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const { socket, rec } = await connect(cleanup, mode);
        assert.equal(socket.recovered, false, "a first connection is not a recovery");
        const id = socket.id;
        const [welcome] = await rec.next("welcome");
        assert.equal(welcome.id, id);
        assert.equal(rec.count("welcome"), 1);
        // Events carry an offset as their last argument (the client keeps it).
        await socket.emitWithAck("later", 3, 0);
        assert.deepEqual(await seqs(rec, 3), [0, 1, 2]);
        assert.ok(typeof socket._lastOffset === "string", "an offset was received");
        // 50 events sent while the connection is gone.
        await socket.emitWithAck("later", 50, 300);
        dropConnection(socket);
        await rec.next("disconnect");
        await rec.next("connect", 10_000);
        assert.equal(socket.recovered, true, "socket.recovered");
        assert.equal(socket.id, id, "the same socket id");
        const got = await seqs(rec, 50);
        assert.deepEqual(got, [...Array(50).keys()], "every missed event, in order, once");
        await sleep(200);
        assert.equal(rec.pending("seq"), 0, "nothing twice");
        assert.equal(rec.count("welcome"), 1, "no second connection handler");
        console.log(`# ${mode.label}: recovered with 50 missed events, 0 lost, 0 twice`);
      }),
    );

    test(
      "a recovered socket is back in its rooms",
      OPTS,
      bounded(getServer, TEST_MS, async (t, cleanup) => {
        const { socket, rec } = await connect(cleanup, mode);
        const { socket: other } = await connect(cleanup, mode);
        const room = `room-${mode.label}`;
        assert.equal(await socket.emitWithAck("join", room), 2);
        dropConnection(socket);
        await rec.next("disconnect");
        // Sent to the room while the member is away: kept for it.
        other.emit("to-room", room, "while away");
        await rec.next("connect", 10_000);
        assert.equal(socket.recovered, true);
        const [text] = await rec.next("room-message");
        assert.equal(text, "while away");
        other.emit("to-room", room, "after");
        assert.equal((await rec.next("room-message"))[0], "after");
      }),
    );
  });
}

describe("connection state recovery: limits", () => {
  test(
    "a client back after the window gets a new socket",
    OPTS,
    bounded(getServer, TEST_MS, async (t, cleanup) => {
      const mode = MODES[0];
      const { socket, rec } = await connect(cleanup, mode, { reconnectionDelay: 3000, reconnectionDelayMax: 3000 });
      const id = socket.id;
      await rec.next("welcome");
      dropConnection(socket);
      await rec.next("disconnect");
      await rec.next("connect", 10_000);
      assert.equal(socket.recovered, false, "past the 2 s window: not recovered");
      assert.notEqual(socket.id, id, "a new socket");
      await rec.next("welcome");
    }),
  );

  test(
    "a made-up private id or offset gets a new socket, never someone else's",
    OPTS,
    bounded(getServer, TEST_MS, async (t, cleanup) => {
      const mode = MODES[0];
      const { socket: victim } = await connect(cleanup, mode);
      for (const auth of [
        { pid: "x".repeat(20), offset: "1" },
        { pid: victim._pid, offset: "999999" },
        { pid: victim._pid, offset: 7 },
        { pid: 12 },
      ]) {
        const { socket } = await connect(cleanup, mode, { auth });
        assert.equal(socket.recovered, false, JSON.stringify(auth));
        assert.notEqual(socket.id, victim.id);
      }
      assert.equal(victim.connected, true, "the victim keeps its connection");
    }),
  );
});
