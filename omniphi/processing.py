"""OmniProcessor: conversations → model inputs (tokens, labels, pixels, log-mel windows).

One code path for training and inference, so that the prompt format, the image padding and the
placeholder counts cannot drift apart between the two:

1. the chat template renders the conversation to text with one `<image>`/`<audio>` placeholder per
   media part and reports the character spans of the assistant answers (+ their end-of-turn token);
2. the tokenizer tokenises it once with offsets; tokens inside answer spans keep their id as label,
   every other token is -100 (a span with no token left is an error, never a silently masked sample);
3. each placeholder token is expanded to exactly as many copies as the model will produce embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, WhisperFeatureExtractor

from omniphi.chat import Conversation, content_parts
from omniphi.config import OmniConfig
from omniphi.errors import UserError
from omniphi.model.audio_encoder import MEL_FRAMES_PER_WINDOW, audio_token_count
from omniphi.templates import (TEMPLATES, RenderedPrompt, check_media_placement, end_of_turn_token, place_media,
                               resolve_template_name)

IGNORE_INDEX = -100
SAMPLING_RATE = 16_000
SAMPLES_PER_MEL_FRAME = 160  # 10 ms hop
WINDOW_SAMPLES = MEL_FRAMES_PER_WINDOW * SAMPLES_PER_MEL_FRAME  # 30 s
MIN_AUDIO_SAMPLES = 1_600  # 0.1 s: shorter clips are zero-padded so they give at least one token
PROCESSOR_FILE = "omniphi_processor.json"


class SampleTooLongError(UserError, ValueError):
    """The sample does not fit max_length without cutting through media or dropping every answer."""


class LabelMaskError(ValueError):
    """An assistant answer ended up with no trained token (a tokenisation mismatch)."""


@dataclass
class EncodedSample:
    input_ids: torch.Tensor  # [L]
    labels: torch.Tensor | None  # [L]
    pixel_values: torch.Tensor  # [n_images, 3, S, S]
    audio_windows: list[torch.Tensor] = field(default_factory=list)  # each [n_mels, frames]
    audio_clip_windows: list[int] = field(default_factory=list)  # windows per clip, in order


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA's `pad` aspect mode: centre the image on a square of the mean colour, no cropping."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def pad_audio_windows(windows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel windows [n_mels, frames] → zero-padded [W, n_mels, longest] and their real frame counts [W]."""
    lengths = torch.tensor([w.shape[-1] for w in windows], dtype=torch.long)
    padded = torch.zeros(len(windows), windows[0].shape[0], int(lengths.max()))
    for i, w in enumerate(windows):
        padded[i, :, : w.shape[-1]] = w
    return padded, lengths


