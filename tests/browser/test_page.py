"""The chat page in headless Chromium against the real server app (see conftest.py).

Each test saves screenshots of its steps into test-artifacts/screenshots/<test>-<step>.png.
Run:  .venv/bin/pytest -q -m browser tests/browser
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import ASSISTANT_SPEC, ROOT, SLOW_ANSWER, Server, new_page

pytestmark = pytest.mark.browser

# The README's screenshots are rewritten only on request (OMNIPHI_UPDATE_SCREENSHOTS=1): a plain
# `make test` must not leave tracked files changed.
DOCS_SHOTS = (ROOT / "docs" / "screenshots" if os.environ.get("OMNIPHI_UPDATE_SCREENSHOTS") == "1"
              else ROOT / "test-artifacts" / "readme-screenshots")


# ───────────────────────────── helpers ─────────────────────────────


def make_png(path: Path, size=(320, 220), seed: int = 0) -> Path:
    """A small picture: sky gradient, sun, hills (deterministic)."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / h
        draw.line([(0, y), (w, y)], fill=(int(250 - 60 * t), int(150 + 40 * t - seed * 20), int(90 + 80 * t)))
    draw.ellipse((w * 0.58, h * 0.18, w * 0.58 + h * 0.34, h * 0.52), fill=(255, 214, 102))
    draw.polygon([(0, h), (0, h * 0.7), (w * 0.35, h * 0.56), (w * 0.7, h * 0.72), (w, h * 0.62), (w, h)], fill=(58, 90, 64))
    for i in range(14):
        x = 12 + i * (w - 24) / 13
        y = h * 0.84 + (i % 3) * 7
        draw.ellipse((x - 8, y - 8, x + 8, y + 8), fill=(246, 201, 14))
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(110, 70, 20))
    img.save(path)
    return path


def open_app(page: Page, server: Server, fragment: str = "") -> None:
    page.goto(server.url + fragment)
    expect(page.get_by_test_id("composer-input")).to_be_visible()
    # A predicate written as a function, not a bare expression: Playwright re-evaluates a bare
    # expression with eval() on every animation frame after the first, which the page's CSP
    # (script-src 'self') refuses, so a condition not yet true on the first try would error.
    page.wait_for_function("() => window.omniphiReady === true")


def mark_answers(page: Page) -> None:
    """Marks the answers on screen, so that wait_for_answer() waits for a new one."""
    page.evaluate("document.querySelectorAll('[data-testid=message-assistant]').forEach(e => e.dataset.seen = '1')")


def send(page: Page, text: str) -> None:
    mark_answers(page)
    page.get_by_test_id("composer-input").fill(text)
    page.get_by_test_id("composer-input").press("Enter")


def wait_for_answer(page: Page, timeout: float = 30_000):
    """Waits for a finished answer that wasn't there at the last mark_answers(); returns it."""
    fresh = page.locator("[data-testid=message-assistant]:not([data-seen]):not(.streaming)").last
    expect(fresh).to_be_visible(timeout=timeout)
    expect(page.get_by_test_id("stop")).to_be_hidden(timeout=timeout)
    return fresh


def current_conversation_id(page: Page) -> str:
    m = re.search(r"#/c/([^/?#]+)", page.url)
    assert m, f"no conversation in the URL {page.url}"
    return m.group(1)


def api_error_message(server: Server, method: str, path: str, body=None) -> str:
    """The error.message the server answers for a request that fails."""
    try:
        server.api(method, path, body)
    except urllib.error.HTTPError as e:
        return json.loads(e.read())["error"]["message"]
    raise AssertionError(f"{method} {path} did not fail")


def assert_no_page_errors(page: Page) -> None:
    real = [e for e in page.errors if "favicon" not in e and "Failed to load resource" not in e]
    assert not real, real


# ───────────────────────────── tests ─────────────────────────────


