"""Label masks, placeholder expansion and batching: the contracts LLaVA forks get wrong."""

import numpy as np
import pytest
import torch
from PIL import Image

from omniphi.processing import IGNORE_INDEX, LabelMaskError, SampleTooLongError, pad_to_square
from tests.conftest import tone


def multi_turn_conversation():
    red = Image.new("RGB", (60, 40), (255, 0, 0))
    blue = Image.new("RGB", (30, 50), (0, 0, 255))
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "image", "image": red}, {"type": "text", "text": "What colour is this?"}]},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": [{"type": "audio", "audio": tone(2.0)}, {"type": "text", "text": "And this?"},
                                     {"type": "image", "image": blue}]},
        {"role": "assistant", "content": "A blue rectangle, standing upright."},
        {"role": "user", "content": [{"type": "text", "text": "Say it twice:"}, {"type": "audio", "audio": tone(0.7, 220)}]},
        {"role": "assistant", "content": "Twice: blue, blue."},
    ]


def trained_runs(labels: torch.Tensor) -> list[list[int]]:
    """The contiguous runs of trained (≠ -100) label ids."""
    runs, current = [], []
    for value in labels.tolist():
        if value == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(value)
    if current:
        runs.append(current)
    return runs


@pytest.mark.parametrize("flavour", ["phi", "chatml"])
def test_only_answers_and_their_eos_are_trained(flavour, tiny, tiny_chatml):
    processor = (tiny if flavour == "phi" else tiny_chatml).processor
    conversation = multi_turn_conversation()
    sample = processor.encode(conversation)
    runs = trained_runs(sample.labels)
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    assert len(runs) == len(answers)
    eos = processor.tokenizer.eos_token
    for run, answer in zip(runs, answers):
        decoded = processor.tokenizer.decode(run)
        assert decoded.strip() == answer + eos
        assert run[-1] == processor.tokenizer.eos_token_id  # the model learns to stop
    # Labels equal the inputs wherever they are trained (the shift happens inside the LM's loss).
    trained = sample.labels != IGNORE_INDEX
    assert torch.equal(sample.labels[trained], sample.input_ids[trained])


