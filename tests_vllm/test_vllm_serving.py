"""vLLM serving an omniphi model directory gives `omniphi ask`'s greedy answers.

Runs in the vLLM environment (`make test-vllm`): vLLM pins its own transformers, so the reference
answers come from `omniphi ask` in omniphi's own environment (.venv), as a user would get them.
Each model is served once per module by `python -m omniphi.vllm serve` and asked through the
official `openai` client. Compared: the first N answer tokens and the prompt's token count (which
pins the placeholder expansion to OmniProcessor's counts).
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OMNIPHI_PYTHON = ROOT / ".venv" / "bin" / "python"  # omniphi's own environment (make setup)
OMNIPHI_CLI = ROOT / ".venv" / "bin" / "omniphi"
SHAPES = ROOT / "tests" / "fixtures" / "starter-shapes"
PICTURE = SHAPES / "circle.png"
SPOKEN_QUESTION = SHAPES / "what-colour-is-the-circle.wav"  # "What colour is the circle?"
FIRST_TOKENS = 12  # answers must agree token for token this far
MAX_TOKENS = 24
SERVER_START_SECONDS = 900  # model load + vLLM's profiling run on 2 busy cores

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run_omniphi(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The `omniphi` CLI of omniphi's own environment, on this checkout's code."""
    if not OMNIPHI_CLI.exists():
        raise RuntimeError(f"{OMNIPHI_CLI} is missing: `make setup` creates omniphi's environment")
    done = subprocess.run([str(OMNIPHI_CLI), *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"omniphi {' '.join(args)} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return done


@dataclass
class OmniphiAnswer:
    text: str
    transcripts: list[str]
    prompt_tokens: int


def omniphi_ask(model_dir: Path, *args: str) -> OmniphiAnswer:
    """`omniphi ask` greedy, as the CLI prints it: transcripts, the answer, and --stats' token counts."""
    done = run_omniphi("ask", "--model", str(model_dir), *args, "--temperature", "0",
                       "--max-new-tokens", str(MAX_TOKENS), "--stats")
    # stdout: one "[transcript of audio N] ..." line per clip, then the answer as streamed, then "\n".
    transcripts = re.findall(r"^\[transcript of audio \d+\] (.*)\n", done.stdout, flags=re.M)
    answer = re.sub(r"^\[transcript of audio \d+\] .*\n", "", done.stdout, flags=re.M)
    assert answer.endswith("\n"), done.stdout
    stats = re.search(r"\[(\d+) prompt tokens", done.stderr)
    assert stats, f"omniphi ask --stats printed no token counts: {done.stderr[-500:]}"
    return OmniphiAnswer(answer[:-1], transcripts, int(stats.group(1)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """`python -m omniphi.vllm serve MODEL_DIR` on a free loopback port, stopped on exit."""

    def __init__(self, model_dir: Path, name: str, log: Path):
        self.port = free_port()
        self.name = name
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "omniphi.vllm", "serve", str(model_dir), "--served-model-name", name,
             "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--max-model-len", "2048",
             "--enforce-eager"],
            env={**ENV, "VLLM_CPU_KVCACHE_SPACE": "1"}, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", timeout=300)

    def wait_until_ready(self):
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise RuntimeError(f"vLLM did not become ready in {SERVER_START_SECONDS} s:\n{self.log.read_text()[-3000:]}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def ask(self, content) -> openai.types.chat.ChatCompletion:
        return self.client.chat.completions.create(
            model=self.name, messages=[{"role": "user", "content": content}], temperature=0, max_tokens=MAX_TOKENS)


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def image_part(path: Path = PICTURE) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(path, "image/png")}}


def audio_part(path: Path = SPOKEN_QUESTION) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": "wav"}}


@dataclass
class Served:
    server: VllmServer
    model_dir: Path
    tokenizer: object

    def assert_same_answer(self, served: openai.types.chat.ChatCompletion, reference: OmniphiAnswer):
        ours = self.tokenizer.encode(reference.text, add_special_tokens=False)
        theirs = self.tokenizer.encode(served.choices[0].message.content, add_special_tokens=False)
        assert theirs[:FIRST_TOKENS] == ours[:FIRST_TOKENS], (served.choices[0].message.content, reference.text)
        assert served.usage.prompt_tokens == reference.prompt_tokens


def serve(tmp_path_factory, name: str, write_model_dir) -> Served:
    model_dir = tmp_path_factory.mktemp(name) / "model"
    write_model_dir(model_dir)
    server = VllmServer(model_dir, f"omniphi-{name}", model_dir.parent / "vllm.log")
    try:
        server.wait_until_ready()
    except BaseException:
        server.stop()
        raise
    return Served(server, model_dir, AutoTokenizer.from_pretrained(model_dir))


@pytest.fixture(scope="module")
def starter(tmp_path_factory):
    """The starter in its merged form (`omniphi merge` of the committed training output)."""
    served = serve(tmp_path_factory, "starter",
                   lambda out: run_omniphi("merge", str(ROOT / "omniphi" / "starter_weights"), str(out)))
    yield served
    served.server.stop()


# The tiny ChatML preset's parts (a Llama, which vLLM implements itself) with 2 attention heads of 32
# dimensions: vLLM's CPU attention kernels have no head size 16 ("Unsupported CPU attention
# configuration: head_dim=16"), the preset's. (The Phi flavour goes through vLLM's Transformers
# backend for PhiForCausalLM, which fails in apply_rotary_pos_emb on this CPU: see README.)
WRITE_TINY = """
import sys, torch
from transformers import AutoModelForCausalLM
from omniphi import presets
from omniphi.runtime.loading import save_directory
language_model, tokenizer, vision_tower, whisper = presets.tiny_parts("chatml")
language_model.config.num_attention_heads = language_model.config.num_key_value_heads = 2
language_model.config.head_dim = language_model.config.hidden_size // 2
torch.manual_seed(0)
language_model = AutoModelForCausalLM.from_config(language_model.config)
model, processor = presets.assemble(language_model, tokenizer, vision_tower=vision_tower, whisper=whisper)
save_directory(presets.LoadedModel(model, processor, None, "omniphi-tiny"), sys.argv[1])
"""


# The tiny Phi preset's parts at Phi-2's attention geometry: heads of 80 dimensions, 32 of them rotary
# (partial_rotary_factor 0.4), so vLLM's CPU attention has a kernel for them.
WRITE_TINY_PHI = """
import sys, torch
from transformers import AutoModelForCausalLM
from omniphi import presets
from omniphi.runtime.loading import save_directory
language_model, tokenizer, vision_tower, whisper = presets.tiny_parts("phi")
config = language_model.config
config.hidden_size, config.intermediate_size, config.num_attention_heads = 160, 256, 2
config.num_key_value_heads = 2
config.rope_parameters = {**config.rope_parameters, "partial_rotary_factor": 0.4}
torch.manual_seed(0)
language_model = AutoModelForCausalLM.from_config(config)
model, processor = presets.assemble(language_model, tokenizer, vision_tower=vision_tower, whisper=whisper)
save_directory(presets.LoadedModel(model, processor, None, "omniphi-tiny-phi"), sys.argv[1])
"""


def _tiny_fixture(name: str, script: str):
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory):
        def write(out: Path):
            done = subprocess.run([str(OMNIPHI_PYTHON), "-c", script, str(out)], env=ENV, capture_output=True,
                                  text=True, timeout=600)
            if done.returncode != 0:
                raise RuntimeError(f"writing the {name} model failed:\n{done.stderr[-2000:]}")

        served = serve(tmp_path_factory, name, write)
        yield served
        served.server.stop()

    fixture.__doc__ = f"A random {name} model (LLM, CLIP, Whisper encoder) as a model directory, served by vLLM."
    return fixture


tiny = _tiny_fixture("tiny", WRITE_TINY)  # Llama with a ChatML template
tiny_phi = _tiny_fixture("tiny-phi", WRITE_TINY_PHI)  # Phi, as Phi-2 (vLLM's Transformers backend)


def test_starter_answers_a_text_question_as_omniphi_ask(starter):
    question = "What is the capital of France?"
    reference = omniphi_ask(starter.model_dir, question)
    starter.assert_same_answer(starter.server.ask(question), reference)
    assert "Paris" in reference.text


def test_starter_answers_a_picture_question_as_omniphi_ask(starter):
    question = "What colour is the circle?"
    reference = omniphi_ask(starter.model_dir, "--image", str(PICTURE), question)
    starter.assert_same_answer(starter.server.ask([image_part(), {"type": "text", "text": question}]), reference)


def test_starter_answers_a_spoken_question_natively_as_omniphi_ask(starter):
    reference = omniphi_ask(starter.model_dir, "--image", str(PICTURE), "--audio", str(SPOKEN_QUESTION))
    starter.assert_same_answer(starter.server.ask([image_part(), audio_part()]), reference)


def test_starter_answers_a_transcribed_question_as_omniphi_ask_in_transcribe_mode(starter):
    """Transcribe mode: Whisper's transcript (omniphi transcribe, the model's own transcriber) goes to
    vLLM as text, as `omniphi ask --audio-mode transcribe` gives it to the LLM."""
    reference = omniphi_ask(starter.model_dir, "--image", str(PICTURE), "--audio", str(SPOKEN_QUESTION),
                            "--audio-mode", "transcribe")
    transcript = run_omniphi("transcribe", "--model", str(starter.model_dir), str(SPOKEN_QUESTION)).stdout.strip()
    assert reference.transcripts == [transcript]
    starter.assert_same_answer(starter.server.ask([image_part(), {"type": "text", "text": transcript}]), reference)


def test_starter_streams_through_the_openai_client(starter):
    question = "What is the capital of France?"
    stream = starter.server.client.chat.completions.create(
        model=starter.server.name, messages=[{"role": "user", "content": question}], temperature=0,
        max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == starter.server.ask(question).choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


class OmniphiFrontServer:
    """`omniphi serve --engine vllm` (omniphi's own environment) in front of a running vLLM server."""

    def __init__(self, served: Served, data_dir: Path, log: Path):
        self.port = free_port()
        self.process = subprocess.Popen(
            [str(OMNIPHI_CLI), "serve", "--engine", "vllm", "--model", str(served.model_dir),
             "--vllm-url", f"http://127.0.0.1:{served.server.port}/v1", "--port", str(self.port),
             "--data-dir", str(data_dir)], env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"omniphi serve exited with {self.process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"omniphi serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", timeout=300)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def test_omniphi_serve_with_the_vllm_engine_answers_as_omniphi_ask(starter, tmp_path):
    """The page's server and the OpenAI API of omniphi, answering through vLLM: the same greedy
    answers as `omniphi ask` for a picture + spoken question, natively and in transcribe mode, and the
    page gets the model's card."""
    front = OmniphiFrontServer(starter, tmp_path / "data", tmp_path / "omniphi-serve.log")
    try:
        content = [image_part(), audio_part()]
        for mode in ("native", "transcribe"):
            reference = omniphi_ask(starter.model_dir, "--image", str(PICTURE), "--audio", str(SPOKEN_QUESTION),
                                    "--audio-mode", mode)
            answer = front.client.chat.completions.create(
                model=starter.server.name, messages=[{"role": "user", "content": content}], temperature=0,
                max_tokens=MAX_TOKENS, extra_body={"audio_mode": mode})
            starter.assert_same_answer(answer, reference)
        card = httpx.get(f"{front.url}/api/model", timeout=30).json()
        assert card["suggestions"], card
        conversation = httpx.post(f"{front.url}/api/conversations", json={}, timeout=30).json()
        turn = httpx.post(f"{front.url}/api/conversations/{conversation['id']}/chat", timeout=300,
                          json={"content": [{"type": "text", "text": "What is the capital of France?"}]})
        assert turn.status_code == 200 and '"type":"done"' in turn.text, turn.text[-2000:]
    finally:
        front.stop()


@pytest.mark.parametrize("name", ["tiny", "tiny_phi"])
def test_tiny_random_model_answers_text_image_and_audio_as_omniphi_ask(name, request):
    """A random model: any drift in weights, template, preprocessing or placeholder counts changes its tokens."""
    tiny = request.getfixturevalue(name)
    question = "What is in it?"
    cases = [
        ([question], question),
        (["--image", str(PICTURE), question], [image_part(), {"type": "text", "text": question}]),
        (["--audio", str(SPOKEN_QUESTION), question], [audio_part(), {"type": "text", "text": question}]),
    ]
    for ask_args, content in cases:
        tiny.assert_same_answer(tiny.server.ask(content), omniphi_ask(tiny.model_dir, *ask_args))
