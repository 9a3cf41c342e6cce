# Two commands set up and run everything on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install the project with the CPU torch pin (constraints/cpu.txt).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast bench clean-results

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints/cpu.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m harness demo

# two test workers on two cores: one torch thread each (more threads per process oversubscribe the CPU)
# lint-imports checks the layering of docs/architecture.md (contract in pyproject.toml)
test: $(STAMP)
	$(VENV)/bin/lint-imports
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -q -p no:warnings

# the same without the tests marked slow (model training and builds, CLI subprocesses): for quick iteration
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -q -p no:warnings -m "not slow"

bench: $(STAMP)
	$(PY) -m harness bench
