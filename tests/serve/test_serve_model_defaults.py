"""The server answers with the loaded model's own generation defaults and shows its model card
(omniphi/model_card.py): a request or a ServeConfig value overrides them, nothing else does."""

from __future__ import annotations

import json

from omniphi.chat import GenerationSettings
from omniphi.model_card import read_model_card
from tests.serve.conftest import assert_error, png_bytes
from tests.serve.fake_assistant import FakeAssistant

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def sampling_assistant() -> FakeAssistant:
    return FakeAssistant(generation_defaults=GenerationSettings(temperature=0.4, top_p=0.8, max_new_tokens=77))


def test_requests_that_set_nothing_get_the_models_defaults(make_client):
    fake = sampling_assistant()
    client = make_client(fake)
    assert client.post(CHAT, json={"messages": HI}).status_code == 200
    settings = fake.calls[-1]["settings"]
    assert (settings.temperature, settings.top_p, settings.max_new_tokens) == (0.4, 0.8, 77)
    defaults = client.get("/api/settings/defaults").json()
    assert (defaults["temperature"], defaults["max_tokens"]) == (0.4, 77)


def test_a_greedy_model_is_served_greedy(make_client):
    fake = FakeAssistant()  # a model directory that says nothing: greedy
    client = make_client(fake)
    assert client.get("/api/settings/defaults").json()["temperature"] == 0.0
    client.post(CHAT, json={"messages": HI})
    assert fake.calls[-1]["settings"].temperature == 0.0


def test_request_values_and_server_config_override_the_model(make_client):
    fake = sampling_assistant()
    client = make_client(fake, temperature=0.9)
    client.post(CHAT, json={"messages": HI})
    assert (fake.calls[-1]["settings"].temperature, fake.calls[-1]["settings"].top_p) == (0.9, 0.8)
    client.post(CHAT, json={"messages": HI, "temperature": 0, "top_p": 0.5, "max_tokens": 3})
    settings = fake.calls[-1]["settings"]
    assert (settings.temperature, settings.top_p, settings.max_new_tokens) == (0.0, 0.5, 3)


def write_card(directory, suggestions) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pic.png").write_bytes(png_bytes())
    (directory / "model_card.json").write_text(json.dumps(
        {"name": "shapes model", "summary": "Knows coloured shapes.", "limits": "Nothing else.",
         "suggestions": suggestions}))


def test_model_card_and_its_sample_picture_are_served(make_client, tmp_path):
    write_card(tmp_path / "model", [
        {"title": "Ask about a picture", "detail": "colour", "prompt": "What colour is it?", "image": "pic.png"},
        {"title": "General", "prompt": "What is the capital of France?"}])
    client = make_client(FakeAssistant(card=read_model_card(tmp_path / "model")))
    card = client.get("/api/model").json()
    assert (card["name"], card["summary"], card["limits"]) == ("shapes model", "Knows coloured shapes.", "Nothing else.")
    first, second = card["suggestions"]
    assert first["prompt"] == "What colour is it?" and "audio_url" not in first
    assert "image_url" not in second
    picture = client.get(first["image_url"])
    assert picture.status_code == 200 and picture.content == png_bytes()
    assert picture.headers["content-type"] == "image/png"
    assert_error(client.get("/api/model/suggestions/1/image"), 404)  # that card has no picture
    assert_error(client.get("/api/model/suggestions/7/image"), 404)
    assert_error(client.get("/api/model/suggestions/0/config.json"), 404)


def test_a_model_without_a_card_offers_no_suggestions(make_client):
    fake = FakeAssistant()
    card = make_client(fake).get("/api/model").json()
    assert card == {"name": fake.name, "summary": "", "limits": "", "suggestions": []}