def test_send_text_streams_answer(browser, slow_server: Server, shot):
    page = new_page(browser, slow_server)
    open_app(page, slow_server)
    shot(page, "01-empty")
    expect(page.get_by_test_id("send")).to_be_disabled()
    page.get_by_test_id("composer-input").fill("Hello there, who are you?")
    expect(page.get_by_test_id("send")).to_be_enabled()
    # Watch the answer grow: every distinct length the streaming bubble shows is recorded.
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const live = document.querySelector('.msg.assistant.streaming .markdown');
            if (!live) return;
            const n = live.textContent.length;
            if (n && window.__lengths[window.__lengths.length - 1] !== n) window.__lengths.push(n);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    mark_answers(page)
    page.get_by_test_id("composer-input").press("Enter")
    user = page.get_by_test_id("message-user").last
    expect(user.get_by_test_id("message-text")).to_have_text("Hello there, who are you?")
    expect(page.get_by_test_id("composer-input")).to_have_value("")
    expect(page.get_by_test_id("stop")).to_be_visible()
    expect(page.locator(".msg.assistant.streaming .markdown")).not_to_be_empty()
    shot(page, "02-streaming")
    answer = wait_for_answer(page)
    shot(page, "03-answered")
    lengths = page.evaluate("window.__lengths")
    # (Rendered Markdown may shrink for a moment, e.g. when a table's syntax completes.)
    assert len(lengths) >= 2 and lengths[-1] > lengths[0], f"the answer did not stream in pieces: {lengths}"
    text = answer.get_by_test_id("message-markdown").inner_text().strip()
    assert text
    expect(answer.get_by_test_id("usage")).to_contain_text(re.compile(r"\d+ tokens? · [\d.]+ tok/s"))
    expect(page.get_by_test_id("send")).to_be_visible()
    expect(page.get_by_test_id("send")).to_be_disabled()
    # The conversation is listed (titled from the question) and the URL names it.
    conv_id = current_conversation_id(page)
    item = page.locator(f'[data-testid=conversation-item][data-id="{conv_id}"]')
    expect(item).to_contain_text("Hello there, who are you?")
    conv = slow_server.api("GET", f"api/conversations/{conv_id}")
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert_no_page_errors(page)
    page.context.close()


def test_image_attachment(page: Page, server: Server, shot, tmp_path):
    open_app(page, server)
    png = make_png(tmp_path / "sunset.png")
    page.get_by_test_id("image-input").set_input_files(str(png))
    pending = page.get_by_test_id("pending-image")
    expect(pending).to_have_count(1)
    expect(pending.locator("img")).to_have_js_property("complete", True)
    assert pending.locator("img").evaluate("i => i.naturalWidth") == 320
    expect(page.get_by_test_id("send")).to_be_enabled()  # an image alone can be sent
    page.get_by_test_id("composer-input").fill("What is in this picture?")
    shot(page, "01-thumbnail-before-sending")
    mark_answers(page)
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("pending-image")).to_have_count(0)
    user = page.get_by_test_id("message-user").last
    img = user.get_by_test_id("message-image")
    expect(img).to_have_count(1)
    answer = wait_for_answer(page)
    expect(answer.get_by_test_id("message-markdown")).not_to_be_empty()
    shot(page, "02-sent-with-answer")
    # Stored: after a reload the thumbnail comes from the server's copy of the file.
    conv = server.api("GET", f"api/conversations/{current_conversation_id(page)}")
    parts = conv["messages"][0]["content"]
    image = next(p for p in parts if p["type"] == "image")
    assert image["mime"] == "image/png"
    page.reload()
    img = page.get_by_test_id("message-user").last.get_by_test_id("message-image")
    expect(img).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth === 320", arg=img.element_handle())
    assert img.get_attribute("src").endswith(image["url"])
    shot(page, "03-after-reload")
    # The lightbox opens on click and closes again.
    img.click()
    expect(page.get_by_test_id("lightbox")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("lightbox")).to_be_hidden()
    assert_no_page_errors(page)