def test_phi_style_has_no_bos_and_pad_equals_eos(tiny):
    tok = tiny.processor.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    sample = tiny.processor.encode([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
    assert sample.input_ids[0].item() != tok.bos_token_id  # Phi-2 adds no BOS (bos = eos = <|endoftext|>)


def test_chatml_stops_on_im_end(tiny_chatml):
    processor = tiny_chatml.processor
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") in processor.stop_token_ids


def test_placeholders_expand_to_exact_counts_in_order(tiny):
    processor, config = tiny.processor, tiny.model.config
    sample = processor.encode(multi_turn_conversation())
    ids = sample.input_ids
    assert int((ids == config.image_token_id).sum()) == 2 * config.image_seq_length
    # 2.0 s → 200 mel frames → 100 encoder frames → ceil(100/8) = 13 tokens; 0.7 s → 70 → 35 → 5.
    assert int((ids == config.audio_token_id).sum()) == 13 + 5
    # Order of media runs in the prompt: image, audio, image, audio.
    kinds, previous = [], None
    for token in ids.tolist():
        kind = {config.image_token_id: "image", config.audio_token_id: "audio"}.get(token)
        if kind and kind != previous:
            kinds.append(kind)
        previous = kind
    assert kinds == ["image", "audio", "image", "audio"]
    assert sample.pixel_values.shape == (2, 3, config.image_size, config.image_size)
    assert sample.audio_clip_windows == [1, 1]


def test_media_images_first_puts_each_messages_media_first_in_their_own_order(tiny, monkeypatch):
    """A model served "images_first" gets one prompt whatever order the user sent the parts in; media keep
    their order within the message and across messages, so the features still match the placeholders."""
    processor = tiny.processor
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    clip = tone(0.5)
    sent = [{"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "image", "image": red},
                                         {"type": "text", "text": "with"}, {"type": "audio", "audio": clip},
                                         {"type": "image", "image": blue}]},
            {"role": "assistant", "content": "Two squares."},
            {"role": "user", "content": [{"type": "text", "text": "Which is red?"}, {"type": "image", "image": blue}]}]
    media_first = [{"role": "user", "content": [{"type": "image", "image": red}, {"type": "image", "image": blue},
                                                {"type": "text", "text": "Compare "}, {"type": "text", "text": "with"},
                                                {"type": "audio", "audio": clip}]},
                   sent[1],
                   {"role": "user", "content": [{"type": "image", "image": blue}, {"type": "text", "text": "Which is red?"}]}]
    as_given = processor.render(sent, True).text
    assert as_given.index("Compare") < as_given.index("<image>")

    monkeypatch.setattr(tiny.model.config, "media_placement", "images_first")
    assert processor.render(sent, True).text == processor.render(media_first, True).text != as_given
    placed, expected = processor.encode(sent, add_generation_prompt=True), processor.encode(media_first, add_generation_prompt=True)
    assert torch.equal(placed.input_ids, expected.input_ids)
    assert torch.equal(placed.pixel_values, expected.pixel_values)
    assert [p[0, 0, 0].item() > 0 for p in placed.pixel_values] == [True, False, False]  # red, then blue twice


def test_an_unknown_media_placement_is_refused(tiny, monkeypatch):
    monkeypatch.setattr(tiny.model.config, "media_placement", "after_text")
    with pytest.raises(ValueError, match="media_placement must be one of as_given, images_first"):
        tiny.processor.render([{"role": "user", "content": "hi"}], True)


def test_long_audio_is_split_into_30s_windows(tiny):
    windows = tiny.processor.audio_windows(np.zeros(16_000 * 65, dtype=np.float32))
    assert [w.shape[-1] for w in windows] == [3000, 3000, 500]


def test_model_rejects_placeholder_mismatch(tiny):
    from omniphi.model import PlaceholderMismatchError

    batch = tiny.processor(multi_turn_conversation()[:2], add_generation_prompt=True, with_labels=False)
    batch["pixel_values"] = torch.cat([batch["pixel_values"], batch["pixel_values"]])  # 2 images, 1 placeholder run
    with pytest.raises(PlaceholderMismatchError, match="image"):
        tiny.model(**batch)
    clip = {"role": "user", "content": [{"type": "audio", "audio": tone(1.0)}]}
    batch = tiny.processor([clip], add_generation_prompt=True, with_labels=False)
    keep = batch["input_ids"] != tiny.model.config.audio_token_id
    keep[0, (~keep[0]).nonzero()[0]] = True  # drop all but one audio placeholder
    batch["input_ids"] = batch["input_ids"][keep].unsqueeze(0)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    with pytest.raises(PlaceholderMismatchError, match="audio"):
        tiny.model(**batch)


def test_text_and_media_counts_must_agree(tiny):
    with pytest.raises(ValueError, match="placeholders"):
        tiny.processor.encode([{"role": "user", "content": "look: <image>"}], add_generation_prompt=True)


def test_collate_masks_from_lengths_not_pad_id(tiny):
    processor = tiny.processor
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    long = [{"role": "user", "content": "hello there, how are you"}, {"role": "assistant", "content": "fine, thank you"}]
    samples = [processor.encode(short), processor.encode(long)]
    batch = processor.collate(samples)
    n_short = len(samples[0].input_ids)
    assert batch["attention_mask"][0].tolist() == [1] * n_short + [0] * (batch["input_ids"].shape[1] - n_short)
    # EOS (== pad id) inside the sample is attended to and trained.
    eos = processor.tokenizer.eos_token_id
    eos_positions = (samples[0].input_ids == eos).nonzero().flatten()
    assert len(eos_positions) and all(batch["attention_mask"][0, p] == 1 for p in eos_positions)
    assert batch["labels"][0, eos_positions[-1]] == eos
    left = processor.collate(samples, padding_side="left")
    assert left["attention_mask"][0, -1] == 1 and left["attention_mask"][0, 0] == 0


def test_truncation_never_cuts_media(tiny):
    processor = tiny.processor
    conversation = multi_turn_conversation()[:3]
    ids = processor.encode(conversation).input_ids
    full = len(ids)
    first_image = int((ids == tiny.model.config.image_token_id).nonzero()[0])
    with pytest.raises(SampleTooLongError, match="cut through"):
        processor.encode(conversation, max_length=first_image + 2)  # inside the image's run
    truncated = processor.encode(conversation, max_length=full - 1)
    assert len(truncated.input_ids) == full - 1


def test_label_mismatch_is_an_error_not_a_silent_mask(tiny, monkeypatch):
    from omniphi import templates

    def broken(messages, tokenizer, image_token, audio_token, add_generation_prompt):
        rendered = templates.llava_phi(messages, tokenizer, image_token, audio_token, add_generation_prompt)
        return templates.RenderedPrompt(rendered.text, [(len(rendered.text) + 5, len(rendered.text) + 9)])

    monkeypatch.setitem(templates.TEMPLATES, "llava-phi", broken)
    with pytest.raises(LabelMaskError):
        tiny.processor.encode([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])


def test_pad_to_square_keeps_the_whole_image():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = pad_to_square(image, (1, 2, 3))
    assert square.size == (40, 40)
    assert square.getpixel((20, 20)) == (255, 0, 0) and square.getpixel((20, 2)) == (1, 2, 3)


def test_image_preprocessing_matches_clip_processor_on_square_images(tiny):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    config = tiny.model.config
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    reference = CLIPImageProcessorPil(size={"shortest_edge": config.image_size},
                                      crop_size={"height": config.image_size, "width": config.image_size},
                                      image_mean=config.image_mean, image_std=config.image_std)
    expected = reference(image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(tiny.processor.preprocess_image(image), expected, atol=0.05)
