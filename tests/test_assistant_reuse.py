"""Reuse across turns and batched decoding give the same greedy answers as a cold, one-at-a-time run
(random tiny model; a slow test repeats the reuse check on the starter)."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from omniphi.chat import GenerationSettings, Token
from omniphi.runtime.assistant import Assistant
from tests.conftest import tone

GREEDY = GenerationSettings(max_new_tokens=12)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))


def user(*parts):
    content = [{"type": "text", "text": p} if isinstance(p, str) else
               {"type": "image", "image": p} if isinstance(p, Image.Image) else {"type": "audio", "audio": p}
               for p in parts]
    return {"role": "user", "content": content}


def cold(loaded, messages, settings=GREEDY):
    return Assistant(loaded).complete(messages, settings)


def history_with_media():
    first = [user(picture(1), "What is in this picture?")]
    return first, [user(tone(0.7, 330.0), "And this sound?")]


def test_follow_up_reuses_the_prefix_and_answers_like_a_cold_run(tiny):
    warm = Assistant(tiny)
    first, second = history_with_media()
    answer = warm.complete(first, GREEDY)
    assert answer.text == cold(tiny, first).text
    follow_up = first + [{"role": "assistant", "content": answer.text}] + second
    sequence = warm.begin(follow_up, GREEDY)
    warm.prefill(sequence)
    assert sequence.reused_tokens > tiny.processor.image_seq_length  # the image and the first question
    encoded = warm.media_cache.bytes
    again = warm.complete(follow_up, GREEDY)
    assert again.text == cold(tiny, follow_up).text
    assert warm.media_cache.bytes == encoded  # nothing was encoded again


def test_a_different_image_at_the_same_position_is_not_reused(tiny):
    warm = Assistant(tiny)
    question = "Describe it."
    warm.complete([user(picture(1), question)], GREEDY)
    other = [user(picture(2), question)]
    sequence = warm.begin(other, GREEDY)
    warm.prefill(sequence)
    image_start = sequence.prompt_keys.index(next(k for k in sequence.prompt_keys if isinstance(k, str)))
    assert sequence.reused_tokens <= image_start  # same placeholder ids, different picture
    assert warm.complete(other, GREEDY).text == cold(tiny, other).text


def test_regenerate_and_edited_message_reuse_what_they_share(tiny):
    warm = Assistant(tiny)
    base = [{"role": "system", "content": "Be brief."}, user(picture(3), "Name three colours in this image please.")]
    warm.complete(base, GREEDY)
    regenerate = warm.begin(base, GREEDY)
    warm.prefill(regenerate)
    assert regenerate.reused_tokens == regenerate.prompt_tokens - 1
    edited = base[:1] + [user(picture(3), "Name two shapes in this image please.")]
    sequence = warm.begin(edited, GREEDY)
    warm.prefill(sequence)
    assert tiny.processor.image_seq_length < sequence.reused_tokens < sequence.prompt_tokens - 1
    assert warm.complete(edited, GREEDY).text == cold(tiny, edited).text


def test_answers_after_eviction_equal_cold_runs(tiny):
    one_prefix = Assistant(tiny, kv_cache_bytes=1)  # nothing fits: every turn is cold
    small = Assistant(tiny, kv_cache_bytes=60_000, media_cache_bytes=5_000)  # a few entries at most
    conversations = [[user(picture(seed), f"Question {seed}?")] for seed in range(6)]
    for messages in conversations + conversations[::-1]:
        expected = one_prefix.complete(messages, GREEDY).text
        assert small.complete(messages, GREEDY).text == expected
    assert small.prefix_cache.bytes <= 60_000 and small.media_cache.bytes <= 5_000
    assert len(one_prefix.prefix_cache) == 0


def test_a_finished_answer_is_cached_without_a_copy_and_counted_with_its_spare_room(tiny):
    assistant = Assistant(tiny)
    messages = [user("Hi!")]
    answer = assistant.complete(messages, GREEDY)
    (entry, _), = assistant.prefix_cache._entries.values()
    keys, values = entry.layers[0]
    length = len(entry.keys)
    assert keys.shape[2] == length
    # a view of the batch's grown buffer (room for more positions), not a fresh copy ...
    assert keys.untyped_storage().nbytes() > keys.numel() * keys.element_size()
    # ... and the cache counts the whole buffers it keeps alive
    assert assistant.prefix_cache.bytes == sum(t.untyped_storage().nbytes() for kv in entry.layers for t in kv)
    follow_up = messages + [{"role": "assistant", "content": answer.text}, user("And then?")]
    assert assistant.complete(follow_up, GREEDY).text == cold(tiny, follow_up).text


def test_batched_greedy_equals_one_at_a_time(tiny):
    assistant = Assistant(tiny, kv_cache_bytes=0)
    conversations = [
        [user("Hi!")],
        [user(picture(4), "What is this, in a few words? Tell me more about it.")],
        [user(tone(0.5), "Listen.")],
        [{"role": "system", "content": "You are terse."}, user("Count to five.")],
    ]
    settings = GenerationSettings(max_new_tokens=10)
    alone = [assistant.complete(c, settings) for c in conversations]
    together = assistant.complete_batch(conversations, settings)
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert np.allclose([p for r in together for p in r.logprobs], [p for r in alone for p in r.logprobs], atol=1e-4)


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_a_quantised_model_answers_alike_batched_reused_and_cold(quantize):
    """ONNX Runtime's kernels quantise each row's activations on their own, and decode steps run with one
    torch thread: neither may make an answer depend on its neighbours in the batch or on the cache."""
    from omniphi import runtime

    quantised = runtime.load("tiny", quantize=quantize)
    assistant = Assistant(quantised, kv_cache_bytes=0)
    conversations = [[user("Hi!")], [user(picture(4), "What is this, in a few words?")], [user(tone(0.5), "Listen.")]]
    settings = GenerationSettings(max_new_tokens=10)
    alone = [assistant.complete(c, settings) for c in conversations]
    together = assistant.complete_batch(conversations, settings)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    warm = Assistant(quantised)
    first = conversations[1]
    answer = warm.complete(first, settings)
    follow_up = first + [{"role": "assistant", "content": answer.text}, user("And then?")]
    assert warm.complete(follow_up, settings).token_ids == cold(quantised, follow_up, settings).token_ids


def test_a_member_that_joins_late_decodes_like_it_would_alone(tiny):
    assistant = Assistant(tiny, kv_cache_bytes=0)
    long = [user(picture(5), "A long question about the picture, with many words in it.")]
    short = [user("Short?")]
    settings = GenerationSettings(max_new_tokens=8, stop=[])
    expected = {id(long): assistant.complete(long, settings).token_ids, id(short): assistant.complete(short, settings).token_ids}
    batch = assistant.new_batch()
    first = assistant.begin(short, settings, ignore_eos=True)
    assistant.prefill(first)
    batch.add(first)
    batch.step()
    batch.step()
    second = assistant.begin(long, settings, ignore_eos=True)
    assistant.prefill(second)
    batch.add(second)  # longer than the batch: the running row gets left padding
    while len(batch):
        batch.step()
    for sequence, messages in ((first, short), (second, long)):
        n = len(sequence.token_ids)
        assert expected[id(messages)][:n] == sequence.token_ids[: len(expected[id(messages)])]


def test_a_cancelled_member_stops_within_a_token_and_the_others_continue(tiny):
    assistant = Assistant(tiny, kv_cache_bytes=0)
    settings = GenerationSettings(max_new_tokens=20)
    cancel = threading.Event()
    members = [assistant.begin([user(f"Tell me story number {i}.")], settings, ignore_eos=True,
                               cancel=cancel if i == 1 else None) for i in range(3)]
    batch = assistant.new_batch()
    for sequence in members:
        assistant.prefill(sequence)
        batch.add(sequence)
    batch.step()
    cancel.set()
    produced = len(members[1].token_ids)
    batch.step()
    assert members[1].finish_reason == "cancelled" and len(members[1].token_ids) == produced
    while len(batch):
        batch.step()
    assert [m.finish_reason for m in members] == ["length", "cancelled", "length"]
    assert len(members[0].token_ids) == len(members[2].token_ids) == 20


def test_each_member_keeps_its_own_sampling_settings(tiny):
    assistant = Assistant(tiny, kv_cache_bytes=0)
    question = [user("Say something.")]
    greedy = GenerationSettings(max_new_tokens=10)
    hot = GenerationSettings(max_new_tokens=10, temperature=1.5, seed=7)
    nucleus = GenerationSettings(max_new_tokens=10, temperature=1.0, top_p=0.5, seed=7)
    alone = [assistant.complete(question, s, ignore_eos=True).token_ids for s in (greedy, hot, nucleus)]
    members = [assistant.begin(question, s, ignore_eos=True) for s in (greedy, hot, nucleus)]
    assistant._run(members)
    assert [m.token_ids for m in members] == alone
    assert alone[0] != alone[1]  # the sampled member really sampled


def test_token_logprobs_match_the_decoder(tiny):
    assistant = Assistant(tiny)
    reply = assistant.complete([user("Hello")], GenerationSettings(max_new_tokens=5), ignore_eos=True)
    prompt = assistant.processor.encode([user("Hello")], add_generation_prompt=True, with_labels=False).input_ids.tolist()
    scored = assistant.token_logprobs(prompt + reply.token_ids)
    assert torch.allclose(scored[-5:], torch.tensor(reply.logprobs), atol=1e-4)
    assert bool((scored <= 0).all())


@pytest.mark.slow
def test_starter_follow_up_with_image_and_audio_equals_a_cold_run(starter_assistant):
    from omniphi.runtime.loading import load_weights

    warm = Assistant(load_weights("starter"))
    first = [user(picture(8), "What colour is the shape?")]
    answer = warm.complete(first, GREEDY)
    follow_up = first + [{"role": "assistant", "content": answer.text}, user(tone(1.0), "What did you hear?")]
    sequence = warm.begin(follow_up, GREEDY)
    warm.prefill(sequence)
    assert sequence.reused_tokens > warm.processor.image_seq_length
    assert warm.complete(follow_up, GREEDY).text == starter_assistant.complete(follow_up, GREEDY).text
