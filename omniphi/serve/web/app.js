// omniphi chat page: conversations in a sidebar, streamed answers, images and audio in.
// Plain ES modules, no build step; talks only to the conversation API under api/.

import { api, streamChat, ApiError, onApiKeyNeeded, getApiKey, setApiKey, mediaUrl, attachmentAsDataUrl, blobToDataUrl } from "./api.js";
import { renderMarkdown, copyText } from "./markdown.js";
import { Recorder, recordingSupported, formatDuration, MAX_SECONDS } from "./recorder.js";
import { icon, hydrateIcons } from "./icons.js";

window.omniphiReady = true; // tells theme.js's boot watchdog that the modules loaded

const $ = (id) => document.getElementById(id);
const el = {
  app: $("app"), sidebar: $("sidebar"), scrim: $("scrim"), list: $("conversation-list"), listEmpty: $("conv-empty"),
  newChat: $("new-chat"), topbarNew: $("topbar-new"), sidebarOpen: $("sidebar-open"), sidebarClose: $("sidebar-close"),
  title: $("chat-title"), modelBadge: $("model-badge"), thread: $("thread"), messages: $("messages"),
  empty: $("empty-state"), modelSummary: $("model-summary"), modelLimits: $("model-limits"), suggestions: $("suggestions"), scrollDown: $("scroll-down"), composer: $("composer"), input: $("input"),
  pending: $("pending"), send: $("send"), stop: $("stop"), attachImage: $("attach-image"), attachAudio: $("attach-audio"),
  imageInput: $("image-input"), audioInput: $("audio-input"), recordStart: $("record-start"), recording: $("recording"),
  recTimer: $("rec-timer"), recMeter: $("rec-meter"), recStop: $("rec-stop"), recCancel: $("rec-cancel"),
  inputRow: $("input-row"), dropOverlay: $("drop-overlay"), toasts: $("toasts"),
  settingsDialog: $("settings-dialog"), settingsForm: $("settings-form"), openSettings: $("open-settings"),
  confirmDialog: $("confirm-dialog"), keyDialog: $("key-dialog"), lightbox: $("lightbox"),
};

const FALLBACK_DEFAULTS = { system_prompt: "", temperature: 0, max_tokens: 512, audio_mode: "native", model: "" };
const SETTINGS_KEY = "omniphi.settings";
const SIDEBAR_KEY = "omniphi.sidebarCollapsed";
const MAX_FILE_BYTES = 25 * 1024 * 1024;
const AUDIO_EXT = { wav: "audio/wav", mp3: "audio/mpeg", flac: "audio/flac", ogg: "audio/ogg", oga: "audio/ogg", opus: "audio/ogg", webm: "audio/webm", m4a: "audio/mp4", aac: "audio/aac" };
const phoneQuery = window.matchMedia("(max-width: 767px)");

const state = {
  conversations: [],
  currentId: null,
  messages: [],
  loadToken: 0,
  generating: null, // { controller, convId, assistant, userLocal }
  pending: [], // { key, kind, blob, mime, name, objectUrl, seconds }
  defaults: { ...FALLBACK_DEFAULTS },
  overrides: loadOverrides(),
  stickToBottom: true,
};
const localMedia = new Map(); // attachment_id → blob: URL of what this page uploaded (no refetch)
let pendingSeq = 0;

// ───────────────────────────── small helpers ─────────────────────────────

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "html") node.innerHTML = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

function iconButton(name, label, attrs = {}) {
  return h("button", { type: "button", class: "icon-btn", "aria-label": label, title: label, html: icon(name), ...attrs });
}

const textOf = (msg) => (msg.content || []).filter((p) => p.type === "text").map((p) => p.text).join("");
const isPhone = () => phoneQuery.matches;

function errorMessage(err) {
  if (!err) return "Something went wrong.";
  if (err instanceof ApiError) return err.message;
  return err.message || String(err);
}

// ───────────────────────────── toasts ─────────────────────────────

function toast(message, { kind = "error", timeout = 7000 } = {}) {
  const node = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status", "data-testid": "toast", dataset: { kind } },
    h("span", { class: "toast-icon", html: icon(kind === "error" ? "alert" : kind === "success" ? "check" : "info") }),
    h("span", { class: "toast-text", "data-testid": "toast-message", text: message }),
    iconButton("x", "Dismiss", { class: "icon-btn toast-close", onclick: () => dismiss() }));
  const dismiss = () => {
    node.classList.add("leaving");
    setTimeout(() => node.remove(), 200);
  };
  el.toasts.append(node);
  while (el.toasts.children.length > 4) el.toasts.firstElementChild.remove();
  if (timeout) setTimeout(dismiss, timeout);
  return node;
}

window.addEventListener("unhandledrejection", (e) => {
  if (e.reason && e.reason.name === "AbortError") return;
  toast(errorMessage(e.reason));
});
window.addEventListener("error", (e) => { if (e.message) toast(`Something went wrong: ${e.message}`); });

// ───────────────────────────── settings ─────────────────────────────

function loadOverrides() {
  try { return JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}") || {}; } catch { return {}; }
}

function saveOverrides() {
  try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(state.overrides)); } catch { /* private mode */ }
}

function effectiveSettings() {
  const d = state.defaults, o = state.overrides;
  const pick = (k) => (o[k] !== undefined && o[k] !== null ? o[k] : d[k]);
  return {
    system_prompt: String(pick("system_prompt") ?? ""),
    temperature: Number(pick("temperature")),
    max_tokens: Math.round(Number(pick("max_tokens"))),
    audio_mode: pick("audio_mode") === "transcribe" ? "transcribe" : "native",
  };
}

function fillSettingsForm() {
  const s = effectiveSettings();
  $("set-system").value = s.system_prompt;
  $("set-temperature").value = String(s.temperature);
  $("set-temperature-out").textContent = s.temperature.toFixed(2);
  $("set-max-tokens").value = String(s.max_tokens);
  for (const r of el.settingsForm.elements.audio_mode) r.checked = r.value === s.audio_mode;
  const theme = window.omniphiTheme ? window.omniphiTheme.get() : "system";
  for (const r of el.settingsForm.elements.theme) r.checked = r.value === theme;
  const hasKey = !!getApiKey();
  $("api-key-state").textContent = hasKey ? "An API key is saved in this browser." : "";
  $("forget-key").hidden = !hasKey;
}

