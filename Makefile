# The two commands of the README:
#   make demo   set up, prepare real text, run the smoke grid on the `local` cluster, print the table
#   make test   set up, install Chromium and start the local SLURM cluster (as root), run the whole test suite
# Both create the virtualenv themselves; a fresh Debian 12 clone needs nothing else.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build from the local wheel cache; on clusters install the site's CUDA build of torch instead.
TORCH  ?= torch==2.13.0
RESULTS ?= results

.PHONY: setup demo demo-text test test-fast lint browser clean-results docs report-screenshot

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@# Debian's own python3 needs python3-venv for this (pyenv/conda Pythons do not).
	$(PYTHON) -m venv $(VENV) || { [ "$$(id -u)" = 0 ] && apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[train,test]"
	touch $@

# More real text: Python's full documentation sources from Debian (best effort; the demo falls back
# to the reference docs shipped with Python itself). The getting-started guide's outputs are those of
# this corpus, and tests/test_getting_started.py compares them byte for byte: `make test` needs it too.
demo-text:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s python3.11-doc >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-doc >/dev/null) \
	  || echo "python3.11-doc not installed: using the docs shipped with Python"; fi

demo: setup demo-text
	$(BIN)/hpcllm data demo --output data/demo
	$(BIN)/hpcllm submit experiments/smoke.yaml --cluster local --results $(RESULTS) --wait
	$(BIN)/hpcllm collect -r $(RESULTS)/smoke --format markdown

# Lint first: a finding fails `make test` before Chromium is installed or any test runs.
test: setup lint browser demo-text
	VENV=$(VENV) scripts/test.sh

# Lint (ruff), formatting (ruff format --check), types (mypy: strict on the login-node packages) and
# the layering (import-linter: docs/architecture.md); the settings are in pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Chromium from Debian's packages for the report's browser test (as root; a no-op when installed).
browser:
	scripts/install-browser.sh

# Unit tests only (no torchrun, no SLURM): seconds.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not slurm and not slow"

clean-results:
	rm -rf $(RESULTS)/smoke

# The command outputs README.md and docs/*.md show between cog markers (tests/test_docs.py checks them).
docs:
	$(BIN)/python -m cogapp -r -I tests -p "from docs_cog import *" $$(grep -l '\[\[\[cog' README.md docs/*.md)

# docs/report-screenshot.png from a real run of the smoke grid (+ a failing run) on `local`, in headless
# Chromium (a few minutes; tests/test_docs.py fails when the report's code changed since it was taken).
report-screenshot: setup browser
	$(BIN)/python scripts/report-screenshot.py
