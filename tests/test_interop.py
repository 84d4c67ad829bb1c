"""Export to / import from transformers' LlavaForConditionalGeneration (llava-hf layout)."""

import torch
from PIL import Image
from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from omniphi.interop import export_llava_hf, import_llava_hf


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
