"""Fixtures for the browser tests: the real server app in a thread, headless Chromium via Playwright.

The server is `omniphi.serve.app.create_app` on 127.0.0.1 (random port, temporary data directory).
What answers is chosen by `OMNIPHI_BROWSER_ASSISTANT`:

* unset or `fake` (default): the serve tests' fake assistant (`tests/serve/fake_assistant.py`),
  which answers instantly and deterministically;
* a preset or model directory (e.g. `tiny`): `Assistant.load(spec)`, the real thing.

`OMNIPHI_BROWSER_URL=http://host:port/` instead points every test at a server that is already
running (nothing is started; the slow-generation test then needs that server to answer slowly).

Chromium is Debian's (`/usr/bin/chromium`, override with `OMNIPHI_CHROMIUM`); `playwright install`
is never needed. Screenshots go to `test-artifacts/screenshots/`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import require_program

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
SPEECH_WAV = ROOT / "tests" / "fixtures" / "speech" / "capital.wav"
CHROMIUM = os.environ.get("OMNIPHI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
ASSISTANT_SPEC = os.environ.get("OMNIPHI_BROWSER_ASSISTANT", "fake")
EXTERNAL_URL = os.environ.get("OMNIPHI_BROWSER_URL", "").rstrip("/")



def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


# ───────────────────────────── the server ─────────────────────────────


@dataclass
class Server:
    """A running omniphi server the page is loaded from, plus a tiny JSON client for checks."""

    url: str  # ends with "/"
    api_key: str | None = None
    expected_transcript: str | None = None  # what the assistant hears in capital.wav, when known
    transcribes: bool = True  # False: a model without a speech recogniser (e.g. the "tiny" preset)
    stop: Callable[[], None] = field(default=lambda: None, repr=False)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path.lstrip("/"), data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(req, timeout=30) as res:
            raw = res.read()
        return json.loads(raw) if raw else None


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def _wait_healthy(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "health", timeout=2) as res:
                if res.status == 200:
                    return
        except urllib.error.HTTPError as e:  # up, but e.g. still loading
            last = e
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not become healthy: {last}")


def serve_app(app) -> tuple[str, Callable[[], None]]:
    """Runs an ASGI app with uvicorn in a daemon thread; returns (base url, stop)."""
    import uvicorn

    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    url = f"http://127.0.0.1:{port}/"

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return url, stop


# The slow fake's answer: long enough that Stop lands mid-answer on a busy machine.
SLOW_ANSWER = " ".join(
    f"Sentence {i} of a long answer, streamed one word at a time so that it can be stopped." for i in range(1, 13))


def make_assistant(*, delay: float = 0.0):
    """The assistant the browser tests talk to (see the module docstring). `delay` slows each token."""
    if ASSISTANT_SPEC == "fake":
        FakeAssistant = _load_fake_assistant()
        return FakeAssistant(SLOW_ANSWER, token_delay=delay) if delay else FakeAssistant()
    from omniphi.runtime.assistant import Assistant

    assistant = Assistant.load(ASSISTANT_SPEC)
    if delay:
        assistant = _SlowedAssistant(assistant, delay)
    return assistant


def _load_fake_assistant():
    """tests/serve/fake_assistant.py's FakeAssistant (loaded by path: `tests` is not a package)."""
    import importlib.util
    import sys

    name = "omniphi_browser_fake_assistant"
    if name not in sys.modules:
        path = ROOT / "tests" / "serve" / "fake_assistant.py"
        if not path.exists():
            pytest.skip(f"{path.relative_to(ROOT)} is not there yet")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].FakeAssistant


class _SlowedAssistant:
    """Wraps a real assistant so that each streamed token takes at least `delay` seconds."""

    def __init__(self, inner, delay: float):
        self._inner, self._delay = inner, delay

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def stream(self, *args, cancel=None, **kwargs):
        from omniphi.chat import Done, Token

        started, produced = time.perf_counter(), 0
        inner = self._inner.stream(*args, cancel=cancel, **kwargs)
        try:
            for event in inner:
                if isinstance(event, Token):
                    # The real model may have generated far ahead of this slowed reader: honour
                    # a cancel here rather than draining what it already queued.
                    if cancel is not None and cancel.wait(self._delay):
                        yield Done("cancelled", 0, produced, time.perf_counter() - started)
                        return
                    if cancel is None:
                        time.sleep(self._delay)
                    produced += 1
                yield event
        finally:
            inner.close()


