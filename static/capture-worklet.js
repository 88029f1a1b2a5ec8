// AudioWorklet processor of the voxio page: takes the microphone's audio, downmixes it to
// mono, resamples it to 16 kHz when the AudioContext runs at another rate (windowed-sinc
// low-pass, then linear interpolation), converts it to PCM16 little-endian and posts frames
// of 20 ms (320 samples) to the page, each with its RMS level (0..1).
//
// Messages posted: { type: "frame", pcm: ArrayBuffer (640 bytes), level: number }.
// Messages accepted: { type: "reset" } (drops the partial frame and the filter state).

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 320;

/** A windowed-sinc (Blackman) low-pass with cutoff `fc` in cycles per input sample. */
function lowPass(fc, taps) {
  const h = new Float32Array(taps);
  const mid = (taps - 1) / 2;
  let sum = 0;
  for (let i = 0; i < taps; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const w =
      0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
    h[i] = sinc * w;
    sum += h[i];
  }
  for (let i = 0; i < taps; i++) h[i] /= sum;
  return h;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.outRate = opts.targetRate || TARGET_RATE;
    this.frameSamples = opts.frameSamples || FRAME_SAMPLES;
    this.inRate = sampleRate; // the AudioWorkletGlobalScope's rate: the context's
    this.step = this.inRate / this.outRate; // input samples per output sample
    this.resampling = Math.abs(this.step - 1) > 1e-9;
    if (this.resampling && this.step > 1) {
      // Cut at 90% of the output Nyquist frequency before decimating.
      const taps = Math.min(129, Math.max(31, Math.ceil(this.step * 16) | 1));
      this.fir = lowPass((0.45 * this.outRate) / this.inRate, taps);
    } else {
      this.fir = null;
    }
    this.frame = new Int16Array(this.frameSamples);
    this.reset();
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === "reset") this.reset();
    };
  }

  reset() {
    this.filled = 0;
    this.energy = 0;
    this.t = 0; // position of the next output sample, relative to the current input sample
    this.prev = 0; // the previous (filtered) input sample
    if (this.fir) {
      // History written twice, so that the taps always read a contiguous window.
      this.hist = new Float32Array(this.fir.length * 2);
      this.histPos = 0;
    }
  }

  filter(x) {
    const fir = this.fir;
    const n = fir.length;
    const hist = this.hist;
    hist[this.histPos] = x;
    hist[this.histPos + n] = x;
    this.histPos = (this.histPos + 1) % n;
    // hist[histPos .. histPos + n) is the window, oldest first.
    let acc = 0;
    const base = this.histPos;
    for (let i = 0; i < n; i++) acc += fir[i] * hist[base + i];
    return acc;
  }

  emit(sample) {
    const s = sample > 1 ? 1 : sample < -1 ? -1 : sample;
    this.frame[this.filled++] = s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff);
    this.energy += s * s;
    if (this.filled === this.frameSamples) {
      const pcm = new ArrayBuffer(this.frameSamples * 2);
      const view = new DataView(pcm);
      for (let i = 0; i < this.frameSamples; i++) view.setInt16(i * 2, this.frame[i], true);
      const level = Math.sqrt(this.energy / this.frameSamples);
      this.port.postMessage({ type: "frame", pcm, level }, [pcm]);
      this.filled = 0;
      this.energy = 0;
    }
  }

  push(x) {
    if (!this.resampling) {
      this.emit(x);
      return;
    }
    const y = this.fir ? this.filter(x) : x;
    while (this.t <= 0) {
      this.emit(this.prev + (y - this.prev) * (this.t + 1));
      this.t += this.step;
    }
    this.t -= 1;
    this.prev = y;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const channels = input.length;
    const length = input[0].length;
    for (let i = 0; i < length; i++) {
      let sum = 0;
      for (let c = 0; c < channels; c++) sum += input[c][i];
      this.push(sum / channels);
    }
    return true;
  }
}

registerProcessor("voxio-capture", CaptureProcessor);
