// Interop test of the MAIN voxio server's `/voice` namespace and page login routes against
// the official `socket.io-client` and Node's fetch: the three ways to authenticate, audio
// acks, wrong PINs and their backoff, events before authentication, logout, and
// cross-origin refusal. Each case runs over WebSocket only, polling only, and the default
// (polling, then upgrade to WebSocket) where the transport matters.
//
// Every test starts from 127.0.0.1, and failed PIN attempts are limited per client
// address, so no test on the shared server sends a wrong PIN: the backoff tests each start
// a fresh server with VOXIO_PIN_FREE_ATTEMPTS=1 and VOXIO_PIN_BACKOFF_MS=400.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startVoxioServer, bounded, patternBytes, sleep, Recorder, waitWebsocket } from "./helpers.js";

const TEST_MS = 15_000;
// node:test's own timeout, a backstop above the wrapper's bound.
const OPTS = { timeout: TEST_MS + 5_000 };

const NSP = "/voice";
const CHUNK = patternBytes(640, 21);
const EVIL = "http://evil.test";

const MODES = [
  { label: "websocket only", transports: ["websocket"], expect: "websocket" },
  { label: "polling only", transports: ["polling"], expect: "polling" },
  { label: "default (polling, then upgrade)", transports: undefined, expect: "websocket" },
];

// Backoff settings of the fresh servers of the backoff tests.
const FREE = 1;
const BACKOFF_MS = 400;
const BACKOFF_ENV = {
  // No voice pipeline (audio is acked and dropped): these servers start in a blink, so the
  // backoff timings, not model loading on a busy machine, fill the test's time bound.
  VOXIO_PIPELINE: "none",
  VOXIO_PIN_FREE_ATTEMPTS: String(FREE),
  VOXIO_PIN_BACKOFF_MS: String(BACKOFF_MS),
  VOXIO_PIN_BACKOFF_MAX_MS: "60000",
};


/** Describes a connect_error for assertion messages. */
function describeError(err) {
  if (!err) return String(err);
  const parts = [`message=${JSON.stringify(err.message)}`];
  if (err.data !== undefined) parts.push(`data=${JSON.stringify(err.data)}`);
  if (err.description !== undefined) {
    const d = err.description;
    parts.push(`description=${d && d.message ? d.message : JSON.stringify(d)}`);
  }
  if (err.context && err.context.status) parts.push(`status=${err.context.status}`);
  return parts.join(" ");
}

/**
 * Opens a client socket on /voice of `server` (never reconnecting, so every attempt is one
 * the test makes) and registers its closing. Returns { socket, rec }.
 */
function open(server, cleanup, mode, { auth, extraHeaders } = {}) {
  const opts = { forceNew: true, reconnection: false, timeout: 5000 };
  if (mode.transports) opts.transports = mode.transports;
  if (auth !== undefined) opts.auth = auth;
  if (extraHeaders) opts.extraHeaders = extraHeaders;
  const socket = io(server.httpUrl + NSP, opts);
  const rec = new Recorder(socket);
  cleanup(() => {
    socket.disconnect();
    socket.io._close();
  });
  return { socket, rec };
}

/** Waits for `connect`; fails with the details of a `connect_error`. */
async function expectConnected(rec, what) {
  const first = await rec.nextOf(["connect", "connect_error"]);
  if (first.event === "connect_error") {
    assert.fail(`${what}: expected to connect, got connect_error ${describeError(first.args[0])}`);
  }
  assert.ok(rec.socket.connected, `${what}: connected after the connect event`);
}

/** Waits for `connect_error` and returns the error; fails if the socket connects. */
async function expectConnectError(rec, what) {
  const first = await rec.nextOf(["connect", "connect_error"]);
  if (first.event === "connect") {
    assert.fail(`${what}: expected connect_error, but the socket connected (id ${rec.socket.id})`);
  }
  return first.args[0];
}

