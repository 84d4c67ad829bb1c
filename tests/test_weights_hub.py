"""omniphi.weights.hub: a preset that needs the hub fails at once when the hub cannot be reached."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from omniphi import presets
from omniphi.weights import hub


@pytest.fixture
def black_hole():
    """A TCP endpoint that accepts connections, reads each request's first line and never answers;
    yields (url, list of those request lines)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    connections, requests = [], []

    def serve():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            connections.append(connection)
            connection.settimeout(5)
            try:
                requests.append(connection.recv(1000).split(b"\r\n")[0].decode("latin-1"))
            except OSError:
                requests.append("")

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", requests
    server.close()
    for connection in connections:
        connection.close()


def test_a_hub_that_answers_is_reachable():
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)  # any answer means the hub is there
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert hub.hub_reachable(f"http://127.0.0.1:{server.server_port}", timeout=5)
    finally:
        server.shutdown()


def test_a_probe_started_early_is_the_one_later_asked(black_hole, monkeypatch):
    """The CLI starts the probe for a hub preset before torch imports; loading then waits on that
    same request instead of sending another (and paying its timeout again)."""
    url, requests = black_hole
    monkeypatch.setattr(hub, "hub_endpoint", lambda: url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_offline_by_setting", lambda: False)
    hub.start_probe_for("starter")  # packaged weights: no request
    hub.start_probe_for("tiny")
    assert url not in hub._probes
    hub.start_probe_for("phi2")
    assert url in hub._probes
    assert not hub.hub_reachable(timeout=0.3)
    assert requests == ["HEAD / HTTP/1.1"]  # one request for both


def test_no_probe_when_the_hub_is_off_by_setting(monkeypatch):
    monkeypatch.setattr(hub, "hub_offline_by_setting", lambda: True)
    before = dict(hub._probes)
    hub.start_probe_for("phi2")
    assert hub._probes == before


def test_refused_and_silent_endpoints_are_unreachable(black_hole):
    with socket.socket() as closed:  # a port nobody listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert not hub.hub_reachable(f"http://127.0.0.1:{port}", timeout=2)
    url, requests = black_hole
    assert not hub.hub_reachable(url, timeout=0.3)
    assert requests == ["HEAD / HTTP/1.1"]


def test_offline_setting_is_read_from_the_environment_now(monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_offline_by_setting()


def test_phi2_without_hub_fails_from_the_cache_after_one_probe(monkeypatch, tmp_path, black_hole):
    """No HF_HUB_OFFLINE, and a hub that never answers: one probe, then only the (empty) local cache."""
    url, requests = black_hole
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", url)  # where every hub request would go
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("OMNIPHI_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(hub.hub_reachable, "__defaults__", (None, 0.3))
    with pytest.raises(presets.MissingWeightsError) as caught:
        presets.build("phi2")
    message = str(caught.value)
    assert f"the hub ({url}) cannot be reached" in message and "\n" not in message
    for repo in presets.PHI2_PARTS.values():
        assert repo in message
    assert requests[0] == "HEAD / HTTP/1.1"  # the probe
    # then no request for the model's files (huggingface_hub may still ask its own /api/ questions)
    assert not [line for line in requests if "/resolve/" in line or "microsoft" in line or "openai" in line]
