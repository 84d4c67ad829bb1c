import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from omniphi.data.skipping import SkipCounter, Skipped
from omniphi.processing import IGNORE_INDEX, LabelMaskError
from omniphi.train.collator import (
    LABEL_MISMATCH, TOO_LONG, EncodingDataset, LengthGroupedSampler, encode_text, estimate_lengths,
    training_pipeline,
)

RED = Image.new("RGB", (40, 30), (220, 30, 30))


def qa(question, answer, image=True, sid="s"):
    content = ([{"type": "image", "image": RED}] if image else []) + [{"type": "text", "text": question}]
    return {"id": sid, "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]}


def test_padding_and_masks_come_from_lengths_and_keep_eos(tiny):
    processor = tiny.processor
    eos = processor.tokenizer.eos_token_id
    assert processor.pad_token_id == eos  # the Phi-2 trap the mask must survive
    items = [qa("What colour?", "Red.", sid="short"), qa("What colour is the shape on the left side?", "A red circle.", sid="long")]
    dataset, collate = training_pipeline(items, processor, max_length=512)
    batch = collate([dataset[0], dataset[1]])
    assert batch.pop("skipped") == []
    lengths = [len(processor.encode(item["messages"]).input_ids) for item in items]
    assert batch["input_ids"].shape == (2, max(lengths))  # dynamic: padded to the longest, not max_length
    assert batch["attention_mask"].sum(1).tolist() == lengths
    short = batch["attention_mask"][0].bool()
    # The short sample's last real token is EOS (= pad id) and is attended to and trained.
    assert batch["input_ids"][0, lengths[0] - 1] == eos and short[lengths[0] - 1]
    assert batch["labels"][0, lengths[0] - 1] == eos
    assert (batch["labels"][0, ~short] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape[0] == 2


def test_plain_text_trains_every_token_and_ends_with_eos(tiny):
    sample = encode_text(tiny.processor, "The quick brown fox.", max_length=64)
    assert torch.equal(sample.input_ids, sample.labels)
    assert sample.input_ids[-1] == tiny.processor.tokenizer.eos_token_id
    assert len(encode_text(tiny.processor, "The quick brown fox. " * 50, max_length=16).input_ids) == 16


def test_too_long_samples_are_dropped_and_counted_never_cut_through_media(tiny):
    long_question = "Describe the picture in detail. " * 40
    items = [
        qa("What colour?", "Red.", sid="ok-1"),
        # the image comes after a long text: cutting at max_length would cut through its placeholders
        {"id": "media-cut", "messages": [
            {"role": "user", "content": [{"type": "text", "text": long_question}, {"type": "image", "image": RED}]},
            {"role": "assistant", "content": "Red."}]},
        qa("What shape?", "Circle.", sid="ok-2"),
        qa(long_question, "Red.", sid="no-answer-left"),  # the answer would be cut off entirely
    ]
    max_length = 120
    encoded = EncodingDataset(items, tiny.processor, max_length)
    assert isinstance(encoded[1], Skipped) and encoded[1].reason == TOO_LONG
    assert "cut through an image" in encoded[1].detail
    assert isinstance(encoded[3], Skipped) and encoded[3].reason == TOO_LONG
    dataset, collate = training_pipeline(items, tiny.processor, max_length)
    counter = SkipCounter(log=False)
    seen = []
    for batch in counter.iterate(DataLoader(dataset, batch_size=2, collate_fn=collate, shuffle=False)):
        assert batch["input_ids"].shape[0] == 2  # substituted, not shrunk
        assert batch["input_ids"].shape[1] <= max_length
        seen.append(batch)
    assert counter.counts[TOO_LONG] == 2
    assert sorted(counter.ids[TOO_LONG]) == ["media-cut", "no-answer-left"]


def test_label_mismatch_is_a_counted_skip(tiny):
    class Mismatching:
        """The processor, except one sample's answer loses its tokens (as a bad template would)."""

        def __init__(self, processor):
            self.processor = processor

        def encode(self, messages, max_length=None):
            if messages[-1]["content"] == "BROKEN":
                raise LabelMaskError("answer got no tokens")
            return self.processor.encode(messages, max_length=max_length)

    items = [qa("a?", "Red."), qa("b?", "BROKEN", sid="broken"), qa("c?", "Blue.")]
    dataset = EncodingDataset(items, Mismatching(tiny.processor), 256)
    assert dataset[1] == Skipped("broken", LABEL_MISMATCH, "answer got no tokens", 1)
    assert "encoded" in dataset[0] and "encoded" in dataset[2]


def test_length_grouped_sampler_is_seeded_per_epoch_and_groups():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=200).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=3, mega_batch_mult=5)
    first = list(sampler)
    assert sorted(first) == list(range(200))
    assert list(sampler) == first  # same epoch, same order: a resumed run skips into the same sequence
    sampler.set_epoch(1)
    assert list(sampler) != first
    # Less padding than a random order.
    def padded(order):
        return sum(max(lengths[i] for i in order[k:k + 4]) * 4 for k in range(0, 200, 4))
    random_order = torch.randperm(200, generator=torch.Generator().manual_seed(0)).tolist()
    assert padded(first) < 0.8 * padded(random_order)
    assert max(lengths[i] for i in first[:4]) == max(lengths)  # the longest batch first: OOM shows at once


@pytest.mark.parametrize("seed", range(4))
def test_length_grouped_batches_are_not_swept_longest_to_shortest(seed):
    # Sorted mega-batches would hand out long batches, then ever shorter ones, every few steps; the
    # batches are shuffled so each stretch of training mixes lengths (only the first is pinned).
    lengths = np.random.default_rng(seed).integers(5, 500, size=1000).tolist()
    order = list(LengthGroupedSampler(lengths, batch_size=4, seed=seed, mega_batch_mult=5))
    longest_per_batch = [max(lengths[i] for i in order[k:k + 4]) for k in range(4, 1000, 4)]
    falls = sum(a > b for a, b in zip(longest_per_batch, longest_per_batch[1:]))
    assert falls / (len(longest_per_batch) - 1) < 0.65  # sorted mega-batches fall ~80 % of the time


def test_length_estimates_follow_the_data(shapes, text_corpus, tiny):
    from omniphi.data.llava import LlavaDataset
    from omniphi.data.text import TextDataset

    captions = LlavaDataset(shapes / "captions.json", mode="plain")
    estimates = estimate_lengths(training_pipeline(captions, tiny.processor, 256)[0], image_tokens=576)
    assert len(estimates) == len(captions) and min(estimates) > 576
    text = estimate_lengths(TextDataset(text_corpus), image_tokens=576)
    assert len(text) == 4 and max(text) < 100
