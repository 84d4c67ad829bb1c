import numpy as np
import pytest

from omniphi.data.llava import DataFileError
from omniphi.data.skipping import Skipped
from omniphi.data.speech import AsrManifestDataset, LibriSpeechDataset, librispeech_text


@pytest.mark.parametrize("raw, expected", [
    ("MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES", "Mister quilter is the apostle of the middle classes."),
    ("I THINK I'LL GO HOME", "I think I'll go home."),
    ("SHE SAID I  WAS RIGHT", "She said I was right."),
    ("WHY", "Why."),
])
def test_librispeech_sentence_case(raw, expected):
    assert librispeech_text(raw) == expected


def test_librispeech_other_cases():
    assert librispeech_text("I AM HERE", "lower") == "i am here"
    assert librispeech_text("I AM HERE", "original") == "I AM HERE"


def test_librispeech_layout(fixtures):
    ds = LibriSpeechDataset(fixtures / "librispeech/LibriSpeech")
    assert len(ds) == 2
    s = ds[0]
    assert s["id"] == "1272-128104-0000"
    user, answer = s["messages"]
    assert [p["type"] for p in user["content"]] == ["audio", "text"]
    assert user["content"][1]["text"] == "Transcribe the audio."
    audio = user["content"][0]["audio"]
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.5 < len(audio) / 16000 < 6.0
    assert np.abs(audio).max() > 0.05  # speech, not silence
    assert answer["content"][0]["text"] == "Mister quilter is the apostle of the middle classes."
    assert ds[1]["messages"][1]["content"][0]["text"] == "I think I'll go home."


def test_no_prompt_and_custom_prompt(fixtures):
    bare = LibriSpeechDataset(fixtures / "librispeech", prompt=None)
    assert [p["type"] for p in bare[1]["messages"][0]["content"]] == ["audio"]
    custom = LibriSpeechDataset(fixtures / "librispeech", prompt="What was said?", case="original")
    assert custom[1]["messages"][0]["content"][1]["text"] == "What was said?"
    assert custom[1]["messages"][1]["content"][0]["text"] == "I THINK I'LL GO HOME"


def test_manifest_relative_paths_ids_and_missing_audio(fixtures):
    ds = AsrManifestDataset(fixtures / "librispeech/manifest.jsonl")
    assert len(ds) == 3
    assert ds[0]["id"] == "quilter"
    assert ds[1]["id"] == "1272-128104-0001"  # default: the file's stem
    assert ds[1]["messages"][1]["content"][0]["text"] == "I think I'll go home."
    ghost = ds[2]
    assert isinstance(ghost, Skipped) and ghost.reason == "missing_audio" and ghost.id == "ghost"


def test_bad_manifest_is_a_load_time_error(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"audio": "a.flac", "text": "x"}\n{"audio": 3}\n')
    with pytest.raises(DataFileError, match=r"m.jsonl:2: needs string fields"):
        AsrManifestDataset(tmp_path / "m.jsonl")
    with pytest.raises(DataFileError, match="not found"):
        LibriSpeechDataset(tmp_path / "nowhere")