function openSettings() {
  fillSettingsForm();
  el.settingsDialog.showModal();
  if (isPhone()) closeDrawer();
}

function saveSettingsFromForm() {
  const d = state.defaults;
  const temperature = Math.min(2, Math.max(0, Number($("set-temperature").value)));
  let maxTokens = Math.round(Number($("set-max-tokens").value));
  if (!Number.isFinite(maxTokens) || maxTokens < 1) maxTokens = d.max_tokens;
  const values = {
    system_prompt: $("set-system").value,
    temperature,
    max_tokens: maxTokens,
    audio_mode: el.settingsForm.elements.audio_mode.value || "native",
  };
  // Only what differs from the server's defaults is stored: new server defaults still apply.
  state.overrides = {};
  for (const [k, v] of Object.entries(values)) if (v !== d[k]) state.overrides[k] = v;
  saveOverrides();
  if (window.omniphiTheme) window.omniphiTheme.set(el.settingsForm.elements.theme.value || "system");
}

function bindSettings() {
  el.openSettings.addEventListener("click", openSettings);
  $("settings-close").addEventListener("click", () => el.settingsDialog.close());
  $("set-temperature").addEventListener("input", (e) => { $("set-temperature-out").textContent = Number(e.target.value).toFixed(2); });
  for (const r of el.settingsForm.elements.theme) {
    r.addEventListener("change", () => window.omniphiTheme && window.omniphiTheme.apply(r.value)); // live preview
  }
  el.settingsForm.addEventListener("submit", (e) => {
    if (e.submitter && e.submitter.id === "settings-save") {
      saveSettingsFromForm();
      toast("Settings saved", { kind: "success", timeout: 2000 });
    }
  });
  el.settingsDialog.addEventListener("close", () => {
    if (window.omniphiTheme) window.omniphiTheme.apply(window.omniphiTheme.get()); // undo an unsaved preview
  });
  $("settings-reset").addEventListener("click", () => {
    state.overrides = {};
    saveOverrides();
    if (window.omniphiTheme) window.omniphiTheme.set("system");
    fillSettingsForm();
    toast("Settings reset to the server's defaults", { kind: "info", timeout: 2500 });
  });
  $("forget-key").addEventListener("click", () => {
    setApiKey("");
    fillSettingsForm();
    toast("API key forgotten", { kind: "info", timeout: 2500 });
  });
}

// ───────────────────────────── dialogs: confirm, API key, lightbox ─────────────────────────────

function confirmDialog({ title, text, ok = "Delete" }) {
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  el.confirmDialog.returnValue = "";
  el.confirmDialog.showModal();
  return new Promise((resolve) => {
    el.confirmDialog.addEventListener("close", () => resolve(el.confirmDialog.returnValue === "ok"), { once: true });
  });
}

function promptForKey(rejected) {
  $("key-error").hidden = !rejected || !getApiKey();
  $("key-input").value = "";
  el.keyDialog.returnValue = "";
  el.keyDialog.showModal();
  $("key-input").focus();
  return new Promise((resolve) => {
    el.keyDialog.addEventListener("close", () => {
      const key = $("key-input").value.trim();
      resolve(el.keyDialog.returnValue === "ok" && key ? key : null);
    }, { once: true });
  });
}

function openLightbox(src, alt) {
  const img = $("lightbox-img");
  img.src = src;
  img.alt = alt || "Image";
  el.lightbox.showModal();
}
$("key-cancel").addEventListener("click", () => el.keyDialog.close("cancel"));
$("confirm-cancel").addEventListener("click", () => el.confirmDialog.close("cancel"));
el.lightbox.addEventListener("click", (e) => { if (e.target === el.lightbox || e.target.id === "lightbox-img") el.lightbox.close(); });

// ───────────────────────────── sidebar ─────────────────────────────

function groupLabel(ts) {
  const d = new Date(ts * 1000);
  const today = new Date();
  today.setHours(0, 0, 0, 0);
  const day = 86400000;
  const t = d.getTime();
  if (t >= today.getTime()) return "Today";
  if (t >= today.getTime() - day) return "Yesterday";
  if (t >= today.getTime() - 7 * day) return "Previous 7 days";
  if (t >= today.getTime() - 30 * day) return "Previous 30 days";
  return d.toLocaleDateString(undefined, { month: "long", year: "numeric" });
}

function renderSidebar() {
  if (el.list.querySelector(".conv-rename")) { state.sidebarDirty = true; return; } // mid-rename: later
  state.sidebarDirty = false;
  el.list.replaceChildren();
  el.listEmpty.hidden = state.conversations.length > 0;
  let group = null, groupEl = null;
  for (const c of state.conversations) {
    const label = groupLabel(c.updated_at || c.created_at || 0);
    if (label !== group) {
      group = label;
      groupEl = h("section", { class: "conv-group", "aria-label": label }, h("h3", { class: "conv-group-title", text: label }));
      el.list.append(groupEl);
    }
    groupEl.append(conversationItem(c));
  }
}

function conversationItem(c) {
  const active = c.id === state.currentId;
  const item = h("div", { class: `conv-item${active ? " active" : ""}`, "data-testid": "conversation-item", dataset: { id: c.id } });
  const open = h("a", {
    class: "conv-open", href: `#/c/${encodeURIComponent(c.id)}`, "data-testid": "conversation-open",
    "aria-current": active ? "page" : null, title: c.title, text: c.title || "Untitled chat",
  });
  open.addEventListener("click", (e) => {
    e.preventDefault();
    selectConversation(c.id);
  });
  const actions = h("div", { class: "conv-actions" },
    iconButton("pencil", "Rename chat", { "data-testid": "conversation-rename", onclick: () => startRename(item, c) }),
    iconButton("trash", "Delete chat", { class: "icon-btn danger-hover", "data-testid": "conversation-delete", onclick: () => deleteConversation(c) }));
  item.append(open, actions);
  return item;
}