def test_paste_drop_and_remove_attachments(page: Page, server: Server, shot):
    open_app(page, server)
    # Paste an image into the textarea, then drop another one on the page.
    page.evaluate("""async () => {
        const blobOf = (color) => new Promise((res) => {
            const c = document.createElement('canvas'); c.width = 40; c.height = 30;
            const g = c.getContext('2d'); g.fillStyle = color; g.fillRect(0, 0, 40, 30);
            c.toBlob(res, 'image/png');
        });
        const pasted = new DataTransfer();
        pasted.items.add(new File([await blobOf('#e76f51')], 'pasted.png', {type: 'image/png'}));
        document.querySelector('[data-testid=composer-input]').dispatchEvent(
            new ClipboardEvent('paste', {clipboardData: pasted, bubbles: true, cancelable: true}));
        const dropped = new DataTransfer();
        dropped.items.add(new File([await blobOf('#2a9d8f')], 'dropped.png', {type: 'image/png'}));
        const target = document.querySelector('[data-testid=thread]');
        for (const type of ['dragenter', 'dragover', 'drop'])
            target.dispatchEvent(new DragEvent(type, {dataTransfer: dropped, bubbles: true, cancelable: true}));
    }""")
    expect(page.get_by_test_id("pending-image")).to_have_count(2)
    expect(page.get_by_test_id("drop-overlay")).to_be_hidden()
    shot(page, "01-pasted-and-dropped")
    page.get_by_test_id("pending-image").first.get_by_test_id("remove-attachment").click()
    expect(page.get_by_test_id("pending-image")).to_have_count(1)
    expect(page.get_by_test_id("pending-image").locator("img")).to_have_attribute("alt", "dropped.png")
    page.get_by_test_id("pending-image").get_by_test_id("remove-attachment").click()
    expect(page.get_by_test_id("pending-attachments")).to_be_hidden()
    expect(page.get_by_test_id("send")).to_be_disabled()
    # A file that is neither an image nor audio is refused with a toast.
    page.get_by_test_id("image-input").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    expect(page.get_by_test_id("toast")).to_contain_text("notes.txt")
    assert_no_page_errors(page)


def test_record_from_microphone(mic_browser, server: Server, shot):
    page = new_page(mic_browser, server, permissions=["microphone"])
    open_app(page, server)
    page.get_by_test_id("record-start").click()
    expect(page.get_by_test_id("recording")).to_be_visible()
    expect(page.get_by_test_id("send")).to_be_disabled()
    expect(page.get_by_test_id("record-timer")).to_have_text("0:01", timeout=5000)
    shot(page, "01-recording")
    expect(page.get_by_test_id("record-timer")).to_have_text("0:02", timeout=5000)
    page.get_by_test_id("record-stop").click()
    expect(page.get_by_test_id("recording")).to_be_hidden()
    chip = page.get_by_test_id("pending-audio")
    expect(chip).to_have_count(1)
    expect(chip).to_contain_text("Recording 0:02")
    expect(page.get_by_test_id("send")).to_be_enabled()
    shot(page, "02-clip-ready")
    mark_answers(page)
    page.get_by_test_id("send").click()
    user = page.get_by_test_id("message-user").last
    expect(user.get_by_test_id("message-audio")).to_have_count(1)
    transcript = user.get_by_test_id("audio-transcript")
    wait_for_answer(page)
    if server.expected_transcript:
        expect(transcript).to_have_text(server.expected_transcript)
    elif server.transcribes:
        expect(transcript).to_be_visible()
        expect(transcript).not_to_have_text(re.compile(r"^(|Transcribing…)$"))
    else:
        expect(transcript).to_be_hidden()  # no speech recogniser: no transcript, no lingering "Transcribing…"
    user.evaluate("e => e.scrollIntoView({block: 'start'})")
    shot(page, "03-sent-with-transcript")
    # What was stored is the recording: a WebM/Opus file of about two seconds, not silence-sized.
    conv = server.api("GET", f"api/conversations/{current_conversation_id(page)}")
    audio = next(p for p in conv["messages"][0]["content"] if p["type"] == "audio")
    assert audio["mime"] in ("audio/webm", "audio/ogg"), audio
    assert bool(audio["transcript"]) == server.transcribes, audio
    req = urllib.request.Request(server.url + audio["url"].lstrip("/"))
    if server.api_key:
        req.add_header("Authorization", f"Bearer {server.api_key}")
    with urllib.request.urlopen(req) as res:
        assert len(res.read()) > 4000
    # Cancel discards a recording.
    page.get_by_test_id("record-start").click()
    expect(page.get_by_test_id("recording")).to_be_visible()
    page.get_by_test_id("record-cancel").click()
    expect(page.get_by_test_id("recording")).to_be_hidden()
    expect(page.get_by_test_id("pending-audio")).to_have_count(0)
    assert_no_page_errors(page)
    page.context.close()


