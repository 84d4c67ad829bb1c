// Microphone recording with MediaRecorder (Opus in WebM where the browser supports it), a
// running timer and a small level meter drawn on a canvas.

const PREFERRED_TYPES = ["audio/webm;codecs=opus", "audio/webm", "audio/ogg;codecs=opus", "audio/mp4"];
export const MAX_SECONDS = 300;

export function recordingSupported() {
  return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder);
}

function pickType() {
  if (!window.MediaRecorder || !MediaRecorder.isTypeSupported) return "";
  return PREFERRED_TYPES.find((t) => MediaRecorder.isTypeSupported(t)) || "";
}

export class Recorder {
  constructor({ onTick, meter } = {}) {
    this.onTick = onTick || (() => {});
    this.meter = meter || null;
    this.state = "idle";
  }

  get seconds() {
    return this.startedAt ? (performance.now() - this.startedAt) / 1000 : 0;
  }

  async start() {
    if (this.state !== "idle") return;
    if (!recordingSupported()) throw new Error("This browser cannot record audio (it needs a secure https:// or localhost address).");
    this.state = "starting";
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, channelCount: 1 },
      });
    } catch (err) {
      this.state = "idle";
      const name = err && err.name;
      if (name === "NotAllowedError" || name === "SecurityError") throw new Error("Microphone access was denied. Allow it in the browser's site settings to record.");
      if (name === "NotFoundError") throw new Error("No microphone was found.");
      throw new Error(`Could not start the microphone: ${(err && err.message) || err}`);
    }
    const mimeType = pickType();
    this.recorder = new MediaRecorder(this.stream, mimeType ? { mimeType } : undefined);
    this.chunks = [];
    this.recorder.addEventListener("dataavailable", (e) => { if (e.data && e.data.size) this.chunks.push(e.data); });
    this.stopped = new Promise((resolve) => this.recorder.addEventListener("stop", resolve, { once: true }));
    this.recorder.start(250);
    this.startedAt = performance.now();
    this.state = "recording";
    this.timer = setInterval(() => {
      this.onTick(this.seconds);
      if (this.seconds >= MAX_SECONDS) this.onLimit && this.onLimit();
    }, 200);
    this.onTick(0);
    this.startMeter();
  }

  startMeter() {
    if (!this.meter) return;
    try {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      this.audioCtx = new Ctx();
      const src = this.audioCtx.createMediaStreamSource(this.stream);
      const analyser = this.audioCtx.createAnalyser();
      analyser.fftSize = 512;
      src.connect(analyser);
      const data = new Uint8Array(analyser.fftSize);
      const canvas = this.meter;
      const g = canvas.getContext("2d");
      const bars = 40;
      const levels = new Array(bars).fill(0);
      let last = 0;
      const draw = (t) => {
        if (this.state !== "recording") return;
        this.raf = requestAnimationFrame(draw);
        if (t - last < 60) return;
        last = t;
        analyser.getByteTimeDomainData(data);
        let peak = 0;
        for (const v of data) peak = Math.max(peak, Math.abs(v - 128) / 128);
        levels.push(Math.min(1, peak * 2.2));
        levels.shift();
        const w = canvas.width, h = canvas.height;
        g.clearRect(0, 0, w, h);
        g.fillStyle = getComputedStyle(canvas).color || "#888";
        const step = w / bars;
        levels.forEach((lv, i) => {
          const bh = Math.max(2, lv * h);
          g.fillRect(i * step + step * 0.2, (h - bh) / 2, step * 0.6, bh);
        });
      };
      this.raf = requestAnimationFrame(draw);
    } catch { /* the meter is decoration only */ }
  }

  async stop() {
    if (this.state !== "recording") return null;
    const seconds = this.seconds;
    this.state = "stopping";
    if (this.recorder.state !== "inactive") {
      try { this.recorder.requestData(); } catch { /* not all browsers */ }
      this.recorder.stop();
    }
    await this.stopped;
    const type = (this.recorder.mimeType || pickType() || "audio/webm").split(";")[0];
    const blob = new Blob(this.chunks, { type });
    this.cleanup();
    return { blob, mime: type, seconds };
  }

  cancel() {
    if (this.state === "idle") return;
    try { if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop(); } catch { /* ignore */ }
    this.cleanup();
  }

  cleanup() {
    clearInterval(this.timer);
    cancelAnimationFrame(this.raf);
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    if (this.audioCtx) this.audioCtx.close().catch(() => {});
    this.stream = this.recorder = this.audioCtx = null;
    this.chunks = [];
    this.startedAt = 0;
    this.state = "idle";
  }
}

export function formatDuration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}
