"""omniphi.asr: window splitting (fast) and transcription with the starter Whisper (slow)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may download

import re
from pathlib import Path

import numpy as np
import torch
import pytest

from omniphi.asr import (BEAMS, COMPRESSION_RATIO_LIMIT, MAX_PROMPT_TOKENS, SAMPLING_RATE, TOKEN_BUDGET_MIN,
                         TOKENS_PER_SECOND, SuppressTokens, Transcriber, compression_ratio, split_windows)

SR = SAMPLING_RATE
SPEECH = Path(__file__).parent / "fixtures" / "speech"
CAPITAL = "What is the capital of France?"
FOX = "The quick brown fox jumps over the lazy dog."


def norm(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _noise(seconds: float, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).uniform(-amp, amp, int(seconds * SR))).astype(np.float32)


def _assert_tiles(windows, n):
    assert windows[0][0] == 0 and windows[-1][1] == n
    for (s0, e0), (s1, _) in zip(windows, windows[1:]):
        assert e0 == s1  # contiguous: no sample dropped or repeated
    assert all(0 < e - s <= 30 * SR for s, e in windows)


# --------------------------------------------------------------------------- windows (fast)


def test_split_windows_short_and_empty():
    assert split_windows(np.zeros(0, np.float32)) == []
    assert split_windows(_noise(10)) == [(0, 10 * SR)]
    assert split_windows(_noise(30)) == [(0, 30 * SR)]  # exactly 30 s is still one window


def test_split_windows_long_loud_audio_tiles_into_30s_windows():
    audio = _noise(65)
    w = split_windows(audio)
    _assert_tiles(w, len(audio))
    assert len(w) == 3
    # With no pause to find, a cut still lands within the last 5 s of each window.
    assert all(e - s >= 25 * SR for s, e in w[:-1])


def test_split_windows_cuts_in_the_pause_not_in_a_word_gap():
    audio = _noise(65)
    audio[int(26.0 * SR) : int(26.6 * SR)] = 0  # a pause between sentences
    audio[int(29.0 * SR) : int(29.06 * SR)] = 0  # a 60 ms gap between two words, later on
    w = split_windows(audio)
    _assert_tiles(w, len(audio))
    cut = w[0][1] / SR
    assert 26.1 < cut < 26.5, cut  # inside the pause, away from its edges


def test_compression_ratio_tells_a_repetition_loop_from_a_sentence():
    assert compression_ratio(FOX) < COMPRESSION_RATIO_LIMIT
    assert compression_ratio("It's been a long time, " * 30) > COMPRESSION_RATIO_LIMIT
    assert compression_ratio("") == 0


# --------------------------------------------------------------------------- transcription (slow)


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber.starter()


@pytest.fixture(scope="module")
def load_audio():
    from omniphi.media import load_audio

    return load_audio


@pytest.mark.slow
@pytest.mark.parametrize("ext", ["wav", "mp3", "flac", "ogg", "webm", "opus", "m4a"])
def test_transcribes_capital_in_every_format(transcriber, load_audio, ext):
    audio = load_audio(SPEECH / f"capital.{ext}")
    assert norm(transcriber.transcribe(audio)) == norm(CAPITAL)


@pytest.mark.slow
def test_transcribes_browser_recording_bytes(transcriber, load_audio):
    # What the web page uploads: WebM/Opus bytes, not a path.
    audio = load_audio((SPEECH / "capital.webm").read_bytes())
    assert transcriber.transcribe(audio) == CAPITAL


@pytest.mark.slow
def test_transcribes_fox_nearly(transcriber, load_audio):
    jiwer = pytest.importorskip("jiwer")
    text = norm(transcriber.transcribe(load_audio(SPEECH / "fox.wav")))
    # tiny.en hears espeak-ng's "jumps ... dog" as "jump ... nog" (ctranslate2 decodes the same
    # ids: see test_weights_starter), so 2 of 9 words differ; anything worse is a regression.
    assert text.startswith("the quick brown fox")
    assert jiwer.wer(norm(FOX), text) <= 2 / 9, text


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="tiny.en mishears espeak-ng: 'jump over the lazy nog'")
def test_transcribes_fox_exactly(transcriber, load_audio):
    assert norm(transcriber.transcribe(load_audio(SPEECH / "fox.wav"))) == norm(FOX)


@pytest.mark.slow
def test_empty_silent_and_tiny_inputs(transcriber):
    assert transcriber.transcribe(np.zeros(0, np.float32)) == ""
    assert transcriber.transcribe(np.zeros(3 * SR, np.float32)) == ""
    assert transcriber.transcribe(_noise(3, amp=1e-4)) == ""  # below -60 dBFS: not decoded
    assert transcriber.transcribe(np.zeros(65 * SR, np.float32)) == ""  # silent, several windows
    assert isinstance(transcriber.transcribe(_noise(0.01)), str)  # 160 samples: no crash
    assert isinstance(transcriber.transcribe([0.0] * 400), str)  # lists are accepted


@pytest.mark.slow
def test_rejects_invalid_audio(transcriber):
    with pytest.raises(ValueError, match="mono"):
        transcriber.transcribe(np.zeros((2, SR), np.float32))
    with pytest.raises(ValueError, match="16000"):
        transcriber.transcribe(np.zeros(SR, np.float32), sampling_rate=44100)
    bad = np.zeros(SR, np.float32)
    bad[10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        transcriber.transcribe(bad)


@pytest.mark.slow
def test_long_audio_is_transcribed_in_three_windows(transcriber, load_audio):
    cap, fox = load_audio(SPEECH / "capital.wav"), load_audio(SPEECH / "fox.wav")
    audio = np.zeros(65 * SR, np.float32)
    placed = [(1.0, cap), (28.5, fox), (59.0, cap)]
    for t, clip in placed:
        audio[int(t * SR) : int(t * SR) + len(clip)] = clip
    # Precondition: a plain 30 s cut would split the fox sentence in two.
    assert 28.5 < 30.0 < 28.5 + len(fox) / SR

    windows = transcriber.windows(audio)
    assert len(windows) == 3
    _assert_tiles(windows, len(audio))
    for _, end in windows[:-1]:
        assert not audio[end - SR // 10 : end + SR // 10].any(), end / SR  # cut inside silence

    text = norm(transcriber.transcribe(audio))
    # tiny.en's reading of fox.wav is "... jump over the lazy nog" (see the xfail above).
    assert re.fullmatch(r"what is the capital of france the quick brown fox( \w+){5} what is the capital of france", text), text


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["capital.wav", "fox.wav", "capital.mp3"])
def test_token_bans_match_transformers_own_processors(transcriber, load_audio, clip):
    """SuppressTokens replaces transformers' isin-per-step processors: the same tokens come out."""
    audio = load_audio(SPEECH / clip)
    feats = transcriber.processor.feature_extractor(audio, sampling_rate=SR, return_tensors="pt").input_features
    with torch.inference_mode():
        stock = transcriber.model.generate(input_features=feats, do_sample=False, num_beams=1)
        ours = transcriber.model.generate(
            input_features=feats, generation_config=transcriber._generation_config,
            logits_processor=[SuppressTokens(*transcriber._suppress, vocab_size=transcriber.model.config.vocab_size)])
    assert stock.tolist() == ours.tolist()