class OmniProcessor:
    def __init__(self, tokenizer, config: OmniConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.template = resolve_template_name(config.chat_template_name, tokenizer)
        check_media_placement(config.media_placement)
        self.image_token, self.audio_token = config.image_token, config.audio_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(self.audio_token)
        if self.image_token_id != config.image_token_id or self.audio_token_id != config.audio_token_id:
            raise ValueError(
                f"tokenizer and config disagree on placeholder ids: tokenizer {self.image_token_id}/{self.audio_token_id}, "
                f"config {config.image_token_id}/{config.audio_token_id}"
            )
        self.image_seq_length = config.image_seq_length
        self.feature_extractor = None
        if config.audio_config is not None:
            self.feature_extractor = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_token_ids = self._stop_token_ids()

    # -- tokens -----------------------------------------------------------------------------------
    @staticmethod
    def add_placeholder_tokens(tokenizer, image_token: str = "<image>", audio_token: str = "<audio>") -> None:
        """Register the placeholders as special tokens (one id each, never split)."""
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token, audio_token]}, replace_extra_special_tokens=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # Phi-2/GPT-2 style; masks come from lengths, never from this id

    def _stop_token_ids(self) -> list[int]:
        """EOS plus the template's end-of-turn token: generation stops on either."""
        answer = "ok"
        rendered = self.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}], False)
        start, end = rendered.answer_spans[-1]
        answer_end = rendered.text.rindex(answer, start, end) + len(answer)
        end_of_turn = end_of_turn_token(self.tokenizer, rendered.text, answer_end)
        ids = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids(end_of_turn)}
        return sorted(i for i in ids if i is not None)

    def render(self, messages: Conversation, add_generation_prompt: bool) -> RenderedPrompt:
        messages = place_media(messages, self.config.media_placement)
        return TEMPLATES[self.template](messages, self.tokenizer, self.image_token, self.audio_token, add_generation_prompt)

    # -- media --------------------------------------------------------------------------------------
    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """Pad to square with the mean colour, resize to the tower's size, normalise → [3, S, S]."""
        size = self.config.image_size
        mean = np.asarray(self.config.image_mean, dtype=np.float32)
        std = np.asarray(self.config.image_std, dtype=np.float32)
        fill = tuple(int(round(m * 255)) for m in self.config.image_mean)
        image = pad_to_square(image.convert("RGB"), fill).resize((size, size), Image.Resampling.BICUBIC)
        pixels = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy())

    def clip_windows(self, clips: list[np.ndarray]) -> tuple[list[torch.Tensor], list[int], list[int]]:
        """Several clips' log-mel windows, one list, with each clip's number of windows and of audio
        tokens (what its `<audio>` expands to)."""
        windows, windows_per_clip, tokens_per_clip = [], [], []
        for clip in clips:
            clip_windows = self.audio_windows(clip)
            windows += clip_windows
            windows_per_clip.append(len(clip_windows))
            tokens_per_clip.append(audio_token_count([w.shape[-1] for w in clip_windows], self.config.audio_stack_factor))
        return windows, windows_per_clip, tokens_per_clip

    def audio_windows(self, audio: np.ndarray) -> list[torch.Tensor]:
        """16 kHz mono → log-mel windows of at most 30 s, each at its real length [n_mels, frames]."""
        if self.feature_extractor is None:
            raise ValueError("this model has no audio tower, it cannot take audio")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size < MIN_AUDIO_SAMPLES:
            audio = np.pad(audio, (0, MIN_AUDIO_SAMPLES - audio.size))
        windows = []
        for start in range(0, audio.size, WINDOW_SAMPLES):
            chunk = audio[start : start + WINDOW_SAMPLES]
            if chunk.size < MIN_AUDIO_SAMPLES:  # a sliver past a 30 s boundary: pad it
                chunk = np.pad(chunk, (0, MIN_AUDIO_SAMPLES - chunk.size))
            features = self.feature_extractor(
                chunk, sampling_rate=SAMPLING_RATE, padding="longest", truncation=False, return_tensors="np"
            ).input_features[0]
            frames = min(chunk.size // SAMPLES_PER_MEL_FRAME, MEL_FRAMES_PER_WINDOW)
            windows.append(torch.from_numpy(features[:, :frames].copy()))
        return windows

    # -- one sample ---------------------------------------------------------------------------------
    def encode(
        self,
        messages: Conversation,
        *,
        add_generation_prompt: bool = False,
        with_labels: bool = True,
        max_length: int | None = None,
    ) -> EncodedSample:
        rendered = self.render(messages, add_generation_prompt)
        encoding = self.tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoding["input_ids"]), list(encoding["offset_mapping"])
        if self._wants_bos() and (not ids or ids[0] != self.tokenizer.bos_token_id):
            ids, offsets = [self.tokenizer.bos_token_id] + ids, [(0, 0)] + offsets

        labels = [IGNORE_INDEX] * len(ids)
        if with_labels:
            for span_start, span_end in rendered.answer_spans:
                hit = False
                for i, (tok_start, tok_end) in enumerate(offsets):
                    if tok_start < span_end and tok_end > span_start:
                        labels[i] = ids[i]
                        hit = True
                if not hit:
                    raise LabelMaskError(f"answer at characters {span_start}-{span_end} got no tokens (tokenisation mismatch)")

        images = [p["image"] for m in messages for p in content_parts(m) if p["type"] == "image"]
        clips = [p["audio"] for m in messages for p in content_parts(m) if p["type"] == "audio"]
        pixel_values = (
            torch.stack([self.preprocess_image(img) for img in images])
            if images
            else torch.zeros(0, 3, self.config.image_size or 1, self.config.image_size or 1)
        )
        audio_windows, clip_windows, audio_counts = self.clip_windows(clips)
        ids, labels = self._expand_placeholders(ids, labels, len(images), audio_counts)
        if max_length is not None and len(ids) > max_length:
            ids, labels = self._truncate(ids, labels, max_length, with_labels)
        return EncodedSample(
            input_ids=torch.tensor(ids, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long) if with_labels else None,
            pixel_values=pixel_values,
            audio_windows=audio_windows,
            audio_clip_windows=clip_windows,
        )

    def _wants_bos(self) -> bool:
        """Prepend BOS only where the tokenizer itself would (Llama does; Phi-2 and ChatML don't)."""
        bos = self.tokenizer.bos_token_id
        if bos is None or self.template == "tokenizer":  # chat templates write their own BOS
            return False
        probe = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return bool(probe) and probe[0] == bos

    def _expand_placeholders(self, ids, labels, n_images, audio_counts):
        n_image_tokens = ids.count(self.image_token_id)
        n_audio_tokens = ids.count(self.audio_token_id)
        if n_image_tokens != n_images or n_audio_tokens != len(audio_counts):
            raise ValueError(
                f"the text has {n_image_tokens} {self.image_token} and {n_audio_tokens} {self.audio_token} "
                f"placeholders but the conversation has {n_images} images and {len(audio_counts)} audio clips"
            )
        out_ids, out_labels, audio_index = [], [], 0
        for token, label in zip(ids, labels):
            if token == self.image_token_id:
                repeat = self.image_seq_length
            elif token == self.audio_token_id:
                repeat = audio_counts[audio_index]
                audio_index += 1
            else:
                out_ids.append(token)
                out_labels.append(label)
                continue
            out_ids += [token] * repeat
            out_labels += [IGNORE_INDEX] * repeat
        return out_ids, out_labels

    def _truncate(self, ids, labels, max_length, with_labels):
        media = {self.image_token_id, self.audio_token_id}
        if any(t in media for t in ids[max_length:]):
            raise SampleTooLongError(f"{len(ids)} tokens; cutting at {max_length} would cut through an image or audio clip")
        ids, labels = ids[:max_length], labels[:max_length]
        if with_labels and all(l == IGNORE_INDEX for l in labels):
            raise SampleTooLongError(f"cutting at {max_length} tokens leaves no answer to train on")
        return ids, labels

    # -- batches --------------------------------------------------------------------------------------
    def collate(self, samples: list[EncodedSample], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad to the longest sample. The attention mask comes from the lengths, never from the pad id
        (pad = eos for Phi-2: masking by id would hide every EOS and the model would never learn to stop)."""
        longest = max(len(s.input_ids) for s in samples)
        batch_ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(samples), longest), dtype=torch.long)
        with_labels = all(s.labels is not None for s in samples)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long) if with_labels else None
        for row, sample in enumerate(samples):
            n = len(sample.input_ids)
            cols = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
            batch_ids[row, cols] = sample.input_ids
            mask[row, cols] = 1
            if labels is not None:
                labels[row, cols] = sample.labels
        batch = {"input_ids": batch_ids, "attention_mask": mask}
        if labels is not None:
            batch["labels"] = labels
        pixel_values = [s.pixel_values for s in samples if s.pixel_values.shape[0]]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values)
        windows = [w for s in samples for w in s.audio_windows]
        if windows:
            batch["audio_features"], batch["audio_feature_lengths"] = pad_audio_windows(windows)
            batch["audio_clip_windows"] = torch.tensor([n for s in samples for n in s.audio_clip_windows], dtype=torch.long)
        return batch

    def __call__(self, conversations, *, add_generation_prompt: bool = False, with_labels: bool = True,
                 padding_side: str = "right", max_length: int | None = None) -> dict[str, torch.Tensor]:
        """One conversation or a list of them → a padded batch."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        samples = [
            self.encode(c, add_generation_prompt=add_generation_prompt, with_labels=with_labels, max_length=max_length)
            for c in conversations
        ]
        return self.collate(samples, padding_side)

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, **kwargs)

    # -- persistence ------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        (directory / PROCESSOR_FILE).write_text(json.dumps({"template": self.template}, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: OmniConfig | None = None) -> "OmniProcessor":
        directory = Path(directory)
        config = config or OmniConfig.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(tokenizer, config)

