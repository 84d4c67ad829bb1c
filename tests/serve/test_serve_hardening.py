"""Issue #13: what an attacker or a careless client sends is refused with a 4xx before any work or
storage, on both APIs: invalid Unicode, non-JSON bodies, cross-site writes, foreign Host names,
out-of-range integers, over-deep JSON, too many messages, multi-channel audio; private data files;
the page's security headers."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat

import pytest

from omniphi.serve.admission import MAX_JSON_DEPTH
from omniphi.serve.store import Store
from tests.media_fuzz import encode_audio
from tests.serve.conftest import assert_error
from tests.serve.fake_assistant import ANSWER, FakeAssistant

CHAT = "/v1/chat/completions"


def chat_body(content="hi", **extra):
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def new_conversation(client) -> str:
    r = client.post("/api/conversations", json={})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def api_chat(client, conv_id, text, **kwargs):
    return client.post(f"/api/conversations/{conv_id}/chat",
                       json={"content": [{"type": "text", "text": text}]}, **kwargs)


def post_json(client, url, body):
    """POST `body` as ASCII JSON: a lone surrogate travels as its escape, as a hostile client sends it
    (httpx would refuse to encode it as UTF-8)."""
    return client.post(url, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def stored_messages(client, conv_id):
    r = client.get(f"/api/conversations/{conv_id}")
    assert r.status_code == 200, r.text
    return r.json()["messages"]


# --------------------------------------------------------------------------- text


def test_a_lone_surrogate_is_400_on_v1_and_stores_nothing_on_api(client):
    # json.dumps writes "\ud800" as an escape, which json.loads turns back into a lone surrogate.
    error = assert_error(post_json(client, CHAT, chat_body("a\ud800b")), 400, code="invalid_unicode",
                         param="messages[0].content")
    assert "U+D800" in error["message"]
    assert_error(post_json(client, CHAT, chat_body([{"type": "text", "text": "\udfff"}])), 400,
                 code="invalid_unicode", param="messages[0].content[0].text")
    conv_id = new_conversation(client)
    assert_error(post_json(client, f"/api/conversations/{conv_id}/chat",
                           {"content": [{"type": "text", "text": "x\ud800"}]}), 400,
                 code="invalid_unicode", param="content[0].text")
    assert stored_messages(client, conv_id) == []  # nothing stored: the conversation still works
    assert api_chat(client, conv_id, "hello").status_code == 200
    assert [m["role"] for m in stored_messages(client, conv_id)] == ["user", "assistant"]
    assert_error(post_json(client, "/api/conversations", {"title": "\ud800"}), 400, code="invalid_unicode")
    assert_error(post_json(client, "/api/conversations", {"\ud800": 1}), 400, code="invalid_unicode")
    assert len(client.get("/api/conversations").json()["data"]) == 1


def test_valid_non_ascii_text_is_accepted(client):
    r = client.post(CHAT, json=chat_body("Grüße 😀 \u00e9\u0301 中文"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER


# --------------------------------------------------------------------------- JSON rules


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_json_routes_require_application_json(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps(chat_body()).encode()
    assert_error(client.post(CHAT, content=body, headers=headers), 415, code="unsupported_content_type")
    assert_error(client.post("/api/conversations", content=b'{"title": "csrf"}', headers=headers), 415,
                 code="unsupported_content_type")
    assert client.get("/api/conversations").json()["data"] == []
    conv_id = new_conversation(client)
    r = client.post(f"/api/conversations/{conv_id}/chat", headers=headers,
                    content=json.dumps({"content": [{"type": "text", "text": "hi"}]}).encode())
    assert_error(r, 415, code="unsupported_content_type")
    assert stored_messages(client, conv_id) == []
    # With parameters, and in any case, it is JSON.
    r = client.post(CHAT, content=body, headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field,value", [("seed", 2**64), ("seed", -(2**63) - 1), ("max_tokens", 10**30),
                                         ("n", 2**100)])
def test_integers_beyond_64_bits_are_400(client, field, value):
    assert_error(client.post(CHAT, json=chat_body(**{field: value})), 400, code="integer_out_of_range", param=field)
    still = client.post(CHAT, json=chat_body(seed=2**63 - 1))
    assert still.status_code == 200, still.text


def test_seed_range_edges_work(client):
    for seed in (0, -(2**63), 2**63 - 1):
        assert client.post(CHAT, json=chat_body(seed=seed)).status_code == 200


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 100_000])
def test_over_deep_json_is_400(client, depth):
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * depth + b"]" * depth + b"}"
    headers = {"Content-Type": "application/json"}
    assert_error(client.post(CHAT, content=body, headers=headers), 400, code="json_too_deep")
    conv_id = new_conversation(client)
    r = client.post(f"/api/conversations/{conv_id}/chat", content=body, headers=headers)
    assert_error(r, 400, code="json_too_deep")


def test_nan_and_infinity_are_not_json(client):
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": ' + constant + b"}"
        assert_error(client.post(CHAT, content=body, headers={"Content-Type": "application/json"}), 400,
                     code="invalid_json")


def test_messages_per_request_are_capped(make_client, fake):
    client = make_client(fake, max_messages=50)
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": str(i)} for i in range(51)]
    assert_error(client.post(CHAT, json={"messages": messages}), 400, code="too_many_messages", param="messages")
    assert fake.calls == []
    assert client.post(CHAT, json={"messages": messages[:49]}).status_code == 200


def test_ten_thousand_tiny_messages_are_refused_by_default(client, fake):
    """Issue #13's 0.32 MB request that held the model for minutes."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"} for i in range(10_001)]
    assert_error(client.post(CHAT, json={"messages": messages}), 400, code="too_many_messages")
    assert fake.calls == []


