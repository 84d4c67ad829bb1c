"""Prompt trimming: omniphi.trimming.fit_prompt vs the loop it replaced (drop the two oldest turns,
re-encode everything, repeat), on the starter's processor and context, same conversations, same run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/prompt_trimming.py [--messages 500 1000 2000]

Each conversation is N one-character messages (alternating user/assistant, ending with a user
message): the shape of issue #13's small request that tied the model up for minutes. Prints the
seconds of each, their ratio, and checks that both keep the same number of tokens or fewer.
"""

import argparse
import time

from omniphi.runtime.loading import load_weights
from omniphi.trimming import fit_prompt


def old_trimming(processor, messages, budget):
    """The replaced Assistant._encode_prompt, verbatim in behaviour (quadratic in the messages)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    while True:
        sample = processor.encode(system + turns, add_generation_prompt=True, with_labels=False)
        if len(sample.input_ids) < budget or len(turns) <= 1:
            break
        turns = turns[2:] if len(turns) > 2 else turns[-1:]
    return sample


def conversation(n: int) -> list:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": str(i % 10)} for i in range(n - (n % 2 == 0))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, nargs="+", default=[500, 1000, 2000])
    args = parser.parse_args()
    loaded = load_weights("starter")
    processor = loaded.processor
    budget = loaded.model.config.text_config.max_position_embeddings
    print(f"context {budget} tokens")
    for n in args.messages:
        messages = conversation(n)
        start = time.perf_counter()
        new = fit_prompt(processor, messages, budget)
        t_new = time.perf_counter() - start
        start = time.perf_counter()
        old = old_trimming(processor, messages, budget)
        t_old = time.perf_counter() - start
        assert len(new.input_ids) < budget and len(old.input_ids) < budget
        print(f"{len(messages):>6} messages: old {t_old:8.3f} s ({len(old.input_ids)} tokens kept), "
              f"new {t_new:6.3f} s ({len(new.input_ids)} tokens kept), old/new {t_old / t_new:7.1f}x")


if __name__ == "__main__":
    main()