function startRename(item, c) {
  const input = h("input", { class: "conv-rename", type: "text", value: c.title || "", "aria-label": "Chat title", "data-testid": "conversation-rename-input", maxlength: "200" });
  const open = item.querySelector(".conv-open");
  open.replaceWith(input);
  item.classList.add("renaming");
  input.focus();
  input.select();
  let finished = false;
  const finish = async (save) => {
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    item.classList.remove("renaming");
    if (!save || !title || title === c.title) {
      input.replaceWith(open);
      if (state.sidebarDirty) renderSidebar();
      return;
    }
    open.textContent = title;
    input.replaceWith(open);
    try {
      const updated = await api.renameConversation(c.id, title);
      Object.assign(c, updated || { title });
    } catch (err) {
      toast(errorMessage(err));
    }
    renderSidebar();
    if (c.id === state.currentId) setTitle(c.title);
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); finish(true); }
    else if (e.key === "Escape") { e.preventDefault(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
}

async function deleteConversation(c) {
  const ok = await confirmDialog({ title: "Delete chat?", text: `This will delete “${c.title || "Untitled chat"}” and its attachments.` });
  if (!ok) return;
  try {
    if (state.generating && state.generating.convId === c.id) stopGenerating({ detach: true });
    await api.deleteConversation(c.id);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) { toast(errorMessage(err)); return; }
  }
  state.conversations = state.conversations.filter((x) => x.id !== c.id);
  if (state.currentId === c.id) newChat();
  else renderSidebar();
  toast("Chat deleted", { kind: "info", timeout: 2500 });
}

async function refreshConversations() {
  try {
    state.conversations = await api.listConversations();
  } catch (err) {
    toast(errorMessage(err));
  }
  renderSidebar();
  const current = state.conversations.find((c) => c.id === state.currentId);
  if (current) setTitle(current.title);
}

function setTitle(title) {
  el.title.textContent = title || "omniphi";
  document.title = title ? `${title} · omniphi` : "omniphi";
}

// Desktop: the sidebar collapses. Phone: it is a drawer over the page.
function openDrawer() {
  if (isPhone()) {
    el.app.classList.add("drawer-open");
    el.scrim.hidden = false;
    el.sidebarOpen.setAttribute("aria-expanded", "true");
    setTimeout(() => el.newChat.focus(), 50);
  } else {
    el.app.classList.remove("sidebar-collapsed");
    try { localStorage.setItem(SIDEBAR_KEY, "0"); } catch { /* ignore */ }
  }
  syncSidebarButtons();
}

function closeDrawer() {
  if (isPhone()) {
    el.app.classList.remove("drawer-open");
    el.scrim.hidden = true;
    el.sidebarOpen.setAttribute("aria-expanded", "false");
  } else {
    el.app.classList.add("sidebar-collapsed");
    try { localStorage.setItem(SIDEBAR_KEY, "1"); } catch { /* ignore */ }
  }
  syncSidebarButtons();
}

function syncSidebarButtons() {
  const open = isPhone() ? el.app.classList.contains("drawer-open") : !el.app.classList.contains("sidebar-collapsed");
  el.sidebarOpen.setAttribute("aria-expanded", String(open));
  el.sidebar.toggleAttribute("inert", !open); // off-screen: out of the tab order too
}

function bindSidebar() {
  let collapsed = false;
  try { collapsed = localStorage.getItem(SIDEBAR_KEY) === "1"; } catch { /* ignore */ }
  el.app.classList.toggle("sidebar-collapsed", collapsed);
  el.sidebarOpen.addEventListener("click", openDrawer);
  el.sidebarClose.addEventListener("click", closeDrawer);
  el.scrim.addEventListener("click", closeDrawer);
  el.newChat.addEventListener("click", () => { newChat(); if (isPhone()) closeDrawer(); el.input.focus(); });
  el.topbarNew.addEventListener("click", () => { newChat(); el.input.focus(); });
  phoneQuery.addEventListener("change", () => {
    el.app.classList.remove("drawer-open");
    el.scrim.hidden = true;
    syncSidebarButtons();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && el.app.classList.contains("drawer-open")) closeDrawer();
    if ((e.ctrlKey || e.metaKey) && e.shiftKey && (e.key === "o" || e.key === "O")) { e.preventDefault(); newChat(); el.input.focus(); }
  });
  syncSidebarButtons();
}

// ───────────────────────────── routing: #/c/<id> ─────────────────────────────