def test_an_api_turn_sends_only_the_newest_messages_to_the_model(make_client, fake):
    client = make_client(fake, max_messages=4)
    conv_id = new_conversation(client)
    for i in range(5):
        assert api_chat(client, conv_id, f"question {i}").status_code == 200
    sent = [m for m in fake.calls[-1]["messages"] if m["role"] != "system"]
    assert [m["role"] for m in sent] == ["assistant", "user", "assistant", "user"]
    assert sent[-1]["content"] == [{"type": "text", "text": "question 4"}]
    assert len(stored_messages(client, conv_id)) == 10  # history itself is kept


# --------------------------------------------------------------------------- cross-site and Host


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://localhost:9999"},  # another port is another origin
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:3000"},
])
def test_cross_site_writes_are_refused(client, fake, headers):
    assert_error(client.post("/api/conversations", json={"title": "csrf"}, headers=headers), 403,
                 code="cross_site_request")
    assert client.get("/api/conversations").json()["data"] == []
    conv_id = new_conversation(client)
    assert_error(api_chat(client, conv_id, "run the model", headers=headers), 403, code="cross_site_request")
    assert_error(client.delete(f"/api/conversations/{conv_id}", headers=headers), 403, code="cross_site_request")
    assert_error(client.post(CHAT, json=chat_body(), headers=headers), 403, code="cross_site_request")
    assert stored_messages(client, conv_id) == [] and fake.calls == []
    # Reading is not refused (the browser does not let the other site see the answer).
    assert client.get("/api/conversations", headers=headers).status_code == 200


def test_same_origin_and_configured_origins_may_write(make_client):
    client = make_client()
    for headers in ({"Origin": "http://localhost"}, {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
                    {"Sec-Fetch-Site": "none"}, {}):
        assert client.post("/api/conversations", json={}, headers=headers).status_code == 201, headers
    opened = make_client(cors_origins=["http://page.example"])
    r = opened.post(CHAT, json=chat_body(), headers={"Origin": "http://page.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "attacker.com.", "192.168.1.20", "localhost.evil"])
def test_foreign_host_names_are_refused(client, host):
    conv_id = new_conversation(client)
    for path in ("/api/conversations", f"/api/conversations/{conv_id}", "/v1/models", "/"):
        assert_error(client.get(path, headers={"Host": host}), 403, code="host_not_allowed")


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LOCALHOST", "127.0.0.1:1234", "127.0.0.2",
                                  "[::1]:8000", "app.localhost"])
def test_loopback_host_names_are_served(client, host):
    assert client.get("/api/conversations", headers={"Host": host}).status_code == 200


def test_configured_host_names_are_served(make_client):
    client = make_client(allowed_hosts=["chat.lan", "10.0.0.5"])
    for host in ("chat.lan", "chat.lan:8000", "10.0.0.5:8000", "localhost"):
        assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host
    assert client.get("/v1/models", headers={"Host": "other.lan"}).status_code == 403
    anything = make_client(allowed_hosts=["*"])
    assert anything.get("/v1/models", headers={"Host": "other.lan"}).status_code == 200


def test_serve_accepts_its_host_address_and_allowed_host_flags():
    import argparse

    from omniphi.serve.server import add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args(["--host", "192.168.1.20", "--allowed-host", "chat.lan"]))
    assert set(config.allowed_hosts) == {"192.168.1.20", "chat.lan"}
    assert config_from_args(parser.parse_args(["--host", "0.0.0.0"])).allowed_hosts == []


