"""omniphi's chat templates as Jinja, for engines that render prompts themselves (vLLM, llava-hf)."""

import pytest
from PIL import Image

from omniphi.templates import jinja_chat_template
from tests.conftest import tone


def conversation():
    picture = Image.new("RGB", (32, 32), (10, 200, 10))
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Listen: "}, {"type": "audio", "audio": tone(0.5)},
                                     {"type": "image", "image": picture}, {"type": "text", "text": "Which?"}]},
        {"role": "assistant", "content": "Green."},
        {"role": "user", "content": [{"type": "audio", "audio": tone(0.3)}]},
    ]


def as_engine_parts(messages):
    """What vLLM's "openai" content format hands a template: media parts without their data."""
    return [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
             [p if p["type"] == "text" else {"type": p["type"]} for p in m["content"]]} for m in messages]


@pytest.mark.parametrize("placement", ["as_given", "images_first"])
@pytest.mark.parametrize("flavour", ["phi", "chatml"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_template_renders_audio_and_images_where_omniphi_does(flavour, add_generation_prompt, placement, tiny,
                                                                    tiny_chatml, monkeypatch):
    loaded = {"phi": tiny, "chatml": tiny_chatml}[flavour]
    monkeypatch.setattr(loaded.model.config, "media_placement", placement)
    template = jinja_chat_template(loaded.processor, with_audio=True)
    rendered = loaded.processor.tokenizer.apply_chat_template(
        as_engine_parts(conversation()), chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert rendered == loaded.processor.render(conversation(), add_generation_prompt).text


def test_jinja_template_without_audio_refuses_an_audio_part(tiny):
    template = jinja_chat_template(tiny.processor, with_audio=False)
    with pytest.raises(Exception, match="text and image parts, not audio"):
        tiny.processor.tokenizer.apply_chat_template(as_engine_parts(conversation()), chat_template=template, tokenize=False)
