# Thin wrappers: every target is a plain command you can also run by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_MODELS := $(wildcard ../shared/models)
MODELS_FROM ?= $(if $(SHARED_MODELS),--from $(SHARED_MODELS),)
MODELS_DIR ?= var/models
CONFIG ?= config.dev.yaml

.PHONY: setup tflite-venv deps models run test lint typecheck unit bench clean pi-check systemd-check

$(BIN)/safeguard: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[device,converter,bench,mqtt,sms,listener,listener-test,dev]'
	touch $@

setup: $(BIN)/safeguard

# tflite_runtime 2.14 (numpy<2, Python <= 3.11 wheels) beside the main venv: the converter's
# tests load every converted model in it as well as in ai_edge_litert.
TFLITE_PY ?= $(shell command -v python3.11 || command -v python3.10 || echo python3)
.venv-tflite/bin/python:
	$(TFLITE_PY) -m venv .venv-tflite
	.venv-tflite/bin/pip install --quiet 'tflite-runtime==2.14.0' 'numpy<2'

tflite-venv: .venv-tflite/bin/python

deps:
	bash scripts/system-deps.sh

models: setup
	$(BIN)/safeguard models fetch --dir $(MODELS_DIR) $(MODELS_FROM)

run: setup models
	$(BIN)/safeguard run --config $(CONFIG)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup models
	$(BIN)/pytest -q

test: deps setup tflite-venv models lint typecheck unit

bench: setup models
	$(BIN)/python -m bench.speed
	$(BIN)/python -m bench.quality

# The platform proof: install.sh and analyze in an arm64 Debian root under qemu (slow, root).
pi-check: deps
	bash scripts/pi-check.sh

# The install under a real systemd: a Debian root booted with systemd-nspawn (slow, root).
systemd-check: deps
	bash scripts/systemd-check.sh

clean:
	rm -rf $(VENV) .venv-tflite var build *.egg-info
