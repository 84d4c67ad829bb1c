"""Small byte-level BPE tokenizers built in-process, for the `tiny` preset and tests.

Two flavours reproduce the traits of the real tokenizers that matter for label masking:
- "phi":    GPT-2/CodeGen style like Phi-2: no BOS is added, pad = eos = unk = <|endoftext|>, no chat template.
- "chatml": like SmolLM2-Instruct: ChatML chat template, eos = <|im_end|>.
Built deterministically from a fixed corpus in well under a second, so nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: A red circle on the left and a blue square on the right.",
    "What colour is the circle? Red. What shape is the blue object? Square. How many shapes are there? Three.",
    "Where is the green triangle? At the top. Is there a yellow star? Yes. No.",
    "What is the capital of France? The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog. Transcribe the audio.",
    "Hello, how are you today? I am fine, thank you. Describe the picture in detail.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 def main(): return x + y",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@lru_cache(maxsize=None)
def _trained(flavour: str) -> str:
    specials = ["<|endoftext|>"] if flavour == "phi" else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return tok.to_str()


def build_tiny_tokenizer(flavour: str = "phi") -> PreTrainedTokenizerFast:
    if flavour not in ("phi", "chatml"):
        raise ValueError(f"unknown tiny tokenizer flavour {flavour!r}")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained(flavour)))
    if flavour == "phi":
        tok.add_special_tokens({"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
        tok.pad_token = tok.eos_token
    else:
        tok.add_special_tokens({"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "pad_token": "<|endoftext|>"})
        tok.chat_template = CHATML_TEMPLATE
    return tok
