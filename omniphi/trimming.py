"""Fitting a conversation into the model's context: keep the system message and the newest turns.

The work is linear in the conversation: a conversation that fits is encoded once; one that does not
is then measured newest turn first, each turn once, stopping at the first that no longer fits, so
the rest costs what the context holds. (The old way re-encoded the whole conversation after dropping
each pair of turns: quadratic in the request's size; bench/prompt_trimming.py compares them.)

Turns are kept and dropped by exchange (a user message and the answers after it), so the kept
prompt never starts with an orphaned answer. `cancel` (the engine sets it on Stop, disconnect and
at the request's deadline) is checked between turns.
"""

from __future__ import annotations

import threading

from omniphi.chat import Conversation
from omniphi.processing import EncodedSample, OmniProcessor, SampleTooLongError


class PromptCancelled(Exception):
    """`cancel` was set while the prompt was being fitted; nothing was generated."""


def exchanges(turns: Conversation) -> list[Conversation]:
    """Split turns (no system message) into exchanges, each starting at a user message; answers
    before the first user message form an exchange of their own."""
    groups: list[Conversation] = []
    for message in turns:
        if message["role"] == "user" or not groups:
            groups.append([message])
        else:
            groups[-1].append(message)
    return groups


def fit_prompt(processor: OmniProcessor, messages: Conversation, budget: int,
               cancel: threading.Event | None = None) -> EncodedSample:
    """The prompt (with the generation prompt) of the system message plus the newest exchanges
    whose tokens total less than `budget`. Raises SampleTooLongError if even the newest exchange
    does not fit, PromptCancelled if `cancel` is set meanwhile."""

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise PromptCancelled("cancelled while preparing the prompt")

    def encode(conversation: Conversation, generation_prompt: bool) -> EncodedSample:
        check_cancel()
        return processor.encode(conversation, add_generation_prompt=generation_prompt, with_labels=False)

    # The common case, a conversation that fits: one encode, as without trimming.
    whole = encode(messages, True)
    if len(whole.input_ids) < budget:
        return whole
    system = [m for m in messages[:1] if m["role"] == "system"]
    groups = exchanges(messages[len(system):])
    if not groups:
        raise SampleTooLongError(f"the prompt has {len(whole.input_ids)} tokens; the model's context is {budget}")
    # The newest exchange with the system message and the generation prompt: measured exactly.
    newest = encode(system + groups[-1], True)
    used = len(newest.input_ids)
    if used >= budget:
        raise SampleTooLongError(f"the prompt has {used} tokens; the model's context is {budget}")
    # Older exchanges, newest first, each measured alone once, less what the template adds to any
    # conversation (a default system prompt, BOS); stop at the first that does not fit.
    first = len(groups) - 1
    preamble = _template_preamble(encode) if first > 0 else 0
    while first > 0:
        cost = len(encode(groups[first - 1], False).input_ids) - preamble
        if used + cost >= budget:
            break
        used += cost
        first -= 1
    # One encode of the result. Tokens can merge across a turn boundary, so the estimate may be off
    # by a few tokens: drop the oldest kept exchange until the exact count fits (rare, and bounded
    # by the number of kept exchanges, which the context bounds).
    while first < len(groups) - 1:
        sample = encode(system + [m for group in groups[first:] for m in group], True)
        if len(sample.input_ids) < budget:
            return sample
        first += 1
    return newest


_PROBE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]


def _template_preamble(encode) -> int:
    """Tokens the chat template puts around any conversation: an exchange encoded twice in one
    conversation costs two exchanges plus one preamble."""
    once = len(encode(_PROBE, False).input_ids)
    return max(0, 2 * once - len(encode(_PROBE + _PROBE, False).input_ids))