function idFromHash() {
  const m = /^#\/c\/([^/?#]+)/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

function setHash(id) {
  const want = id ? `#/c/${encodeURIComponent(id)}` : "";
  if (location.hash !== want) history.pushState(null, "", want || location.pathname + location.search);
}

window.addEventListener("popstate", () => {
  const id = idFromHash();
  if (id && id !== state.currentId) selectConversation(id, { push: false });
  else if (!id && state.currentId) newChat({ push: false });
});

// ───────────────────────────── conversations ─────────────────────────────

function newChat({ push = true } = {}) {
  if (state.generating) stopGenerating({ detach: true });
  state.loadToken++;
  state.currentId = null;
  state.messages = [];
  if (push) setHash(null);
  setTitle(null);
  renderThread();
  renderSidebar();
}

async function selectConversation(id, { push = true } = {}) {
  if (isPhone()) closeDrawer();
  if (id === state.currentId && state.messages.length) return;
  if (state.generating) stopGenerating({ detach: true });
  const token = ++state.loadToken;
  state.currentId = id;
  if (push) setHash(id);
  renderSidebar();
  el.messages.replaceChildren(h("div", { class: "thread-loading", "aria-label": "Loading", html: '<span class="dots"><i></i><i></i><i></i></span>' }));
  el.empty.hidden = true;
  try {
    const conv = await api.getConversation(id);
    if (token !== state.loadToken) return;
    state.messages = conv.messages || [];
    setTitle(conv.title);
    if (!state.conversations.some((c) => c.id === id)) {
      state.conversations.unshift({ id: conv.id, title: conv.title, created_at: conv.created_at, updated_at: conv.updated_at });
      renderSidebar();
    }
  } catch (err) {
    if (token !== state.loadToken) return;
    toast(errorMessage(err));
    state.currentId = null;
    state.messages = [];
    setHash(null);
    setTitle(null);
    renderSidebar();
  }
  renderThread();
  scrollToBottom(true);
}

// ───────────────────────────── thread rendering ─────────────────────────────

function renderThread() {
  el.messages.replaceChildren();
  const lastAssistant = lastAssistantIndex();
  state.messages.forEach((m, i) => el.messages.append(messageElement(m, { isLast: i === lastAssistant })));
  el.empty.hidden = state.messages.length > 0 || !!state.generating;
  el.thread.classList.toggle("is-empty", el.empty.hidden === false);
}

function lastAssistantIndex() {
  const i = state.messages.length - 1;
  return i >= 0 && state.messages[i].role === "assistant" ? i : -1;
}

function messageElement(msg, opts = {}) {
  const node = msg.role === "user" ? userMessage(msg) : assistantMessage(msg, opts);
  msg._el = node;
  return node;
}

function userMessage(msg) {
  const media = h("div", { class: "msg-media" });
  for (const part of msg.content || []) {
    if (part.type === "image") media.append(imageThumb(part));
    else if (part.type === "audio") media.append(audioChip(part, msg));
  }
  const text = textOf(msg);
  const col = h("div", { class: "msg-col" });
  if (media.childElementCount) col.append(media);
  if (text) col.append(h("div", { class: "bubble", "data-testid": "message-text", text }));
  const actions = h("div", { class: "msg-actions" });
  if (text) actions.append(iconButton("copy", "Copy message", { "data-testid": "copy-message", onclick: (e) => copyWithFeedback(e.currentTarget, text) }));
  if (msg.id) actions.append(iconButton("pencil", "Edit message", { "data-testid": "edit-message", onclick: () => startEdit(msg) }));
  col.append(actions);
  return h("article", { class: "msg user", "data-testid": "message-user", dataset: { id: msg.id || "", role: "user" } }, col);
}

function imageThumb(part) {
  const img = h("img", { alt: "Attached image", "data-testid": "message-image", loading: "lazy", decoding: "async" });
  const local = part._localUrl || localMedia.get(part.attachment_id);
  setMediaSrc(img, local || part.url);
  const btn = h("button", { type: "button", class: "thumb", "aria-label": "Open image" }, img);
  btn.addEventListener("click", () => openLightbox(img.src, "Attached image"));
  return btn;
}

function audioChip(part, msg) {
  const audio = h("audio", { controls: true, preload: "metadata", "data-testid": "message-audio", "aria-label": "Recorded audio" });
  const local = part._localUrl || localMedia.get(part.attachment_id);
  setMediaSrc(audio, local || part.url);
  const transcript = h("p", { class: "transcript", "data-testid": "audio-transcript" });
  const chip = h("div", { class: "audio-chip", "data-testid": "audio-chip", dataset: { attachmentId: part.attachment_id || "" } },
    h("div", { class: "audio-row" }, h("span", { class: "audio-ico", html: icon("audio") }), audio),
    transcript);
  setTranscript(chip, part.transcript, msg);
  return chip;
}

function setTranscript(chip, text, msg) {
  const p = chip.querySelector(".transcript");
  if (text) {
    p.textContent = text;
    p.classList.remove("pending");
    p.hidden = false;
    p.title = "Transcript";
  } else if (state.generating && msg && (msg === state.generating.userMessage || msg._local)) {
    p.textContent = "Transcribing…";
    p.classList.add("pending");
    p.hidden = false;
  } else {
    p.hidden = true;
  }
}

async function setMediaSrc(node, url) {
  if (node.tagName === "AUDIO") fixAudioDuration(node);
  try {
    node.src = await mediaUrl(url);
  } catch (err) {
    node.replaceWith(h("span", { class: "media-missing", text: "attachment unavailable" }));
  }
}

// MediaRecorder's WebM files carry no duration, so the player would show 0:00 until played:
// seeking far past the end once makes the browser scan the file and learn its real length.
function fixAudioDuration(audio) {
  audio.addEventListener("loadedmetadata", () => {
    if (audio.duration !== Infinity) return;
    const reset = () => {
      audio.removeEventListener("durationchange", reset);
      if (audio.duration === Infinity) return;
      audio.currentTime = 0;
    };
    audio.addEventListener("durationchange", reset);
    try { audio.currentTime = 1e7; } catch { /* not seekable */ }
  }, { once: true });
  return audio;
}

function withSrc(node, src) {
  node.src = src;
  return node;
}

function assistantMessage(msg, { isLast = false, streaming = false } = {}) {
  const body = h("div", { class: "markdown", "data-testid": "message-markdown" });
  const text = msg._text !== undefined ? msg._text : textOf(msg);
  if (streaming && !text) body.append(h("span", { class: "dots thinking", "aria-label": "Thinking", html: "<i></i><i></i><i></i>" }));
  else renderMarkdown(body, text, { final: !streaming });
  const col = h("div", { class: "msg-col" }, body);
  const notice = finishNotice(msg);
  if (notice) col.append(notice);
  if (!streaming) col.append(assistantFooter(msg, isLast, text));
  return h("article", {
    class: `msg assistant${streaming ? " streaming" : ""}`, "data-testid": "message-assistant",
    dataset: { id: msg.id || "", role: "assistant", finish: msg.finish_reason || "" },
  }, h("div", { class: "avatar", "aria-hidden": "true" }), col);
}

function finishNotice(msg) {
  const r = msg.finish_reason;
  if (r === "cancelled") return h("div", { class: "notice muted", "data-testid": "finish-notice", text: "Stopped" });
  if (r === "length") return h("div", { class: "notice muted", "data-testid": "finish-notice", text: "The answer reached the max tokens limit" });
  if (r === "error") return h("div", { class: "notice error", "data-testid": "finish-notice", text: msg._error || "The answer failed" });
  return null;
}

function assistantFooter(msg, isLast, text) {
  const actions = h("div", { class: "msg-actions" },
    iconButton("copy", "Copy answer", { "data-testid": "copy-answer", onclick: (e) => copyWithFeedback(e.currentTarget, text) }));
  if (isLast) actions.append(iconButton("refresh", "Regenerate answer", { "data-testid": "regenerate", onclick: regenerate }));
  const foot = h("div", { class: "msg-foot" }, actions);
  const u = msg.usage;
  if (u && (u.completion_tokens !== undefined)) {
    const parts = [`${u.completion_tokens} token${u.completion_tokens === 1 ? "" : "s"}`];
    if (typeof u.tokens_per_second === "number" && isFinite(u.tokens_per_second)) parts.push(`${u.tokens_per_second.toFixed(1)} tok/s`);
    if (typeof u.seconds === "number") parts.push(`${u.seconds.toFixed(1)} s`);
    foot.append(h("span", {
      class: "usage", "data-testid": "usage", text: parts.join(" · "),
      title: `prompt ${u.prompt_tokens ?? "?"} tokens, answer ${u.completion_tokens} tokens`,
    }));
  }
  return foot;
}

async function copyWithFeedback(button, text) {
  const ok = await copyText(text);
  if (!ok) { toast("Could not copy to the clipboard"); return; }
  button.classList.add("copied");
  const label = button.querySelector("span");
  const old = button.innerHTML;
  button.innerHTML = icon("check") + (label ? "<span>Copied</span>" : "");
  setTimeout(() => { button.innerHTML = old; button.classList.remove("copied"); }, 1500);
}

// Copy buttons on code blocks are created by the Markdown renderer: one delegated listener.
el.messages.addEventListener("click", (e) => {
  const btn = e.target.closest(".code-copy");
  if (!btn) return;
  const code = btn.closest(".code-block").querySelector("pre");
  copyWithFeedback(btn, code ? code.innerText.replace(/\n$/, "") : "");
});

// ───────────────────────────── scrolling ─────────────────────────────

function nearBottom() {
  const t = el.thread;
  return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
}

function scrollToBottom(force = false) {
  if (force || state.stickToBottom) {
    el.thread.scrollTop = el.thread.scrollHeight;
    state.stickToBottom = true;
  }
  el.scrollDown.hidden = nearBottom();
}

el.thread.addEventListener("scroll", () => {
  state.stickToBottom = nearBottom();
  el.scrollDown.hidden = state.stickToBottom;
}, { passive: true });
el.scrollDown.addEventListener("click", () => {
  el.thread.scrollTo({ top: el.thread.scrollHeight, behavior: "smooth" });
  state.stickToBottom = true;
});

// ───────────────────────────── composer ─────────────────────────────

function updateComposer() {
  const recording = el.app.classList.contains("is-recording");
  const hasContent = el.input.value.trim().length > 0 || state.pending.length > 0;
  el.send.disabled = !hasContent || !!state.generating || recording;
  el.send.hidden = !!state.generating;
  el.stop.hidden = !state.generating;
  el.recordStart.disabled = recording;
  el.composer.classList.toggle("has-pending", state.pending.length > 0);
}

function autoGrow() {
  el.input.style.height = "auto";
  const max = Math.round(window.innerHeight * (isPhone() ? 0.3 : 0.4));
  el.input.style.height = `${Math.min(el.input.scrollHeight, max)}px`;
  el.input.style.overflowY = el.input.scrollHeight > max ? "auto" : "hidden";
}

function renderPending() {
  el.pending.replaceChildren();
  el.pending.hidden = state.pending.length === 0;
  for (const p of state.pending) {
    const remove = iconButton("x", p.kind === "image" ? `Remove image ${p.name}` : `Remove audio ${p.name}`, {
      class: "icon-btn remove", "data-testid": "remove-attachment",
      onclick: () => removePending(p.key),
    });
    if (p.kind === "image") {
      el.pending.append(h("div", { class: "pending-item image", "data-testid": "pending-image", title: p.name },
        h("img", { src: p.objectUrl, alt: p.name }), remove));
    } else {
      el.pending.append(h("div", { class: "pending-item audio", "data-testid": "pending-audio", title: p.name },
        h("span", { class: "audio-ico", html: icon("audio") }),
        h("div", { class: "pending-audio-body" },
          h("span", { class: "pending-name", text: p.name }),
          withSrc(fixAudioDuration(h("audio", { controls: true, preload: "metadata", "aria-label": p.name, "data-testid": "pending-audio-player" })), p.objectUrl)),
        remove));
    }
  }
  updateComposer();
}

function removePending(key) {
  const i = state.pending.findIndex((p) => p.key === key);
  if (i < 0) return;
  const [p] = state.pending.splice(i, 1);
  URL.revokeObjectURL(p.objectUrl);
  renderPending();
  el.input.focus();
}

function audioMimeFor(file) {
  if (file.type && file.type.startsWith("audio/")) return file.type;
  if (file.type === "video/webm" || file.type === "video/ogg" || file.type === "video/mp4") return file.type.replace("video/", "audio/");
  const ext = (file.name || "").split(".").pop().toLowerCase();
  return AUDIO_EXT[ext] || "";
}

function addFiles(files, { only } = {}) {
  let added = 0;
  for (const file of files) {
    const isImage = file.type.startsWith("image/");
    const audioMime = isImage ? "" : audioMimeFor(file);
    const kind = isImage ? "image" : audioMime ? "audio" : null;
    if (!kind || (only && kind !== only)) {
      toast(`“${file.name || "file"}” is not ${only === "image" ? "an image" : only === "audio" ? "an audio file" : "an image or audio file"}.`);
      continue;
    }
    if (file.size > MAX_FILE_BYTES) {
      toast(`“${file.name}” is too large (${(file.size / 1048576).toFixed(1)} MB; the limit is ${MAX_FILE_BYTES / 1048576} MB).`);
      continue;
    }
    const blob = kind === "audio" && file.type !== audioMime ? new Blob([file], { type: audioMime }) : file;
    state.pending.push({
      key: ++pendingSeq, kind, blob, mime: kind === "image" ? file.type : audioMime,
      name: file.name || (kind === "image" ? "pasted image" : "audio"), objectUrl: URL.createObjectURL(blob),
    });
    added++;
  }
  if (added) renderPending();
  return added;
}

function bindComposer() {
  el.input.addEventListener("input", () => { autoGrow(); updateComposer(); });
  el.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      if (!el.send.disabled) el.composer.requestSubmit();
    }
  });
  el.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
  el.stop.addEventListener("click", stopGenerating);
  el.attachImage.addEventListener("click", () => el.imageInput.click());
  el.attachAudio.addEventListener("click", () => el.audioInput.click());
  el.imageInput.addEventListener("change", () => { addFiles([...el.imageInput.files], { only: "image" }); el.imageInput.value = ""; el.input.focus(); });
  el.audioInput.addEventListener("change", () => { addFiles([...el.audioInput.files], { only: "audio" }); el.audioInput.value = ""; el.input.focus(); });
  el.input.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (!files.length) return;
    const hasText = e.clipboardData.types.includes("text/plain");
    if (addFiles(files) && !hasText) e.preventDefault();
  });
  // Drag and drop anywhere on the chat side.
  let depth = 0;
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  window.addEventListener("dragenter", (e) => { if (!hasFiles(e)) return; e.preventDefault(); depth++; el.dropOverlay.hidden = false; });
  window.addEventListener("dragover", (e) => { if (!hasFiles(e)) return; e.preventDefault(); e.dataTransfer.dropEffect = "copy"; });
  window.addEventListener("dragleave", (e) => { if (!hasFiles(e)) return; depth = Math.max(0, depth - 1); if (!depth) el.dropOverlay.hidden = true; });
  window.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    el.dropOverlay.hidden = true;
    addFiles([...e.dataTransfer.files]);
    el.input.focus();
  });
  window.addEventListener("resize", autoGrow);
}

