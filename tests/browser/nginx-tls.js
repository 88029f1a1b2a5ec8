// nginx with the compose deployment's HTTPS on loopback, for proxy.test.js: deploy/nginx.conf
// (rewritten as ../interop/helpers.js startNginx does) plus deploy/nginx-tls.conf in its
// voxio.d/ include, each port a free loopback one and the certificate a test-made one.
import { spawn, execFile } from "node:child_process";
import { promisify } from "node:util";
import { existsSync } from "node:fs";
import { mkdtemp, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, sleep } from "../interop/helpers.js";

const execFileP = promisify(execFile);
const HERE = path.dirname(fileURLToPath(import.meta.url));
const DEPLOY = path.resolve(HERE, "../../deploy");
const MAX_LOG_CHARS = 64 * 1024;

/** $NGINX_BIN, else Debian's /usr/sbin/nginx, else `nginx` on PATH. */
export const NGINX_BIN = process.env.NGINX_BIN || (existsSync("/usr/sbin/nginx") ? "/usr/sbin/nginx" : "nginx");

/** Throws unless this nginx has the SSL module (Debian's nginx-light has it). */
export async function checkNginxSsl() {
  let out;
  try {
    const { stdout, stderr } = await execFileP(NGINX_BIN, ["-V"], { timeout: 10_000 });
    out = stdout + stderr;
  } catch (err) {
    throw new Error(`nginx not found at ${NGINX_BIN} (apt-get install nginx-light, or set NGINX_BIN): ${err.message}`);
  }
  if (!out.includes("--with-http_ssl_module")) throw new Error(`${NGINX_BIN} has no http_ssl_module`);
}

/** A self-signed certificate for localhost and 127.0.0.1, valid one day: { dir, cert, key }. */
export async function makeCertificate(dir) {
  await mkdir(dir, { recursive: true });
  const cert = path.join(dir, "fullchain.pem");
  const key = path.join(dir, "privkey.pem");
  await execFileP(
    "openssl",
    [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
      "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-keyout", key, "-out", cert,
    ],
    { timeout: 20_000 },
  );
  return { dir, cert, key };
}

/** `count` distinct free loopback ports. */
async function freePorts(count) {
  const ports = new Set();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/** Replaces every `from` in `text`; throws if there is none (the deploy file changed). */
function replaceIn(text, file, pairs) {
  for (const [from, to] of pairs) {
    if (!text.includes(from)) throw new Error(`deploy/${file} no longer has ${JSON.stringify(from)}`);
    text = text.split(from).join(to);
  }
  return text;
}

function canConnect(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

/**
 * Starts nginx in the foreground in front of voxio nodes on `upstreamPorts` (two), with the TLS
 * certificate in `certDir` (fullchain.pem, privkey.pem). Returns { plainPort (nginx.conf's
 * plain proxy), redirectPort (plain HTTP that redirects), httpsPort, log(), printLog(reason),
 * stop() (which also removes its directory) }.
 */
export async function startTlsNginx(upstreamPorts, certDir) {
  const dir = await mkdtemp(path.join(os.tmpdir(), "voxio-nginx-tls-"));
  const [plainPort, redirectPort, httpsPort] = await freePorts(3);
  const main = replaceIn(await readFile(path.join(DEPLOY, "nginx.conf"), "utf8"), "nginx.conf", [
    ["server voxio1:8080", `server 127.0.0.1:${upstreamPorts[0]}`],
    ["server voxio2:8080", `server 127.0.0.1:${upstreamPorts[1]}`],
    ["listen 80;", `listen 127.0.0.1:${plainPort};`],
    ["/tmp/nginx-voxio", `${dir}/nginx-voxio`],
    ["worker_processes auto;", "worker_processes 1;"],
    ["include /etc/nginx/voxio.d/*.conf;", `include ${dir}/voxio.d/*.conf;`],
  ]);
  const tls = replaceIn(await readFile(path.join(DEPLOY, "nginx-tls.conf"), "utf8"), "nginx-tls.conf", [
    ["listen 8080;", `listen 127.0.0.1:${redirectPort};`],
    ["listen 8443 ssl", `listen 127.0.0.1:${httpsPort} ssl`],
    [":8443$request_uri", `:${httpsPort}$request_uri`],
    ["/etc/nginx/tls/", `${certDir}/`],
  ]);
  await mkdir(path.join(dir, "voxio.d"));
  const file = path.join(dir, "nginx.conf");
  await writeFile(file, main);
  await writeFile(path.join(dir, "voxio.d", "tls.conf"), tls);

  let log = "";
  const child = spawn(NGINX_BIN, ["-p", dir, "-c", file, "-g", "daemon off;"], { stdio: ["ignore", "pipe", "pipe"] });
  const keep = (chunk) => {
    log = (log + chunk.toString("utf8")).slice(-MAX_LOG_CHARS);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  let exited = null;
  const exit = new Promise((resolve) => {
    child.once("exit", (code, signal) => resolve((exited = { code, signal })));
    child.once("error", (error) => resolve((exited = { error: error.message })));
  });
  const killOnExit = () => {
    if (!exited) child.kill("SIGKILL");
  };
  process.once("exit", killOnExit);
  const end = async () => {
    process.removeListener("exit", killOnExit);
    if (exited) return exited;
    child.kill("SIGTERM"); // nginx: fast shutdown
    const done = await Promise.race([exit, sleep(3000).then(() => null)]);
    if (done) return done;
    child.kill("SIGKILL");
    return exit;
  };
  const stop = async () => {
    const result = await end();
    await rm(dir, { recursive: true, force: true });
    return result;
  };

  const deadline = Date.now() + 10_000;
  for (const port of [plainPort, redirectPort, httpsPort]) {
    while (!(await canConnect(port))) {
      if (exited || Date.now() > deadline) {
        await stop();
        throw new Error(`nginx did not listen on ${port} (exit: ${JSON.stringify(exited)}); output:\n${log}`);
      }
      await sleep(50);
    }
  }
  return {
    plainPort,
    redirectPort,
    httpsPort,
    log: () => log,
    printLog(reason) {
      process.stderr.write(`\n===== nginx output after failure: ${reason} =====\n${log}\n===== end of nginx output =====\n`);
    },
    stop,
  };
}
