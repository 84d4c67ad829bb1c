"""The conversation API (/api) the page uses: CRUD, chat SSE, attachments, regenerate, edit, Stop."""

from __future__ import annotations

import time

import httpx
import pytest

from omniphi.chat import GenerationSettings
from omniphi.serve.engine import ChatRequest, Engine
from tests.serve.conftest import assert_error, data_uri, parse_sse, png_bytes, speech, wait_until
from tests.serve.fake_assistant import ANSWER, TRANSCRIPT, FakeAssistant


def new_conversation(client, **body):
    r = client.post("/api/conversations", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def say(client, conv_id, *parts, **body):
    """POST a chat turn; returns the parsed SSE events (asserting the stream's framing)."""
    if parts:
        body["content"] = [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]
    r = client.post(f"/api/conversations/{conv_id}/chat", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(block.startswith("data: ") for block in r.text.split("\n\n") if block)
    return parse_sse(r.text)


def test_crud(client):
    assert client.get("/api/conversations").json() == {"data": []}
    first = new_conversation(client)
    assert set(first) == {"id", "title", "created_at", "updated_at"} and first["title"] == "New chat"
    time.sleep(0.01)
    second = new_conversation(client, title="Trip planning")
    assert second["title"] == "Trip planning"
    r = client.post("/api/conversations")  # no body at all is fine too
    assert r.status_code == 201
    third = r.json()
    assert [c["id"] for c in client.get("/api/conversations").json()["data"]] == [third["id"], second["id"], first["id"]]

    renamed = client.patch(f"/api/conversations/{first['id']}", json={"title": "Renamed"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Renamed"
    assert renamed.json()["updated_at"] >= first["updated_at"]
    assert client.get("/api/conversations").json()["data"][0]["id"] == first["id"]  # newest activity first
    got = client.get(f"/api/conversations/{first['id']}").json()
    assert got["title"] == "Renamed" and got["messages"] == []

    assert_error(client.patch(f"/api/conversations/{first['id']}", json={"title": 5}), 400, param="title")
    assert_error(client.patch(f"/api/conversations/{first['id']}", json={}), 400, param="title")
    assert_error(client.patch("/api/conversations/nope", json={"title": "x"}), 404)

    assert client.delete(f"/api/conversations/{first['id']}").status_code == 204
    assert_error(client.get(f"/api/conversations/{first['id']}"), 404)
    assert len(client.get("/api/conversations").json()["data"]) == 2


def test_defaults(make_client, fake):
    client = make_client(fake, system_prompt="Be nice.", temperature=0.2, max_tokens=99, audio_mode="transcribe")
    assert client.get("/api/settings/defaults").json() == {
        "system_prompt": "Be nice.", "temperature": 0.2, "max_tokens": 99, "audio_mode": "transcribe",
        "model": fake.name}


def test_chat_stores_question_and_answer_and_serves_attachments(client, fake):
    conv = new_conversation(client)
    image = png_bytes((20, 10))
    wav = speech("capital.webm")
    events = say(client, conv["id"], "What is in this picture?",
                 {"type": "image", "data": data_uri(image, "image/png")},
                 {"type": "audio", "data": data_uri(wav, "audio/webm;codecs=opus")})
    kinds = [e["type"] for e in events]
    assert kinds[0] == "user_message" and kinds[1] == "transcript" and kinds[-1] == "done"
    assert set(kinds[2:-1]) == {"token"}
    user = events[0]["message"]
    assert user["role"] == "user" and user["finish_reason"] is None and user["usage"] is None
    text_part, image_part, audio_part = user["content"]
    assert text_part == {"type": "text", "text": "What is in this picture?"}
    assert image_part["mime"] == "image/png" and image_part["url"] == f"/api/attachments/{image_part['attachment_id']}"
    assert audio_part["mime"] == "audio/webm" and audio_part["transcript"] is None
    assert events[1] == {"type": "transcript", "attachment_id": audio_part["attachment_id"], "text": TRANSCRIPT}
    assert "".join(e["text"] for e in events if e["type"] == "token") == ANSWER
    answer = events[-1]["message"]
    assert answer["role"] == "assistant" and answer["finish_reason"] == "stop"
    assert answer["content"] == [{"type": "text", "text": ANSWER}]
    usage = answer["usage"]
    assert usage["completion_tokens"] == len(ANSWER.split()) and usage["prompt_tokens"] > 0
    assert usage["seconds"] >= 0 and set(usage) == {"prompt_tokens", "completion_tokens", "seconds", "tokens_per_second"}

    stored = client.get(f"/api/conversations/{conv['id']}").json()
    assert [m["id"] for m in stored["messages"]] == [user["id"], answer["id"]]
    assert stored["messages"][0]["content"][2]["transcript"] == TRANSCRIPT  # kept for the page's reload
    assert stored["title"] == "What is in this picture?"

    for part, data in ((image_part, image), (audio_part, wav)):
        r = client.get(part["url"])
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-type"] == part["mime"]
        assert r.headers["x-content-type-options"] == "nosniff"

    # What the model was given: the defaults' system prompt, then the question with decoded media.
    call = fake.calls[-1]
    assert call["messages"][0]["role"] == "system"
    assert [p["type"] for p in call["messages"][1]["content"]] == ["text", "image", "audio"]
    assert call["images"] == 1 and call["audio"] == 1


def test_untrusted_mime_is_not_served_back(client):
    conv = new_conversation(client)
    events = say(client, conv["id"], {"type": "image", "data": data_uri(png_bytes(), "text/html")})
    url = events[0]["message"]["content"][0]["url"]
    r = client.get(url)
    assert r.headers["content-type"] == "application/octet-stream"
    assert "sandbox" in r.headers["content-security-policy"]


def test_second_turn_sends_history_with_media(client, fake):
    conv = new_conversation(client)
    say(client, conv["id"], "Look", {"type": "image", "data": data_uri(png_bytes((8, 8)), "image/png")})
    say(client, conv["id"], "And now?", settings={"system_prompt": "", "temperature": 0.0, "max_tokens": 4,
                                                   "audio_mode": "transcribe"})
    call = fake.calls[-1]
    assert [m["role"] for m in call["messages"]] == ["user", "assistant", "user"]  # "" → no system prompt
    assert call["messages"][0]["content"][1]["image"].size == (8, 8)  # read back from disk
    assert call["messages"][1]["content"] == ANSWER
    assert (call["settings"].temperature, call["settings"].max_new_tokens, call["audio_mode"]) == (0.0, 4, "transcribe")
    conv = client.get(f"/api/conversations/{conv['id']}").json()
    assert conv["title"] == "Look" and conv["messages"][-1]["finish_reason"] == "length"


def test_title_is_first_48_characters_of_the_first_question(client):
    conv = new_conversation(client)
    question = "Please explain in detail how the tides of the ocean are caused by the moon"
    say(client, conv["id"], question)
    say(client, conv["id"], "Another question")
    assert client.get(f"/api/conversations/{conv['id']}").json()["title"] == question[:48].strip()
    named = new_conversation(client, title="Named")
    say(client, named["id"], "hello")
    assert client.get(f"/api/conversations/{named['id']}").json()["title"] == "Named"


def test_regenerate(client, fake):
    conv = new_conversation(client)
    assert_error(client.post(f"/api/conversations/{conv['id']}/chat", json={"regenerate": True}), 400,
                 param="regenerate")
    first = say(client, conv["id"], "q1")
    say(client, conv["id"], "q2")
    before = client.get(f"/api/conversations/{conv['id']}").json()["messages"]
    events = say(client, conv["id"], regenerate=True)
    assert events[0]["message"]["id"] == before[2]["id"]  # the same question, answered again
    after = client.get(f"/api/conversations/{conv['id']}").json()["messages"]
    assert [m["id"] for m in after[:3]] == [m["id"] for m in before[:3]]
    assert after[3]["id"] != before[3]["id"] and after[3]["id"] == events[-1]["message"]["id"]
    assert len(after) == 4
    assert [m["role"] for m in fake.calls[-1]["messages"]][-3:] == ["user", "assistant", "user"]
    assert first[0]["message"]["id"] == after[0]["id"]


def test_edit(client, fake):
    conv = new_conversation(client)
    first = say(client, conv["id"], "q1", {"type": "image", "data": data_uri(png_bytes(), "image/png")})
    old_image_url = first[0]["message"]["content"][1]["url"]
    say(client, conv["id"], "q2")
    edited = say(client, conv["id"], "q1, edited", edit_message_id=first[0]["message"]["id"])
    assert edited[0]["message"]["id"] == first[0]["message"]["id"]
    assert edited[0]["message"]["content"] == [{"type": "text", "text": "q1, edited"}]
    messages = client.get(f"/api/conversations/{conv['id']}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"][0]["text"] == "q1, edited"
    assert fake.calls[-1]["messages"][-1]["content"] == [{"type": "text", "text": "q1, edited"}]
    assert_error(client.get(old_image_url), 404)  # the replaced image is gone
    assistant_id = messages[1]["id"]
    r = client.post(f"/api/conversations/{conv['id']}/chat",
                    json={"content": [{"type": "text", "text": "x"}], "edit_message_id": assistant_id})
    assert_error(r, 400, param="edit_message_id")
    r = client.post(f"/api/conversations/{conv['id']}/chat",
                    json={"content": [{"type": "text", "text": "x"}], "edit_message_id": "nope"})
    assert_error(r, 404, param="edit_message_id")


@pytest.mark.parametrize("body,status,param", [
    ({}, 400, "content"),
    ({"content": []}, 400, "content"),
    ({"content": [{"type": "text", "text": "   "}]}, 400, "content"),
    ({"content": [{"type": "video", "data": "x"}]}, 400, "content[0].type"),
    ({"content": [{"type": "image", "data": "https://example.com/cat.png"}]}, 400, "content[0].data"),
    ({"content": [{"type": "image", "data": data_uri(b"garbage!", "image/png")}]}, 400, "content[0].data"),
    ({"content": [{"type": "audio", "data": data_uri(png_bytes(), "audio/wav")}]}, 400, "content[0].data"),
    ({"content": [{"type": "text", "text": "x"}], "regenerate": True}, 400, "content"),
    ({"content": [{"type": "text", "text": "x"}], "settings": {"temperature": "hot"}}, 400, "settings.temperature"),
    ({"content": [{"type": "text", "text": "x"}], "settings": {"audio_mode": "loud"}}, 400, "settings.audio_mode"),
])
def test_bad_chat_bodies_store_nothing(client, fake, body, status, param):
    conv = new_conversation(client)
    assert_error(client.post(f"/api/conversations/{conv['id']}/chat", json=body), status, param=param)
    assert client.get(f"/api/conversations/{conv['id']}").json()["messages"] == []
    assert fake.calls == []
    assert_error(client.post("/api/conversations/nope/chat", json={"content": [{"type": "text", "text": "x"}]}), 404)
    assert say(client, conv["id"], "still fine")[-1]["type"] == "done"


def test_busy_server_refuses_before_storing(make_client):
    engine = Engine(FakeAssistant(token_delay=0.2), max_queue=0)
    client = make_client(engine)
    conv = new_conversation(client)
    running = engine.submit(ChatRequest([{"role": "user", "content": "x"}], GenerationSettings()))
    try:
        r = client.post(f"/api/conversations/{conv['id']}/chat", json={"content": [{"type": "text", "text": "hi"}]})
        assert_error(r, 429, code="queue_full")
        assert "retry-after" in r.headers
    finally:
        running.cancel()
    assert client.get(f"/api/conversations/{conv['id']}").json()["messages"] == []
    engine.stop()


def test_model_failure_stores_partial_answer_as_error(make_client):
    client = make_client(FakeAssistant(fail_after=3))
    conv = new_conversation(client)
    events = say(client, conv["id"], "hi")
    assert [e["type"] for e in events] == ["user_message", "token", "token", "token", "error"]
    assert events[-1]["error"]["code"] == "internal_error" and set(events[-1]["error"]) == {"message", "type", "code"}
    answer = client.get(f"/api/conversations/{conv['id']}").json()["messages"][-1]
    assert answer["finish_reason"] == "error" and answer["content"][0]["text"] == "The capital of"


def test_timeout_stores_partial_answer_and_reports_it(make_client):
    client = make_client(FakeAssistant(token_delay=0.05), request_timeout_s=0.25)
    conv = new_conversation(client)
    events = say(client, conv["id"], "hi")
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "timeout"
    answer = client.get(f"/api/conversations/{conv['id']}").json()["messages"][-1]
    assert answer["role"] == "assistant" and answer["finish_reason"] == "error"
    assert 0 < len(answer["content"][0]["text"]) < len(ANSWER)


def test_disconnect_stops_generation_and_stores_partial_cancelled_answer(live):
    fake = FakeAssistant(token_delay=0.1)  # 1.3 s for the whole answer: plenty of time to notice
    server = live(fake)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        conv = http.post("/api/conversations", json={}).json()
        tokens = []
        with http.stream("POST", f"/api/conversations/{conv['id']}/chat",
                         json={"content": [{"type": "text", "text": "hi"}]}) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and '"token"' in line:
                    tokens.append(line)
                    if len(tokens) == 3:
                        break  # the page's Stop button: abort the fetch
        assert wait_until(lambda: fake.cancelled == 1, timeout=5)

        def stored():
            messages = http.get(f"/api/conversations/{conv['id']}").json()["messages"]
            return messages if len(messages) == 2 else None

        assert wait_until(lambda: stored() is not None, timeout=5)
        user, answer = stored()
        assert answer["finish_reason"] == "cancelled"
        assert answer["content"][0]["text"].startswith("The capital of")
        assert len(answer["content"][0]["text"]) < len(ANSWER)
        assert answer["usage"]["completion_tokens"] < len(ANSWER.split())
        # The server is free again and answers the next question in full.
        fake.token_delay = 0
        r = http.post(f"/api/conversations/{conv['id']}/chat", json={"content": [{"type": "text", "text": "again"}]})
        assert parse_sse(r.text)[-1]["message"]["content"][0]["text"] == ANSWER