/** Waits for `authenticated` and checks its body. */
async function expectAuthenticated(rec, via, what) {
  const [body] = await rec.next("authenticated");
  assert.deepEqual(body, { via }, `${what}: the authenticated event's body`);
}

/** Checks an auth refusal body: {code, message, retryAfterMs} with the given code. */
function assertRefusal(body, code, what) {
  assert.ok(body && typeof body === "object", `${what}: expected an object, got ${JSON.stringify(body)}`);
  assert.equal(body.code, code, `${what}: code (body ${JSON.stringify(body)})`);
  assert.equal(typeof body.message, "string", `${what}: message is a string (body ${JSON.stringify(body)})`);
  assert.ok(body.message.length > 0, `${what}: message is not empty`);
  assert.ok(
    Number.isInteger(body.retryAfterMs) && body.retryAfterMs >= 0,
    `${what}: retryAfterMs is a non-negative integer (body ${JSON.stringify(body)})`,
  );
}

/** Checks a refused CONNECT: connect_error with err.message and err.data.code. */
function assertConnectRefused(err, code, what) {
  assert.ok(err.data, `${what}: connect_error carries data (${describeError(err)})`);
  assertRefusal(err.data, code, what);
  assert.equal(err.message, err.data.message, `${what}: err.message is data.message`);
}

/**
 * Sends `count` 640-byte `audio` chunks back to back, each asking for an ack; returns the
 * acks in the order they arrived.
 */
async function sendAudio(socket, count, ms = 5000) {
  const arrived = [];
  const pending = [];
  for (let i = 0; i < count; i++) {
    pending.push(
      socket
        .timeout(ms)
        .emitWithAck("audio", CHUNK)
        .then((ack) => {
          arrived.push(ack);
          return ack;
        }),
    );
  }
  await Promise.all(pending);
  return arrived;
}

/**
 * Sends `count` audio chunks and checks the acks are {seq, bytes: 640}, seq from `first` on, in
 * order (with the voice pipeline on, an ack also counts the chunks it had to drop: `dropped`).
 */
async function expectAudioAcks(socket, count, first, what) {
  const acks = await sendAudio(socket, count);
  const expected = Array.from({ length: count }, (_, i) => ({ seq: first + i, bytes: CHUNK.length }));
  const seen = acks.map((ack) => ({ seq: ack?.seq, bytes: ack?.bytes }));
  assert.deepEqual(seen, expected, `${what}: audio acks, in arrival order`);
  for (const ack of acks) {
    if ("dropped" in ack) assert.equal(typeof ack.dropped, "number", `${what}: dropped is a count`);
  }
}

/** In default mode, waits for the upgrade; then checks the transport is the mode's. */
async function checkTransport(socket, mode, what) {
  if (!mode.transports) await waitWebsocket(socket);
  assert.equal(socket.io.engine.transport.name, mode.expect, `${what}: transport`);
}

/** Sends audio 1..5 at once, then (default mode) 6..8 after the upgrade, checking the acks. */
async function audioRoundTrip(socket, mode, what) {
  await expectAudioAcks(socket, 5, 1, what);
  if (!mode.transports) {
    await waitWebsocket(socket);
    await expectAudioAcks(socket, 3, 6, `${what} (after the upgrade)`);
  }
  await checkTransport(socket, mode, what);
}

// ---------------------------------------------------------------------------------------
// HTTP helpers (fetch, with the session cookie carried by hand)

/** The `voxio_session` cookie's Set-Cookie header of a response, or null. */
function sessionSetCookie(res) {
  return res.headers.getSetCookie().find((c) => c.startsWith("voxio_session=")) || null;
}

/** `name=value` of a Set-Cookie header. */
function cookiePair(setCookie) {
  return setCookie.split(";")[0].trim();
}

