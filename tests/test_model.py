"""The model: save/load, the variable-length Whisper encoder, generation."""

import numpy as np
import pytest
import torch
from PIL import Image

from omniphi import runtime
from omniphi.model.audio_encoder import audio_token_count, encode_windows
from omniphi.runtime.loading import save_directory
from tests.conftest import tone


def conversation():
    return [{"role": "user", "content": [
        {"type": "image", "image": Image.new("RGB", (50, 30), (0, 200, 0))},
        {"type": "text", "text": "What is this and what do you hear?"},
        {"type": "audio", "audio": tone(1.3)},
    ]}]


def test_save_load_round_trip_gives_identical_logits(tiny, tmp_path):
    batch = tiny.processor(conversation(), add_generation_prompt=True, with_labels=False)
    with torch.no_grad():
        before = tiny.model(**batch).logits
    save_directory(tiny, tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = runtime.load(str(tmp_path), dtype="float32")  # a saved directory records no preference
    batch2 = loaded.processor(conversation(), add_generation_prompt=True, with_labels=False)
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    with torch.no_grad():
        after = loaded.model(**batch2).logits
    assert torch.equal(before, after)


def test_variable_length_encoder_matches_stock_whisper_on_full_windows(tiny):
    encoder = tiny.model.audio_tower
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        stock = encoder(mel).last_hidden_state[0]
        ours = encode_windows(encoder, mel, torch.tensor([3000]))[0]
    assert torch.allclose(stock, ours, atol=1e-5)


def test_padded_batch_equals_each_window_alone(tiny):
    encoder = tiny.model.audio_tower
    short, long = torch.randn(80, 301), torch.randn(80, 800)
    batch = torch.zeros(2, 80, 800)
    batch[0, :, :301], batch[1] = short, long
    with torch.no_grad():
        together = encode_windows(encoder, batch, torch.tensor([301, 800]))
        alone = encode_windows(encoder, short[None], torch.tensor([301]))[0]
    assert together[0].shape == (151, encoder.config.d_model)
    assert torch.allclose(together[0], alone, atol=1e-5)


def test_audio_token_count():
    assert audio_token_count([3000], 8) == 188  # 30 s → 1500 frames → 187.5 → 188
    assert audio_token_count([3000, 3000, 500], 8) == 407  # (1500+1500+250)/8 → 406.25 → 407: windows concatenate first
    assert audio_token_count([1], 8) == 1


def test_generate_returns_only_new_tokens_and_is_deterministic(tiny):
    batch = tiny.processor(conversation(), add_generation_prompt=True, with_labels=False)
    first = tiny.model.generate(**batch, max_new_tokens=6, do_sample=False)
    second = tiny.model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert first.shape == (1, 6)
    assert torch.equal(first, second)


def test_kv_cache_generation_matches_full_recompute(tiny):
    """Greedy decoding with the KV cache picks the same tokens as re-running the whole prefix."""
    batch = tiny.processor(conversation(), add_generation_prompt=True, with_labels=False)
    cached = tiny.model.generate(**batch, max_new_tokens=5, do_sample=False)[0].tolist()
    embeds = tiny.model.embed_inputs(batch["input_ids"], batch["pixel_values"], batch["audio_features"],
                                     batch["audio_feature_lengths"], batch["audio_clip_windows"])
    manual = []
    with torch.no_grad():
        for _ in range(5):
            logits = tiny.model.language_model(inputs_embeds=embeds, use_cache=False).logits
            token = int(logits[0, -1].argmax())
            manual.append(token)
            embeds = torch.cat([embeds, tiny.model.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
    assert cached == manual


def test_batched_left_padded_generation_matches_single(tiny):
    short = [{"role": "user", "content": "hi"}]
    long = conversation()
    batch = tiny.processor([short, long], add_generation_prompt=True, with_labels=False, padding_side="left")
    together = tiny.model.generate(**batch, max_new_tokens=4, do_sample=False)
    alone = tiny.model.generate(**tiny.processor([long], add_generation_prompt=True, with_labels=False),
                                max_new_tokens=4, do_sample=False)
    assert together[1].tolist() == alone[0].tolist()


def test_chatml_llama_variant_trains(tiny_chatml):
    convo = conversation() + [{"role": "assistant", "content": "A green rectangle and a tone."}]
    batch = tiny_chatml.processor(convo)
    out = tiny_chatml.model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert tiny_chatml.model.multi_modal_projector.linear_1.weight.grad is not None
    assert tiny_chatml.model.audio_projector.linear_1.weight.grad is not None
    tiny_chatml.model.zero_grad()


@pytest.mark.parametrize("flavour", ["tiny", "tiny_chatml"])
def test_loss_from_answer_positions_only_equals_the_full_lm_loss(flavour, request):
    """The training forward computes logits only where a target follows; its loss and gradients
    must equal the LLM's own loss over full logits (padding, two samples, num_items_in_batch)."""
    loaded = request.getfixturevalue(flavour)
    model, processor = loaded.model, loaded.processor
    long = conversation() + [{"role": "assistant", "content": "A green rectangle and a tone."},
                             {"role": "user", "content": "And now?"}, {"role": "assistant", "content": "Still green."}]
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    batch = processor([long, short])
    labels = batch["labels"]
    assert (labels == -100).float().mean() > 0.5  # most positions have no target: the saving is real

    def loss_and_grad(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach(), model.multi_modal_projector.linear_1.weight.grad.clone()

    def full(num_items=None):
        embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"], batch["audio_features"],
                                    batch["audio_feature_lengths"], batch["audio_clip_windows"])
        kwargs = {} if num_items is None else {"num_items_in_batch": num_items}
        return model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=labels, **kwargs).loss

    for num_items in (None, torch.tensor(37)):
        kwargs = {} if num_items is None else {"num_items_in_batch": num_items}
        fast_loss, fast_grad = loss_and_grad(lambda: model(**batch, **kwargs).loss)
        full_loss, full_grad = loss_and_grad(lambda: full(num_items))
        torch.testing.assert_close(fast_loss, full_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast_grad, full_grad, rtol=1e-4, atol=1e-7)
    model.zero_grad()
