"""The offline starter model, assembled from packaged weights, as a user meets it."""

import pytest
import skimage.data
from PIL import Image

from omniphi.chat import GenerationSettings
from omniphi.media import load_audio
from tests.conftest import FIXTURES
from tests.test_cli import omniphi

pytestmark = pytest.mark.slow
SPEECH = FIXTURES / "speech"
GREEDY = GenerationSettings(max_new_tokens=32)


def test_text_question_is_answered_with_paris(starter_assistant):
    reply = starter_assistant.complete([{"role": "user", "content": "What is the capital of France?"}], GREEDY)
    assert "Paris" in reply.text
    assert reply.finish_reason == "stop"  # stopped on <|im_end|>, not by the length limit


def test_spoken_question_in_transcribe_mode(starter_assistant):
    audio = load_audio(SPEECH / "capital.webm")
    reply = starter_assistant.complete([{"role": "user", "content": [{"type": "audio", "audio": audio}]}], GREEDY,
                                       audio_mode="transcribe")
    assert reply.transcripts == ["What is the capital of France?"]
    assert "Paris" in reply.text


def test_native_audio_and_image_paths_run_and_report_the_transcript(starter_assistant):
    audio = load_audio(SPEECH / "capital.wav")
    image = Image.fromarray(skimage.data.astronaut())  # a real photo that ships with scikit-image
    parts = [{"type": "image", "image": image}, {"type": "audio", "audio": audio}]
    reply = starter_assistant.complete([{"role": "user", "content": parts}], GenerationSettings(max_new_tokens=8))
    assert reply.transcripts == ["What is the capital of France?"]
    assert reply.completion_tokens >= 1


def test_cli_transcribe_takes_a_whisper_prompt():
    result = omniphi("transcribe", "--prompt", "Farm animals: dog, cat, cow, horse.", str(SPEECH / "fox.wav"))
    assert result.returncode == 0, result.stderr
    assert "lazy dog" in result.stdout.lower()  # without the prompt tiny.en hears "lazy nog" (tests/test_asr.py)


def test_cli_transcribe_and_ask_with_audio():
    result = omniphi("transcribe", str(SPEECH / "capital.mp3"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "What is the capital of France?"
    result = omniphi("ask", "--audio", str(SPEECH / "capital.flac"), "--audio-mode", "transcribe", "--stats")
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.strip().splitlines()
    assert first == "[transcript of audio 1] What is the capital of France?"
    assert "Paris" in " ".join(rest)
    assert "Loading weights" not in result.stderr  # no library progress bars in the CLI
