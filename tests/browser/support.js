// What the browser tests share: where Chromium, the client bundle and the screenshots are;
// launching Chromium with a fake microphone; waiting on the page's state; and watching a page
// for problems (console errors, page errors, failed requests) and its WebSocket handshakes.
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** Screenshots go here (gitignored). */
export const ARTIFACTS = path.join(HERE, "artifacts");
/** Debian's Chromium, or $CHROMIUM_BIN. */
export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
/** The official client bundle the page loads (client/ installs it). */
export const CLIENT_JS = path.resolve(HERE, "../../client/node_modules/socket.io-client/dist/socket.io.min.js");

/** Resolves when `pred()` is true (polled every 50 ms); rejects after `ms` with `what()`. */
export async function until(pred, ms, what) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`${typeof what === "function" ? what() : what} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits for `fn(stats)` to be true in the page; the error tells what the page saw. */
export async function waitStats(page, fn, ms, what) {
  try {
    await page.waitForFunction(fn, null, { timeout: ms, polling: 100 });
  } catch (err) {
    const seen = await page.evaluate(() => JSON.stringify(window.voxioStats)).catch(() => "(page gone)");
    throw new Error(`${what} within ${ms} ms; voxioStats: ${seen} (${err.message.split("\n")[0]})`);
  }
}

/**
 * A new page in `context`, recording console errors, page errors and failed requests in
 * `problems` and every WebSocket handshake (DevTools protocol) in `sockets`.
 */
export async function watchedPage(context) {
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);

  const problems = [];
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`console error: ${msg.text()} (${msg.location().url || "?"})`);
  });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("response", (res) => {
    if (res.status() >= 400) problems.push(`HTTP ${res.status()} for ${res.url()}`);
  });

  const sockets = new Map();
  const cdp = await context.newCDPSession(page);
  cdp.on("Network.webSocketCreated", ({ requestId, url }) => sockets.set(requestId, { url, status: null }));
  cdp.on("Network.webSocketHandshakeResponseReceived", ({ requestId, response }) => {
    const s = sockets.get(requestId) || { url: "?" };
    sockets.set(requestId, { ...s, status: response.status });
  });
  await cdp.send("Network.enable");
  return { page, problems, sockets };
}

/** Launches Debian's Chromium (`executablePath`) headless, its fake microphone playing `wav`
 * (looped), with `extraArgs` on top. */
export function launchChromium(chromium, executablePath, wav, extraArgs = []) {
  return chromium.launch({
    executablePath,
    headless: true,
    timeout: 30_000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${wav}`,
      "--autoplay-policy=no-user-gesture-required",
      ...extraArgs,
    ],
  });
}