def test_upload_audio_file(page: Page, server: Server, shot, speech_wav):
    open_app(page, server)
    page.get_by_test_id("audio-input").set_input_files(str(speech_wav))
    expect(page.get_by_test_id("pending-audio")).to_contain_text(speech_wav.name)
    page.get_by_test_id("composer-input").fill("Answer the question in the clip.")
    shot(page, "01-pending")
    mark_answers(page)
    page.get_by_test_id("send").click()
    wait_for_answer(page)
    transcript = page.get_by_test_id("message-user").last.get_by_test_id("audio-transcript")
    expect(transcript).to_be_visible() if server.transcribes else expect(transcript).to_be_hidden()
    if server.expected_transcript:
        expect(transcript).to_have_text(server.expected_transcript)
    page.get_by_test_id("message-user").last.evaluate("e => e.scrollIntoView({block: 'start'})")
    shot(page, "02-answered")
    assert_no_page_errors(page)


def test_stop_keeps_partial_answer(browser, slow_server: Server, shot):
    page = new_page(browser, slow_server)
    open_app(page, slow_server)
    send(page, "Tell me a long slow story")
    live = page.locator(".msg.assistant.streaming .markdown")
    page.wait_for_function(
        "() => { const m = document.querySelector('.msg.assistant.streaming .markdown'); return m && m.textContent.length > 20; }")
    shot(page, "01-mid-stream")
    page.get_by_test_id("stop").click()
    expect(page.get_by_test_id("stop")).to_be_hidden()
    expect(live).to_have_count(0)
    answer = page.get_by_test_id("message-assistant").last
    expect(answer.get_by_test_id("finish-notice")).to_have_text("Stopped")
    partial = answer.get_by_test_id("message-markdown").inner_text().strip()
    assert partial
    # The server kept the partial answer as cancelled (perhaps a token or two more than had been
    # shown: they were in flight); the page picks up the stored copy, then nothing changes.
    page.wait_for_timeout(1500)
    conv = slow_server.api("GET", f"api/conversations/{current_conversation_id(page)}")
    stored = conv["messages"][-1]
    assert stored["role"] == "assistant" and stored["finish_reason"] == "cancelled"
    stored_text = "".join(p["text"] for p in stored["content"] if p["type"] == "text").strip()
    assert stored_text.startswith(partial), (partial, stored_text)
    if ASSISTANT_SPEC == "fake":
        assert len(stored_text) < len(SLOW_ANSWER), "the answer was not stopped"
    shown = page.get_by_test_id("message-assistant").last.get_by_test_id("message-markdown")
    expect(shown).to_have_text(stored_text)
    page.wait_for_timeout(800)
    expect(shown).to_have_text(stored_text)
    shot(page, "02-stopped")
    page.reload()
    answer = page.get_by_test_id("message-assistant").last
    expect(answer.get_by_test_id("finish-notice")).to_have_text("Stopped")
    expect(answer.get_by_test_id("message-markdown")).not_to_be_empty()
    shot(page, "03-after-reload")
    # The composer works again.
    expect(page.get_by_test_id("send")).to_be_visible()
    assert_no_page_errors(page)
    page.context.close()


def test_reload_finds_conversation(page: Page, server: Server, shot):
    open_app(page, server)
    send(page, "Remember the word pineapple")
    wait_for_answer(page)
    conv_id = current_conversation_id(page)
    page.reload()
    item = page.locator(f'[data-testid=conversation-item][data-id="{conv_id}"]')
    expect(item).to_contain_text("Remember the word pineapple")
    expect(item).to_have_class(re.compile(r"\bactive\b"))
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    expect(page.get_by_test_id("message-user").get_by_test_id("message-text")).to_have_text("Remember the word pineapple")
    expect(page.get_by_test_id("message-assistant")).to_have_count(1)
    shot(page, "01-reloaded")
    # A fresh visit to / starts a new chat; the sidebar opens the old one.
    page.goto(server.url)
    expect(page.get_by_test_id("empty-state")).to_be_visible()
    page.locator(f'[data-testid=conversation-item][data-id="{conv_id}"] [data-testid=conversation-open]').click()
    expect(page.get_by_test_id("message-user").get_by_test_id("message-text")).to_have_text("Remember the word pineapple")
    expect(page).to_have_url(re.compile(f"#/c/{conv_id}$"))
    expect(page.get_by_test_id("chat-title")).to_contain_text("Remember the word pineapple")
    # New chat empties the view; Back returns to the conversation.
    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("empty-state")).to_be_visible()
    page.go_back()
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    shot(page, "02-opened-from-sidebar")
    assert_no_page_errors(page)