# --------------------------------------------------------------------------- media


def test_audio_with_many_channels_is_mixed_down_or_refused_and_the_server_lives(client):
    def clip(channels):
        return base64.b64encode(encode_audio("wav", "pcm_s16le", "s16", 16000, channels)).decode()

    for channels in (9, 16, 24):
        part = {"type": "input_audio", "input_audio": {"data": clip(channels), "format": "wav"}}
        r = client.post(CHAT, json=chat_body([part]))
        assert r.status_code == 200, (channels, r.text)
    part = {"type": "input_audio", "input_audio": {"data": clip(40), "format": "wav"}}
    error = assert_error(client.post(CHAT, json=chat_body([part])), 400, code="too_many_audio_channels")
    assert error["type"] == "invalid_request_error" and "40 channels" in error["message"]
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", base64.b64decode(clip(16)), "audio/wav")})
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- files and page


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_data_dir_and_files_are_private(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "umask", os.umask)  # restored by monkeypatch
    old = os.umask(0o022)
    try:
        data = tmp_path / "data"
        store = Store(data)
        conv = store.create_conversation()
        store.begin_turn(conv["id"], content=[{"type": "image", "attachment_id": "a" * 32, "mime": "image/png"}],
                         files=[("a" * 32, b"\x89PNG", "image/png")])
        assert (data / "omniphi.db-wal").exists() and (data / "omniphi.db-shm").exists()
        for directory in (data, data / "attachments"):
            assert _mode(directory) == 0o700, directory
        for path in (data / "omniphi.db", data / "omniphi.db-wal", data / "omniphi.db-shm", data / "attachments" / ("a" * 32)):
            assert _mode(path) == 0o600, path
        store.close()
        # A data dir left open by an older version is made private at the next start.
        for path in (data, data / "attachments"):
            os.chmod(path, 0o755)
        os.chmod(data / "omniphi.db", 0o644)
        Store(data).close()
        assert _mode(data) == 0o700 and _mode(data / "attachments") == 0o700 and _mode(data / "omniphi.db") == 0o600
        assert sqlite3.connect(data / "omniphi.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        os.umask(old)


def test_page_has_a_content_security_policy_and_no_framing(client):
    for path in ("/", "/static/app.js"):
        r = client.get(path)
        assert r.status_code == 200
        csp = {d.split(" ", 1)[0]: d for d in (p.strip() for p in r.headers["content-security-policy"].split(";"))}
        assert csp["frame-ancestors"] == "frame-ancestors 'none'"
        assert csp["script-src"] == "script-src 'self'"  # no inline script, nothing from elsewhere
        assert csp["object-src"] == "object-src 'none'" and csp["base-uri"] == "base-uri 'none'"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    page = client.get("/").text
    assert "<script>" not in page.replace(" ", "") and " on" not in page.split("<body", 1)[1].split(">", 1)[0]


# --------------------------------------------------------------------------- error mapping


class _RaisingAssistant(FakeAssistant):
    def __init__(self, error: Exception):
        super().__init__()
        self.error = error

    def stream(self, *args, **kwargs):
        raise self.error
        yield  # a generator, like the real one


def test_model_errors_are_mapped_by_type_not_by_name(make_client):
    from omniphi.processing import SampleTooLongError

    class TooLongForThisModel(SampleTooLongError):
        pass

    client = make_client(_RaisingAssistant(TooLongForThisModel("the prompt has 5000 tokens")))
    assert_error(client.post(CHAT, json=chat_body()), 400, code="context_length_exceeded")

    SampleTooLongError = type("SampleTooLongError", (ValueError,), {})  # same name, another type: a bug
    client = make_client(_RaisingAssistant(SampleTooLongError("x")))
    assert_error(client.post(CHAT, json=chat_body()), 500, code="internal_error")
