// Assistant Markdown → sanitised HTML with highlighted, copyable code blocks.
// marked parses, DOMPurify removes anything executable (model output is untrusted), highlight.js
// colours code. Re-rendered on every streamed batch of tokens, so it stays cheap.

import { Marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.js";
import hljs from "./vendor/highlight/highlight.min.js";
import { icon } from "./icons.js";

hljs.configure({ ignoreUnescapedHTML: true });

const escapeHtml = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    // Images in model output would make the browser fetch arbitrary URLs: show them as links.
    image({ href, text }) {
      const label = text || href || "image";
      return href ? `<a href="${escapeHtml(href)}">${escapeHtml(label)}</a>` : escapeHtml(label);
    },
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

const PURIFY = {
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "img", "video", "audio", "iframe", "svg", "math"],
  FORBID_ATTR: ["style", "class", "id"],
};

/** Sanitised HTML for a Markdown string (class attributes are only kept for code languages). */
export function markdownToHtml(text) {
  const raw = marked.parse(text || "", { async: false });
  // Keep `language-xxx` on <code>: mark it in a data attribute DOMPurify keeps, restore after.
  const marked_ = raw.replace(/<code class="language-([\w+#.-]+)">/g, '<code data-lang="$1">');
  return DOMPurify.sanitize(marked_, PURIFY);
}

const LANG_LABEL = { js: "javascript", ts: "typescript", py: "python", sh: "bash", shell: "bash", yml: "yaml", html: "html" };

/**
 * Renders `text` into `el`. While streaming (`final` false) code is only highlighted when its
 * language is named (auto-detection is too slow to redo on every token) and a cursor is shown.
 */
export function renderMarkdown(el, text, { final = true } = {}) {
  el.innerHTML = markdownToHtml(text);
  if (String(text || "").trim() && !el.textContent.trim() && !el.querySelector("hr")) {
    // Everything was markup the sanitiser removed (an answer that is only <script> or <img onerror>):
    // show it as text rather than as an empty bubble, so the user sees what the model said.
    const plain = document.createElement("p");
    plain.className = "as-text";
    plain.textContent = text;
    el.replaceChildren(plain);
  }
  for (const pre of el.querySelectorAll("pre")) {
    const code = pre.querySelector("code") || pre;
    const lang = (code.getAttribute("data-lang") || "").toLowerCase();
    const known = lang && hljs.getLanguage(lang);
    try {
      if (known) {
        code.innerHTML = hljs.highlight(code.textContent, { language: lang, ignoreIllegals: true }).value;
      } else if (final && code.textContent.length < 20000) {
        const r = hljs.highlightAuto(code.textContent);
        if (r.relevance >= 5) code.innerHTML = r.value;
      }
    } catch { /* leave it plain */ }
    code.classList.add("hljs");
    const wrap = document.createElement("div");
    wrap.className = "code-block";
    wrap.dataset.testid = "code-block";
    wrap.innerHTML =
      `<div class="code-head"><span class="code-lang">${escapeHtml(LANG_LABEL[lang] || lang || "code")}</span>` +
      `<button type="button" class="code-copy" data-testid="copy-code" aria-label="Copy code">${icon("copy")}<span>Copy</span></button></div>`;
    pre.replaceWith(wrap);
    wrap.appendChild(pre);
  }
  for (const table of el.querySelectorAll("table")) {
    const scroller = document.createElement("div");
    scroller.className = "table-wrap";
    table.replaceWith(scroller);
    scroller.appendChild(table);
  }
  if (!final) appendCursor(el);
}

function appendCursor(el) {
  let target = el;
  for (;;) {
    const last = target.lastElementChild;
    if (!last || !["P", "UL", "OL", "LI", "H1", "H2", "H3", "H4", "H5", "H6", "BLOCKQUOTE"].includes(last.tagName)) break;
    target = last;
  }
  const cursor = document.createElement("span");
  cursor.className = "cursor";
  cursor.setAttribute("aria-hidden", "true");
  target.appendChild(cursor);
}

/** Copies text, also where navigator.clipboard is unavailable (plain http on a LAN address). */
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch { /* fall back */ }
  const ta = document.createElement("textarea");
  ta.value = text;
  ta.setAttribute("readonly", "");
  ta.style.position = "fixed";
  ta.style.opacity = "0";
  document.body.appendChild(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch { ok = false; }
  ta.remove();
  return ok;
}
