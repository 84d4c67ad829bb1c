// Talks to the conversation API (docs/serve-api.md). Every failure becomes an ApiError whose
// message is what the user should read: the server's `error.message` when there is a body,
// a plain sentence for network failures.

const KEY_STORAGE = "omniphi.apiKey";
const BASE = "api/"; // relative: works when the page is served under a sub-path too

export class ApiError extends Error {
  constructor(message, { status = 0, type = "api_error", code = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.code = code;
  }
}

export function getApiKey() {
  try { return localStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
}

export function setApiKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch { /* storage disabled: the key lives for this page only */ }
  memoryKey = key || "";
}

let memoryKey = getApiKey();
let keyPrompt = null; // async (rejected: bool) => string|null, installed by the app
let pendingPrompt = null; // concurrent 401s share one dialog

export function onApiKeyNeeded(fn) { keyPrompt = fn; }

function authHeaders(extra = {}) {
  const h = { ...extra };
  const key = memoryKey || getApiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function askForKey(rejected) {
  if (!keyPrompt) return null;
  if (!pendingPrompt) {
    pendingPrompt = Promise.resolve(keyPrompt(rejected)).finally(() => { pendingPrompt = null; });
  }
  const key = await pendingPrompt;
  if (key) setApiKey(key);
  return key;
}

async function errorFromResponse(res) {
  let message = "";
  let type = "api_error";
  let code = null;
  try {
    const text = await res.text();
    try {
      const body = JSON.parse(text);
      if (body && body.error) {
        message = typeof body.error === "string" ? body.error : body.error.message || "";
        type = body.error.type || type;
        code = body.error.code ?? null;
      } else if (body && body.detail) {
        // A framework-level error that slipped past the server's error handler.
        message = Array.isArray(body.detail)
          ? body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ")
          : String(body.detail);
      }
    } catch {
      message = text.trim().slice(0, 300);
    }
  } catch { /* body unreadable */ }
  if (!message) message = `The server answered ${res.status} ${res.statusText || ""}`.trim();
  return new ApiError(message, { status: res.status, type, code });
}

/**
 * fetch() with the API key, a retry after asking for a key on 401, and errors turned into ApiError.
 * Returns the Response (raw) or its parsed JSON body (null for 204).
 */
export async function request(method, path, body, { signal, raw = false, headers = {} } = {}) {
  let rejected = false;
  for (let attempt = 0; attempt < 4; attempt++) {
    const init = { method, signal, headers: authHeaders(headers) };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let res;
    try {
      res = await fetch(path.startsWith("/") || path.startsWith("api/") ? path : BASE + path, init);
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError("Network error: the server could not be reached. Check that it is running.", { type: "network_error" });
    }
    if (res.status === 401) {
      const key = await askForKey(rejected || attempt > 0);
      rejected = true;
      if (!key) throw await errorFromResponse(res);
      continue;
    }
    if (!res.ok) throw await errorFromResponse(res);
    if (raw) return res;
    if (res.status === 204) return null;
    const text = await res.text();
    if (!text) return null;
    try { return JSON.parse(text); } catch {
      throw new ApiError("The server sent an answer that is not JSON.", { status: res.status });
    }
  }
  throw new ApiError("The API key was not accepted.", { status: 401, type: "authentication_error" });
}

export const api = {
  defaults: () => request("GET", "settings/defaults"),
  model: () => request("GET", "model"),
  /** A file the server serves (a suggestion's sample picture or recording) as a Blob. */
  blob: (url) => request("GET", url, undefined, { raw: true }).then((res) => res.blob()),
  listConversations: () => request("GET", "conversations").then((b) => (b && b.data) || []),
  createConversation: (title) => request("POST", "conversations", title ? { title } : {}),
  getConversation: (id) => request("GET", `conversations/${encodeURIComponent(id)}`),
  renameConversation: (id, title) => request("PATCH", `conversations/${encodeURIComponent(id)}`, { title }),
  deleteConversation: (id) => request("DELETE", `conversations/${encodeURIComponent(id)}`),
};

/**
 * POSTs a chat turn and yields the server-sent events as parsed objects. EventSource can't POST,
 * so this reads the body stream and splits it on blank lines itself.
 */
export async function* streamChat(conversationId, body, signal) {
  const res = await request("POST", `conversations/${encodeURIComponent(conversationId)}/chat`, body, {
    signal,
    raw: true,
    headers: { Accept: "text/event-stream" },
  });
  const type = res.headers.get("content-type") || "";
  if (!type.includes("text/event-stream")) {
    // A server that answered with a plain JSON body (e.g. an error with status 200) is still handled.
    const text = await res.text();
    let parsed = null;
    try { parsed = JSON.parse(text); } catch { /* fallthrough */ }
    if (parsed && parsed.error) yield { type: "error", error: parsed.error };
    else yield { type: "error", error: { message: "The server did not answer with an event stream." } };
    return;
  }
  if (!res.body) throw new ApiError("This browser cannot read streamed answers.");
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let finished = false;
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (err && err.name === "AbortError") throw err;
        if (signal && signal.aborted) throw new DOMException("Aborted", "AbortError");
        throw new ApiError("Network error: the connection dropped while the answer was streaming.", { type: "network_error" });
      }
      if (chunk.done) { finished = true; break; }
      buffer += chunk.value;
      let sep;
      while ((sep = findBlankLine(buffer)) !== null) {
        const block = buffer.slice(0, sep.index);
        buffer = buffer.slice(sep.index + sep.length);
        const event = parseBlock(block);
        if (event) yield event;
      }
    }
    const tail = parseBlock(buffer);
    if (tail) yield tail;
  } finally {
    // The consumer stopped early (after `done`/`error`) or failed: let go of the connection.
    if (!finished) reader.cancel().catch(() => {});
    else try { reader.releaseLock(); } catch { /* already released */ }
  }
}

function findBlankLine(s) {
  const m = /\r?\n\r?\n|\r\r/.exec(s);
  return m ? { index: m.index, length: m[0].length } : null;
}

function parseBlock(block) {
  const data = [];
  for (const line of block.split(/\r?\n|\r/)) {
    if (line.startsWith("data:")) data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
    // `event:`, `id:`, `retry:` and `: comment` (keep-alive) lines carry nothing the page needs.
  }
  if (!data.length) return null;
  const payload = data.join("\n");
  if (payload === "[DONE]") return null;
  try {
    return JSON.parse(payload);
  } catch {
    return { type: "error", error: { message: "The server sent an event the page could not read." } };
  }
}

// Attachments are protected by the API key too, and <img>/<audio> can't send headers: with a key,
// they are fetched here and shown from blob: URLs (cached for the page's lifetime).
const mediaCache = new Map();

export function needsAuthFetch() { return !!(memoryKey || getApiKey()); }

export async function mediaUrl(url) {
  if (!url || url.startsWith("blob:") || url.startsWith("data:")) return url;
  if (!needsAuthFetch()) return url;
  if (!mediaCache.has(url)) {
    const p = request("GET", url, undefined, { raw: true })
      .then((res) => res.blob())
      .then((blob) => URL.createObjectURL(blob));
    mediaCache.set(url, p);
    p.catch(() => mediaCache.delete(url));
  }
  return mediaCache.get(url);
}

/** An attachment as a data: URL (to resend it when a message is edited). */
export async function attachmentAsDataUrl(url) {
  const res = await request("GET", url, undefined, { raw: true });
  const blob = await res.blob();
  return blobToDataUrl(blob);
}

export function blobToDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error || new Error("could not read the file"));
    r.readAsDataURL(blob);
  });
}