/** Whether a Set-Cookie header removes its cookie (empty value, Max-Age=0 or an Expires in the past). */
function removesCookie(setCookie) {
  const [pair, ...attrs] = setCookie.split(";").map((s) => s.trim());
  const value = pair.slice(pair.indexOf("=") + 1);
  if (value === "") return true;
  for (const a of attrs) {
    const [k, v] = a.split("=");
    if (k.toLowerCase() === "max-age" && Number(v) <= 0) return true;
    if (k.toLowerCase() === "expires" && Date.parse(v) <= Date.now()) return true;
  }
  return false;
}

async function postJson(server, route, body, headers = {}) {
  return fetch(server.httpUrl + route, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
}

/** POST /login with the right PIN; checks the answer and returns the cookie (`name=value`). */
async function login(server) {
  const res = await postJson(server, "/login", { pin: server.pin });
  const text = await res.text();
  assert.equal(res.status, 200, `POST /login: status (body ${text})`);
  assert.deepEqual(JSON.parse(text), { ok: true }, "POST /login: body");
  const setCookie = sessionSetCookie(res);
  assert.ok(setCookie, `POST /login sets voxio_session (Set-Cookie: ${JSON.stringify(res.headers.getSetCookie())})`);
  assert.match(setCookie, /;\s*HttpOnly/i, `the session cookie is HttpOnly: ${setCookie}`);
  assert.match(setCookie, /;\s*SameSite=Strict/i, `the session cookie is SameSite=Strict: ${setCookie}`);
  return cookiePair(setCookie);
}

/** GET /api/voice-token with `cookie` (or none): { status, body }. */
async function voiceToken(server, cookie) {
  const res = await fetch(server.httpUrl + "/api/voice-token", {
    headers: cookie ? { cookie } : {},
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: res.status, body };
}

/** A fresh voice token for `cookie`. */
async function token(server, cookie) {
  const { status, body } = await voiceToken(server, cookie);
  assert.equal(status, 200, `GET /api/voice-token: status (body ${JSON.stringify(body)})`);
  assert.equal(typeof body.token, "string", `GET /api/voice-token: token (body ${JSON.stringify(body)})`);
  assert.ok(body.token.length > 0, "GET /api/voice-token: non-empty token");
  assert.ok(
    Number.isInteger(body.expiresInMs) && body.expiresInMs > 0,
    `GET /api/voice-token: expiresInMs > 0 (body ${JSON.stringify(body)})`,
  );
  return body.token;
}

// ---------------------------------------------------------------------------------------
// One server for everything that sends no wrong PIN.

describe("voice auth on the main server", () => {
  let server;
  const getServer = () => server;

  before(async () => {
    server = await startVoxioServer();
  });

  after(async () => {
    if (server) await server.stop();
  });

  test("GET /healthz answers ok", OPTS, bounded(getServer, TEST_MS, async () => {
    const res = await fetch(server.httpUrl + "/healthz", { signal: AbortSignal.timeout(5000) });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok");
  }));

  for (const mode of MODES) {
    describe(mode.label, () => {
      test("CONNECT with auth {pin}: authenticated via pin, audio acked 1..n in order", OPTS,
        bounded(getServer, TEST_MS, async (t, cleanup) => {
          const { socket, rec } = open(server, cleanup, mode, { auth: { pin: server.pin } });
          await expectConnected(rec, "CONNECT with the right PIN");
          await expectAuthenticated(rec, "pin", "CONNECT with the right PIN");
          await audioRoundTrip(socket, mode, "after CONNECT {pin}");
          assert.equal(rec.pending("error"), 0, "no error event");
        }));

      test("CONNECT with auth {token} from POST /login + GET /api/voice-token: authenticated via token, audio acked", OPTS,
        bounded(getServer, TEST_MS, async (t, cleanup) => {
          const cookie = await login(server);
          const tok = await token(server, cookie);
          const { socket, rec } = open(server, cleanup, mode, { auth: { token: tok } });
          await expectConnected(rec, "CONNECT with a voice token");
          await expectAuthenticated(rec, "token", "CONNECT with a voice token");
          await audioRoundTrip(socket, mode, "after CONNECT {token}");
          assert.equal(rec.pending("error"), 0, "no error event");
        }));

      test("CONNECT with a bad token: connect_error invalid_token", OPTS,
        bounded(getServer, TEST_MS, async (t, cleanup) => {
          const cookie = await login(server);
          const tok = await token(server, cookie);
          // Flip one character of the signature.
          const last = tok.at(-1) === "A" ? "B" : "A";
          const forged = tok.slice(0, -1) + last;
          for (const bad of [forged, "not-a-token"]) {
            const { rec } = open(server, cleanup, mode, { auth: { token: bad } });
            const err = await expectConnectError(rec, `CONNECT with token ${JSON.stringify(bad.slice(0, 20))}...`);
            assertConnectRefused(err, "invalid_token", `CONNECT with a bad token`);
          }
        }));

      test("CONNECT without auth, then `authenticate` {pin}: acked and authenticated via pin, audio acked", OPTS,
        bounded(getServer, TEST_MS, async (t, cleanup) => {
          const { socket, rec } = open(server, cleanup, mode);
          await expectConnected(rec, "CONNECT without auth");
          const ack = await socket.timeout(5000).emitWithAck("authenticate", { pin: server.pin });
          assert.deepEqual(ack, { via: "pin" }, "the authenticate ack");
          await expectAuthenticated(rec, "pin", "authenticate event");
          await audioRoundTrip(socket, mode, "after the authenticate event");
          assert.equal(rec.pending("error"), 0, "no error event");
          assert.equal(rec.pending("auth_error"), 0, "no auth_error event");
        }));

      test("`authenticate` {pin} without an ack: authenticated event", OPTS,
        bounded(getServer, TEST_MS, async (t, cleanup) => {
          const { socket, rec } = open(server, cleanup, mode);
          await expectConnected(rec, "CONNECT without auth");
          socket.emit("authenticate", { pin: server.pin });
          await expectAuthenticated(rec, "pin", "authenticate event without ack");
          await expectAudioAcks(socket, 2, 1, "after authenticate");
        }));

      test("before authentication: audio and other events refused with `error` unauthenticated, nothing acked with seq", OPTS,
        bounded(getServer, TEST_MS, async (t, cleanup) => {
          const { socket, rec } = open(server, cleanup, mode);
          await expectConnected(rec, "CONNECT without auth");
          await checkTransport(socket, mode, "before auth");

          // audio with an ack: the ack carries the error, and an `error` event follows.
          const acks = await sendAudio(socket, 3);
          for (const [i, ack] of acks.entries()) {
            assert.ok(ack && typeof ack === "object", `audio #${i + 1} ack: ${JSON.stringify(ack)}`);
            assert.ok(!("seq" in ack), `audio #${i + 1} before auth must not be acked with seq: ${JSON.stringify(ack)}`);
            assert.ok(ack.error, `audio #${i + 1} ack carries {error}: ${JSON.stringify(ack)}`);
            assert.equal(ack.error.code, "unauthenticated", `audio #${i + 1} ack error code: ${JSON.stringify(ack)}`);
            assert.equal(ack.error.event, "audio", `audio #${i + 1} ack error event: ${JSON.stringify(ack)}`);
            assert.equal(typeof ack.error.message, "string", `audio #${i + 1} ack error message`);
          }
          for (let i = 0; i < 3; i++) {
            const [body] = await rec.next("error");
            assert.equal(body.code, "unauthenticated", `error event #${i + 1}: ${JSON.stringify(body)}`);
            assert.equal(body.event, "audio", `error event #${i + 1}: ${JSON.stringify(body)}`);
            assert.equal(typeof body.message, "string", `error event #${i + 1}: message`);
            assert.deepEqual(body, acks[i].error, `error event #${i + 1} is the ack's error`);
          }

          // audio without an ack: only the `error` event.
          socket.emit("audio", CHUNK);
          const [noAck] = await rec.next("error");
          assert.deepEqual(
            { code: noAck.code, event: noAck.event },
            { code: "unauthenticated", event: "audio" },
            `error for audio without ack: ${JSON.stringify(noAck)}`,
          );

          // Any other event, with and without an ack.
          const other = await socket.timeout(5000).emitWithAck("hello", { x: 1 });
          assert.equal(other?.error?.code, "unauthenticated", `ack of "hello": ${JSON.stringify(other)}`);
          assert.equal(other.error.event, "hello", `ack of "hello": ${JSON.stringify(other)}`);
          const [otherErr] = await rec.next("error");
          assert.deepEqual(otherErr, other.error, `error event for "hello": ${JSON.stringify(otherErr)}`);
          socket.emit("start", "x");
          const [startErr] = await rec.next("error");
          assert.equal(startErr.code, "unauthenticated", `error for "start": ${JSON.stringify(startErr)}`);
          assert.equal(startErr.event, "start", `error for "start": ${JSON.stringify(startErr)}`);

          assert.equal(rec.pending("authenticated"), 0, "no authenticated event");
          assert.ok(socket.connected, "still connected after the refusals");

          // The refused chunks were not counted: once authenticated, seq starts at 1.
          const ack = await socket.timeout(5000).emitWithAck("authenticate", { pin: server.pin });
          assert.deepEqual(ack, { via: "pin" }, "the authenticate ack");
          await expectAuthenticated(rec, "pin", "authenticate after refusals");
          await expectAudioAcks(socket, 3, 1, "after authenticating, the refused chunks were not counted");
          assert.equal(rec.pending("error"), 0, "no further error event");
        }));

      test("POST /logout disconnects the token socket (io server disconnect); /api/voice-token then 401", OPTS,
        bounded(getServer, TEST_MS, async (t, cleanup) => {
          const cookie = await login(server);
          const { socket, rec } = open(server, cleanup, mode, { auth: { token: await token(server, cookie) } });
          await expectConnected(rec, "CONNECT with a voice token");
          await expectAuthenticated(rec, "token", "CONNECT with a voice token");
          await checkTransport(socket, mode, "token socket");
          await expectAudioAcks(socket, 2, 1, "token socket before logout");

          // Bystanders: another login's token socket and a PIN socket stay connected.
          const otherCookie = await login(server);
          const other = open(server, cleanup, mode, { auth: { token: await token(server, otherCookie) } });
          await expectConnected(other.rec, "other login's token socket");
          await expectAuthenticated(other.rec, "token", "other login's token socket");
          const pinned = open(server, cleanup, mode, { auth: { pin: server.pin } });
          await expectConnected(pinned.rec, "PIN socket");
          await expectAuthenticated(pinned.rec, "pin", "PIN socket");

          const res = await fetch(server.httpUrl + "/logout", {
            method: "POST",
            headers: { cookie },
            signal: AbortSignal.timeout(5000),
          });
          assert.equal(res.status, 204, `POST /logout: status (body ${await res.text()})`);

          const [reason] = await rec.next("disconnect");
          assert.equal(reason, "io server disconnect", "the token socket's disconnect reason");
          assert.equal(socket.connected, false, "the token socket is disconnected");

          // The browser's cookie jar after the logout answer: removed (or unchanged if not touched).
          const setCookie = sessionSetCookie(res);
          const jar = setCookie ? (removesCookie(setCookie) ? null : cookiePair(setCookie)) : cookie;
          const after = await voiceToken(server, jar);
          assert.equal(after.status, 401, `GET /api/voice-token after logout: status (body ${JSON.stringify(after.body)})`);
          const none = await voiceToken(server, null);
          assert.equal(none.status, 401, `GET /api/voice-token without a cookie: status (body ${JSON.stringify(none.body)})`);

          // The bystanders were not disconnected and still work.
          await expectAudioAcks(other.socket, 2, 1, "other login's token socket after the logout");
          await expectAudioAcks(pinned.socket, 2, 1, "PIN socket after the logout");
          assert.equal(other.rec.pending("disconnect"), 0, "the other login's socket was not disconnected");
          assert.equal(pinned.rec.pending("disconnect"), 0, "the PIN socket was not disconnected");
        }));

      test("cross-origin socket handshake (Origin: http://evil.test) is refused with connect_error", OPTS,
        bounded(getServer, TEST_MS, async (t, cleanup) => {
          const { rec } = open(server, cleanup, mode, {
            auth: { pin: server.pin },
            extraHeaders: { origin: EVIL },
          });
          const err = await expectConnectError(rec, "handshake with Origin http://evil.test");
          const status = err.description?.context?.status ?? err.context?.status;
          const text = `${describeError(err)} ${err.description?.message ?? ""}`;
          // Polling's XHR error carries the status; ws's error message names it.
          assert.ok(
            status === 403 || /\b403\b/.test(text),
            `the refusal is a 403 (${text}; status ${status})`,
          );
          assert.equal(rec.pending("authenticated"), 0, "not authenticated");

          // Control: the same socket with the server's own origin connects.
          const same = open(server, cleanup, mode, {
            auth: { pin: server.pin },
            extraHeaders: { origin: server.httpUrl },
          });
          await expectConnected(same.rec, `handshake with Origin ${server.httpUrl}`);
          await expectAuthenticated(same.rec, "pin", "same-origin socket");
          await checkTransport(same.socket, mode, "same-origin socket");
        }));
    });
  }

  test("logout: the session cookie copied before logout no longer yields a voice token", OPTS,
    bounded(getServer, TEST_MS, async () => {
      const cookie = await login(server);
      await token(server, cookie);
      const res = await fetch(server.httpUrl + "/logout", {
        method: "POST",
        headers: { cookie },
        signal: AbortSignal.timeout(5000),
      });
      assert.equal(res.status, 204, "POST /logout: status");
      const replay = await voiceToken(server, cookie);
      assert.equal(
        replay.status,
        401,
        `GET /api/voice-token with the pre-logout cookie after logout: expected 401, got ${replay.status} ${JSON.stringify(replay.body)}`,
      );
    }));

  test("cross-origin POST /login and POST /logout are refused with 403; same origin is accepted", OPTS,
    bounded(getServer, TEST_MS, async (t, cleanup) => {
      const evil = await postJson(server, "/login", { pin: server.pin }, { origin: EVIL });
      const evilText = await evil.text();
      assert.equal(evil.status, 403, `cross-origin POST /login: status (body ${evilText})`);
      assert.equal(sessionSetCookie(evil), null, "no session cookie on a refused login");

      // Control: the page's own origin logs in.
      const same = await postJson(server, "/login", { pin: server.pin }, { origin: server.httpUrl });
      assert.equal(same.status, 200, `same-origin POST /login: status (body ${await same.text()})`);

      // A cross-origin logout neither logs out nor disconnects.
      const cookie = await login(server);
      const { socket, rec } = open(server, cleanup, MODES[0], { auth: { token: await token(server, cookie) } });
      await expectConnected(rec, "token socket");
      await expectAuthenticated(rec, "token", "token socket");
      const out = await fetch(server.httpUrl + "/logout", {
        method: "POST",
        headers: { cookie, origin: EVIL },
        signal: AbortSignal.timeout(5000),
      });
      assert.equal(out.status, 403, `cross-origin POST /logout: status (body ${await out.text()})`);
      await expectAudioAcks(socket, 1, 1, "token socket after a refused logout");
      assert.equal(rec.pending("disconnect"), 0, "not disconnected by a refused logout");
      assert.equal((await voiceToken(server, cookie)).status, 200, "still logged in after a refused logout");
    }));
});

// ---------------------------------------------------------------------------------------
// Wrong PINs and backoff: a fresh server per test (the limit is per client address).

describe(`wrong PIN and backoff (fresh server each, ${FREE} free attempt, ${BACKOFF_MS} ms backoff)`, () => {
  let server;
  const getServer = () => server;

  async function fresh(cleanup) {
    server = await startVoxioServer({ env: BACKOFF_ENV });
    const s = server;
    cleanup(() => s.stop());
    return s;
  }

  const WRONG = "000000";

  for (const mode of MODES) {
    describe(mode.label, () => {
      test("CONNECT {pin}: invalid_pin, then rate_limited (also on a new connection), doubling, then the right PIN works", OPTS,
        bounded(getServer, TEST_MS, async (t, cleanup) => {
          const srv = await fresh(cleanup);
          assert.notEqual(WRONG, srv.pin);
          const attempt = async (pin, what) => {
            const { socket, rec } = open(srv, cleanup, mode, { auth: { pin } });
            const first = await rec.nextOf(["connect", "connect_error"]);
            return { socket, rec, first, what };
          };
          const refused = async (pin, code, what) => {
            const { first } = await attempt(pin, what);
            assert.equal(first.event, "connect_error", `${what}: expected connect_error, got ${first.event}`);
            const err = first.args[0];
            assertConnectRefused(err, code, what);
            return err.data;
          };

          // The free attempts but the last: checked, and refused without a wait.
          for (let i = 1; i < FREE; i++) {
            const body = await refused(WRONG, "invalid_pin", `wrong PIN #${i} (free)`);
            assert.equal(body.retryAfterMs, 0, `wrong PIN #${i} (free): retryAfterMs ${JSON.stringify(body)}`);
          }
          const errMsg = await attempt(WRONG, "wrong PIN message");
          assert.equal(errMsg.first.event, "connect_error");
          assert.equal(errMsg.first.args[0].message, "Wrong PIN.", "connect_error message of a wrong PIN");
          const first = errMsg.first.args[0].data;
          assert.equal(first.code, "invalid_pin", `the last free attempt: ${JSON.stringify(first)}`);
          assert.equal(first.retryAfterMs, BACKOFF_MS, `the last free attempt, wrong, starts the base backoff: ${JSON.stringify(first)}`);

          // Locked: even the right PIN is refused, on a new connection each time.
          const locked = await refused(srv.pin, "rate_limited", "right PIN while locked");
          assert.ok(locked.retryAfterMs > 0 && locked.retryAfterMs <= BACKOFF_MS, `retryAfterMs in (0, ${BACKOFF_MS}]: ${JSON.stringify(locked)}`);
          const again = await refused(WRONG, "rate_limited", "new connection while locked");
          assert.ok(again.retryAfterMs > 0 && again.retryAfterMs <= locked.retryAfterMs, `retryAfterMs shrinks: ${JSON.stringify(again)}`);

          // After the wait, a further failure doubles the wait.
          await sleep(again.retryAfterMs + 100);
          const doubled = await refused(WRONG, "invalid_pin", "wrong PIN after the wait");
          assert.equal(doubled.retryAfterMs, 2 * BACKOFF_MS, `the wait doubles: ${JSON.stringify(doubled)}`);
          const locked2 = await refused(srv.pin, "rate_limited", "right PIN while locked again");
          assert.ok(locked2.retryAfterMs > 0 && locked2.retryAfterMs <= 2 * BACKOFF_MS, `retryAfterMs in (0, ${2 * BACKOFF_MS}]: ${JSON.stringify(locked2)}`);

          // After that wait the right PIN works.
          await sleep(locked2.retryAfterMs + 100);
          const ok = await attempt(srv.pin, "right PIN after the wait");
          assert.equal(ok.first.event, "connect", `right PIN after the wait: ${ok.first.event} ${describeError(ok.first.args[0])}`);
          await expectAuthenticated(ok.rec, "pin", "right PIN after the wait");
          await audioRoundTrip(ok.socket, mode, "after the backoff");
        }));

      test("`authenticate` event: auth_error invalid_pin (event and ack), then rate_limited (also on a new connection), then the right PIN works", OPTS,
        bounded(getServer, TEST_MS, async (t, cleanup) => {
          const srv = await fresh(cleanup);
          const { socket, rec } = open(srv, cleanup, mode);
          await expectConnected(rec, "CONNECT without auth");

          /** Sends `authenticate` with an ack; checks the ack and the auth_error event agree. */
          const refusedOn = async (s, r, pin, code, what) => {
            const ack = await s.timeout(5000).emitWithAck("authenticate", { pin });
            assertRefusal(ack, code, `${what} (ack)`);
            const [event] = await r.next("auth_error");
            assert.deepEqual(event, ack, `${what}: the auth_error event is the ack's body`);
            assert.ok(s.connected, `${what}: still connected`);
            return ack;
          };
          const refused = (pin, code, what) => refusedOn(socket, rec, pin, code, what);

          for (let i = 1; i < FREE; i++) {
            const body = await refused(WRONG, "invalid_pin", `wrong PIN #${i} (free)`);
            assert.equal(body.retryAfterMs, 0, `wrong PIN #${i} (free): ${JSON.stringify(body)}`);
          }
          // Without an ack: only the auth_error event.
          socket.emit("authenticate", { pin: WRONG });
          const [first] = await rec.next("auth_error");
          assertRefusal(first, "invalid_pin", "the last free attempt");
          assert.equal(first.message, "Wrong PIN.", "auth_error message");
          assert.equal(first.retryAfterMs, BACKOFF_MS, `the last free attempt, wrong, starts the base backoff: ${JSON.stringify(first)}`);

          const locked = await refused(srv.pin, "rate_limited", "right PIN while locked");
          assert.ok(locked.retryAfterMs > 0 && locked.retryAfterMs <= BACKOFF_MS, `retryAfterMs in (0, ${BACKOFF_MS}]: ${JSON.stringify(locked)}`);

          // A new connection from the same address is still locked: by event and by CONNECT.
          const second = open(srv, cleanup, mode);
          await expectConnected(second.rec, "second connection without auth");
          const viaEvent = await refusedOn(second.socket, second.rec, srv.pin, "rate_limited", "new connection, authenticate while locked");
          assert.ok(viaEvent.retryAfterMs > 0, `retryAfterMs > 0: ${JSON.stringify(viaEvent)}`);
          const third = open(srv, cleanup, mode, { auth: { pin: srv.pin } });
          const err = await expectConnectError(third.rec, "new connection, CONNECT {pin} while locked");
          assertConnectRefused(err, "rate_limited", "new connection, CONNECT {pin} while locked");
          assert.ok(err.data.retryAfterMs > 0, `retryAfterMs > 0: ${JSON.stringify(err.data)}`);

          // After the wait, a further failure doubles the wait.
          await sleep(Math.max(locked.retryAfterMs, viaEvent.retryAfterMs, err.data.retryAfterMs) + 100);
          const doubled = await refused(WRONG, "invalid_pin", "wrong PIN after the wait");
          assert.equal(doubled.retryAfterMs, 2 * BACKOFF_MS, `the wait doubles: ${JSON.stringify(doubled)}`);
          const locked2 = await refused(srv.pin, "rate_limited", "right PIN while locked again");

          // After that wait the right PIN works, acked and announced.
          await sleep(locked2.retryAfterMs + 100);
          const ack = await socket.timeout(5000).emitWithAck("authenticate", { pin: srv.pin });
          assert.deepEqual(ack, { via: "pin" }, "the authenticate ack after the wait");
          await expectAuthenticated(rec, "pin", "authenticate after the wait");
          await audioRoundTrip(socket, mode, "after the backoff");

          // The second connection (which made no failure of its own) can now authenticate too.
          const ack2 = await second.socket.timeout(5000).emitWithAck("authenticate", { pin: srv.pin });
          assert.deepEqual(ack2, { via: "pin" }, "the second connection's authenticate ack");
          await expectAuthenticated(second.rec, "pin", "second connection");
          await expectAudioAcks(second.socket, 2, 1, "second connection");
        }));
    });
  }
});
