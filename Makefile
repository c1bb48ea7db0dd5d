# stableserve: two commands on a fresh clone.
#   make run   - create .venv, install, migrate, make a dev org + API key, serve the API on demo engines
#   make test  - create .venv with dev extras, run the whole suite
#
# torch: the CPU build 2.13.0 lies on these machines' disk (pip finds it); set TORCH_SPEC
# (and PIP_EXTRA_INDEX_URL for a CUDA index) on a GPU machine, e.g. TORCH_SPEC='torch>=2.4'.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
SPANDREL_SPEC ?= spandrel==0.4.2
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run generate test lint audit bench clean install browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	# spandrel declares torchvision, whose PyPI wheels need PyPI's CUDA torch: install it alone.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps "$(SPANDREL_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

PORT ?= 8000

run: $(STAMP)
	$(BIN)/stableserve dev-setup --port $(PORT)
	$(BIN)/stableserve serve --engines demo --port $(PORT)

# Offline, without the server: one image through the runner (the shapes model).
generate: $(STAMP)
	$(BIN)/stableserve generate "a large red circle on the left on a blue background" \
		--engine stable-diffusion-v1-5 --seed 42 --steps 30 -o out/shapes.png

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks training
	$(MAKE) --no-print-directory audit
	$(MAKE) --no-print-directory browser
	$(BIN)/pytest -q

# The system Chromium (Debian's `chromium`) for the playground's browser test; never fails the
# build: without it that test is skipped.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "could not install chromium: the browser test will be skipped"

# Known vulnerabilities in the installed dependencies (PyPI's advisory data); fails when any.
audit: $(STAMP)
	$(BIN)/pip-audit --skip-editable --progress-spinner off

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks training

bench: $(STAMP)
	$(BIN)/python benchmarks/runner_overhead.py

clean:
	rm -rf $(VENV) out
