# qdqopt developer entry points. `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test golden bench fuzz lint format clean system-deps corpus-trained

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

# Debian's graphviz gives `dot` for `qdqopt inspect --format svg`; optional (skipped without root/apt).
system-deps:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
	      || echo "warning: could not install graphviz; svg output will be unavailable"; \
	  else echo "note: graphviz (dot) not installed; svg output will be unavailable"; fi; }

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP) system-deps

demo: install
	mkdir -p out
	$(BIN)/qdqopt optimize fixtures/models/yolov8ish-naive.onnx out/demo-optimized.onnx --rules yolov8 \
	  --calibration-data fixtures/models/photos-calib-160.npz --inputs fixtures/models/photos-val-160.npz \
	  --reference fixtures/models/yolov8ish-float.onnx --report out/demo-report.json
	$(BIN)/qdqopt lint out/demo-optimized.onnx --rules yolov8

test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS) tests

golden: install
	$(BIN)/python -m tests.golden.regenerate

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

fuzz: install
	QDQOPT_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q tests -k fuzz

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis

# The trained-model corpus (fixtures/corpus/trained): two generator venvs under an ignored path
# (ModelOpt's [onnx] extra pins onnx and pulls onnxruntime-gpu, so it gets its own), then samples,
# ORT and ModelOpt graphs (CPU), packed as xz with the manifest. Deterministic; about 15 min of CPU.
CORPUS_VENVS := .venvs-corpus
TRAINED_CACHE := fixtures/corpus/trained/.cache
corpus-trained:
	$(PY) -m venv $(CORPUS_VENVS)/trained
	$(CORPUS_VENVS)/trained/bin/pip install -q -r fixtures/corpus/requirements-trained.txt
	$(PY) -m venv $(CORPUS_VENVS)/trained-modelopt
	$(CORPUS_VENVS)/trained-modelopt/bin/pip install -q torch==2.13.0
	$(CORPUS_VENVS)/trained-modelopt/bin/pip install -q -r fixtures/corpus/requirements-trained-modelopt.txt
	rm -rf $(TRAINED_CACHE)
	$(CORPUS_VENVS)/trained/bin/python fixtures/corpus/make_trained.py samples
	$(CORPUS_VENVS)/trained/bin/python fixtures/corpus/make_trained.py ort
	$(CORPUS_VENVS)/trained-modelopt/bin/python fixtures/corpus/make_trained.py modelopt
	$(CORPUS_VENVS)/trained/bin/python fixtures/corpus/make_trained.py pack