def test_rename_and_delete(page: Page, server: Server, shot):
    open_app(page, server)
    send(page, "A chat to rename")
    wait_for_answer(page)
    conv_id = current_conversation_id(page)
    item = page.locator(f'[data-testid=conversation-item][data-id="{conv_id}"]')
    item.hover()
    item.get_by_test_id("conversation-rename").click()
    field = item.get_by_test_id("conversation-rename-input")
    expect(field).to_be_focused()
    field.fill("Renamed chat ✓")
    shot(page, "01-renaming")
    field.press("Enter")
    expect(item.get_by_test_id("conversation-open")).to_have_text("Renamed chat ✓")
    expect(page.get_by_test_id("chat-title")).to_have_text("Renamed chat ✓")
    assert server.api("GET", f"api/conversations/{conv_id}")["title"] == "Renamed chat ✓"
    # Escape cancels a rename.
    item.hover()
    item.get_by_test_id("conversation-rename").click()
    item.get_by_test_id("conversation-rename-input").fill("not this")
    item.get_by_test_id("conversation-rename-input").press("Escape")
    expect(item.get_by_test_id("conversation-open")).to_have_text("Renamed chat ✓")
    page.reload()
    expect(item.get_by_test_id("conversation-open")).to_have_text("Renamed chat ✓")
    shot(page, "02-renamed")
    # Delete asks first; Cancel keeps it.
    item.hover()
    item.get_by_test_id("conversation-delete").click()
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Renamed chat ✓")
    shot(page, "03-confirm-delete")
    dialog.get_by_test_id("confirm-cancel").click()
    expect(item).to_have_count(1)
    item.hover()
    item.get_by_test_id("conversation-delete").click()
    dialog.get_by_test_id("confirm-ok").click()
    expect(item).to_have_count(0)
    expect(page.get_by_test_id("empty-state")).to_be_visible()
    assert conv_id not in [c["id"] for c in server.api("GET", "api/conversations")["data"]]
    shot(page, "04-deleted")
    assert_no_page_errors(page)


def test_server_error_shows_toast(page: Page, server: Server, shot):
    open_app(page, server)
    send(page, "This conversation will vanish")
    wait_for_answer(page)
    conv_id = current_conversation_id(page)
    server.api("DELETE", f"api/conversations/{conv_id}")  # behind the page's back
    expected = api_error_message(server, "GET", f"api/conversations/{conv_id}")
    send(page, "Are you still there?")
    toast = page.get_by_test_id("toast").filter(has_text=expected)
    expect(toast).to_be_visible()
    # Nothing was stored: the message is given back to the composer.
    expect(page.get_by_test_id("composer-input")).to_have_value("Are you still there?")
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    shot(page, "01-error-toast")
    toast.get_by_role("button", name="Dismiss").click()
    expect(toast).to_have_count(0)


def test_model_failure_mid_answer(browser, tmp_path, shot):
    """The model raises after a few tokens: the stream's error event becomes a toast, the partial
    answer stays with an error note, and the page keeps working."""
    from .conftest import EXTERNAL_URL, _load_fake_assistant, start_server

    if EXTERNAL_URL or ASSISTANT_SPEC != "fake":
        pytest.skip("needs the fake assistant's failure switch")
    srv = start_server(tmp_path, assistant=_load_fake_assistant()(fail_after=3, token_delay=0.02))
    try:
        page = new_page(browser, srv)
        open_app(page, srv)
        send(page, "Please fail halfway")
        toast = page.get_by_test_id("toast").first
        expect(toast).to_be_visible()
        message = toast.get_by_test_id("toast-message").inner_text()
        assert message and "Traceback" not in message
        answer = page.get_by_test_id("message-assistant").last
        expect(answer.get_by_test_id("finish-notice")).to_be_visible()
        expect(answer).not_to_have_class(re.compile(r"\bstreaming\b"))
        expect(page.get_by_test_id("stop")).to_be_hidden()
        shot(page, "01-failed")
        page.get_by_test_id("composer-input").fill("still usable")
        expect(page.get_by_test_id("send")).to_be_enabled()
        page.context.close()
    finally:
        srv.stop()


