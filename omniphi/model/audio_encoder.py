"""Run Whisper's encoder on the clip's real length.

Stock transformers' `WhisperEncoder.forward` insists on 3,000 mel frames (30 s). Paying for 30 s on
a 3 s clip is 10× the work, so this module reuses the encoder's own layers on variable-length,
padded batches: conv outputs past each window's length are zeroed (so the stride-2 conv sees the
same zero padding as on an unpadded input) and padded frames are masked out of attention. The
result for each window equals running the encoder on that window alone.

Audio longer than 30 s is cut into 30 s windows (Whisper's positional table has 1,500 rows); each
window is encoded separately and the frames of a clip's windows are concatenated before stacking.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.whisper.modeling_whisper import WhisperEncoder

MEL_FRAMES_PER_WINDOW = 3000  # 30 s at 100 frames/s


def encoder_frames(mel_frames: int) -> int:
    """Encoder output frames for `mel_frames` input frames (the stride-2 conv rounds up)."""
    return math.ceil(mel_frames / 2)


def audio_token_count(window_mel_frames: list[int], stack_factor: int) -> int:
    """LLM tokens for one clip made of windows with these mel-frame counts.

    The single source of this number: the processor uses it to expand `<audio>` and the model
    produces exactly this many embeddings.
    """
    return math.ceil(sum(encoder_frames(n) for n in window_mel_frames) / stack_factor)


def encode_windows(encoder: WhisperEncoder, mel: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """Encode padded windows `mel` [W, n_mels, T] whose real frame counts are `lengths` [W].

    Returns one tensor [encoder_frames(length), d_model] per window.
    """
    batch, _, max_len = mel.shape
    if max_len > MEL_FRAMES_PER_WINDOW:
        raise ValueError(f"an audio window has {max_len} mel frames; at most {MEL_FRAMES_PER_WINDOW} (30 s) fit Whisper")
    mel = mel.to(encoder.conv1.weight.dtype)
    frame_ids = torch.arange(max_len, device=mel.device)
    valid_in = frame_ids[None, :] < lengths[:, None]  # [W, T]
    mel = mel * valid_in[:, None, :]
    hidden = nn.functional.gelu(encoder.conv1(mel))
    hidden = hidden * valid_in[:, None, :]  # what conv2 would see as zero padding on the unpadded window
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)  # [W, T/2, D]
    out_len = hidden.shape[1]
    hidden = hidden + encoder.embed_positions.weight[:out_len].to(hidden.dtype)
    hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)

    out_lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
    valid_out = torch.arange(out_len, device=mel.device)[None, :] < out_lengths[:, None]
    attention_mask = None
    if not bool(valid_out.all()):
        # Additive key-padding mask [W, 1, T/2, T/2]: padded frames are never attended to.
        blocked = torch.finfo(hidden.dtype).min
        attention_mask = torch.zeros(batch, 1, out_len, out_len, dtype=hidden.dtype, device=mel.device)
        attention_mask = attention_mask.masked_fill(~valid_out[:, None, None, :], blocked)
    for layer in encoder.layers:
        hidden = layer(hidden, attention_mask)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
    hidden = encoder.layer_norm(hidden)
    return [hidden[i, : int(out_lengths[i])] for i in range(batch)]


def stack_frames(frames: torch.Tensor, stack_factor: int) -> torch.Tensor:
    """[N, D] → [ceil(N/k), k·D], zero-padding the last group."""
    n, dim = frames.shape
    groups = math.ceil(n / stack_factor)
    padded = frames.new_zeros(groups * stack_factor, dim)
    padded[:n] = frames
    return padded.reshape(groups, stack_factor * dim)
