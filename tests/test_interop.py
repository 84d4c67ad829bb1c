"""Export to / import from transformers' LlavaForConditionalGeneration (llava-hf layout)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from omniphi import presets
from omniphi.chat import GenerationSettings
from omniphi.interop import export_llava_hf, import_llava_hf
from omniphi.runtime.assistant import Assistant
from tests.conftest import FIXTURES


def image_question():
    return [{"role": "user", "content": [
        {"type": "image", "image": Image.new("RGB", (40, 40), (200, 30, 30))},
        {"type": "text", "text": "What colour is this?"},
    ]}]


def test_export_gives_same_logits_in_transformers(tiny, tmp_path):
    batch = tiny.processor(image_question(), add_generation_prompt=True, with_labels=False)
    with torch.no_grad():
        ours = tiny.model(**batch).logits
    export_llava_hf(tiny, tmp_path)
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        theirs = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits
    assert (ours - theirs).abs().max() <= 1e-4
    # transformers' own processor expands <image> to the same number of tokens.
    processor = AutoProcessor.from_pretrained(tmp_path)
    expanded = processor(images=Image.new("RGB", (40, 40)), text="<image>\nhi", return_tensors="pt")["input_ids"]
    assert int((expanded == tiny.model.config.image_token_id).sum()) == tiny.model.config.image_seq_length


def test_import_of_a_llava_hf_directory(tmp_path, tiny_chatml):
    tokenizer = tiny_chatml.processor.tokenizer  # already has <image>
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2).to_dict(),
        text_config=LlamaConfig(vocab_size=len(tokenizer) + 8, hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=4,
    )
    torch.manual_seed(1)
    original = LlavaForConditionalGeneration(config).eval()
    original.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    imported = import_llava_hf(tmp_path)
    batch = imported.processor(image_question(), add_generation_prompt=True, with_labels=False)
    with torch.no_grad():
        theirs = original(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          pixel_values=batch["pixel_values"]).logits
        ours = imported.model(**batch).logits
    assert (ours - theirs).abs().max() <= 1e-4


def conversation_in_both_formats(image):
    """The same two-turn conversation as omniphi takes it and as llava-hf processors take it, once
    with content lists ({"type": "image"} parts) and once with strings that spell "<image>"."""
    ours = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": [{"type": "text", "text": "And the shape?"}]},
    ]
    as_parts = [
        {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the shape?"}]},
    ]
    as_strings = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "<image>\nWhat colour is it?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "And the shape?"},
    ]
    return ours, as_parts, as_strings


@pytest.mark.parametrize("flavour", ["phi", "chatml"])  # omniphi's llava-phi template and a tokenizer's (ChatML)
def test_exported_chat_template_takes_image_parts_and_strings_and_renders_as_omniphi(flavour, tiny, tiny_chatml, tmp_path):
    loaded = {"phi": tiny, "chatml": tiny_chatml}[flavour]
    export_llava_hf(loaded, tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    ours, as_parts, as_strings = conversation_in_both_formats(Image.new("RGB", (40, 40), (200, 30, 30)))
    for add_generation_prompt in (True, False):
        expected = loaded.processor.render(ours, add_generation_prompt).text
        for messages in (as_parts, as_strings):
            assert processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_exported_chat_template_refuses_audio_parts(tiny, tmp_path):
    export_llava_hf(tiny, tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    with pytest.raises(Exception, match="not audio"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hi"}]}])


def greedy_in_llava_hf(directory, messages, max_new_tokens, stop_token_ids) -> list[int]:
    """Greedy answer tokens of an exported model, through transformers' own processor and chat template."""
    processor = AutoProcessor.from_pretrained(directory)
    llava = LlavaForConditionalGeneration.from_pretrained(directory).eval()
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = llava.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_token_ids)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def answer_of(assistant: Assistant, messages, max_new_tokens):
    reply = assistant.complete(messages, GenerationSettings(max_new_tokens=max_new_tokens))
    return reply.text, reply.completion_tokens


def assert_same_greedy_answer(loaded, directory, messages, max_new_tokens):
    stop_ids = loaded.processor.stop_token_ids
    tokens = greedy_in_llava_hf(directory, messages, max_new_tokens, stop_ids)
    text, count = answer_of(Assistant(loaded), messages, max_new_tokens)
    assert loaded.processor.decode([t for t in tokens if t not in stop_ids]) == text
    assert len(tokens) == count


def test_exported_tiny_model_generates_what_omniphi_generates(tiny, tmp_path):
    export_llava_hf(tiny, tmp_path)
    # Square pictures: omniphi pads to a square, the CLIP processor centre-crops (see omniphi.interop).
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "What is it?"}]}]
    assert_same_greedy_answer(tiny, tmp_path, messages, max_new_tokens=12)


@pytest.mark.slow
def test_exported_starter_answers_a_picture_question_as_omniphi_ask(tmp_path):
    from omniphi.runtime.loading import load_weights

    loaded = load_weights("starter")
    export_llava_hf(loaded, tmp_path)
    picture = Image.open(FIXTURES / "starter-shapes" / "circle.png").convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image", "image": picture},
                                             {"type": "text", "text": "What colour is the circle?"}]}]
    assert_same_greedy_answer(loaded, tmp_path, messages, max_new_tokens=16)
