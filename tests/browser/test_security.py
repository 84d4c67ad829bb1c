"""The page under its Content-Security-Policy, and hostile model output: stored and streamed HTML and
Markdown (`<img onerror>`, `javascript:` links, `<script>`, SVG, ...) runs no script and leaves no
`on*` attribute or `javascript:` URL in the DOM, with or without DOMPurify's help from the CSP."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from playwright.sync_api import Page, expect

from omniphi.chat import Done, GenerationSettings, Token, message_text

from .conftest import Server, new_page, start_server
from .test_page import assert_no_page_errors, make_png, open_app, send, wait_for_answer

pytestmark = pytest.mark.browser

# Each payload would push its number to window.__pwned if it ran.
HOSTILE_MARKDOWN = """Here is **bold** text and a [fine link](https://example.com/).

<img src=x onerror="window.__pwned.push(1)">
[click me](javascript:window.__pwned.push(2))
<script>window.__pwned.push(3)</script>
<svg onload="window.__pwned.push(4)"><script>window.__pwned.push(5)</script><a xlink:href="javascript:window.__pwned.push(6)">s</a></svg>
<a href="JaVaScRiPt:window.__pwned.push(7)">mixed case</a> <a href=" javascript:window.__pwned.push(8)">spaced</a>
<iframe src="javascript:window.__pwned.push(9)"></iframe>
<details open ontoggle="window.__pwned.push(10)"><summary>s</summary>x</details>
<math><mtext><table><mglyph><style><img src=x onerror="window.__pwned.push(11)"></style></mglyph></table></mtext></math>
![pic](javascript:window.__pwned.push(12))
<form action="javascript:window.__pwned.push(13)"><button>go</button></form>
<a href="data:text/html,<script>window.__pwned.push(14)</script>">data</a>
<div style="background:url(javascript:window.__pwned.push(15))" onclick="window.__pwned.push(16)">div</div>
<object data="javascript:window.__pwned.push(17)"></object><embed src="javascript:window.__pwned.push(18)">

```html
<script>window.__pwned.push(19)</script>
```
The end."""

ONLY_HTML = '<img src=x onerror="window.__pwned.push(20)"><script>window.__pwned.push(21)</script>'

# Records, from the first moment and on every change, anything executable that reaches the DOM.
WATCH_DOM = """
window.__pwned = [];
window.__bad = [];
window.__violations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber} ${e.target && e.target.outerHTML ? e.target.outerHTML.slice(0, 120) : e.target}`));
const URL_ATTRS = ['href', 'src', 'xlink:href', 'action', 'formaction', 'data', 'srcdoc'];
window.__inspectDom = function (node) {
  if (!(node instanceof Element)) return;
  for (const el of [node, ...node.querySelectorAll('*')]) {
    if (!el.closest('#messages')) continue;
    const tag = el.tagName.toLowerCase();
    // Inside rendered answers (the copy button's icon aside) no element that can run or load anything.
    if (['script', 'iframe', 'object', 'embed', 'svg', 'math', 'form', 'img', 'style'].includes(tag)
        && el.closest('#messages .markdown') && !el.closest('.code-head')) window.__bad.push(`<${tag}>`);
    for (const attr of el.attributes) {
      const value = attr.value.replace(/[\\s\\u0000-\\u001f]/g, '').toLowerCase();
      if (attr.name.toLowerCase().startsWith('on')) window.__bad.push(`${tag}[${attr.name}]`);
      if (URL_ATTRS.includes(attr.name.toLowerCase()) && /^(javascript|vbscript|data:text\\/html)/.test(value))
        window.__bad.push(`${tag}[${attr.name}=${attr.value}]`);
    }
  }
}
new MutationObserver((records) => {
  for (const r of records) {
    if (r.type === 'attributes') window.__inspectDom(r.target);
    for (const n of r.addedNodes || []) window.__inspectDom(n);
  }
}).observe(document, { subtree: true, childList: true, attributes: true });
"""


class HostileAssistant:
    """Streams the hostile answer (in 7-character pieces, so that half-written tags are rendered
    too); "only html" in the question picks the answer that is nothing but markup."""

    name = "hostile"
    transcriber = None
    generation_defaults = GenerationSettings()
    card = None

    def transcribe(self, audio, prompt=None):
        return ""

    def stream(self, messages, settings, *, audio_mode="native", cancel: threading.Event | None = None):
        started = time.monotonic()
        answer = ONLY_HTML if "only html" in message_text(messages[-1]).lower() else HOSTILE_MARKDOWN
        pieces = [answer[i:i + 7] for i in range(0, len(answer), 7)]
        for piece in pieces:
            if cancel is not None and cancel.is_set():
                yield Done("cancelled", 5, 0, time.monotonic() - started)
                return
            yield Token(piece)
            time.sleep(0.002)
        yield Done("stop", 5, len(pieces), time.monotonic() - started)


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory) -> Server:
    srv = start_server(tmp_path_factory.mktemp("serve-hostile"), assistant=HostileAssistant())
    yield srv
    srv.stop()


def watched_page(browser, server: Server) -> Page:
    page = new_page(browser, server)
    page.context.add_init_script(WATCH_DOM)
    return page


def assert_nothing_ran(page: Page) -> None:
    page.wait_for_timeout(300)  # let any handler that slipped through fire (onerror of a failed image)
    assert page.evaluate("window.__pwned") == []
    assert page.evaluate("window.__bad") == []
    # Chromium reports the inline handlers in DOMPurify's inert DOMParser document as violations
    # (they never run there); anything else would be markup that got past the sanitiser and was
    # stopped only by the CSP.
    violations = [v for v in page.evaluate("window.__violations") if "/vendor/dompurify/" not in v]
    assert violations == [], violations
    page.evaluate("__inspectDom(document.getElementById('messages'))")  # and the final DOM, in full
    assert page.evaluate("window.__bad") == []


def test_page_works_under_its_csp(browser, server: Server, tmp_path):
    """The whole page (loading, streaming, an image attachment, settings) causes no CSP violation."""
    page = watched_page(browser, server)
    response = page.goto(server.url)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    expect(page.get_by_test_id("composer-input")).to_be_visible()
    page.wait_for_function("() => window.omniphiReady === true")
    send(page, "Hello under the policy")
    answer = wait_for_answer(page)
    assert answer.get_by_test_id("message-markdown").inner_text().strip()
    page.get_by_test_id("image-input").set_input_files(str(make_png(tmp_path / "pic.png")))
    expect(page.get_by_test_id("pending-image").locator("img")).to_have_js_property("complete", True)
    send(page, "And this picture?")
    wait_for_answer(page)
    expect(page.get_by_test_id("message-user").last.get_by_test_id("message-image")).to_be_visible()
    page.reload()
    page.wait_for_function("() => window.omniphiReady === true")
    expect(page.get_by_test_id("message-assistant").last).to_be_visible()
    assert page.evaluate("window.__violations") == []
    assert_no_page_errors(page)
    page.context.close()


def test_the_page_cannot_be_framed(browser, server: Server):
    """A page of another (local) origin that frames the app gets an error page in the frame."""
    framer_html = f'<iframe id="f" src="{server.url}"></iframe>'.encode()

    class Framer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(framer_html)))
            self.end_headers()
            self.wfile.write(framer_html)

        def log_message(self, *args):
            pass

    framer = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Framer)
    threading.Thread(target=framer.serve_forever, daemon=True).start()
    page = new_page(browser, server)
    try:
        page.goto(f"http://127.0.0.1:{framer.server_address[1]}/")
        page.wait_for_timeout(1500)
        framed = [f for f in page.frames if f is not page.main_frame]
        assert len(framed) == 1
        assert not framed[0].url.startswith(server.url) or framed[0].evaluate(
            "!!document.querySelector('[data-testid=composer-input]')") is False
    finally:
        page.context.close()
        framer.shutdown()
        framer.server_close()


def test_hostile_markdown_streamed_and_stored_runs_no_script(browser, hostile_server: Server):
    page = watched_page(browser, hostile_server)
    open_app(page, hostile_server)
    send(page, 'Write hostile markdown <img src=x onerror="window.__pwned.push(0)">')
    answer = wait_for_answer(page)
    text = answer.get_by_test_id("message-markdown").inner_text()
    assert "bold" in text and "The end." in text  # the harmless rest is rendered
    expect(page.get_by_test_id("message-user").last).to_contain_text('<img src=x onerror=')  # the question as text
    expect(answer.locator("a", has_text="fine link")).to_have_attribute("href", "https://example.com/")
    assert_nothing_ran(page)
    # Stored: the same answer read back after a reload.
    page.reload()
    page.wait_for_function("() => window.omniphiReady === true")
    expect(page.get_by_test_id("message-assistant").last).to_contain_text("The end.")
    assert_nothing_ran(page)
    # Clicking the would-be javascript: links does nothing either.
    for link in page.locator("[data-testid=message-assistant] a").all():
        if (link.get_attribute("href") or "").startswith("http"):
            continue
        link.click(no_wait_after=True)
    assert_nothing_ran(page)
    # The console reports each blocked handler of DOMPurify's inert parse (judged by their source in
    # assert_nothing_ran); any other error fails.
    errors = [e for e in page.errors if "Content Security Policy" not in e and "favicon" not in e]
    assert errors == [], errors
    page.context.close()


def test_an_answer_that_is_only_html_shows_as_text(browser, hostile_server: Server):
    page = watched_page(browser, hostile_server)
    open_app(page, hostile_server)
    send(page, "only html please")
    answer = wait_for_answer(page)
    markdown = answer.get_by_test_id("message-markdown")
    expect(markdown).to_contain_text('<img src=x onerror="window.__pwned.push(20)">')
    expect(markdown).to_contain_text("<script>")
    assert_nothing_ran(page)
    page.reload()
    page.wait_for_function("() => window.omniphiReady === true")
    expect(page.get_by_test_id("message-assistant").last.get_by_test_id("message-markdown")).to_contain_text("<script>")
    assert_nothing_ran(page)
    page.context.close()