def test_network_failure_shows_toast(page: Page, server: Server, shot):
    open_app(page, server)
    page.route("**/api/conversations/*/chat", lambda route: route.abort())
    send(page, "Is the network up?")
    expect(page.get_by_test_id("toast")).to_contain_text("Network error")
    expect(page.get_by_test_id("composer-input")).to_have_value("Is the network up?")
    expect(page.get_by_test_id("stop")).to_be_hidden()
    shot(page, "01-network-toast")


def test_api_down_is_not_a_blank_page(page: Page, server: Server, shot):
    body = json.dumps({"error": {"message": "database is locked", "type": "server_error", "param": None, "code": None}})
    page.route("**/api/**", lambda route: route.fulfill(status=500, content_type="application/json", body=body))
    page.goto(server.url)
    expect(page.get_by_test_id("toast").filter(has_text="database is locked").first).to_be_visible()
    expect(page.get_by_test_id("empty-state")).to_be_visible()
    expect(page.get_by_test_id("composer-input")).to_be_visible()
    expect(page.get_by_test_id("boot-error")).to_be_hidden()
    shot(page, "01-api-down")


def test_regenerate_and_edit(page: Page, server: Server, shot):
    open_app(page, server)
    send(page, "First version of the question")
    first = wait_for_answer(page)
    conv_id = current_conversation_id(page)
    old_id = first.get_attribute("data-id")
    mark_answers(page)
    page.get_by_test_id("regenerate").click()
    wait_for_answer(page)
    expect(page.get_by_test_id("message-assistant")).to_have_count(1)
    expect(page.get_by_test_id("message-assistant")).not_to_have_attribute("data-id", old_id or "")
    msgs = server.api("GET", f"api/conversations/{conv_id}")["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[1]["id"] != old_id
    shot(page, "01-regenerated")
    # Edit the question: the answer after it is replaced.
    send(page, "A follow-up")
    wait_for_answer(page)
    expect(page.get_by_test_id("message-user")).to_have_count(2)
    first_user = page.get_by_test_id("message-user").first
    first_user.hover()
    first_user.get_by_test_id("edit-message").click()
    edit = first_user.get_by_test_id("edit-input")
    expect(edit).to_have_value("First version of the question")
    edit.fill("Second version of the question")
    shot(page, "02-editing")
    mark_answers(page)
    first_user.get_by_test_id("edit-send").click()
    wait_for_answer(page)
    expect(page.get_by_test_id("message-user")).to_have_count(1)
    expect(page.get_by_test_id("message-user").get_by_test_id("message-text")).to_have_text("Second version of the question")
    expect(page.get_by_test_id("message-assistant")).to_have_count(1)
    msgs = server.api("GET", f"api/conversations/{conv_id}")["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["content"][-1]["text"] == "Second version of the question"
    shot(page, "03-edited")
    assert_no_page_errors(page)


def test_edit_box_keeps_a_selection_made_before_the_next_frame(page: Page, server: Server):
    """On a slow machine the user (or Playwright's fill) can select the old text before the
    browser paints the next frame; opening the edit box must not move the caret after that,
    or the new text is appended to the old instead of replacing it."""
    open_app(page, server)
    send(page, "Old question")
    wait_for_answer(page)
    user = page.get_by_test_id("message-user").first
    user.hover()
    # Hold every animation frame until the selection is made, as a loaded machine would.
    page.evaluate("""() => {
        window.__heldFrames = [];
        window.__realRaf = window.requestAnimationFrame;
        window.requestAnimationFrame = (cb) => { window.__heldFrames.push(cb); return 0; };
    }""")
    user.get_by_test_id("edit-message").click()
    edit = user.get_by_test_id("edit-input")
    expect(edit).to_have_value("Old question")
    edit.select_text()
    page.evaluate("""() => {
        window.requestAnimationFrame = window.__realRaf;
        for (const cb of window.__heldFrames.splice(0)) cb(performance.now());
    }""")
    page.keyboard.insert_text("New question")
    expect(edit).to_have_value("New question")
    assert_no_page_errors(page)


def test_settings_are_sent_and_kept(page: Page, server: Server, shot):
    open_app(page, server)
    defaults = server.api("GET", "api/settings/defaults")
    page.get_by_test_id("open-settings").click()
    dialog = page.get_by_test_id("settings-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_test_id("setting-system-prompt")).to_have_value(defaults["system_prompt"])
    expect(dialog.get_by_test_id("setting-max-tokens")).to_have_value(str(defaults["max_tokens"]))
    dialog.get_by_test_id("setting-system-prompt").fill("Answer in one short sentence.")
    dialog.get_by_test_id("setting-temperature").fill("0.7")
    dialog.get_by_test_id("setting-max-tokens").fill("64")
    dialog.get_by_test_id("setting-audio-transcribe").check(force=True)
    shot(page, "01-settings")
    dialog.get_by_test_id("settings-save").click()
    expect(dialog).to_be_hidden()
    with page.expect_request("**/api/conversations/*/chat") as req:
        send(page, "Which settings did I pick?")
    assert req.value.post_data_json["settings"] == {
        "system_prompt": "Answer in one short sentence.", "temperature": 0.7, "max_tokens": 64, "audio_mode": "transcribe",
    }
    wait_for_answer(page)
    page.reload()
    page.get_by_test_id("open-settings").click()
    expect(dialog.get_by_test_id("setting-max-tokens")).to_have_value("64")
    expect(dialog.get_by_test_id("setting-audio-transcribe")).to_be_checked()
    dialog.get_by_test_id("settings-reset").click()
    expect(dialog.get_by_test_id("setting-max-tokens")).to_have_value(str(defaults["max_tokens"]))
    dialog.get_by_test_id("settings-close").click()
    assert_no_page_errors(page)


def test_api_key_prompt(browser, tmp_path, shot):
    from .conftest import EXTERNAL_URL, start_server

    if EXTERNAL_URL:
        pytest.skip("needs its own server started with an API key")
    srv = start_server(tmp_path, api_key="sekrit-key")
    try:
        page = new_page(browser, Server(url=srv.url))  # the page starts without the key
        page.goto(srv.url)
        dialog = page.get_by_test_id("api-key-dialog")
        expect(dialog).to_be_visible()
        shot(page, "01-asked")
        dialog.get_by_test_id("api-key-input").fill("wrong")
        dialog.get_by_test_id("api-key-save").click()
        expect(dialog.get_by_test_id("api-key-error")).to_be_visible()
        dialog.get_by_test_id("api-key-input").fill("sekrit-key")
        with page.expect_request("**/api/conversations") as req:
            dialog.get_by_test_id("api-key-save").click()
        assert req.value.headers["authorization"] == "Bearer sekrit-key"
        expect(dialog).to_be_hidden()
        # Attachments need the key too: the thumbnail still shows after a reload.
        page.get_by_test_id("image-input").set_input_files(str(make_png(tmp_path / "k.png")))
        send(page, "Protected picture")
        wait_for_answer(page)
        page.reload()
        img = page.get_by_test_id("message-image")
        page.wait_for_function("img => img.complete && img.naturalWidth === 320", arg=img.element_handle())
        expect(dialog).to_be_hidden()
        shot(page, "02-with-key")
        assert_no_page_errors(page)
        page.context.close()
    finally:
        srv.stop()


def test_dark_theme_and_phone(browser, server: Server, shot, tmp_path):
    page = new_page(browser, server)
    open_app(page, server)
    page.get_by_test_id("image-input").set_input_files(str(make_png(tmp_path / "p.png")))
    send(page, "Describe the photo, please")
    wait_for_answer(page)
    page.get_by_test_id("open-settings").click()
    page.get_by_test_id("setting-theme-dark").check(force=True)
    page.get_by_test_id("settings-save").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    # the dark colours can reach the computed style a frame after the attribute (Chromium 156.0.8078.114)
    expect(page.locator("body")).not_to_have_css("background-color", "rgb(255, 255, 255)", timeout=3000)
    shot(page, "01-dark-desktop")
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    # Collapse the sidebar on desktop and open it again.
    page.get_by_test_id("sidebar-close").click()
    expect(page.get_by_test_id("sidebar-toggle")).to_be_visible()
    shot(page, "02-dark-sidebar-collapsed")
    page.get_by_test_id("sidebar-toggle").click()
    expect(page.get_by_test_id("sidebar-close")).to_be_in_viewport()

    # Phone width: the sidebar is a drawer behind a hamburger.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.get_by_test_id("sidebar")).not_to_be_in_viewport()
    shot(page, "03-dark-phone")
    page.get_by_test_id("sidebar-toggle").click()
    expect(page.get_by_test_id("sidebar")).to_be_in_viewport()
    expect(page.get_by_test_id("sidebar-scrim")).to_be_visible()
    page.wait_for_timeout(300)
    shot(page, "04-dark-phone-drawer")
    page.get_by_test_id("conversation-open").first.click()
    expect(page.get_by_test_id("sidebar-scrim")).to_be_hidden()
    page.get_by_test_id("sidebar-toggle").click()
    page.get_by_test_id("sidebar-scrim").click(position={"x": 370, "y": 400})
    expect(page.get_by_test_id("sidebar-scrim")).to_be_hidden()
    # Nothing is wider than the phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.get_by_test_id("sidebar-toggle").click()
    page.get_by_test_id("open-settings").click()
    page.get_by_test_id("setting-theme-light").check(force=True)
    page.get_by_test_id("settings-save").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    page.wait_for_timeout(300)
    shot(page, "05-light-phone")
    assert_no_page_errors(page)
    page.context.close()


# ───────────────────────────── README screenshots ─────────────────────────────


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    from .conftest import EXTERNAL_URL, serve_app, _wait_healthy
    from .demo_assistant import DemoAssistant

    if EXTERNAL_URL:
        pytest.skip("makes its own server")
    from omniphi.serve.app import ServeConfig, create_app

    app = create_app(DemoAssistant(), ServeConfig(data_dir=tmp_path_factory.mktemp("demo")))
    url, stop = serve_app(app)
    _wait_healthy(url)
    yield Server(url=url)
    stop()


def test_readme_screenshots(browser, demo_server: Server, tmp_path):
    """{light,dark}-{desktop,phone}.png of a realistic conversation (docs/screenshots with
    OMNIPHI_UPDATE_SCREENSHOTS=1)."""
    DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
    page = new_page(browser, demo_server, width=1280, height=900)
    open_app(page, demo_server)
    # Earlier chats, for a lived-in sidebar.
    for title in ["Trip ideas for Lyon", "Explain attention masks", "Fix my regex"]:
        demo_server.api("POST", "api/conversations", {"title": title})
    send(page, "Write a palindrome checker in Python")
    wait_for_answer(page)
    page.get_by_test_id("new-chat").click()
    page.get_by_test_id("image-input").set_input_files(str(make_png(tmp_path / "sunset.png", size=(480, 330))))
    send(page, "What's in this photo? Give me its colour palette as code.")
    wait_for_answer(page)
    page.reload()
    wait_for_answer(page)
    page.evaluate("document.getElementById('thread').scrollTop = 0")
    for theme in ("light", "dark"):
        page.evaluate(f"window.omniphiTheme.set('{theme}')")
        page.set_viewport_size({"width": 1280, "height": 900})
        page.wait_for_timeout(250)
        page.evaluate("document.getElementById('thread').scrollTop = 1e6")
        page.wait_for_timeout(100)
        page.screenshot(path=str(DOCS_SHOTS / f"{theme}-desktop.png"))
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(250)
        page.evaluate("document.getElementById('thread').scrollTop = 0")
        page.screenshot(path=str(DOCS_SHOTS / f"{theme}-phone.png"))
        page.evaluate("document.getElementById('thread').scrollTop = 0")
    for name in ("light-desktop", "dark-desktop", "light-phone", "dark-phone"):
        assert (DOCS_SHOTS / f"{name}.png").stat().st_size > 10_000
    assert_no_page_errors(page)
    page.context.close()
