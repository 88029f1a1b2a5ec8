// Shared helpers for the Node interop tests: start and stop the voxio binary,
// bound each test in time, and wrap Engine.IO client sockets with a message queue.
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";
import { before, after } from "node:test";

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Path of the voxio binary: $VOXIO_BIN, or ../../target/debug/voxio next to this file. */
export const VOXIO_BIN = process.env.VOXIO_BIN
  ? path.resolve(process.env.VOXIO_BIN)
  : path.resolve(HERE, "../../target/debug/voxio");

const MAX_LOG_BYTES = 256 * 1024;
const STARTUP_DEADLINE_MS = 10_000;
const STOP_DEADLINE_MS = 3_000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Asks the OS for a free TCP port on 127.0.0.1 (listen on port 0, then close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves true if a TCP connection to 127.0.0.1:port succeeds. */
function canConnect(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    const done = (ok) => {
      sock.removeAllListeners();
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

/** Keeps the last MAX_LOG_BYTES of the server's output. */
class LogBuffer {
  constructor() {
    this.chunks = [];
    this.size = 0;
    this.dropped = 0;
  }
  push(label, chunk) {
    const text = chunk.toString("utf8");
    const entry = label === "stderr" ? text : text.replace(/^(?=.)/gm, "[stdout] ");
    this.chunks.push(entry);
    this.size += entry.length;
    while (this.size > MAX_LOG_BYTES && this.chunks.length > 1) {
      const old = this.chunks.shift();
      this.size -= old.length;
      this.dropped += old.length;
    }
  }
  toString() {
    const head = this.dropped ? `[... ${this.dropped} earlier characters dropped ...]\n` : "";
    return head + this.chunks.join("");
  }
}

/**
 * Starts `voxio <args...> --port PORT` on a free port and waits until it accepts
 * TCP connections. Retries with a new port if the process dies during startup
 * (e.g. the port was taken in between).
 *
 * Returns { port, httpUrl, wsUrl, log(), printLog(reason), stop() }.
 */
export async function startVoxio(args = ["protocol-test"], { attempts = 3 } = {}) {
  if (!existsSync(VOXIO_BIN)) {
    throw new Error(
      `voxio binary not found at ${VOXIO_BIN} (build it with cargo, or set VOXIO_BIN)`,
    );
  }
  return startWithRetries(
    (port) => ({ args: [...args, "--port", String(port)], env: { ...process.env, NO_COLOR: "1" } }),
    attempts,
  );
}

/** Directory of the page's files, passed to the main server as VOXIO_STATIC_DIR. */
export const STATIC_DIR = path.resolve(HERE, "../../static");
/** The speech models scripts/deps.sh installs. */
export const MODELS_DIR = path.resolve(HERE, "../../models");

/** The PIN `startVoxioServer` gives the main server unless told otherwise. */
export const TEST_PIN = "482915";

/**
 * Starts the MAIN server (`voxio` with no subcommand) on 127.0.0.1 and a free port and
 * waits until it accepts TCP connections; retries with a new port if the process dies
 * during startup.
 *
 * The child gets the parent's environment without any inherited `VOXIO_*` variable (so a
 * stray VOXIO_REDIS_URL or VOXIO_PIN cannot change what the tests see), then:
 * VOXIO_BIND=127.0.0.1:PORT, VOXIO_PIN=`pin`, VOXIO_STATIC_DIR=STATIC_DIR,
 * VOXIO_MODELS_DIR=MODELS_DIR, VOXIO_WORKERS=2, and `env` on top (e.g. { VOXIO_PIN_FREE_ATTEMPTS: "1", VOXIO_PIN_BACKOFF_MS: "400" }).
 *
 * Returns the same object as `startVoxio`, plus `pin`.
 */
export async function startVoxioServer({ pin = TEST_PIN, env = {}, attempts = 3 } = {}) {
  if (!existsSync(VOXIO_BIN)) {
    throw new Error(
      `voxio binary not found at ${VOXIO_BIN} (build it with cargo, or set VOXIO_BIN)`,
    );
  }
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("VOXIO_")),
  );
  const server = await startWithRetries(
    (port) => ({
      args: [],
      env: {
        ...base,
        NO_COLOR: "1",
        VOXIO_BIND: `127.0.0.1:${port}`,
        VOXIO_PIN: pin,
        VOXIO_STATIC_DIR: STATIC_DIR,
        VOXIO_MODELS_DIR: MODELS_DIR,
        VOXIO_WORKERS: "2",
        ...Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)])),
      },
    }),
    attempts,
  );
  server.pin = pin;
  return server;
}

