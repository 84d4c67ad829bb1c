"""A bounded fuzz run: thousands of hostile requests (seeded) against both APIs, interleaved with
legitimate turns. Every answer must be 2xx or 4xx, and afterwards the store must be intact: SQLite's
integrity and foreign-key checks pass, every conversation reads back, and exactly the turns that
were acknowledged are stored (no hostile request left anything behind)."""

from __future__ import annotations

import base64
import io
import json
import random
import sqlite3

import pytest
from PIL import Image

from tests.media_fuzz import encode_audio

REQUESTS = 2_000  # ~5 s of CPU: marked slow
JSON = {"Content-Type": "application/json"}


def png(rng: random.Random) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (rng.randint(1, 40), rng.randint(1, 40)), (rng.randrange(256), 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def damage(rng: random.Random, data: bytes) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return data[: rng.randrange(len(data))]
    if choice == 1:
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if choice == 2:
        return rng.randbytes(rng.randint(0, 300))
    return data


def hostile_value(rng: random.Random, depth: int = 0):
    """Any JSON value, biased to what breaks servers."""
    kind = rng.randrange(12)
    if kind == 0:
        return rng.choice([2**64, -(2**63) - 1, 10**40, 2**63 - 1, -1, 0])
    if kind == 1:
        return rng.choice(["\ud800", "a\udfffb", "\x00", "\u202e", "😀" * 50, "", " " * 10])
    if kind == 2:
        return rng.choice([1e308, -0.0, 1.5, 3])
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4 and depth < 4:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 5 and depth < 4:
        return {rng.choice(["type", "text", "data", "role", "content", "\ud800"]): hostile_value(rng, depth + 1)
                for _ in range(rng.randint(0, 3))}
    if kind == 6:
        nest = rng.choice([70, 1_000, 50_000])
        return json.loads("[" * min(nest, 900) + "]" * min(nest, 900)) if nest < 900 else "DEEP"
    return "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randint(0, 20)))


def hostile_part(rng: random.Random, api: str):
    kind = rng.randrange(5)
    if kind == 0:
        data = damage(rng, png(rng))
        uri = f"data:image/{rng.choice(['png', 'svg+xml', 'html'])};base64,{base64.b64encode(data).decode()}"
        return {"type": "image_url", "image_url": {"url": uri}} if api == "v1" else {"type": "image", "data": uri}
    if kind == 1:
        data = damage(rng, AUDIO[rng.randrange(len(AUDIO))])
        b64 = base64.b64encode(data).decode()
        if api == "v1":
            return {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}
        return {"type": "audio", "data": f"data:audio/wav;base64,{b64}"}
    if kind == 2:
        return {"type": rng.choice(["text", "image", "audio", "image_url", "video", None]), "text": hostile_value(rng),
                "data": hostile_value(rng)}
    if kind == 3:
        return {"type": "text", "text": hostile_value(rng)}
    return hostile_value(rng)


def hostile_body(rng: random.Random, api: str) -> bytes:
    if rng.random() < 0.05:
        return rng.randbytes(rng.randint(0, 200))
    if rng.random() < 0.05:
        return b"[" * rng.choice([100, 10_000, 100_000])
    parts = [hostile_part(rng, api) for _ in range(rng.randint(0, 3))]
    if api == "v1":
        body = {"model": "m", "messages": [{"role": rng.choice(["user", "system", "assistant", "tool", 7]),
                                            "content": rng.choice([parts, hostile_value(rng)])}]}
        for key in rng.sample(["seed", "max_tokens", "temperature", "top_p", "stop", "n", "stream", "audio_mode"],
                              rng.randint(0, 3)):
            body[key] = hostile_value(rng)
    else:
        body = {"content": parts}
        for key in rng.sample(["regenerate", "edit_message_id", "settings"], rng.randint(0, 2)):
            body[key] = hostile_value(rng)
    text = json.dumps(body)
    return text.replace('"DEEP"', "[" * 50_000 + "]" * 50_000).encode()


AUDIO: list[bytes] = []


@pytest.mark.slow
def test_thousands_of_hostile_requests_get_4xx_and_leave_the_history_intact(make_client, fake, tmp_path):
    rng = random.Random(13)
    AUDIO[:] = [encode_audio("wav", "pcm_s16le", "s16", 16000, channels) for channels in (1, 2, 9, 30)]
    AUDIO.append(encode_audio("ogg", "libopus", "flt", 48000, 2))
    client = make_client(fake)
    expected: dict[str, list[str]] = {}  # conversation → acknowledged questions, in order
    for _ in range(3):
        conv_id = client.post("/api/conversations", json={}).json()["id"]
        expected[conv_id] = []
    statuses: dict[int, int] = {}

    def legit_turn(i):
        conv_id = rng.choice(list(expected))
        r = client.post(f"/api/conversations/{conv_id}/chat", json={"content": [{"type": "text", "text": f"q{i}"}]})
        assert r.status_code == 200 and '"type":"done"' in r.text.replace(" ", ""), r.text
        expected[conv_id].append(f"q{i}")

    for i in range(REQUESTS):
        if i % 50 == 0:
            legit_turn(i)
        conv_id = rng.choice(list(expected) + ["0" * 32, "../../etc/passwd", "%00"])
        target = rng.randrange(8)
        headers = dict(JSON)
        if rng.random() < 0.1:
            headers["Content-Type"] = rng.choice(["text/plain", "application/x-www-form-urlencoded", ""])
        if rng.random() < 0.1:
            headers[rng.choice(["Origin", "Sec-Fetch-Site", "Host"])] = rng.choice(
                ["https://evil.example", "cross-site", "evil.example", "null"])
        if target <= 2:
            r = client.post("/v1/chat/completions", content=hostile_body(rng, "v1"), headers=headers)
        elif target <= 5:
            r = client.post(f"/api/conversations/{conv_id}/chat", content=hostile_body(rng, "api"), headers=headers)
        elif target == 6:
            method = rng.choice(["PATCH", "DELETE", "PUT", "GET"])
            if method == "DELETE" and conv_id in expected:
                method = "PATCH"  # deleting is legitimate; the ledger keeps every conversation
            r = client.request(method, f"/api/conversations/{conv_id}", headers=headers,
                               content=json.dumps({"title": hostile_value(rng)}).encode())
        else:
            data = damage(rng, AUDIO[rng.randrange(len(AUDIO))])
            r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data, "audio/wav")},
                            data={"response_format": rng.choice(["json", "text", "srt"])})
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert 200 <= r.status_code < 500, (i, r.status_code, r.text[:500])
        if r.status_code >= 400:
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" or r.status_code == 429, error
        elif target in (3, 4, 5) and conv_id in expected:
            # A hostile body that was accepted anyway (valid after all): it is part of the history now.
            user = next(json.loads(line[5:]) for line in r.text.splitlines() if '"user_message"' in line)
            expected[conv_id].append(user["message"])
    legit_turn(REQUESTS)
    assert sum(statuses.get(s, 0) for s in statuses if s >= 400) > REQUESTS // 2  # it really was hostile

    # The history is intact: the database is consistent, and holds exactly what was acknowledged.
    data_dir = tmp_path / "data"
    db = sqlite3.connect(data_dir / "omniphi.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    for conv_id, questions in expected.items():
        r = client.get(f"/api/conversations/{conv_id}")
        assert r.status_code == 200, r.text
        messages = r.json()["messages"]
        users = [m for m in messages if m["role"] == "user"]
        assert len(users) == len(questions)
        for message, question in zip(users, questions):
            if isinstance(question, str):
                assert message["content"] == [{"type": "text", "text": question}]
            else:
                assert message["id"] == question["id"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * len(questions)
        for message in users:
            for part in message["content"]:
                if part["type"] != "text":
                    assert client.get(f"/api/attachments/{part['attachment_id']}").status_code == 200
    assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 200