// ───────────────────────────── the model's card ─────────────────────────────
// What the loaded model says it can do (GET /api/model, from its model directory): a summary, its
// limits, and suggestions that work for it (a prompt, maybe with a sample picture or recording).

async function loadModelCard() {
  let card;
  try {
    card = await api.model();
  } catch (err) {
    return; // an older server or a hiccup: the empty page keeps its generic line, without suggestions
  }
  if (card.summary) el.modelSummary.textContent = card.summary;
  el.modelLimits.textContent = card.limits || "";
  el.modelLimits.hidden = !card.limits;
  el.suggestions.replaceChildren(...(card.suggestions || []).map(suggestionButton));
}

function suggestionButton(s) {
  const thumb = s.image_url ? h("img", { class: "suggestion-thumb", alt: "", "data-testid": "suggestion-image" }) : null;
  if (thumb) setMediaSrc(thumb, s.image_url);
  const button = h("button", { type: "button", class: "suggestion", "data-testid": "suggestion" },
    h("div", { class: "suggestion-text" },
      h("strong", { text: s.title }),
      h("span", { text: s.detail || s.prompt })),
    thumb,
    s.audio_url ? h("span", { class: "suggestion-audio", "aria-label": "with a recording", html: icon("mic") }) : null);
  button.addEventListener("click", () => useSuggestion(s, button));
  return button;
}