/** Tries `attempts` free ports; `spec(port)` gives the child's { args, env }. */
async function startWithRetries(spec, attempts) {
  let lastError;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const port = await freePort();
    try {
      return await startOnPort(spec(port), port);
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

async function startOnPort({ args, env }, port) {
  const proc = spawnHelper(VOXIO_BIN, args, "voxio", env);
  try {
    await proc.ready(port);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return {
    port,
    httpUrl: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}`,
    log: proc.log,
    printLog(reason) {
      process.stderr.write(
        `\n===== voxio output (port ${port}) after failure: ${reason} =====\n${proc.log()}\n===== end of voxio output =====\n`,
      );
    },
    stop: proc.stop,
    kill: proc.kill,
    get exited() {
      return proc.exited;
    },
  };
}

/**
 * Socket.IO client options for a test in `mode` ({ transports }, none: the default polling
 * then WebSocket): a new manager, reconnecting fast and without jitter, and `extra` on top.
 */
export function clientOptions(mode, extra = {}) {
  const opts = {
    forceNew: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
    randomizationFactor: 0,
    ...extra,
  };
  if (mode.transports) opts.transports = mode.transports;
  return opts;
}

/**
 * Starts `voxio protocol-test` before the calling file's tests and stops it after them.
 * Returns a getter for the server (what `bounded` takes; its URLs for the clients).
 */
export function protocolTestServer() {
  let server;
  before(async () => {
    server = await startVoxio(["protocol-test"]);
  });
  after(async () => {
    if (server) await server.stop();
  });
  return () => server;
}

/**
 * Wraps a test body: bounds it in time (rejecting with a clear error), runs the
 * cleanups it registered (e.g. closing sockets) whatever happens, and prints the
 * server's output if it fails. The body gets (t, cleanup) where cleanup(fn)
 * registers a function to run at the end.
 *
 * Use with node:test's own `{ timeout }` set a little higher as a backstop.
 */
export function bounded(getServer, ms, body) {
  return async (t) => {
    const cleanups = [];
    const cleanup = (fn) => cleanups.push(fn);
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`test body timed out after ${ms} ms`)), ms);
    });
    try {
      await Promise.race([body(t, cleanup), timeout]);
    } catch (err) {
      const server = getServer();
      if (server) server.printLog(`${t.name}: ${err && err.message}`);
      throw err;
    } finally {
      clearTimeout(timer);
      for (const fn of cleanups.reverse()) {
        try {
          await fn();
        } catch {
          // best effort
        }
      }
    }
  };
}

/** Normalises binary data received by the client (Buffer, ArrayBuffer, typed array) to a Buffer. */
export function toBuffer(data) {
  if (Buffer.isBuffer(data)) return data;
  if (data instanceof ArrayBuffer) return Buffer.from(data);
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError(`expected binary data, got ${typeof data} (${Object.prototype.toString.call(data)})`);
}

/** Deterministic test bytes: a pattern where neighbouring bytes and 256-byte blocks differ. */
export function patternBytes(length, seed = 0) {
  const buf = Buffer.alloc(length);
  for (let i = 0; i < length; i++) {
    buf[i] = (i * 31 + (i >>> 8) * 7 + seed) & 0xff;
  }
  return buf;
}

/**
 * Collects the messages of an Engine.IO client socket into a queue, so that tests
 * can await them one by one with a deadline. Also records close events.
 */
export class MessageQueue {
  constructor(socket) {
    this.socket = socket;
    this.items = [];
    this.waiters = [];
    this.closes = [];
    socket.on("message", (data) => {
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(data);
      else this.items.push(data);
    });
    socket.on("close", (reason, description) => {
      this.closes.push({ reason, description });
      const err = new Error(
        `socket closed while waiting for a message: ${reason}` +
          (description ? ` (${describe(description)})` : ""),
      );
      for (const w of this.waiters.splice(0)) w.reject(err);
    });
  }

  /** The next message, or rejects after `ms`. */
  next(ms = 5000) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    if (this.closes.length) {
      return Promise.reject(new Error(`socket already closed: ${this.closes[0].reason}`));
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`no message within ${ms} ms`));
      }, ms);
      this.waiters.push(waiter);
    });
  }

  /** The next `n` messages, in order. */
  async take(n, ms = 5000) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(await this.next(ms));
    return out;
  }
}

function describe(d) {
  if (!d) return "";
  if (d instanceof Error) return d.message;
  if (typeof d === "object") {
    const parts = [];
    if (d.description) parts.push(describe(d.description));
    if (d.message) parts.push(d.message);
    if (d.context && d.context.status) parts.push(`HTTP ${d.context.status}`);
    return parts.join("; ") || JSON.stringify(d);
  }
  return String(d);
}

/** Resolves when the socket emits `open`; rejects on `error`/`close` or after `ms`. */
export function waitOpen(socket, ms = 5000) {
  return waitEvent(socket, "open", ms);
}

/**
 * Resolves with the event's first argument when `socket` emits `event`; rejects if
 * it emits `error` or `close` first, or after `ms`.
 */
export function waitEvent(socket, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => finish(new Error(`no "${event}" event within ${ms} ms`)), ms);
    const onEvent = (arg) => finish(null, arg);
    const onError = (err) => finish(new Error(`"error" before "${event}": ${describe(err)}`));
    const onClose = (reason, desc) =>
      finish(new Error(`"close" before "${event}": ${reason}${desc ? ` (${describe(desc)})` : ""}`));
    function finish(err, value) {
      clearTimeout(timer);
      socket.off(event, onEvent);
      socket.off("error", onError);
      socket.off("close", onClose);
      if (err) reject(err);
      else resolve(value);
    }
    socket.once(event, onEvent);
    if (event !== "error") socket.once("error", onError);
    if (event !== "close") socket.once("close", onClose);
  });
}

export { sleep };

/**
 * Records every event a Socket.IO client socket receives (through onAny), plus the
 * reserved `connect`, `disconnect` and `connect_error` events, so that tests can
 * await them one by one with a deadline. Each item is the array of the event's args.
 */
export class Recorder {
  constructor(socket) {
    this.socket = socket;
    this.items = new Map();
    this.waiters = [];
    this.log = [];
    socket.onAny((event, ...args) => this.push(event, args));
    for (const ev of ["connect", "disconnect", "connect_error"]) {
      socket.on(ev, (...args) => this.push(ev, args));
    }
  }

  push(event, args) {
    this.log.push(event);
    const i = this.waiters.findIndex((w) => w.events.includes(event));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      w.resolve({ event, args });
      return;
    }
    if (!this.items.has(event)) this.items.set(event, []);
    this.items.get(event).push(args);
  }

  /** Occurrences of `event` so far, consumed or not. */
  count(event) {
    return this.log.filter((e) => e === event).length;
  }

  /** Unconsumed occurrences of `event`. */
  pending(event) {
    return (this.items.get(event) || []).length;
  }

  /** The args of the next `event`, or rejects after `ms`. */
  async next(event, ms = 5000) {
    return (await this.nextOf([event], ms)).args;
  }

  /** { event, args } of the next of `events`, or rejects after `ms`. */
  nextOf(events, ms = 5000) {
    for (const event of events) {
      const queued = this.items.get(event);
      if (queued && queued.length) return Promise.resolve({ event, args: queued.shift() });
    }
    return new Promise((resolve, reject) => {
      const w = {
        events,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`no ${events.map((e) => `"${e}"`).join(" or ")} event within ${ms} ms (${this.state()})`));
      }, ms);
      this.waiters.push(w);
    });
  }

  state() {
    const s = this.socket;
    const engine = s.io.engine;
    const transport = engine && engine.transport ? engine.transport.name : "none";
    const recent = this.log.slice(-10).join(", ");
    return `connected=${s.connected}, transport=${transport}, recent events: [${recent}]`;
  }
}

/** Resolves once the manager's current engine runs on WebSocket (after its `upgrade`). */
export function waitWebsocket(socket, ms = 10_000) {
  const engine = socket.io.engine;
  if (engine.transport && engine.transport.name === "websocket") return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no "upgrade" within ${ms} ms (transport ${engine.transport && engine.transport.name})`)),
      ms,
    );
    engine.once("upgrade", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Spawns a long-running process (voxio, redis-server, nginx) whose output is kept for failure
 * reports and which is killed if the test process ends abruptly. `ready(port)` waits until it
 * accepts TCP connections (or fails with its output if it exits or takes too long); `stop()`
 * ends it (SIGTERM, then SIGKILL after a deadline); `kill(signal)` sends one signal and waits
 * for the exit, { code, signal }.
 */
function spawnHelper(cmd, args, label, env = process.env) {
  const log = new LogBuffer();
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env });
  child.stdout.on("data", (c) => log.push("stdout", c));
  child.stderr.on("data", (c) => log.push("stderr", c));
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.once("exit", (code, signal) => resolve((exited = { code, signal })));
    child.once("error", (error) => resolve((exited = { error })));
  });
  const killOnExit = () => {
    if (!exited) child.kill("SIGKILL");
  };
  process.once("exit", killOnExit);
  return {
    log: () => log.toString(),
    get exited() {
      return exited;
    },
    async stop() {
      process.removeListener("exit", killOnExit);
      if (exited) return exited;
      child.kill("SIGTERM");
      const result = await Promise.race([exitPromise, sleep(STOP_DEADLINE_MS).then(() => null)]);
      if (result) return result;
      child.kill("SIGKILL");
      return exitPromise;
    },
    /** Sends `signal` (SIGSTOP, SIGCONT, …) and does not wait for an exit. */
    signal(signal) {
      if (!exited) child.kill(signal);
    },
    async kill(signal) {
      process.removeListener("exit", killOnExit);
      if (!exited) child.kill(signal);
      return exitPromise;
    },
    async ready(port) {
      const deadline = Date.now() + STARTUP_DEADLINE_MS;
      while (!(await canConnect(port))) {
        if (exited || Date.now() > deadline) {
          throw new Error(
            `${label} did not accept connections on port ${port} within ${STARTUP_DEADLINE_MS} ms ` +
              `(exit: ${JSON.stringify(exited)}); output:\n${log}`,
          );
        }
        await sleep(50);
      }
    },
  };
}