def expected_transcript(assistant) -> str | None:
    if ASSISTANT_SPEC != "fake":
        return "What is the capital of France?" if transcribes(assistant) else None
    return getattr(assistant, "transcript", None)


def transcribes(assistant) -> bool:
    inner = getattr(assistant, "_inner", assistant)
    return ASSISTANT_SPEC == "fake" or getattr(inner, "transcriber", None) is not None


def start_server(tmp_path: Path, *, delay: float = 0.0, api_key: str | None = None, assistant=None,
                 **config) -> Server:
    from omniphi.serve.app import ServeConfig, create_app

    assistant = assistant if assistant is not None else make_assistant(delay=delay)
    app = create_app(assistant, ServeConfig(data_dir=tmp_path, api_key=api_key, **config))
    url, stop = serve_app(app)
    _wait_healthy(url)
    return Server(url=url, api_key=api_key, expected_transcript=expected_transcript(assistant),
                  transcribes=transcribes(assistant), stop=stop)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """One server for the session (each test makes its own conversations)."""
    if EXTERNAL_URL:
        yield Server(url=EXTERNAL_URL + "/", api_key=os.environ.get("OMNIPHI_BROWSER_API_KEY") or None)
        return
    srv = start_server(tmp_path_factory.mktemp("serve-data"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def slow_server(tmp_path_factory, server) -> Server:
    """A server whose answers stream slowly enough to press Stop mid-answer."""
    if EXTERNAL_URL:
        yield server
        return
    srv = start_server(tmp_path_factory.mktemp("serve-slow"), delay=0.04)
    yield srv
    srv.stop()


# ───────────────────────────── the browser ─────────────────────────────


def _launch(playwright, extra_args=()):
    if not Path(CHROMIUM).exists():
        require_program("chromium")  # fails with the install line where Debian's chromium is missing
        pytest.fail(f"no Chromium at OMNIPHI_CHROMIUM={CHROMIUM}", pytrace=False)
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args])


@pytest.fixture(scope="session")
def playwright_instance():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_instance):
    b = _launch(playwright_instance)
    yield b
    b.close()


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """capital.wav from the fixtures; synthesised with espeak-ng if that file isn't there yet."""
    if SPEECH_WAV.exists():
        return SPEECH_WAV
    out = tmp_path_factory.mktemp("speech") / "capital.wav"
    espeak = require_program("espeak-ng")
    subprocess.run([espeak, "-v", "en-us", "-w", str(out), "What is the capital of France?"], check=True)
    return out


@pytest.fixture(scope="session")
def mic_browser(playwright_instance, speech_wav):
    """Chromium whose microphone plays capital.wav in a loop, with the permission pre-granted."""
    b = _launch(playwright_instance, [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech_wav.resolve()}",
        "--autoplay-policy=no-user-gesture-required",
    ])
    yield b
    b.close()


class PageErrors(list):
    """Uncaught page errors and console errors seen during a test (checked at teardown)."""


def new_page(browser, server: Server, *, width=1280, height=800, color_scheme="light", permissions=()):
    context = browser.new_context(
        viewport={"width": width, "height": height}, color_scheme=color_scheme, device_scale_factor=1,
        permissions=list(permissions), reduced_motion="reduce",
    )
    if server.api_key:
        context.add_init_script(f"localStorage.setItem('omniphi.apiKey', {json.dumps(server.api_key)})")
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors = PageErrors()
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.errors = errors
    return page


@pytest.fixture()
def page(browser, server):
    p = new_page(browser, server)
    yield p
    p.context.close()


@pytest.fixture()
def shot(request):
    """shot(page, "step") saves test-artifacts/screenshots/<test>-<step>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = request.node.name.removeprefix("test_")

    def take(page, step: str, **kwargs):
        path = SCREENSHOTS / f"{name}-{step}.png"
        page.screenshot(path=str(path), **kwargs)
        return path

    return take
