"""Robustness: kill -9 mid-stream keeps what was acknowledged; many concurrent clients all finish
or get 429 (none hang); garbage on the socket does not hurt the server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.serve.conftest import ROOT, data_uri, parse_sse, png_bytes, speech, wait_until
from tests.serve.fake_assistant import ANSWER, FakeAssistant

SERVER_SCRIPT = """
import argparse, sys
from omniphi.serve.server import add_serve_arguments, run_serve
from tests.serve.fake_assistant import FakeAssistant
delay = float(sys.argv.pop(1))
parser = argparse.ArgumentParser()
add_serve_arguments(parser)
run_serve(parser.parse_args(sys.argv[1:]), assistant=FakeAssistant(token_delay=delay))
"""


def start_server_process(data_dir, token_delay: float, log=subprocess.DEVNULL):
    """`run_serve` in its own process (the real uvicorn runner) around the fake; returns (proc, url)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMNIPHI_API_KEY": ""}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, str(token_delay), "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 60
    url = None
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("omniphi: serving omniphi-fake on http://"):
            url = line.split(" on ", 1)[1].strip().rstrip("/")
    if url is None:
        proc.kill()
        raise RuntimeError("the server process did not print its URL")
    return proc, url


def test_kill_9_mid_stream_keeps_everything_acknowledged(tmp_path):
    data = tmp_path / "data"
    proc, url = start_server_process(data, token_delay=0.05)
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            conv = http.post("/api/conversations", json={}).json()
            image = png_bytes((12, 12))
            r = http.post(f"/api/conversations/{conv['id']}/chat", json={"content": [
                {"type": "text", "text": "First question"}, {"type": "image", "data": data_uri(image, "image/png")}]})
            first = parse_sse(r.text)
            assert first[-1]["type"] == "done"
            renamed = http.patch(f"/api/conversations/{conv['id']}", json={"title": "Kept"}).json()
            clip = speech("capital.webm")
            acknowledged = None
            with http.stream("POST", f"/api/conversations/{conv['id']}/chat", json={"content": [
                    {"type": "text", "text": "Second question"},
                    {"type": "audio", "data": data_uri(clip, "audio/webm")}]}) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if event["type"] == "user_message":
                        acknowledged = event["message"]
                    if event["type"] == "token":
                        proc.send_signal(signal.SIGKILL)  # mid-stream, no chance to clean up
                        break
            proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert acknowledged is not None

    log = open(tmp_path / "server.log", "w")
    proc, url = start_server_process(data, token_delay=0.0, log=log)
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            (listed,) = http.get("/api/conversations").json()["data"]
            assert listed["title"] == renamed["title"] == "Kept"
            messages = http.get(f"/api/conversations/{conv['id']}").json()["messages"]
            assert messages[0] == first[0]["message"]
            assert messages[1] == first[-1]["message"]
            assert messages[2] == acknowledged
            assert http.get(messages[0]["content"][1]["url"]).content == image
            assert http.get(acknowledged["content"][1]["url"]).content == clip
            # It carries on where it stopped: regenerating answers the acknowledged question.
            r = http.post(f"/api/conversations/{conv['id']}/chat", json={"regenerate": True})
            assert parse_sse(r.text)[-1]["message"]["content"][0]["text"] == ANSWER
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal (the conventional exit status).
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
        log.close()
        assert "Finished server process" in (tmp_path / "server.log").read_text()


def test_twenty_concurrent_streaming_clients_finish_or_get_429(live):
    fake = FakeAssistant(token_delay=0.005)
    server = live(fake, max_queue=4)
    outcomes: list = []
    lock = threading.Lock()

    def client(i: int):
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                if i % 4 == 3:  # a few page clients among the API ones, each in its own conversation
                    conv_id = http.post("/api/conversations", json={}).json()["id"]
                    r = http.post(f"/api/conversations/{conv_id}/chat",
                                  json={"content": [{"type": "text", "text": f"q{i}"}]})
                    ok = r.status_code == 200 and parse_sse(r.text)[-1]["type"] == "done"
                else:
                    r = http.post("/v1/chat/completions", json={
                        "messages": [{"role": "user", "content": f"q{i}"}], "stream": True})
                    events = parse_sse(r.text) if r.status_code == 200 else []
                    ok = r.status_code == 200 and events[-1] == "[DONE]" and "".join(
                        e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == ANSWER
                outcome = "ok" if ok else (r.status_code, r.text[-300:])
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1
                    assert r.json()["error"]["code"] == "queue_full"
        except Exception as error:  # noqa: BLE001
            outcome = repr(error)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(20)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60 - (time.monotonic() - started))
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert all(o == "ok" or o[0] == 429 for o in outcomes), outcomes
    assert outcomes.count("ok") >= 5  # at least one running + max_queue waiting got through
    assert fake.max_active == 1
    assert wait_until(lambda: httpx.get(server.url + "/health").json()["queue"] == 0)


def test_garbage_on_the_socket_does_not_hurt(live):
    server = live(FakeAssistant())
    for junk in (b"\x00\xff" * 100 + b"\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                 b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mess"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)  # a client that gives up half-way
            try:
                sock.recv(4096)
            except OSError:
                pass
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER


@pytest.mark.parametrize("argv,expected", [
    ([], dict(model="starter", host="127.0.0.1", port=8000, api_key=None, data_dir=None, allow_remote_media=False,
              cors_origin=[], max_queue=8, audio_mode="native")),
    (["--model", "tiny", "--host", "0.0.0.0", "--port", "9", "--api-key", "k", "--data-dir", "/d",
      "--allow-remote-media", "--cors-origin", "http://a", "--cors-origin", "http://b", "--max-queue", "2",
      "--audio-mode", "transcribe"],
     dict(model="tiny", host="0.0.0.0", port=9, api_key="k", data_dir="/d", allow_remote_media=True,
          cors_origin=["http://a", "http://b"], max_queue=2, audio_mode="transcribe")),
])
def test_serve_arguments(argv, expected, monkeypatch):
    import argparse

    from omniphi.serve.server import add_serve_arguments, config_from_args

    monkeypatch.delenv("OMNIPHI_API_KEY", raising=False)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected
    config = config_from_args(args)
    assert config.cors_origins == expected["cors_origin"] and config.max_queue == expected["max_queue"]

    monkeypatch.setenv("OMNIPHI_API_KEY", "from-env")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert parser.parse_args([]).api_key == "from-env"


def test_cors_only_when_configured(make_client):
    origin = {"Origin": "http://page.example", "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "authorization,content-type"}
    closed = make_client()
    assert "access-control-allow-origin" not in closed.options("/v1/chat/completions", headers=origin).headers
    assert "access-control-allow-origin" not in closed.get("/v1/models", headers={"Origin": origin["Origin"]}).headers
    opened = make_client(cors_origins=["http://page.example"], api_key="k")
    r = opened.options("/v1/chat/completions", headers=origin)  # preflight: no key needed
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://page.example"
    r = opened.get("/v1/models", headers={"Origin": origin["Origin"], "Authorization": "Bearer k"})
    assert r.headers["access-control-allow-origin"] == "http://page.example"


def test_non_streamed_request_is_cancelled_when_the_client_leaves(live):
    fake = FakeAssistant(token_delay=0.2)
    server = live(fake)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                   timeout=httpx.Timeout(5, read=0.2))
    assert wait_until(lambda: fake.cancelled == 1, timeout=5)  # long before the 2.6 s the answer takes