/** A real redis-server of its own on a free loopback port, keeping nothing on disk. */
export async function startRedis() {
  const port = await freePort();
  const redis = spawnHelper(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    "redis-server",
  );
  await redis.ready(port);
  redis.port = port;
  redis.url = `redis://127.0.0.1:${port}/0`;
  return redis;
}

/** The repo's nginx config (deploy/nginx.conf), the compose host names replaced by voxio's
 * loopback ports, its own port, pid and temporary paths; run in the foreground. */
export async function startNginx(upstreamPorts) {
  const { mkdtemp, readFile, writeFile } = await import("node:fs/promises");
  const os = await import("node:os");
  const dir = await mkdtemp(path.join(os.tmpdir(), "voxio-nginx-"));
  const port = await freePort();
  let conf = await readFile(path.resolve(HERE, "../../deploy/nginx.conf"), "utf8");
  const replace = (from, to) => {
    if (!conf.includes(from)) throw new Error(`deploy/nginx.conf no longer has ${JSON.stringify(from)}`);
    conf = conf.split(from).join(to);
  };
  replace("server voxio1:8080", `server 127.0.0.1:${upstreamPorts[0]}`);
  replace("server voxio2:8080", `server 127.0.0.1:${upstreamPorts[1]}`);
  replace("listen 80;", `listen 127.0.0.1:${port};`);
  replace("/tmp/nginx-voxio", `${dir}/nginx-voxio`);
  replace("worker_processes auto;", "worker_processes 1;");
  const file = path.join(dir, "nginx.conf");
  await writeFile(file, conf);
  const nginx = spawnHelper("nginx", ["-p", dir, "-c", file, "-g", "daemon off;"], "nginx");
  await nginx.ready(port);
  nginx.port = port;
  nginx.url = `http://127.0.0.1:${port}`;
  return nginx;
}

/** GET /metrics: a Map from `name{labels}` (as written) to its value. */
export async function scrapeMetrics(httpUrl) {
  const res = await fetch(httpUrl + "/metrics", { signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  const map = new Map();
  for (const line of (await res.text()).split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    map.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return map;
}
