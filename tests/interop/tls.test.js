// voxio serving TLS itself (VOXIO_TLS_CERT, VOXIO_TLS_KEY; rustls), for a single node without
// a proxy: a certificate made here with openssl, the page over https://, the official client
// over wss://, over https long-polling and upgrading from it, each authenticating with the PIN
// and getting its audio acked; plain HTTP on the TLS port gets no page; a certificate without
// its key refuses to start with a clear message.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import https from "node:https";
import http from "node:http";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { io } from "socket.io-client";
import { startVoxioServer, Recorder, VOXIO_BIN } from "./helpers.js";

const execFileP = promisify(execFile);
let dir;
let node;
let url;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "voxio-tls-"));
  await execFileP("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"),
  ], { timeout: 20_000 });
  node = await startVoxioServer({
    env: {
      VOXIO_PIPELINE: "none",
      VOXIO_TLS_CERT: path.join(dir, "cert.pem"),
      VOXIO_TLS_KEY: path.join(dir, "key.pem"),
    },
  });
  url = `https://127.0.0.1:${node.port}`;
});

after(async () => {
  if (node) await node.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function get(module, target, options = {}) {
  return new Promise((resolve, reject) => {
    const req = module.get(target, { rejectUnauthorized: false, timeout: 5000, ...options }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("timed out")));
  });
}

test("the page and /healthz over https; plain HTTP on the TLS port gets no page", { timeout: 20_000 }, async () => {
  const page = await get(https, `${url}/`);
  assert.equal(page.status, 200);
  assert.match(page.body, /<html/i);
  assert.match(page.headers["content-security-policy"], /frame-ancestors 'none'/);
  assert.equal((await get(https, `${url}/healthz`)).status, 200);
  const plain = await get(http, `http://127.0.0.1:${node.port}/`).then(
    (r) => `answered ${r.status}`,
    (e) => `refused (${e.code ?? e.message})`,
  );
  assert.ok(!plain.startsWith("answered 200"), `plain HTTP: ${plain}`);
  console.log(`# TLS port: https / 200, plain http ${plain}`);
});

for (const [label, transports] of [
  ["wss://", ["websocket"]],
  ["https long-polling", ["polling"]],
  ["https polling, then the upgrade to wss://", undefined],
]) {
  test(`the official client over ${label}: PIN, audio acked`, { timeout: 20_000 }, async () => {
    const started = Date.now();
    const socket = io(`${url}/voice`, {
      forceNew: true,
      reconnection: false,
      rejectUnauthorized: false,
      transports,
      auth: { pin: node.pin },
    });
    const rec = new Recorder(socket);
    try {
      await rec.next("authenticated", 10_000);
      const authMs = Date.now() - started;
      if (!transports) {
        await new Promise((resolve) => {
          if (socket.io.engine.transport.name === "websocket") return resolve();
          socket.io.engine.once("upgrade", resolve);
        });
      }
      const ack = await socket.timeout(5000).emitWithAck("audio", Buffer.alloc(640));
      assert.equal(ack.bytes, 640);
      const transport = socket.io.engine.transport.name;
      assert.equal(transport, transports ? transports[0] : "websocket");
      console.log(`# TLS, ${label}: authenticated in ${authMs} ms, audio acked, transport ${transport}`);
    } finally {
      socket.disconnect();
    }
  });
}

test("a certificate without its key refuses to start, saying so", { timeout: 20_000 }, async () => {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("VOXIO_")));
  const run = execFileP(VOXIO_BIN, [], {
    env: { ...env, VOXIO_BIND: "127.0.0.1:0", VOXIO_PIN: "482915", VOXIO_PIPELINE: "none", VOXIO_TLS_CERT: path.join(dir, "cert.pem") },
    timeout: 10_000,
  });
  const err = await run.then(() => null, (e) => e);
  assert.ok(err, "voxio must not start");
  assert.equal(err.code, 2);
  assert.match(err.stdout + err.stderr, /VOXIO_TLS_CERT and VOXIO_TLS_KEY go together/);
});