/** Puts the suggestion's prompt in the composer and its sample files among the attachments. */
async function useSuggestion(s, button) {
  button.disabled = true;
  try {
    const files = [];
    for (const url of [s.image_url, s.audio_url]) {
      if (!url) continue;
      const blob = await api.blob(url);
      const name = url.split("/").slice(-2).join("-"); // "2-image"
      files.push(new File([blob], name, { type: blob.type }));
    }
    if (files.length) addFiles(files);
  } catch (err) {
    toast(`Could not load the example: ${errorMessage(err)}`);
  } finally {
    button.disabled = false;
  }
  el.input.value = s.prompt || "";
  autoGrow();
  updateComposer();
  el.input.focus();
}

// ───────────────────────────── microphone ─────────────────────────────

const recorder = new Recorder({ meter: el.recMeter, onTick: (s) => { el.recTimer.textContent = formatDuration(s); } });
recorder.onLimit = () => { toast(`Recordings stop at ${MAX_SECONDS / 60} minutes.`, { kind: "info" }); stopRecording(); };

function setRecordingUi(on) {
  el.app.classList.toggle("is-recording", on);
  el.recording.hidden = !on;
  el.inputRow.hidden = on;
  updateComposer();
}

async function startRecording() {
  if (!recordingSupported()) {
    toast("Recording needs microphone access, which browsers only allow on https:// or localhost pages.");
    return;
  }
  el.recTimer.textContent = "0:00";
  setRecordingUi(true);
  try {
    await recorder.start();
    el.recStop.focus();
  } catch (err) {
    setRecordingUi(false);
    toast(errorMessage(err));
  }
}

async function stopRecording() {
  if (recorder.state !== "recording") return;
  try {
    const result = await recorder.stop();
    if (result && result.blob.size) {
      state.pending.push({
        key: ++pendingSeq, kind: "audio", blob: result.blob, mime: result.mime,
        name: `Recording ${formatDuration(result.seconds)}`, objectUrl: URL.createObjectURL(result.blob), seconds: result.seconds,
      });
      renderPending();
    } else {
      toast("The recording was empty.");
    }
  } catch (err) {
    toast(errorMessage(err));
  }
  setRecordingUi(false);
  el.input.focus();
}

function cancelRecording() {
  recorder.cancel();
  setRecordingUi(false);
  el.input.focus();
}

el.recordStart.addEventListener("click", startRecording);
el.recStop.addEventListener("click", stopRecording);
el.recCancel.addEventListener("click", cancelRecording);

// ───────────────────────────── sending and streaming ─────────────────────────────

async function partsFromPending(pending) {
  const parts = [];
  for (const p of pending) {
    const dataUrl = await blobToDataUrl(p.blob);
    // A clean media type (no codecs parameter) in the data: URL.
    const clean = dataUrl.replace(/^data:[^,]*?;base64,/, `data:${p.mime || "application/octet-stream"};base64,`);
    parts.push({ wire: { type: p.kind, data: clean }, local: { type: p.kind, mime: p.mime, _localUrl: p.objectUrl, transcript: null } });
  }
  return parts;
}

