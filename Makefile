# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo
DEMO_SCHOOLS ?= 2000

.PHONY: install demo test lint bench clean browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Headless Chromium for the report's browser test (Debian's package); skipped when present.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium for the report test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: could not install chromium; the browser test will be skipped"; }

demo: install
	$(BIN)/censo-forecast synth --out $(DEMO)/raw --schools $(DEMO_SCHOOLS) --seed 7
	$(BIN)/censo-forecast run --raw-dir $(DEMO)/raw --out $(DEMO)/out --offline --demography $(DEMO)/raw/demografia
	@echo "demo outputs in $(DEMO)/out (open $(DEMO)/out/report.html)"

# ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade) and mypy, configured in pyproject.toml
lint: install
	$(BIN)/ruff check src tests benchmarks run_experiment.py
	$(BIN)/mypy

test: install browser lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/busy.py
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info
