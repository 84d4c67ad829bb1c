"""Fixtures for the server tests: apps around the fake assistant, a live uvicorn server, media."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from omniphi.media import MediaLimits
from omniphi.serve.app import ServeConfig, create_app
from tests.serve.fake_assistant import FakeAssistant

ROOT = Path(__file__).resolve().parents[2]
SPEECH = ROOT / "tests" / "fixtures" / "speech"
API_KEY = "test-key-123"


def png_bytes(size=(32, 24), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def speech(name: str = "capital.wav") -> bytes:
    return (SPEECH / name).read_bytes()


def parse_sse(text: str) -> list[Any]:
    """`data:` payloads of an SSE body, JSON-decoded ("[DONE]" kept as the string)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            payload = "\n".join(data)
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_error(response, status: int, *, code: str | None = None, param: str | None = ...):
    """The OpenAI error shape, with a status; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not ...:
        assert error["param"] == param, error
    return error


def make_config(tmp_path: Path, **overrides) -> ServeConfig:
    return ServeConfig(data_dir=tmp_path / "data", **overrides)


@pytest.fixture
def fake() -> FakeAssistant:
    return FakeAssistant()


@pytest.fixture
def make_client(tmp_path) -> Callable[..., TestClient]:
    """make_client(assistant=None, **ServeConfig fields) → a TestClient with the lifespan running."""
    opened: list[TestClient] = []

    def make(assistant=None, *, raise_server_exceptions: bool = False, **config) -> TestClient:
        app = create_app(assistant if assistant is not None else FakeAssistant(), make_config(tmp_path, **config))
        # A loopback name: the server refuses others (DNS rebinding); TestClient's default is "testserver".
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions, base_url="http://localhost")
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client, fake) -> TestClient:
    return make_client(fake)


# --------------------------------------------------------------------------- live server


class LiveServer:
    def __init__(self, app):
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    @property
    def state(self):
        return self.app.state.omniphi

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@pytest.fixture
def live(tmp_path) -> Callable[..., LiveServer]:
    """live(assistant=None, **ServeConfig fields) → a uvicorn server on 127.0.0.1 (random port)."""
    servers: list[LiveServer] = []

    def start(assistant=None, **config) -> LiveServer:
        app = create_app(assistant if assistant is not None else FakeAssistant(), make_config(tmp_path, **config))
        server = LiveServer(app)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


SMALL_LIMITS = MediaLimits(max_image_bytes=2 * 2**20, max_image_pixels=1_000_000, max_audio_bytes=2 * 2**20,
                           max_audio_seconds=1.0)