async function send() {
  if (state.generating || el.app.classList.contains("is-recording")) return;
  const text = el.input.value;
  const pending = state.pending.slice();
  if (!text.trim() && !pending.length) return;

  let media;
  try {
    media = await partsFromPending(pending);
  } catch (err) {
    toast(`Could not read an attachment: ${errorMessage(err)}`);
    return;
  }
  const wire = media.map((m) => m.wire);
  const local = media.map((m) => m.local);
  if (text.trim()) {
    wire.push({ type: "text", text });
    local.push({ type: "text", text });
  }

  // Clear the composer now (ChatGPT does); restored if the server refuses the message.
  const restore = () => {
    if (!el.input.value) { el.input.value = text; autoGrow(); }
    if (!state.pending.length) { state.pending = pending; renderPending(); }
  };
  el.input.value = "";
  autoGrow();
  state.pending = [];
  renderPending();

  if (!state.currentId) {
    try {
      const conv = await api.createConversation();
      state.currentId = conv.id;
      state.conversations.unshift(conv);
      setHash(conv.id);
      setTitle(conv.title);
      renderSidebar();
    } catch (err) {
      restore();
      toast(errorMessage(err));
      return;
    }
  }
  const userLocal = { id: null, role: "user", content: local, _local: true };
  await runChat({ content: wire }, { userLocal, restore });
}

function regenerate() {
  if (state.generating) return;
  const i = lastAssistantIndex();
  if (i < 0) return;
  const [removed] = state.messages.splice(i, 1);
  if (removed && removed._el) removed._el.remove();
  runChat({ regenerate: true }, {});
}

function startEdit(msg) {
  if (state.generating) return;
  const node = msg._el;
  const col = node.querySelector(".msg-col");
  const original = textOf(msg);
  const ta = h("textarea", { class: "edit-input", "data-testid": "edit-input", "aria-label": "Edit message", rows: "1" });
  ta.value = original;
  const cancel = h("button", { type: "button", class: "pill-btn ghost", "data-testid": "edit-cancel", text: "Cancel" });
  const save = h("button", { type: "button", class: "pill-btn primary", "data-testid": "edit-send", text: "Send" });
  const box = h("div", { class: "edit-box" }, ta, h("div", { class: "edit-actions" }, cancel, save));
  const bubble = col.querySelector(".bubble");
  const actions = col.querySelector(".msg-actions");
  if (bubble) bubble.hidden = true;
  actions.hidden = true;
  col.append(box);
  node.classList.add("editing");
  const grow = () => { ta.style.height = "auto"; ta.style.height = `${Math.min(ta.scrollHeight, 360)}px`; };
  ta.addEventListener("input", grow);
  // Synchronously, not in a later frame: a deferred caret move would collapse a selection the
  // user (or a test's fill) made in the meantime and the new text would be appended to the old.
  grow();
  ta.focus();
  ta.setSelectionRange(ta.value.length, ta.value.length);
  const close = () => { box.remove(); if (bubble) bubble.hidden = false; actions.hidden = false; node.classList.remove("editing"); };
  cancel.addEventListener("click", close);
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.preventDefault(); close(); }
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); save.click(); }
  });
  save.addEventListener("click", async () => {
    const text = ta.value;
    const mediaParts = (msg.content || []).filter((p) => p.type !== "text");
    if (!text.trim() && !mediaParts.length) return;
    save.disabled = true;
    const wire = [], local = [];
    try {
      // The API takes media as data: URLs, so the message's attachments are sent again.
      for (const p of mediaParts) {
        const data = await attachmentAsDataUrl(p.url);
        wire.push({ type: p.type, data: data.replace(/^data:[^,]*?;base64,/, `data:${p.mime || "application/octet-stream"};base64,`) });
        local.push({ type: p.type, mime: p.mime, _localUrl: localMedia.get(p.attachment_id) || p._localUrl, url: p.url, transcript: null });
      }
    } catch (err) {
      save.disabled = false;
      toast(`Could not resend the attachments: ${errorMessage(err)}`);
      return;
    }
    if (text.trim()) { wire.push({ type: "text", text }); local.push({ type: "text", text }); }
    const idx = state.messages.indexOf(msg);
    const removed = state.messages.splice(idx);
    for (const m of removed) if (m._el) m._el.remove();
    const userLocal = { id: null, role: "user", content: local, _local: true };
    await runChat({ content: wire, edit_message_id: msg.id }, { userLocal, onFail: () => { state.messages.splice(idx, 0, ...removed); renderThread(); } });
  });
}

/** Aborts the answer being written (the server keeps the partial answer as cancelled).
 *  `detach`: the view is moving to another conversation, so the page stops tracking it now. */
function stopGenerating({ detach = false } = {}) {
  const g = state.generating;
  if (!g) return;
  g.stopped = true;
  g.controller.abort();
  if (detach) {
    state.generating = null;
    updateComposer();
  }
}

