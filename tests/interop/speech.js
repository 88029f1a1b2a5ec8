// Speech for the voice tests: WAVs made with Debian's flite, read back as PCM16.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

/** `text` said by flite's `voice` into the WAV `file` (16 kHz mono). */
export async function flite(voice, text, file) {
  await execFileP("flite", ["-voice", voice, "-t", text, "-o", file], { timeout: 20_000 });
}

/** The PCM16 samples of a WAV file: { pcm, rate, channels }, found by its "data" chunk. */
export async function readWav(file) {
  const buf = await readFile(file);
  assert.ok(
    buf.length >= 12 && buf.toString("ascii", 0, 4) === "RIFF" && buf.toString("ascii", 8, 12) === "WAVE",
    `${file} is not a WAV`,
  );
  let fmt = null;
  for (let off = 12; off + 8 <= buf.length; ) {
    const id = buf.toString("ascii", off, off + 4);
    const size = buf.readUInt32LE(off + 4);
    const body = off + 8;
    if (id === "fmt ") {
      fmt = {
        format: buf.readUInt16LE(body),
        channels: buf.readUInt16LE(body + 2),
        rate: buf.readUInt32LE(body + 4),
        bits: buf.readUInt16LE(body + 14),
      };
    } else if (id === "data") {
      assert.ok(fmt, `${file}: "fmt " chunk before "data"`);
      assert.ok(fmt.format === 1 || fmt.format === 0xfffe, `${file}: PCM (format ${fmt.format})`);
      assert.equal(fmt.bits, 16, `${file}: 16-bit samples`);
      const end = Math.min(body + size, buf.length);
      const frame = 2 * fmt.channels;
      const pcm = Buffer.from(buf.subarray(body, body + Math.floor((end - body) / frame) * frame));
      return { pcm, rate: fmt.rate, channels: fmt.channels };
    }
    off = body + size + (size & 1);
  }
  throw new Error(`${file}: no "data" chunk`);
}


/**
 * A transcript as plain words: lower case, punctuation gone, and the contractions Whisper
 * writes for what the tests say spelled out ("what's" → "what is").
 */
export function plainWords(text) {
  return String(text ?? "")
    .toLowerCase()
    .replace(/\bwhat's\b/g, "what is")
    .replace(/[^a-z0-9'\- ]+/g, " ")
    .replace(/(^|\s)[-']+|[-']+(\s|$)/g, " ")
    .replace(/\s+/g, " ")
    .trim();
}

/**
 * Word errors of `hyp` against `ref` (substitutions, deletions and insertions: the word-level
 * edit distance) after plainWords; { errors, words }.
 */
export function wordErrors(ref, hyp) {
  const r = plainWords(ref).split(" ").filter(Boolean);
  const h = plainWords(hyp).split(" ").filter(Boolean);
  let prev = Array.from({ length: h.length + 1 }, (_, j) => j);
  for (let i = 1; i <= r.length; i++) {
    const cur = [i];
    for (let j = 1; j <= h.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r[i - 1] === h[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return { errors: prev[h.length], words: r.length };
}