def test_suppress_tokens_bans_begin_tokens_only_at_the_first_step():
    bans = SuppressTokens([1, 5], [2], vocab_size=8)
    first = bans(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 8))
    later = bans(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 8))
    assert torch.isinf(first[0]).nonzero().flatten().tolist() == [1, 2, 5]
    assert torch.isinf(later[0]).nonzero().flatten().tolist() == [1, 5]


@pytest.mark.slow
def test_a_sentence_is_decoded_once_by_beam_search_within_its_token_budget(transcriber, load_audio, monkeypatch):
    audio = load_audio(SPEECH / "capital.wav")
    calls = []
    generate = transcriber.model.generate

    def spy(*args, **kwargs):
        calls.append((kwargs["generation_config"].num_beams, kwargs["generation_config"].max_length))
        return generate(*args, **kwargs)

    monkeypatch.setattr(transcriber.model, "generate", spy)
    assert norm(transcriber.transcribe(audio)) == norm(CAPITAL)
    seconds = len(audio) / SR
    assert calls == [(BEAMS, TOKEN_BUDGET_MIN + int(np.ceil(seconds * TOKENS_PER_SECOND)))]
    assert calls[0][1] < 448 / 4  # far below Whisper's own limit for a 2 s clip


@pytest.mark.slow
def test_a_beam_search_stuck_in_a_loop_is_decoded_again_greedily(transcriber, load_audio, monkeypatch):
    decode, beams_asked = transcriber._decode, []

    def looping_beams(feats, beams, max_tokens, prompt_ids):
        beams_asked.append(beams)
        return "It's been a long time, " * 30 if beams > 1 else decode(feats, beams, max_tokens, prompt_ids)

    monkeypatch.setattr(transcriber, "_decode", looping_beams)
    assert norm(transcriber.transcribe(load_audio(SPEECH / "capital.wav"))) == norm(CAPITAL)
    assert beams_asked == [BEAMS, 1]


@pytest.mark.slow
def test_a_prompt_naming_a_word_makes_whisper_spell_it(transcriber, load_audio):
    fox = load_audio(SPEECH / "fox.wav")
    assert "lazy nog" in norm(transcriber.transcribe(fox))  # tiny.en's mishearing, as in the tests above
    heard = norm(transcriber.transcribe(fox, prompt="Farm animals: dog, cat, cow, horse."))
    assert "lazy dog" in heard and "farm" not in heard  # the prompt steers the spelling and is not repeated


@pytest.mark.slow
def test_the_transcribers_own_prompt_applies_unless_a_call_gives_another(transcriber, load_audio, monkeypatch):
    prompts = []
    generate = transcriber.model.generate

    def spy(*args, **kwargs):
        ids = kwargs.get("prompt_ids")
        prompts.append(None if ids is None else transcriber.processor.tokenizer.decode(ids[1:]))  # after <|startofprev|>
        return generate(*args, **kwargs)

    monkeypatch.setattr(transcriber.model, "generate", spy)
    monkeypatch.setattr(transcriber, "prompt", "Capitals of Europe: Paris, Berlin.")
    capital = load_audio(SPEECH / "capital.wav")
    assert norm(transcriber.transcribe(capital)) == norm(CAPITAL)
    assert norm(transcriber.transcribe(capital, prompt="Rivers: the Seine.")) == norm(CAPITAL)
    assert norm(transcriber.transcribe(capital, prompt="")) == norm(CAPITAL)
    assert [p and p.strip() for p in prompts] == ["Capitals of Europe: Paris, Berlin.", "Rivers: the Seine.", None]


@pytest.mark.slow
def test_a_long_prompt_keeps_its_last_tokens(transcriber):
    words = " ".join(f"word{i}" for i in range(1000))
    ids = transcriber._prompt_ids(words)
    tokenizer = transcriber.processor.tokenizer
    assert len(ids) == MAX_PROMPT_TOKENS + 1
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|startofprev|>")
    assert tokenizer.decode(ids[1:]).strip().endswith("word999")