async function runChat(body, { userLocal = null, restore = null, onFail = null } = {}) {
  const convId = state.currentId;
  const controller = new AbortController();
  const assistant = { id: null, role: "assistant", content: [], _text: "", finish_reason: null, usage: null };
  const g = { controller, convId, assistant, userMessage: userLocal, acked: false, stopped: false, renderPending: false };
  state.generating = g;
  state.stickToBottom = true;

  if (userLocal) {
    state.messages.push(userLocal);
    el.messages.append(messageElement(userLocal));
  }
  // The old "last answer" loses its Regenerate button while a new one is written.
  for (const b of el.messages.querySelectorAll('[data-testid="regenerate"]')) b.remove();
  let liveEl = assistantMessage(assistant, { streaming: true });
  el.messages.append(liveEl);
  el.empty.hidden = true;
  el.thread.classList.remove("is-empty");
  updateComposer();
  scrollToBottom(true);

  const render = () => {
    g.renderPending = false;
    if (state.generating !== g) return;
    const body = liveEl.querySelector(".markdown");
    renderMarkdown(body, assistant._text, { final: false });
    scrollToBottom();
  };
  const scheduleRender = () => {
    if (g.renderPending) return;
    g.renderPending = true;
    setTimeout(() => requestAnimationFrame(render), 30);
  };

  let ended = false;
  let failure = null;
  try {
    const body_ = { ...body, settings: effectiveSettings() };
    for await (const ev of streamChat(convId, body_, controller.signal)) {
      if (!ev || typeof ev !== "object") continue;
      if (ev.type === "user_message" && ev.message) {
        g.acked = true;
        const server = ev.message;
        g.userMessage = server;
        // Keep showing what this page uploaded from blob: URLs; the server's copies are identical.
        if (userLocal) {
          const localMedia_ = userLocal.content.filter((p) => p.type !== "text");
          const serverMedia = (server.content || []).filter((p) => p.type !== "text");
          serverMedia.forEach((p, i) => { if (localMedia_[i] && localMedia_[i]._localUrl) localMedia.set(p.attachment_id, localMedia_[i]._localUrl); });
          const i = state.messages.indexOf(userLocal);
          if (i >= 0) state.messages[i] = server;
          const fresh = messageElement(server);
          if (userLocal._el) userLocal._el.replaceWith(fresh);
        } else {
          // Regenerate: the server may repeat the user message; update it in place.
          const i = state.messages.findIndex((m) => m.id === server.id);
          if (i >= 0) {
            const old = state.messages[i];
            state.messages[i] = server;
            if (old._el) old._el.replaceWith(messageElement(server));
          }
        }
        refreshConversations();
      } else if (ev.type === "transcript") {
        applyTranscript(ev.attachment_id, ev.text);
      } else if (ev.type === "token") {
        assistant._text += ev.text || "";
        scheduleRender();
      } else if (ev.type === "done") {
        ended = true;
        Object.assign(assistant, ev.message || {}, { _text: undefined });
        break;
      } else if (ev.type === "error") {
        ended = true;
        const message = (ev.error && ev.error.message) || "The answer failed.";
        toast(message);
        assistant.finish_reason = "error";
        assistant._error = message;
        break;
      }
    }
    if (!ended) {
      failure = "The connection closed before the answer finished.";
      toast(failure);
      assistant.finish_reason = "error";
      assistant._error = failure;
    }
  } catch (err) {
    if (err && err.name === "AbortError") {
      assistant.finish_reason = "cancelled";
    } else if (!g.acked && !assistant._text) {
      // Refused before anything was stored: undo the optimistic messages, give the text back.
      if (state.generating === g) state.generating = null;
      liveEl.remove();
      if (userLocal) {
        const i = state.messages.indexOf(userLocal);
        if (i >= 0) state.messages.splice(i, 1);
        if (userLocal._el) userLocal._el.remove();
      }
      toast(errorMessage(err));
      if (err instanceof ApiError && err.status === 404) refreshConversations(); // deleted elsewhere
      if (state.currentId === convId && !g.stopped) {
        if (restore) restore();
        if (onFail) onFail();
        if (!userLocal && !onFail) refreshCurrent(); // regenerate failed: show what the server has
        renderThread();
      }
      updateComposer();
      return;
    } else {
      assistant.finish_reason = "error";
      assistant._error = errorMessage(err);
      toast(assistant._error);
    }
  }

  if (assistant._text !== undefined) {
    assistant.content = [{ type: "text", text: assistant._text }];
    delete assistant._text;
  }
  const attached = state.generating === g; // false when the view moved on (the page stopped it)
  if (attached) state.generating = null;
  if (attached && state.currentId === convId) {
    state.messages.push(assistant);
    const finalEl = messageElement(assistant, { isLast: true });
    liveEl.replaceWith(finalEl);
    liveEl = finalEl;
    // The user message's transcripts may have been waiting on this generation.
    const um = g.userMessage;
    if (um && um._el) for (const chip of um._el.querySelectorAll(".audio-chip")) {
      const part = (um.content || []).find((p) => p.attachment_id === chip.dataset.attachmentId);
      setTranscript(chip, part && part.transcript, um);
    }
    scrollToBottom();
  }
  updateComposer();
  refreshConversations();
  if (attached && assistant.finish_reason === "cancelled" && state.currentId === convId) {
    // The server stores the partial answer; pick up the stored ids once it has.
    setTimeout(() => { if (!state.generating && state.currentId === convId) refreshCurrent({ quiet: true }); }, 600);
  }
}

function applyTranscript(attachmentId, text) {
  for (const m of state.messages) {
    for (const p of m.content || []) {
      if (p.type === "audio" && p.attachment_id === attachmentId) {
        p.transcript = text;
        const chip = m._el && m._el.querySelector(`.audio-chip[data-attachment-id="${CSS.escape(attachmentId)}"]`);
        if (chip) setTranscript(chip, text, m);
      }
    }
  }
}

/** Reloads the open conversation from the server (keeps the view when nothing changed). */
async function refreshCurrent({ quiet = false } = {}) {
  const id = state.currentId;
  if (!id) return;
  try {
    const conv = await api.getConversation(id);
    if (state.currentId !== id || state.generating) return;
    const fresh = conv.messages || [];
    // Only swap in the server's copy when it has at least what is shown (ids for edit/regenerate).
    if (fresh.length >= state.messages.length) {
      const top = el.thread.scrollTop;
      state.messages = fresh;
      renderThread();
      el.thread.scrollTop = top;
      scrollToBottom();
    }
  } catch (err) {
    if (!quiet) toast(errorMessage(err));
  }
}

// ───────────────────────────── boot ─────────────────────────────

async function boot() {
  hydrateIcons();
  onApiKeyNeeded(promptForKey);
  bindSidebar();
  bindComposer();
  bindSettings();
  updateComposer();
  autoGrow();
  renderThread();

  const defaults = api.defaults().then((d) => {
    state.defaults = { ...FALLBACK_DEFAULTS, ...(d || {}) };
    el.modelBadge.textContent = state.defaults.model || "";
    el.modelBadge.hidden = !state.defaults.model;
  }).catch((err) => toast(`Could not load the server's default settings: ${errorMessage(err)}`));
  await defaults; // a 401 here asks for the key once, before the other calls
  await Promise.all([refreshConversations(), loadModelCard()]);
  const id = idFromHash();
  if (id) await selectConversation(id, { push: false });
  if (!isPhone()) el.input.focus();
}

boot().catch((err) => toast(errorMessage(err)));
